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
    /// Check each page against its checksum as it is read (PostgreSQL relation files of a
    /// cluster with data checksums, in `local` mode).
    pub page_check: Option<PageCheck>,
}

/// How the pages of a relation file are checked as a backup reads them
/// ([`postgres::checksum`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCheck {
    /// The relation block number of the file's first page (segment files `.N` start later).
    pub first_block: u64,
    /// The backup's start LSN: a page at or after it is not judged.
    pub start_lsn: u64,
}

/// What a source hands the pipeline besides artifacts.
#[derive(Debug, Clone, Default)]
pub struct SnapshotReport {
    /// Facts kept in the encrypted manifest.
    pub facts: serde_json::Value,
    /// Non-secret facts also kept in the plaintext `.refs` (timelines, LSNs, counts).
    pub public_facts: std::collections::BTreeMap<String, serde_json::Value>,
}

/// A snapshot whose recorded facts are not those its engine writes (another engine's
/// snapshot, or one written by another program): said with the snapshot's name, never guessed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot {snapshot} has no usable {engine} facts: {reason}")]
pub struct FactsError {
    /// The snapshot.
    pub snapshot: String,
    /// Whose facts were expected (`PostgreSQL base backup`, `Redis`, `Qdrant`).
    pub engine: &'static str,
    /// What is missing or malformed.
    pub reason: String,
}

/// Reads an engine's typed facts from their stored JSON, naming the path of a missing or
/// malformed field.
///
/// # Errors
/// The JSON does not hold `T`.
pub fn decode_facts<T: serde::de::DeserializeOwned>(
    snapshot: &str,
    engine: &'static str,
    stored: serde_json::Value,
) -> Result<T, FactsError> {
    serde_path_to_error::deserialize(stored).map_err(|e| FactsError {
        snapshot: snapshot.to_owned(),
        engine,
        reason: format!("{}: {}", e.path(), e.inner()),
    })
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
    /// Connecting to the server failed or timed out.
    #[error("cannot connect to {target}: {detail}")]
    Connect {
        /// The server (no secrets).
        target: String,
        /// Why.
        detail: String,
    },
    /// The server refused the credentials.
    #[error("{target}: authentication failed (wrong username or password)")]
    Auth {
        /// The server (no secrets).
        target: String,
    },
    /// A secret the policy names (password, API key, connection string) cannot be read or
    /// parsed.
    #[error("{what}: {detail}")]
    Secret {
        /// Which secret.
        what: &'static str,
        /// Why (never the secret itself).
        detail: String,
    },
    /// A request to the server (SQL, a Redis command, a REST call) failed.
    #[error("{what}: {detail}")]
    Request {
        /// The request.
        what: String,
        /// The server's or the transport's error.
        detail: String,
    },
    /// The server answered, but not with what dr needs (a missing field, a bad name).
    #[error("{0}")]
    Answer(String),
    /// The server is not set up as the policy needs (archiving off, slots not covered, a
    /// collection missing); the message says what to change.
    #[error("{0}")]
    Setup(String),
    /// A program dr runs is not installed.
    #[error("{tool} not found: {install}")]
    ToolMissing {
        /// The program.
        tool: String,
        /// How to install it.
        install: String,
    },
    /// A program dr runs could not be started or failed.
    #[error("{tool}: {detail}")]
    Tool {
        /// The program.
        tool: String,
        /// Its error or the tail of its output.
        detail: String,
    },
    /// The server did not finish something in time.
    #[error("{0}")]
    TimedOut(String),
    /// Writing a restored data directory or its configuration failed.
    #[error("{op} {}", path.display())]
    Write {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The restore target cannot take the data as asked (a non-empty tablespace directory,
    /// no user to run the server as); the message says which option fixes it.
    #[error("{0}")]
    Target(String),
    /// A restored server did not start, or does not hold what the snapshot recorded.
    #[error("{0}")]
    Restored(String),
    /// A worker thread of the source panicked.
    #[error("the {0} panicked")]
    Panicked(&'static str),
    /// The pipeline stopped taking artifacts (it failed or was cancelled).
    #[error("the backup pipeline stopped")]
    PipelineGone,
    /// Cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl SourceError {
    /// A secret (`what`) that cannot be read or parsed; the error must not hold its value.
    pub fn secret<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Self {
        move |e| Self::Secret {
            what,
            detail: e.to_string(),
        }
    }

    /// A failed request to the server.
    pub fn request(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self::Request {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

/// Everything a source needs while snapshotting.
pub struct SnapshotCx {
    /// Where artifacts go; bounded.
    pub out: mpsc::Sender<Artifact>,
    /// Cancellation.
    pub cancel: CancellationToken,
    /// The plaintext bytes this snapshot will hand over, when the source knows (0: not yet):
    /// the pipeline's progress total.
    pub expected: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SnapshotCx {
    /// Adds `bytes` to what this snapshot is expected to hand over.
    pub fn expect(&self, bytes: u64) {
        self.expected
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sizes a tree beside the walk that reads it (`size` is [`tree::size`] with the walk's
    /// rules), and sets the expected total when done; an error is the walk's to report. It
    /// runs until done or the backup is cancelled, not only as long as the walk: the walk
    /// hands files over long before they are read, and the total is for the reading. (It only
    /// looks at each entry once; on a tree the pipeline reads, it finishes first.)
    pub(crate) fn size_in_background(
        &self,
        size: impl FnOnce(&CancellationToken) -> Result<u64, SourceError> + Send + 'static,
    ) {
        let (expected, cancel) = (self.expected.clone(), self.cancel.clone());
        std::thread::spawn(move || {
            if let Ok(bytes) = size(&cancel) {
                expected.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }

    /// Hands the pipeline one byte stream read now (a server's snapshot or RDB), `0600`,
    /// content-defined chunking; `len`, when the server said, is added to the expected total.
    ///
    /// # Errors
    /// The pipeline stopped taking artifacts.
    pub async fn send_stream(
        &self,
        name: Vec<u8>,
        body: Box<dyn std::io::Read + Send>,
        len: Option<u64>,
    ) -> Result<(), SourceError> {
        if let Some(len) = len {
            self.expect(len);
        }
        let artifact = Artifact {
            name: crate::repo::manifest::EntryName(name),
            kind: crate::repo::manifest::EntryKind::Stream,
            mode: 0o600,
            mtime_ns: chrono::Utc::now().timestamp_nanos_opt(),
            target: None,
            body: Body::Reader(body),
            chunking: Chunking::ContentDefined,
            stat: None,
            page_check: None,
        };
        self.out
            .send(artifact)
            .await
            .map_err(|_| SourceError::PipelineGone)
    }
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
