//! Sources produce artifacts (named byte streams or filesystem entries) and facts about what
//! they backed up. They know nothing of chunking, encryption or storage: the pipeline consumes
//! what they send through a bounded channel, which gives backpressure.

pub mod files;
pub mod postgres;
pub mod qdrant;
pub mod redis;
pub(crate) mod tree;

use std::io::Read;
use std::path::PathBuf;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::SourceSpec;
use crate::repo::manifest::{EntryKind, EntryName};

/// How the pipeline cuts an artifact into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// Content-defined (FastCDC): insertions shift boundaries with the data.
    ContentDefined,
    /// Fixed blocks of this size: for files whose bytes never shift (database pages).
    Fixed(usize),
}

/// Where an artifact's bytes come from.
pub enum Body {
    /// No content (directories, symlinks).
    None,
    /// A file the pipeline opens and reads itself.
    File(PathBuf),
    /// A stream (a database's replication or snapshot download).
    Reader(Box<dyn Read + Send>),
}

/// What a file looked like when it was read: a file whose stat is unchanged since the last
/// backup is not read again (see `pipeline::file_cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStat {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Inode change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device.
    pub dev: u64,
}

impl FileStat {
    /// From a file's metadata.
    pub fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: m.size(),
            mtime_ns: tree::mtime_ns(m),
            ctime_ns: tree::ns(m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

/// One thing to back up.
pub struct Artifact {
    /// Path relative to the source root, `.` for the root.
    pub name: EntryName,
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    /// Modification time (ns since the epoch).
    pub mtime_ns: Option<i64>,
    /// Symlink target.
    pub target: Option<EntryName>,
    /// Content.
    pub body: Body,
    /// Chunking strategy.
    pub chunking: Chunking,
    /// For a regular file of a tree whose unchanged files may be skipped (the `files`
    /// source): its stat.
    pub stat: Option<FileStat>,
}

/// What a source hands the pipeline besides artifacts.
#[derive(Debug, Clone, Default)]
pub struct SnapshotReport {
    /// Facts kept in the encrypted manifest.
    pub facts: serde_json::Value,
    /// Non-secret facts also kept in the plaintext `.refs` (timelines, LSNs, counts).
    pub public_facts: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Source failures.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading the source failed.
    #[error("reading {path} failed")]
    Read {
        /// What was being read.
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The source is not usable as configured.
    #[error("{0}")]
    Unusable(String),
    /// The pipeline stopped taking artifacts (it failed or was cancelled).
    #[error("the backup pipeline stopped")]
    PipelineGone,
    /// Cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Everything a source needs while snapshotting.
pub struct SnapshotCx {
    /// Where artifacts go; bounded.
    pub out: mpsc::Sender<Artifact>,
    /// Cancellation.
    pub cancel: CancellationToken,
}

/// The configured source of a policy.
pub enum AnySource {
    /// A directory tree.
    Files(files::FilesSource),
    /// A PostgreSQL cluster.
    Postgres(postgres::PostgresSource),
    /// A Redis server.
    Redis(redis::RedisSource),
    /// A Qdrant server.
    Qdrant(qdrant::QdrantSource),
}

impl AnySource {
    /// Builds the source of a policy.
    pub fn from_spec(spec: &SourceSpec) -> Self {
        match spec {
            SourceSpec::Files { path, exclude } => {
                Self::Files(files::FilesSource::new(path.clone(), exclude.clone()))
            }
            SourceSpec::Postgres(pg) => Self::Postgres(postgres::PostgresSource::new(pg.clone())),
            SourceSpec::Redis(r) => Self::Redis(redis::RedisSource::new(r.clone())),
            SourceSpec::Qdrant(q) => Self::Qdrant(qdrant::QdrantSource::new(q.clone())),
        }
    }

    /// Source type name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Files(_) => "files",
            Self::Postgres(_) => "postgres",
            Self::Redis(_) => "redis",
            Self::Qdrant(_) => "qdrant",
        }
    }

    /// Checks that a backup can run (what `dr check` and daemon start-up do).
    ///
    /// # Errors
    /// What is wrong.
    pub async fn check(&self) -> Result<(), SourceError> {
        match self {
            Self::Files(s) => s.check(),
            Self::Postgres(s) => s.check().await,
            Self::Redis(s) => s.check().await,
            Self::Qdrant(s) => s.check().await,
        }
    }

    /// Produces the artifacts of one snapshot.
    ///
    /// # Errors
    /// When reading fails; the pipeline then commits nothing.
    pub async fn snapshot(self, cx: SnapshotCx) -> Result<SnapshotReport, SourceError> {
        match self {
            Self::Files(s) => s.snapshot(cx).await,
            Self::Postgres(s) => s.snapshot(cx).await,
            Self::Redis(s) => s.snapshot(cx).await,
            Self::Qdrant(s) => s.snapshot(cx).await,
        }
    }
}
