//! WAL for a server that dr itself starts on restored data (`restore --start`, drills), fed
//! through a spool directory so that the server's `restore_command` needs no keys.
//!
//! The restored files come from the database host, which a compromised one could have
//! crafted: the server runs as an OS user that cannot read dr's restore identity. So the
//! server's `restore_command` is `dr wal-fetch --spool DIR %f %p`, which only moves files:
//!
//! ```text
//! server: wal-fetch --spool      creates DIR/want/<name>, waits
//! dr (this feeder, with keys)    downloads + decrypts <name>  -> DIR/<name>       (or DIR/<name>.none)
//!                                and reads ahead the next `ahead` archived segments in parallel
//! server: wal-fetch --spool      renames DIR/<name> to %p (exit 0), or removes .none (exit 1)
//! ```
//!
//! The feeder touches `DIR/alive` every second; a `wal-fetch --spool` that sees it go stale
//! gives up (exit 1) instead of waiting forever. At most `ahead` segments wait in the spool.
//! Replay then reads local files while the next segments are fetched, as pgBackRest's
//! asynchronous `archive-get` does.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::host::User;
use crate::pipeline::Repository;
use crate::pipeline::wal::{self, WalError};
use crate::repo::keys::Identity;
use crate::source::postgres::lsn::{Segment, is_wal_file_name};

/// The heartbeat file's name in the spool.
pub const ALIVE: &str = "alive";
/// The request directory's name in the spool.
pub const WANT: &str = "want";
/// After this long without a heartbeat, `wal-fetch --spool` stops waiting.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// A running feeder; [`WalFeed::stop`] ends it and removes the spool.
pub struct WalFeed {
    dir: PathBuf,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// What the feeder needs.
struct Cx {
    repo: Arc<Repository>,
    identity: Arc<Identity>,
    policy: String,
    seg_size: u64,
    dir: PathBuf,
    owner: Option<User>,
}

impl WalFeed {
    /// Creates the spool `dir` (given to `owner`, the server's OS user, when set) and starts
    /// feeding it from `repo`'s WAL of `policy`.
    ///
    /// # Errors
    /// The spool cannot be created, or the WAL cannot be listed.
    pub async fn start(
        repo: Arc<Repository>,
        identity: Arc<Identity>,
        policy: &str,
        seg_size: u64,
        dir: PathBuf,
        owner: Option<User>,
        ahead: usize,
    ) -> Result<Self, super::RestoreError> {
        let want = dir.join(WANT);
        let io = || super::RestoreError::io(format!("setting up the WAL spool {}", dir.display()));
        std::fs::create_dir_all(&want).map_err(io())?;
        for d in [&dir, &want] {
            give(d, owner.as_ref()).map_err(io())?;
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(io())?;
        }
        // Streamed partial segments are served (padded) for segments not archived whole.
        let archived: HashSet<String> = wal::list(&repo, policy)
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .chain(
                wal::list_partials(&repo, policy)
                    .await?
                    .into_iter()
                    .map(|p| p.segment),
            )
            .collect();
        let cx = Arc::new(Cx {
            repo,
            identity,
            policy: policy.to_owned(),
            seg_size,
            dir: dir.clone(),
            owner,
        });
        beat(&cx.dir);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(feed(cx, archived, ahead.max(1), cancel.clone()));
        Ok(Self { dir, cancel, task })
    }

    /// The `restore_command` that takes WAL from this spool.
    ///
    /// # Errors
    /// The dr executable cannot be located.
    pub fn restore_command(&self) -> std::io::Result<String> {
        let exe = std::env::current_exe()?;
        Ok(format!(
            "\"{}\" wal-fetch --spool \"{}\" %f %p",
            exe.display(),
            self.dir.display()
        ))
    }

