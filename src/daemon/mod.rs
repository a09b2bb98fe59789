//! `dr daemon` (docs/ARCHITECTURE.md §6): the scheduler and the background workers, their status, and a
//! graceful shutdown.
//!
//! Workers (each reports state, last success, last error, consecutive failures):
//! * `scheduler`: policy backups on their cron schedules ([`scheduler`]);
//! * `wal-watcher`: the age of each PostgreSQL policy's newest archived WAL segment;
//! * `replicator`: copies what replicas lack, every `daemon.replicate_every` and right after
//!   each backup;
//! * `retention`: applies retention and collects packs every `daemon.retention_every`;
//! * `drills`: restore drills on their own schedules, one at a time.
//!
//! Shutdown (SIGTERM/SIGINT): nothing new starts; running jobs get `--shutdown-grace` to
//! finish; then the ones still running are named in the log and cancelled (the commit rule
//! keeps the repository consistent: a cancelled backup commits nothing). A lost lease is no
//! graceful shutdown: another instance may already run the same jobs, so they are cancelled at
//! once and the process exits 1 for its supervisor to restart it as a standby.

pub mod kube;
pub mod lease;
pub mod scheduler;
pub mod status;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::audit::{Action, Via};
use crate::config::{Config, SourceSpec};
use crate::drill::report::Verdict;
use crate::error::{Classify, ErrorKind};
use crate::pipeline::wal;
use crate::source::AnySource;
use scheduler::{Clock, Entry, Event, Limits, Observer, Runner, Scheduler};
use status::{ReplicaStatus, Status, WalStatus, WorkerState};
use worker::{PassError, Periodic};

/// How long the WAL watcher waits for a PostgreSQL server to tell its WAL position.
const WAL_POSITION_TIMEOUT: Duration = Duration::from_secs(10);

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Time running jobs get to finish after a shutdown signal.
    pub shutdown_grace: Duration,
}

/// Why a daemon job, or setting up the daemon, failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// No such policy or drill, or a leader election that cannot work as configured.
    #[error("{0}")]
    Usage(String),
    /// A backup, or opening what it needs.
    #[error(transparent)]
    Ops(#[from] crate::ops::OpsError),
    /// A drill that produced no report.
    #[error(transparent)]
    Drill(#[from] crate::drill::DrillError),
    /// Probing the lease's store.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// A group backup run.
    #[error(transparent)]
    Group(#[from] crate::ops::group::GroupError),
}

impl Classify for DaemonError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Usage(_) => ErrorKind::Usage,
            Self::Ops(e) => e.kind(),
            Self::Drill(e) => e.kind(),
            Self::Storage(_) | Self::Group(_) => ErrorKind::Failure,
        }
    }
}

/// Who started a drill, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartedBy {
    /// Its schedule.
    Schedule,
    /// An API call with the named token.
    Token(String),
}

/// The running daemon's shared parts.
#[derive(Clone)]
pub struct Daemon {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Status for the API.
    pub status: Status,
    /// Wakes the replicator (after a backup).
    pub replicate_now: Arc<Notify>,
    /// Cancelled at the shutdown deadline: running jobs stop.
    pub jobs_cancel: CancellationToken,
    /// Every job, for the shutdown wait.
    pub tracker: TaskTracker,
    /// The backups and drills running now, with their progress (`GET /v1/jobs`,
    /// `<state_dir>/jobs.json`).
    pub jobs: crate::ops::jobs::Jobs,
}

