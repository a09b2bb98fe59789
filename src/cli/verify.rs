//! `dr verify`: structure always, data with `--data`.

use std::path::Path;
use std::sync::Arc;

use crate::config::units::format_bytes;
use crate::error::{FAILED, OK};
use crate::pipeline::progress::Progress;
use crate::pipeline::verify;

use super::{context, output};

/// Arguments of `dr verify`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  dr verify --policy app-files           # every referenced object present, sizes and MACs right\n  dr verify --policy app-files --read-packs  # also read every pack whole and hash it (no identity needed)\n  dr verify --policy app-files --data    # also decrypt and re-hash every chunk (needs the identity)\nExit code 1 when any problem is found; each problem names the object."
)]
pub struct VerifyArgs {
    /// Policy id.
    #[arg(long)]
    pub policy: String,
    /// Decrypt and hash all data.
    #[arg(long)]
    pub data: bool,
    /// Read every referenced pack whole and check it hashes to its name (works on writer
    /// hosts, which hold no identity).
    #[arg(long)]
    pub read_packs: bool,
    /// Verify a replica's copy instead of the primary.
    #[arg(long)]
    pub region: Option<String>,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(config: Option<&Path>, args: &VerifyArgs) -> anyhow::Result<i32> {
    let config = context::load(config)?;
    let policy = context::policy(&config, &args.policy)?;
    let identity = if args.data {
        Some(Arc::new(context::identity(&config)?))
    } else {
        None
    };
    let repo = context::read_repo(&config, policy, args.region.as_deref()).await?;
    let progress = Arc::new(Progress::default());
    let bar = output::Bar::start("verify", progress.clone());
    let r = verify::run(
        &repo,
        Some(policy.id.as_str()),
        identity,
        if args.read_packs {
            verify::ReadPacks::All
        } else {
            verify::ReadPacks::No
        },
        config.pipeline.restore_concurrency,
        config.daemon.job_timeout,
        progress,
    )
    .await;
    drop(bar);
    let r = r?;
    if args.json {
        output::json(&r)?;
    } else {
        let read = if args.read_packs {
            format!(", {} packs read whole and hashed", r.packs_read)
        } else {
            String::new()
        };
        let what = if args.data {
            format!(
                ", {} chunks / {} decrypted and hashed",
                r.chunks_checked,
                format_bytes(r.bytes_checked)
            )
        } else {
            String::new()
        };
        outln!(
            "verify {} at {}: {} snapshots, {} packs{read}{what}",
            policy.id,
            r.location,
            r.snapshots,
            r.packs
        );
        if r.incomplete > 0 {
            outln!(
                "  {} incomplete snapshot(s) from interrupted backups (not restorable, removed by prune)",
                r.incomplete
            );
        }
        for p in &r.problems {
            outln!("  PROBLEM: {p}");
        }
        outln!("{}", if r.ok() { "OK" } else { "FAILED" });
    }
    Ok(if r.ok() { OK } else { FAILED })
}
