//! Two-phase, lock-free pack garbage collection.
//!
//! 1. **Mark**: packs, indexes and stale `.refs` that no snapshot references, and that are
//!    older than the grace period (so an in-flight backup's fresh uploads are left alone), are
//!    written to a `gc/<id>.mark` record with `sweep_after = now + grace`. From then on no
//!    writer dedupes against them.
//! 2. **Sweep** (a later run, once `sweep_after` has passed): what is *still* unreferenced is
//!    recorded in `gc/<id>.swept`, then deleted (indexes, then packs, then stale refs); what a
//!    snapshot committed since the mark uses is kept. The mark is removed last.
//!
//! Backups never wait for prune: a backup that started before a mark and reused a marked pack
//! commits normally if it finishes before the sweep may run, and refuses to commit otherwise
//! (`pipeline::backup::check_prune_race`). Anything uncertain (a committed snapshot whose
//! `.refs` is unreadable) stops the collection: nothing is deleted on a guess.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::pipeline::{PipelineError, Repository};
use crate::repo::gc::{GcRecord, Phase, VERSION};
use crate::repo::ids::{IndexId, PackId};
use crate::repo::layout::{self, ObjectKey, Parsed};
use crate::storage::PutMode;

/// What one collection did (or, dry, would do).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    /// Storage target.
    pub target: String,
    /// Packs newly marked.
    pub marked_packs: u64,
    /// Their bytes.
    pub marked_bytes: u64,
    /// Indexes newly marked.
    pub marked_indexes: u64,
    /// Packs deleted by sweeping due marks.
    pub deleted_packs: u64,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Indexes deleted.
    pub deleted_indexes: u64,
    /// Marked packs a snapshot started using again (kept).
    pub rescued_packs: u64,
    /// Marks still waiting for their grace period: (record, sweep after).
    pub pending: Vec<(String, DateTime<Utc>)>,
    /// Bytes of the packs left in the repository after the pass (its data's size).
    pub pack_bytes: u64,
    /// Deletions that failed; they are retried next time.
    pub errors: Vec<String>,
    /// With Object Lock, deleted objects stay as protected noncurrent versions (the delete
    /// only adds a delete marker) until at most this time.
    pub locked_until: Option<DateTime<Utc>>,
}

/// What the snapshots of a repository reference right now.
struct Live {
    packs: HashSet<PackId>,
    indexes: HashSet<IndexId>,
    /// `.refs` whose manifest never appeared and that are older than the grace period.
    stale_refs: Vec<String>,
}

async fn live(
    repo: &Repository,
    grace: Duration,
    now: DateTime<Utc>,
) -> Result<Live, PipelineError> {
    let mut l = Live {
        packs: HashSet::new(),
        indexes: HashSet::new(),
        stale_refs: Vec::new(),
    };
    for s in repo.list_snapshots(None).await? {
        if !s.has_refs {
            if s.has_manifest {
                return Err(PipelineError::Repo(crate::repo::RepoError::Corrupt {
                    object: format!("snapshot {}/{}", s.policy, s.id),
                    reason: "manifest without .refs: cannot tell which packs it uses, so nothing is pruned (run `dr verify`)".to_owned(),
                }));
            }
            continue;
        }
        let young = now - s.id.time() < chrono::Duration::from_std(grace).unwrap_or_default();
        if !s.has_manifest && !young {
            l.stale_refs
                .push(layout::refs(&s.policy, &s.id).as_str().to_owned());
            continue;
        }
        // Committed, or possibly committing right now: what it names is live.
        let refs = repo.read_refs(&s.policy, &s.id).await?;
        l.packs.extend(refs.packs);
        l.indexes.extend(refs.indexes);
    }
    Ok(l)
}

