//! Qdrant: collection snapshots over the REST API, streamed into the pipeline while their
//! SHA-256 is computed and compared with the server's checksum.
//!
//! Per collection: `GET /collections/{c}` (config, recorded), an exact point count, a sample
//! (the top-5 ids and scores of a search with a few stored vectors, recorded for drills), then
//! `POST /collections/{c}/snapshots?wait=true`, `GET …/snapshots/{name}` streamed, and
//! `DELETE …/snapshots/{name}` once the pipeline is done with it (also when it failed). Every
//! call sends the `api-key` header. `qdrant-client` (gRPC) is not used: its snapshot download
//! sends no API key and checks no checksum, and everything else here is plain REST.

pub mod restore;

use std::io::Read;
use std::time::Duration;

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Artifact, Body, Chunking, SnapshotCx, SnapshotReport, SourceError};
use crate::config::QdrantSpec;
use crate::repo::manifest::{EntryKind, EntryName};

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

/// What the manifest records per collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionFacts {
    /// Collection name.
    pub name: String,
    /// Exact point count at snapshot time.
    pub points: u64,
    /// `GET /collections/{c}` result (config, status).
    pub info: Value,
    /// Recorded searches.
    pub samples: Vec<Sample>,
    /// Server-side snapshot name.
    pub snapshot: String,
    /// SHA-256 of the snapshot file (checked while streaming).
    pub checksum: String,
    /// Snapshot size.
    pub size: u64,
}

/// A REST client for one Qdrant server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
}

fn unusable(what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Unusable(format!("qdrant {what}: {e}"))
}

