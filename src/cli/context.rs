//! What most commands need: the validated config, the policy asked for, a shutdown token;
//! keys and repositories come from [`crate::ops`].

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, Policy};
use crate::error::UsageError;
pub(crate) use crate::ops::{identity, read_repo, storage, write_repo};

/// Finds dr.toml: the flag, else `$DR_CONFIG`, else ./dr.toml, else /etc/dr/dr.toml.
pub(crate) fn config_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("DR_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
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

/// Loads `dr.toml` and what `scope` asks for; errors in other policies or drills are printed
/// as warnings, not fatal (see [`config::Scope`]).
pub(crate) fn load_scoped(flag: Option<&Path>, scope: config::Scope<'_>) -> anyhow::Result<Config> {
    let (config, warnings) = config::load_scoped(&config_path(flag), scope)?;
    for w in &warnings {
        tracing::warn!("Ignoring a configuration error outside this command's policy: {w}");
    }
    Ok(config)
}

pub(crate) fn policy<'a>(config: &'a Config, id: &str) -> anyhow::Result<&'a Policy> {
    config.policy(id).map_err(|e| UsageError(e).into())
}

/// Application group `id`, or a usage error listing the known ones.
pub(crate) fn group<'a>(config: &'a Config, id: &str) -> anyhow::Result<&'a crate::config::Group> {
    config.groups.get(id).ok_or_else(|| {
        let known: Vec<&str> = config.groups.keys().map(String::as_str).collect();
        UsageError(format!(
            "no group `{id}` in {} (known: {})",
            config.groups_dir.display(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ))
        .into()
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

/// A policy's snapshots opened for reading (`ls`, `find`, `diff`, `dump`): its repository
/// (primary or a replica) and the restore identity that opens its manifests.
pub(crate) struct Snapshots {
    pub repo: crate::pipeline::Repository,
    pub identity: std::sync::Arc<crate::repo::keys::Identity>,
    pub policy: String,
}

impl Snapshots {
    /// Opens `policy`'s repository at `region` (default: the primary).
    pub(crate) async fn open(
        flag: Option<&Path>,
        policy: &str,
        region: Option<&str>,
    ) -> anyhow::Result<Self> {
        let config = load_scoped(flag, config::Scope::Focus(policy))?;
        let p = self::policy(&config, policy)?;
        let identity = std::sync::Arc::new(identity(&config)?);
        let repo = read_repo(&config, p, region).await?;
        Ok(Self {
            repo,
            identity,
            policy: p.id.as_str().to_owned(),
        })
    }

    /// The manifest of the snapshot `selector` picks.
    pub(crate) async fn manifest(
        &self,
        selector: &str,
    ) -> anyhow::Result<crate::pipeline::SpooledManifest> {
        let id = self.repo.resolve(&self.policy, selector).await?;
        self.manifest_of(&id).await
    }

    /// The manifest of snapshot `id`.
    pub(crate) async fn manifest_of(
        &self,
        id: &crate::repo::ids::SnapshotId,
    ) -> anyhow::Result<crate::pipeline::SpooledManifest> {
        Ok(self
            .repo
            .spool_manifest(self.identity.clone(), &self.policy, id)
            .await?)
    }
}