/// Runs one collection on `repo`: sweeps due marks, then marks new garbage.
///
/// # Errors
/// Storage errors while listing or reading, or an unreadable `.refs` of a committed snapshot.
/// Failed deletions are reported in [`GcReport::errors`] instead.
pub async fn collect(
    repo: &Repository,
    grace: Duration,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<GcReport, PipelineError> {
    let mut report = GcReport {
        target: repo.storage.name().to_owned(),
        ..GcReport::default()
    };
    let state = repo.gc_state().await?;
    let live = live(repo, grace, now).await?;
    let pack_sizes: HashMap<PackId, (u64, Option<DateTime<Utc>>)> = repo
        .storage
        .list(&layout::packs_prefix())
        .await?
        .into_iter()
        .filter_map(|m| match layout::parse(&m.key) {
            Parsed::Pack(id) => Some((id, (m.size, m.modified))),
            _ => None,
        })
        .collect();

    // Sweep.
    for (name, mark) in &state.marks {
        if mark.sweep_after > now {
            report.pending.push((name.clone(), mark.sweep_after));
            continue;
        }
        let packs: Vec<PackId> = mark
            .packs
            .iter()
            .filter(|p| !live.packs.contains(p))
            .copied()
            .collect();
        report.rescued_packs += (mark.packs.len() - packs.len()) as u64;
        let indexes: Vec<IndexId> = mark
            .indexes
            .iter()
            .filter(|i| !live.indexes.contains(i))
            .copied()
            .collect();
        let stale_refs: Vec<String> = mark
            .stale_refs
            .iter()
            .filter(|r| live.stale_refs.contains(r))
            .cloned()
            .collect();
        let bytes: u64 = packs
            .iter()
            .filter_map(|p| pack_sizes.get(p).map(|s| s.0))
            .sum();
        if dry_run {
            report.deleted_packs += packs.len() as u64;
            report.deleted_bytes += bytes;
            report.deleted_indexes += indexes.len() as u64;
            continue;
        }
        // The record first: from now on readers treat these packs as gone even if a
        // deletion below fails half-way.
        let swept = GcRecord {
            version: VERSION,
            created: now,
            sweep_after: now,
            packs: packs.clone(),
            indexes: indexes.clone(),
            stale_refs: stale_refs.clone(),
        };
        put_record(repo, name, Phase::Swept, &swept).await?;
        let mut failed = false;
        let keys = indexes
            .iter()
            .map(layout::index)
            .chain(packs.iter().map(layout::pack))
            .chain(stale_refs.into_iter().map(ObjectKey::from_listed));
        for key in keys {
            if let Err(e) = repo.storage.delete(&key).await {
                failed = true;
                report.errors.push(format!("deleting {key}: {e}"));
            }
        }
        report.deleted_packs += packs.len() as u64;
        report.deleted_bytes += bytes;
        report.deleted_indexes += indexes.len() as u64;
        if let Some(lock) = repo.storage.lock() {
            // Written or last extended no later than now.
            let until = now + chrono::Duration::days(i64::from(lock.days));
            report.locked_until = report.locked_until.max(Some(until));
        }
        if !failed {
            repo.storage.delete(&layout::gc(name, Phase::Mark)).await?;
        }
    }

    // Mark.
    let old = |t: Option<DateTime<Utc>>| {
        t.is_none_or(|t| now - t >= chrono::Duration::from_std(grace).unwrap_or_default())
    };
    let already = state.avoided_packs();
    let marked_refs: HashSet<&String> = state
        .marks
        .iter()
        .flat_map(|(_, m)| &m.stale_refs)
        .collect();
    let mut packs: Vec<PackId> = pack_sizes
        .iter()
        .filter(|(id, (_, modified))| {
            !live.packs.contains(id) && !already.contains(id) && old(*modified)
        })
        .map(|(id, _)| *id)
        .collect();
    packs.sort();
    let marked_indexes: HashSet<IndexId> = state
        .marks
        .iter()
        .chain(&state.swept)
        .flat_map(|(_, m)| m.indexes.iter().copied())
        .collect();
    let mut indexes: Vec<IndexId> = Vec::new();
    for m in repo.storage.list(&layout::index_prefix()).await? {
        if let Parsed::Index(id) = layout::parse(&m.key)
            && !live.indexes.contains(&id)
            && !marked_indexes.contains(&id)
            && old(m.modified)
        {
            indexes.push(id);
        }
    }
    let stale_refs: Vec<String> = live
        .stale_refs
        .iter()
        .filter(|r| !marked_refs.contains(r))
        .cloned()
        .collect();
    report.marked_packs = packs.len() as u64;
    report.marked_bytes = packs.iter().map(|p| pack_sizes[p].0).sum();
    report.marked_indexes = indexes.len() as u64;
    let nothing = packs.is_empty() && indexes.is_empty() && stale_refs.is_empty();
    if !dry_run && !nothing {
        let sweep_after = now + chrono::Duration::from_std(grace).unwrap_or_default();
        let mark = GcRecord {
            version: VERSION,
            created: now,
            sweep_after,
            packs,
            indexes,
            stale_refs,
        };
        let name = format!(
            "{}-{}",
            now.format("%Y%m%dT%H%M%SZ"),
            hex::encode(rand::random::<[u8; 4]>())
        );
        put_record(repo, &name, Phase::Mark, &mark).await?;
        report.pending.push((name, sweep_after));
    }
    report.pack_bytes = pack_sizes
        .values()
        .map(|(size, _)| size)
        .sum::<u64>()
        .saturating_sub(report.deleted_bytes);
    Ok(report)
}

async fn put_record(
    repo: &Repository,
    name: &str,
    phase: Phase,
    r: &GcRecord,
) -> Result<(), PipelineError> {
    repo.storage
        .put(
            &layout::gc(name, phase),
            Bytes::from(r.encode(phase, &repo.ids, &repo.meta.repo_id)),
            PutMode::Overwrite,
        )
        .await?;
    Ok(())
}

/// The grace period for a repository shared by several policies: the longest any asks for.
pub fn grace_for<'a>(policies: impl IntoIterator<Item = &'a crate::config::Policy>) -> Duration {
    policies
        .into_iter()
        .map(|p| p.retention.gc_grace)
        .max()
        .unwrap_or(Duration::from_secs(86_400))
}
