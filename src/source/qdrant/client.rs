//! The REST client for one Qdrant server: every request carries the `api-key` header, every
//! answer is checked (JSON, status, Qdrant's own error message), collection names stay one
//! path segment.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Sample, cluster, dense_vector};
use crate::source::SourceError;

/// A snapshot file on the server: `{"name", "checksum", "size"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// File name on the server.
    #[serde(rename = "snapshot")]
    pub name: String,
    /// SHA-256, hex.
    pub checksum: String,
    /// Bytes.
    pub size: u64,
}

impl SnapshotFile {
    /// Reads a snapshot-creation answer; the checksum must be a SHA-256.
    pub(crate) fn parse(what: &str, v: &Value) -> Result<Self, SourceError> {
        let name = v["name"]
            .as_str()
            .ok_or_else(|| request_err(what, "no name in the answer"))?
            .to_owned();
        let checksum = v["checksum"].as_str().unwrap_or_default().to_owned();
        if checksum.len() != 64 || !checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(request_err(
                what,
                format!(
                    "the server gave no SHA-256 checksum for {name} (Qdrant keeps none for snapshots stored in S3: use local snapshot storage, the default, so that every download can be checked)"
                ),
            ));
        }
        Ok(Self {
            name,
            checksum,
            size: v["size"].as_u64().unwrap_or(0),
        })
    }
}

/// A REST client for one Qdrant server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
    /// Per request, and for a polled snapshot as a whole.
    timeout: Duration,
}

