//! `wal.stream = true`: the daemon's WAL receiver for one PostgreSQL policy, for an RPO of
//! seconds instead of one 16 MiB segment.
//!
//! ```text
//! pg_receivewal --slot S --synchronous ──▶ <state_dir>/wal-stream/<policy>/wal/
//!        (source::postgres::receivewal)          │ every wal.stream_flush (5 s):
//!                                                ├─ each completed segment / history file:
//!                                                │    wal::push, as wal-push does (same object,
//!                                                │    idempotent beside archive_command), then
//!                                                │    its partials are deleted, the local copy too
//!                                                └─ the segment being written: its received
//!                                                     prefix as wal-stream/<policy>/<seg>.<len>.partial
//! ```
//!
//! Restores and drills use the longest partial of a segment that is not archived whole
//! (`pipeline::wal::download`), so recovery to `latest` reaches what was stored at most one
//! flush interval before a disaster. Each pass also measures the lag and the slot on the
//! server and writes them to `<state_dir>/wal-stream/<policy>/status.json` (`dr info`) and
//! the daemon's status (`/v1/status`, metrics); a slot holding back more than
//! `wal.stream_max_lag` is logged as an error and raises `DrWalStreamSlotBehind`.
//!
//! Restarts (of `dr`, of the server, a lost network) are survived without a gap:
//! `pg_receivewal` resumes from the newest segment kept locally (the newest completed one is
//! always kept) or, with an empty directory, from the slot's `restart_lsn`, which only moves
//! past WAL flushed here. The completed segments are stored under their own names, so a
//! different segment under the same name is refused exactly as for `wal-push`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Policy, SourceSpec, WalStream};
use crate::pipeline::Repository;
use crate::pipeline::wal::{self, WalError};
use crate::repo::keys::Recipients;
use crate::source::postgres::binaries::{self, Fits};
use crate::source::postgres::lsn::{Lsn, Segment, is_wal_file_name};
use crate::source::postgres::receivewal::{self, Receiver, SlotState};

/// What a WAL receiver reports after each pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// The replication slot.
    pub slot: String,
    /// `streaming`, `connecting` (retrying after a failure) or `stopped`.
    pub state: String,
    /// The server streamed from (host and port, never the password).
    pub server: Option<String>,
    /// Timeline of the newest WAL received.
    pub timeline: Option<u32>,
    /// The newest WAL position stored in the repository (whole segments and partials).
    pub stored_lsn: Option<String>,
    /// When that was stored.
    pub stored_at: Option<DateTime<Utc>>,
    /// The server's position (flushed WAL) at the last measurement.
    pub server_lsn: Option<String>,
    /// WAL on the server not yet in the repository: what losing the server now would lose.
    pub lag_bytes: Option<u64>,
    /// How long ago the oldest WAL not yet stored was written (0 when caught up).
    pub lag_seconds: Option<f64>,
    /// The slot on the server, `None` when unknown or absent.
    pub slot_state: Option<SlotState>,
    /// `wal.stream_max_lag`.
    pub max_lag_bytes: u64,
    /// The slot holds back more than `max_lag_bytes` on the server.
    pub over_max_lag: bool,
    /// Times `pg_receivewal` was (re)started.
    pub starts: u64,
    /// The last failure (connecting, the receiver exiting, storing).
    pub last_error: Option<String>,
    /// When this was written.
    pub updated: Option<DateTime<Utc>>,
}

/// Where a policy's receiver keeps its WAL and status.
pub fn dir(state_dir: &Path, policy: &str) -> PathBuf {
    state_dir.join("wal-stream").join(policy)
}

