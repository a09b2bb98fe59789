//! Retention on every target: forget what the primary's plan does not keep, prune WAL, then
//! collect unreferenced packs, move packs to their tier's storage class and extend Object
//! Lock retention of what is kept, once per repository.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::OpsError;
use crate::config::{Config, Policy};
use crate::pipeline::Repository;
use crate::retention::{self, PlanEntry, apply, prune, tiers};

/// The repository of `policy` on `region` (`None` = primary), or `None` when none exists yet.
///
/// # Errors
/// Storage or key errors other than "no repository".
pub async fn existing_repo(
    config: &Config,
    policy: &Policy,
    region: Option<&str>,
) -> Result<Option<Repository>, OpsError> {
    match super::read_repo(config, policy, region).await {
        Ok(repo) => Ok(Some(repo)),
        Err(e) if e.is_no_repository() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The retention plan of `policy` on `repo` at `now`.
///
/// # Errors
/// Listing the snapshots.
pub async fn plan_of(
    repo: &Repository,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<Vec<PlanEntry>, OpsError> {
    let snaps: Vec<_> = repo
        .committed(policy.id.as_str())
        .await?
        .into_iter()
        .map(|id| {
            let t = id.time();
            (id, t)
        })
        .collect();
    Ok(retention::plan(
        &snaps,
        now,
        &policy.retention,
        policy.schedule.timezone(),
    ))
}

/// What one retention run did.
#[derive(Debug, serde::Serialize)]
pub struct ApplyOutput {
    /// Nothing was deleted.
    pub dry_run: bool,
    /// Per policy and target.
    pub policies: Vec<apply::ApplyReport>,
    /// Per repository.
    pub collections: Vec<prune::GcReport>,
    /// Storage-class tiers and lock upkeep, per repository.
    pub tiers: Vec<tiers::TierReport>,
}

impl ApplyOutput {
    /// Deletions that failed, all reports together.
    pub fn errors(&self) -> usize {
        self.policies
            .iter()
            .map(|r| r.errors.len())
            .chain(self.collections.iter().map(|c| c.errors.len()))
            .chain(self.tiers.iter().map(|t| t.errors.len()))
            .sum()
    }

    /// Whether the pass deleted anything.
    pub fn deleted_any(&self) -> bool {
        self.policies
            .iter()
            .any(|p| !p.forgotten.is_empty() || p.wal_deleted > 0)
            || self.collections.iter().any(|c| c.deleted_packs > 0)
    }

    /// What the audit log records: `forgot 2 snapshots (app@local: ID, ID), deleted 3 packs
    /// and 0 WAL segments`, naming every snapshot forgotten.
    pub fn audit_summary(&self) -> String {
        let forgotten: usize = self.policies.iter().map(|p| p.forgotten.len()).sum();
        let named: Vec<String> = self
            .policies
            .iter()
            .filter(|p| !p.forgotten.is_empty())
            .map(|p| format!("{}@{}: {}", p.policy, p.target, p.forgotten_list()))
            .collect();
        let packs: u64 = self.collections.iter().map(|c| c.deleted_packs).sum();
        let wal: u64 = self.policies.iter().map(|p| p.wal_deleted).sum();
        let which = if named.is_empty() {
            String::new()
        } else {
            format!(" ({})", named.join("; "))
        };
        format!("forgot {forgotten} snapshots{which}, deleted {packs} packs and {wal} WAL segments")
    }
}

/// Applies retention for `policies` on all their targets, then collects each repository.
///
/// # Errors
/// Storage errors while listing or reading; failed deletions are counted in the output.
pub async fn run(
    config: &Config,
    policies: &[&Policy],
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<ApplyOutput, OpsError> {
    let mut out = ApplyOutput {
        dry_run,
        policies: Vec::new(),
        collections: Vec::new(),
        tiers: Vec::new(),
    };
    let mut plans: Vec<(&Policy, Vec<PlanEntry>)> = Vec::new();
    // One opened repository per target, shared by the policies writing there.
    let mut repos: BTreeMap<String, Repository> = BTreeMap::new();
    for p in policies {
        for target in &p.targets {
            if !repos.contains_key(target) {
                let Some(repo) = existing_repo(config, p, Some(target)).await? else {
                    continue;
                };
                repos.insert(target.clone(), repo);
            }
        }
        // The primary's plan decides for every region, so replicas keep the same snapshots.
        let Some(primary) = repos.get(&p.targets[0]) else {
            continue;
        };
        let plan = plan_of(primary, p, now).await?;
        for target in p.targets.iter().filter(|t| repos.contains_key(*t)) {
            out.policies
                .push(apply::apply(&repos[target], p, &plan, now, dry_run).await?);
        }
        plans.push((p, plan));
    }
    for (target, repo) in &repos {
        let users = config
            .policies
            .values()
            .filter(|p| p.targets.contains(target));
        out.collections
            .push(prune::collect(repo, prune::grace_for(users), now, dry_run).await?);
        let here: Vec<(&Policy, &[PlanEntry])> = plans
            .iter()
            .filter(|(p, _)| p.targets.contains(target))
            .map(|(p, plan)| (*p, plan.as_slice()))
            .collect();
        out.tiers
            .push(tiers::apply(repo, &here, now, dry_run).await?);
    }
    Ok(out)
}
