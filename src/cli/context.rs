//! What most commands need: the validated config, keys and opened repositories.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, Policy};
use crate::error::UsageError;
use crate::pipeline::Repository;
use crate::repo::keys::{ChunkIdKey, Identity, Recipients};
use crate::storage::Storage;

/// Finds dr.toml: the flag/env value, else ./dr.toml, else /etc/dr/dr.toml.
pub(crate) fn config_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    let local = PathBuf::from("dr.toml");
    if local.exists() {
        local
    } else {
        PathBuf::from("/etc/dr/dr.toml")
    }
}

/// Loads and validates the configuration.
pub(crate) fn load(flag: Option<&Path>) -> anyhow::Result<Config> {
    Ok(config::load(&config_path(flag))?)
}

pub(crate) fn policy<'a>(config: &'a Config, id: &str) -> anyhow::Result<&'a Policy> {
    config.policy(id).map_err(|e| UsageError(e).into())
}

pub(crate) fn chunk_key(config: &Config) -> anyhow::Result<ChunkIdKey> {
    Ok(ChunkIdKey::load(&config.keys.chunk_id_key_file)?)
}

pub(crate) fn recipients(config: &Config) -> Recipients {
    Recipients(config.keys.recipients.clone())
}

pub(crate) fn identity(config: &Config) -> anyhow::Result<Identity> {
    Ok(Identity::load(config.keys.identity_file.as_deref())?)
}

/// Opens storage target `name`.
pub(crate) async fn storage(config: &Config, name: &str) -> anyhow::Result<Storage> {
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
pub(crate) async fn write_repo(
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
pub(crate) async fn read_repo(
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

/// A token cancelled on SIGINT or SIGTERM.
pub(crate) fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("Signal received; stopping. Nothing partial is committed.");
        t.cancel();
    });
    token
}
