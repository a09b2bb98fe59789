//! What the daemon knows about itself, shared with the HTTP API: workers (Garage style),
//! policies, replicas.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::drill::report::Verdict;

/// What a worker is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Waiting for its next pass (or, for a scheduler, its next job).
    #[default]
    Idle,
    /// In a pass.
    Busy,
    /// Stopped for shutdown.
    Stopped,
}

/// A background worker's health.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerStatus {
    /// What it is doing.
    pub state: WorkerState,
    /// Last time a pass succeeded.
    pub last_success: Option<DateTime<Utc>>,
    /// Last error (message chain, no secrets).
    pub last_error: Option<String>,
    /// When it happened.
    pub last_error_at: Option<DateTime<Utc>>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Passes so far.
    pub runs: u64,
}

/// WAL archive health of a PostgreSQL policy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalStatus {
    /// Newest archived segment.
    pub last_segment: Option<String>,
    /// When it reached the repository.
    pub last_archived_at: Option<DateTime<Utc>>,
    /// Age of the newest segment when last measured.
    pub lag_seconds: Option<f64>,
    /// WAL the server has written past the newest archived segment, when last measured
    /// (what losing the server now would lose; `None` when the server was not reachable).
    pub lag_bytes: Option<u64>,
    /// The server's failed `archive_command` runs (`pg_stat_archiver.failed_count`, since
    /// its statistics were reset), when last measured.
    pub archive_failures: Option<u64>,
    /// The WAL receiver (`wal.stream = true`), after its last pass.
    pub stream: Option<crate::ops::wal_stream::StreamStatus>,
}

/// One policy.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyStatus {
    /// Source type.
    pub source: &'static str,
    /// Cron expression.
    pub schedule: String,
    /// Targets, primary first.
    pub targets: Vec<String>,
    /// Objectives, seconds.
    pub rpo_seconds: u64,
    /// Objectives, seconds.
    pub rto_seconds: u64,
    /// Next scheduled run.
    pub next_run: Option<DateTime<Utc>>,
    /// Seconds between the next two scheduled runs.
    pub schedule_interval_seconds: Option<f64>,
    /// A backup is running.
    pub running: bool,
    /// Last successful backup's end.
    pub last_success: Option<DateTime<Utc>>,
    /// Last failed backup's end.
    pub last_failure: Option<DateTime<Utc>>,
    /// Why it failed.
    pub last_error: Option<String>,
    /// Newest snapshot this daemon made.
    pub last_snapshot: Option<String>,
    /// Its duration.
    pub last_duration_seconds: Option<f64>,
    /// Bytes it read.
    pub last_bytes_read: Option<u64>,
    /// Bytes it stored.
    pub last_bytes_stored: Option<u64>,
    /// Pages the last successful backup found failing their checksum (PostgreSQL).
    pub last_bad_pages: Option<u64>,
    /// Backups that succeeded since start.
    pub backups_ok: u64,
    /// Backups that failed since start.
    pub backups_failed: u64,
    /// Runs skipped because the previous was still running.
    pub runs_skipped: u64,
    /// Bytes stored since start.
    pub bytes_stored_total: u64,
    /// Snapshots kept in each target, as of the last retention pass.
    pub snapshots: BTreeMap<String, u64>,
    /// PostgreSQL only.
    pub wal: Option<WalStatus>,
}

/// One replica target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicaStatus {
    /// Its primary.
    pub primary: String,
    /// Seconds since it was last known to hold everything its primary had.
    pub lag_seconds: Option<f64>,
    /// Bytes it lacked at the last pass.
    pub lag_bytes: u64,
    /// Last time it was up to date.
    pub last_success: Option<DateTime<Utc>>,
    /// Last error.
    pub last_error: Option<String>,
}

/// One restore drill.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrillStatus {
    /// Policy it restores.
    pub policy: String,
    /// Cron expression, if scheduled.
    pub schedule: Option<String>,
    /// Next scheduled run.
    pub next_run: Option<DateTime<Utc>>,
    /// Running now.
    pub running: bool,
    /// Newest stored report id.
    pub last_report: Option<String>,
    /// What it counts as: `pass`, `fail`, or `untrusted` when it is not validly signed by a
    /// trusted key (whatever it claims).
    pub last_verdict: Option<Verdict>,
    /// Whether it is validly signed by a trusted key.
    pub last_trusted: Option<bool>,
    /// When the newest *trusted* report's drill started (untrusted reports give no figures).
    pub last_run: Option<DateTime<Utc>>,
    /// RTO measured by the newest trusted report, seconds.
    pub rto_seconds: Option<f64>,
    /// RPO measured by the newest trusted report, seconds.
    pub rpo_seconds: Option<f64>,
    /// Objectives, seconds.
    pub rto_objective_seconds: f64,
    /// Objectives, seconds.
    pub rpo_objective_seconds: f64,
    /// Why the last run could not produce a report.
    pub last_error: Option<String>,
}

impl DrillStatus {
    /// Takes a report (the newest so far) judged `verdict`: its figures only when it is
    /// trusted.
    pub fn record(&mut self, r: &crate::drill::report::Report, verdict: Verdict) {
        self.last_report = Some(r.id.clone());
        self.last_verdict = Some(verdict);
        self.last_trusted = Some(verdict != Verdict::Untrusted);
        if verdict != Verdict::Untrusted {
            self.last_run = Some(r.started);
            self.rto_seconds = r.rto.seconds;
            self.rpo_seconds = r.rpo.seconds;
        }
        self.last_error = None;
    }
}

/// Everything the daemon reports (`/v1/status`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DaemonStatus {
    /// Daemon start.
    pub started: Option<DateTime<Utc>>,
    /// `dr` version.
    pub version: &'static str,
    /// Whether this instance runs jobs (holds the lease) or stands by.
    pub active: bool,
    /// Workers by name.
    pub workers: BTreeMap<String, WorkerStatus>,
    /// Policies by id.
    pub policies: BTreeMap<String, PolicyStatus>,
    /// Replicas by target name.
    pub replicas: BTreeMap<String, ReplicaStatus>,
    /// Drills by name.
    pub drills: BTreeMap<String, DrillStatus>,
    /// Bytes of packs in each storage target, as of the last retention pass.
    pub repositories: BTreeMap<String, u64>,
}

/// The shared handle.
#[derive(Debug, Clone, Default)]
pub struct Status(Arc<RwLock<DaemonStatus>>);

impl Status {
    /// A copy for reading.
    pub fn snapshot(&self) -> DaemonStatus {
        self.0.read().expect("status lock").clone()
    }

    /// Changes it.
    pub fn update<R>(&self, f: impl FnOnce(&mut DaemonStatus) -> R) -> R {
        f(&mut self.0.write().expect("status lock"))
    }

    /// Records a worker pass.
    pub fn worker_result(&self, name: &str, result: Result<(), String>) {
        self.update(|s| {
            let w = s.workers.entry(name.to_owned()).or_default();
            w.state = WorkerState::Idle;
            w.runs += 1;
            match result {
                Ok(()) => {
                    w.last_success = Some(Utc::now());
                    w.consecutive_failures = 0;
                }
                Err(e) => {
                    w.last_error = Some(e);
                    w.last_error_at = Some(Utc::now());
                    w.consecutive_failures += 1;
                }
            }
        });
    }

    /// Sets a worker's state word.
    pub fn worker_state(&self, name: &str, state: WorkerState) {
        self.update(|s| s.workers.entry(name.to_owned()).or_default().state = state);
    }
}
