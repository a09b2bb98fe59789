//! Delta restore (`--delta`): a snapshot into a directory that already holds an older or
//! diverged copy of it (a replica, an old primary, yesterday's restore). What is already right
//! is kept, and only what differs is fetched and written:
//!
//! * entries the snapshot does not have are removed first ([`prune`]);
//! * an existing regular file is kept and cut or grown to the recorded size ([`existing`]);
//!   anything else in the way (a symlink, a directory, a hard link to a file elsewhere) is
//!   removed and the entry written afresh;
//! * each chunk reference of a kept file is checked against the bytes already there
//!   ([`drop_matching`]): a whole chunk by the chunk id of those bytes (the keyed BLAKE3
//!   every chunk is named by), a slice of a chunk (a PostgreSQL page window patched by an
//!   incremental backup) by the id of the window it would sit in. A window still holding the
//!   chunk its unchanged pages come from keeps those pages, and only the changed pages are
//!   fetched and written: a copy restored from the previous backup gets the pages that backup
//!   changed, not whole files as a per-file checksum would.
//!
//! Nothing is trusted that the hash does not prove: a reference is dropped only when the
//! bytes at its place are the bytes it names.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::check;
use super::fs::{open_nofollow, remove_any};
use super::write::Batch;
use crate::pipeline::{PipelineError, SpooledManifest};
use crate::repo::ids::ChunkId;
use crate::repo::keys::{ChunkIdKey, Identity};
use crate::repo::manifest::EntryKind;

/// A kept file's references are checked in units of about this many bytes, in parallel.
const UNIT: u64 = 64 << 20;

/// The key of a name, and whether it is a directory, in the set of the snapshot's names (16
/// bytes each: a million entries cost 16 MiB).
fn name_key(name: &[u8], dir: bool) -> u128 {
    let h = blake3::hash(name);
    u128::from_le_bytes(h.as_bytes()[..16].try_into().expect("16 of 32")) & !1 | u128::from(dir)
}

/// Where the entry `name` (a directory when `dir`) goes: under `target`, or under the
/// directory a redirected name (and what is under it) goes to. Names are compared as paths
/// (`pg_tblspc/./16384` is `pg_tblspc/16384`), so that no spelling reaches a redirected
/// directory through its link.
///
/// # Errors
/// `UnsafePath` (see [`check::safe_path`]); `HostileEntry` for a redirected name that is not
/// a directory in the snapshot.
pub(super) fn place(
    target: &Path,
    redirect: &[(Vec<u8>, PathBuf)],
    name: &[u8],
    dir: bool,
    snapshot: &str,
) -> Result<PathBuf, PipelineError> {
    let p = check::safe_path(target, name, snapshot)?;
    for (prefix, to) in redirect {
        let Ok(rest) = p.strip_prefix(target.join(std::ffi::OsStr::from_bytes(prefix))) else {
            continue;
        };
        if rest.as_os_str().is_empty() && !dir {
            return Err(PipelineError::HostileEntry {
                snapshot: snapshot.to_owned(),
                name: String::from_utf8_lossy(name).into_owned(),
                reason: "is not a directory, yet the directory it names is linked to outside \
                         the target"
                    .to_owned(),
            });
        }
        return Ok(if rest.as_os_str().is_empty() {
            to.clone()
        } else {
            to.join(rest)
        });
    }
    Ok(p)
}

