//! The contract of the daemon's periodic workers (WAL watcher, replicator, retention): a name,
//! an interval, an optional wake signal, and one pass that returns a typed error.
//!
//! Every worker runs on the daemon's [`TaskTracker`], like every job: at shutdown a pass in
//! progress gets the same grace period as a backup (the worker stops after it, instead of
//! being dropped mid-pass when the process exits), and the jobs' cancellation at the deadline
//! cuts it off. A worker between passes stops at once.
//!
//! ```text
//! state:  idle ─▶ busy (one pass) ─▶ idle … sleep `every` or until woken … ─▶ busy ─▶ …
//!                      stop: finish the pass (grace) ─▶ stopped
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::status::{Status, WorkerState};

/// Why one pass of a worker failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PassError {
    /// Cut off by the shutdown deadline.
    #[error("cancelled at the shutdown deadline")]
    Cancelled,
    /// Some items of the pass failed (one line each); the next pass tries them again.
    #[error("{}", .0.join("; "))]
    Items(Vec<String>),
}

impl PassError {
    /// `Ok` when nothing failed, else the failures.
    pub fn check(failures: Vec<String>) -> Result<(), Self> {
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Self::Items(failures))
        }
    }
}

/// A periodic worker.
pub struct Periodic {
    /// Its name in the status API and the logs.
    pub name: &'static str,
    /// Time between the end of one pass and the start of the next.
    pub every: Duration,
    /// Starts the next pass early when notified (the replicator after a backup).
    pub wake: Option<Arc<Notify>>,
}

impl Periodic {
    /// Runs `pass` now and then every `every` (or when woken) on `tracker` until `stop`; a
    /// pass running at `stop` finishes first, unless `deadline` (the jobs' cancellation) cuts
    /// it off. Each pass's state and result go to `status`.
    pub fn spawn<F, Fut>(
        self,
        tracker: &TaskTracker,
        status: Status,
        stop: CancellationToken,
        deadline: CancellationToken,
        pass: F,
    ) where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), PassError>> + Send,
    {
        let Self { name, every, wake } = self;
        status.worker_state(name, WorkerState::Idle);
        tracker.spawn(async move {
            while !stop.is_cancelled() {
                status.worker_state(name, WorkerState::Busy);
                let r = tokio::select! {
                    () = deadline.cancelled() => Err(PassError::Cancelled),
                    r = pass() => r,
                };
                if let Err(e) = &r {
                    tracing::warn!(worker = name, error = %e, "Worker pass failed.");
                }
                status.worker_result(name, r.map_err(|e| e.to_string()));
                let woken = async {
                    match &wake {
                        Some(n) => n.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(every) => {}
                    () = woken => {}
                }
            }
            status.worker_state(name, WorkerState::Stopped);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A worker's surroundings: the tracker, its status, stop and deadline, a pass counter.
    struct Harness {
        tracker: TaskTracker,
        status: Status,
        stop: CancellationToken,
        deadline: CancellationToken,
        n: Arc<AtomicUsize>,
    }

    impl Harness {
        fn new() -> Self {
            Self {
                tracker: TaskTracker::new(),
                status: Status::default(),
                stop: CancellationToken::new(),
                deadline: CancellationToken::new(),
                n: Arc::new(AtomicUsize::new(0)),
            }
        }

        /// Starts a worker every 60 s (woken by `wake`) whose passes take `secs`.
        fn spawn(&self, wake: Option<Arc<Notify>>, secs: u64) {
            worker(60, wake).spawn(
                &self.tracker,
                self.status.clone(),
                self.stop.clone(),
                self.deadline.clone(),
                counting(&self.n, secs),
            );
        }

        fn passes(&self) -> usize {
            self.n.load(Ordering::SeqCst)
        }

        /// The shutdown signal: the worker stops after its pass.
        fn stop(&self) {
            self.stop.cancel();
            self.tracker.close();
        }
    }

    fn worker(every: u64, wake: Option<Arc<Notify>>) -> Periodic {
        Periodic {
            name: "w",
            every: Duration::from_secs(every),
            wake,
        }
    }

    fn state(status: &Status) -> (WorkerState, Option<String>, u32) {
        let w = status.snapshot().workers["w"].clone();
        (w.state, w.last_error, w.consecutive_failures)
    }

    /// A pass that counts itself and takes `secs` of (paused) time.
    fn counting(
        n: &Arc<AtomicUsize>,
        secs: u64,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<(), PassError>> + Send>>
    + Send
    + 'static {
        let n = n.clone();
        move || {
            let n = n.clone();
            Box::pin(async move {
                n.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(secs)).await;
                Ok(())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn passes_run_at_start_then_every_interval_and_early_when_woken() {
        let (h, wake) = (Harness::new(), Arc::new(Notify::new()));
        h.spawn(Some(wake.clone()), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(h.passes(), 1, "one pass at start");
        assert_eq!(state(&h.status).0, WorkerState::Idle, "between passes");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(h.passes(), 1, "no pass before the interval");
        wake.notify_one();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(h.passes(), 2, "woken: a pass at once");
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(h.passes(), 3, "then one per interval");
        h.stop();
        h.tracker.wait().await;
        assert_eq!(state(&h.status).0, WorkerState::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_running_at_shutdown_finishes_within_the_grace_period() {
        let h = Harness::new();
        h.spawn(None, 100);
        tokio::time::sleep(Duration::from_secs(10)).await;
        h.stop();
        let t = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(300), h.tracker.wait())
            .await
            .expect("the shutdown waits for the pass, and only for it");
        let waited = t.elapsed().as_secs();
        assert!(
            (89..=91).contains(&waited),
            "waited {waited}s for a pass with 90s left"
        );
        assert_eq!(h.passes(), 1, "no new pass after stop");
        assert_eq!(state(&h.status), (WorkerState::Stopped, None, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_cuts_a_pass_off_and_says_so() {
        let h = Harness::new();
        h.spawn(None, 1_000);
        tokio::time::sleep(Duration::from_secs(10)).await;
        h.stop();
        assert!(
            tokio::time::timeout(Duration::from_secs(30), h.tracker.wait())
                .await
                .is_err(),
            "still finishing its pass within the grace period"
        );
        h.deadline.cancel();
        h.tracker.wait().await;
        let (s, error, failures) = state(&h.status);
        assert_eq!(s, WorkerState::Stopped);
        assert_eq!(error.as_deref(), Some("cancelled at the shutdown deadline"));
        assert_eq!(failures, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_pass_is_recorded_until_the_next_succeeds() {
        let (tracker, status) = (TaskTracker::new(), Status::default());
        let (stop, deadline) = (CancellationToken::new(), CancellationToken::new());
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        worker(60, None).spawn(
            &tracker,
            status.clone(),
            stop.clone(),
            deadline,
            move || {
                let first = n2.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    PassError::check(if first {
                        vec!["eu: unreachable".to_owned(), "us: 503".to_owned()]
                    } else {
                        Vec::new()
                    })
                }
            },
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, error, failures) = state(&status);
        assert_eq!(error.as_deref(), Some("eu: unreachable; us: 503"));
        assert_eq!(failures, 1);
        tokio::time::sleep(Duration::from_secs(61)).await;
        let w = status.snapshot().workers["w"].clone();
        assert_eq!((w.consecutive_failures, w.runs), (0, 2));
        assert!(w.last_success.is_some());
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
