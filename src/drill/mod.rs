//! Restore drills: a real restore, from a chosen region, into a sandbox; checks; measured RTO
//! and RPO against the objectives; a signed report stored in the repository.
//!
//! | file | what |
//! |---|---|
//! | this one | the runner: restore through [`crate::restore`], the built-in checks, RTO/RPO, the report |
//! | `group` | group drills: every member of an application group to one point, cross-store checks, one report |
//! | `checks/` | what each engine checks after its restore (a started server, counts, queries) |
//! | [`sandbox`] | the sandbox directory and the servers started in it, torn down after |
//! | [`report`] | the signed report format |
//! | [`store`] | reports in the repository: stored write-once, listed, judged against trusted signers |
//! | [`html`] | the report page auditors read |
//!
//! A drill never returns an error for something that went wrong *in the drill* (a missing
//! pack, a WAL gap, a failing check, a server that does not start): that is a failed drill,
//! and its report says why. Errors are for what prevents a report at all (no signing key,
//! the report cannot be stored).

mod checks;
mod group;
pub mod html;
pub mod report;
pub mod sandbox;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Drill, DrillCheck, DrillPoint, Policy, SourceSpec};
use crate::error::{Classify, ErrorKind};
use crate::ops;
use crate::pipeline::pitr::Target;
use crate::pipeline::progress::Progress;
use crate::pipeline::verify::ReadPacks;
use crate::pipeline::{Repository, wal};
use crate::repo::ids::SnapshotId;
use crate::restore::{self, Restored};
use report::{CheckResult, Objective, Report};
use sandbox::Sandbox;

/// Why a drill produced no report, or why a step of one went wrong (which its report then
/// states as a reason).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The configuration does not allow a drill (no signing key, unknown policy, no sandbox
    /// Qdrant).
    #[error("{0}")]
    Usage(String),
    /// Opening the repository or keys.
    #[error(transparent)]
    Ops(#[from] crate::ops::OpsError),
    /// Reading the repository, storing the report.
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    /// Storing or listing reports.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The signing key or a report.
    #[error(transparent)]
    Report(#[from] report::ReportError),
    /// The restore's own errors.
    #[error(transparent)]
    Restore(#[from] restore::RestoreError),
    /// A sandbox server the drill starts or queries.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// A sandbox server cannot be started safely.
    #[error(transparent)]
    SandboxUser(#[from] sandbox::SandboxUserError),
    /// The sandbox directory or a port.
    #[error("sandbox: {0}")]
    Sandbox(#[from] std::io::Error),
    /// Cancelled (shutdown).
    #[error("cancelled")]
    Cancelled,
    /// A step that could not run (a task that panicked, a time out of range).
    #[error("{0}")]
    Internal(String),
}

impl Classify for DrillError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Usage(_) | Self::SandboxUser(_) => ErrorKind::Usage,
            Self::Ops(e) => e.kind(),
            Self::Restore(e) => e.kind(),
            _ => ErrorKind::Failure,
        }
    }
}

impl From<tokio::task::JoinError> for DrillError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<chrono::OutOfRangeError> for DrillError {
    fn from(e: chrono::OutOfRangeError) -> Self {
        Self::Internal(format!("a configured duration is out of range: {e}"))
    }
}

/// What a drill gathers while it runs.
struct Run<'a> {
    config: &'a Config,
    drill: &'a Drill,
    policy: &'a Policy,
    t0: Instant,
    started: DateTime<Utc>,
    checks: Vec<CheckResult>,
    reasons: Vec<String>,
    timings: BTreeMap<String, f64>,
    versions: BTreeMap<String, String>,
    snapshot: Option<(SnapshotId, DateTime<Utc>)>,
    target: String,
    reached: Option<String>,
    bytes_restored: u64,
    repository: String,
    /// The restore's counters (the daemon shows them in `GET /v1/jobs`).
    progress: Arc<Progress>,
    /// The drill's cancellation: ends a restored server's start-up wait at once.
    cancel: CancellationToken,
    /// A group drill's point for this member: the recovery target, or the snapshot.
    pinned: Option<Pinned>,
    /// Points in each Qdrant collection restored (cross-store checks ask for them).
    points: BTreeMap<String, u64>,
}