pub(crate) fn request_err(what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::request(format!("qdrant {what}"), e)
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
            .map_err(|e| request_err("client", e))?;
        Ok(Self {
            http,
            url: url.trim_end_matches('/').to_owned(),
            api_key,
            timeout,
        })
    }

    /// A client for another server (a peer) with the same API key.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn for_peer(&self, url: &str, timeout: Duration) -> Result<Self, SourceError> {
        Self::new(url, self.api_key.clone(), timeout)
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.url));
        match &self.api_key {
            Some(k) => r.header("api-key", k),
            None => r,
        }
    }

    /// Sends and returns the `result` of a JSON answer, with a clear error otherwise.
    pub(crate) async fn call(
        &self,
        what: &str,
        r: reqwest::RequestBuilder,
    ) -> Result<Value, SourceError> {
        let resp = r
            .send()
            .await
            .map_err(|e| request_err(what, e.without_url()))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| request_err(what, e.without_url()))?;
        answer(what, status, &text)
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

    /// This peer's id (`GET /cluster` in distributed mode).
    ///
    /// # Errors
    /// As [`Client::cluster_peers`]; no peer id (not distributed).
    pub async fn peer_id(&self) -> Result<u64, SourceError> {
        let v = self
            .call("GET /cluster", self.req(reqwest::Method::GET, "/cluster"))
            .await?;
        v["peer_id"].as_u64().ok_or_else(|| {
            request_err(
                &format!("GET /cluster on {}", self.url),
                "no peer_id: this server is not part of a distributed deployment",
            )
        })
    }

    /// This peer's view of a collection's shards (`GET /collections/{c}/cluster`).
    ///
    /// # Errors
    /// As [`Client::cluster_peers`].
    pub async fn layout(&self, c: &str) -> Result<(u64, cluster::Layout), SourceError> {
        let what = format!("shard layout of {c} on {}", self.url);
        let v = self
            .call(
                &what,
                self.req(
                    reqwest::Method::GET,
                    &format!("/collections/{}/cluster", seg(c)),
                ),
            )
            .await?;
        cluster::parse_layout(&v).map_err(|e| request_err(&what, e))
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
            .ok_or_else(|| request_err("GET /", "no version in the answer"))
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
            self.req(reqwest::Method::GET, &format!("/collections/{}", seg(c))),
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
                    &format!("/collections/{}/points/count", seg(c)),
                )
                .json(&json!({ "exact": true })),
            )
            .await?;
        v["count"]
            .as_u64()
            .ok_or_else(|| request_err("count", "no count in the answer"))
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
                    &format!("/collections/{}/points/query", seg(c)),
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
    pub(crate) async fn samples(&self, c: &str, n: usize) -> Result<Vec<Sample>, SourceError> {
        let v = self
            .call(
                &format!("scroll of {c}"),
                self.req(
                    reqwest::Method::POST,
                    &format!("/collections/{}/points/scroll", seg(c)),
                )
                .json(&json!({ "limit": n, "with_vector": true, "with_payload": false })),
            )
            .await?;
        let mut out = Vec::new();
        for p in v["points"].as_array().into_iter().flatten() {
            let Some((using, vector)) = dense_vector(&p["vector"]) else {
                continue;
            };
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

    /// Creates a snapshot of `base` (`/collections/{c}` or `/collections/{c}/shards/{id}`):
    /// one request that waits for it, or (`poll`) `wait=false` and then the snapshot list
    /// polled until a new, checksummed snapshot appears, within the client's timeout.
    pub(crate) async fn create_snapshot(
        &self,
        base: &str,
        poll: bool,
    ) -> Result<SnapshotFile, SourceError> {
        let what = format!("snapshot of {base}");
        if !poll {
            let v = self
                .call(
                    &what,
                    self.req(
                        reqwest::Method::POST,
                        &format!("{base}/snapshots?wait=true"),
                    ),
                )
                .await?;
            return SnapshotFile::parse(&what, &v);
        }
        let before = self.snapshots(base).await?;
        self.call(
            &what,
            self.req(
                reqwest::Method::POST,
                &format!("{base}/snapshots?wait=false"),
            ),
        )
        .await?;
        let start = std::time::Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
            if let Some(new) = newly_listed(&before, &self.snapshots(base).await?) {
                return Ok(new);
            }
            if start.elapsed() > self.timeout {
                return Err(request_err(
                    &what,
                    format!(
                        "no new snapshot listed after {} s (source.snapshot_timeout)",
                        self.timeout.as_secs()
                    ),
                ));
            }
        }
    }

    /// `GET {base}/snapshots`: the raw descriptions.
    pub(crate) async fn snapshots(&self, base: &str) -> Result<Vec<Value>, SourceError> {
        let v = self
            .call(
                &format!("snapshot list of {base}"),
                self.req(reqwest::Method::GET, &format!("{base}/snapshots")),
            )
            .await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Deletes a server-side snapshot of `base` (best effort, logged).
    pub async fn delete_snapshot(&self, base: &str, name: &str) {
        let r = self
            .call(
                &format!("delete of snapshot {name}"),
                self.req(
                    reqwest::Method::DELETE,
                    &format!("{base}/snapshots/{name}?wait=true"),
                ),
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(path = base, snapshot = name, error = %e, "Could not delete the server-side snapshot.");
        }
    }

    /// Deletes a collection.
    ///
    /// # Errors
    /// As [`Client::version`].
    pub async fn delete_collection(&self, c: &str) -> Result<(), SourceError> {
        self.call(
            &format!("delete of collection {c}"),
            self.req(reqwest::Method::DELETE, &format!("/collections/{}", seg(c))),
        )
        .await
        .map(|_| ())
    }
}

/// The first snapshot in `after` that was not in `before` and has its checksum (Qdrant moves a
/// finished snapshot into the list, then writes its checksum).
pub(crate) fn newly_listed(before: &[Value], after: &[Value]) -> Option<SnapshotFile> {
    let old: Vec<&str> = before.iter().filter_map(|d| d["name"].as_str()).collect();
    after
        .iter()
        .filter(|d| d["name"].as_str().is_some_and(|n| !old.contains(&n)))
        .find_map(|d| SnapshotFile::parse("snapshot", d).ok())
}

/// The `result` of a JSON answer, or a clear error: not JSON, a wrong API key, an HTTP error
/// with Qdrant's message.
pub(crate) fn answer(
    what: &str,
    status: reqwest::StatusCode,
    text: &str,
) -> Result<Value, SourceError> {
    let v: Value = serde_json::from_str(text).map_err(|_| {
        request_err(
            what,
            format!(
                "HTTP {status}, not JSON: {}",
                text.chars().take(200).collect::<String>()
            ),
        )
    })?;
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(request_err(
            what,
            format!("HTTP {status}: wrong or missing API key"),
        ));
    }
    if !status.is_success() {
        let msg = v["status"]["error"].as_str().unwrap_or("").to_owned();
        return Err(request_err(what, format!("HTTP {status} {msg}")));
    }
    Ok(v.get("result").cloned().unwrap_or(v))
}

/// Peer ids in a `GET /cluster` result: `{"status":"disabled"}` on a single node,
/// `{"status":"enabled","peer_id":…,"peers":{"<id>":{"uri":…},…},…}` in distributed mode.
pub(crate) fn peers_of(result: &Value) -> Vec<u64> {
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

/// `s` as one URL path segment: collection names come from configuration and from manifests
/// (input from a possibly hostile writer), and must never add path segments or a query.
pub(crate) fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
