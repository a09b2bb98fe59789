//! An application group recovered to one point: each member's point and its distance (skew)
//! to the group's point, decided before anything is written.
//!
//! | group target | PostgreSQL members | snapshot-based members (Redis, Qdrant, files) |
//! |---|---|---|
//! | a time T | recover exactly to T (skew 0) | the newest snapshot taken at or before T (skew T − its start) |
//! | `latest` | the end of the archived WAL | the newest snapshot |
//! | a group run | its restore point | its snapshot |
//!
//! For `latest` and a run the group's point is the newest member point, and each member's
//! skew is its distance to it. A member further than the group's `max_skew` from the point
//! refuses the whole plan, naming every member's point, before anything is written.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::RestoreError;
use crate::config::{Config, Group, Policy, SourceSpec};
use crate::pipeline::PipelineError;
use crate::pipeline::group_run::{self, GroupRun};
use crate::pipeline::pitr::{self, Target};

/// What a group is recovered to.
#[derive(Debug, Clone)]
pub enum GroupTarget {
    /// A time.
    Time(DateTime<Utc>),
    /// The newest of everything.
    Latest,
    /// A group backup run: `latest` or (a unique prefix of) its id.
    Run(String),
}

/// One member's part of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct MemberPoint {
    /// The policy.
    pub policy: String,
    /// Its source type.
    pub source: &'static str,
    /// The snapshot restored (snapshot-based members).
    pub snapshot: Option<String>,
    /// The recovery target (PostgreSQL members).
    #[serde(skip)]
    pub recovery: Option<Target>,
    /// The recovery target, as said to people.
    pub recovers_to: String,
    /// The moment its data will be of.
    pub point: Option<DateTime<Utc>>,
    /// Seconds between its point and the group's (0 for PostgreSQL to a time).
    pub skew_seconds: Option<f64>,
}

/// A whole group's plan.
#[derive(Debug, Clone, Serialize)]
pub struct GroupPlan {
    /// The group.
    pub group: String,
    /// The group's point.
    pub point: Option<DateTime<Utc>>,
    /// The run restored, if one.
    pub run: Option<String>,
    /// `max_skew`, seconds.
    pub max_skew_seconds: f64,
    /// Every member, in the group's order.
    pub members: Vec<MemberPoint>,
}

