//! `dr restore`: a snapshot into a directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::units::format_bytes;
use crate::error::OK;
use crate::pipeline::progress::Progress;
use crate::pipeline::restore::{self, RestoreOptions};

use super::{context, output};

/// Arguments of `dr restore`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  dr restore --policy app-files --target-dir /srv/restore            # latest snapshot\n  dr restore --policy app-files --snapshot 20261123T140200Z --target-dir /tmp/r\n  dr restore --policy app-files --region us --target-dir /tmp/r      # from a replica"
)]
pub struct RestoreArgs {
    /// Policy id.
    #[arg(long)]
    pub policy: String,
    /// Snapshot id, a unique prefix of one, or `latest`.
    #[arg(long, default_value = "latest")]
    pub snapshot: String,
    /// Directory to restore into (created if missing; must be empty unless --force).
    #[arg(long)]
    pub target_dir: PathBuf,
    /// Restore into a non-empty directory, overwriting files with the same names.
    #[arg(long)]
    pub force: bool,
    /// Restore from this storage target (a replica) instead of the primary.
    #[arg(long)]
    pub region: Option<String>,
    /// JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(config: Option<&Path>, args: &RestoreArgs) -> anyhow::Result<i32> {
    let config = context::load(config)?;
    let policy = context::policy(&config, &args.policy)?;
    let identity = Arc::new(context::identity(&config)?);
    let repo = context::read_repo(&config, policy, args.region.as_deref()).await?;
    let id = repo.resolve(policy.id.as_str(), &args.snapshot).await?;
    let manifest = repo
        .read_manifest(&identity, policy.id.as_str(), &id)
        .await?;
    let progress = Arc::new(Progress::default());
    let cancel = context::shutdown_token();
    let bar = output::Bar::start("restore", progress.clone());
    let opts = RestoreOptions {
        concurrency: config.pipeline.restore_concurrency,
        force: args.force,
    };
    let s = restore::run(
        &repo,
        identity,
        &manifest,
        &args.target_dir,
        &opts,
        progress,
        &cancel,
    )
    .await;
    drop(bar);
    let s = s?;
    if args.json {
        let mut v = serde_json::to_value(&s)?;
        v["peak_rss_bytes"] = serde_json::json!(output::peak_rss_bytes());
        output::json(&v)?;
    } else {
        println!(
            "restored {} snapshot {} into {}: {} in {} items, {:.2}s, {} (from {})",
            s.policy,
            s.snapshot,
            s.target,
            format_bytes(s.bytes),
            s.artifacts,
            s.seconds,
            output::rate(s.bytes, s.seconds),
            repo.storage.location()
        );
    }
    Ok(OK)
}