impl Daemon {
    /// Sets up status for every policy.
    pub fn new(config: Arc<Config>) -> Self {
        let status = Status::default();
        status.update(|s| {
            s.started = Some(Utc::now());
            s.version = env!("CARGO_PKG_VERSION");
            s.active = config.daemon.leader_election == crate::config::LeaderElection::None;
            for p in config.policies.values() {
                let st = s.policies.entry(p.id.to_string()).or_default();
                st.source = AnySource::from_spec(&p.source).kind();
                st.schedule = p.schedule.expr().to_owned();
                st.targets = p.targets.clone();
                st.rpo_seconds = p.rpo.as_secs();
                st.rto_seconds = p.rto.as_secs();
                let next = p.schedule.next_runs(Utc::now(), 2);
                if let [a, b] = next.as_slice() {
                    st.schedule_interval_seconds = Some((*b - *a).num_seconds() as f64);
                }
                if matches!(p.source, SourceSpec::Postgres(_)) {
                    st.wal = Some(WalStatus::default());
                }
                for r in p.targets.iter().skip(1) {
                    s.replicas
                        .entry(r.clone())
                        .or_insert_with(|| ReplicaStatus {
                            primary: p.targets[0].clone(),
                            ..ReplicaStatus::default()
                        });
                }
            }
        });
        status.update(|s| {
            for d in config.drills.values() {
                let st = s.drills.entry(d.name.clone()).or_default();
                st.policy = d.policy.to_string();
                st.schedule = d.schedule.as_ref().map(|s| s.expr().to_owned());
                st.rto_objective_seconds = d.rto.as_secs_f64();
                st.rpo_objective_seconds = d.rpo.as_secs_f64();
            }
        });
        Self {
            config,
            status,
            replicate_now: Arc::new(Notify::new()),
            jobs_cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            jobs: crate::ops::jobs::Jobs::default(),
        }
    }

    /// A backup of `policy`, listed as a job before it starts (for [`Self::backup`]).
    pub fn backup_job(&self, policy: &str) -> crate::ops::jobs::Running {
        self.jobs.start("backup", policy, policy)
    }

    /// Drill `name`, listed as a job before it starts (for [`Self::drill`]).
    pub fn drill_job(&self, name: &str) -> crate::ops::jobs::Running {
        let policy = self
            .config
            .drills
            .get(name)
            .map_or("", |d| d.policy.as_str());
        self.jobs.start("drill", name, policy)
    }

    /// Runs one backup of `policy` now as `job`, recording the outcome in the status.
    ///
    /// # Errors
    /// The backup's error.
    pub async fn backup(
        &self,
        policy: &str,
        job: crate::ops::jobs::Running,
        cancel: CancellationToken,
    ) -> Result<(), DaemonError> {
        let p = self
            .config
            .policy(policy)
            .map_err(DaemonError::Usage)?
            .clone();
        self.status.update(|s| {
            if let Some(st) = s.policies.get_mut(policy) {
                st.running = true;
            }
        });
        let span = tracing::info_span!(
            "backup",
            policy,
            source = AnySource::from_spec(&p.source).kind()
        );
        let result = async {
            tracing::info!("Backup started.");
            crate::ops::backup::run(&self.config, &p, false, job.progress.clone(), &cancel).await
        }
        .instrument(span.clone())
        .await;
        self.status.update(|s| {
            let Some(st) = s.policies.get_mut(policy) else {
                return;
            };
            st.running = false;
            match &result {
                Ok(b) => {
                    st.last_success = Some(Utc::now());
                    st.last_snapshot = Some(b.snapshot.to_string());
                    st.last_duration_seconds = Some(b.duration.as_secs_f64());
                    st.last_bytes_read = Some(b.bytes_read);
                    st.last_bytes_stored = Some(b.bytes_stored);
                    st.last_bad_pages = Some(b.bad_pages.len() as u64);
                    st.bytes_stored_total += b.bytes_stored;
                    st.backups_ok += 1;
                }
                Err(e) => {
                    st.last_failure = Some(Utc::now());
                    st.last_error = Some(crate::error::chain(e));
                    st.backups_failed += 1;
                }
            }
        });
        job.finish(match &result {
            Ok(b) => Ok(b.snapshot.to_string()),
            Err(e) => Err(crate::error::chain(e)),
        });
        let _e = span.enter();
        match result {
            Ok(_) => {
                // The pipeline logged the commit (inside this span).
                if p.targets.len() > 1 {
                    self.replicate_now.notify_one();
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = crate::error::chain(&e), "Backup failed.");
                Err(e.into())
            }
        }
    }

