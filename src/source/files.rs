//! The `files` source: a directory tree with permissions, mtimes and symlinks.
//!
//! Entries are sent depth-first in byte order of their names, so two snapshots of the same
//! tree list artifacts in the same order. Sockets, FIFOs and device nodes are skipped with a
//! warning; symlinks are recorded, never followed.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Artifact, Body, Chunking, SnapshotCx, SnapshotReport, SourceError};
use crate::repo::manifest::{EntryKind, EntryName};

/// Backs up one directory.
pub struct FilesSource {
    root: PathBuf,
    exclude: Vec<PathBuf>,
}

impl FilesSource {
    /// A source for `root`, skipping `exclude` (relative paths).
    pub fn new(root: PathBuf, exclude: Vec<PathBuf>) -> Self {
        Self { root, exclude }
    }

    pub(super) fn check(&self) -> Result<(), SourceError> {
        let m = std::fs::metadata(&self.root).map_err(|e| SourceError::Read {
            path: self.root.display().to_string(),
            source: e,
        })?;
        if !m.is_dir() {
            return Err(SourceError::Unusable(format!(
                "{} is not a directory",
                self.root.display()
            )));
        }
        std::fs::read_dir(&self.root).map_err(|e| SourceError::Read {
            path: self.root.display().to_string(),
            source: e,
        })?;
        Ok(())
    }

    pub(super) async fn snapshot(self, cx: SnapshotCx) -> Result<SnapshotReport, SourceError> {
        self.check()?;
        let root = self.root.clone();
        let facts = serde_json::json!({ "path": root.display().to_string(), "host": hostname() });
        tokio::task::spawn_blocking(move || {
            let mut files = 0u64;
            self.walk(&self.root, Path::new("."), &cx, &mut files)?;
            Ok(SnapshotReport {
                facts,
                public_facts: [("files".to_owned(), serde_json::json!(files))]
                    .into_iter()
                    .collect(),
            })
        })
        .await
        .map_err(|_| SourceError::Unusable("the directory walker panicked".to_owned()))?
    }

    fn walk(
        &self,
        dir: &Path,
        rel: &Path,
        cx: &SnapshotCx,
        files: &mut u64,
    ) -> Result<(), SourceError> {
        if cx.cancel.is_cancelled() {
            return Err(SourceError::Cancelled);
        }
        let read_err = |p: &Path, e| SourceError::Read {
            path: p.display().to_string(),
            source: e,
        };
        let meta = std::fs::symlink_metadata(dir).map_err(|e| read_err(dir, e))?;
        send(
            cx,
            Artifact {
                name: name_of(rel),
                kind: EntryKind::Dir,
                mode: meta.permissions().mode() & 0o7777,
                mtime_ns: Some(mtime_ns(&meta)),
                target: None,
                body: Body::None,
                chunking: Chunking::ContentDefined,
            },
        )?;
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
            if self.exclude.iter().any(|x| rel.starts_with(x)) {
                continue;
            }
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                // Deleted between listing and stat: it is simply not in this snapshot.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(read_err(&path, e)),
            };
            let ft = meta.file_type();
            let mode = meta.permissions().mode() & 0o7777;
            if ft.is_dir() {
                self.walk(&path, &rel, cx, files)?;
            } else if ft.is_file() {
                *files += 1;
                send(
                    cx,
                    Artifact {
                        name: name_of(&rel),
                        kind: EntryKind::File,
                        mode,
                        mtime_ns: Some(mtime_ns(&meta)),
                        target: None,
                        body: Body::File(path),
                        chunking: Chunking::ContentDefined,
                    },
                )?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(|e| read_err(&path, e))?;
                send(
                    cx,
                    Artifact {
                        name: name_of(&rel),
                        kind: EntryKind::Symlink,
                        mode,
                        mtime_ns: Some(mtime_ns(&meta)),
                        target: Some(EntryName(target.as_os_str().as_bytes().to_vec())),
                        body: Body::None,
                        chunking: Chunking::ContentDefined,
                    },
                )?;
            } else {
                tracing::warn!(path = %path.display(), "Skipping a special file (socket, FIFO or device).");
            }
        }
        Ok(())
    }
}

fn send(cx: &SnapshotCx, a: Artifact) -> Result<(), SourceError> {
    cx.out
        .blocking_send(a)
        .map_err(|_| SourceError::PipelineGone)
}

fn name_of(rel: &Path) -> EntryName {
    EntryName(rel.as_os_str().as_bytes().to_vec())
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
