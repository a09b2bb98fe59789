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
    after_help = "Examples:\n  dr -c /etc/dr/dr.toml backup --policy app-files\n  dr backup --policy app-files --json     # machine-readable summary on stdout\n  dr backup --policy app-files --force-read   # read files even when their stat is unchanged\n  dr backup --group app    # every snapshot-based member at once, a restore point in each PostgreSQL one"
)]
pub struct BackupArgs {
    /// Policy id (file stem in policies/).
    #[arg(long, required_unless_present = "group", conflicts_with = "group")]
    pub policy: Option<String>,
    /// Back up an application group (`groups/<id>.toml`) as one run: its snapshot-based
    /// members at once, and at that moment a restore point named after the run in each
    /// PostgreSQL member (its WAL switched, so the point is archived now). The run is
    /// recorded when every member succeeded; `dr restore --group ID --run latest` restores it.
    #[arg(long, conflicts_with = "force_read")]
    pub group: Option<String>,
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
    let Some(policy) = args.policy.as_deref() else {
        return group(config, args).await;
    };
    let config = context::load_scoped(config, crate::config::Scope::Focus(policy))?;
    let policy = context::policy(&config, policy)?;
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

/// `--group`: one run of every member (see `ops::group`).
async fn group(config: Option<&Path>, args: &BackupArgs) -> anyhow::Result<i32> {
    let id = args.group.as_deref().unwrap_or_default();
    let config = context::load_scoped(config, crate::config::Scope::All)?;
    let g = context::group(&config, id)?;
    let progress = Arc::new(Progress::default());
    let cancel = context::shutdown_token();
    let bar = output::Bar::start("group backup", progress.clone());
    let run = ops::group::backup(&config, g, progress, &cancel).await;
    drop(bar);
    let run = run?;
    if args.json {
        output::json(&run)?;
        return Ok(OK);
    }
    outln!(
        "group {} run {}: {} members, points within {:.1}s",
        run.group,
        run.run,
        run.members.len(),
        run.skew_seconds()
    );
    for m in &run.members {
        outln!(
            "  {} ({}): {} at {}",
            m.policy,
            m.source,
            match (&m.snapshot, &m.restore_point) {
                (Some(s), _) => format!("snapshot {s}"),
                (None, Some(r)) => format!(
                    "restore point {r} (LSN {})",
                    m.lsn.as_deref().unwrap_or("?")
                ),
                (None, None) => "?".to_owned(),
            },
            m.point.format("%Y-%m-%d %H:%M:%S%.3f UTC")
        );
    }
    Ok(OK)
}
