//! Storage-class tiers and Object Lock upkeep for what retention keeps, on one target.
//!
//! * **Tiers**: a kept snapshot older than a tier's `after` (and the tier applies to this
//!   target: `only` empty or naming it) wants its packs in that tier's storage class. Packs
//!   are shared between snapshots, so a pack moves only as far as its *youngest* referencing
//!   snapshot allows; a pack any untiered snapshot uses stays where it is. Moving is a copy
//!   onto itself with the new class. Where the store does not honour storage classes (the
//!   capability probe says so), nothing moves and a warning is logged once per target.
//! * **Object Lock**: dedup means a pack written long ago may still be needed by a snapshot
//!   kept today. Objects of kept snapshots whose lock has less than half its period left get
//!   it extended to `now + days`.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::PlanEntry;
use crate::config::Policy;
use crate::pipeline::{PipelineError, Repository};
use crate::repo::ids::PackId;
use crate::repo::layout::{self, ObjectKey, Parsed};

/// What tiering and lock upkeep did on one target.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TierReport {
    /// Storage target.
    pub target: String,
    /// Packs moved to another storage class.
    pub moved: u64,
    /// Their bytes.
    pub moved_bytes: u64,
    /// Objects whose Object Lock retention was extended.
    pub locks_extended: u64,
    /// Why tiers were not applied here, if they were not.
    pub skipped: Option<String>,
    /// Failures (retried next run).
    pub errors: Vec<String>,
}

/// The tier (after, class) of a snapshot of age `age` on `target`.
fn tier_for<'a>(policy: &'a Policy, age: Duration, target: &str) -> Option<(Duration, &'a str)> {
    policy
        .retention
        .tiers
        .iter()
        .filter(|t| t.only.is_empty() || t.only.iter().any(|o| o == target))
        .filter(|t| age >= t.after)
        .max_by_key(|t| t.after)
        .map(|t| (t.after, t.storage_class.as_str()))
}

fn warn_once(target: &str, msg: &str) {
    static WARNED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let first = WARNED
        .get_or_init(Mutex::default)
        .lock()
        .expect("warned set")
        .insert(target.to_owned());
    if first {
        tracing::warn!(region = target, "{msg}");
    }
}

/// Applies tiers and extends locks for the kept snapshots of `plans` on `repo`.
///
/// # Errors
/// Listing or reading refs fails; per-object failures go to [`TierReport::errors`].
pub async fn apply(
    repo: &Repository,
    plans: &[(&Policy, &[PlanEntry])],
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<TierReport, PipelineError> {
    let target = repo.storage.name().to_owned();
    let mut report = TierReport {
        target: target.clone(),
        ..TierReport::default()
    };
    let wants_tiers = plans.iter().any(|(p, _)| {
        p.retention
            .tiers
            .iter()
            .any(|t| t.only.is_empty() || t.only.contains(&target))
    });
    let lock = repo.storage.lock();
    if !wants_tiers && lock.is_none() {
        return Ok(report);
    }
    // Youngest tier per pack: `None` = some untiered snapshot uses it.
    let mut pack_tier: HashMap<PackId, Option<(Duration, String)>> = HashMap::new();
    let mut kept_objects: Vec<ObjectKey> = Vec::new();
    for (policy, plan) in plans {
        let pid = policy.id.as_str();
        for e in plan.iter().filter(|e| e.keep()) {
            let Ok(refs) = repo.read_refs(pid, &e.snapshot).await else {
                continue; // not replicated here (yet)
            };
            let age = (now - e.time).to_std().unwrap_or_default();
            let tier = tier_for(policy, age, &target).map(|(a, c)| (a, c.to_owned()));
            for p in &refs.packs {
                let slot = pack_tier.entry(*p).or_insert_with(|| tier.clone());
                *slot = match (slot.take(), &tier) {
                    (Some(a), Some(b)) => Some(if b.0 < a.0 { b.clone() } else { a }),
                    _ => None,
                };
            }
            kept_objects.extend(refs.packs.iter().map(layout::pack));
            kept_objects.extend(refs.indexes.iter().map(layout::index));
            kept_objects.push(layout::refs(pid, &e.snapshot));
            kept_objects.push(layout::manifest(pid, &e.snapshot));
        }
    }

    if wants_tiers {
        let honoured = repo.storage.probe().await.map(|c| c.storage_classes);
        match honoured {
            Ok(true) => {
                for m in repo.storage.list(&layout::packs_prefix()).await? {
                    let Parsed::Pack(id) = layout::parse(&m.key) else {
                        continue;
                    };
                    let Some(Some((_, class))) = pack_tier.get(&id) else {
                        continue;
                    };
                    let current = m.storage_class.as_deref().unwrap_or("STANDARD");
                    if current == class {
                        continue;
                    }
                    if !dry_run && let Err(e) = repo.storage.set_storage_class(&m.key, class).await
                    {
                        report
                            .errors
                            .push(format!("moving {} to {class}: {e}", m.key));
                        continue;
                    }
                    report.moved += 1;
                    report.moved_bytes += m.size;
                }
            }
            Ok(false) => {
                let msg = format!(
                    "{} does not honour storage classes (capability probe): retention tiers are not applied there",
                    repo.storage.location()
                );
                warn_once(&target, &msg);
                report.skipped = Some(msg);
            }
            Err(e) => report.skipped = Some(format!("capability probe failed: {e}")),
        }
    }

    if let Some(lock) = lock {
        let until = now + chrono::Duration::days(i64::from(lock.days));
        let half = chrono::Duration::days(i64::from(lock.days)) / 2;
        let mut modified: HashMap<ObjectKey, Option<DateTime<Utc>>> = HashMap::new();
        for p in [
            layout::packs_prefix(),
            layout::index_prefix(),
            layout::snapshots_prefix(None),
        ] {
            for m in repo.storage.list(&p).await? {
                modified.insert(m.key, m.modified);
            }
        }
        let mut seen = HashSet::new();
        for key in kept_objects {
            if !seen.insert(key.clone()) {
                continue;
            }
            // Written (or last extended) recently enough: its lock still has over half left.
            let fresh = modified
                .get(&key)
                .copied()
                .flatten()
                .is_some_and(|m| m + half > now);
            if fresh || dry_run {
                continue;
            }
            match repo.storage.extend_lock(&key, until).await {
                Ok(true) => report.locks_extended += 1,
                Ok(false) => {}
                Err(e) => report
                    .errors
                    .push(format!("extending the lock of {key}: {e}")),
            }
        }
    }
    Ok(report)
}
