//! Restores, one home per engine, symmetric to [`crate::source`]: `dr restore` and restore
//! drills both call [`run`] with one [`Request`], which matches once on the policy's source
//! type; the engine's file does the rest and returns what it restored ([`Restored`]). The CLI
//! keeps only its arguments and printing, the drill only its sandbox and checks.
//!
//! | file | what it restores |
//! |---|---|
//! | [`files`] | a snapshot into a directory (every engine starts here) |
//! | [`postgres`] | the base backup chosen for a recovery target, its WAL checked present before anything is written, tablespaces placed, recovery settings written; starting the server |
//! | [`wal_feed`] | the keyless WAL spool a server started on restored data reads from |
//! | [`redis`] | one RDB, or one per master of a cluster with its slot map, the layout checked against a live cluster; starting a server |
//! | [`qdrant`] | collection snapshots, uploaded to a server or cluster with their point counts checked |
//!
//! How each engine's server loads restored data lives with the engine's backup knowledge
//! (`source::postgres::recovery`, `source::redis::server`, `source::qdrant::load`); the
//! decryption and writing of the files in `pipeline::restore`.

pub mod files;
pub mod group;
pub mod plan;
pub mod postgres;
pub mod qdrant;
pub mod redis;
pub mod wal_feed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Policy, SourceSpec};
use crate::error::{Classify, ErrorKind};
use crate::pipeline::pitr::{PitrError, Target};
use crate::pipeline::progress::Progress;
pub use crate::pipeline::restore::Existing;
use crate::pipeline::restore::RestoreSummary;
use crate::pipeline::{PipelineError, Repository};
use crate::repo::ids::SnapshotId;
use crate::repo::keys::Identity;
use crate::source::SourceError;

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// What was asked does not apply to this snapshot or is refused as it stands.
    #[error("{message}")]
    Usage {
        /// What is wrong.
        message: String,
        /// What to do instead, when there is something to say.
        hint: Option<String>,
    },
    /// Reading or writing the snapshot.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// No base backup or WAL for the target.
    #[error(transparent)]
    Pitr(#[from] PitrError),
    /// The engine's server (placing, starting, uploading).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A local file or directory (the cause is its `source`, not repeated in the message).
    #[error("{what}")]
    Io {
        /// What was being done, with the path.
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A snapshot's recorded facts cannot be used.
    #[error(transparent)]
    Facts(#[from] crate::source::FactsError),
}

impl RestoreError {
    /// A refusal with no hint.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::Usage {
            message: message.into(),
            hint: None,
        }
    }

    /// A refusal and what to do instead.
    pub fn usage_with_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::Usage {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

impl Classify for RestoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Usage { .. } => ErrorKind::Usage,
            Self::Pipeline(e) => e.kind(),
            _ => ErrorKind::Failure,
        }
    }

    fn hint(&self) -> Option<&str> {
        match self {
            Self::Usage { hint, .. } => hint.as_deref(),
            _ => None,
        }
    }
}

/// Where and how to restore.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Target directory.
    pub target_dir: &'a Path,
    /// What is done with what the target directory holds (`--force`, `--delta`; delta for
    /// files and PostgreSQL only).
    pub existing: Existing,
    /// Keep setuid/setgid bits of restored files.
    pub keep_setuid: bool,
    /// The storage target read from (for WAL fetching), `None` = primary.
    pub region: Option<&'a str>,
    /// Snapshot selector (`None`: latest, or chosen for the PITR target).
    pub snapshot: Option<&'a str>,
    /// What only some engines take; another engine refuses what is not its own.
    pub options: Options,
}

impl Request<'_> {
    /// The target directory as an absolute path (servers started on it, `restore_command`).
    ///
    /// # Errors
    /// The current directory cannot be read.
    pub fn absolute_dir(&self) -> Result<PathBuf, RestoreError> {
        std::path::absolute(self.target_dir).map_err(RestoreError::io(format!(
            "resolving {}",
            self.target_dir.display()
        )))
    }
}

/// Engine-specific parts of a [`Request`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// PostgreSQL: the recovery target (`None`: the end of the archived WAL). Other engines
    /// accept only `Target::Latest`, which is what they restore anyway.
    pub recovery_target: Option<Target>,
    /// PostgreSQL: where a tablespace goes, by OID (default beside the data directory).
    pub tablespace_map: BTreeMap<String, PathBuf>,
    /// Redis Cluster: `redis://HOST:PORT` of a node of the cluster restored into, whose slot
    /// layout must match the snapshot's.
    pub cluster_layout_from: Option<String>,
    /// Qdrant: upload the restored collections to a server.
    pub qdrant_upload: Option<qdrant::Upload>,
    /// Files: restore only what these globs match (default: everything)…
    pub include: Vec<String>,
    /// …and none of what these match.
    pub exclude: Vec<String>,
    /// PostgreSQL: restore only these databases' relation files (and the system ones'); the
    /// others' are left as holes of their size, so that the cluster starts and they can be
    /// dropped.
    pub db_include: Vec<String>,
    /// PostgreSQL: the server will be started on the result (`--start`, drills), so its
    /// programs of the backup's major must be found before anything is written.
    pub start: bool,
}

