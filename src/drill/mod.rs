//! Restore drills (DESIGN §8): a real restore, from a chosen region, into a sandbox; checks;
//! measured RTO and RPO against the objectives; a signed report stored in the repository.
//!
//! A drill never returns an error for something that went wrong *in the drill* (a missing
//! pack, a WAL gap, a failing check, a server that does not start): that is a failed drill,
//! and its report says why. Errors are for what prevents a report at all (no signing key,
//! the report cannot be stored).

pub mod html;
pub mod report;
pub mod sandbox;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::{CheckQuery, Config, Drill, DrillCheck, DrillPoint, Policy, SourceSpec};
use crate::ops;
use crate::pipeline::pitr::Target;
use crate::pipeline::progress::Progress;
use crate::pipeline::verify::ReadPacks;
use crate::pipeline::{Repository, wal};
use crate::repo::ids::SnapshotId;
use crate::repo::layout::{self, ObjectKey};
use crate::restore::{self, Restored};
use crate::storage::{PutMode, Storage};
use report::{CheckResult, Objective, Report};
use sandbox::Sandbox;

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
    cancel: &CancellationToken,
) -> anyhow::Result<Report> {
    let key_file = config.keys.signing_key_file.as_ref().ok_or_else(|| {
        crate::error::UsageError(
            "keys.signing_key_file is not set: drill reports are signed evidence; create a key with `dr keygen --signing FILE`".to_owned(),
        )
    })?;
    let key = report::load_signing_key(key_file)?;
    let policy = config
        .policy(drill.policy.as_str())
        .map_err(anyhow::Error::msg)?;
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
    };
    tracing::info!(drill = %drill.name, policy = %policy.id, region = %drill.from_region, "Drill started.");
    let mut rpo_measured = (None, "not measured".to_owned());
    match ops::read_repo(config, policy, Some(&drill.from_region)).await {
        Err(e) => run.reasons.push(format!(
            "opening the repository in {}: {e:#}",
            drill.from_region
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
                        () = cancel.cancelled() => Err(anyhow::anyhow!("cancelled")),
                    };
                    if let Err(e) = r {
                        run.reasons.push(format!("{e:#}"));
                    }
                    // Measured before teardown: RTO ends when the service answers and the
                    // checks pass.
                    run.phase("total", run.t0);
                    let teardown = Instant::now();
                    tokio::task::spawn_blocking(move || drop(sb)).await?;
                    run.phase("teardown", teardown);
                    // Not part of the RTO: every object the policy's snapshots name is present
                    // with its recorded size, and every pack of the restored snapshot hashes
                    // to its name (damage a restore happens not to read included).
                    let t = Instant::now();
                    let read = run
                        .snapshot
                        .as_ref()
                        .map_or(ReadPacks::All, |(id, _)| ReadPacks::Of(id));
                    let v = crate::pipeline::verify::run(
                        &repo,
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
                    run.builtin(
                        "repository objects present and intact",
                        "every pack, index and refs object of the policy's snapshots present, sizes and MACs right; the restored snapshot's packs each hashing to its name",
                        actual,
                        ok,
                        t.elapsed().as_secs_f64(),
                    );
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
            Some(s) => format!("RPO {s:.0}s exceeds the objective {}s", drill.rpo.as_secs()),
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
            "pass"
        } else {
            "fail"
        }
        .to_owned(),
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
        host: crate::host::name().unwrap_or_else(|| "unknown".to_owned()),
    };
    store(config, policy, &report, &key).await?;
    tracing::info!(drill = %drill.name, report = %report.id, verdict = %report.verdict, rto_seconds = ?report.rto.seconds, rpo_seconds = ?report.rpo.seconds, "Drill finished.");
    Ok(report)
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
) -> anyhow::Result<()> {
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
        force: false,
        keep_setuid: false,
        region: Some(&run.drill.from_region),
        snapshot: None,
        options: restore::Options {
            recovery_target: target.clone(),
            ..restore::Options::default()
        },
    };
    let t = Instant::now();
    let restored = restore::run(
        run.config,
        run.policy,
        repo,
        identity.clone(),
        &req,
        Arc::new(Progress::default()),
        &CancellationToken::new(),
    )
    .await;
    run.phase("restore", t);
    let restored = match restored {
        Ok(r) => r,
        Err(e) => {
            run.restored(format!("{e:#}"), false, 0.0);
            return Ok(());
        }
    };
    record_restored(run, &restored);
    match restored {
        Restored::Postgres(prepared) => {
            let target = target.unwrap_or(Target::Latest);
            check_postgres(run, repo, identity, sb, server_user, &prepared, &target).await
        }
        Restored::Redis(r) => check_redis(run, sb, server_user, &r).await,
        Restored::Qdrant(q) => check_qdrant(run, sb, &q).await,
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
            if let Some(v) = p.refs.facts.get("server_version").and_then(|v| v.as_str()) {
                run.versions
                    .insert("postgresql (backed up)".to_owned(), v.to_owned());
            }
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

/// Starts the restored cluster in the sandbox, checks the point recovery reached, runs the
/// SQL checks.
async fn check_postgres(
    run: &mut Run<'_>,
    repo: &Repository,
    identity: Arc<crate::repo::keys::Identity>,
    sb: &mut Sandbox,
    server_user: Option<crate::host::User>,
    prepared: &restore::postgres::Prepared,
    target: &Target,
) -> anyhow::Result<()> {
    let port = Sandbox::free_port()?;
    let o = prepared.start_options(
        run.policy,
        port,
        &run.drill.run_as,
        &run.drill.db_user,
        run.drill.start_timeout,
    );
    sb.own_postgres(prepared.data_dir.clone(), o.clone());
    let t = Instant::now();
    let reached = prepared
        .start(
            repo,
            identity,
            o.clone(),
            server_user,
            run.policy.wal.fetch_ahead,
        )
        .await;
    run.phase("recovery", t);
    let reached = match reached {
        Ok(r) => r,
        Err(e) => {
            run.builtin(
                "server started, WAL replayed, promoted",
                "the sandbox answers queries after recovery",
                format!("{e:#}"),
                false,
                0.0,
            );
            return Ok(());
        }
    };
    run.reached = Some(
        reached
            .replay_timestamp
            .clone()
            .unwrap_or_else(|| format!("LSN {}", reached.lsn)),
    );
    let (ok, expected, actual) = pitr_reached(target, &reached);
    run.builtin(
        "recovery reached the target point",
        &expected,
        actual,
        ok,
        reached.seconds,
    );
    if let Ok(v) = crate::source::postgres::recovery::psql(
        &prepared.data_dir,
        &o,
        "postgres",
        "SHOW server_version",
    ) {
        run.versions.insert("postgresql (sandbox)".to_owned(), v);
    }
    let point = match target {
        Target::Time(t) => *t,
        _ => run.started,
    };
    let t = Instant::now();
    for c in run.drill.checks.clone() {
        let (dir, o) = (prepared.data_dir.clone(), o.clone());
        let CheckQuery::Sql { database, sql } = c.query.clone() else {
            continue;
        };
        let tc = Instant::now();
        let got = tokio::task::spawn_blocking(move || {
            crate::source::postgres::recovery::psql(&dir, &o, &database, &sql)
        })
        .await?
        .map_err(|e| e.to_string());
        record_check(run, &c, "sql", got, point, tc);
    }
    run.phase("checks", t);
    Ok(())
}

/// Starts a sandbox server per restored RDB (one per master of a cluster), checks the key
/// count, runs the Redis checks.
async fn check_redis(
    run: &mut Run<'_>,
    sb: &mut Sandbox,
    server_user: Option<crate::host::User>,
    r: &restore::redis::Restored,
) -> anyhow::Result<()> {
    let dirs = match &r.cluster {
        None => vec![r.dir.clone()],
        Some(c) => restore::redis::split_shards(&r.dir, &c.layout, sb.path())?,
    };
    let t = Instant::now();
    let mut ports = Vec::new();
    let mut keys_total = 0;
    let mut server_version = String::new();
    for dir in dirs {
        let port = Sandbox::free_port()?;
        sb.own_redis(port, dir.clone());
        match restore::redis::start(dir, port, None, server_user.clone()).await {
            Ok(s) => {
                keys_total += s.keys_total;
                server_version = s.version;
                ports.push(port);
            }
            Err(e) => {
                run.phase("recovery", t);
                run.builtin(
                    "redis-server loaded the snapshot",
                    "the sandbox answers",
                    format!("{e:#}"),
                    false,
                    0.0,
                );
                return Ok(());
            }
        }
    }
    run.phase("recovery", t);
    run.versions
        .insert("redis (sandbox)".to_owned(), server_version);
    if let Some(v) = r
        .files
        .manifest
        .source
        .facts
        .get("redis_version")
        .and_then(|v| v.as_str())
    {
        run.versions
            .insert("redis (backed up)".to_owned(), v.to_owned());
    }
    let expected = r.keys_recorded;
    run.builtin(
        "key count matches the backup",
        &format!(
            "{} keys (recorded at backup)",
            expected.map_or("?".to_owned(), |e| e.to_string())
        ),
        format!("{keys_total} keys"),
        expected == Some(keys_total),
        0.0,
    );
    let t = Instant::now();
    for c in run.drill.checks.clone() {
        let CheckQuery::Redis(parts) = c.query.clone() else {
            continue;
        };
        let tc = Instant::now();
        // With several shards, the answer of the shard that has the data: the first
        // that meets the expectation, else the first answer.
        let ports2 = ports.clone();
        let expect = c.expect.clone();
        let got = tokio::task::spawn_blocking(move || {
            let answers: Vec<Result<String, String>> =
                ports2.iter().map(|p| redis_command(*p, &parts)).collect();
            answers
                .iter()
                .find(|a| {
                    a.as_ref()
                        .is_ok_and(|v| expect.as_ref().is_none_or(|e| e.holds(v)))
                })
                .cloned()
                .unwrap_or_else(|| answers[0].clone())
        })
        .await?;
        record_check(run, &c, "redis", got, run.started, tc);
    }
    run.phase("checks", t);
    Ok(())
}

/// Loads each restored collection into a scratch collection of the sandbox server, checks
/// its point count and the searches recorded at backup.
async fn check_qdrant(
    run: &mut Run<'_>,
    sb: &mut Sandbox,
    q: &restore::qdrant::Restored,
) -> anyhow::Result<()> {
    let SourceSpec::Qdrant(spec) = &run.policy.source else {
        unreachable!("a Qdrant restore is of a qdrant policy")
    };
    let (version, facts) = restore::qdrant::facts(&q.files.manifest)?;
    run.versions
        .insert("qdrant (backed up)".to_owned(), version.clone());
    let url = run
        .drill
        .qdrant_url
        .clone()
        .ok_or_else(|| anyhow::anyhow!("sandbox.qdrant_url is not set"))?;
    let key = spec
        .api_key
        .as_ref()
        .map(|k| k.read().map_err(anyhow::Error::msg))
        .transpose()?;
    let client =
        crate::source::qdrant::Client::new(&url, key, std::time::Duration::from_secs(3600))?;
    let server = client.version().await?;
    run.versions
        .insert("qdrant (sandbox)".to_owned(), server.clone());
    if let Err(e) = crate::source::qdrant::restore::compatible(&version, &server) {
        run.builtin(
            "sandbox server can load the snapshot",
            &format!("Qdrant {version} or one minor newer"),
            e,
            false,
            0.0,
        );
        return Ok(());
    }
    let base = format!(
        "dr_drill_{}_{}",
        run.drill.name.replace('-', "_"),
        run.started.format("%Y%m%d%H%M%S")
    );
    let t = Instant::now();
    let mut loaded = Vec::new();
    let into = crate::source::qdrant::restore::Target::single(client.clone());
    let dir = sb.path().join("data");
    for f in &facts {
        let target = format!("{base}_{}", f.name);
        sb.own_qdrant_collection(client.clone(), target.clone());
        let tc = Instant::now();
        let r = crate::source::qdrant::restore::restore_collection(&into, &dir, &target, f).await;
        let (ok, actual) = match &r {
            Ok(n) => (true, format!("{n} points in scratch collection {target}")),
            Err(e) => (false, e.to_string()),
        };
        run.builtin(
            &format!("collection {}: point count matches the backup", f.name),
            &format!("{} points (recorded at backup)", f.points),
            actual,
            ok,
            tc.elapsed().as_secs_f64(),
        );
        if ok {
            loaded.push((f, target));
        }
    }
    run.phase("recovery", t);
    let t = Instant::now();
    for (f, target) in loaded {
        let tc = Instant::now();
        let results =
            crate::source::qdrant::restore::check_samples(&client, &target, &f.samples).await;
        let ok = results.iter().all(|r| r.0);
        let detail = results
            .iter()
            .map(|r| r.1.clone())
            .collect::<Vec<_>>()
            .join("; ");
        run.builtin(
            &format!(
                "collection {}: recorded searches return the same ids",
                f.name
            ),
            &format!("{} searches recorded at backup", f.samples.len()),
            if detail.is_empty() {
                "no points to search".to_owned()
            } else {
                detail
            },
            ok,
            tc.elapsed().as_secs_f64(),
        );
    }
    sb.drop_qdrant_collections().await;
    run.phase("checks", t);
    Ok(())
}

/// What the built-in data check asserts.
const VERIFIED: &str =
    "every chunk authenticated (XChaCha20-Poly1305) and re-hashed against its id (keyed BLAKE3)";

/// Did recovery stop where it should? Time targets: the last replayed transaction is not after
/// the target. Latest: the server promoted (it replayed everything archived).
fn pitr_reached(
    target: &Target,
    reached: &crate::source::postgres::recovery::Reached,
) -> (bool, String, String) {
    match target {
        Target::Time(t) => {
            let replay = reached
                .replay_timestamp
                .as_deref()
                .and_then(|s| crate::pipeline::pitr::parse_time(s).ok());
            let expected = format!("last replayed transaction at or before {}", t.to_rfc3339());
            match replay {
                Some(r) => (
                    r <= *t,
                    expected,
                    format!(
                        "last replayed transaction at {} (LSN {}), promoted",
                        r.to_rfc3339(),
                        reached.lsn
                    ),
                ),
                None => (
                    true,
                    expected,
                    format!(
                        "no transaction after the base backup to replay before the target; consistent at LSN {}, promoted",
                        reached.lsn
                    ),
                ),
            }
        }
        _ => (
            true,
            "all archived WAL replayed, server promoted".to_owned(),
            format!(
                "promoted at LSN {}; last replayed transaction {}",
                reached.lsn,
                reached
                    .replay_timestamp
                    .as_deref()
                    .unwrap_or("(none after the base backup)")
            ),
        ),
    }
}

/// A random point between the oldest base backup's end and the newest archived WAL.
async fn random_point(repo: &Repository, policy: &Policy) -> anyhow::Result<DateTime<Utc>> {
    let ids = repo.committed(policy.id.as_str()).await?;
    let oldest = ids
        .first()
        .ok_or_else(|| anyhow::anyhow!("no base backup to restore"))?;
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

fn redis_command(port: u16, parts: &[String]) -> Result<String, String> {
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
    let mut c = client
        .get_connection_with_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let mut cmd = redis::cmd(&parts[0]);
    for a in &parts[1..] {
        cmd.arg(a);
    }
    let v: redis::Value = cmd.query(&mut c).map_err(|e| e.to_string())?;
    Ok(redis_text(&v))
}

fn redis_text(v: &redis::Value) -> String {
    match v {
        redis::Value::Nil => "(nil)".to_owned(),
        redis::Value::Int(i) => i.to_string(),
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Okay => "OK".to_owned(),
        redis::Value::Array(a) | redis::Value::Set(a) => {
            a.iter().map(redis_text).collect::<Vec<_>>().join(" ")
        }
        redis::Value::Double(d) => d.to_string(),
        redis::Value::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    }
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
            "a time at most {}s before {}",
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

/// Signs and stores a report (write-once) in the policy's primary repository.
async fn store(
    config: &Config,
    policy: &Policy,
    report: &Report,
    key: &ed25519_dalek::SigningKey,
) -> anyhow::Result<()> {
    let storage = ops::storage(config, &policy.targets[0]).await?;
    storage
        .put(
            &layout::drill_report(&report.drill, &report.id),
            bytes::Bytes::from(report::sign(report, key)),
            PutMode::CreateOnly,
        )
        .await?;
    Ok(())
}

/// Every stored report of `drill` (or all drills) on one storage target, oldest first.
/// Unreadable ones are skipped with a warning.
///
/// # Errors
/// Listing fails.
pub async fn list_reports(
    storage: &Storage,
    drill: Option<&str>,
) -> anyhow::Result<Vec<report::Signed>> {
    let mut out = Vec::new();
    let mut keys: Vec<ObjectKey> = storage
        .list(&layout::drills_prefix(drill))
        .await?
        .into_iter()
        .map(|m| m.key)
        .filter(|k| k.as_str().ends_with(".json"))
        .collect();
    keys.sort_by(|a, b| {
        a.as_str()
            .rsplit('/')
            .next()
            .cmp(&b.as_str().rsplit('/').next())
    });
    for k in keys {
        let what = format!("{k} in {}", storage.location());
        match storage.get(&k, None).await {
            Ok(b) => match report::open(&what, &b) {
                Ok(s) => out.push(s),
                Err(e) => tracing::warn!(error = %e, "Skipping an unreadable drill report."),
            },
            Err(e) => {
                tracing::warn!(object = %what, error = %e, "Skipping a drill report that cannot be read.")
            }
        }
    }
    Ok(out)
}

/// Reports of every drill of `config`, from each policy's primary target, oldest first, each
/// judged against [`trusted_signers`] ([`report::Signed::trusted`]).
///
/// # Errors
/// Listing fails.
pub async fn all_reports(config: &Config) -> anyhow::Result<Vec<report::Signed>> {
    let mut targets: Vec<&str> = config
        .policies
        .values()
        .map(|p| p.targets[0].as_str())
        .collect();
    targets.sort_unstable();
    targets.dedup();
    let trusted = trusted_signers(config);
    let mut out = Vec::new();
    for t in targets {
        let s = ops::storage(config, t).await?;
        out.extend(list_reports(&s, None).await?);
    }
    for s in &mut out {
        s.judge(&trusted);
    }
    out.sort_by(|a, b| a.report.id.cmp(&b.report.id));
    Ok(out)
}

/// Public keys whose report signatures are trusted: `keys.trusted_signers` plus the key this
/// host signs with.
pub fn trusted_signers(config: &Config) -> Vec<String> {
    let mut out = config.keys.trusted_signers.clone();
    if let Some(f) = &config.keys.signing_key_file
        && let Ok(k) = report::load_signing_key(f)
    {
        out.push(hex::encode(k.verifying_key().to_bytes()));
    }
    out
}

/// Whether `signer` is one of the trusted keys (says nothing of a signature: see
/// [`report::Signed::trusted`]).
pub fn is_trusted(config: &Config, signer: &str) -> bool {
    trusted_signers(config)
        .iter()
        .any(|t| t.eq_ignore_ascii_case(signer))
}

/// How many past drills the report page charts.
const CHART_DRILLS: usize = 30;

/// The reports of `s`'s drill up to and including it (`all` oldest first), the last
/// [`CHART_DRILLS`] of them: the history the report page charts.
pub fn history(all: &[report::Signed], s: &report::Signed) -> Vec<report::Signed> {
    let mine: Vec<&report::Signed> = all
        .iter()
        .filter(|h| h.report.drill == s.report.drill && h.report.id <= s.report.id)
        .collect();
    mine[mine.len().saturating_sub(CHART_DRILLS)..]
        .iter()
        .map(|h| (*h).clone())
        .collect()
}

/// A stored report with its signature status, as the API and `dr drill show --json` give it.
///
/// `verdict` is what the report counts as ([`report::Signed::verdict`]): `untrusted` unless
/// it is validly signed by a trusted key. An untrusted report's own `report.verdict` is
/// replaced by `untrusted` too, so that a consumer reading only that field is not misled; what
/// it claimed is `claimed_verdict` (and the signed bytes are `dr drill show --raw`).
pub fn describe(s: &report::Signed) -> serde_json::Value {
    let verdict = s.verdict();
    let mut report = serde_json::to_value(&s.report).expect("report serializes");
    report["verdict"] = serde_json::json!(verdict);
    serde_json::json!({
        "verdict": verdict,
        "trusted": s.trusted,
        "signature_valid": s.signature_valid,
        "trusted_signer": s.signer_trusted,
        "signer": s.signer,
        "claimed_verdict": s.report.verdict,
        "report": report,
    })
}