    /// Stops feeding and removes the spool.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Gives `p` to `owner` (no-op without one).
fn give(p: &Path, owner: Option<&User>) -> std::io::Result<()> {
    match owner {
        Some(u) => std::os::unix::fs::lchown(p, Some(u.uid), Some(u.gid)),
        None => Ok(()),
    }
}

fn beat(dir: &Path) {
    let _ = std::fs::write(dir.join(ALIVE), b"");
}

/// How long ago the feeder of spool `dir` last beat (`None`: never, or a time ahead).
pub fn heartbeat_age(dir: &Path) -> Option<Duration> {
    age(&dir.join(ALIVE))
}

/// How long ago `path` was last modified (`None`: missing, or a time ahead).
pub fn age(path: &Path) -> Option<Duration> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
}

/// Fetches what the server asks for, and reads ahead, until cancelled.
async fn feed(cx: Arc<Cx>, archived: HashSet<String>, ahead: usize, cancel: CancellationToken) {
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut inflight: HashSet<String> = HashSet::new();
    let mut tasks: JoinSet<String> = JoinSet::new();
    let mut last_beat = std::time::Instant::now();
    // The next segment to read ahead: it only moves forward (past what the server took
    // without asking, since it was already there), or jumps to a request beyond it or on
    // another timeline.
    let mut cursor: Option<Segment> = None;
    // The newest timeline the server asked for an archived segment of.
    let mut timeline = 0;
    while !cancel.is_cancelled() {
        if last_beat.elapsed() >= Duration::from_secs(1) {
            beat(&cx.dir);
            last_beat = std::time::Instant::now();
        }
        let present =
            |n: &str| cx.dir.join(n).exists() || cx.dir.join(format!("{n}.none")).exists();
        // Requests first, in front of any read-ahead.
        for name in requests(&cx.dir) {
            if present(&name) {
                // Answered already (read ahead, or a repeated request): nothing to fetch.
                let _ = std::fs::remove_file(cx.dir.join(WANT).join(&name));
            } else if !inflight.contains(&name) && !queue.contains(&name) {
                queue.push_front(name.clone());
            }
            if let Some(s) = Segment::parse(&name, cx.seg_size) {
                if archived.contains(&name) && s.timeline > timeline {
                    // The server reads on from this timeline and never asks for an older
                    // one again: what was read ahead there only takes the spool's room.
                    timeline = s.timeline;
                    drop_older_timelines(&cx.dir, timeline, cx.seg_size);
                }
                if cursor.is_none_or(|c| s.timeline != c.timeline || s >= c) {
                    cursor = Some(s.next());
                }
            }
        }
        // Read ahead from the cursor, within the spool's bound.
        if let Some(mut c) = cursor {
            let waiting = ready_count(&cx.dir) + inflight.len() + queue.len();
            let mut room = ahead.saturating_sub(waiting);
            while room > 0 {
                let n = c.name(cx.seg_size);
                if !archived.contains(&n) {
                    break;
                }
                if !inflight.contains(&n) && !queue.contains(&n) && !present(&n) {
                    queue.push_back(n);
                    room -= 1;
                }
                c = c.next();
            }
            cursor = Some(c);
        }
        while tasks.len() < parallel
            && let Some(name) = queue.pop_front()
        {
            inflight.insert(name.clone());
            let cx = cx.clone();
            tasks.spawn(async move {
                place(&cx, &name).await;
                name
            });
        }
        tokio::select! {
            Some(Ok(done)) = tasks.join_next(), if !tasks.is_empty() => {
                inflight.remove(&done);
            }
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
            () = cancel.cancelled() => {}
        }
    }
    tasks.abort_all();
}

/// The names asked for in `want/` (their request files stay until the answer is placed).
fn requests(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join(WANT))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| is_wal_file_name(n))
        .collect()
}

/// Removes the spooled segments of timelines before `timeline`. PostgreSQL's recovery never
/// goes back to an older timeline once it has read a file of a newer one (it would only
/// after a restart, and then asks again: the feeder fetches on request).
fn drop_older_timelines(dir: &Path, timeline: u32, seg_size: u64) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let old = name
            .to_str()
            .and_then(|n| Segment::parse(n, seg_size))
            .is_some_and(|s| s.timeline < timeline);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Segments fetched and not yet taken by the server.
