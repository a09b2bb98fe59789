//! Redis: a single server's `dump.rdb`, or a cluster's RDB per master in `shards/` with
//! `slot-map.json` beside them; with `cluster_layout_from`, the live cluster's slot layout is
//! checked against the snapshot's (refused, naming the difference) and each file placed on
//! the node that serves its slots. Starting a server on a restored RDB.

use std::path::{Path, PathBuf};

use super::{Job, RestoreError};
use crate::config::RedisSpec;
use crate::source::redis::server::Started;
use crate::source::redis::{RedisFacts, Shard, layout_difference, live_layout};

/// A Redis snapshot restored.
#[derive(Debug)]
pub struct Restored {
    /// The files and manifest.
    pub files: super::files::Restored,
    /// The absolute directory restored into.
    pub dir: PathBuf,
    /// What the snapshot recorded at backup (key counts, version, slot map).
    pub facts: RedisFacts,
    /// A cluster snapshot's layout, `None` for a single server.
    pub cluster: Option<Cluster>,
}

/// A Redis Cluster snapshot's layout and, when checked against a live cluster, where each
/// file goes.
#[derive(Debug)]
pub struct Cluster {
    /// One shard per master, as recorded at backup.
    pub layout: Vec<Shard>,
    /// `slot-map.json` as written.
    pub slot_map: Vec<serde_json::Value>,
    /// "FILE -> HOST:PORT (slots …, N keys at backup)", with `cluster_layout_from`.
    pub placement: Vec<String>,
}

/// Restores the request's snapshot; for a cluster, writes the slot map and checks the layout
/// of the cluster `cluster_layout_from` names.
///
/// # Errors
/// Restore failures; a layout that differs or a `cluster_layout_from` for a single-server
/// snapshot (usage); an unreachable cluster.
pub async fn restore(job: &Job<'_>, spec: &RedisSpec) -> Result<Restored, RestoreError> {
    let req = job.req;
    let files = super::files::restore(job).await?;
    let facts = RedisFacts::of(
        &files.manifest.snapshot.to_string(),
        &files.manifest.source.facts,
    )?;
    let dir = req.absolute_dir()?;
    let from = req.options.cluster_layout_from.as_deref();
    let cluster = match facts.layout() {
        Some(layout) => Some(cluster(spec, &dir, layout, from).await?),
        None if from.is_some() => {
            return Err(RestoreError::usage(format!(
                "snapshot {} is of a single Redis server, not a cluster: --cluster-layout-from does not apply",
                files.manifest.snapshot
            )));
        }
        None => None,
    };
    Ok(Restored {
        files,
        dir,
        facts,
        cluster,
    })
}

/// Writes `dir/slot-map.json` and, with `from`, checks the live cluster's layout.
async fn cluster(
    spec: &RedisSpec,
    dir: &Path,
    layout: Vec<Shard>,
    from: Option<&str>,
) -> Result<Cluster, RestoreError> {
    let slot_map: Vec<serde_json::Value> = layout
        .iter()
        .map(|sh| serde_json::json!({ "file": sh.file(), "slots": sh.ranges(), "node_at_backup": format!("{}:{}", sh.host, sh.port), "keys": sh.keys }))
        .collect();
    let path = dir.join("slot-map.json");
    let json = serde_json::to_vec_pretty(&slot_map).expect("a slot map serializes");
    std::fs::write(&path, json).map_err(RestoreError::io(format!("writing {}", path.display())))?;
    let mut placement = Vec::new();
    if let Some(url) = from {
        let (host, port) = parse_node_url(url)?;
        let live = live_layout(&RedisSpec {
            host,
            port,
            ..spec.clone()
        })
        .await?;
        if let Some(diff) = layout_difference(&layout, &live) {
            return Err(RestoreError::usage_with_hint(
                format!("refusing: {diff}"),
                "reshard the target cluster to the same layout, or restore each RDB by hand",
            ));
        }
        for (sh, node) in layout.iter().zip(&live) {
            placement.push(format!(
                "{}/{} -> {}:{} (slots {}, {} keys at backup)",
                dir.display(),
                sh.file(),
                node.host,
                node.port,
                sh.ranges(),
                sh.keys
            ));
        }
    }
    Ok(Cluster {
        layout,
        slot_map,
        placement,
    })
}

/// `redis://HOST:PORT` → (host, port).
fn parse_node_url(url: &str) -> Result<(String, u16), RestoreError> {
    url.strip_prefix("redis://")
        .and_then(|r| r.trim_end_matches('/').rsplit_once(':'))
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| RestoreError::usage(format!("`{url}` is not redis://HOST:PORT")))
}

/// Moves each shard's RDB of a cluster snapshot restored in `dir` into its own directory
/// under `root` (`shard-<i>/dump.rdb`), for one server per master; returns those directories.
///
/// # Errors
/// I/O.
pub fn split_shards(dir: &Path, layout: &[Shard], root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for (i, shard) in layout.iter().enumerate() {
        let d = root.join(format!("shard-{i}"));
        std::fs::create_dir_all(&d)?;
        std::fs::rename(dir.join(shard.file()), d.join("dump.rdb"))?;
        dirs.push(d);
    }
    Ok(dirs)
}

/// Starts `redis-server` on `dir/dump.rdb` at 127.0.0.1:`port` (as `run_as` when given),
/// off the async runtime, and checks the key count against `expected` when given.
///
/// # Errors
/// The server does not start or load, or holds another key count.
pub async fn start(
    dir: PathBuf,
    port: u16,
    expected: Option<u64>,
    run_as: Option<crate::host::User>,
    servers: Vec<PathBuf>,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<Started, RestoreError> {
    let started = tokio::task::spawn_blocking(move || {
        crate::source::redis::server::start(
            &dir,
            port,
            expected,
            run_as.as_ref(),
            &servers,
            &cancel,
        )
    })
    .await
    .map_err(|e| crate::pipeline::PipelineError::Internal(e.to_string()))?;
    Ok(started?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_are_host_and_port() {
        assert_eq!(
            parse_node_url("redis://10.0.0.5:7001/").unwrap(),
            ("10.0.0.5".to_owned(), 7001)
        );
        assert!(parse_node_url("10.0.0.5:7001").is_err());
        assert!(parse_node_url("redis://host").is_err());
        assert!(parse_node_url("redis://host:99999").is_err());
    }
}
