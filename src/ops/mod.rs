//! Operations shared by the command line (run once) and the daemon (run on schedule): opening
//! what the configuration names, and the jobs themselves.
//!
//! A job here takes a policy from the configuration, opens its repositories and storage, and
//! calls the engine that does the work: `ops::replicate` runs [`crate::replication`] for a
//! policy's targets, `ops::retention` runs [`crate::retention`]'s plan and deletions,
//! `ops::backup` runs [`crate::pipeline::backup`] on the policy's source. Restores have their
//! own home, [`crate::restore`].

pub mod backup;
pub mod group;
pub mod info;
pub mod jobs;
pub mod replicate;
pub mod retention;
pub mod wal_archive;
pub mod wal_stream;

use crate::config::{Config, Policy};
use crate::error::{Classify, ErrorKind};
use crate::pipeline::{PipelineError, Repository};
use crate::replication::ReplicationError;
use crate::repo::RepoError;
use crate::repo::keys::{ChunkIdKey, Identity, Recipients};
use crate::storage::{Storage, StorageError};

/// Why a job, or opening what it needs, failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The configuration names no such storage target, or the policy does not use it.
    #[error("{0}")]
    Usage(String),
    /// A key file.
    #[error(transparent)]
    Key(#[from] RepoError),
    /// Opening a storage target.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Opening a policy's repository.
    #[error("opening the repository of policy {policy} at {location}")]
    Open {
        /// The policy.
        policy: String,
        /// The storage target's location.
        location: String,
        /// Cause.
        #[source]
        source: Box<PipelineError>,
    },
    /// The job itself.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Copying to a replica.
    #[error(transparent)]
    Replication(Box<ReplicationError>),
}

impl From<ReplicationError> for OpsError {
    fn from(e: ReplicationError) -> Self {
        Self::Replication(Box::new(e))
    }
}

impl Classify for OpsError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Usage(_) => ErrorKind::Usage,
            Self::Pipeline(e) => e.kind(),
            _ => ErrorKind::Failure,
        }
    }
}

impl OpsError {
    /// The repository does not exist (yet) where it was looked for.
    pub fn is_no_repository(&self) -> bool {
        match self {
            Self::Open { source, .. } => matches!(**source, PipelineError::NoRepository { .. }),
            Self::Pipeline(e) => matches!(e, PipelineError::NoRepository { .. }),
            _ => false,
        }
    }
}

/// The chunk-id key.
///
/// # Errors
/// An unreadable key file.
pub fn chunk_key(config: &Config) -> Result<ChunkIdKey, OpsError> {
    Ok(ChunkIdKey::load(&config.keys.chunk_id_key_file)?)
}

/// The age recipients every write encrypts to.
pub fn recipients(config: &Config) -> Recipients {
    Recipients(config.keys.recipients.clone())
}

/// The age identity (restores, drills).
///
/// # Errors
/// No or an unreadable identity file.
pub fn identity(config: &Config) -> Result<Identity, OpsError> {
    Ok(Identity::load(config.keys.identity_file.as_deref())?)
}

/// Opens storage target `name`.
pub async fn storage(config: &Config, name: &str) -> Result<Storage, OpsError> {
    let target = config.storage.get(name).ok_or_else(|| {
        let known: Vec<&str> = config.storage.keys().map(String::as_str).collect();
        OpsError::Usage(format!(
            "no storage target `{name}` in {} (known: {})",
            config.path.display(),
            known.join(", ")
        ))
    })?;
    Ok(Storage::open(name, target).await?)
}

/// The repository a policy writes to (its primary), created on first use, and the recipients
/// to encrypt to.
pub async fn write_repo(
    config: &Config,
    policy: &Policy,
) -> Result<(Repository, Recipients), OpsError> {
    let recipients = recipients(config);
    let s = storage(config, &policy.targets[0]).await?;
    let repo =
        Repository::open_or_create(s, chunk_key(config)?, &recipients, &config.state_dir).await?;
    Ok((repo, recipients))
}

/// The repository a policy reads from: its primary, or the named replica.
pub async fn read_repo(
    config: &Config,
    policy: &Policy,
    region: Option<&str>,
) -> Result<Repository, OpsError> {
    let name = match region {
        None => policy.targets[0].as_str(),
        Some(r) if policy.targets.iter().any(|t| t == r) => r,
        Some(r) => {
            return Err(OpsError::Usage(format!(
                "policy {} does not replicate to `{r}` (its targets: {})",
                policy.id,
                policy.targets.join(", ")
            )));
        }
    };
    let s = storage(config, name).await?;
    let location = s.location().to_owned();
    Repository::open(s, chunk_key(config)?, &config.state_dir)
        .await
        .map_err(|source| OpsError::Open {
            policy: policy.id.to_string(),
            location,
            source: Box::new(source),
        })
}
