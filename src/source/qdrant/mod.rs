//! Qdrant: collection snapshots over the REST API, streamed into the pipeline while their
//! SHA-256 is computed and compared with the server's checksum.
//!
//! Per collection: `GET /collections/{c}` (config, recorded), an exact point count, a sample
//! (the top-5 ids and scores of a search with a few stored vectors, recorded for drills), then
//! `POST /collections/{c}/snapshots?wait=true`, `GET …/snapshots/{name}` streamed, and
//! `DELETE …/snapshots/{name}` once the pipeline is done with it (also when it failed). Every
//! call sends the `api-key` header. `qdrant-client` (gRPC) is not used: its snapshot download
//! sends no API key and checks no checksum, and everything else here is plain REST.
//!
//! A distributed deployment (several peers in `GET /cluster`) is backed up shard by shard
//! instead: see [`cluster`].

mod client;
pub mod cluster;
pub mod load;

mod facts;

pub use client::{Client, SnapshotFile};
#[cfg(test)]
use client::{answer, newly_listed, peers_of};
pub(crate) use client::{request_err, seg};
pub use facts::{CollectionFacts, QdrantFacts, ShardFacts};

use std::collections::BTreeMap;

use std::io::Read;

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{SnapshotCx, SnapshotReport, SourceError};
use crate::config::QdrantSpec;

/// A recorded search: a stored vector and the ids/scores it found at backup time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Named vector, if the collection uses names.
    pub using: Option<String>,
    /// The query vector.
    pub vector: Vec<f32>,
    /// Top ids, best first.
    pub top: Vec<Value>,
    /// Their scores.
    pub scores: Vec<f64>,
}

/// The bytes of a download, hashed as they pass; a mismatch with the server's checksum at the
/// end is a read error, so the backup fails and commits nothing. Dropping it (the pipeline is
/// done, or gave up) deletes the server-side snapshot.
struct Checked {
    inner: Box<dyn Read + Send>,
    hash: Sha256,
    expected: String,
    object: String,
    /// (client, snapshot base path, snapshot name, runtime) to delete it on drop.
    cleanup: Option<(Client, String, String, tokio::runtime::Handle)>,
}

impl Read for Checked {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            let got = hex::encode(self.hash.finalize_reset());
            if got != self.expected {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}: SHA-256 {got} does not match the server's checksum {}",
                        self.object, self.expected
                    ),
                ));
            }
        } else {
            self.hash.update(&buf[..n]);
        }
        Ok(n)
    }
}

impl Drop for Checked {
    fn drop(&mut self) {
        if let Some((client, base, name, rt)) = self.cleanup.take() {
            rt.spawn(async move { client.delete_snapshot(&base, &name).await });
        }
    }
}

/// The configured source.
pub struct QdrantSource {
    spec: QdrantSpec,
}

impl QdrantSource {
    pub(crate) fn new(spec: QdrantSpec) -> Self {
        Self { spec }
    }

    /// A client for the configured server.
    ///
    /// # Errors
    /// The API key cannot be read.
    pub fn client(spec: &QdrantSpec) -> Result<Client, SourceError> {
        let key = spec
            .api_key
            .as_ref()
            .map(|k| k.read().map_err(SourceError::secret("the Qdrant API key")))
            .transpose()?;
        Client::new(&spec.url, key, spec.snapshot_timeout)
    }

    pub(crate) async fn check(&self) -> Result<(), SourceError> {
        let client = Self::client(&self.spec)?;
        client.version().await?;
        if let Some(peers) = self.peers(&client).await? {
            for c in self.selected(&client).await? {
                let layout = survey(&peers.values().collect::<Vec<_>>(), &c).await?;
                cluster::choose(&layout, &peers.keys().copied().collect(), true)
                    .map_err(|e| no_replica(&c, &e))?;
            }
        }
        Ok(())
    }

