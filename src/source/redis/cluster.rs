//! Redis Cluster: the masters and their slot ranges (`CLUSTER SLOTS`), one RDB stream per
//! master, the slot map recorded in the manifest, and the comparison of a recorded layout with
//! a live cluster's (restore refuses a cluster resharded differently).

use super::*;

impl RedisSource {
    /// Masters of a cluster with their slot ranges, from `CLUSTER SLOTS`; `None` when the
    /// server is not in cluster mode.
    pub(super) async fn cluster_masters(
        &self,
        con: &mut redis::aio::MultiplexedConnection,
    ) -> Result<Option<Vec<Shard>>, SourceError> {
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(con)
            .await
            .map_err(|e| SourceError::request("INFO cluster", e))?;
        if info_field(&info, "cluster_enabled") != Some("1") {
            return Ok(None);
        }
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(con)
            .await
            .map_err(|e| SourceError::request("CLUSTER SLOTS", e))?;
        let mut by_node: BTreeMap<String, Shard> = BTreeMap::new();
        for range in slots {
            let redis::Value::Array(items) = range else {
                continue;
            };
            let (
                Some(redis::Value::Int(a)),
                Some(redis::Value::Int(b)),
                Some(redis::Value::Array(node)),
            ) = (items.first(), items.get(1), items.get(2))
            else {
                continue;
            };
            let text = |v: Option<&redis::Value>| match v {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(redis::Value::SimpleString(s)) => s.clone(),
                _ => String::new(),
            };
            let host = match text(node.first()) {
                h if h.is_empty() => self.spec.host.clone(),
                h => h,
            };
            let port = match node.get(1) {
                Some(redis::Value::Int(p)) => u16::try_from(*p).unwrap_or(0),
                _ => 0,
            };
            let id = text(node.get(2));
            let e = by_node
                .entry(format!("{host}:{port}"))
                .or_insert_with(|| Shard {
                    host,
                    port,
                    node_id: id,
                    slots: Vec::new(),
                    keys: 0,
                });
            e.slots.push((*a as u16, *b as u16));
        }
        let mut shards: Vec<Shard> = by_node.into_values().collect();
        for s in &mut shards {
            s.slots.sort_unstable();
        }
        shards.sort_by_key(|s| s.slots.first().copied());
        let covered: u32 = shards
            .iter()
            .flat_map(|s| &s.slots)
            .map(|(a, b)| u32::from(*b) - u32::from(*a) + 1)
            .sum();
        if covered != 16384 {
            return Err(SourceError::Setup(format!(
                "{}: the cluster covers {covered} of 16384 slots (CLUSTER SLOTS); a backup now would miss data",
                self.target()
            )));
        }
        Ok(Some(shards))
    }

    /// One artifact per master, each stream opened when the pipeline reads it.
    pub(super) async fn snapshot_cluster(
        self,
        cx: SnapshotCx,
        mut shards: Vec<Shard>,
        version: String,
    ) -> Result<SnapshotReport, SourceError> {
        let password = self.password()?;
        for shard in &mut shards {
            let node = RedisSource::new(RedisSpec {
                host: shard.host.clone(),
                port: shard.port,
                ..self.spec.clone()
            });
            let mut con = node.connection().await?;
            let ks: String = redis::cmd("INFO")
                .arg("keyspace")
                .query_async(&mut con)
                .await
                .map_err(|e| {
                    SourceError::request(format!("INFO keyspace on {}", node.target()), e)
                })?;
            shard.keys = parse_keyspace(&ks).values().sum();
            let body = Box::new(LazySync {
                node,
                password: password.clone(),
                stream: None,
            });
            // Its length is known only once its SYNC starts, when the pipeline reads it.
            cx.send_stream(shard.file().into_bytes(), body, None)
                .await?;
        }
        Ok(RedisFacts {
            redis_version: version,
            keyspace: None,
            keys_total: shards.iter().map(|s| s.keys).sum(),
            method: "sync (cluster)".to_owned(),
            server: self.target(),
            cluster: Some(shards.iter().map(ShardFacts::from).collect()),
        }
        .report())
    }
}

/// One cluster master and the slots it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Host as the cluster announces it.
    pub host: String,
    pub port: u16,
    /// Cluster node id.
    pub node_id: String,
    /// Inclusive slot ranges, sorted.
    pub slots: Vec<(u16, u16)>,
    /// Keys at backup time.
    pub keys: u64,
}

impl Shard {
    /// The artifact name of its RDB.
    pub fn file(&self) -> String {
        format!("shards/slots-{}.rdb", self.slots.first().map_or(0, |s| s.0))
    }

    /// `0-5460,5461-10922` for messages.
    pub fn ranges(&self) -> String {
        self.slots
            .iter()
            .map(|(a, b)| format!("{a}-{b}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Slot layouts that differ: a message naming both, `None` when they match.
pub fn layout_difference(snapshot: &[Shard], cluster: &[Shard]) -> Option<String> {
    let ranges = |v: &[Shard]| -> Vec<String> { v.iter().map(Shard::ranges).collect() };
    let (a, b) = (ranges(snapshot), ranges(cluster));
    (a != b).then(|| {
        format!(
            "the snapshot's masters hold slots [{}]; the target cluster's masters hold [{}]",
            a.join("] ["),
            b.join("] [")
        )
    })
}

/// The live layout of the cluster a node at `spec` belongs to.
///
/// # Errors
/// Unreachable node, or not a cluster.
pub async fn live_layout(spec: &RedisSpec) -> Result<Vec<Shard>, SourceError> {
    let src = RedisSource::new(spec.clone());
    let mut con = src.connection().await?;
    src.cluster_masters(&mut con)
        .await?
        .ok_or_else(|| SourceError::Setup(format!("{} is not in cluster mode", src.target())))
}

/// A master's replication stream, opened on first read (on the pipeline's reader thread).
struct LazySync {
    node: RedisSource,
    password: Option<String>,
    stream: Option<RdbStream<BufReader<Box<dyn Conn>>>>,
}

impl std::io::Read for LazySync {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stream.is_none() {
            let (r, framing) = self.node.open_sync(self.password.as_deref()).map_err(|e| {
                std::io::Error::new(e.kind(), format!("SYNC with {}: {e}", self.node.target()))
            })?;
            self.stream = Some(RdbStream::new(r, framing));
        }
        self.stream.as_mut().expect("opened above").read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_compare_by_ranges() {
        let s = |slots: Vec<(u16, u16)>| Shard {
            host: "h".into(),
            port: 1,
            node_id: String::new(),
            slots,
            keys: 0,
        };
        let three = vec![
            s(vec![(0, 5460)]),
            s(vec![(5461, 10922)]),
            s(vec![(10923, 16383)]),
        ];
        let two = vec![s(vec![(0, 8191)]), s(vec![(8192, 16383)])];
        assert_eq!(layout_difference(&three, &three), None);
        let d = layout_difference(&three, &two).unwrap();
        assert!(
            d.contains("[0-5460] [5461-10922] [10923-16383]")
                && d.contains("[0-8191] [8192-16383]"),
            "{d}"
        );
    }
}
