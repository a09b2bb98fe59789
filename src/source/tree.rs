//! One directory walker for every source that reads a tree (`files`, PostgreSQL local mode):
//! depth-first, entries in byte order of their names (so two snapshots of the same tree list
//! artifacts in the same order), symlinks recorded and not followed unless the rules say so,
//! sockets/FIFOs/devices skipped with a warning, entries that vanish mid-walk skipped.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use super::{Artifact, Body, Chunking, SourceError};
use crate::repo::manifest::{EntryKind, EntryName};

/// What a source decides while its tree is walked.
pub(crate) trait WalkRules {
    /// Leave this entry (and everything below it) out.
    fn skip(&self, rel: &Path) -> bool;
    /// Record this directory but not its contents.
    fn skip_contents(&self, _rel: &Path) -> bool {
        false
    }
    /// Walk through this symlink as if it were the directory it points to.
    fn follow(&mut self, _rel: &Path, _target: &Path) -> bool {
        false
    }
    /// How to chunk this file.
    fn chunking(&self, _rel: &Path) -> Chunking {
        Chunking::ContentDefined
    }
    /// Whether to check this file's pages as they are read.
    fn page_check(&self, _rel: &Path) -> Option<super::PageCheck> {
        None
    }
    /// Whether a file unchanged since the last backup (size, mtime, ctime, inode) may be
    /// taken from it without reading (files carry their stat).
    fn skip_unchanged(&self) -> bool {
        false
    }
}

/// Modification time in nanoseconds since the epoch.
pub(crate) fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    ns(m.mtime(), m.mtime_nsec())
}

/// Seconds and nanoseconds since the epoch as nanoseconds.
pub(crate) fn ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// Walks `root`, sending an artifact per entry; returns the number of regular files.
///
/// # Errors
/// A read error naming the path, `Cancelled`, or `PipelineGone`.
pub(crate) fn walk(
    root: &Path,
    out: &Sender<Artifact>,
    cancel: &CancellationToken,
    rules: &mut impl WalkRules,
) -> Result<u64, SourceError> {
    let mut files = 0;
    walk_dir(
        root,
        Path::new("."),
        &mut Sink::Send(out),
        cancel,
        rules,
        &mut files,
    )?;
    Ok(files)
}

/// The bytes of the regular files a [`walk`] with `rules` would send now (a walk that only
/// looks: backup's total, known up front).
///
/// # Errors
/// A read error naming the path, or `Cancelled`.
pub(crate) fn size(
    root: &Path,
    cancel: &CancellationToken,
    rules: &mut impl WalkRules,
) -> Result<u64, SourceError> {
    let (mut bytes, mut files) = (0, 0);
    walk_dir(
        root,
        Path::new("."),
        &mut Sink::Size(&mut bytes),
        cancel,
        rules,
        &mut files,
    )?;
    Ok(bytes)
}

/// Where a walk's entries go: to the pipeline, or only their sizes added up.
enum Sink<'a> {
    Send(&'a Sender<Artifact>),
    Size(&'a mut u64),
}

fn read_err(p: &Path, e: std::io::Error) -> SourceError {
    SourceError::Read {
        path: p.display().to_string(),
        source: e,
    }
}

/// Sends one entry; a regular file is chunked, and carries its stat, as `rules` say.
fn send(
    sink: &mut Sink<'_>,
    rel: &Path,
    kind: EntryKind,
    meta: &std::fs::Metadata,
    target: Option<PathBuf>,
    body: Body,
    rules: &impl WalkRules,
) -> Result<(), SourceError> {
    let out = match sink {
        Sink::Send(out) => *out,
        Sink::Size(bytes) => {
            if kind == EntryKind::File {
                **bytes += meta.len();
            }
            return Ok(());
        }
    };
    let (chunking, stat) = if kind == EntryKind::File {
        let stat = rules.skip_unchanged().then(|| super::FileStat::of(meta));
        (rules.chunking(rel), stat)
    } else {
        (Chunking::ContentDefined, None)
    };
    let a = Artifact {
        name: EntryName(rel.as_os_str().as_bytes().to_vec()),
        kind,
        mode: meta.permissions().mode() & 0o7777,
        mtime_ns: Some(mtime_ns(meta)),
        target: target.map(|t| EntryName(t.as_os_str().as_bytes().to_vec())),
        body,
        chunking,
        stat,
        page_check: (kind == EntryKind::File)
            .then(|| rules.page_check(rel))
            .flatten(),
    };
    out.blocking_send(a).map_err(|_| SourceError::PipelineGone)
}

fn walk_dir(
    dir: &Path,
    rel: &Path,
    out: &mut Sink<'_>,
    cancel: &CancellationToken,
    rules: &mut impl WalkRules,
    files: &mut u64,
) -> Result<(), SourceError> {
    if cancel.is_cancelled() {
        return Err(SourceError::Cancelled);
    }
    let meta = std::fs::metadata(dir).map_err(|e| read_err(dir, e))?;
    send(out, rel, EntryKind::Dir, &meta, None, Body::None, rules)?;
    if rules.skip_contents(rel) {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| read_err(dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err(dir, e))?;
    entries.sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
    for entry in entries {
        let path = entry.path();
        let rel = if rel == Path::new(".") {
            PathBuf::from(entry.file_name())
        } else {
            rel.join(entry.file_name())
        };
        if rules.skip(&rel) {
            continue;
        }
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Deleted between listing and stat: it is simply not in this snapshot.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_err(&path, e)),
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            walk_dir(&path, &rel, out, cancel, rules, files)?;
        } else if ft.is_file() {
            *files += 1;
            send(
                out,
                &rel,
                EntryKind::File,
                &meta,
                None,
                Body::File(path),
                rules,
            )?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| read_err(&path, e))?;
            if rules.follow(&rel, &target) {
                walk_dir(&path, &rel, out, cancel, rules, files)?;
            } else {
                send(
                    out,
                    &rel,
                    EntryKind::Symlink,
                    &meta,
                    Some(target),
                    Body::None,
                    rules,
                )?;
            }
        } else {
            tracing::warn!(path = %path.display(), "Skipping a special file (socket, FIFO or device).");
        }
    }
    Ok(())
}
