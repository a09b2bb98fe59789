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