    /// Runs drill `name` now, recording the outcome in the status and the audit log.
    ///
    /// # Errors
    /// When no report could be produced (see [`crate::drill::run`]).
    pub async fn drill(
        &self,
        name: &str,
        by: StartedBy,
        job: crate::ops::jobs::Running,
        cancel: CancellationToken,
    ) -> Result<crate::drill::report::Report, DaemonError> {
        let d = self
            .config
            .drills
            .get(name)
            .ok_or_else(|| DaemonError::Usage(format!("no drill `{name}`")))?
            .clone();
        let set_running = |on: bool| {
            self.status.update(|s| {
                if let Some(st) = s.drills.get_mut(name) {
                    st.running = on;
                }
            });
        };
        set_running(true);
        let trigger = match &by {
            StartedBy::Schedule => crate::drill::report::Trigger {
                by: "schedule".to_owned(),
                actor: "scheduler".to_owned(),
            },
            StartedBy::Token(t) => crate::drill::report::Trigger {
                by: "api".to_owned(),
                actor: t.clone(),
            },
        };
        let r = crate::drill::run(&self.config, &d, trigger, job.progress.clone(), &cancel).await;
        job.finish(match &r {
            Ok(rep) => Ok(rep.id.clone()),
            Err(e) => Err(crate::error::chain(e)),
        });
        set_running(false);
        self.status.update(|s| {
            let st = s.drills.entry(name.to_owned()).or_default();
            match &r {
                // Signed just now with this host's key, which is always trusted.
                Ok(rep) => st.record(rep, Verdict::of_trusted(rep)),
                Err(e) => st.last_error = Some(crate::error::chain(e)),
            }
        });
        let outcome = match &r {
            Ok(rep) if rep.verdict == crate::drill::report::Outcome::Pass => Ok(()),
            Ok(rep) => Err(format!("drill failed: {}", rep.reasons.join("; "))),
            Err(e) => Err(crate::error::chain(e)),
        };
        let (channel, who) = match &by {
            StartedBy::Schedule => (Via::Daemon, "scheduler"),
            StartedBy::Token(t) => (Via::Api, t.as_str()),
        };
        crate::audit::record(
            &self.config,
            crate::audit::Event::new(channel, who, Action::DrillRun, name, outcome),
        )
        .await;
        Ok(r?)
    }

    /// Fills the drill status from the stored reports (newest per drill).
    async fn load_drill_history(&self) -> Result<(), crate::drill::DrillError> {
        let reports = crate::drill::store::all_reports(&self.config).await?;
        self.status.update(|s| {
            for r in &reports {
                if let Some(st) = s.drills.get_mut(&r.report.drill) {
                    st.record(&r.report, r.verdict());
                }
            }
        });
        Ok(())
    }

    /// A scheduler running one of `entries` at a time, remembering them in
    /// `<state_dir>/daemon/<state>`; `None` without entries.
    fn one_at_a_time(
        &self,
        entries: Vec<Entry>,
        state: &str,
        jitter: Duration,
    ) -> Option<Scheduler> {
        if entries.is_empty() {
            return None;
        }
        let limits = Limits {
            global: 1,
            per_kind: std::collections::BTreeMap::new(),
            timeout: self.config.daemon.job_timeout,
            jitter,
        };
        let state_file = self.config.state_dir.join("daemon").join(state);
        Some(Scheduler::new(
            entries,
            limits,
            Clock::wall(),
            Some(state_file),
        ))
    }

    fn drill_scheduler(&self) -> Option<(Scheduler, Runner, Observer)> {
        let entries: Vec<Entry> = self
            .config
            .drills
            .values()
            .filter_map(|d| {
                Some(Entry {
                    policy: d.name.clone(),
                    kind: "drill",
                    schedule: d.schedule.clone()?,
                })
            })
            .collect();
        let s = self.one_at_a_time(entries, "drills.json", self.config.daemon.jitter)?;
        let me = self.clone();
        let runner: Runner = Arc::new(move |name, cancel| {
            let me = me.clone();
            Box::pin(async move {
                me.drill(&name, StartedBy::Schedule, me.drill_job(&name), cancel)
                    .await
                    .map(|_| ())
            })
        });
        let status = self.status.clone();
        let observer: Observer = Arc::new(move |e| match e {
            Event::Next { policy, at } => status.update(|s| {
                if let Some(d) = s.drills.get_mut(&policy) {
                    d.next_run = Some(at);
                }
            }),
            Event::Finished(_, r) => status.worker_result("drills", r),
            Event::Started(_) | Event::Skipped(_) => {}
        });
        Some((s, runner, observer))
    }

