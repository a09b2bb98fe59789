//! What a restore checks before it writes anything (everything read from the repository is
//! input from a possibly hostile writer): every entry's path, kind and lengths on its own;
//! the tree's shape (no path twice, nothing under a file or symlink of the snapshot); with
//! `--force`, that no directory on the way is a symlink; after the indexes are read, that
//! every chunk is located and that each reference fits its chunk.
//!
//! Streamed: a manifest in tree order (what dr's walker writes: depth first, names in byte
//! order) is checked holding only the path from the root to the current entry. A manifest in
//! another order (PostgreSQL stream mode writes the server's tar order, local mode its
//! `backup_label` last) has its paths collected and sorted first: memory in proportion to its
//! entries, which for a PostgreSQL cluster are thousands, not millions.

use std::path::{Component, Path, PathBuf};

use crate::pipeline::index_set::Located;
use crate::pipeline::{PipelineError, SpooledManifest};
use crate::repo::keys::Identity;
use crate::repo::manifest::{Artifact, ChunkRef, EntryKind};

/// Largest chunk a manifest may list (dr's chunks are at most 2 MiB; a larger claim is a
/// forged or broken manifest, and would let it size buffers or files at will).
pub(super) const MAX_CHUNK: u32 = 16 << 20;

/// Maps a manifest entry name to a path under `target`, refusing anything that could escape it.
pub(super) fn safe_path(
    target: &Path,
    name: &[u8],
    snapshot: &str,
) -> Result<PathBuf, PipelineError> {
    use std::os::unix::ffi::OsStrExt;
    let rel = Path::new(std::ffi::OsStr::from_bytes(name));
    let unsafe_path = || PipelineError::UnsafePath {
        snapshot: snapshot.to_owned(),
        name: String::from_utf8_lossy(name).into_owned(),
    };
    if name.is_empty() || rel.is_absolute() || name.contains(&0) {
        return Err(unsafe_path());
    }
    let mut out = target.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return Err(unsafe_path()),
        }
    }
    Ok(out)
}

/// What the first reading found: the bytes to write and the chunks to locate.
pub(super) struct Checked {
    pub bytes: u64,
    pub needed: Located,
}

/// Reads the manifest once, refusing it before anything is written if any entry is unsafe.
///
/// # Errors
/// `UnsafePath`, `HostileEntry`, `ThroughSymlink` (with `force`), a corrupt manifest.
pub(super) fn entries(
    m: &SpooledManifest,
    identity: &Identity,
    target: &Path,
    force: bool,
) -> Result<Checked, PipelineError> {
    let snapshot = m.snapshot.to_string();
    let mut c = Checker {
        target,
        snapshot: &snapshot,
        force,
        tree: Tree::default(),
        sorted: true,
        links_checked: target.to_path_buf(),
        bytes: 0,
        needed: Located::default(),
    };
    m.read(identity, &mut |a| c.push(&a))?;
    let Checker {
        sorted,
        bytes,
        mut needed,
        ..
    } = c;
    needed.seal();
    if !sorted {
        // Not in tree order: the same shape check over the sorted paths.
        let mut all: Vec<(Box<Path>, EntryKind)> = Vec::new();
        m.read(identity, &mut |a| {
            let p = safe_path(target, &a.name.0, &snapshot)?;
            let rel = p.strip_prefix(target).unwrap_or(&p).into();
            all.push((rel, a.kind));
            Ok::<_, PipelineError>(())
        })?;
        // Stable: of two equal paths the one listed first comes first.
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tree = Tree::default();
        for (rel, kind) in &all {
            tree.push(rel, *kind)
                .map_err(|reason| refuse(&snapshot, rel, reason))?;
        }
    }
    Ok(Checked { bytes, needed })
}

fn refuse(snapshot: &str, rel: &Path, reason: String) -> PipelineError {
    PipelineError::HostileEntry {
        snapshot: snapshot.to_owned(),
        name: if rel.as_os_str().is_empty() {
            ".".to_owned()
        } else {
            rel.display().to_string()
        },
        reason,
    }
}

