//! Group drills (`group = "app"` in a drill file): every member of an application group
//! restored into its own sandbox to the group's one point (`restore::group::plan`: PostgreSQL
//! exactly to it, the others to their snapshot before it), each with its built-in and its own
//! checks (`member = …`), then the group's **cross-store checks** (`groups/<id>.toml`: one
//! member's number against another's, within a tolerance) while every sandbox still runs.
//! One signed report lists every member with its point and skew.
//!
//! RTO is the wall time until every member answered and every check, cross-store ones
//! included, passed. RPO is the age of the oldest member point at drill start: the group is
//! as far behind as its furthest member.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::report::{self, CheckResult, MemberResult, Objective, Report};
use super::sandbox::Sandbox;
use super::{DrillError, Pinned, Run, restore_and_check, store};
use crate::config::{CheckQuery, Config, CrossAsk, CrossQuery, Drill, DrillPoint, Group, PolicyId};
use crate::pipeline::Repository;
use crate::pipeline::progress::Progress;
use crate::repo::ids::SnapshotId;
use crate::restore::group::{self, GroupTarget};
use crate::source::postgres::recovery;

/// A restored member: its sandbox (servers still running) and the Qdrant point counts.
struct Restored {
    policy: PolicyId,
    sandbox: Sandbox,
    points: BTreeMap<String, u64>,
}