    /// Runs one backup of group `name` now (`ops::group`), listed as a job.
    ///
    /// # Errors
    /// A member failed (the run is then not recorded).
    pub async fn group_backup(
        &self,
        name: &str,
        cancel: CancellationToken,
    ) -> Result<(), DaemonError> {
        let g = self
            .config
            .groups
            .get(name)
            .ok_or_else(|| DaemonError::Usage(format!("no group `{name}`")))?;
        let job = self.jobs.start("group-backup", name, g.members[0].as_str());
        tracing::info!(group = name, "Group backup started.");
        let r = crate::ops::group::backup(&self.config, g, job.progress.clone(), &cancel).await;
        job.finish(match &r {
            Ok(run) => Ok(run.run.to_string()),
            Err(e) => Err(e.to_string()),
        });
        match r {
            Ok(run) => {
                tracing::info!(group = name, run = %run.run, skew_seconds = run.skew_seconds(), "Group backup recorded.");
                self.replicate_now.notify_one();
                Ok(())
            }
            Err(e) => {
                tracing::error!(group = name, error = %e, "Group backup failed.");
                Err(e.into())
            }
        }
    }

    /// The schedule of groups that have one (`schedule` in `groups/<id>.toml`).
    fn group_scheduler(&self) -> Option<(Scheduler, Runner, Observer)> {
        let entries: Vec<Entry> = self
            .config
            .groups
            .values()
            .filter_map(|g| {
                Some(Entry {
                    policy: g.id.clone(),
                    kind: "group",
                    schedule: g.schedule.clone()?,
                })
            })
            .collect();
        // No jitter: a group's runs are what its restores line up on.
        let s = self.one_at_a_time(entries, "groups.json", Duration::ZERO)?;
        let me = self.clone();
        let runner: Runner = Arc::new(move |name, cancel| {
            let me = me.clone();
            Box::pin(async move { me.group_backup(&name, cancel).await })
        });
        let status = self.status.clone();
        let observer: Observer = Arc::new(move |e| {
            if let Event::Finished(_, r) = e {
                status.worker_result("groups", r);
            }
        });
        Some((s, runner, observer))
    }

    fn scheduler(&self) -> (Scheduler, Runner, Observer) {
        let d = &self.config.daemon;
        let entries = self
            .config
            .policies
            .values()
            .map(|p| Entry {
                policy: p.id.to_string(),
                kind: AnySource::from_spec(&p.source).kind(),
                schedule: p.schedule.clone(),
            })
            .collect();
        let limits = Limits {
            global: d.max_concurrent_jobs,
            per_kind: d.max_concurrent.clone(),
            timeout: d.job_timeout,
            jitter: d.jitter,
        };
        let state_file = self.config.state_dir.join("daemon").join("schedule.json");
        let s = Scheduler::new(entries, limits, Clock::wall(), Some(state_file));
        let me = self.clone();
        let runner: Runner = Arc::new(move |policy, cancel| {
            let me = me.clone();
            Box::pin(async move { me.backup(&policy, me.backup_job(&policy), cancel).await })
        });
        let status = self.status.clone();
        let observer: Observer = Arc::new(move |e| match e {
            Event::Next { policy, at } => status.update(|s| {
                if let Some(p) = s.policies.get_mut(&policy) {
                    p.next_run = Some(at);
                }
            }),
            Event::Skipped(policy) => status.update(|s| {
                if let Some(p) = s.policies.get_mut(&policy) {
                    p.runs_skipped += 1;
                }
            }),
            Event::Started(_) => {}
            Event::Finished(_, r) => status.worker_result("scheduler", r),
        });
        (s, runner, observer)
    }