struct Checker<'a> {
    target: &'a Path,
    snapshot: &'a str,
    force: bool,
    tree: Tree,
    /// In tree order so far (the shape is checked as entries come).
    sorted: bool,
    /// A directory of the target whose ancestors (and itself) are known not to be symlinks.
    links_checked: PathBuf,
    bytes: u64,
    needed: Located,
}

impl Checker<'_> {
    fn push(&mut self, a: &Artifact) -> Result<(), PipelineError> {
        let p = safe_path(self.target, &a.name.0, self.snapshot)?;
        let rel = p.strip_prefix(self.target).unwrap_or(&p);
        let refuse = |reason: String| refuse(self.snapshot, rel, reason);
        if rel.as_os_str().is_empty() && a.kind != EntryKind::Dir {
            return Err(refuse("names the target directory itself".to_owned()));
        }
        match a.kind {
            EntryKind::File | EntryKind::Stream => {
                if let Some(c) = a.chunks.iter().find(|c| c.1 == 0 || c.1 > MAX_CHUNK) {
                    return Err(refuse(format!("lists chunk {} as {} bytes", c.0, c.1)));
                }
                let sum: u64 = a.chunks.iter().map(|c| u64::from(c.1)).sum();
                if sum != a.size {
                    return Err(refuse(format!(
                        "has chunks of {sum} bytes for a size of {}",
                        a.size
                    )));
                }
            }
            EntryKind::Dir | EntryKind::Symlink if !a.chunks.is_empty() => {
                return Err(refuse("is a directory or symlink with data".to_owned()));
            }
            EntryKind::Symlink if a.target.as_ref().is_none_or(|t| t.0.is_empty()) => {
                return Err(refuse("is a symlink without a target".to_owned()));
            }
            EntryKind::Dir | EntryKind::Symlink => {}
        }
        if self.sorted {
            match self.tree.push(rel, a.kind) {
                Ok(true) => {}
                Ok(false) => self.sorted = false,
                Err(reason) => return Err(refuse(reason)),
            }
        }
        if self.force {
            self.no_links_on_the_way(&p, a.kind == EntryKind::Dir)?;
        }
        self.bytes += a.size;
        for c in &a.chunks {
            self.needed.need(&c.0);
        }
        Ok(())
    }

    /// With `--force`: refuses when a directory the entry goes into (or the entry itself, a
    /// directory) is a symlink in the existing tree: writing through it would land outside
    /// the target. Directories already looked at (the previous entry's) are not again.
    fn no_links_on_the_way(&mut self, p: &Path, dir: bool) -> Result<(), PipelineError> {
        let own = dir.then_some(p);
        let start = own.or_else(|| p.parent()).unwrap_or(p).to_path_buf();
        for d in own
            .into_iter()
            .chain(p.ancestors().skip(1))
            .take_while(|d| *d != self.target)
        {
            if self.links_checked.starts_with(d) {
                break;
            }
            match std::fs::symlink_metadata(d) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(PipelineError::ThroughSymlink {
                        path: d.display().to_string(),
                    });
                }
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(PipelineError::io("looking at", d, e));
                }
                _ => {}
            }
        }
        self.links_checked = start;
        Ok(())
    }
}

/// The shape of a tree whose entries come in tree order (`Path`'s order, component by
/// component): the entries from the root to the last one, each with its kind.
#[derive(Default)]
struct Tree {
    stack: Vec<(Box<Path>, EntryKind)>,
}

impl Tree {
    /// Takes the next entry: `Ok(false)` when it is not after the last one in tree order
    /// (nothing is then known of the shape); a reason when it is listed twice or lies under
    /// a file or symlink. In tree order an entry's listed ancestors are all on the stack:
    /// everything between an entry and its descendants is a descendant too.
    fn push(&mut self, rel: &Path, kind: EntryKind) -> Result<bool, String> {
        if let Some((last, _)) = self.stack.last() {
            match (**last).cmp(rel) {
                std::cmp::Ordering::Equal => return Err("is listed twice".to_owned()),
                std::cmp::Ordering::Greater => return Ok(false),
                std::cmp::Ordering::Less => {}
            }
        }
        while self.stack.last().is_some_and(|(d, _)| !rel.starts_with(d)) {
            self.stack.pop();
        }
        if let Some((d, k)) = self.stack.last()
            && *k != EntryKind::Dir
        {
            return Err(format!(
                "lies under {}, which the snapshot lists as a file or symlink",
                d.display()
            ));
        }
        self.stack.push((rel.into(), kind));
        Ok(true)
    }
}