impl Client {
    /// A client for `url` (no trailing slash) with an optional API key.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(url: &str, api_key: Option<String>, timeout: Duration) -> Result<Self, SourceError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .build()
            .map_err(|e| unusable("client", e))?;
        Ok(Self {
            http,
            url: url.trim_end_matches('/').to_owned(),
            api_key,
        })
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.url));
        match &self.api_key {
            Some(k) => r.header("api-key", k),
            None => r,
        }
    }

    /// Sends and returns the `result` of a JSON answer, with a clear error otherwise.
    async fn call(&self, what: &str, r: reqwest::RequestBuilder) -> Result<Value, SourceError> {
        let resp = r
            .send()
            .await
            .map_err(|e| unusable(what, e.without_url()))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| unusable(what, e.without_url()))?;
        let v: Value = serde_json::from_str(&text).map_err(|_| {
            unusable(
                what,
                format!(
                    "HTTP {status}, not JSON: {}",
                    text.chars().take(200).collect::<String>()
                ),
            )
        })?;
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(unusable(
                what,
                format!("HTTP {status}: wrong or missing API key"),
            ));
        }
        if !status.is_success() {
            let msg = v["status"]["error"].as_str().unwrap_or("").to_owned();
            return Err(unusable(what, format!("HTTP {status} {msg}")));
        }
        Ok(v.get("result").cloned().unwrap_or(v))
    }

    /// The peer ids of a distributed deployment (`GET /cluster`); empty for a single node.
    ///
    /// # Errors
    /// Unreachable server, bad answer.
    pub async fn cluster_peers(&self) -> Result<Vec<u64>, SourceError> {
        let v = self
            .call("GET /cluster", self.req(reqwest::Method::GET, "/cluster"))
            .await?;
        Ok(peers_of(&v))
    }

    /// Server version (`GET /`).
    ///
    /// # Errors
    /// Unreachable server, bad answer.
    pub async fn version(&self) -> Result<String, SourceError> {
        let v = self
            .call("GET /", self.req(reqwest::Method::GET, "/"))
            .await?;
        v["version"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| unusable("GET /", "no version in the answer"))
    }

    /// Collection names.
    ///
    /// # Errors
    /// As [`Client::version`].
    pub async fn collections(&self) -> Result<Vec<String>, SourceError> {
        let v = self
            .call(
                "GET /collections",
                self.req(reqwest::Method::GET, "/collections"),
            )
            .await?;
        let list = v.get("collections").unwrap_or(&v);
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().or_else(|| c.as_str()).map(str::to_owned))
            .collect())
    }

    /// `GET /collections/{c}`.
    ///
    /// # Errors
    /// As [`Client::version`].
    pub async fn info(&self, c: &str) -> Result<Value, SourceError> {
        self.call(
            &format!("GET /collections/{c}"),
            self.req(reqwest::Method::GET, &format!("/collections/{c}")),
        )
        .await
    }

    /// Exact point count.
    ///
    /// # Errors
    /// As [`Client::version`].
    pub async fn count(&self, c: &str) -> Result<u64, SourceError> {
        let v = self
            .call(
                &format!("count of {c}"),
                self.req(
                    reqwest::Method::POST,
                    &format!("/collections/{c}/points/count"),
                )
                .json(&json!({ "exact": true })),
            )
            .await?;
        v["count"]
            .as_u64()
            .ok_or_else(|| unusable("count", "no count in the answer"))
    }

    /// The ids and scores of the top `limit` points for `vector`.
    ///
    /// # Errors
    /// As [`Client::version`].
    pub async fn search(
        &self,
        c: &str,
        vector: &[f32],
        using: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Value>, Vec<f64>), SourceError> {
        let mut body = json!({ "query": vector, "limit": limit });
        if let Some(u) = using {
            body["using"] = json!(u);
        }
        let v = self
            .call(
                &format!("query of {c}"),
                self.req(
                    reqwest::Method::POST,
                    &format!("/collections/{c}/points/query"),
                )
                .json(&body),
            )
            .await?;
        let points = v.get("points").unwrap_or(&v);
        let list = points.as_array().cloned().unwrap_or_default();
        Ok((
            list.iter().map(|p| p["id"].clone()).collect(),
            list.iter().filter_map(|p| p["score"].as_f64()).collect(),
        ))
    }

    /// Records `n` searches with stored vectors.
    async fn samples(&self, c: &str, n: usize) -> Result<Vec<Sample>, SourceError> {
        let v = self
            .call(
                &format!("scroll of {c}"),
                self.req(
                    reqwest::Method::POST,
                    &format!("/collections/{c}/points/scroll"),
                )
                .json(&json!({ "limit": n, "with_vector": true, "with_payload": false })),
            )
            .await?;
        let mut out = Vec::new();
        for p in v["points"].as_array().into_iter().flatten() {
            // Unnamed vector: an array; named: an object of arrays (the first dense one).
            let (using, vec) = match &p["vector"] {
                Value::Array(a) => (None, a.clone()),
                Value::Object(m) => match m.iter().find(|(_, v)| v.is_array()) {
                    Some((name, Value::Array(a))) => (Some(name.clone()), a.clone()),
                    _ => continue,
                },
                _ => continue,
            };
            let vector: Vec<f32> = vec
                .iter()
                .filter_map(|x| x.as_f64().map(|f| f as f32))
                .collect();
            let (top, scores) = self.search(c, &vector, using.as_deref(), 5).await?;
            out.push(Sample {
                using,
                vector,
                top,
                scores,
            });
        }
        Ok(out)
    }

    /// Creates a collection snapshot and waits for it: (name, checksum, size).
    async fn create_snapshot(&self, c: &str) -> Result<(String, String, u64), SourceError> {
        let v = self
            .call(
                &format!("snapshot of {c}"),
                self.req(
                    reqwest::Method::POST,
                    &format!("/collections/{c}/snapshots?wait=true"),
                ),
            )
            .await?;
        let name = v["name"]
            .as_str()
            .ok_or_else(|| unusable("snapshot", "no name in the answer"))?
            .to_owned();
        let checksum = v["checksum"].as_str().unwrap_or_default().to_owned();
        if checksum.len() != 64 {
            return Err(unusable(
                "snapshot",
                format!("{c}: the server gave no SHA-256 checksum for {name}"),
            ));
        }
        Ok((name, checksum, v["size"].as_u64().unwrap_or(0)))
    }

    /// Deletes a server-side snapshot (best effort, logged).
    pub async fn delete_snapshot(&self, c: &str, name: &str) {
        let r = self
            .call(
                &format!("delete of snapshot {name}"),
                self.req(
                    reqwest::Method::DELETE,
                    &format!("/collections/{c}/snapshots/{name}?wait=true"),
                ),
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(collection = c, snapshot = name, error = %e, "Could not delete the server-side snapshot.");
        }
    }

    /// Deletes a collection.
    ///
    /// # Errors
    /// As [`Client::version`].
    pub async fn delete_collection(&self, c: &str) -> Result<(), SourceError> {
        self.call(
            &format!("delete of collection {c}"),
            self.req(reqwest::Method::DELETE, &format!("/collections/{c}")),
        )
        .await
        .map(|_| ())
    }
}