/// What a group drill's plan fixed for one member.
#[derive(Debug, Clone)]
struct Pinned {
    recovery: Option<Target>,
    snapshot: Option<String>,
}

impl Run<'_> {
    fn builtin(&mut self, name: &str, expected: &str, actual: String, passed: bool, seconds: f64) {
        if !passed {
            self.reasons.push(format!("{name}: {actual}"));
        }
        self.checks.push(CheckResult {
            name: name.to_owned(),
            kind: "builtin".to_owned(),
            expected: expected.to_owned(),
            actual,
            passed,
            seconds,
        });
    }

    /// The built-in "data restored and verified" check.
    fn restored(&mut self, actual: String, passed: bool, seconds: f64) {
        self.builtin(
            "data restored and verified",
            VERIFIED,
            actual,
            passed,
            seconds,
        );
    }

    fn phase(&mut self, name: &str, since: Instant) {
        self.timings
            .insert(name.to_owned(), since.elapsed().as_secs_f64());
    }
}

/// Runs `drill` and stores its signed report; returns the report (pass or fail).
///
/// # Errors
/// No signing key, unknown policy, or the report cannot be stored.
pub async fn run(
    config: &Config,
    drill: &Drill,
    trigger: report::Trigger,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<Report, DrillError> {
    let key_file = config.keys.signing_key_file.as_ref().ok_or_else(|| {
        DrillError::Usage(
            "keys.signing_key_file is not set: drill reports are signed evidence; create a key with `dr keygen --signing FILE`".to_owned(),
        )
    })?;
    let key = report::load_signing_key(key_file)?;
    if let Some(g) = &drill.group {
        let group = config
            .groups
            .get(g)
            .ok_or_else(|| DrillError::Usage(format!("no group `{g}`")))?;
        return group::run(config, drill, group, trigger, &key, progress, cancel).await;
    }
    let policy = config
        .policy(drill.policy.as_str())
        .map_err(DrillError::Usage)?;
    let mut run = Run {
        config,
        drill,
        policy,
        t0: Instant::now(),
        started: Utc::now(),
        checks: Vec::new(),
        reasons: Vec::new(),
        timings: BTreeMap::new(),
        versions: [("dr".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]
            .into_iter()
            .collect(),
        snapshot: None,
        target: "latest".to_owned(),
        reached: None,
        bytes_restored: 0,
        repository: String::new(),
        progress,
        cancel: cancel.clone(),
        pinned: None,
        points: BTreeMap::new(),
    };
    tracing::info!(drill = %drill.name, policy = %policy.id, region = %drill.from_region, "Drill started.");
    let mut rpo_measured = (None, "not measured".to_owned());
    match ops::read_repo(config, policy, Some(&drill.from_region)).await {
        Err(e) => run.reasons.push(format!(
            "opening the repository in {}: {}",
            drill.from_region,
            crate::error::chain(&e)
        )),
        Ok(repo) => {
            run.repository = repo.storage.location().to_owned();
            rpo_measured = measure_rpo(&repo, policy).await;
            let sandbox = Sandbox::new(drill.sandbox_dir.as_deref(), &drill.name);
            match sandbox {
                Err(e) => run.reasons.push(format!("creating the sandbox: {e}")),
                Ok(mut sb) => {
                    let r = tokio::select! {
                        r = restore_and_check(&mut run, &repo, &mut sb) => r,
                        () = cancel.cancelled() => Err(DrillError::Cancelled),
                    };
                    if let Err(e) = r {
                        run.reasons.push(crate::error::chain(&e));
                    }
                    // Measured before teardown: RTO ends when the service answers and the
                    // checks pass.
                    run.phase("total", run.t0);
                    let teardown = Instant::now();
                    tokio::task::spawn_blocking(move || drop(sb)).await?;
                    run.phase("teardown", teardown);
                    let snapshot = run.snapshot.as_ref().map(|(id, _)| id.clone());
                    let (ok, actual, seconds) =
                        objects_intact(config, policy, &repo, snapshot.as_ref()).await;
                    run.builtin(INTACT.0, INTACT.1, actual, ok, seconds);
                }
            }
        }
    }
    let rto_s = run.timings.get("total").copied();
    let restored_and_checked = run.reasons.is_empty();
    let rto = Objective {
        seconds: rto_s.filter(|_| restored_and_checked),
        objective_seconds: drill.rto.as_secs_f64(),
        met: restored_and_checked && rto_s.is_some_and(|s| s <= drill.rto.as_secs_f64()),
        basis: "wall time from drill start until the sandbox answered and every check passed"
            .to_owned(),
    };
    if restored_and_checked && !rto.met {
        run.reasons.push(format!(
            "RTO {:.1}s exceeds the objective {}s",
            rto_s.unwrap_or_default(),
            drill.rto.as_secs()
        ));
    }
    let rpo = Objective {
        seconds: rpo_measured.0,
        objective_seconds: drill.rpo.as_secs_f64(),
        met: rpo_measured.0.is_some_and(|s| s <= drill.rpo.as_secs_f64()),
        basis: rpo_measured.1,
    };
    if !rpo.met {
        run.reasons.push(match rpo.seconds {
            Some(s) => format!("RPO {s:.1}s exceeds the objective {}s", drill.rpo.as_secs()),
            None => "RPO could not be measured: no recoverable point found".to_owned(),
        });
    }
    let report = Report {
        schema: report::SCHEMA.to_owned(),
        id: SnapshotId::new(run.started).to_string(),
        drill: drill.name.clone(),
        policy: policy.id.to_string(),
        source: crate::source::AnySource::from_spec(&policy.source)
            .kind()
            .to_owned(),
        verdict: if run.reasons.is_empty() {
            report::Outcome::Pass
        } else {
            report::Outcome::Fail
        },
        reasons: run.reasons,
        started: run.started,
        finished: Utc::now(),
        region: drill.from_region.clone(),
        repository: run.repository,
        snapshot: run.snapshot.as_ref().map(|s| s.0.to_string()),
        snapshot_time: run.snapshot.map(|s| s.1),
        target: run.target,
        reached: run.reached,
        rto,
        rpo,
        timings: run.timings,
        bytes_restored: run.bytes_restored,
        versions: run.versions,
        checks: run.checks,
        controls: report::CONTROLS
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect(),
        trigger: Some(trigger),
        definition_sha256: definition_sha256(drill),
        region_role: Some(
            if policy.targets.first() == Some(&drill.from_region) {
                "primary"
            } else {
                "replica"
            }
            .to_owned(),
        ),
        host: crate::host::name().unwrap_or_else(|| "unknown".to_owned()),
        group: None,
        members: Vec::new(),
    };
    store::store(config, policy, &report, &key).await?;
    tracing::info!(drill = %drill.name, report = %report.id, verdict = %report.verdict, rto_seconds = ?report.rto.seconds, rpo_seconds = ?report.rpo.seconds, "Drill finished.");
    Ok(report)
}

/// The built-in check after teardown: its name and what it expects.
const INTACT: (&str, &str) = (
    "repository objects present and intact",
    "every pack, index and refs object of the policy's snapshots present, sizes and MACs right; the restored snapshot's packs each hashing to its name",
);

/// Not part of the RTO: every object the policy's snapshots name is present with its
/// recorded size, and every pack of the restored snapshot (all, when none was) hashes to its
/// name, so that damage a restore happens not to read is found too. Returns whether it holds,
/// what was found, and the seconds it took.
async fn objects_intact(
    config: &Config,
    policy: &Policy,
    repo: &Repository,
    snapshot: Option<&SnapshotId>,
) -> (bool, String, f64) {
    let t = Instant::now();
    let read = snapshot.map_or(ReadPacks::All, ReadPacks::Of);
    let v = crate::pipeline::verify::run(
        repo,
        Some(policy.id.as_str()),
        None,
        read,
        config.pipeline.restore_concurrency,
        config.daemon.job_timeout,
        Arc::new(Progress::default()),
    )
    .await;
    let (ok, actual) = match v {
        Ok(v) if v.ok() => (
            true,
            format!(
                "{} snapshots, {} packs: all present, sizes and MACs right, {} packs read whole and hashed",
                v.snapshots, v.packs, v.packs_read
            ),
        ),
        Ok(v) => (false, v.problems.join("; ")),
        Err(e) => (false, format!("{e:#}")),
    };
    (ok, actual, t.elapsed().as_secs_f64())
}

/// SHA-256 (hex) of the drill's definition file as it ran.
fn definition_sha256(drill: &Drill) -> Option<String> {
    std::fs::read(&drill.file).ok().map(|b| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&b))
    })
}

