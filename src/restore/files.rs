//! A snapshot into a directory: what a files policy's restore is, and where every other
//! engine's starts.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Request, RestoreError};
use crate::config::{Config, Policy};
use crate::pipeline::progress::Progress;
use crate::pipeline::restore::{self, RestoreOptions, RestoreSummary};
use crate::pipeline::{Repository, SpooledManifest};
use crate::repo::keys::Identity;

/// A snapshot restored into a directory.
#[derive(Debug)]
pub struct Restored {
    /// The snapshot's manifest.
    pub manifest: SpooledManifest,
    /// What was written.
    pub summary: RestoreSummary,
}

/// Restores the request's snapshot (default: the latest) into its directory.
///
/// # Errors
/// No such snapshot, storage or key errors, restore failures (named object, I/O path).
pub async fn restore(
    config: &Config,
    policy: &Policy,
    repo: &Repository,
    identity: Arc<Identity>,
    req: &Request<'_>,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<Restored, RestoreError> {
    let id = repo
        .resolve(policy.id.as_str(), req.snapshot.unwrap_or("latest"))
        .await?;
    let manifest = repo
        .spool_manifest(identity.clone(), policy.id.as_str(), &id)
        .await?;
    let summary = into_dir(config, repo, identity, &manifest, req, progress, cancel).await?;
    Ok(Restored { manifest, summary })
}

/// Restores `manifest` into the request's directory.
///
/// # Errors
/// Any restore failure (named object, I/O path).
pub async fn into_dir(
    config: &Config,
    repo: &Repository,
    identity: Arc<Identity>,
    manifest: &SpooledManifest,
    req: &Request<'_>,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<RestoreSummary, RestoreError> {
    let opts = RestoreOptions {
        concurrency: config.pipeline.restore_concurrency,
        force: req.force,
        keep_setuid: req.keep_setuid,
    };
    Ok(restore::run(
        repo,
        identity,
        manifest,
        req.target_dir,
        &opts,
        progress,
        cancel,
    )
    .await?)
}
