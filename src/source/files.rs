//! The `files` source: a directory tree with permissions, mtimes and symlinks.
//!
//! The walk itself (order, symlinks, special files) is `source::tree`; this module adds the
//! configured exclusions.

use std::path::{Path, PathBuf};

use super::tree::{self, WalkRules};
use super::{SnapshotCx, SnapshotReport, SourceError};

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
            return Err(SourceError::Setup(format!(
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
        let facts = serde_json::json!({ "path": root.display().to_string(), "host": crate::host::name().unwrap_or_default() });
        let (sized, exclude) = (root.clone(), self.exclude.clone());
        cx.size_in_background(move |cancel| tree::size(&sized, cancel, &mut Exclusions(&exclude)));
        tokio::task::spawn_blocking(move || {
            let files = tree::walk(
                &self.root,
                &cx.out,
                &cx.cancel,
                &mut Exclusions(&self.exclude),
            )?;
            Ok(SnapshotReport {
                facts,
                public_facts: [("files".to_owned(), serde_json::json!(files))]
                    .into_iter()
                    .collect(),
            })
        })
        .await
        .map_err(|_| SourceError::Panicked("directory walker"))?
    }
}

/// `files` rules: skip the configured exclusions, chunk by content, take unchanged files from
/// the last backup.
struct Exclusions<'a>(&'a [PathBuf]);

impl WalkRules for Exclusions<'_> {
    fn skip(&self, rel: &Path) -> bool {
        self.0.iter().any(|x| rel.starts_with(x))
    }
    fn skip_unchanged(&self) -> bool {
        true
    }
}