/// RPO at drill time: the age of the newest recoverable point in the region restored from.
async fn measure_rpo(repo: &Repository, policy: &Policy) -> (Option<f64>, String) {
    let now = Utc::now();
    let age = |t: DateTime<Utc>| Some((now - t).num_milliseconds().max(0) as f64 / 1000.0);
    if matches!(policy.source, SourceSpec::Postgres(_))
        && let Ok(Some(newest)) = wal::newest_archived_at(repo, policy.id.as_str()).await
    {
        return (
            age(newest),
            "age of the newest archived WAL segment in the region restored from".to_owned(),
        );
    }
    match repo.committed(policy.id.as_str()).await {
        Ok(ids) => match ids.last() {
            Some(id) => match repo.read_refs(policy.id.as_str(), id).await {
                Ok(r) => (
                    age(r.finished),
                    "age of the newest snapshot in the region restored from".to_owned(),
                ),
                Err(_) => (
                    age(id.time()),
                    "age of the newest snapshot (start time)".to_owned(),
                ),
            },
            None => (None, "no snapshot in the region restored from".to_owned()),
        },
        Err(e) => (None, format!("listing snapshots failed: {e}")),
    }
}

/// Restore, start the sandbox server, run the checks.
async fn restore_and_check(
    run: &mut Run<'_>,
    repo: &Repository,
    sb: &mut Sandbox,
) -> Result<(), DrillError> {
    let identity = Arc::new(ops::identity(run.config)?);
    // Servers start on restored data, which a compromised database host could have crafted:
    // never as root, never as a user that can read dr's secrets.
    let server_user = match &run.policy.source {
        SourceSpec::Postgres(_) | SourceSpec::Redis(_) => {
            sandbox::server_user(run.config, &run.drill.run_as)?
        }
        _ => None,
    };
    let data_dir = sb.path().join("data");
    let target = match (&run.policy.source, &run.drill.point) {
        _ if run.pinned.is_some() => run.pinned.as_ref().and_then(|p| p.recovery.clone()),
        (SourceSpec::Postgres(_), DrillPoint::Ago(d)) => {
            Some(Target::Time(run.started - chrono::Duration::from_std(*d)?))
        }
        (SourceSpec::Postgres(_), DrillPoint::Random) => {
            Some(Target::Time(random_point(repo, run.policy).await?))
        }
        _ => None,
    };
    if let Some(Target::Time(t)) = &target {
        run.target = t.to_rfc3339();
    }
    let req = restore::Request {
        target_dir: &data_dir,
        existing: restore::Existing::Refuse,
        keep_setuid: false,
        region: Some(&run.drill.from_region),
        snapshot: run.pinned.as_ref().and_then(|p| p.snapshot.as_deref()),
        options: restore::Options {
            recovery_target: target.clone(),
            start: true,
            ..restore::Options::default()
        },
    };
    let t = Instant::now();
    let cancel = CancellationToken::new();
    let restored = restore::run(&restore::Job {
        config: run.config,
        policy: run.policy,
        repo,
        identity: identity.clone(),
        req: &req,
        progress: run.progress.clone(),
        cancel: &cancel,
    })
    .await;
    run.phase("restore", t);
    let restored = match restored {
        Ok(r) => r,
        Err(e) => {
            run.restored(crate::error::chain(&e), false, 0.0);
            return Ok(());
        }
    };
    record_restored(run, &restored);
    match restored {
        Restored::Postgres(prepared) => {
            let target = target.unwrap_or(Target::Latest);
            checks::postgres::check(run, repo, identity, sb, server_user, &prepared, &target).await
        }
        Restored::Redis(r) => checks::redis::check(run, sb, server_user, &r).await,
        Restored::Qdrant(q) => checks::qdrant::check(run, sb, &q).await,
        Restored::Files(_) => Ok(()),
    }
}