    /// Measures each PostgreSQL policy's WAL archive lag once: the age of the newest archived
    /// segment, and how much WAL the server has written past it.
    async fn check_wal(&self) -> Result<(), PassError> {
        let mut errors = Vec::new();
        for p in self.config.policies.values() {
            let SourceSpec::Postgres(spec) = &p.source else {
                continue;
            };
            let newest = async {
                let repo = crate::ops::read_repo(&self.config, p, None).await?;
                let all = wal::list(&repo, p.id.as_str()).await?;
                Ok::<_, crate::ops::OpsError>(wal::newest_segment(&all).cloned())
            }
            .await;
            let newest = match newest {
                Ok(newest) => newest,
                Err(e) => {
                    errors.push(format!("{}: {}", p.id, crate::error::chain(&e)));
                    continue;
                }
            };
            let archive = match &newest {
                Some((name, _)) => {
                    let source = crate::source::postgres::PostgresSource::new(spec.clone());
                    match source.archive_state(name, WAL_POSITION_TIMEOUT).await {
                        Ok(a) => Some(a),
                        Err(e) => {
                            errors.push(format!("{}: WAL archive lag in bytes: {e}", p.id));
                            None
                        }
                    }
                }
                None => None,
            };
            self.status.update(|s| {
                let Some(w) = s
                    .policies
                    .get_mut(p.id.as_str())
                    .and_then(|st| st.wal.as_mut())
                else {
                    return;
                };
                if let Some((name, meta)) = newest {
                    w.last_segment = Some(name);
                    w.last_archived_at = meta.modified;
                    w.lag_seconds = meta
                        .modified
                        .map(|m| (Utc::now() - m).num_milliseconds() as f64 / 1000.0);
                }
                w.lag_bytes = archive.map(|a| a.lag_bytes);
                if let Some(a) = archive {
                    w.archive_failures = Some(a.failed_count);
                }
            });
        }
        PassError::check(errors)
    }

    /// One replication pass over every policy.
    async fn replicate(&self) -> Result<(), PassError> {
        use crate::ops::replicate::{self, PairResult};
        let policies: Vec<_> = self.config.policies.values().collect();
        let mut errors = Vec::new();
        for o in replicate::run(&self.config, &policies, None).await {
            let now = Utc::now();
            self.status.update(|s| {
                let r = s.replicas.entry(o.replica.clone()).or_default();
                r.primary.clone_from(&o.primary);
                match &o.result {
                    PairResult::Replicated(rep) if rep.missing_after == 0 => {
                        r.last_success = Some(now);
                        r.lag_bytes = rep.bytes;
                        r.lag_seconds = Some(rep.seconds);
                        r.last_error = None;
                    }
                    PairResult::Replicated(rep) => {
                        r.lag_bytes = rep.missing_bytes_after;
                    }
                    PairResult::NoPrimary => {
                        r.last_success = Some(now);
                        r.lag_seconds = Some(0.0);
                    }
                    PairResult::Failed { error } => {
                        r.last_error = Some(error.clone());
                        r.lag_seconds = r
                            .last_success
                            .map(|t| (now - t).num_milliseconds() as f64 / 1000.0);
                    }
                }
            });
            if let PairResult::Failed { error } = &o.result {
                tracing::warn!(region = %o.replica, error = %error, "Replication failed; the replica catches up later.");
                errors.push(format!("{} -> {}: {error}", o.primary, o.replica));
            }
        }
        PassError::check(errors)
    }

    /// One retention pass over every policy.
    /// Says at start what the first retention pass (which runs at once) will forget, so that
    /// a daemon started on an existing repository never deletes silently.
    async fn warn_of_retention(&self) {
        let policies: Vec<_> = self.config.policies.values().collect();
        match crate::ops::retention::run(&self.config, &policies, Utc::now(), true).await {
            Ok(plan) => {
                for r in plan.policies.iter().filter(|r| !r.forgotten.is_empty()) {
                    tracing::warn!(
                        policy = %r.policy,
                        region = %r.target,
                        kept = r.kept,
                        forgetting = r.forgotten.len(),
                        snapshots = r.forgotten_list(),
                        "Retention will forget snapshots at its first pass, now (`dr retention plan --policy {}` says which rule keeps what).",
                        r.policy
                    );
                }
            }
            Err(e) => tracing::warn!(
                error = crate::error::chain(&e),
                "Could not plan retention at start."
            ),
        }
    }

