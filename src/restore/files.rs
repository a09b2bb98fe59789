//! A snapshot into a directory: what a files policy's restore is, and where every other
//! engine's starts.

use super::{Job, RestoreError};
use crate::pipeline::restore::{self, RestoreOptions, RestoreSummary};
use crate::pipeline::selection::Selection;
use crate::pipeline::{PipelineError, SpooledManifest};

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
pub async fn restore(job: &Job<'_>) -> Result<Restored, RestoreError> {
    let manifest = chosen(job).await?;
    let summary = into_dir(job, &manifest, restore::Layout::default()).await?;
    Ok(Restored { manifest, summary })
}

/// The manifest of the request's snapshot (default: the latest), restricted to its
/// `--include` / `--exclude` selection.
///
/// # Errors
/// No such snapshot, a bad pattern, storage or key errors.
pub async fn chosen(job: &Job<'_>) -> Result<SpooledManifest, RestoreError> {
    let pid = job.policy.id.as_str();
    let id = job
        .repo
        .resolve(pid, job.req.snapshot.unwrap_or("latest"))
        .await?;
    let selection = Selection::new(&job.req.options.include, &job.req.options.exclude)
        .map_err(|e| RestoreError::usage(e.to_string()))?;
    let manifest = job
        .repo
        .spool_manifest(job.identity.clone(), pid, &id)
        .await?;
    let identity = job.identity.clone();
    Ok(
        tokio::task::spawn_blocking(move || manifest.select(&identity, selection))
            .await
            .map_err(|e| PipelineError::Internal(e.to_string()))??,
    )
}

/// Restores `manifest` into the request's directory.
///
/// # Errors
/// Any restore failure (named object, I/O path).
pub async fn into_dir(
    job: &Job<'_>,
    manifest: &SpooledManifest,
    layout: restore::Layout,
) -> Result<RestoreSummary, RestoreError> {
    let opts = RestoreOptions {
        concurrency: job.config.pipeline.restore_concurrency,
        existing: job.req.existing,
        keep_setuid: job.req.keep_setuid,
        layout,
    };
    Ok(restore::run(
        job.repo,
        job.identity.clone(),
        manifest,
        job.req.target_dir,
        &opts,
        job.progress.clone(),
        job.cancel,
    )
    .await?)
}
