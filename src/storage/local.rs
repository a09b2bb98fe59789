//! A repository in a local directory. Writes go to a temporary file in the destination folder,
//! are fsync'd, then linked (create-only) or renamed (overwrite) into place, and the folder is
//! fsync'd: after success the object survives a crash; before it, only a `.tmp-*` file can be
//! left, which listings ignore.

use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rand::RngCore;

use super::{Capabilities, ObjectMeta, PutMode, StorageError};
use crate::repo::layout::{KeyPrefix, ObjectKey};

const TMP_PREFIX: &str = ".tmp-";
/// Where backups spool packs (its name starts with [`TMP_PREFIX`]: listings skip it).
const SPOOL_DIR: &str = ".tmp-spool";

pub(super) struct LocalStorage {
    root: PathBuf,
    location: String,
}

impl LocalStorage {
    pub(super) fn new(root: PathBuf, location: String) -> Self {
        Self { root, location }
    }

    pub(super) fn file(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn io(&self, op: &'static str, key: &str, source: std::io::Error) -> StorageError {
        if source.kind() == std::io::ErrorKind::NotFound {
            StorageError::NotFound {
                key: key.to_owned(),
                location: self.location.clone(),
            }
        } else {
            StorageError::Io {
                op,
                key: key.to_owned(),
                location: self.location.clone(),
                source,
            }
        }
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(f)
            .await
            .expect("storage I/O task panicked")
    }

    pub(super) async fn get(
        &self,
        key: &ObjectKey,
        range: Option<Range<u64>>,
    ) -> Result<Bytes, StorageError> {
        let path = self.root.join(key.as_str());
        let r = self
            .blocking(move || -> std::io::Result<(u64, Vec<u8>)> {
                let mut f = std::fs::File::open(&path)?;
                let size = f.metadata()?.len();
                match range {
                    None => {
                        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                        f.read_to_end(&mut buf)?;
                        Ok((size, buf))
                    }
                    Some(r) => {
                        let end = r.end.min(size);
                        let mut buf =
                            vec![0; usize::try_from(end.saturating_sub(r.start)).unwrap_or(0)];
                        f.seek(SeekFrom::Start(r.start))?;
                        f.read_exact(&mut buf)?;
                        Ok((r.end - r.start, buf))
                    }
                }
            })
            .await
            .map_err(|e| self.io("get", key.as_str(), e))?;
        let (expected, buf) = r;
        if buf.len() as u64 != expected {
            return Err(StorageError::Truncated {
                key: key.to_string(),
                location: self.location.clone(),
                expected,
                got: buf.len() as u64,
            });
        }
        Ok(Bytes::from(buf))
    }

    pub(super) async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        match tokio::fs::metadata(self.root.join(key.as_str())).await {
            Ok(m) => Ok(Some(ObjectMeta {
                key: key.clone(),
                size: m.len(),
                modified: m.modified().ok().map(Into::into),
                storage_class: None,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("head", key.as_str(), e)),
        }
    }

    pub(super) async fn list(&self, prefix: &KeyPrefix) -> Result<Vec<ObjectMeta>, StorageError> {
        let root = self.root.clone();
        let start = root.join(prefix.as_str());
        self.blocking(move || {
            let mut out = Vec::new();
            walk(&root, &start, &mut out)?;
            Ok(out)
        })
        .await
        .map_err(|e| self.io("list", prefix.as_str(), e))
    }

    /// Compare-and-swap under a lock file next to the object (see [`super::Storage::put_if`]).
    pub(super) async fn put_if(
        &self,
        key: &ObjectKey,
        body: Bytes,
        expected: Option<String>,
    ) -> Result<(), StorageError> {
        let path = self.root.join(key.as_str());
        let r = self
            .blocking(move || -> std::io::Result<bool> {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let lock = path.with_extension("lock");
                let mut tries = 0;
                let _guard = loop {
                    match std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&lock)
                    {
                        Ok(_) => break LockFile(lock.clone()),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 100 => {
                            // A holder that died leaves its lock: stale after 10 s.
                            let stale = std::fs::metadata(&lock)
                                .and_then(|m| m.modified())
                                .is_ok_and(|t| t.elapsed().is_ok_and(|a| a.as_secs() > 10));
                            if stale {
                                let _ = std::fs::remove_file(&lock);
                            }
                            tries += 1;
                            std::thread::sleep(std::time::Duration::from_millis(20));
                        }
                        Err(e) => return Err(e),
                    }
                };
                let current = match std::fs::read(&path) {
                    Ok(b) => Some(blake3::hash(&b).to_hex().to_string()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                };
                if current != expected {
                    return Ok(false);
                }
                write_atomic(&path, &body, PutMode::Overwrite)?;
                Ok(true)
            })
            .await
            .map_err(|e| self.io("put", key.as_str(), e))?;
        if r {
            Ok(())
        } else {
            Err(StorageError::AlreadyExists {
                key: key.to_string(),
                location: self.location.clone(),
            })
        }
    }

    /// See [`super::Storage::spool_dir`].
    pub(super) fn spool_dir(&self) -> PathBuf {
        self.root.join(SPOOL_DIR)
    }

    /// Publishes the file at `src` as `key`: synced, then linked into place (no copy when it
    /// is on the same filesystem, as the spool directory is), then the directory synced.
    pub(super) async fn put_file(
        &self,
        key: &ObjectKey,
        src: &Path,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let (path, src) = (self.root.join(key.as_str()), src.to_owned());
        let r = self
            .blocking(move || -> std::io::Result<()> {
                let copy = || write_atomic(&path, &std::fs::read(&src)?, mode);
                if mode == PutMode::Overwrite {
                    return copy();
                }
                std::fs::File::open(&src)?.sync_all()?;
                let dir = path.parent().expect("object paths have a parent");
                std::fs::create_dir_all(dir)?;
                // link(2) fails if the name exists: an atomic create-only publish.
                match std::fs::hard_link(&src, &path) {
                    Ok(()) => std::fs::File::open(dir)?.sync_all(),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
                    // Another filesystem: copy it.
                    Err(_) => copy(),
                }
            })
            .await;
        self.put_result(key, r)
    }

    /// A write's outcome as the storage error callers expect.
    fn put_result(&self, key: &ObjectKey, r: std::io::Result<()>) -> Result<(), StorageError> {
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StorageError::AlreadyExists {
                    key: key.to_string(),
                    location: self.location.clone(),
                })
            }
            Err(e) => Err(StorageError::Io {
                op: "put",
                key: key.to_string(),
                location: self.location.clone(),
                source: e,
            }),
        }
    }

    pub(super) async fn put(
        &self,
        key: &ObjectKey,
        body: Bytes,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let path = self.root.join(key.as_str());
        let r = self
            .blocking(move || write_atomic(&path, &body, mode))
            .await;
        self.put_result(key, r)
    }

    pub(super) async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.root.join(key.as_str())).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::Io {
                op: "delete",
                key: key.to_string(),
                location: self.location.clone(),
                source: e,
            }),
        }
    }

    pub(super) async fn probe(&self) -> Result<Capabilities, StorageError> {
        // Writability is the only thing to find out; the rest is fixed for a filesystem.
        let key = crate::repo::layout::scratch("probe");
        self.put(&key, Bytes::from_static(b"probe"), PutMode::Overwrite)
            .await?;
        self.delete(&key).await?;
        Ok(Capabilities {
            conditional_writes: true,
            ..Capabilities::default()
        })
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<super::ObjectMeta>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let ft = entry.file_type()?;
        let path = entry.path();
        if ft.is_dir() {
            walk(root, &path, out)?;
        } else if ft.is_file() {
            let m = entry.metadata()?;
            let rel = path
                .strip_prefix(root)
                .expect("walked paths are under the root")
                .to_string_lossy()
                .into_owned();
            out.push(ObjectMeta {
                key: ObjectKey::from_listed(rel),
                size: m.len(),
                modified: m.modified().ok().map(Into::into),
                storage_class: None,
            });
        }
    }
    Ok(())
}

/// Writes `body` to `path` so that the file is either absent or complete, even across a crash.
fn write_atomic(path: &Path, body: &[u8], mode: PutMode) -> std::io::Result<()> {
    let dir = path.parent().expect("object paths have a parent");
    std::fs::create_dir_all(dir)?;
    if mode == PutMode::CreateOnly && path.exists() {
        return Err(std::io::ErrorKind::AlreadyExists.into());
    }
    let mut rnd = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut rnd);
    let tmp = dir.join(format!("{TMP_PREFIX}{}", hex::encode(rnd)));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        drop(f);
        match mode {
            // link(2) fails if the name exists: an atomic create-only publish.
            PutMode::CreateOnly => std::fs::hard_link(&tmp, path)?,
            PutMode::Overwrite => std::fs::rename(&tmp, path)?,
        }
        std::fs::File::open(dir)?.sync_all()
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Removes the lock file when dropped.
struct LockFile(PathBuf);

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
