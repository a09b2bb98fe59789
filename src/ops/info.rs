//! `dr info`'s overview of every policy, read from the repositories alone (no database, no
//! restore identity): snapshots, sizes, PostgreSQL's recoverable window, replicas, the last
//! drill of each drill definition, and the policy files that do not load. The JSON schema is
//! `docs/info.md`; a field is never renamed or retyped within a schema version.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Config, ConfigError, Policy, SourceSpec};
use crate::drill::report::Verdict;
use crate::pipeline::{Repository, pitr, wal};
use crate::repo::manifest::Refs;

/// The schema of [`Info`], bumped when a field changes meaning.
pub const SCHEMA: &str = "dr.info/2";

/// Everything `dr info` shows.
#[derive(Debug, Serialize)]
pub struct Info {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// When it was gathered.
    pub generated: DateTime<Utc>,
    /// The policies that load, by id.
    pub policies: Vec<PolicyInfo>,
    /// Policy and drill files with errors (left out of `policies`).
    pub broken: Vec<Broken>,
    /// Backups and drills a daemon on this host is running now (its `jobs.json` in the
    /// state directory), with their progress.
    pub running: Vec<super::jobs::JobView>,
    /// Application groups (`groups/<id>.toml`), with their newest group backup run.
    pub groups: Vec<GroupInfo>,
}

/// One application group.
#[derive(Debug, Serialize)]
pub struct GroupInfo {
    pub id: String,
    /// Member policies.
    pub members: Vec<String>,
    pub max_skew_seconds: f64,
    /// Its cron expression, when the daemon backs it up.
    pub schedule: Option<String>,
    /// Group backup runs recorded in the first member's primary.
    pub runs: usize,
    /// The newest of them.
    pub last_run: Option<RunInfo>,
    /// Why the runs could not be read.
    pub error: Option<String>,
}

/// A group backup run.
#[derive(Debug, Serialize)]
pub struct RunInfo {
    pub run: String,
    pub finished: DateTime<Utc>,
    pub age_seconds: i64,
    /// The greatest distance between two members' points.
    pub skew_seconds: f64,
}

/// A policy or drill file that does not load.
#[derive(Debug, Serialize)]
pub struct Broken {
    /// The file.
    pub file: String,
    /// Each error as `key: message`.
    pub errors: Vec<String>,
}

/// One policy.
#[derive(Debug, Serialize)]
pub struct PolicyInfo {
    pub id: String,
    /// `files`, `postgres`, `redis`, `qdrant`.
    pub source: &'static str,
    /// Storage targets, primary first.
    pub targets: Vec<String>,
    /// The primary's location (e.g. `s3://bucket/prefix`).
    pub location: Option<String>,
    pub rpo_seconds: u64,
    pub rto_seconds: u64,
    /// Committed snapshots in the primary.
    pub snapshots: usize,
    pub oldest: Option<Snapshot>,
    pub newest: Option<Snapshot>,
    /// What the policy's snapshots added to the repository, summed (each snapshot restores on
    /// its own; it stores only what no earlier one did).
    pub bytes_stored: u64,
    /// Bytes in the primary repository's packs (shared by every policy writing to it).
    pub repository_bytes: Option<u64>,
    /// PostgreSQL only: what it can be recovered to.
    pub postgres: Option<PostgresInfo>,
    /// Each replica target.
    pub replicas: Vec<ReplicaInfo>,
    /// The newest report of each drill definition restoring this policy.
    pub drills: Vec<DrillInfo>,
    /// Why the primary could not be read (then the fields above from it are empty).
    pub error: Option<String>,
}

/// A snapshot, from its `.refs`.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub id: String,
    pub finished: DateTime<Utc>,
    /// Seconds since it finished.
    pub age_seconds: i64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes it stored (compressed and sealed, after dedup).
    pub bytes_stored: u64,
    pub artifacts: u64,
    /// PostgreSQL with data checksums: pages that failed their checksum in this backup.
    pub bad_pages: u64,
}

impl Snapshot {
    fn of(r: &Refs, now: DateTime<Utc>) -> Self {
        Self {
            id: r.snapshot.to_string(),
            finished: r.finished,
            age_seconds: (now - r.finished).num_seconds(),
            bytes_read: r.bytes_total,
            bytes_stored: r.bytes_new,
            artifacts: r.artifacts,
            bad_pages: r
                .facts
                .get("bad_pages")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
        }
    }
}

/// A PostgreSQL policy's recoverable window and archive.
#[derive(Debug, Serialize)]
pub struct PostgresInfo {
    #[serde(flatten)]
    pub window: pitr::Window,
    /// Seconds since the newest WAL segment reached the repository.
    pub archive_lag_seconds: Option<i64>,
    /// The daemon's WAL receiver (`wal.stream = true`), as of its last pass on this host.
    pub stream: Option<super::wal_stream::StreamStatus>,
}

