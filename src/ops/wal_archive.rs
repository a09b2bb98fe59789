//! `archive_command` at production rates: each `dr wal-push` stores its own segment and,
//! in parallel with it, the next segments PostgreSQL has marked `.ready`; the calls that
//! follow find theirs already stored and return at once.
//!
//! PostgreSQL's archiver calls `archive_command` once per segment, in order, and waits for
//! each: a call that does the whole job alone (start, read, compress, encrypt, upload) caps
//! the WAL rate at one round trip per 16 MiB. As WAL-G does, a call that has to upload
//! anyway takes up to `ahead` of the following `.ready` files along, `parallel` at a time, and
//! leaves a marker for each one stored:
//!
//! ```text
//! <state_dir>/wal-pushed/<policy>/<name>    "<size> <device> <inode> <mtime ns>" of the file stored
//! ```
//!
//! A later call for `<name>` looks at its file, and when it is the very file that was stored
//! (same size, device, inode and modification time: PostgreSQL writes a segment in place and
//! never rewrites it under the same name; a recycled or re-created one is another inode or
//! time) it removes the marker and exits 0 without reading it or touching storage, as
//! pgBackRest's asynchronous `archive-push` trusts its spool. The ordering rule holds: a call
//! reports success only for a file that is stored (the marker is written after the store's
//! acknowledgement); a `kill -9` at any point loses nothing (a stored file without its marker
//! is pushed again, and the store answers "already archived, identical").

use std::path::{Path, PathBuf};

use futures::StreamExt;

use std::os::unix::fs::MetadataExt;

use crate::config::WalSettings;
use crate::pipeline::Repository;
use crate::pipeline::wal::{self, PushOutcome, WalError};
use crate::repo::keys::Recipients;
use crate::source::postgres::lsn::is_wal_file_name;

/// How one `wal-push` call ended for its own file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archived {
    /// An earlier call stored it (marker matched): nothing was sent.
    Ahead,
    /// Stored now (or found identical in the store).
    Now(PushOutcome),
}

/// Where markers of files stored ahead live.
pub fn marker_dir(state_dir: &Path, policy: &str) -> PathBuf {
    state_dir.join("wal-pushed").join(policy)
}

/// What identifies one file on disk: size, device, inode, modification time.
fn identity(meta: &std::fs::Metadata) -> String {
    format!(
        "{} {} {} {}",
        meta.len(),
        meta.dev(),
        meta.ino(),
        crate::source::tree::mtime_ns(meta)
    )
}

/// Whether an earlier call stored the file at `path` as `name`; the marker is consumed.
pub fn stored_ahead(markers: &Path, name: &str, path: &Path) -> bool {
    let marker = markers.join(name);
    let (Ok(text), Ok(meta)) = (std::fs::read_to_string(&marker), std::fs::metadata(path)) else {
        return false;
    };
    if text == identity(&meta) {
        let _ = std::fs::remove_file(&marker);
        true
    } else {
        false
    }
}

/// The `.ready` files after `name` in `pg_wal` (the directory holding `name`), in order, at
/// most `ahead`, skipping those with a marker.
fn ready_after(pg_wal: &Path, markers: &Path, name: &str, ahead: usize) -> Vec<String> {
    let mut ready: Vec<String> = std::fs::read_dir(pg_wal.join("archive_status"))
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let n = e.ok()?.file_name().into_string().ok()?;
            n.strip_suffix(".ready").map(str::to_owned)
        })
        .filter(|n| is_wal_file_name(n) && n.as_str() != name && !markers.join(n).exists())
        .collect();
    ready.sort();
    // History files sort after segments of the same timeline; both kinds are archived.
    ready.into_iter().take(ahead).collect()
}

/// Stores `path` (the file PostgreSQL asked for) and up to `push_ahead` following `.ready`
/// files, `push_parallel` at a time, at the policy's WAL compression level. Only the first
/// file's result is returned; the others leave markers when stored and are otherwise left for
/// PostgreSQL's next calls.
///
/// # Errors
/// The first file could not be read or stored (a `Conflict` when a different file is archived
/// under its name).
#[allow(clippy::too_many_arguments)]
pub async fn push_with_ahead(
    repo: &Repository,
    recipients: &Recipients,
    policy: &str,
    path: &Path,
    name: &str,
    data: Vec<u8>,
    markers: &Path,
    settings: &WalSettings,
) -> Result<PushOutcome, WalError> {
    let level = settings.compression;
    let pg_wal = path.parent().unwrap_or(Path::new("."));
    let others = ready_after(pg_wal, markers, name, settings.push_ahead);
    let _ = std::fs::create_dir_all(markers);
    // The own file first, then the others, `parallel` at a time throughout.
    let jobs = std::iter::once(None).chain(others.into_iter().map(Some));
    let mut data = Some(data);
    let mut runs = futures::stream::iter(jobs)
        .map(|job| {
            let own = job.is_none().then(|| data.take()).flatten();
            async move {
                match (job, own) {
                    (Some(n), _) => {
                        push_ahead(repo, recipients, policy, pg_wal, markers, &n, level).await;
                        None
                    }
                    (None, own) => {
                        let own = own.expect("the own file is pushed once");
                        Some(wal::push(repo, recipients, policy, name, own, level).await)
                    }
                }
            }
        })
        .buffer_unordered(settings.push_parallel.max(1));
    let mut own = None;
    while let Some(r) = runs.next().await {
        own = own.or(r);
    }
    own.expect("the own file was pushed")
}

/// Stores the `.ready` file `n` and leaves its marker; any failure is left for PostgreSQL's
/// own call for it.
async fn push_ahead(
    repo: &Repository,
    recipients: &Recipients,
    policy: &str,
    pg_wal: &Path,
    markers: &Path,
    n: &str,
    level: i32,
) {
    let file = pg_wal.join(n);
    // Gone (archived and recycled meanwhile) or unreadable: PostgreSQL will ask.
    let Ok(before) = std::fs::metadata(&file) else {
        return;
    };
    let Ok(data) = tokio::fs::read(&file).await else {
        return;
    };
    let text = identity(&before);
    // Changed while read (not a finished segment after all): no marker, no shortcut.
    if std::fs::metadata(&file).map(|m| identity(&m)).ok().as_ref() != Some(&text) {
        return;
    }
    match wal::push(repo, recipients, policy, n, data, level).await {
        Ok(_) => {
            let (tmp, marker) = (markers.join(format!(".{n}.tmp")), markers.join(n));
            if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &marker))
            {
                tracing::debug!(file = %n, error = %e, "Could not write a WAL push marker.");
            }
        }
        Err(e) => {
            tracing::warn!(file = %n, error = %format!("{e:#}"), "Pushing a WAL file ahead failed; PostgreSQL's own call for it will retry.");
        }
    }
}

/// Removes markers older than a day (their files were archived by other means, or the
/// cluster moved on): they would otherwise accumulate after timeline switches.
pub fn prune_markers(markers: &Path) {
    let day = std::time::Duration::from_secs(86_400);
    for e in std::fs::read_dir(markers).into_iter().flatten().flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > day);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
