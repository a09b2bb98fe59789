//! The restore's filesystem steps, none of which follows a symlink: creating private
//! directories and files, giving files and directories their recorded modes and times
//! through handles opened without following links, creating symlinks, syncing directories.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::pipeline::PipelineError;
use crate::repo::manifest::{Artifact, EntryKind};

/// Removes whatever is at `p` (not following a symlink); nothing there is fine.
pub(super) fn remove_existing(p: &Path) -> Result<(), PipelineError> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(PipelineError::io("replacing", p, e))
        }
        _ => Ok(()),
    }
}

/// Removes `p` whatever it is (a directory with its contents), not following a symlink;
/// nothing there is fine.
pub(super) fn remove_any(p: &Path) -> Result<(), PipelineError> {
    let r = match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    r.map_err(|e| PipelineError::io("removing", p, e))
}

/// Creates a private file of `len` bytes (a hole, if any), never through a symlink.
pub(super) fn create_nofollow(p: &Path, len: u64) -> Result<(), PipelineError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
        .and_then(|f| if len > 0 { f.set_len(len) } else { Ok(()) })
        .map_err(|e| PipelineError::io("creating", p, e))
}

/// Opens `p` to read, failing on a symlink (`dir`: and on anything but a directory).
pub(super) fn open_nofollow(p: &Path, dir: bool) -> std::io::Result<std::fs::File> {
    let flags = libc::O_NOFOLLOW | if dir { libc::O_DIRECTORY } else { 0 };
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(p)
}

/// Creates `dir` and any missing parents with mode 0700 (restore applies recorded modes last).
pub(super) fn private_dir(dir: &Path) -> Result<(), PipelineError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| PipelineError::io("creating", dir, e))
}

/// Syncs each of `dirs` once (its entries and its own mode and times are then on disk).
///
/// # Errors
/// A directory cannot be opened or synced, naming it.
pub fn sync_dirs<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> Result<(), PipelineError> {
    // The parent of a relative target (`--target-dir out`) is the empty path: the current
    // directory.
    let dirs: std::collections::BTreeSet<&Path> = dirs
        .into_iter()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .collect();
    for d in dirs {
        open_nofollow(d, true)
            .and_then(|f| f.sync_all())
            .map_err(|e| PipelineError::io("syncing", d, e))?;
    }
    Ok(())
}

fn file_time(ns: Option<i64>) -> Option<filetime::FileTime> {
    ns.map(|ns| {
        filetime::FileTime::from_unix_time(
            ns.div_euclid(1_000_000_000),
            u32::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or(0),
        )
    })
}

fn set_mode_and_time(
    f: &std::fs::File,
    p: &Path,
    mode: u32,
    ns: Option<i64>,
) -> Result<(), PipelineError> {
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| PipelineError::io("setting permissions of", p, e))?;
    if let Some(t) = file_time(ns) {
        filetime::set_file_handle_times(f, None, Some(t))
            .map_err(|e| PipelineError::io("setting the time of", p, e))?;
    }
    Ok(())
}

/// A written batch's files (`entries` at `paths`) get their permissions and times (their sizes checked against the
/// manifest on the way), then its symlinks are created. Safe before later batches are
/// written: no entry lies under a symlink of the snapshot (checked), and nothing is opened
/// through one.
pub(super) fn finish_batch(
    entries: &[Artifact],
    paths: &[Box<Path>],
    snapshot: &str,
    keep_setuid: bool,
) -> Result<(), PipelineError> {
    let entries = || entries.iter().zip(paths);
    for (a, p) in entries().filter(|(a, _)| matches!(a.kind, EntryKind::File | EntryKind::Stream)) {
        let f = open_nofollow(p, false).map_err(|e| PipelineError::io("opening", p, e))?;
        let len = f
            .metadata()
            .map_err(|e| PipelineError::io("looking at", p, e))?
            .len();
        if len != a.size {
            return Err(PipelineError::HostileEntry {
                snapshot: snapshot.to_owned(),
                name: String::from_utf8_lossy(&a.name.0).into_owned(),
                reason: format!("was restored with {len} bytes, not its {}", a.size),
            });
        }
        set_mode_and_time(&f, p, file_mode(a.mode, keep_setuid), a.mtime_ns)?;
    }
    for (a, p) in entries().filter(|(a, _)| a.kind == EntryKind::Symlink) {
        let target = a
            .target
            .as_ref()
            .map(|t| PathBuf::from(OsStr::from_bytes(&t.0)))
            .unwrap_or_default();
        std::os::unix::fs::symlink(&target, p)
            .map_err(|e| PipelineError::io("creating symlink", p, e))?;
        if let Some(t) = file_time(a.mtime_ns) {
            filetime::set_symlink_file_times(p, t, t)
                .map_err(|e| PipelineError::io("setting the time of", p, e))?;
        }
    }
    Ok(())
}

/// Directories' permissions and times, deepest first (their times change whenever an entry
/// is created in them, and a read-only mode would block a later step).
pub(super) fn finish_dirs(dirs: &mut [(Box<Path>, u32, Option<i64>)]) -> Result<(), PipelineError> {
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
    for (p, mode, ns) in dirs.iter() {
        let f = open_nofollow(p, true).map_err(|e| PipelineError::io("opening", p, e))?;
        // Setgid and sticky bits on directories are kept (group inheritance, /tmp-like dirs).
        set_mode_and_time(&f, p, mode & 0o3777, *ns)?;
    }
    Ok(())
}

/// The permission bits a restored file gets: setuid/setgid only when asked for (a hostile
/// writer could otherwise plant a setuid file owned by the restoring user, often root).
fn file_mode(recorded: u32, keep_setuid: bool) -> u32 {
    if keep_setuid {
        recorded & 0o7777
    } else {
        recorded & 0o1777
    }
}