/// One replica target of a policy.
#[derive(Debug, Serialize)]
pub struct ReplicaInfo {
    pub target: String,
    pub location: Option<String>,
    /// Committed snapshots it holds.
    pub snapshots: usize,
    /// The primary's snapshots it lacks.
    pub missing: usize,
    /// Its newest snapshot.
    pub newest: Option<String>,
    /// How far its newest snapshot is behind the primary's, seconds (0 when it has it).
    pub lag_seconds: Option<i64>,
    /// PostgreSQL: its newest archived WAL segment.
    pub wal_last: Option<String>,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// A drill definition's newest report.
#[derive(Debug, Serialize)]
pub struct DrillInfo {
    pub drill: String,
    /// `pass`, `fail`, `untrusted` (not validly signed by a trusted key), or none yet.
    pub verdict: Option<Verdict>,
    pub report: Option<String>,
    pub started: Option<DateTime<Utc>>,
    /// Seconds since it started.
    pub age_seconds: Option<i64>,
    pub rto_seconds: Option<f64>,
    pub rpo_seconds: Option<f64>,
    /// Why the reports could not be listed.
    pub error: Option<String>,
}

/// Gathers [`Info`] for every policy of `config` (or the one named); `broken` are the
/// configuration errors outside `dr.toml`, grouped by file.
pub async fn gather(config: &Config, only: Option<&str>, broken: &[ConfigError]) -> Info {
    let now = Utc::now();
    let mut policies = Vec::new();
    for p in config.policies.values() {
        if only.is_none_or(|id| p.id.as_str() == id) {
            policies.push(policy(config, p, now).await);
        }
    }
    let mut by_file: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for e in broken {
        let msg = if e.key.is_empty() {
            e.message.clone()
        } else {
            format!("{}: {}", e.key, e.message)
        };
        by_file
            .entry(e.file.display().to_string())
            .or_default()
            .push(msg);
    }
    let running = super::jobs::read(&config.state_dir)
        .into_iter()
        .filter(|j| only.is_none_or(|id| j.policy == id))
        .collect();
    let mut groups = Vec::new();
    for g in config.groups.values() {
        let first = g.members.iter().find_map(|m| config.policies.get(m));
        if only.is_some_and(|id| !g.members.iter().any(|m| m.as_str() == id)) {
            continue;
        }
        let runs = match first {
            Some(p) => async {
                let repo = super::read_repo(config, p, None).await?;
                Ok::<_, anyhow::Error>(crate::pipeline::group_run::list(&repo, &g.id).await?)
            }
            .await
            .map_err(|e| format!("{e:#}")),
            None => Err("no member loads".to_owned()),
        };
        groups.push(GroupInfo {
            id: g.id.clone(),
            members: g.members.iter().map(ToString::to_string).collect(),
            max_skew_seconds: g.max_skew.as_secs_f64(),
            schedule: g.schedule.as_ref().map(|s| s.expr().to_owned()),
            runs: runs.as_ref().map_or(0, Vec::len),
            last_run: runs.as_ref().ok().and_then(|r| r.last()).map(|r| RunInfo {
                run: r.run.to_string(),
                finished: r.finished,
                age_seconds: (now - r.finished).num_seconds(),
                skew_seconds: r.skew_seconds(),
            }),
            error: runs.err(),
        });
    }
    Info {
        schema: SCHEMA,
        generated: now,
        running,
        groups,
        policies,
        broken: by_file
            .into_iter()
            .map(|(file, errors)| Broken { file, errors })
            .collect(),
    }
}

async fn policy(config: &Config, p: &Policy, now: DateTime<Utc>) -> PolicyInfo {
    let mut info = PolicyInfo {
        id: p.id.to_string(),
        source: p.source.kind(),
        targets: p.targets.clone(),
        location: None,
        rpo_seconds: p.rpo.as_secs(),
        rto_seconds: p.rto.as_secs(),
        snapshots: 0,
        oldest: None,
        newest: None,
        bytes_stored: 0,
        repository_bytes: None,
        postgres: None,
        replicas: Vec::new(),
        drills: drills(config, p, now).await,
        error: None,
    };
    let primary = match primary(config, p, now, &mut info).await {
        Ok(refs) => refs,
        Err(e) => {
            info.error = Some(format!("{e:#}"));
            return info;
        }
    };
    for target in &p.targets[1..] {
        info.replicas
            .push(replica(config, p, target, &primary, now).await);
    }
    info
}

/// Fills in what the primary holds; returns its snapshots' refs, oldest first.
async fn primary(
    config: &Config,
    p: &Policy,
    now: DateTime<Utc>,
    info: &mut PolicyInfo,
) -> anyhow::Result<Vec<Refs>> {
    let repo = super::read_repo(config, p, None).await?;
    info.location = Some(repo.storage.location().to_owned());
    let refs = all_refs(&repo, p).await?;
    info.snapshots = refs.len();
    info.oldest = refs.first().map(|r| Snapshot::of(r, now));
    info.newest = refs.last().map(|r| Snapshot::of(r, now));
    info.bytes_stored = refs.iter().map(|r| r.bytes_new).sum();
    info.repository_bytes = Some(repo.pack_sizes().await?.values().sum());
    if let SourceSpec::Postgres(_) = p.source {
        let window = pitr::window(&repo, p.id.as_str()).await?;
        let listed = wal::list(&repo, p.id.as_str()).await?;
        let lag = wal::newest_segment(&listed)
            .and_then(|(_, m)| m.modified)
            .map(|t| (now - t).num_seconds());
        info.postgres = Some(PostgresInfo {
            window,
            archive_lag_seconds: lag,
            stream: p
                .wal
                .stream
                .as_ref()
                .and_then(|_| super::wal_stream::read_status(&config.state_dir, p.id.as_str())),
        });
    }
    Ok(refs)
}

async fn all_refs(repo: &Repository, p: &Policy) -> anyhow::Result<Vec<Refs>> {
    let mut out = Vec::new();
    for id in repo.committed(p.id.as_str()).await? {
        out.push(repo.read_refs(p.id.as_str(), &id).await?);
    }
    Ok(out)
}

async fn replica(
    config: &Config,
    p: &Policy,
    target: &str,
    primary: &[Refs],
    now: DateTime<Utc>,
) -> ReplicaInfo {
    let mut out = ReplicaInfo {
        target: target.to_owned(),
        location: None,
        snapshots: 0,
        missing: 0,
        newest: None,
        lag_seconds: None,
        wal_last: None,
        error: None,
    };
    let read = async {
        let repo = super::read_repo(config, p, Some(target)).await?;
        out.location = Some(repo.storage.location().to_owned());
        let held = repo.committed(p.id.as_str()).await?;
        out.snapshots = held.len();
        out.missing = primary
            .iter()
            .filter(|r| held.binary_search(&r.snapshot).is_err())
            .count();
        if let Some(id) = held.last() {
            out.newest = Some(id.to_string());
            let theirs = repo.read_refs(p.id.as_str(), id).await?.finished;
            let ours = primary.last().map_or(theirs, |r| r.finished);
            out.lag_seconds = Some((ours - theirs).num_seconds().max(0));
        } else if let Some(r) = primary.last() {
            out.lag_seconds = Some((now - r.finished).num_seconds());
        }
        if let SourceSpec::Postgres(_) = p.source {
            let listed = wal::list(&repo, p.id.as_str()).await?;
            out.wal_last = wal::newest_segment(&listed).map(|(n, _)| n.clone());
        }
        anyhow::Ok(())
    };
    if let Err(e) = read.await {
        out.error = Some(format!("{e:#}"));
    }
    out
}

async fn drills(config: &Config, p: &Policy, now: DateTime<Utc>) -> Vec<DrillInfo> {
    let trusted = crate::drill::store::trusted_signers(config);
    let mut out = Vec::new();
    for d in config.drills.values().filter(|d| d.policy == p.id) {
        let mut info = DrillInfo {
            drill: d.name.clone(),
            verdict: None,
            report: None,
            started: None,
            age_seconds: None,
            rto_seconds: None,
            rpo_seconds: None,
            error: None,
        };
        let listed = async {
            let storage = super::storage(config, &p.targets[0]).await?;
            anyhow::Ok(crate::drill::store::list_reports(&storage, Some(&d.name)).await?)
        };
        match listed.await {
            Ok(reports) => {
                if let Some(mut s) = reports.into_iter().last() {
                    s.judge(&trusted);
                    info.verdict = Some(s.verdict());
                    info.report = Some(s.report.id.clone());
                    info.started = Some(s.report.started);
                    info.age_seconds = Some((now - s.report.started).num_seconds());
                    // An untrusted report's figures are whatever its writer claimed.
                    if s.verdict() != Verdict::Untrusted {
                        info.rto_seconds = s.report.rto.seconds;
                        info.rpo_seconds = s.report.rpo.seconds;
                    }
                }
            }
            Err(e) => info.error = Some(format!("{e:#}")),
        }
        out.push(info);
    }
    out
}
