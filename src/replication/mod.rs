//! Replication: copy what a replica lacks from the primary, in an order that never lets the
//! replica show a snapshot whose data is incomplete: the repository descriptor, packs and
//! indexes first, WAL next, `.refs` and manifests last (and only if everything before them
//! arrived). Objects are write-once, so "lacks" is decided by key and size; a replica object
//! whose size differs from the primary's is replaced.

use std::collections::HashMap;
use std::time::Instant;

use futures::StreamExt;

use crate::pipeline::PipelineError;
use crate::repo::layout::{self, KeyPrefix, ObjectKey, Parsed};
use crate::repo::meta::RepoMeta;
use crate::storage::{ObjectMeta, PutMode, Storage, StorageError};

/// What one replication pass did for one replica.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReplicationReport {
    /// The replica's target name.
    pub target: String,
    /// Objects copied.
    pub objects: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Objects the replica still lacks after the pass (0 when it caught up).
    pub missing_after: u64,
    /// Bytes it still lacks.
    pub missing_bytes_after: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Replication failures, naming the replica.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The replica holds a different repository.
    #[error(
        "{location} holds another dr repository ({found}, primary is {expected}); refusing to mix them"
    )]
    ForeignRepository {
        /// The replica target's location.
        location: String,
        /// Its repo id.
        found: String,
        /// The primary's.
        expected: String,
    },
    /// A copy failed; the replica keeps what arrived and catches up next time.
    #[error("replication to {target} stopped after {copied} objects")]
    Copy {
        /// Replica name.
        target: String,
        /// Objects copied before the failure.
        copied: u64,
        #[source]
        source: StorageError,
    },
    /// Anything else.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

async fn listing(
    s: &Storage,
    prefixes: &[KeyPrefix],
) -> Result<HashMap<ObjectKey, u64>, StorageError> {
    let mut out = HashMap::new();
    for p in prefixes {
        for ObjectMeta { key, size, .. } in s.list(p).await? {
            out.insert(key, size);
        }
    }
    Ok(out)
}

/// Copies every object `replica` lacks from `primary`, for `policies` (snapshots and WAL of
/// those policies; packs and indexes are shared by all).
///
/// # Errors
/// `ForeignRepository` when the replica is another repository; `Copy` naming the replica when
/// a transfer fails (what was copied stays; nothing incomplete is published).
pub async fn replicate(
    primary: &Storage,
    replica: &Storage,
    meta: &RepoMeta,
    policies: &[&str],
    concurrency: usize,
) -> Result<ReplicationReport, ReplicationError> {
    let t0 = Instant::now();
    let mut report = ReplicationReport {
        target: replica.name().to_owned(),
        ..ReplicationReport::default()
    };
    let copy_err = |copied, source| ReplicationError::Copy {
        target: replica.name().to_owned(),
        copied,
        source,
    };

    // The descriptor first: a replica is the same repository, never a new one.
    match replica.get(&layout::repo_meta(), None).await {
        Ok(b) => {
            let theirs: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            let found = theirs["repo_id"].as_str().unwrap_or("?").to_owned();
            if found != meta.repo_id {
                return Err(ReplicationError::ForeignRepository {
                    location: replica.location().to_owned(),
                    found,
                    expected: meta.repo_id.clone(),
                });
            }
        }
        Err(e) if e.is_not_found() => {
            let b = primary
                .get(&layout::repo_meta(), None)
                .await
                .map_err(|e| copy_err(0, e))?;
            replica
                .put(&layout::repo_meta(), b, PutMode::CreateOnly)
                .await
                .map_err(|e| copy_err(0, e))?;
        }
        Err(e) => return Err(copy_err(0, e)),
    }

    // Drill reports and audit events are evidence: they travel to every region too.
    let mut prefixes = vec![
        layout::packs_prefix(),
        layout::index_prefix(),
        layout::drills_prefix(None),
        layout::audit_prefix(),
    ];
    for p in policies {
        prefixes.push(layout::wal_prefix(p));
        prefixes.push(layout::wal_stream_prefix(p));
        prefixes.push(layout::snapshots_prefix(Some(p)));
    }
    let have = listing(primary, &prefixes)
        .await
        .map_err(|e| copy_err(0, e))?;
    let there = listing(replica, &prefixes)
        .await
        .map_err(|e| copy_err(0, e))?;
    let mut missing: Vec<(ObjectKey, u64)> = have
        .into_iter()
        .filter(|(k, size)| there.get(k) != Some(size))
        .collect();
    // Data before what names it: packs and indexes, then WAL, then refs, then manifests.
    let rank = |k: &ObjectKey| match layout::parse(k) {
        Parsed::Pack(_) | Parsed::Index(_) => 0,
        Parsed::Refs { .. } => 2,
        Parsed::Manifest { .. } => 3,
        Parsed::Gc { .. } | Parsed::Other => 1,
    };
    missing.sort_by(|a, b| (rank(&a.0), &a.0).cmp(&(rank(&b.0), &b.0)));
    for stage in 0..=3 {
        // Owned items: a stream closure over borrowed ones is not `Send` for every lifetime
        // (rust-lang/rust#102211), which the daemon's spawned workers need.
        let batch: Vec<(ObjectKey, u64)> = missing
            .iter()
            .filter(|(k, _)| rank(k) == stage)
            .cloned()
            .collect();
        let mut copies = futures::stream::iter(batch)
            .map(|(key, size)| async move {
                let body = primary.get(&key, None).await?;
                // Overwrite: a replica object of the wrong size is damaged; content-addressed
                // keys make the right bytes unambiguous.
                replica.put(&key, body, PutMode::Overwrite).await?;
                Ok::<u64, StorageError>(size)
            })
            .buffer_unordered(concurrency.max(1));
        while let Some(r) = copies.next().await {
            match r {
                Ok(size) => {
                    report.objects += 1;
                    report.bytes += size;
                }
                // Stop before the next stage: a later stage may depend on what failed.
                Err(e) => return Err(copy_err(report.objects, e)),
            }
        }
    }
    let missing_total: u64 = missing.iter().map(|(_, s)| *s).sum();
    report.missing_after = missing.len() as u64 - report.objects;
    report.missing_bytes_after = missing_total - report.bytes;
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}