/// Removes from `target` every entry the snapshot does not list (nor lists anything under)
/// as what it is, never following a symlink; returns how many entries were removed (a
/// removed directory counts once). A directory where the snapshot has a file goes, and so
/// does a symlink (or file) where it has a directory: afterwards no link is on the way of
/// anything the restore writes. The links of `redirect` stay, and the directories they
/// lead to are pruned as the subtrees they stand for.
///
/// # Errors
/// A directory cannot be read or an entry removed, naming it; a corrupt manifest.
pub(super) fn prune(
    m: &SpooledManifest,
    identity: &Identity,
    target: &Path,
    redirect: &[(Vec<u8>, PathBuf)],
) -> Result<u64, PipelineError> {
    let mut names = Vec::new();
    let mut last_parent: Vec<u8> = Vec::new();
    m.read::<PipelineError>(identity, &mut |a| {
        let name = &a.name.0;
        names.push(name_key(name, a.kind == EntryKind::Dir));
        // The directories above an entry stay even where the manifest does not list them
        // (pushed once per run of entries in one directory, not once per entry).
        let parent = name
            .iter()
            .rposition(|b| *b == b'/')
            .map_or(&name[..0], |i| &name[..i]);
        if parent != last_parent.as_slice() {
            for (i, _) in name.iter().enumerate().filter(|(_, b)| **b == b'/') {
                names.push(name_key(&name[..i], true));
            }
            last_parent = parent.to_vec();
        }
        Ok(())
    })?;
    names.sort_unstable();
    names.dedup();
    let mut removed = 0;
    let mut stack = vec![(target.to_path_buf(), Vec::new())];
    stack.extend(
        redirect
            .iter()
            .map(|(name, dir)| (dir.clone(), name.clone())),
    );
    while let Some((dir, rel)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| PipelineError::io("reading", &dir, e))?;
        for e in entries {
            let e = e.map_err(|e| PipelineError::io("reading", &dir, e))?;
            let mut name = rel.clone();
            if !name.is_empty() {
                name.push(b'/');
            }
            name.extend_from_slice(e.file_name().as_bytes());
            let path = e.path();
            if redirect.iter().any(|(r, _)| *r == name) {
                continue;
            }
            let is_dir = e
                .file_type()
                .map_err(|err| PipelineError::io("looking at", &path, err))?
                .is_dir();
            if names.binary_search(&name_key(&name, is_dir)).is_ok() {
                if is_dir {
                    stack.push((path, name));
                }
                continue;
            }
            tracing::debug!(path = %path.display(), "Delta restore: not in the snapshot, removed.");
            remove_any(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Makes room for a file entry of `size` bytes at `p`: an existing regular file of its own
/// (not a hard link to one elsewhere) is kept, cut or grown to `size`, and `true` returned;
/// anything else there is removed.
///
/// # Errors
/// The path cannot be looked at, resized or removed.
pub(super) fn existing(p: &Path, size: u64) -> Result<bool, PipelineError> {
    let meta = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(PipelineError::io("looking at", p, e)),
    };
    if meta.is_file() && meta.nlink() == 1 {
        // Changed chunks are written into it; its mode is set from the snapshot afterwards.
        if meta.mode() & 0o600 != 0o600 {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(meta.mode() | 0o600))
                .map_err(|e| PipelineError::io("making writable", p, e))?;
        }
        if meta.len() != size {
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(p)
                .and_then(|f| f.set_len(size))
                .map_err(|e| PipelineError::io("resizing", p, e))?;
        }
        return Ok(true);
    }
    remove_any(p)?;
    Ok(false)
}

/// Drops from `batch` the pieces whose bytes the kept files (`kept[file]`) already hold, and
/// takes them off the files' remaining bytes; returns the bytes kept. The batch's pieces are
/// still in manifest order (each file's together, by offset).
///
/// # Errors
/// A kept file cannot be opened or read.
pub(super) fn drop_matching(
    batch: &mut Batch,
    kept: &[bool],
    ids: &ChunkIdKey,
    raw_len: &(dyn Fn(&ChunkId) -> Option<u32> + Sync),
) -> Result<u64, PipelineError> {
    // Units of work: runs of one kept file's pieces, split every UNIT bytes of the file.
    let mut units = Vec::new();
    let mut i = 0;
    while i < batch.pieces.len() {
        let p = &batch.pieces[i];
        let mut j = i + 1;
        while j < batch.pieces.len()
            && batch.pieces[j].file == p.file
            && batch.pieces[j].offset / UNIT == p.offset / UNIT
        {
            j += 1;
        }
        if kept[p.file as usize] {
            units.push(i..j);
        }
        i = j;
    }
    let mut keep = vec![false; batch.pieces.len()];
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(2, std::num::NonZero::get)
        .min(units.len());
    let results: Vec<Result<Vec<(usize, bool)>, PipelineError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    let mut buf = Vec::new();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let Some(unit) = units.get(n) else {
                            return Ok(out);
                        };
                        check_unit(batch, unit.clone(), ids, raw_len, &mut buf, &mut out)?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(PipelineError::Internal("a delta check died".into())))
            })
            .collect()
    });
    for r in results {
        for (n, k) in r? {
            keep[n] = k;
        }
    }
    let mut bytes = 0;
    let mut n = 0;
    batch.pieces.retain(|p| {
        let k = keep[n];
        n += 1;
        if k {
            bytes += u64::from(p.len);
            batch.remaining[p.file as usize].fetch_sub(u64::from(p.len), Ordering::Relaxed);
        }
        !k
    });
    Ok(bytes)
}

