//! One backup of one policy into its primary target.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Policy};
use crate::pipeline::backup::{self, BackupOptions, BackupSummary};
use crate::pipeline::progress::Progress;
use crate::source::AnySource;

/// Backs `policy` up now; `force_read` reads files whose stat is unchanged too.
///
/// # Errors
/// Opening the repository, or any stage of the backup; nothing is committed then.
pub async fn run(
    config: &Config,
    policy: &Policy,
    force_read: bool,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<BackupSummary, super::OpsError> {
    let (repo, recipients) = super::write_repo(config, policy).await?;
    let opts = BackupOptions {
        policy: policy.id.to_string(),
        compression: policy.compression,
        pack_size: config.pipeline.pack_size,
        upload_concurrency: config.pipeline.upload_concurrency,
        workers: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
        force_read,
        fail_on_bad_page: matches!(&policy.source, crate::config::SourceSpec::Postgres(p) if p.fail_on_bad_page),
    };
    Ok(backup::run(
        &repo,
        &recipients,
        AnySource::from_spec(&policy.source),
        &opts,
        progress,
        cancel,
    )
    .await?)
}