/// Plans `group`'s recovery to `target` from each member's primary target (or `region`).
///
/// # Errors
/// A member without a point (no snapshot or WAL for it, naming what is available), a run
/// that does not exist, or a member further than `max_skew` from the group's point.
pub async fn plan(
    config: &Config,
    group: &Group,
    target: &GroupTarget,
    region: Option<&str>,
) -> Result<GroupPlan, RestoreError> {
    let members: Vec<&Policy> = group
        .members
        .iter()
        .filter_map(|id| config.policies.get(id))
        .collect();
    let run = match target {
        GroupTarget::Run(sel) => Some(find_run(config, group, members[0], sel, region).await?),
        _ => None,
    };
    let mut out = Vec::new();
    for p in &members {
        let repo = crate::ops::read_repo(config, p, region)
            .await
            .map_err(|e| RestoreError::usage(crate::error::chain(&e)))?;
        let pid = p.id.as_str();
        let is_pg = matches!(p.source, SourceSpec::Postgres(_));
        let (snapshot, recovery, point) = match (target, &run) {
            (_, Some(run)) => {
                let m = run
                    .members
                    .iter()
                    .find(|m| m.policy == pid)
                    .ok_or_else(|| {
                        RestoreError::usage(format!(
                            "group run {} has no point for {pid} (it joined the group later)",
                            run.run
                        ))
                    })?;
                let recovery = m.restore_point.clone().map(Target::Name);
                (
                    m.snapshot.as_ref().map(ToString::to_string),
                    recovery,
                    Some(m.point),
                )
            }
            (GroupTarget::Time(t), None) if is_pg => {
                pitr::plan(&repo, pid, &Target::Time(*t), None).await?;
                (None, Some(Target::Time(*t)), Some(*t))
            }
            (GroupTarget::Latest, None) if is_pg => {
                let w = pitr::window(&repo, pid).await?;
                (None, Some(Target::Latest), w.latest)
            }
            (GroupTarget::Time(t), None) => {
                let id = repo
                    .resolve(pid, &format!("latest@{}", t.to_rfc3339()))
                    .await
                    .map_err(|e| match e {
                        PipelineError::NoSnapshot { .. } => RestoreError::usage(format!(
                            "{pid} has no snapshot taken at or before {}",
                            t.format("%Y-%m-%d %H:%M:%S UTC")
                        )),
                        e => e.into(),
                    })?;
                (Some(id.to_string()), None, Some(id.time()))
            }
            (_, None) => {
                let id = repo.resolve(pid, "latest").await?;
                (Some(id.to_string()), None, Some(id.time()))
            }
        };
        let recovers_to = match (&recovery, &snapshot) {
            (Some(Target::Time(t)), _) => {
                format!("exactly {}", t.format("%Y-%m-%d %H:%M:%S%.3f UTC"))
            }
            (Some(Target::Name(n)), _) => format!("restore point {n}"),
            (Some(_), _) => "the end of the archived WAL".to_owned(),
            (None, Some(s)) => format!("snapshot {s}"),
            (None, None) => "?".to_owned(),
        };
        out.push(MemberPoint {
            policy: pid.to_owned(),
            source: p.source.kind(),
            snapshot,
            recovery,
            recovers_to,
            point,
            skew_seconds: None,
        });
    }
    let point = match target {
        GroupTarget::Time(t) => Some(*t),
        _ => out.iter().filter_map(|m| m.point).max(),
    };
    for m in &mut out {
        m.skew_seconds = match (point, m.point) {
            (Some(g), Some(p)) => Some((g - p).num_milliseconds().abs() as f64 / 1000.0),
            _ => None,
        };
    }
    let plan = GroupPlan {
        group: group.id.clone(),
        point,
        run: run.map(|r| r.run.to_string()),
        max_skew_seconds: group.max_skew.as_secs_f64(),
        members: out,
    };
    let too_far: Vec<&MemberPoint> = plan
        .members
        .iter()
        .filter(|m| m.skew_seconds.is_none_or(|s| s > plan.max_skew_seconds))
        .collect();
    if !too_far.is_empty() {
        let names: Vec<String> = too_far
            .iter()
            .map(|m| match m.skew_seconds {
                Some(s) => format!("{} is {s:.1}s from the group's point", m.policy),
                None => format!("{} has no known point", m.policy),
            })
            .collect();
        return Err(RestoreError::usage_with_hint(
            format!(
                "group {}: {} (max_skew {}s); nothing was written. Points: {}",
                group.id,
                names.join(", "),
                plan.max_skew_seconds,
                describe(&plan)
            ),
            format!(
                "pick a point all members have (`dr backup --group {}` makes one; `--run latest` restores it), or raise max_skew in {}",
                group.id,
                group.file.display()
            ),
        ));
    }
    Ok(plan)
}

/// `pg-main: exactly … (skew 0.0s); redis-cache: snapshot … (skew 2.1s)`.
pub fn describe(plan: &GroupPlan) -> String {
    plan.members
        .iter()
        .map(|m| {
            format!(
                "{}: {}{}",
                m.policy,
                m.recovers_to,
                m.skew_seconds
                    .map(|s| format!(" (skew {s:.1}s)"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The run `sel` names (`latest`, an id or a unique prefix of one), from the first member's
/// repository.
async fn find_run(
    config: &Config,
    group: &Group,
    first: &Policy,
    sel: &str,
    region: Option<&str>,
) -> Result<GroupRun, RestoreError> {
    let repo = crate::ops::read_repo(config, first, region)
        .await
        .map_err(|e| RestoreError::usage(crate::error::chain(&e)))?;
    let runs = group_run::list(&repo, &group.id).await?;
    let found: Vec<&GroupRun> = if sel == "latest" {
        runs.last().into_iter().collect()
    } else {
        runs.iter()
            .filter(|r| r.run.to_string().starts_with(sel))
            .collect()
    };
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(RestoreError::usage_with_hint(
            format!(
                "group {} has no run `{sel}` in {} ({} runs)",
                group.id,
                repo.storage.location(),
                runs.len()
            ),
            format!("`dr backup --group {}` makes one", group.id),
        )),
        many => Err(RestoreError::usage(format!(
            "`{sel}` names {} runs of group {}: {}",
            many.len(),
            group.id,
            many.iter()
                .map(|r| r.run.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