    async fn retention(&self) -> Result<(), PassError> {
        let policies: Vec<_> = self.config.policies.values().collect();
        let out = crate::ops::retention::run(&self.config, &policies, Utc::now(), false)
            .await
            .map_err(|e| PassError::Items(vec![crate::error::chain(&e)]))?;
        for r in &out.policies {
            if !r.forgotten.is_empty() || r.wal_deleted > 0 {
                tracing::info!(policy = %r.policy, region = %r.target, forgotten = r.forgotten.len(), wal_deleted = r.wal_deleted, "Retention applied.");
            }
        }
        for c in &out.collections {
            if c.deleted_packs + c.marked_packs > 0 {
                tracing::info!(region = %c.target, marked = c.marked_packs, deleted = c.deleted_packs, deleted_bytes = c.deleted_bytes, "Packs collected.");
            }
        }
        self.status.update(|s| {
            for r in &out.policies {
                if let Some(st) = s.policies.get_mut(&r.policy) {
                    st.snapshots.insert(r.target.clone(), r.kept);
                }
            }
            for c in &out.collections {
                s.repositories.insert(c.target.clone(), c.pack_bytes);
            }
        });
        let result = match out.errors() {
            0 => Ok(()),
            n => Err(format!("{n} deletions failed (retried next pass)")),
        };
        if out.deleted_any() || result.is_err() {
            crate::audit::record(
                &self.config,
                crate::audit::Event::new(
                    Via::Daemon,
                    "retention",
                    Action::RetentionApply,
                    &out.audit_summary(),
                    result.clone(),
                ),
            )
            .await;
        }
        result.map_err(|e| PassError::Items(vec![e]))
    }

