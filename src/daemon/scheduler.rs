//! The scheduler: fires each policy's backup on its cron schedule.
//!
//! * One run per policy at a time: a run that comes due while the previous one is still running
//!   (or waiting for a slot) is skipped and logged, not queued behind it.
//! * A global limit and one per source type bound how many jobs run at once; a due job waits
//!   for a slot. Each job has a timeout and is cancelled when it passes it.
//! * Jitter: each run starts up to `jitter` later, at random, so that many policies on `0 2 * *
//!   *` do not hit the same database host in the same second.
//! * Missed runs: the last time each policy came due is kept in `state/daemon/schedule.json`. At
//!   start-up, a policy that came due while the daemon was down runs once, at once (not once per
//!   missed slot).
//!
//! Time comes from a [`Clock`] that follows tokio's clock, so tests run a simulated week under
//! `tokio::time::pause()` in milliseconds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::schedule::Schedule;

/// Wall-clock time that advances with tokio's clock (and so can be paused in tests).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor_wall: DateTime<Utc>,
    anchor: tokio::time::Instant,
    simulated: bool,
}

impl Clock {
    /// The real clock.
    pub fn wall() -> Self {
        Self {
            anchor_wall: Utc::now(),
            anchor: tokio::time::Instant::now(),
            simulated: false,
        }
    }

    /// A clock that starts at `start` and advances only with tokio's (possibly paused) clock.
    pub fn simulated(start: DateTime<Utc>) -> Self {
        Self {
            anchor_wall: start,
            anchor: tokio::time::Instant::now(),
            simulated: true,
        }
    }

    /// Now.
    pub fn now(&self) -> DateTime<Utc> {
        if self.simulated {
            self.anchor_wall + chrono::Duration::from_std(self.anchor.elapsed()).unwrap_or_default()
        } else {
            Utc::now()
        }
    }

    /// Sleeps until `t`. The real clock re-reads the time at least every minute, so a clock
    /// step (NTP, suspend) delays a run by at most that.
    pub async fn sleep_until(&self, t: DateTime<Utc>) {
        loop {
            let left = (t - self.now()).to_std().unwrap_or_default();
            if left.is_zero() {
                return;
            }
            let step = if self.simulated {
                left
            } else {
                left.min(Duration::from_secs(60))
            };
            tokio::time::sleep(step).await;
        }
    }
}

/// One scheduled policy.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Policy id.
    pub policy: String,
    /// Source type (for the per-type limit).
    pub kind: &'static str,
    /// When it runs.
    pub schedule: Schedule,
}

/// Runs one job: `(policy, cancel)`.
pub type Runner = Arc<
    dyn Fn(String, CancellationToken) -> BoxFuture<'static, Result<(), super::DaemonError>>
        + Send
        + Sync,
>;

/// What happened to a due run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The next run was computed.
    Next {
        policy: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Started.
    Started(String),
    /// Finished: `Ok` or the error chain.
    Finished(String, Result<(), String>),
    /// Skipped because the previous run is still going.
    Skipped(String),
}

/// Observes the scheduler (the daemon's status, tests).
pub type Observer = Arc<dyn Fn(Event) + Send + Sync>;

/// Limits and timings.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Jobs at once.
    pub global: usize,
    /// Jobs at once per source type (absent: 1).
    pub per_kind: BTreeMap<String, usize>,
    /// Job timeout.
    pub timeout: Duration,
    /// Maximum random start delay.
    pub jitter: Duration,
}

/// The scheduler.
pub struct Scheduler {
    entries: Vec<Entry>,
    limits: Limits,
    clock: Clock,
    state_file: Option<PathBuf>,
}

impl Scheduler {
    /// A scheduler over `entries`; `state_file` remembers when each policy last came due.
    pub fn new(
        entries: Vec<Entry>,
        limits: Limits,
        clock: Clock,
        state_file: Option<PathBuf>,
    ) -> Self {
        Self {
            entries,
            limits,
            clock,
            state_file,
        }
    }