/// The status the receiver of `policy` last wrote, if any.
pub fn read_status(state_dir: &Path, policy: &str) -> Option<StreamStatus> {
    let text = std::fs::read(dir(state_dir, policy).join("status.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// One policy's receiver.
struct Stream<'a> {
    config: &'a Config,
    policy: &'a Policy,
    settings: &'a WalStream,
    wal_dir: PathBuf,
    status_file: PathBuf,
    status: StreamStatus,
    /// Files stored whole (kept locally only while newest).
    stored: HashSet<String>,
    /// Bytes of each partial segment stored.
    partial: BTreeMap<String, u64>,
    /// (when, server position) samples not yet known stored, oldest first.
    samples: VecDeque<(DateTime<Utc>, Lsn)>,
    seg_size: u64,
}

/// Runs the receiver of `policy` until `stop`, reporting each pass to `report`.
pub async fn run(
    config: &Config,
    policy: &Policy,
    stop: CancellationToken,
    report: impl Fn(&StreamStatus),
) {
    let (SourceSpec::Postgres(spec), Some(settings)) = (&policy.source, &policy.wal.stream) else {
        return;
    };
    let home = dir(&config.state_dir, policy.id.as_str());
    let mut s = Stream {
        config,
        policy,
        settings,
        wal_dir: home.join("wal"),
        status_file: home.join("status.json"),
        status: StreamStatus {
            slot: settings.slot.clone(),
            state: "connecting".to_owned(),
            max_lag_bytes: settings.max_lag,
            ..StreamStatus::default()
        },
        stored: HashSet::new(),
        partial: BTreeMap::new(),
        samples: VecDeque::new(),
        seg_size: 16 << 20,
    };
    let made = {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&s.wal_dir)
    };
    if let Err(e) = made {
        s.fail(format!("creating {}: {e}", s.wal_dir.display()), &report);
        return;
    }
    let mut backoff = Duration::from_secs(1);
    while !stop.is_cancelled() {
        let t0 = std::time::Instant::now();
        match s.session(spec, &stop, &report).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(policy = %policy.id, error = %e, retry_in = ?backoff, "WAL stream interrupted; restarting it.");
                s.fail(e, &report);
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    s.status.state = "stopped".to_owned();
    s.publish(&report);
}

impl Stream<'_> {
    /// One connection: starts `pg_receivewal` and stores what it writes every flush
    /// interval until it exits (`Err`) or `stop` (`Ok`, after a last pass).
    async fn session(
        &mut self,
        spec: &crate::config::PostgresSpec,
        stop: &CancellationToken,
        report: &impl Fn(&StreamStatus),
    ) -> Result<(), String> {
        let conninfo = spec
            .conninfo
            .read()
            .map_err(|e| format!("reading the connection string: {e}"))?;
        self.status.server = Some(crate::source::postgres::describe_conninfo(&conninfo));
        // One connection for the session's measurements, opened again when it breaks.
        let first = crate::source::postgres::connect(&conninfo)
            .await
            .map_err(|e| e.to_string())?;
        let (major, seg_size) = receivewal::server(&first)
            .await
            .map_err(|e| e.to_string())?;
        let mut client = Some(first);
        self.seg_size = seg_size;
        let dirs: Vec<PathBuf> = spec.bin_dir.clone().into_iter().collect();
        let bin = binaries::find("pg_receivewal", &dirs, major, Fits::AtLeast)
            .map_err(|e| e.to_string())?;
        let (repo, recipients) = crate::ops::write_repo(self.config, self.policy)
            .await
            .map_err(|e| crate::error::chain(&e))?;
        let dir = self.wal_dir.clone();
        tokio::task::spawn_blocking(move || receivewal::take_over(&dir))
            .await
            .map_err(|e| e.to_string())?;
        let mut receiver = Receiver::start(&bin, &conninfo, &self.wal_dir, &self.settings.slot)
            .await
            .map_err(|e| e.to_string())?;
        self.status.starts += 1;
        self.status.state = "streaming".to_owned();
        self.status.last_error = None;
        tracing::info!(policy = %self.policy.id, slot = %self.settings.slot, server = ?self.status.server, "Streaming WAL.");
        // Passes start every flush interval, however long the last one took.
        let mut every = tokio::time::interval(self.settings.flush);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                _ = every.tick() => false,
            };
            if stopping {
                receiver.stop().await;
                self.pass(&repo, &recipients, &conninfo, &mut client).await;
                self.publish(report);
                return Ok(());
            }
            let exited = receiver.exited();
            self.pass(&repo, &recipients, &conninfo, &mut client).await;
            if let Some(why) = exited {
                return Err(why);
            }
            self.publish(report);
        }
    }

    /// Stores what is new in the directory, then measures.
    async fn pass(
        &mut self,
        repo: &Repository,
        recipients: &Recipients,
        conninfo: &str,
        client: &mut Option<tokio_postgres::Client>,
    ) {
        let mut errors = Vec::new();
        if let Err(e) = self.store(repo, recipients).await {
            errors.push(e);
        }
        let measured = tokio::time::timeout(Duration::from_secs(10), async {
            if client
                .as_ref()
                .is_none_or(tokio_postgres::Client::is_closed)
            {
                *client = Some(crate::source::postgres::connect(conninfo).await?);
            }
            let c = client.as_ref().expect("connected above");
            receivewal::position(c, &self.settings.slot).await
        })
        .await;
        match measured {
            Ok(Ok(p)) => self.measure(p.lsn, p.slot),
            Ok(Err(e)) => {
                *client = None;
                errors.push(format!("measuring the lag: {e}"));
            }
            Err(_) => {
                *client = None;
                errors.push("measuring the lag: no answer within 10 s".to_owned());
            }
        }
        if !errors.is_empty() {
            self.status.last_error = Some(errors.join("; "));
        }
    }

    /// Stores each completed file not stored yet and the received part of each partial
    /// segment that grew; removes local files no longer needed.
    async fn store(&mut self, repo: &Repository, recipients: &Recipients) -> Result<(), String> {
        let (complete, partials) = list_dir(&self.wal_dir);
        let pid = self.policy.id.as_str();
        let level = self.policy.wal.compression;
        let new: Vec<String> = complete
            .iter()
            .filter(|n| !self.stored.contains(*n))
            .cloned()
            .collect();
        // The partials in the repository, which the segments stored whole now supersede.
        let superseded = if new.is_empty() {
            Vec::new()
        } else {
            wal::list_partials(repo, pid)
                .await
                .map_err(|e| e.to_string())?
        };
        for name in &new {
            let data = tokio::fs::read(self.wal_dir.join(name))
                .await
                .map_err(|e| format!("reading {name}: {e}"))?;
            match wal::push(repo, recipients, pid, name, data, level).await {
                Ok(_) => {}
                Err(e @ WalError::Conflict { .. }) => {
                    tracing::error!(policy = pid, file = %name, error = %e, "The streamed WAL file differs from the one archived under its name.");
                    return Err(e.to_string());
                }
                Err(e) => return Err(format!("storing {name}: {}", crate::error::chain(&e))),
            }
            self.stored.insert(name.clone());
            self.note_stored(name, self.seg_size);
            for p in superseded.iter().filter(|p| &p.segment == name) {
                let _ = repo.storage.delete(&p.meta.key).await;
            }
            self.partial.remove(name);
        }
        for segment in &partials {
            let path = self.wal_dir.join(format!("{segment}.partial"));
            let Ok(data) = tokio::fs::read(&path).await else {
                continue; // completed meanwhile: the next pass stores it whole
            };
            let len = receivewal::received_len(&data);
            if len == 0
                || self
                    .partial
                    .get(segment)
                    .is_some_and(|had| *had >= len as u64)
            {
                continue;
            }
            let mut data = data;
            data.truncate(len);
            wal::push_partial(repo, recipients, pid, segment, data, self.seg_size, level)
                .await
                .map_err(|e| format!("storing {segment}.partial: {}", crate::error::chain(&e)))?;
            if let Some(had) = self.partial.insert(segment.clone(), len as u64) {
                let _ = repo
                    .storage
                    .delete(&crate::repo::layout::wal_stream(pid, segment, had))
                    .await;
            }
            self.note_stored(segment, len as u64);
        }
        // Completed files stored are removed, but for the newest: pg_receivewal resumes after
        // the newest file it finds.
        let newest = complete.iter().chain(partials.iter()).max().cloned();
        for name in &complete {
            if Some(name) != newest.as_ref()
                && self.stored.contains(name)
                && Segment::parse(name, self.seg_size).is_some()
            {
                let _ = std::fs::remove_file(self.wal_dir.join(name));
            }
        }
        Ok(())
    }

    /// Records that `segment` is stored up to `len` bytes (a history file counts as nothing).
    fn note_stored(&mut self, name: &str, len: u64) {
        let Some(seg) = Segment::parse(name, self.seg_size) else {
            return;
        };
        let lsn = Lsn(seg.number * self.seg_size + len);
        let newer = self
            .status
            .stored_lsn
            .as_deref()
            .and_then(|s| Lsn::parse(s).ok())
            .is_none_or(|had| lsn > had);
        if newer {
            self.status.stored_lsn = Some(lsn.to_string());
            self.status.stored_at = Some(Utc::now());
            self.status.timeline = Some(seg.timeline);
        }
    }

    /// Lag from the server's position: bytes not stored, and how long ago the oldest of
    /// them was written (the newest sample the store had not reached yet bounds it).
    fn measure(&mut self, server: Lsn, slot: Option<SlotState>) {
        let now = Utc::now();
        let stored = self
            .status
            .stored_lsn
            .as_deref()
            .and_then(|s| Lsn::parse(s).ok())
            .unwrap_or(Lsn(0));
        self.samples.push_back((now, server));
        // Samples the store has reached are no longer at risk; the oldest one left is when
        // the oldest WAL not stored was already written.
        while self.samples.front().is_some_and(|(_, lsn)| *lsn <= stored) {
            self.samples.pop_front();
        }
        self.status.server_lsn = Some(server.to_string());
        self.status.lag_bytes = Some(server.0.saturating_sub(stored.0));
        self.status.lag_seconds = Some(match self.samples.front() {
            None => 0.0,
            Some((t, _)) => (now - *t).num_milliseconds().max(0) as f64 / 1000.0,
        });
        let retained = slot.as_ref().and_then(|s| s.retained_bytes);
        let over = retained.is_some_and(|r| r > self.settings.max_lag);
        if over && !self.status.over_max_lag {
            tracing::error!(
                policy = %self.policy.id,
                slot = %self.settings.slot,
                retained_bytes = retained,
                max_lag_bytes = self.settings.max_lag,
                "The replication slot holds back more WAL on the server than wal.stream_max_lag: the server's pg_wal grows until the stream catches up (set max_slot_wal_keep_size on the server to cap it)."
            );
        }
        self.status.over_max_lag = over;
        self.status.slot_state = slot;
    }

    fn fail(&mut self, why: String, report: &impl Fn(&StreamStatus)) {
        self.status.state = "connecting".to_owned();
        self.status.last_error = Some(why);
        self.publish(report);
    }

    /// Writes the status file and hands the status to the daemon.
    fn publish(&mut self, report: &impl Fn(&StreamStatus)) {
        self.status.updated = Some(Utc::now());
        if let Ok(json) = serde_json::to_vec_pretty(&self.status) {
            let tmp = self.status_file.with_extension("json.tmp");
            let _ =
                std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &self.status_file));
        }
        report(&self.status);
    }
}

/// The WAL directory's completed files (segments and history files) and the segments of its
/// `.partial` files, each sorted.
fn list_dir(dir: &Path) -> (Vec<String>, Vec<String>) {
    let mut complete = Vec::new();
    let mut partial = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        match name.strip_suffix(".partial") {
            Some(seg) if seg.len() == 24 && is_wal_file_name(seg) => partial.push(seg.to_owned()),
            Some(_) => {}
            None if is_wal_file_name(&name) && !name.ends_with(".backup") => complete.push(name),
            None => {}
        }
    }
    complete.sort();
    partial.sort();
    (complete, partial)
}