fn ready_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| is_wal_file_name(n))
        .count()
}

/// Downloads and opens `name` into the spool, or marks it absent; answers its request.
async fn place(cx: &Cx, name: &str) {
    // The request goes before the answer comes: removed after it, it could delete the
    // request a retry made once the answer had been taken.
    let _ = std::fs::remove_file(cx.dir.join(WANT).join(name));
    let answer = match wal::download(&cx.repo, &cx.policy, name).await {
        Ok(fetched) => {
            let (repo, identity) = (cx.repo.clone(), cx.identity.clone());
            // Decryption and decompression are CPU work: off the runtime.
            match tokio::task::spawn_blocking(move || wal::open(&repo, &identity, &fetched)).await {
                Ok(Ok(data)) => Ok(data),
                Ok(Err(e)) => Err(format!("{e}")),
                Err(e) => Err(format!("{e}")),
            }
        }
        Err(WalError::NotFound { .. }) => Err(String::new()),
        Err(e) => Err(format!("{e}")),
    };
    let dir = &cx.dir;
    let result = match answer {
        Ok(data) => {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, &data)
                .and_then(|()| give(&tmp, cx.owner.as_ref()))
                .and_then(|()| std::fs::rename(&tmp, dir.join(name)))
        }
        Err(reason) => {
            if !reason.is_empty() {
                tracing::warn!(file = name, error = %reason, "Could not fetch WAL for the restored server; it is told the file is missing.");
            }
            let none = dir.join(format!("{name}.none"));
            std::fs::write(&none, b"").and_then(|()| give(&none, cx.owner.as_ref()))
        }
    };
    if let Err(e) = result {
        tracing::warn!(file = name, error = %e, "Could not write to the WAL spool.");
    }
}

/// `dr wal-fetch --spool DIR NAME PATH`: asks the feeder for `name` and moves it to `path`.
/// Returns whether it was found. Uses no configuration and no keys.
///
/// # Errors
/// I/O errors on the spool or `path`.
pub fn fetch_from_spool(dir: &Path, name: &str, path: &Path) -> std::io::Result<bool> {
    let ready = dir.join(name);
    let none = dir.join(format!("{name}.none"));
    let want = dir.join(WANT).join(name);
    let ask = || {
        // An answer may already be there (read ahead); the request is harmless then.
        let _ = std::fs::write(&want, b"");
    };
    if !ready.exists() {
        ask();
    }
    let mut asked = std::time::Instant::now();
    loop {
        match std::fs::rename(&ready, path) {
            Ok(()) => {
                let _ = std::fs::remove_file(&want);
                return Ok(true);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // The spool is on another filesystem than pg_wal: copy instead.
            Err(e) if e.raw_os_error() == Some(18) => {
                std::fs::copy(&ready, path)?;
                std::fs::remove_file(&ready)?;
                return Ok(true);
            }
            Err(e) => return Err(e),
        }
        if std::fs::remove_file(&none).is_ok() {
            let _ = std::fs::remove_file(&want);
            return Ok(false);
        }
        if heartbeat_age(dir).is_none_or(|age| age > STALE_AFTER) {
            return Err(std::io::Error::other(format!(
                "no dr process feeds the WAL spool {} any more",
                dir.display()
            )));
        }
        // Neither an answer nor a pending request after a while: ask again.
        if asked.elapsed() > Duration::from_secs(1) && !want.exists() {
            ask();
            asked = std::time::Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_timeline_drops_what_was_read_ahead_on_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let seg = 16 << 20;
        let names = [
            "00000001000000000000000A",
            "00000001000000000000000B",
            "00000002000000000000000A",
            "00000002000000000000000B",
            "00000002.history",
            "00000001000000000000000C.none",
            ALIVE,
        ];
        for n in names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        drop_older_timelines(dir.path(), 2, seg);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "00000001000000000000000C.none",
                "00000002.history",
                "00000002000000000000000A",
                "00000002000000000000000B",
                ALIVE,
            ]
        );
        assert_eq!(ready_count(dir.path()), 3);
    }
}