    /// In a distributed deployment of several peers, the ones dr can reach, by id: the
    /// configured URL and every URL in `peers` (which need not cover every peer: a shard is
    /// refused only when none of its active replicas is reachable). `None` for a single node.
    async fn peers(&self, client: &Client) -> Result<Option<BTreeMap<u64, Client>>, SourceError> {
        let ids = client.cluster_peers().await?;
        if ids.len() <= 1 {
            return Ok(None);
        }
        let mut out = BTreeMap::new();
        for url in std::iter::once(&self.spec.url).chain(&self.spec.peers) {
            let c = client.for_peer(url, self.spec.snapshot_timeout)?;
            let id = c.peer_id().await?;
            if !ids.contains(&id) {
                return Err(SourceError::Setup(format!(
                    "qdrant peer {url} (id {id}) is not a member of the cluster at {} (peers {})",
                    self.spec.url,
                    join(&ids)
                )));
            }
            out.insert(id, c);
        }
        Ok(Some(out))
    }

    async fn selected(&self, client: &Client) -> Result<Vec<String>, SourceError> {
        let all = client.collections().await?;
        if self.spec.collections.is_empty() {
            return Ok(all);
        }
        for c in &self.spec.collections {
            if !all.contains(c) {
                return Err(SourceError::Setup(format!(
                    "qdrant at {}: no collection `{c}` (it has: {})",
                    self.spec.url,
                    all.join(", ")
                )));
            }
        }
        Ok(self.spec.collections.clone())
    }

    pub(crate) async fn snapshot(self, cx: SnapshotCx) -> Result<SnapshotReport, SourceError> {
        let client = Self::client(&self.spec)?;
        let version = client.version().await?;
        let peers = self.peers(&client).await?;
        let mut facts = Vec::new();
        for c in self.selected(&client).await? {
            if cx.cancel.is_cancelled() {
                return Err(SourceError::Cancelled);
            }
            let info = client.info(&c).await?;
            let points = client.count(&c).await?;
            let samples = client.samples(&c, 3).await?;
            let mut f = CollectionFacts {
                name: c.clone(),
                points,
                info,
                samples,
                snapshot: String::new(),
                checksum: String::new(),
                size: 0,
                shards: Vec::new(),
            };
            // A collection snapshot holds only the shards of the peer that makes it: in a
            // deployment of several peers it is never used, whatever `peers` lists.
            if let Some(peers) = &peers {
                f.shards = self.snapshot_shards(&cx, peers, &f).await?;
            } else {
                let base = format!("/collections/{}", seg(&c));
                let snap = client
                    .create_snapshot(&base, f.points > self.spec.snapshot_poll_above)
                    .await?;
                stream(&cx, &client, &f.entry(None), &base, &snap).await?;
                f.snapshot = snap.name;
                f.checksum = snap.checksum;
                f.size = snap.size;
            }
            facts.push(f);
        }
        let total: u64 = facts.iter().map(|f| f.points).sum();
        let public_facts = [
            ("qdrant_version", json!(version)),
            (
                "collections",
                json!(facts.iter().map(|f| f.name.clone()).collect::<Vec<_>>()),
            ),
            ("points_total", json!(total)),
            ("peers", json!(peers.as_ref().map_or(1, BTreeMap::len))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Ok(SnapshotReport {
            facts: serde_json::to_value(QdrantFacts {
                qdrant_version: version,
                server: self.spec.url.clone(),
                collections: facts,
            })
            .expect("facts serialize"),
            public_facts,
        })
    }

    /// Snapshots each shard of collection `f` once, on a peer with an active replica.
    async fn snapshot_shards(
        &self,
        cx: &SnapshotCx,
        peers: &BTreeMap<u64, Client>,
        f: &CollectionFacts,
    ) -> Result<Vec<ShardFacts>, SourceError> {
        let c = &f.name;
        if cluster::custom_sharding(&f.info) {
            return Err(SourceError::Setup(format!(
                "qdrant collection {c} uses custom sharding (shard keys) in a distributed deployment; dr backs up automatically sharded collections only there"
            )));
        }
        let layout = survey(&peers.values().collect::<Vec<_>>(), c).await?;
        let plan = cluster::choose(&layout, &peers.keys().copied().collect(), true)
            .map_err(|e| no_replica(c, &e))?;
        let mut out = Vec::new();
        for (shard, peer) in plan {
            if cx.cancel.is_cancelled() {
                return Err(SourceError::Cancelled);
            }
            let client = &peers[&peer];
            let base = format!("/collections/{}/shards/{shard}", seg(c));
            let snap = client
                .create_snapshot(&base, f.points > self.spec.snapshot_poll_above)
                .await?;
            stream(cx, client, &f.entry(Some(shard)), &base, &snap).await?;
            let replicas = &layout[&shard];
            out.push(ShardFacts {
                id: shard,
                peer,
                replicas: replicas.iter().map(|r| (r.peer, r.state.clone())).collect(),
                points: replicas
                    .iter()
                    .find(|r| r.peer == peer)
                    .and_then(|r| r.points),
                snapshot: snap,
            });
        }
        Ok(out)
    }
}

/// Every given peer's view of collection `c`, merged.
///
/// # Errors
/// A peer does not answer.
pub async fn survey(peers: &[&Client], c: &str) -> Result<cluster::Layout, SourceError> {
    let mut views = Vec::new();
    for client in peers {
        views.push(client.layout(c).await?.1);
    }
    Ok(cluster::merge(views))
}

/// Streams snapshot `snap` of `base` from `client` into the pipeline as entry `name`, checking
/// its SHA-256 on the way; the server-side file is deleted once the pipeline is done with it.
async fn stream(
    cx: &SnapshotCx,
    client: &Client,
    name: &str,
    base: &str,
    snap: &SnapshotFile,
) -> Result<(), SourceError> {
    tracing::info!(path = base, snapshot = %snap.name, size = snap.size, "Qdrant snapshot created; streaming it.");
    let resp = client
        .req(
            reqwest::Method::GET,
            &format!("{base}/snapshots/{}", snap.name),
        )
        .send()
        .await
        .and_then(reqwest::Response::error_for_status);
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            client.delete_snapshot(base, &snap.name).await;
            return Err(request_err(
                &format!("download of {}", snap.name),
                e.without_url(),
            ));
        }
    };
    let len = resp.content_length();
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let body = Checked {
        inner: Box::new(reader),
        hash: Sha256::new(),
        expected: snap.checksum.clone(),
        object: format!("qdrant snapshot {} of {base}", snap.name),
        cleanup: Some((
            client.clone(),
            base.to_owned(),
            snap.name.clone(),
            tokio::runtime::Handle::current(),
        )),
    };
    cx.send_stream(name.as_bytes().to_vec(), Box::new(body), len)
        .await
}