/// What a restore did, per engine.
#[derive(Debug)]
pub enum Restored {
    /// Files into the directory.
    Files(files::Restored),
    /// A data directory ready to recover to its target.
    Postgres(Box<postgres::Prepared>),
    /// RDB files (a cluster's with their slot map).
    Redis(redis::Restored),
    /// Collection snapshots, uploaded when asked.
    Qdrant(qdrant::Restored),
}

impl Restored {
    /// The file restore's figures.
    pub fn summary(&self) -> &RestoreSummary {
        match self {
            Self::Files(r) => &r.summary,
            Self::Postgres(p) => &p.restore,
            Self::Redis(r) => &r.files.summary,
            Self::Qdrant(q) => &q.files.summary,
        }
    }

    /// The snapshot restored and when it started.
    pub fn snapshot(&self) -> (SnapshotId, chrono::DateTime<chrono::Utc>) {
        let m = match self {
            Self::Postgres(p) => return (p.refs.snapshot.clone(), p.refs.started),
            Self::Files(r) => &r.manifest,
            Self::Redis(r) => &r.files.manifest,
            Self::Qdrant(q) => &q.files.manifest,
        };
        (m.snapshot.clone(), m.started)
    }
}

/// One restore: what every engine's restore needs.
pub struct Job<'a> {
    /// The configuration (pipeline settings, the config path for `restore_command`).
    pub config: &'a Config,
    /// The policy whose snapshot is restored.
    pub policy: &'a Policy,
    /// The repository (primary or replica) read from.
    pub repo: &'a Repository,
    /// The age identity that opens it.
    pub identity: Arc<Identity>,
    /// What to restore, where.
    pub req: &'a Request<'a>,
    /// Progress of the file restore.
    pub progress: Arc<Progress>,
    /// Cancels it (the CLI's on SIGINT or SIGTERM).
    pub cancel: &'a CancellationToken,
}

/// Refuses options that belong to another engine than the policy's (not silently ignored).
fn refuse_foreign_options(job: &Job<'_>) -> Result<(), RestoreError> {
    let (policy, o) = (job.policy, &job.req.options);
    let refuse = |option: &str, applies_to: &str| {
        format!(
            "policy {} backs up {}: {option} apply to {applies_to} policies only",
            policy.id,
            policy.source.kind(),
        )
    };
    let pitr = o
        .recovery_target
        .as_ref()
        .is_some_and(|t| !matches!(t, Target::Latest))
        || !o.tablespace_map.is_empty();
    if !matches!(policy.source, SourceSpec::Postgres(_)) && pitr {
        return Err(RestoreError::usage_with_hint(
            refuse("point-in-time options", "postgres"),
            "pick a snapshot with --snapshot",
        ));
    }
    if !matches!(policy.source, SourceSpec::Redis(_)) && o.cluster_layout_from.is_some() {
        return Err(RestoreError::usage(refuse(
            "cluster layout checks",
            "Redis",
        )));
    }
    let partial = !o.include.is_empty() || !o.exclude.is_empty();
    if !matches!(policy.source, SourceSpec::Files { .. }) && partial {
        return Err(RestoreError::usage_with_hint(
            refuse("--include and --exclude", "files"),
            "restore the whole snapshot into a scratch directory and copy what you need from it",
        ));
    }
    if job.req.existing == Existing::Delta
        && !matches!(
            policy.source,
            SourceSpec::Files { .. } | SourceSpec::Postgres(_)
        )
    {
        return Err(RestoreError::usage_with_hint(
            refuse("delta restores (--delta)", "files and postgres"),
            "restore into an empty directory",
        ));
    }
    if job.req.existing == Existing::Delta && partial {
        return Err(RestoreError::usage(
            "--delta brings the whole directory to the snapshot (it removes what the snapshot \
             does not have): it does not go with --include or --exclude",
        ));
    }
    if !matches!(policy.source, SourceSpec::Postgres(_)) && !o.db_include.is_empty() {
        return Err(RestoreError::usage(refuse(
            "database selections (--db-include)",
            "postgres",
        )));
    }
    if job.req.existing == Existing::Delta && !o.db_include.is_empty() {
        return Err(RestoreError::usage(
            "--delta brings the whole data directory to the base backup: it does not go with \
             --db-include",
        ));
    }
    if !matches!(policy.source, SourceSpec::Qdrant(_)) && o.qdrant_upload.is_some() {
        return Err(RestoreError::usage(refuse("Qdrant uploads", "Qdrant")));
    }
    Ok(())
}

/// Restores what the job's request asks of its policy's snapshots.
///
/// # Errors
/// Options of another engine (usage), no such snapshot, WAL gaps, restore failures (named
/// object, I/O path), a target server that refuses.
pub async fn run(job: &Job<'_>) -> Result<Restored, RestoreError> {
    refuse_foreign_options(job)?;
    let policy = job.policy;
    Ok(match &policy.source {
        SourceSpec::Postgres(_) => Restored::Postgres(Box::new(postgres::prepare(job).await?)),
        SourceSpec::Redis(spec) => Restored::Redis(redis::restore(job, spec).await?),
        SourceSpec::Qdrant(spec) => Restored::Qdrant(qdrant::restore(job, spec).await?),
        SourceSpec::Files { .. } => Restored::Files(files::restore(job).await?),
    })
}
