//! `dr wal-fetch --policy ID %f %p`: PostgreSQL's `restore_command`, with read-ahead.
//!
//! The first call starts a feeder (this command with `--feed`, in the background) that keeps
//! `wal.fetch_ahead` segments decrypted in a spool under the state directory, fetched in
//! parallel ahead of replay (`restore::wal_feed`, as for servers dr starts itself); that first
//! call fetches its own file directly. While the feeder's heartbeat is fresh, each call only
//! takes its file from the spool. The feeder stops and removes the spool once no call came
//! for a minute (recovery ended, the server was promoted) or the spool is removed.
//!
//! With `--spool DIR` (what a server that dr itself started on restored data runs), it only
//! takes the file from a spool that the dr process holding the keys fills: no configuration,
//! no keys (see `restore::wal_feed`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{FAILED, OK, UsageError};
use crate::pipeline::wal::{self, WalError};
use crate::restore::wal_feed::{self, WalFeed};
use crate::source::postgres::lsn::{Segment, is_wal_file_name};

use super::context;

/// The spool's file that each call touches: the feeder's sign that recovery goes on.
const CALLED: &str = "called";
/// A feeder with no call for this long stops.
const IDLE: Duration = Duration::from_secs(60);
/// A feeder's lock older than this without a heartbeat was left by a killed feeder.
const LOCK_STALE: Duration = Duration::from_secs(30);
/// A heartbeat older than this: no feeder serves the spool.
const FEEDER_GONE: Duration = Duration::from_secs(5);

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
    /// Internal: run the read-ahead feeder for `--policy` (the first call starts it).
    #[arg(long, hide = true, requires = "policy")]
    pub feed: bool,
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
            if crate::restore::wal_feed::fetch_from_spool(spool, &args.name, &args.path)? {
                OK
            } else {
                FAILED
            },
        );
    }
    let config_path = config;
    let id = args.policy.as_deref().unwrap_or_default();
    let config = context::load_scoped(config, crate::config::Scope::Only(id))?;
    let policy = context::policy(&config, id)?;
    let pid = policy.id.as_str();
    let spool = config.state_dir.join("wal-feed").join(match &args.region {
        Some(r) => format!("{pid}@{r}"),
        None => pid.to_owned(),
    });
    if !args.feed && alive(&spool) {
        let _ = std::fs::write(spool.join(CALLED), b"");
        if wal_feed::fetch_from_spool(&spool, &args.name, &args.path)? {
            return Ok(OK);
        }
        return Ok(not_archived(&args.name, pid));
    }
    let identity = Arc::new(context::identity(&config)?);
    let repo = Arc::new(context::read_repo(&config, policy, args.region.as_deref()).await?);
    if args.feed {
        return feed(&repo, identity, policy, &spool, args).await;
    }
    if let Err(e) = start_feeder(config_path, args, &spool) {
        tracing::warn!(error = %e, "Could not start the WAL read-ahead feeder; fetching one file per call.");
    }
    let fetched = match wal::download(&repo, pid, &args.name).await {
        Ok(f) => f,
        Err(WalError::NotFound { .. }) => return Ok(not_archived(&args.name, pid)),
        Err(e) => return Err(e.into()),
    };
    let data = wal::open(&repo, &identity, &fetched)?;
    let tmp = args.path.with_extension("dr-tmp");
    tokio::fs::write(&tmp, &data).await?;
    tokio::fs::rename(&tmp, &args.path).await?;
    Ok(OK)
}

/// Says so; PostgreSQL ends recovery (or, a standby, tries again later) on this exit code.
fn not_archived(name: &str, policy: &str) -> i32 {
    eprintln!("dr wal-fetch: {name} is not archived for policy {policy}");
    FAILED
}

/// `<spool>.<ext>` (a policy id may hold dots: not `with_extension`).
fn beside(spool: &Path, ext: &str) -> PathBuf {
    let mut p = spool.as_os_str().to_owned();
    p.push(".");
    p.push(ext);
    PathBuf::from(p)
}

/// Whether a feeder's heartbeat in `spool` is fresh.
fn alive(spool: &Path) -> bool {
    wal_feed::heartbeat_age(spool).is_some_and(|age| age < FEEDER_GONE)
}

/// Starts `dr wal-fetch --feed` in the background, in its own process group (PostgreSQL
/// waits for this call only), its log beside the spool.
fn start_feeder(config: Option<&Path>, args: &WalFetchArgs, spool: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    use std::os::unix::process::CommandExt;
    let parent = spool.parent().expect("the spool is in the state directory");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)?;
    let log = std::fs::File::create(beside(spool, "log"))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    cmd.args(["wal-fetch", "--feed", "--policy"])
        .arg(args.policy.as_deref().unwrap_or_default())
        .arg("--wal-segment-size")
        .arg(args.wal_segment_size.to_string());
    if let Some(r) = &args.region {
        cmd.args(["--region", r]);
    }
    cmd.arg(&args.name)
        .arg(&args.path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .process_group(0);
    // Not waited for: it outlives this call and is reparented when this process exits.
    #[allow(clippy::zombie_processes)]
    cmd.spawn()?;
    Ok(())
}

/// The feeder: one per spool (a lock file beside it), reading ahead from the segment after
/// the call that started it, until no call came for [`IDLE`].
async fn feed(
    repo: &Arc<crate::pipeline::Repository>,
    identity: Arc<crate::repo::keys::Identity>,
    policy: &crate::config::Policy,
    spool: &Path,
    args: &WalFetchArgs,
) -> anyhow::Result<i32> {
    let lock = beside(spool, "lock");
    let take = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
    };
    if take().is_err() {
        // Another feeder serves this spool, or is starting (no heartbeat yet): a lock is
        // only taken over from a feeder that was killed.
        let starting = wal_feed::age(&lock).is_none_or(|age| age < LOCK_STALE);
        if alive(spool) || starting {
            return Ok(OK);
        }
        std::fs::remove_file(&lock)?;
        take()?;
    }
    // What a killed feeder left is not trusted to be complete.
    let _ = std::fs::remove_dir_all(spool);
    let feed = WalFeed::start(
        repo.clone(),
        identity,
        policy.id.as_str(),
        args.wal_segment_size,
        spool.to_path_buf(),
        None,
        policy.wal.fetch_ahead,
    )
    .await;
    let feed = match feed {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_file(&lock);
            return Err(e.into());
        }
    };
    std::fs::write(spool.join(CALLED), b"")?;
    if let Some(s) = Segment::parse(&args.name, args.wal_segment_size) {
        let next = s.next().name(args.wal_segment_size);
        let _ = std::fs::write(spool.join(wal_feed::WANT).join(next), b"");
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = std::fs::metadata(spool.join(CALLED))
            .and_then(|m| m.modified())
            .map_or(true, |t| t.elapsed().is_ok_and(|age| age > IDLE));
        if idle {
            break;
        }
    }
    feed.stop().await;
    let _ = std::fs::remove_file(&lock);
    Ok(OK)
}