/// The built-in "data restored and verified" check of a restore that succeeded, and what
/// the report says was restored.
fn record_restored(run: &mut Run<'_>, restored: &Restored) {
    let s = restored.summary();
    let (snapshot, started) = restored.snapshot();
    run.bytes_restored = s.bytes;
    let bytes = crate::config::units::format_bytes(s.bytes);
    let actual = match restored {
        Restored::Postgres(p) => {
            run.versions.insert(
                "postgresql (backed up)".to_owned(),
                p.facts.server_version.clone(),
            );
            format!(
                "{bytes} in {} files from snapshot {snapshot}; WAL {} .. {} present",
                s.artifacts, p.wal_from, p.wal_to
            )
        }
        _ => {
            run.target = "newest snapshot".to_owned();
            run.reached = Some(format!(
                "snapshot of {}",
                started.format("%Y-%m-%d %H:%M:%S UTC")
            ));
            format!("{bytes} in {} items from snapshot {snapshot}", s.artifacts)
        }
    };
    run.snapshot = Some((snapshot, started));
    run.restored(actual, true, s.seconds);
}

/// What the built-in data check asserts.
const VERIFIED: &str =
    "every chunk authenticated (XChaCha20-Poly1305) and re-hashed against its id (keyed BLAKE3)";

/// A random point between the oldest base backup's end and the newest archived WAL.
async fn random_point(repo: &Repository, policy: &Policy) -> Result<DateTime<Utc>, DrillError> {
    let ids = repo.committed(policy.id.as_str()).await?;
    let oldest = ids
        .first()
        .ok_or_else(|| DrillError::Internal("no base backup to restore".to_owned()))?;
    let from = repo.read_refs(policy.id.as_str(), oldest).await?.finished;
    let to = wal::newest_archived_at(repo, policy.id.as_str())
        .await?
        .unwrap_or(from);
    let from = match policy.retention.wal_window {
        Some(w) => from.max(Utc::now() - chrono::Duration::from_std(w)?),
        None => from,
    };
    let span = (to - from).num_milliseconds().max(0);
    Ok(from + chrono::Duration::milliseconds((rand::random::<f64>() * span as f64) as i64))
}