/// The bytes of a download, hashed as they pass; a mismatch with the server's checksum at the
/// end is a read error, so the backup fails and commits nothing. Dropping it (the pipeline is
/// done, or gave up) deletes the server-side snapshot.
struct Checked {
    inner: Box<dyn Read + Send>,
    hash: Sha256,
    expected: String,
    object: String,
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
        if let Some((client, c, name, rt)) = self.cleanup.take() {
            rt.spawn(async move { client.delete_snapshot(&c, &name).await });
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
            .map(|k| k.read().map_err(SourceError::Unusable))
            .transpose()?;
        Client::new(&spec.url, key, spec.snapshot_timeout)
    }

    pub(crate) async fn check(&self) -> Result<(), SourceError> {
        let client = Self::client(&self.spec)?;
        client.version().await?;
        single_node(&client).await
    }

    async fn selected(&self, client: &Client) -> Result<Vec<String>, SourceError> {
        let all = client.collections().await?;
        if self.spec.collections.is_empty() {
            return Ok(all);
        }
        for c in &self.spec.collections {
            if !all.contains(c) {
                return Err(SourceError::Unusable(format!(
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
        single_node(&client).await?;
        let mut facts = Vec::new();
        for c in self.selected(&client).await? {
            if cx.cancel.is_cancelled() {
                return Err(SourceError::Cancelled);
            }
            let info = client.info(&c).await?;
            let points = client.count(&c).await?;
            let samples = client.samples(&c, 3).await?;
            let (name, checksum, size) = client.create_snapshot(&c).await?;
            tracing::info!(collection = %c, snapshot = %name, size, "Qdrant snapshot created; streaming it.");
            let resp = client
                .req(
                    reqwest::Method::GET,
                    &format!("/collections/{c}/snapshots/{name}"),
                )
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    client.delete_snapshot(&c, &name).await;
                    return Err(unusable(&format!("download of {name}"), e.without_url()));
                }
            };
            let stream = resp.bytes_stream().map_err(std::io::Error::other);
            let reader =
                tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
            let body = Checked {
                inner: Box::new(reader),
                hash: Sha256::new(),
                expected: checksum.clone(),
                object: format!("qdrant snapshot {name} of collection {c}"),
                cleanup: Some((
                    client.clone(),
                    c.clone(),
                    name.clone(),
                    tokio::runtime::Handle::current(),
                )),
            };
            let artifact = Artifact {
                name: EntryName(format!("collections/{c}.snapshot").into_bytes()),
                kind: EntryKind::Stream,
                mode: 0o600,
                mtime_ns: chrono::Utc::now().timestamp_nanos_opt(),
                target: None,
                body: Body::Reader(Box::new(body)),
                chunking: Chunking::ContentDefined,
            };
            cx.out
                .send(artifact)
                .await
                .map_err(|_| SourceError::PipelineGone)?;
            facts.push(CollectionFacts {
                name: c,
                points,
                info,
                samples,
                snapshot: name,
                checksum,
                size,
            });
        }
        let total: u64 = facts.iter().map(|f| f.points).sum();
        let public_facts = [
            ("qdrant_version", json!(version)),
            (
                "collections",
                json!(facts.iter().map(|f| f.name.clone()).collect::<Vec<_>>()),
            ),
            ("points_total", json!(total)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Ok(SnapshotReport {
            facts: json!({ "qdrant_version": version, "server": self.spec.url, "collections": facts }),
            public_facts,
        })
    }
}

/// Peer ids in a `GET /cluster` result: `{"status":"disabled"}` on a single node,
/// `{"status":"enabled","peer_id":…,"peers":{"<id>":{"uri":…},…},…}` in distributed mode.
fn peers_of(result: &Value) -> Vec<u64> {
    if result["status"] != "enabled" {
        return Vec::new();
    }
    let mut ids: Vec<u64> = result["peers"]
        .as_object()
        .map(|m| m.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// Refuses a distributed deployment of several peers: a collection snapshot holds only the
/// shards of the peer that made it, so backing up one URL would silently store part of each
/// collection. Per-peer snapshots are not implemented yet.
async fn single_node(client: &Client) -> Result<(), SourceError> {
    let peers = client.cluster_peers().await?;
    if peers.len() > 1 {
        return Err(SourceError::Unusable(format!(
            "qdrant at {} is a distributed cluster of {} peers ({}): a collection snapshot holds only one peer's shards, and dr does not yet snapshot every peer; refusing to store a partial backup",
            client.url(),
            peers.len(),
            peers
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
