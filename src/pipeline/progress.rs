//! Counters shared between pipeline threads and whoever displays progress.

use std::sync::atomic::{AtomicU64, Ordering};

/// Byte and item counters, updated lock-free by the pipeline.
#[derive(Debug, Default)]
pub struct Progress {
    /// Plaintext bytes read (backup) or written (restore).
    pub bytes: AtomicU64,
    /// Bytes uploaded (backup) or downloaded (restore).
    pub transferred: AtomicU64,
    /// Artifacts processed.
    pub items: AtomicU64,
    /// Total plaintext bytes expected, when known (0: not yet). A restore knows it once the
    /// manifest is checked; a backup's source sets it (shared with [`crate::source::SnapshotCx`]).
    pub total: std::sync::Arc<AtomicU64>,
}

impl Progress {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Current value of a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Where a job stands, as shown in progress lines, `GET /v1/jobs` and `dr info`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProgressView {
    /// Plaintext bytes so far.
    pub bytes: u64,
    /// Of how many, when known.
    pub total: Option<u64>,
    /// `bytes` of `total`, one decimal.
    pub percent: Option<f64>,
    /// Average since the start.
    pub bytes_per_second: u64,
    /// At that rate, when the total is known.
    pub eta_seconds: Option<u64>,
    /// Artifacts so far (`artifacts` in JSON, as everywhere else).
    #[serde(rename = "artifacts")]
    pub items: u64,
    /// Bytes uploaded or downloaded.
    pub transferred: u64,
}

impl Progress {
    /// Where the job stands `elapsed` after it started.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    pub fn view(&self, elapsed: std::time::Duration) -> ProgressView {
        let (bytes, total) = (Self::get(&self.bytes), Self::get(&self.total));
        let rate = bytes as f64 / elapsed.as_secs_f64().max(1e-3);
        let known = total > 0;
        ProgressView {
            bytes,
            total: known.then_some(total),
            percent: known
                .then(|| ((bytes as f64 * 1000.0 / total as f64).round() / 10.0).min(100.0)),
            bytes_per_second: rate.round() as u64,
            eta_seconds: (known && rate > 0.0)
                .then(|| (total.saturating_sub(bytes) as f64 / rate).round() as u64),
            items: Self::get(&self.items),
            transferred: Self::get(&self.transferred),
        }
    }
}
