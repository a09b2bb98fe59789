//! Executing a retention plan on one repository: forget snapshots (manifest first, so a
//! half-forgotten snapshot is simply gone, never half-present) and prune WAL that no kept
//! base backup and no point inside `wal_window` needs. Pack deletion is [`super::prune`]'s job.

use chrono::{DateTime, Utc};

use super::PlanEntry;
use crate::config::{Policy, SourceSpec};
use crate::pipeline::{PipelineError, Repository, wal};
use crate::repo::ids::SnapshotId;
use crate::repo::layout;
use crate::source::postgres::PgFacts;
use crate::source::postgres::lsn::Segment;

/// What applying one policy's plan to one target did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ApplyReport {
    pub policy: String,
    /// Storage target.
    pub target: String,
    /// Snapshots kept.
    pub kept: u64,
    /// Snapshots forgotten.
    pub forgotten: Vec<SnapshotId>,
    /// WAL segments deleted.
    pub wal_deleted: u64,
    /// The oldest segment still needed (by the oldest kept backup or the window).
    pub wal_kept_from: Option<String>,
    /// Deletions that failed (e.g. refused by Object Lock); retried next time.
    pub errors: Vec<String>,
}

impl ApplyReport {
    /// The snapshots forgotten, comma-separated (for logs, the audit log, `validate`).
    pub fn forgotten_list(&self) -> String {
        let ids: Vec<String> = self.forgotten.iter().map(ToString::to_string).collect();
        ids.join(", ")
    }
}

/// Forgets the snapshots `plan` does not keep, then prunes the policy's WAL.
///
/// # Errors
/// Storage errors while listing or reading refs. Failed deletions are reported, not fatal.
pub async fn apply(
    repo: &Repository,
    policy: &Policy,
    plan: &[PlanEntry],
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<ApplyReport, PipelineError> {
    let mut report = ApplyReport {
        policy: policy.id.to_string(),
        target: repo.storage.name().to_owned(),
        ..ApplyReport::default()
    };
    let pid = policy.id.as_str();
    for e in plan {
        if e.keep() {
            report.kept += 1;
            continue;
        }
        if !dry_run {
            let mut ok = true;
            for key in [
                layout::manifest(pid, &e.snapshot),
                layout::refs(pid, &e.snapshot),
            ] {
                if let Err(err) = repo.storage.delete(&key).await {
                    report.errors.push(format!("deleting {key}: {err}"));
                    ok = false;
                    break;
                }
            }
            if !ok {
                continue;
            }
            tracing::info!(policy = pid, snapshot = %e.snapshot, target = %report.target, "Forgot snapshot.");
        }
        report.forgotten.push(e.snapshot.clone());
    }
    if matches!(policy.source, SourceSpec::Postgres(_)) {
        let kept: Vec<&SnapshotId> = plan
            .iter()
            .filter(|e| e.keep())
            .map(|e| &e.snapshot)
            .collect();
        prune_wal(repo, policy, &kept, now, dry_run, &mut report).await?;
    }
    Ok(report)
}

/// Deletes WAL segments that are both before the oldest kept base backup's start and older
/// than `wal_window`. With no kept base backup nothing is pruned.
async fn prune_wal(
    repo: &Repository,
    policy: &Policy,
    kept: &[&SnapshotId],
    now: DateTime<Utc>,
    dry_run: bool,
    report: &mut ApplyReport,
) -> Result<(), PipelineError> {
    let pid = policy.id.as_str();
    let Some(oldest) = kept.iter().min() else {
        return Ok(());
    };
    let refs = repo.read_refs(pid, oldest).await?;
    // Without usable facts nothing is known to be unneeded: no WAL is deleted.
    let facts = match PgFacts::of(&oldest.to_string(), &refs.facts) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(policy = pid, error = %e, "Keeping all WAL: the oldest kept base backup's facts cannot be used.");
            return Ok(());
        }
    };
    let seg_size = facts.wal_segment_size;
    let first_needed = Segment::of(facts.timeline, facts.start_lsn(), seg_size);
    report.wal_kept_from = Some(first_needed.name(seg_size));
    let window_start = policy
        .retention
        .wal_window
        .map(|w| now - chrono::Duration::from_std(w).unwrap_or_default());
    let archived = wal::list(repo, pid).await?;
    // Streamed partial segments: superseded once the segment is archived whole (a stream
    // deletes them itself; what a restart left), or as old as a segment that goes.
    let whole: std::collections::HashSet<&str> = archived.iter().map(|(n, _)| n.as_str()).collect();
    for p in wal::list_partials(repo, pid).await? {
        let old = Segment::parse(&p.segment, seg_size)
            .is_some_and(|s| s.number < first_needed.number)
            && window_start.is_none_or(|ws| p.meta.modified.is_some_and(|m| m < ws));
        if !(whole.contains(p.segment.as_str()) || old) {
            continue;
        }
        if !dry_run && let Err(e) = repo.storage.delete(&p.meta.key).await {
            report.errors.push(format!("deleting {}: {e}", p.meta.key));
        }
    }
    for (name, meta) in archived {
        let Some(seg) = Segment::parse(&name, seg_size) else {
            continue; // history and .backup files are tiny and kept
        };
        if seg.number >= first_needed.number {
            continue;
        }
        // Inside the PITR window (or of unknown age): kept.
        if let Some(ws) = window_start
            && meta.modified.is_none_or(|m| m >= ws)
        {
            continue;
        }
        if !dry_run && let Err(e) = repo.storage.delete(&meta.key).await {
            report.errors.push(format!("deleting {}: {e}", meta.key));
            continue;
        }
        report.wal_deleted += 1;
    }
    Ok(())
}
