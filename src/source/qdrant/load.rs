//! Restoring Qdrant collection snapshots: version compatibility, upload with
//! `priority=snapshot` (the default priority recovers an *empty* collection when it already
//! exists) and the server checking our checksum, then the point count against the manifest.
//! Sharded backups of a distributed deployment are restored shard by shard (see
//! [`super::cluster`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Client, CollectionFacts, Sample, cluster, request_err};
use crate::source::SourceError;

fn minor(v: &str) -> Option<(u64, u64)> {
    let mut it = v.trim_start_matches('v').split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// A snapshot from Qdrant `snapshot` restores into a server of version `server` only when
/// the server is the same minor version or one newer.
///
/// # Errors
/// A message saying which versions differ and how.
pub fn compatible(snapshot: &str, server: &str) -> Result<(), String> {
    let (Some(s), Some(v)) = (minor(snapshot), minor(server)) else {
        return Err(format!(
            "cannot compare Qdrant versions `{snapshot}` (snapshot) and `{server}` (server)"
        ));
    };
    if v.0 != s.0 || v.1 < s.1 {
        return Err(format!(
            "the snapshot is from Qdrant {snapshot}; the server runs {server}, which is older: restore into a server of {}.{} or {}.{}",
            s.0,
            s.1,
            s.0,
            s.1 + 1
        ));
    }
    if v.1 > s.1 + 1 {
        return Err(format!(
            "the snapshot is from Qdrant {snapshot}; the server runs {server}, more than one minor version newer (Qdrant supports upgrading one minor version at a time): restore into {}.{} or {}.{} first",
            s.0,
            s.1,
            s.0,
            s.1 + 1
        ));
    }
    Ok(())
}

/// Where a restore goes: the server named on the command line and, for a distributed
/// deployment, the REST URLs of its other peers.
pub struct Target {
    /// The server named on the command line.
    pub entry: Client,
    /// The other peers' REST clients (may be empty).
    pub peers: Vec<Client>,
}

impl Target {
    /// A single server.
    pub fn single(entry: Client) -> Self {
        Self {
            entry,
            peers: Vec::new(),
        }
    }
}

/// How long the shards of a re-created collection may take to appear on their peers, and its
/// replicas to become active after the upload.
const PLACEMENT: Duration = Duration::from_secs(60);
const RESYNC: Duration = Duration::from_secs(600);

/// Restores collection `facts` from the files restored under `dir` as collection `name`, and
/// checks the exact point count against the manifest's: a single node's collection snapshot is
/// uploaded as is; a sharded backup goes through [`restore_sharded`].
///
/// # Errors
/// Upload refused (bad checksum, server error), a shard layout that does not fit, replicas
/// that do not become active, or a different point count.
pub async fn restore_collection(
    t: &Target,
    dir: &Path,
    name: &str,
    facts: &CollectionFacts,
) -> Result<u64, SourceError> {
    if facts.shards.is_empty() {
        let file = dir.join(facts.entry(None));
        upload(
            &t.entry,
            &format!("/collections/{}", super::seg(name)),
            &file,
            &facts.checksum,
        )
        .await?;
    } else {
        restore_sharded(t, dir, name, facts).await?;
    }
    let count = t.entry.count(name).await?;
    if count != facts.points {
        return Err(request_err(
            "restore",
            format!(
                "collection {name} holds {count} points after the upload, the snapshot recorded {}",
                facts.points
            ),
        ));
    }
    Ok(count)
}

/// Re-creates the collection (same shard count, vectors, index settings and payload indexes)
/// unless it exists with the same shards, uploads each shard's snapshot to a peer hosting
/// that shard, and waits until every replica is active.
async fn restore_sharded(
    t: &Target,
    dir: &Path,
    name: &str,
    facts: &CollectionFacts,
) -> Result<(), SourceError> {
    let entry = &t.entry;
    let what = |s: &str| format!("{s} of collection {name} on {}", entry.url());
    if !entry.collections().await?.iter().any(|c| c == name) {
        let peers = entry.cluster_peers().await?.len();
        entry
            .call(
                &what("creation"),
                entry
                    .req(
                        reqwest::Method::PUT,
                        &format!("/collections/{}?wait=true", super::seg(name)),
                    )
                    .json(&cluster::create_body(&facts.info, peers)),
            )
            .await?;
        for body in cluster::index_bodies(&facts.info) {
            entry
                .call(
                    &what(&format!("payload index {}", body["field_name"])),
                    entry
                        .req(
                            reqwest::Method::PUT,
                            &format!("/collections/{}/index?wait=true", super::seg(name)),
                        )
                        .json(&body),
                )
                .await?;
        }
    }
    let mut by_id = BTreeMap::new();
    for c in std::iter::once(entry).chain(&t.peers) {
        by_id.insert(c.layout(name).await?.0, c);
    }
    let clients: Vec<&Client> = by_id.values().copied().collect();
    let want: BTreeSet<u32> = facts.shards.iter().map(|s| s.id).collect();
    // Every peer must have created its replicas before they can take an upload.
    let placement = Deadline::new(what("shard placement"), "created on their peers", PLACEMENT);
    let (layout, plan) = loop {
        let layout = super::survey(&clients, name).await?;
        let have: BTreeSet<u32> = layout.keys().copied().collect();
        if have != want {
            return Err(request_err(
                &what("shard layout"),
                format!(
                    "the collection has shards {have:?}; the backup has {want:?}: restore under another name (--rename-to) or drop it first"
                ),
            ));
        }
        let plan =
            cluster::choose(&layout, &by_id.keys().copied().collect(), false).map_err(|e| {
                request_err(
                    &what("shard layout"),
                    format!("{e}: pass --qdrant-peer URL for every peer of the cluster"),
                )
            })?;
        let unplaced: Vec<String> = plan
            .iter()
            .filter(|(s, p)| {
                !layout[s]
                    .iter()
                    .any(|r| r.peer == **p && r.points.is_some())
            })
            .map(|(s, p)| format!("shard {s} on peer {p}"))
            .collect();
        if unplaced.is_empty() {
            break (layout, plan);
        }
        placement
            .wait(&unplaced, Duration::from_millis(500))
            .await?;
    };
    for s in &facts.shards {
        let host = by_id[&plan[&s.id]];
        tracing::info!(
            collection = name,
            shard = s.id,
            peer = plan[&s.id],
            url = host.url(),
            replicas = layout[&s.id].len(),
            "Uploading the shard snapshot."
        );
        upload(
            host,
            &format!("/collections/{}/shards/{}", super::seg(name), s.id),
            &dir.join(facts.entry(Some(s.id))),
            &s.snapshot.checksum,
        )
        .await?;
    }
    // priority=snapshot marks the shard's other replicas dead; they re-sync from the upload.
    let resync = Deadline::new(what("replica re-synchronisation"), "active", RESYNC);
    loop {
        let waiting = cluster::not_active(&super::survey(&clients, name).await?);
        if waiting.is_empty() {
            return Ok(());
        }
        resync.wait(&waiting, Duration::from_secs(1)).await?;
    }
}

/// How long something on the server may take before a restore gives up, naming what is still
/// pending: "not {state} after N s: …".
struct Deadline {
    what: String,
    state: &'static str,
    start: Instant,
    limit: Duration,
}

impl Deadline {
    fn new(what: String, state: &'static str, limit: Duration) -> Self {
        Self {
            what,
            state,
            start: Instant::now(),
            limit,
        }
    }

    /// Sleeps `pause` while within the limit; past it, the error naming `pending`.
    async fn wait(&self, pending: &[String], pause: Duration) -> Result<(), SourceError> {
        if self.start.elapsed() > self.limit {
            return Err(request_err(
                &self.what,
                format!(
                    "not {} after {} s: {}",
                    self.state,
                    self.limit.as_secs(),
                    pending.join("; ")
                ),
            ));
        }
        tokio::time::sleep(pause).await;
        Ok(())
    }
}

/// Uploads `file` as a snapshot of `base` (`/collections/{c}` or a shard of it) with
/// `priority=snapshot` (the default priority recovers an *empty* collection when it already
/// exists) and our checksum, which the server verifies.
async fn upload(
    client: &Client,
    base: &str,
    file: &Path,
    checksum: &str,
) -> Result<(), SourceError> {
    let f = tokio::fs::File::open(file)
        .await
        .map_err(|e| SourceError::Read {
            path: file.display().to_string(),
            source: e,
        })?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
    let part = reqwest::multipart::Part::stream_with_length(body, len).file_name(
        file.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let form = reqwest::multipart::Form::new().part("snapshot", part);
    client
        .call(
            &format!("upload of {} to {base} on {}", file.display(), client.url()),
            client
                .req(reqwest::Method::POST, &upload_path(base, checksum))
                .multipart(form),
        )
        .await
        .map(|_| ())
}

pub(super) fn upload_path(base: &str, checksum: &str) -> String {
    format!("{base}/snapshots/upload?wait=true&priority=snapshot&checksum={checksum}")
}

/// Runs the recorded searches against `target`: `(passed, detail)` per sample.
pub async fn check_samples(
    client: &Client,
    target: &str,
    samples: &[Sample],
) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    for s in samples {
        match client
            .search(target, &s.vector, s.using.as_deref(), s.top.len().max(1))
            .await
        {
            Ok((top, _)) => out.push((
                top == s.top,
                format!(
                    "top ids {} (recorded {})",
                    serde_json::json!(top),
                    serde_json::json!(s.top)
                ),
            )),
            Err(e) => out.push((false, e.to_string())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_rules() {
        compatible("1.19.0", "1.19.3").unwrap();
        compatible("1.19.0", "1.20.0").unwrap();
        assert!(
            compatible("1.19.0", "1.18.9")
                .unwrap_err()
                .contains("older")
        );
        assert!(
            compatible("1.19.0", "1.21.0")
                .unwrap_err()
                .contains("more than one minor")
        );
        assert!(compatible("1.19.0", "2.0.0").is_err());
        assert!(compatible("x", "1.0.0").is_err());
    }
}