/// Judges one check's answer and records it.
fn record_check(
    run: &mut Run<'_>,
    c: &DrillCheck,
    kind: &str,
    got: Result<String, String>,
    point: DateTime<Utc>,
    t: Instant,
) {
    let mut expected = Vec::new();
    if let Some(e) = &c.expect {
        expected.push(format!("value {e}"));
    }
    if let Some(r) = c.expect_recent {
        expected.push(format!(
            "a time at most {}s before the recovery point {}",
            r.as_secs(),
            point.to_rfc3339()
        ));
    }
    let (passed, actual) = match got {
        Err(e) => (false, format!("error: {e}")),
        Ok(v) => {
            let mut ok = c.expect.as_ref().is_none_or(|e| e.holds(&v));
            if let Some(r) = c.expect_recent {
                ok &= crate::pipeline::pitr::parse_time(&v).is_ok_and(|ts| {
                    point - ts <= chrono::Duration::from_std(r).unwrap_or_default()
                });
            }
            (ok, v)
        }
    };
    if !passed {
        run.reasons.push(format!(
            "check `{}`: expected {}, got {actual}",
            c.name,
            expected.join(" and ")
        ));
    }
    run.checks.push(CheckResult {
        name: c.name.clone(),
        kind: kind.to_owned(),
        expected: expected.join(" and "),
        actual,
        passed,
        seconds: t.elapsed().as_secs_f64(),
    });
}