    /// Runs until `stop`: with a lease, first waits to become the active instance (serving
    /// the read-only API meanwhile). Returns `false` when leadership was lost, after shutting
    /// down like on SIGTERM (the caller exits 1 so that a supervisor restarts it as standby).
    pub async fn run(
        &self,
        opts: &DaemonOptions,
        stop: CancellationToken,
        lease: Option<Arc<lease::Leader>>,
    ) -> bool {
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renew_until = CancellationToken::new();
        let mut renewing = None;
        if let Some(l) = &lease {
            tracing::info!(
                holder = l.holder(),
                "Standing by until this instance holds the lease."
            );
            loop {
                match l.try_acquire().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "Could not read the lease."),
                }
                tokio::select! {
                    () = stop.cancelled() => return true,
                    () = tokio::time::sleep(l.period()) => {}
                }
            }
            self.status.update(|s| s.active = true);
            tracing::info!(holder = l.holder(), "This instance is now the active one.");
            let (lease_ttl, period) = (self.config.daemon.lease_ttl, l.period());
            let (stop2, lost2, renewer, until, jobs) = (
                stop.clone(),
                lost.clone(),
                l.clone(),
                renew_until.clone(),
                self.jobs_cancel.clone(),
            );
            // Renewed until the jobs are done or cut off (through the grace period too): a
            // standby must not take over while this instance still runs jobs. Once the lease
            // is lost, another instance may already run them: they are cancelled at once
            // (they commit nothing), not given the grace period.
            renewing = Some(tokio::spawn(async move {
                let mut last_ok = std::time::Instant::now();
                loop {
                    tokio::select! {
                        () = until.cancelled() => return,
                        () = tokio::time::sleep(period) => {}
                    }
                    match renewer.try_acquire().await {
                        Ok(true) => last_ok = std::time::Instant::now(),
                        Ok(false) => {
                            tracing::error!("Another instance holds the lease now; stopping.");
                            break;
                        }
                        Err(e) if last_ok.elapsed() > lease_ttl * 2 / 3 => {
                            tracing::error!(error = %e, "Could not renew the lease in time; stopping before another instance may take over.");
                            break;
                        }
                        Err(e) => tracing::warn!(error = %e, "Lease renewal failed; retrying."),
                    }
                }
                lost2.store(true, std::sync::atomic::Ordering::SeqCst);
                jobs.cancel();
                stop2.cancel();
            }));
        }
        self.run_active(opts, stop).await;
        renew_until.cancel();
        if let Some(t) = renewing {
            let _ = t.await;
        }
        if let Some(l) = &lease {
            l.release().await;
        }
        !lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The lease for `daemon.leader_election`: a Kubernetes Lease, or a lease object in the
    /// audit target (refused on a store that ignores conditional writes).
    ///
    /// # Errors
    /// Not in a cluster, the store cannot be opened or probed, or cannot hold a lease safely.
    pub async fn lease(config: &Config) -> Result<Option<Arc<lease::Leader>>, DaemonError> {
        use crate::config::LeaderElection;
        let ttl = config.daemon.lease_ttl;
        match &config.daemon.leader_election {
            LeaderElection::None => Ok(None),
            LeaderElection::Kubernetes {
                name,
                namespace,
                api,
            } => {
                let lease = kube::KubeLease::new(name, namespace.as_deref(), api.as_deref())
                    .map_err(|e| DaemonError::Usage(e.to_string()))?;
                Ok(Some(Arc::new(lease::Leader::Kube {
                    lease,
                    holder: lease::holder_id(),
                    ttl,
                })))
            }
            LeaderElection::Bucket => {
                let target = crate::audit::audit_target(config).ok_or_else(|| {
                    DaemonError::Usage("no storage target for the lease".to_owned())
                })?;
                let storage = crate::ops::storage(config, target).await?;
                if !storage.probe().await?.conditional_writes {
                    return Err(DaemonError::Usage(format!(
                        "daemon.leader_election = \"bucket\": {} ignores conditional writes (If-None-Match/If-Match), so two instances could both hold the lease; use a store that honours them (AWS S3, MinIO, moto), \"kubernetes\" in a cluster, or a single instance",
                        storage.location()
                    )));
                }
                Ok(Some(Arc::new(lease::Leader::Bucket(lease::Lease::new(
                    storage, ttl,
                )))))
            }
        }
    }

    /// Starts a periodic worker on the job tracker (see [`worker`]).
    fn spawn_worker<F, Fut>(&self, w: Periodic, stop: &CancellationToken, pass: F)
    where
        F: Fn(Daemon) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), PassError>> + Send,
    {
        let me = self.clone();
        w.spawn(
            &self.tracker,
            self.status.clone(),
            stop.clone(),
            self.jobs_cancel.clone(),
            move || pass(me.clone()),
        );
    }

    /// Starts every worker; returns when `stop` is cancelled and the jobs are done or cut off.
    async fn run_active(&self, opts: &DaemonOptions, stop: CancellationToken) {
        let d = self.config.daemon.clone();
        let (sched, runner, observer) = self.scheduler();
        self.status.worker_state("scheduler", WorkerState::Idle);
        let sched_task = tokio::spawn(sched.run(
            runner,
            observer,
            stop.clone(),
            self.jobs_cancel.clone(),
            self.tracker.clone(),
        ));
        if self
            .config
            .policies
            .values()
            .any(|p| matches!(p.source, SourceSpec::Postgres(_)))
        {
            self.spawn_worker(
                Periodic {
                    name: "wal-watcher",
                    every: d.wal_check_every,
                    wake: None,
                },
                &stop,
                |me| async move { me.check_wal().await },
            );
        }
        for p in self
            .config
            .policies
            .values()
            .filter(|p| p.wal.stream.is_some())
        {
            let (me, stop, id) = (self.clone(), stop.clone(), p.id.clone());
            self.tracker.spawn(async move {
                let Some(policy) = me.config.policies.get(&id) else {
                    return;
                };
                crate::ops::wal_stream::run(&me.config, policy, stop, |st| {
                    me.status.update(|s| {
                        if let Some(w) =
                            s.policies.get_mut(id.as_str()).and_then(|p| p.wal.as_mut())
                        {
                            w.stream = Some(st.clone());
                        }
                    });
                })
                .await;
            });
        }
        if self.config.policies.values().any(|p| p.targets.len() > 1) {
            self.spawn_worker(
                Periodic {
                    name: "replicator",
                    every: d.replicate_every,
                    wake: Some(self.replicate_now.clone()),
                },
                &stop,
                |me| async move { me.replicate().await },
            );
        }
        self.warn_of_retention().await;
        self.spawn_worker(
            Periodic {
                name: "retention",
                every: d.retention_every,
                wake: None,
            },
            &stop,
            |me| async move { me.retention().await },
        );
        let scheduled = |name: &'static str, parts: Option<(Scheduler, Runner, Observer)>| {
            parts.map(|(sched, runner, observer)| {
                self.status.worker_state(name, WorkerState::Idle);
                tokio::spawn(sched.run(
                    runner,
                    observer,
                    stop.clone(),
                    self.jobs_cancel.clone(),
                    self.tracker.clone(),
                ))
            })
        };
        let group_task = scheduled("groups", self.group_scheduler());
        let drill_task = scheduled("drills", self.drill_scheduler());
        {
            let me = self.clone();
            self.tracker.spawn(async move {
                if let Err(e) = me.load_drill_history().await {
                    tracing::warn!(error = %crate::error::chain(&e), "Could not read past drill reports.");
                }
            });
        }
        let jobs_file = tokio::spawn(write_jobs(self.jobs.clone(), self.config.state_dir.clone()));
        tracing::info!(
            policies = self.config.policies.len(),
            drills = self.config.drills.len(),
            "Daemon started."
        );

        stop.cancelled().await;
        let _ = sched_task.await;
        if let Some(t) = drill_task {
            let _ = t.await;
            self.status.worker_state("drills", WorkerState::Stopped);
        }
        if let Some(t) = group_task {
            let _ = t.await;
            self.status.worker_state("groups", WorkerState::Stopped);
        }
        self.status.worker_state("scheduler", WorkerState::Stopped);
        self.tracker.close();
        tracing::info!(
            grace_seconds = opts.shutdown_grace.as_secs(),
            "Shutting down: waiting for running jobs."
        );
        if tokio::time::timeout(opts.shutdown_grace, self.tracker.wait())
            .await
            .is_err()
        {
            let running: Vec<String> = self
                .jobs
                .list()
                .into_iter()
                .map(|j| format!("{} {}", j.kind, j.name))
                .collect();
            tracing::warn!(jobs = %running.join(", "), "Shutdown deadline reached; cancelling the jobs still running (they commit nothing).");
            self.jobs_cancel.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), self.tracker.wait()).await;
        }
        self.jobs_cancel.cancel();
        // The jobs are done or cut off: nothing runs for jobs.json to show.
        jobs_file.abort();
        let _ = std::fs::remove_file(crate::ops::jobs::file(&self.config.state_dir));
        tracing::info!("Daemon stopped.");
    }
}

/// Rewrites `<state_dir>/jobs.json` every [`crate::ops::jobs::WRITE_EVERY`] (`dr info` reads
/// it) until aborted; the daemon removes it when it stops.
async fn write_jobs(jobs: crate::ops::jobs::Jobs, state_dir: std::path::PathBuf) {
    let mut warned = false;
    loop {
        let list = jobs.list();
        let dir = state_dir.clone();
        let written =
            tokio::task::spawn_blocking(move || crate::ops::jobs::write(&dir, list)).await;
        if let Ok(Err(e)) = written
            && !warned
        {
            warned = true;
            tracing::warn!(error = %e, dir = %state_dir.display(), "Could not write jobs.json (dr info will not show running jobs).");
        }
        tokio::time::sleep(crate::ops::jobs::WRITE_EVERY).await;
    }
}