    fn load_state(&self) -> HashMap<String, DateTime<Utc>> {
        self.state_file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_state(&self, state: &HashMap<String, DateTime<Utc>>) {
        let Some(f) = &self.state_file else { return };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = f.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = f.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(state).unwrap_or_default())?;
            std::fs::rename(tmp, f)
        };
        if let Err(e) = write() {
            tracing::warn!(file = %f.display(), error = %e, "Could not save the schedule state; a run missed during the next outage will not be caught up.");
        }
    }

    /// Runs until `stop` is cancelled. Jobs get `jobs_cancel` (cancelled by the daemon at its
    /// shutdown deadline); the returned tracker lets the caller wait for them.
    pub async fn run(
        self,
        runner: Runner,
        observer: Observer,
        stop: CancellationToken,
        jobs_cancel: CancellationToken,
        tracker: tokio_util::task::TaskTracker,
    ) {
        let now = self.clock.now();
        let mut last_due = self.load_state();
        let mut next: Vec<Option<DateTime<Utc>>> = self
            .entries
            .iter()
            .map(|e| {
                // A run missed while the daemon was down: once, now.
                let missed = last_due
                    .get(&e.policy)
                    .and_then(|l| e.schedule.next_after(*l))
                    .is_some_and(|t| t <= now);
                if missed {
                    tracing::info!(policy = %e.policy, "A scheduled run was missed while the daemon was down; running it now.");
                    Some(now)
                } else {
                    e.schedule.next_after(now)
                }
            })
            .collect();
        for (e, n) in self.entries.iter().zip(&next) {
            if let Some(at) = n {
                observer(Event::Next {
                    policy: e.policy.clone(),
                    at: *at,
                });
            }
        }
        let global = Arc::new(Semaphore::new(self.limits.global));
        let per_kind: HashMap<&'static str, Arc<Semaphore>> = self
            .entries
            .iter()
            .map(|e| {
                let n = self.limits.per_kind.get(e.kind).copied().unwrap_or(1);
                (e.kind, Arc::new(Semaphore::new(n)))
            })
            .collect();
        let running: Arc<Mutex<HashSet<String>>> = Arc::default();

        loop {
            let Some((i, at)) = next
                .iter()
                .enumerate()
                .filter_map(|(i, t)| t.map(|t| (i, t)))
                .min_by_key(|(_, t)| *t)
            else {
                stop.cancelled().await;
                return;
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.clock.sleep_until(at) => {}
            }
            let e = &self.entries[i];
            last_due.insert(e.policy.clone(), at);
            self.save_state(&last_due);
            // The next slot after this one; after a long stall (suspend), after now.
            let after = at.max(self.clock.now() - chrono::Duration::seconds(1));
            next[i] = e.schedule.next_after(after);
            if let Some(n) = next[i] {
                observer(Event::Next {
                    policy: e.policy.clone(),
                    at: n,
                });
            }
            if !running
                .lock()
                .expect("running set")
                .insert(e.policy.clone())
            {
                tracing::warn!(policy = %e.policy, "The previous run is still going; this run is skipped.");
                observer(Event::Skipped(e.policy.clone()));
                continue;
            }
            let jitter = if self.limits.jitter.is_zero() {
                Duration::ZERO
            } else {
                self.limits.jitter.mul_f64(rand::random::<f64>())
            };
            let (policy, runner, observer, running) = (
                e.policy.clone(),
                runner.clone(),
                observer.clone(),
                running.clone(),
            );
            let (global, kind) = (global.clone(), per_kind[e.kind].clone());
            let (timeout, cancel) = (self.limits.timeout, jobs_cancel.child_token());
            tracker.spawn(async move {
                tokio::time::sleep(jitter).await;
                let result = tokio::select! {
                    () = cancel.cancelled() => Err("cancelled before it started".to_owned()),
                    r = async {
                        let _g = global.acquire_owned().await.expect("semaphore open");
                        let _k = kind.acquire_owned().await.expect("semaphore open");
                        observer(Event::Started(policy.clone()));
                        match tokio::time::timeout(timeout, runner(policy.clone(), cancel.clone())).await {
                            Ok(r) => r.map_err(|e| crate::error::chain(&e)),
                            Err(_) => {
                                cancel.cancel();
                                Err(format!("timed out after {}s (daemon.job_timeout)", timeout.as_secs()))
                            }
                        }
                    } => r,
                };
                running.lock().expect("running set").remove(&policy);
                observer(Event::Finished(policy, result));
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::TimeZone;
    use chrono_tz::UTC;

    use super::*;

    fn entry(policy: &str, kind: &'static str, expr: &str) -> Entry {
        Entry {
            policy: policy.to_owned(),
            kind,
            schedule: Schedule::parse(expr, UTC).unwrap(),
        }
    }

    fn limits(global: usize, per_kind: &[(&str, usize)]) -> Limits {
        Limits {
            global,
            per_kind: per_kind
                .iter()
                .map(|(k, n)| ((*k).to_owned(), *n))
                .collect(),
            timeout: Duration::from_secs(3600),
            jitter: Duration::ZERO,
        }
    }

    /// Runs the scheduler for `span` of simulated time; returns each policy's finished runs and
    /// the highest number of jobs seen running at once.
    async fn simulate(
        entries: Vec<Entry>,
        limits: Limits,
        start: DateTime<Utc>,
        span: Duration,
        job: Duration,
        state_file: Option<PathBuf>,
    ) -> (BTreeMap<String, usize>, usize, Vec<Event>) {
        let counts: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
        let events: Arc<Mutex<Vec<Event>>> = Arc::default();
        let (now_running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let runner: Runner = {
            let (counts, now_running, peak) = (counts.clone(), now_running.clone(), peak.clone());
            Arc::new(move |policy, _cancel| {
                let (counts, now_running, peak) =
                    (counts.clone(), now_running.clone(), peak.clone());
                Box::pin(async move {
                    let n = now_running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(job).await;
                    now_running.fetch_sub(1, Ordering::SeqCst);
                    *counts.lock().unwrap().entry(policy).or_default() += 1;
                    Ok(())
                })
            })
        };
        let observer: Observer = {
            let events = events.clone();
            Arc::new(move |e| events.lock().unwrap().push(e))
        };
        let (stop, jobs) = (CancellationToken::new(), CancellationToken::new());
        let tracker = tokio_util::task::TaskTracker::new();
        let s = Scheduler::new(entries, limits, Clock::simulated(start), state_file);
        let handle = tokio::spawn(s.run(runner, observer, stop.clone(), jobs, tracker.clone()));
        tokio::time::sleep(span).await;
        stop.cancel();
        handle.await.unwrap();
        tracker.close();
        tracker.wait().await;
        let c = counts.lock().unwrap().clone();
        let e = events.lock().unwrap().clone();
        (c, peak.load(Ordering::SeqCst), e)
    }

    const WEEK: Duration = Duration::from_secs(7 * 86_400);

    #[tokio::test(start_paused = true)]
    async fn a_simulated_week_runs_each_policy_exactly_on_schedule() {
        let start = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 30).unwrap();
        let (counts, peak, _) = simulate(
            vec![
                entry("every-15m", "files", "*/15 * * * *"),
                entry("hourly", "redis", "0 * * * *"),
                entry("nightly", "postgres", "30 2 * * *"),
            ],
            limits(2, &[]),
            start,
            WEEK,
            Duration::from_secs(300),
            None,
        )
        .await;
        assert_eq!(counts["every-15m"], 7 * 24 * 4);
        assert_eq!(counts["hourly"], 7 * 24);
        assert_eq!(counts["nightly"], 7);
        assert!(peak <= 2, "global limit 2, saw {peak}");
    }

    #[tokio::test(start_paused = true)]
    async fn six_field_and_time_zone_schedules() {
        // 6 fields (seconds first): every 30 s; Berlin 02:30 is 01:30 UTC in winter.
        let start = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 10).unwrap();
        let mut berlin = entry("berlin", "files", "30 2 * * *");
        berlin.schedule = Schedule::parse("30 2 * * *", chrono_tz::Europe::Berlin).unwrap();
        let (counts, _, events) = simulate(
            vec![entry("fast", "redis", "*/30 * * * * *"), berlin],
            limits(4, &[]),
            start,
            Duration::from_secs(86_400),
            Duration::from_secs(1),
            None,
        )
        .await;
        assert_eq!(counts["fast"], 2 * 60 * 24);
        assert_eq!(counts["berlin"], 1);
        assert!(events.contains(&Event::Next {
            policy: "berlin".into(),
            at: Utc.with_ymd_and_hms(2026, 11, 23, 1, 30, 0).unwrap()
        }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_missed_while_down_runs_once_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("schedule.json");
        // Last came due three days ago: three nightly slots were missed.
        let last = Utc.with_ymd_and_hms(2026, 11, 20, 2, 30, 0).unwrap();
        std::fs::write(
            &state,
            serde_json::to_vec(&HashMap::from([("nightly", last)])).unwrap(),
        )
        .unwrap();
        let start = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        let (counts, _, events) = simulate(
            vec![entry("nightly", "postgres", "30 2 * * *")],
            limits(2, &[]),
            start,
            Duration::from_secs(86_400),
            Duration::from_secs(60),
            Some(state.clone()),
        )
        .await;
        // Once at start-up (not three times), once the next night.
        assert_eq!(counts["nightly"], 2, "{events:?}");
        let saved: HashMap<String, DateTime<Utc>> =
            serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        assert_eq!(
            saved["nightly"],
            Utc.with_ymd_and_hms(2026, 11, 24, 2, 30, 0).unwrap()
        );
        // Without state (first start) nothing is caught up.
        let (counts, _, _) = simulate(
            vec![entry("nightly", "postgres", "30 2 * * *")],
            limits(2, &[]),
            start,
            Duration::from_secs(3600),
            Duration::from_secs(60),
            None,
        )
        .await;
        assert_eq!(counts.get("nightly"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn per_type_limit_and_one_run_per_policy() {
        let start = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 30).unwrap();
        // Three postgres policies due together with a per-type limit of 1: they queue, never
        // overlap. A 10-minute job on a 5-minute schedule skips every other slot.
        let (counts, peak, events) = simulate(
            vec![
                entry("a", "postgres", "0 * * * *"),
                entry("b", "postgres", "0 * * * *"),
                entry("c", "postgres", "0 * * * *"),
                entry("slow", "files", "*/5 * * * *"),
            ],
            limits(8, &[("postgres", 1), ("files", 4)]),
            start,
            Duration::from_secs(3 * 3600),
            Duration::from_secs(600),
            None,
        )
        .await;
        assert_eq!((counts["a"], counts["b"], counts["c"]), (3, 3, 3));
        assert!(peak <= 2, "one postgres + one files at most, saw {peak}");
        let skipped = events
            .iter()
            .filter(|e| **e == Event::Skipped("slow".into()))
            .count();
        assert_eq!(
            counts["slow"] + skipped,
            36,
            "every slot ran or was skipped"
        );
        assert!(skipped >= 17, "{skipped}");
    }
}
