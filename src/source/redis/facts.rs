//! What a Redis snapshot records about itself, typed: written by the backup into the
//! manifest's source facts (and the non-secret part into the refs), read by restores and
//! drills through [`RedisFacts::of`]. The stored JSON keeps the names it always had.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Shard;
use crate::source::FactsError;

/// A Redis snapshot's facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisFacts {
    /// The server's version at backup time.
    pub redis_version: String,
    /// Keys per database (`db0` → count) of a single server; a cluster records keys per shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyspace: Option<BTreeMap<String, u64>>,
    /// Keys in all.
    pub keys_total: u64,
    /// How the RDB was read (`sync (length-framed)`, `bgsave`, `sync (cluster)`, …).
    pub method: String,
    /// The server (no credentials).
    pub server: String,
    /// A cluster's slot map: which master held which slots, and its key count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Vec<ShardFacts>>,
}

/// One cluster master as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardFacts {
    /// `host:port` as the cluster announced it.
    pub node: String,
    /// Cluster node id.
    pub node_id: String,
    /// Inclusive slot ranges, sorted.
    pub slots: Vec<(u16, u16)>,
    /// Keys at backup time.
    pub keys: u64,
    /// The artifact holding its RDB.
    pub file: String,
}

impl RedisFacts {
    /// The facts recorded in `snapshot`'s manifest.
    ///
    /// # Errors
    /// A fact is missing or malformed (not a Redis snapshot).
    pub fn of(snapshot: &str, stored: &Value) -> Result<Self, FactsError> {
        crate::source::decode_facts(snapshot, "Redis", stored.clone())
    }

    /// The recorded slot map of a cluster snapshot.
    pub fn layout(&self) -> Option<Vec<Shard>> {
        self.cluster
            .as_ref()
            .map(|shards| shards.iter().map(Shard::from).collect())
    }

    /// What the backup hands the pipeline.
    pub(super) fn report(&self) -> crate::source::SnapshotReport {
        crate::source::SnapshotReport {
            facts: serde_json::to_value(self).expect("facts serialize"),
            public_facts: self.public(),
        }
    }

    /// The facts also kept in the plaintext refs (none is secret).
    fn public(&self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::from([
            ("redis_version".to_owned(), json!(self.redis_version)),
            ("keys_total".to_owned(), json!(self.keys_total)),
            ("method".to_owned(), json!(self.method)),
        ]);
        if let Some(c) = &self.cluster {
            out.insert("cluster_masters".to_owned(), json!(c.len()));
        }
        out
    }
}

impl From<&Shard> for ShardFacts {
    fn from(s: &Shard) -> Self {
        Self {
            node: format!("{}:{}", s.host, s.port),
            node_id: s.node_id.clone(),
            slots: s.slots.clone(),
            keys: s.keys,
            file: s.file(),
        }
    }
}

impl From<&ShardFacts> for Shard {
    fn from(f: &ShardFacts) -> Self {
        let (host, port) = f.node.rsplit_once(':').unwrap_or((&f.node, "0"));
        Self {
            host: host.to_owned(),
            port: port.parse().unwrap_or(0),
            node_id: f.node_id.clone(),
            slots: f.slots.clone(),
            keys: f.keys,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_json_reads_back_as_written() {
        let stored = json!({
            "redis_version": "7.0.15", "keys_total": 3000, "method": "sync (cluster)",
            "server": "redis://127.0.0.1:7000",
            "cluster": [{"node": "10.0.0.1:7000", "node_id": "abc", "slots": [[0, 8191]],
                         "keys": 1500, "file": "shards/slots-0.rdb"},
                        {"node": "10.0.0.2:7000", "node_id": "def", "slots": [[8192, 16383]],
                         "keys": 1500, "file": "shards/slots-8192.rdb"}]
        });
        let f = RedisFacts::of("s1", &stored).unwrap();
        assert_eq!(serde_json::to_value(&f).unwrap(), stored);
        let layout = f.layout().unwrap();
        assert_eq!(
            (layout[1].host.as_str(), layout[1].port),
            ("10.0.0.2", 7000)
        );
        assert_eq!(layout[1].file(), "shards/slots-8192.rdb");
        assert_eq!(f.public()["cluster_masters"], json!(2));

        let single = json!({"redis_version": "7.0.15", "keyspace": {"db0": 12}, "keys_total": 12,
                            "method": "bgsave", "server": "redis://h:6379"});
        let f = RedisFacts::of("s2", &single).unwrap();
        assert_eq!(serde_json::to_value(&f).unwrap(), single);
        assert!(f.layout().is_none() && !f.public().contains_key("cluster_masters"));
    }

    #[test]
    fn another_engines_facts_are_named() {
        let e = RedisFacts::of("s3", &json!({"qdrant_version": "1.19.0"})).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("snapshot s3 has no usable Redis facts"),
            "{e}"
        );
    }
}
