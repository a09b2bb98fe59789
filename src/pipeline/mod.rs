//! The pipeline joins sources and storage (docs/ARCHITECTURE.md §4).
//!
//! * [`backup`]: artifacts → chunks (FastCDC or fixed blocks) → keyed-BLAKE3 ids → dedup
//!   against the repository's indexes → zstd → AEAD seal → packs → concurrent create-only
//!   uploads → index → refs → manifest (the commit rule).
//! * [`restore`]: manifest → chunk locations → coalesced ranged reads in parallel → open and
//!   check each blob → `pwrite` at its offset, out of order.
//! * [`verify`] checks structure (every referenced object present, with the right size, MACs valid)
//!   and data (every chunk decrypted and re-hashed, every artifact's BLAKE3 recomputed).
//!
//! CPU work (chunking, hashing, compression, sealing, opening) runs on dedicated threads or the
//! blocking pool, fed through bounded channels; the async runtime only moves bytes to and from
//! storage. Memory is bounded by channel capacities × chunk size, pack size × (workers + upload
//! concurrency), and restore concurrency × range size — never by the data size.

pub mod backup;
pub mod file_cache;
pub mod group_run;
mod index_set;
pub mod pages;
pub mod pitr;
pub mod progress;
pub mod repository;
pub mod restore;
pub mod selection;
mod upload;
pub mod verify;
pub mod wal;

pub use index_set::IndexSet;
pub use repository::{Repository, SpooledManifest};

use crate::repo::RepoError;
use crate::source::SourceError;
use crate::storage::StorageError;

/// Pipeline failures.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A storage operation failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A repository object or key is bad.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The source failed.
    #[error("source failed")]
    Source(#[from] SourceError),
    /// No repository at the target.
    #[error("no dr repository at {location} (it is created by the first backup)")]
    NoRepository { location: String },
    /// No snapshot matched.
    #[error("no snapshot `{selector}` for policy {policy} in {location}{}", if *available == 0 { " (it has no snapshots yet)".to_owned() } else { format!(" ({available} available: see `dr snapshots --policy {policy}`)") })]
    NoSnapshot {
        policy: String,
        /// What was asked for.
        selector: String,
        location: String,
        /// How many exist.
        available: usize,
    },
    /// `dr dump` of a name that is not a file of the snapshot.
    #[error("snapshot {snapshot} has no file `{name}`{}", match what { Some(k) => format!(" (it is a {})", match k { crate::repo::manifest::EntryKind::Dir => "directory", _ => "symlink" }), None => String::new() })]
    NoEntry {
        snapshot: String,
        name: String,
        /// What the name is instead, when it is in the snapshot.
        what: Option<crate::repo::manifest::EntryKind>,
    },
    /// More than one snapshot matched.
    #[error("`{selector}` matches {} snapshots of policy {policy}: {}{}; give more of the id", matches.len(), matches.iter().take(10).cloned().collect::<Vec<_>>().join(", "), if matches.len() > 10 { ", …" } else { "" })]
    AmbiguousSnapshot {
        policy: String,
        selector: String,
        /// Every match, oldest first.
        matches: Vec<String>,
    },
    /// A malformed `latest~N` / `latest@TIME`.
    #[error("snapshot selector `{selector}`: {reason}")]
    BadSelector { selector: String, reason: String },
    /// A manifest references a chunk no index knows.
    #[error(
        "chunk {chunk} of {artifact} is in no index of {location}: the repository is missing data"
    )]
    MissingChunk {
        /// Chunk id.
        chunk: String,
        /// Artifact name.
        artifact: String,
        location: String,
    },
    /// A local file operation during restore.
    #[error("{op} {path} failed")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Restore refuses to mix into existing data.
    #[error("{dir} is not empty; restore into an empty directory or pass --force")]
    TargetNotEmpty {
        /// The directory.
        dir: String,
    },
    /// A manifest entry name would escape the target directory.
    #[error("{snapshot}: entry `{name}` would be written outside the target directory; refusing")]
    UnsafePath {
        snapshot: String,
        /// Entry name.
        name: String,
    },
    /// A manifest entry that a broken or hostile writer made (names, kinds and lengths that
    /// do not fit together), refused before or while it is written.
    #[error("{snapshot}: entry `{name}` {reason}; refusing to restore this snapshot")]
    HostileEntry {
        snapshot: String,
        /// Entry name (or the path it maps to).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// With `--force`, a directory on the way into the target is a symlink.
    #[error(
        "{path} is a symbolic link: restore --force writes only through real directories (remove it, or restore into an empty directory)"
    )]
    ThroughSymlink {
        /// The link.
        path: String,
    },
    /// Prune is deleting a pack this backup uses (it ran longer than prune's grace period).
    #[error(
        "{pack}, which this backup uses, is being deleted by prune ({record}); nothing was committed: run the backup again (it stores that data anew), and keep retention.gc_grace well above the longest backup"
    )]
    PruneRace {
        /// The pack.
        pack: String,
        /// The mark or sweep record.
        record: String,
    },
    /// Stopped by a signal or the scheduler.
    #[error("cancelled")]
    Cancelled,
    /// Pages failed their checksum and the policy says `on_bad_page = "fail"`.
    #[error("{} page(s) fail their checksum: {}{}; the backup is not committed (on_bad_page = \"fail\")", pages.len(), pages.iter().take(5).map(ToString::to_string).collect::<Vec<_>>().join("; "), if pages.len() > 5 { "; …" } else { "" })]
    BadPages {
        /// Every one.
        pages: Vec<crate::source::postgres::checksum::BadPage>,
    },
    /// A worker thread died.
    #[error("internal error: {0}")]
    Internal(String),
}

impl crate::error::Classify for PipelineError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Self::AmbiguousSnapshot { .. } | Self::BadSelector { .. } => {
                crate::error::ErrorKind::Usage
            }
            _ => crate::error::ErrorKind::Failure,
        }
    }
}

impl PipelineError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}
