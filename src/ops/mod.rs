//! Operations shared by the command line (run once) and the daemon (run on schedule): opening
//! what the configuration names, and the jobs themselves.

pub mod backup;
pub mod replicate;
pub mod retention;
pub mod wal_archive;

use anyhow::Context;

use crate::config::{Config, Policy};
use crate::error::UsageError;
use crate::pipeline::Repository;
use crate::repo::keys::{ChunkIdKey, Identity, Recipients};
use crate::storage::Storage;

/// The chunk-id key.
///
/// # Errors
/// An unreadable key file.
pub fn chunk_key(config: &Config) -> anyhow::Result<ChunkIdKey> {
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
pub fn identity(config: &Config) -> anyhow::Result<Identity> {
    Ok(Identity::load(config.keys.identity_file.as_deref())?)
}

/// Opens storage target `name`.
pub async fn storage(config: &Config, name: &str) -> anyhow::Result<Storage> {
    let target = config.storage.get(name).ok_or_else(|| {
        let known: Vec<&str> = config.storage.keys().map(String::as_str).collect();
        UsageError(format!(
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
) -> anyhow::Result<(Repository, Recipients)> {
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
) -> anyhow::Result<Repository> {
    let name = match region {
        None => policy.targets[0].as_str(),
        Some(r) if policy.targets.iter().any(|t| t == r) => r,
        Some(r) => {
            return Err(UsageError(format!(
                "policy {} does not replicate to `{r}` (its targets: {})",
                policy.id,
                policy.targets.join(", ")
            ))
            .into());
        }
    };
    let s = storage(config, name).await?;
    let location = s.location().to_owned();
    Repository::open(s, chunk_key(config)?, &config.state_dir)
        .await
        .with_context(|| {
            format!(
                "opening the repository of policy {} at {location}",
                policy.id
            )
        })
}
