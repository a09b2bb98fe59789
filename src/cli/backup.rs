//! `dr backup --policy ID`: one backup now.

use std::path::Path;
use std::sync::Arc;

use crate::config::units::format_bytes;
use crate::error::OK;
use crate::ops;
use crate::pipeline::progress::Progress;

use super::{context, output};

/// Arguments of `dr backup`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  dr -c /etc/dr/dr.toml backup --policy app-files\n  dr backup --policy app-files --json     # machine-readable summary on stdout\n  dr backup --policy app-files --force-read   # read files even when their stat is unchanged"
)]
pub struct BackupArgs {
    /// Policy id (file stem in policies/).
    #[arg(long)]
    pub policy: String,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Read every file, also those whose size, mtime, ctime and inode say they are unchanged
    /// since the last backup (which are otherwise taken from it without reading); for
    /// PostgreSQL, store every changed 1 MiB window whole instead of only its changed pages.
    #[arg(long)]
    pub force_read: bool,
}

pub(crate) async fn run(config: Option<&Path>, args: &BackupArgs) -> anyhow::Result<i32> {
    let config = context::load_scoped(config, crate::config::Scope::Focus(&args.policy))?;
    let policy = context::policy(&config, &args.policy)?;
    let progress = Arc::new(Progress::default());
    let cancel = context::shutdown_token();
    let bar = output::Bar::start("backup", progress.clone());
    let s = ops::backup::run(&config, policy, args.force_read, progress, &cancel).await;
    drop(bar);
    let s = s?;
    if args.json {
        output::json(&s)?;
    } else {
        let secs = s.duration.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let stored = if s.bytes_stored == 0 {
            "stored nothing new".to_owned()
        } else {
            format!(
                "stored {} ({:.1}x smaller than read)",
                format_bytes(s.bytes_stored),
                s.bytes_read as f64 / s.bytes_stored as f64
            )
        };
        let unchanged = if s.files_unchanged == 0 {
            String::new()
        } else {
            format!(" ({} files unchanged, not read)", s.files_unchanged)
        };
        outln!(
            "backup {} snapshot {}: read {} in {} items{unchanged}, {} new after dedup, {stored}, {:.2}s, {} -> {}",
            s.policy,
            s.snapshot,
            format_bytes(s.bytes_read),
            s.artifacts,
            format_bytes(s.bytes_new),
            secs,
            output::rate(s.bytes_read, secs),
            s.location
        );
    }
    // On stderr whatever the format: a corrupted page is news for whoever runs this.
    if !s.bad_pages.is_empty() {
        eprintln!(
            "WARNING: {} page(s) fail their checksum (read twice); the snapshot is committed with them (on_bad_page = \"fail\" commits nothing):",
            s.bad_pages.len()
        );
        for p in &s.bad_pages {
            eprintln!("  {p}");
        }
    }
    Ok(OK)
}