/// Reads the manifest again now that the chunks are located: every reference must be to a
/// located chunk and fit it (a whole chunk's length exactly, a slice inside it). The first
/// bad reference in manifest order is reported.
///
/// # Errors
/// `MissingChunk` naming the chunk, entry and location; `HostileEntry`.
pub(super) fn located(
    m: &SpooledManifest,
    identity: &Identity,
    needed: &Located,
    location: &str,
) -> Result<(), PipelineError> {
    let snapshot = m.snapshot.to_string();
    m.read::<PipelineError>(identity, &mut |a| {
        let name = || String::from_utf8_lossy(&a.name.0).into_owned();
        for c in &a.chunks {
            let Some(loc) = needed.get(&c.0) else {
                return Err(PipelineError::MissingChunk {
                    chunk: c.0.to_hex(),
                    artifact: name(),
                    location: location.to_owned(),
                });
            };
            if !c.fits(loc.raw_len) {
                return Err(PipelineError::HostileEntry {
                    snapshot: snapshot.clone(),
                    name: name(),
                    reason: unfit(c, loc.raw_len),
                });
            }
        }
        Ok(())
    })
}

fn unfit(c: &ChunkRef, raw_len: u32) -> String {
    match c.2 {
        None => format!(
            "lists chunk {} as {} bytes, its index as {raw_len}",
            c.0, c.1
        ),
        Some(s) => format!(
            "lists bytes {s}..{} of chunk {}, which its index has as {raw_len} bytes",
            u64::from(s) + u64::from(c.1),
            c.0
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_names_are_refused() {
        let t = Path::new("/restore");
        assert_eq!(
            safe_path(t, b"a/b", "s").unwrap(),
            Path::new("/restore/a/b")
        );
        assert_eq!(safe_path(t, b".", "s").unwrap(), Path::new("/restore"));
        for bad in [&b"../x"[..], b"/etc/passwd", b"a/../../x", b"", b"a\0b"] {
            assert!(
                matches!(
                    safe_path(t, bad, "s"),
                    Err(PipelineError::UnsafePath { .. })
                ),
                "{bad:?}"
            );
        }
    }

    fn shape(entries: &[(&str, EntryKind)]) -> Result<bool, String> {
        let mut t = Tree::default();
        let mut sorted = true;
        for (p, k) in entries {
            sorted &= t.push(Path::new(p), *k)?;
            if !sorted {
                break;
            }
        }
        Ok(sorted)
    }

    #[test]
    fn the_shape_of_a_tree_in_tree_order_is_checked_as_it_comes() {
        use EntryKind::{Dir, File, Symlink};
        // What the walker writes: depth first, names in byte order ("a/b" before "a-b").
        let walk = [
            ("", Dir),
            ("a", Dir),
            ("a/b", File),
            ("a/c", Dir),
            ("a/c/d", File),
            ("a-b", File),
            ("b", Symlink),
        ];
        assert_eq!(shape(&walk), Ok(true));
        assert_eq!(
            shape(&[("", Dir), ("l", Symlink), ("l", File)]),
            Err("is listed twice".to_owned())
        );
        let under = shape(&[("", Dir), ("d", Symlink), ("d/x", File)]).unwrap_err();
        assert!(under.contains("lies under d"), "{under}");
        // Under a file whose parent directories are not listed.
        let deep = shape(&[("", Dir), ("f", File), ("f/x/y", File)]).unwrap_err();
        assert!(deep.contains("lies under f"), "{deep}");
        // Siblings after a file are fine; an entry out of order is reported as such.
        assert_eq!(shape(&[("", Dir), ("f", File), ("g", File)]), Ok(true));
        assert_eq!(shape(&[("", Dir), ("b", File), ("a", File)]), Ok(false));
    }
}