fn no_replica(c: &str, e: &str) -> SourceError {
    request_err(
        &format!("collection {c}"),
        format!(
            "{e}: list every peer's REST URL in source.peers, or wait for the cluster to recover"
        ),
    )
}

fn join(ids: &[u64]) -> String {
    ids.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The vector of a scrolled point to search with: an unnamed dense vector (an array of
/// numbers), or the first dense one of named vectors. Multivectors (arrays of arrays) and
/// sparse vectors (objects) are not searched with.
fn dense_vector(v: &Value) -> Option<(Option<String>, Vec<f32>)> {
    let dense = |v: &Value| -> Option<Vec<f32>> {
        let a = v.as_array().filter(|a| !a.is_empty())?;
        a.iter().map(|x| x.as_f64().map(|f| f as f32)).collect()
    };
    match v {
        Value::Object(m) => m
            .iter()
            .find_map(|(name, v)| dense(v).map(|d| (Some(name.clone()), d))),
        _ => dense(v).map(|d| (None, d)),
    }
}

/// Whether `name` can be a collection name in a URL path: not empty, not a dot segment
/// (which URL parsers resolve, encoded or not), no control characters, at most 255 bytes.
pub fn valid_collection_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn collection_names_stay_one_path_segment() {
        assert_eq!(super::seg("docs_v2-1.x~"), "docs_v2-1.x~");
        assert_eq!(super::seg("../../x?wait=1#"), "..%2F..%2Fx%3Fwait%3D1%23");
        assert_eq!(super::seg("ü /"), "%C3%BC%20%2F");
    }

    use super::*;
    use reqwest::StatusCode;

    /// Answers recorded from Qdrant 1.19 (../shared/services/qdrant-rest-transcript.txt).
    const CREATED: &str = r#"{"result":{"name":"backup_test-5463276736570278-2026-11-23-00-43-17.snapshot","creation_time":"2026-11-23T00:43:17","size":299008,"checksum":"80996aec8e087af1264762f226ed6abc7f0789b2ea9ada2f9e98bafa2072ca5d"},"status":"ok","time":0.028176453}"#;
    const VERSION: &str = r#"{"title":"qdrant - vector search engine","version":"1.19.0","commit":"74f3e85b9473c62560006c043e13737ce6b48412"}"#;
    const UPLOADED: &str = r#"{"result":true,"status":"ok","time":0.074593834}"#;

    #[test]
    fn recorded_answers_parse() {
        let v = answer("snapshot", StatusCode::OK, CREATED).unwrap();
        let snap = SnapshotFile::parse("snapshot", &v).unwrap();
        assert_eq!(
            snap,
            SnapshotFile {
                name: "backup_test-5463276736570278-2026-11-23-00-43-17.snapshot".into(),
                checksum: "80996aec8e087af1264762f226ed6abc7f0789b2ea9ada2f9e98bafa2072ca5d".into(),
                size: 299_008,
            }
        );
        // `GET /` has no `result` wrapper.
        assert_eq!(
            answer("GET /", StatusCode::OK, VERSION).unwrap()["version"],
            "1.19.0"
        );
        assert_eq!(
            answer("upload", StatusCode::OK, UPLOADED).unwrap(),
            json!(true)
        );
        // A snapshot answer without a usable checksum is refused, not trusted.
        let bad = json!({"name": "x.snapshot", "checksum": "abc", "size": 1});
        let e = SnapshotFile::parse("snapshot", &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no SHA-256 checksum for x.snapshot"), "{e}");
        // Errors: a wrong key, Qdrant's own message, an HTML error page.
        let e = answer(
            "GET /",
            StatusCode::UNAUTHORIZED,
            r#"{"status":{"error":"Must provide an API key"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("wrong or missing API key"), "{e}");
        let e = answer(
            "upload",
            StatusCode::BAD_REQUEST,
            r#"{"status":{"error":"Bad request: Snapshot checksum mismatch: expected 00, got 80"},"time":0.01}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("400") && e.contains("checksum mismatch"), "{e}");
        let e = answer("GET /", StatusCode::BAD_GATEWAY, "<html>bad gateway</html>")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not JSON: <html>"), "{e}");
    }

    #[test]
    fn every_request_carries_the_api_key_and_uploads_ask_for_snapshot_priority() {
        let c = Client::new(
            "http://qdrant:6333/",
            Some("k-123".into()),
            Duration::from_secs(5),
        )
        .unwrap();
        let r = c
            .req(
                reqwest::Method::GET,
                "/collections/docs/snapshots/a.snapshot",
            )
            .build()
            .unwrap();
        assert_eq!(
            r.url().as_str(),
            "http://qdrant:6333/collections/docs/snapshots/a.snapshot"
        );
        assert_eq!(r.headers()["api-key"], "k-123");
        let none = Client::new("http://qdrant:6333", None, Duration::from_secs(5)).unwrap();
        assert!(
            none.req(reqwest::Method::GET, "/")
                .build()
                .unwrap()
                .headers()
                .get("api-key")
                .is_none()
        );
        assert_eq!(
            load::upload_path("/collections/docs/shards/2", "80996aec"),
            "/collections/docs/shards/2/snapshots/upload?wait=true&priority=snapshot&checksum=80996aec"
        );
        let f = CollectionFacts {
            name: "docs".into(),
            points: 0,
            info: Value::Null,
            samples: Vec::new(),
            snapshot: String::new(),
            checksum: String::new(),
            size: 0,
            shards: Vec::new(),
        };
        assert_eq!(f.entry(None), "collections/docs.snapshot");
        assert_eq!(f.entry(Some(3)), "collections/docs/shard-3.snapshot");
    }

    #[test]
    fn a_polled_snapshot_is_the_new_checksummed_entry() {
        let listed = |v: &str| -> Vec<Value> {
            serde_json::from_str::<Value>(v).unwrap()["result"]
                .as_array()
                .cloned()
                .unwrap()
        };
        // Shapes of `GET …/snapshots` (Qdrant 1.19, recorded in the transcript).
        let before = listed(
            r#"{"result":[{"name":"backup_test-5463276736570278-2026-11-23-00-43-17.snapshot","creation_time":"2026-11-23T00:43:17","size":299008,"checksum":"80996aec8e087af1264762f226ed6abc7f0789b2ea9ada2f9e98bafa2072ca5d"}],"status":"ok","time":0.001}"#,
        );
        assert_eq!(newly_listed(&before, &before), None);
        // Listed, checksum not written yet: keep polling.
        let moving = listed(
            r#"{"result":[{"name":"backup_test-5463276736570278-2026-11-23-00-43-17.snapshot","creation_time":"2026-11-23T00:43:17","size":299008,"checksum":"80996aec8e087af1264762f226ed6abc7f0789b2ea9ada2f9e98bafa2072ca5d"},{"name":"backup_test-5463276736570278-2026-11-23-01-00-00.snapshot","creation_time":"2026-11-23T01:00:00","size":311296}],"status":"ok","time":0.001}"#,
        );
        assert_eq!(newly_listed(&before, &moving), None);
        let mut done = moving.clone();
        done[1]["checksum"] = json!("11".repeat(32));
        let new = newly_listed(&before, &done).unwrap();
        assert_eq!(
            new.name,
            "backup_test-5463276736570278-2026-11-23-01-00-00.snapshot"
        );
        assert_eq!((new.size, new.checksum.len()), (311_296, 64));
    }

    #[test]
    fn samples_search_with_dense_vectors_only() {
        assert_eq!(
            dense_vector(&json!([0.5, -1.0])),
            Some((None, vec![0.5, -1.0]))
        );
        // A multivector (array of arrays) or a sparse vector is skipped, not sent as `[]`.
        assert_eq!(dense_vector(&json!([[0.1, 0.2], [0.3, 0.4]])), None);
        assert_eq!(dense_vector(&json!([])), None);
        let named = json!({
            "colbert": [[0.1, 0.2]],
            "keywords": {"indices": [1, 7], "values": [0.5, 0.5]},
            "text": [0.25, 0.75]
        });
        assert_eq!(
            dense_vector(&named),
            Some((Some("text".into()), vec![0.25, 0.75]))
        );
        assert_eq!(dense_vector(&json!({"colbert": [[0.1]]})), None);
    }

    fn checked(body: &'static [u8], expected: &str) -> Checked {
        Checked {
            inner: Box::new(std::io::Cursor::new(body)),
            hash: Sha256::new(),
            expected: expected.to_owned(),
            object: "qdrant snapshot s1 of /collections/docs".into(),
            cleanup: None,
        }
    }

    #[test]
    fn a_streamed_body_is_checked_against_the_server_checksum() {
        let body: &[u8] = b"a snapshot body, read in small pieces";
        let good = hex::encode(Sha256::digest(body));
        let mut out = Vec::new();
        let mut r = std::io::BufReader::with_capacity(5, checked(body, &good));
        std::io::copy(&mut r, &mut out).unwrap();
        assert_eq!(out, body);

        let wrong = hex::encode(Sha256::digest(b"something else"));
        let e = std::io::copy(&mut checked(body, &wrong), &mut std::io::sink()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        let msg = e.to_string();
        assert!(
            msg.contains("qdrant snapshot s1 of /collections/docs") && msg.contains(&wrong),
            "{msg}"
        );
        // A truncated download hashes differently, so it fails the same way.
        let e = std::io::copy(&mut checked(&body[..10], &good), &mut std::io::sink()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn cluster_answers_give_the_peers() {
        assert!(peers_of(&json!({"status": "disabled"})).is_empty());
        let enabled = json!({
            "status": "enabled",
            "peer_id": 5_840_281_372_442_713_u64,
            "peers": {
                "5840281372442713": {"uri": "http://qdrant-0:6335/"},
                "1171530823581318": {"uri": "http://qdrant-1:6335/"}
            },
            "raft_info": {"term": 2, "commit": 11, "role": "Leader", "is_voter": true}
        });
        assert_eq!(
            peers_of(&enabled),
            vec![1_171_530_823_581_318, 5_840_281_372_442_713]
        );
        // One peer in distributed mode is a single node for our purposes.
        let one = json!({"status": "enabled", "peer_id": 1, "peers": {"1": {"uri": "x"}}});
        assert_eq!(peers_of(&one), vec![1]);
    }
}
