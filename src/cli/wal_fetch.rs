//! `dr wal-fetch --policy ID %f %p`: PostgreSQL's `restore_command`, with prefetch.
//!
//! Each call serves `%f` from the local spool when a previous call prefetched it, and
//! otherwise downloads it together with the next segments in parallel into the spool, so
//! replay is not serialised on one round trip per 16 MiB.
//!
//! With `--spool DIR` (what a server that dr itself started on restored data runs), it only
//! takes the file from a spool that the dr process holding the keys fills: no configuration,
//! no keys (see `ops::wal_feed`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;

use crate::error::{FAILED, OK, UsageError};
use crate::pipeline::wal::{self, WalError};
use crate::source::postgres::lsn::{Segment, is_wal_file_name};

use super::context;

/// Segments fetched ahead.
const PREFETCH: u64 = 8;

/// Arguments of `dr wal-fetch`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example, as `dr restore` writes it into postgresql.auto.conf:\n  restore_command = 'dr -c /etc/dr/dr.toml wal-fetch --policy pg-main %f %p'\nExit 1 when the file is not archived (PostgreSQL then ends recovery or tries again)."
)]
pub struct WalFetchArgs {
    /// Policy id.
    #[arg(long, required_unless_present = "spool")]
    pub policy: Option<String>,
    /// Take the file from this spool, which a running `dr restore --start` or drill fills
    /// (no configuration or keys are read).
    #[arg(long, conflicts_with_all = ["policy", "region"])]
    pub spool: Option<PathBuf>,
    /// Read from this storage target (a replica) instead of the primary.
    #[arg(long)]
    pub region: Option<String>,
    /// WAL segment size of the cluster (for naming the segments to prefetch).
    #[arg(long, default_value_t = 16 << 20)]
    pub wal_segment_size: u64,
    /// File name requested (%f).
    pub name: String,
    /// Where to write it (%p).
    pub path: PathBuf,
}

pub(crate) async fn run(config: Option<&Path>, args: &WalFetchArgs) -> anyhow::Result<i32> {
    if !is_wal_file_name(&args.name) {
        return Err(UsageError(format!("`{}` is not a WAL file name", args.name)).into());
    }
    if let Some(spool) = &args.spool {
        return Ok(
            if crate::ops::wal_feed::fetch_from_spool(spool, &args.name, &args.path)? {
                OK
            } else {
                FAILED
            },
        );
    }
    let id = args.policy.as_deref().unwrap_or_default();
    let config = context::load_scoped(config, crate::config::Scope::Only(id))?;
    let policy = context::policy(&config, id)?;
    let identity = context::identity(&config)?;
    let repo = Arc::new(context::read_repo(&config, policy, args.region.as_deref()).await?);
    let pid = policy.id.as_str();
    let spool = config.state_dir.join("wal-spool").join(pid);
    std::fs::create_dir_all(&spool)?;

    let spooled = spool.join(&args.name);
    let bytes = match tokio::fs::read(&spooled).await {
        Ok(b) => {
            let _ = std::fs::remove_file(&spooled);
            bytes::Bytes::from(b)
        }
        Err(_) => {
            let (first, _) = tokio::join!(
                wal::download(&repo, pid, &args.name),
                prefetch(&repo, pid, &args.name, args.wal_segment_size, &spool)
            );
            match first {
                Ok(b) => b,
                Err(WalError::NotFound { .. }) => {
                    eprintln!(
                        "dr wal-fetch: {} is not archived for policy {pid}",
                        args.name
                    );
                    return Ok(FAILED);
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let data = wal::open(&repo, &identity, pid, &args.name, &bytes)?;
    let tmp = args.path.with_extension("dr-tmp");
    tokio::fs::write(&tmp, &data).await?;
    tokio::fs::rename(&tmp, &args.path).await?;
    Ok(OK)
}

/// Downloads the segments after `name` into the spool (best effort).
async fn prefetch(
    repo: &crate::pipeline::Repository,
    policy: &str,
    name: &str,
    seg_size: u64,
    spool: &Path,
) {
    let Some(mut seg) = Segment::parse(name, seg_size) else {
        return;
    };
    let mut names = Vec::new();
    for _ in 0..PREFETCH {
        seg = seg.next();
        let n = seg.name(seg_size);
        if !spool.join(&n).exists() {
            names.push(n);
        }
    }
    futures::stream::iter(names)
        .for_each_concurrent(4, |n| async move {
            if let Ok(b) = wal::download(repo, policy, &n).await {
                let tmp = spool.join(format!(".{n}.tmp"));
                if tokio::fs::write(&tmp, &b).await.is_ok() {
                    let _ = tokio::fs::rename(&tmp, spool.join(&n)).await;
                }
            }
        })
        .await;
}