/// Runs the group drill `drill` of `group` and stores its signed report.
///
/// # Errors
/// The report cannot be signed or stored.
pub(super) async fn run(
    config: &Config,
    drill: &Drill,
    group: &Group,
    trigger: report::Trigger,
    key: &ed25519_dalek::SigningKey,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<Report, DrillError> {
    let (t0, started) = (Instant::now(), Utc::now());
    tracing::info!(drill = %drill.name, group = %group.id, "Group drill started.");
    let target = match &drill.point {
        DrillPoint::Ago(d) => GroupTarget::Time(started - chrono::Duration::from_std(*d)?),
        _ => GroupTarget::Latest,
    };
    // `from_region` when every member writes there, else each member's primary.
    let common = group.members.iter().all(|m| {
        config
            .policies
            .get(m)
            .is_some_and(|p| p.targets.contains(&drill.from_region))
    });
    let region = common.then_some(drill.from_region.as_str());
    let mut out = Outcome::default();
    let mut restored = Vec::new();
    // Each member's repository and the snapshot restored, for the checks after teardown.
    let mut opened = Vec::new();
    let mut oldest_point = None;
    match group::plan(config, group, &target, region).await {
        Err(e) => out.reasons.push(format!(
            "planning the group's point: {}",
            crate::error::chain(&e)
        )),
        Ok(plan) => {
            oldest_point = plan.members.iter().filter_map(|m| m.point).min();
            for m in &plan.members {
                let Ok(policy) = config.policy(&m.policy) else {
                    continue;
                };
                let member = Drill {
                    policy: policy.id.clone(),
                    group: None,
                    from_region: region.unwrap_or(&policy.targets[0]).to_owned(),
                    checks: drill
                        .checks
                        .iter()
                        .filter(|c| c.member.as_ref() == Some(&policy.id))
                        .cloned()
                        .collect(),
                    ..drill.clone()
                };
                let mut run = Run {
                    config,
                    drill: &member,
                    policy,
                    t0: Instant::now(),
                    started,
                    checks: Vec::new(),
                    reasons: Vec::new(),
                    timings: BTreeMap::new(),
                    versions: BTreeMap::new(),
                    snapshot: None,
                    target: m.recovers_to.clone(),
                    reached: None,
                    bytes_restored: 0,
                    repository: String::new(),
                    progress: progress.clone(),
                    cancel: cancel.clone(),
                    pinned: Some(Pinned {
                        recovery: m.recovery.clone(),
                        snapshot: m.snapshot.clone(),
                    }),
                    points: BTreeMap::new(),
                };
                let (sandbox, repo) = restore_member(&mut run, &member, cancel).await;
                out.member(&run, m.skew_seconds);
                if let Some(repo) = repo {
                    let snapshot = run.snapshot.as_ref().map(|(id, _)| id.clone());
                    opened.push((policy, repo, snapshot));
                }
                if let Some(sandbox) = sandbox {
                    restored.push(Restored {
                        policy: policy.id.clone(),
                        sandbox,
                        points: std::mem::take(&mut run.points),
                    });
                }
            }
            if out.reasons.is_empty() {
                for c in &group.checks {
                    let t = Instant::now();
                    let (l, r) = (
                        answer(&c.left, &restored).await,
                        answer(&c.right, &restored).await,
                    );
                    let (passed, actual) = match (l, r) {
                        (Ok(l), Ok(r)) => (
                            (l - r).abs() <= c.tolerance,
                            format!("{l} and {r} (difference {})", (l - r).abs()),
                        ),
                        (Err(e), _) | (_, Err(e)) => (false, e),
                    };
                    let expected = format!("{} and {} within {}", c.left, c.right, c.tolerance);
                    if !passed {
                        out.reasons.push(format!(
                            "cross-store check `{}`: expected {expected}, got {actual}",
                            c.name
                        ));
                    }
                    out.checks.push(CheckResult {
                        name: c.name.clone(),
                        kind: "cross-store".to_owned(),
                        expected,
                        actual,
                        passed,
                        seconds: t.elapsed().as_secs_f64(),
                    });
                }
            }
        }
    }
    // RTO ends when every member answers and every check passed; then the sandboxes go.
    let total = t0.elapsed().as_secs_f64();
    out.timings.insert("total".to_owned(), total);
    let teardown = Instant::now();
    tokio::task::spawn_blocking(move || drop(restored)).await?;
    out.timings
        .insert("teardown".to_owned(), teardown.elapsed().as_secs_f64());
    // Not part of the RTO, as in a single drill: each member's repository objects.
    for (policy, repo, snapshot) in opened {
        let (passed, actual, seconds) =
            super::objects_intact(config, policy, &repo, snapshot.as_ref()).await;
        let name = format!("{}: {}", policy.id, super::INTACT.0);
        if !passed {
            out.reasons.push(format!("{name}: {actual}"));
        }
        out.checks.push(CheckResult {
            name,
            kind: "builtin".to_owned(),
            expected: super::INTACT.1.to_owned(),
            actual,
            passed,
            seconds,
        });
    }

    let ok = out.reasons.is_empty();
    let rto = Objective {
        seconds: Some(total).filter(|_| ok),
        objective_seconds: drill.rto.as_secs_f64(),
        met: ok && total <= drill.rto.as_secs_f64(),
        basis: "wall time from drill start until every member answered and every check, cross-store ones included, passed".to_owned(),
    };
    if ok && !rto.met {
        out.reasons.push(format!(
            "RTO {total:.1}s exceeds the objective {}s",
            drill.rto.as_secs()
        ));
    }
    let rpo_s = oldest_point.map(|p| (started - p).num_milliseconds().max(0) as f64 / 1000.0);
    let rpo = Objective {
        seconds: rpo_s,
        objective_seconds: drill.rpo.as_secs_f64(),
        met: rpo_s.is_some_and(|s| s <= drill.rpo.as_secs_f64()),
        basis: "age at drill start of the oldest member's point (the group is as old as its furthest member)".to_owned(),
    };
    if !rpo.met {
        out.reasons.push(match rpo_s {
            Some(s) => format!("RPO {s:.1}s exceeds the objective {}s", drill.rpo.as_secs()),
            None => "RPO could not be measured: no member point found".to_owned(),
        });
    }
    let first = &group.members[0];
    let policy = config
        .policies
        .get(first)
        .ok_or_else(|| DrillError::Usage(format!("no policy {first}")))?;
    let report = Report {
        schema: report::SCHEMA.to_owned(),
        id: SnapshotId::new(started).to_string(),
        drill: drill.name.clone(),
        policy: policy.id.to_string(),
        source: "group".to_owned(),
        verdict: if out.reasons.is_empty() {
            report::Outcome::Pass
        } else {
            report::Outcome::Fail
        },
        reasons: out.reasons,
        started,
        finished: Utc::now(),
        region: region.unwrap_or("each member's primary").to_owned(),
        repository: out.repositories.join(", "),
        snapshot: None,
        snapshot_time: oldest_point,
        target: match target {
            GroupTarget::Time(t) => t.to_rfc3339(),
            _ => "latest".to_owned(),
        },
        reached: Some(
            out.members
                .iter()
                .map(|m| {
                    format!(
                        "{}: {}",
                        m.policy,
                        m.reached.as_deref().unwrap_or("nothing")
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        rto,
        rpo,
        timings: out.timings,
        bytes_restored: out.bytes,
        versions: out.versions,
        checks: out.checks,
        controls: report::CONTROLS
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect(),
        host: crate::host::name().unwrap_or_else(|| "unknown".to_owned()),
        trigger: Some(trigger),
        definition_sha256: super::definition_sha256(drill),
        region_role: Some(
            if region.is_some_and(|r| policy.targets.first().map(String::as_str) != Some(r)) {
                "replica"
            } else {
                "primary"
            }
            .to_owned(),
        ),
        group: Some(group.id.clone()),
        members: out.members,
    };
    store::store(config, policy, &report, key).await?;
    tracing::info!(drill = %drill.name, group = %group.id, report = %report.id, verdict = %report.verdict, rto_seconds = ?report.rto.seconds, rpo_seconds = ?report.rpo.seconds, "Group drill finished.");
    Ok(report)
}

/// What the members add up to.
#[derive(Default)]
struct Outcome {
    checks: Vec<CheckResult>,
    reasons: Vec<String>,
    timings: BTreeMap<String, f64>,
    versions: BTreeMap<String, String>,
    members: Vec<MemberResult>,
    repositories: Vec<String>,
    bytes: u64,
}

impl Outcome {
    /// Takes one member's run: its checks, reasons, timings and versions under its name.
    fn member(&mut self, run: &Run<'_>, skew_seconds: Option<f64>) {
        let id = run.policy.id.as_str();
        self.checks.extend(run.checks.iter().map(|c| CheckResult {
            name: format!("{id}: {}", c.name),
            ..c.clone()
        }));
        self.reasons
            .extend(run.reasons.iter().map(|r| format!("{id}: {r}")));
        self.timings
            .extend(run.timings.iter().map(|(k, v)| (format!("{id} {k}"), *v)));
        self.versions.extend(
            run.versions
                .iter()
                .map(|(k, v)| (format!("{k}, {id}"), v.clone())),
        );
        if !self.repositories.contains(&run.repository) {
            self.repositories.push(run.repository.clone());
        }
        self.bytes += run.bytes_restored;
        self.members.push(MemberResult {
            policy: id.to_owned(),
            source: run.policy.source.kind().to_owned(),
            region: run.drill.from_region.clone(),
            snapshot: run.snapshot.as_ref().map(|s| s.0.to_string()),
            target: run.target.clone(),
            reached: run.reached.clone(),
            skew_seconds,
            passed: run.reasons.is_empty(),
        });
    }
}

/// Restores one member into a new sandbox and runs its checks; the sandbox (its servers
/// running) is returned for the cross-store checks, the repository for the checks after.
async fn restore_member(
    run: &mut Run<'_>,
    member: &Drill,
    cancel: &CancellationToken,
) -> (Option<Sandbox>, Option<Repository>) {
    let repo = match crate::ops::read_repo(run.config, run.policy, Some(&member.from_region)).await
    {
        Ok(r) => r,
        Err(e) => {
            run.reasons.push(format!(
                "opening the repository in {}: {}",
                member.from_region,
                crate::error::chain(&e)
            ));
            return (None, None);
        }
    };
    run.repository = repo.storage.location().to_owned();
    let name = format!("{}-{}", member.name, run.policy.id);
    let mut sb = match Sandbox::new(member.sandbox_dir.as_deref(), &name) {
        Ok(sb) => sb,
        Err(e) => {
            run.reasons.push(format!("creating the sandbox: {e}"));
            return (None, Some(repo));
        }
    };
    let r = tokio::select! {
        r = restore_and_check(run, &repo, &mut sb) => r,
        () = cancel.cancelled() => Err(DrillError::Cancelled),
    };
    if let Err(e) = r {
        run.reasons.push(crate::error::chain(&e));
    }
    run.phase("total", run.t0);
    (Some(sb), Some(repo))
}

/// One side of a cross-store check, asked of its member's running sandbox.
async fn answer(q: &CrossQuery, restored: &[Restored]) -> Result<f64, String> {
    let r = restored
        .iter()
        .find(|r| r.policy == q.policy)
        .ok_or_else(|| format!("{} was not restored", q.policy))?;
    let text = match &q.query {
        CrossAsk::Check(CheckQuery::Sql { database, sql }) => {
            let (dir, o) = r
                .sandbox
                .postgres()
                .cloned()
                .ok_or_else(|| format!("{}: no PostgreSQL server was started", q.policy))?;
            let (database, sql) = (database.clone(), sql.clone());
            tokio::task::spawn_blocking(move || recovery::psql(&dir, &o, &database, &sql))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("{}: {e}", q.policy))?
        }
        CrossAsk::Check(CheckQuery::Redis(parts)) => {
            // A cluster's answer is the sum of its masters' (DBSIZE, counts).
            let (ports, parts) = (r.sandbox.redis_ports(), parts.clone());
            if ports.is_empty() {
                return Err(format!("{}: no redis-server was started", q.policy));
            }
            let sum = tokio::task::spawn_blocking(move || {
                ports.iter().try_fold(0.0, |acc, p| {
                    let v = super::checks::redis::redis_command(*p, &parts)?;
                    number(&v).map(|n| acc + n)
                })
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{}: {e}", q.policy))?;
            sum.to_string()
        }
        CrossAsk::Points(c) => r
            .points
            .get(c)
            .map(ToString::to_string)
            .ok_or_else(|| format!("{}: collection {c} was not restored", q.policy))?,
    };
    number(&text).map_err(|e| format!("{}: {e}", q.policy))
}

fn number(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .map_err(|_| format!("`{}` is not a number", text.trim()))
}