/// Checks the pieces `unit` of one file against its bytes, pushing `(piece, kept)`.
fn check_unit(
    batch: &Batch,
    unit: std::ops::Range<usize>,
    ids: &ChunkIdKey,
    raw_len: &(dyn Fn(&ChunkId) -> Option<u32> + Sync),
    buf: &mut Vec<u8>,
    out: &mut Vec<(usize, bool)>,
) -> Result<(), PipelineError> {
    let file = batch.pieces[unit.start].file as usize;
    let path = &batch.paths[file];
    let size = batch.entries[file].size;
    let f = open_nofollow(path, false).map_err(|e| PipelineError::io("opening", path, e))?;
    let hash = |at: u64, len: u32, buf: &mut Vec<u8>| -> Result<ChunkId, PipelineError> {
        buf.resize(len as usize, 0);
        f.read_exact_at(buf, at)
            .map_err(|e| PipelineError::io("reading", path, e))?;
        Ok(ids.chunk_id(buf))
    };
    // The windows already hashed: (start, chunk) → whether the bytes there are that chunk.
    let mut windows: HashMap<(u64, ChunkId), bool> = HashMap::new();
    for n in unit {
        let p = &batch.pieces[n];
        let kept = match p.start {
            None => hash(p.offset, p.len, buf)? == p.id,
            Some(s) => {
                // A slice: kept when the chunk it is cut from sits whole at the place that
                // puts the slice here. Only places a page window can be at are tried (a
                // multiple of the chunk's length, or the file's last window), so that a
                // changed page's slice of a delta blob costs no hashing.
                let base = p.offset.checked_sub(u64::from(s));
                match (base, raw_len(&p.id)) {
                    (Some(base), Some(len))
                        if len > 0
                            && base + u64::from(len) <= size
                            && (base % u64::from(len) == 0 || base + u64::from(len) == size) =>
                    {
                        match windows.get(&(base, p.id)) {
                            Some(&k) => k,
                            None => {
                                let k = hash(base, len, buf)? == p.id;
                                windows.insert((base, p.id), k);
                                k
                            }
                        }
                    }
                    _ => false,
                }
            }
        };
        out.push((n, kept));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirected_names_are_matched_as_paths_and_must_be_directories() {
        let (target, ts) = (Path::new("/restore"), PathBuf::from("/elsewhere/ts"));
        let redirect = vec![(b"pg_tblspc/16384".to_vec(), ts.clone())];
        let place = |name: &[u8], dir| place(target, &redirect, name, dir, "s");
        assert_eq!(place(b"pg_tblspc/16384", true).unwrap(), ts);
        for spelling in [
            &b"pg_tblspc/16384/PG_15/5/1259"[..],
            b"pg_tblspc/./16384/PG_15/5/1259",
            b"pg_tblspc//16384/PG_15/5/1259",
            b"./pg_tblspc/16384/PG_15/5/1259",
        ] {
            assert_eq!(
                place(spelling, false).unwrap(),
                ts.join("PG_15/5/1259"),
                "{}",
                String::from_utf8_lossy(spelling)
            );
        }
        assert_eq!(
            place(b"pg_tblspc/163840", false).unwrap(),
            target.join("pg_tblspc/163840")
        );
        assert!(matches!(
            place(b"pg_tblspc/16384", false),
            Err(PipelineError::HostileEntry { .. })
        ));
        assert!(place(b"pg_tblspc/16384/../../../etc/passwd", false).is_err());
    }
}
