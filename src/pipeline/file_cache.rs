//! What the last backup of a tree saw of each file, kept on the writer's host, so that the next
//! backup reuses the chunk list of a file whose size, mtime, ctime and inode have not changed
//! instead of reading it (restic's rule), and compares a PostgreSQL relation file with the
//! last backup of it page by page (`pages`). Writers cannot read manifests (they are encrypted to
//! the restore identity), so this is local state, not repository metadata.
//!
//! It only saves reading: a cached chunk list is used only when the repository's index still
//! holds every one of its chunks outside the packs prune is deleting, so a cache that is stale,
//! from another repository, or lost, at worst makes a backup read files again. `dr backup
//! --force-read` ignores it.
//!
//! Format: zstd JSON lines, a header `{"repo_id","policy"}` then one [`Entry`] per regular file
//! (followed by a space and a hash of its JSON) in walk order (depth first, names in byte order); the next backup walks in the same order
//! and reads the cache alongside, one entry at a time: memory does not grow with the tree.

use std::cmp::Ordering;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::repo::manifest::{ChunkRef, EntryName};
use crate::source::FileStat;

#[derive(Serialize, Deserialize)]
struct Header {
    repo_id: String,
    policy: String,
}

/// One file as the last backup stored it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path in the snapshot.
    pub name: EntryName,
    /// What the file looked like then (files of a tree).
    #[serde(default)]
    pub stat: Option<FileStat>,
    /// Its whole-content BLAKE3, as in the manifest.
    #[serde(default)]
    pub blake3: Option<String>,
    /// Its chunks.
    pub chunks: Vec<ChunkRef>,
    /// For a fixed-block file (PostgreSQL relation), its pages' keys (`pages::encode_keys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<String>,
}

/// Each entry's line ends with this hash of its JSON: a damaged cache reads as ending there,
/// never as other chunk references (a slice at a wrong offset would restore wrong bytes).
fn check(json: &[u8]) -> String {
    blake3::hash(json).to_hex()[..16].to_owned()
}

/// The walk's order: path components compared one by one (`a` < `a/x` < `a/y` < `b`).
pub fn walk_order(a: &[u8], b: &[u8]) -> Ordering {
    a.split(|c| *c == b'/').cmp(b.split(|c| *c == b'/'))
}

/// The cache file of `policy` under `dir` (the repository's cache directory).
pub fn path(dir: &Path, policy: &str) -> PathBuf {
    dir.join("files").join(format!("{policy}.jsonl.zst"))
}

/// Reads the last backup's entries in walk order.
pub struct Reader {
    lines: Option<
        std::io::Lines<
            std::io::BufReader<zstd::Decoder<'static, std::io::BufReader<std::fs::File>>>,
        >,
    >,
    next: Option<Entry>,
}

impl Reader {
    /// Opens the cache at `path` when it exists and belongs to this repository and policy;
    /// otherwise a reader that finds nothing.
    pub fn open(path: &Path, repo_id: &str, policy: &str) -> Self {
        let mut r = Self {
            lines: None,
            next: None,
        };
        let Ok(f) = std::fs::File::open(path) else {
            return r;
        };
        let Ok(z) = zstd::Decoder::new(f) else {
            return r;
        };
        let mut lines = std::io::BufReader::new(z).lines();
        let ours = lines
            .next()
            .and_then(Result::ok)
            .and_then(|l| serde_json::from_str::<Header>(&l).ok())
            .is_some_and(|h| h.repo_id == repo_id && h.policy == policy);
        if ours {
            r.lines = Some(lines);
            r.advance();
        }
        r
    }

    fn advance(&mut self) {
        self.next = self.lines.as_mut().and_then(|l| {
            // A damaged cache ends here: the rest of the files are read.
            l.next().and_then(Result::ok).and_then(|line| {
                let (json, sum) = line.rsplit_once(' ')?;
                (sum == check(json.as_bytes()))
                    .then(|| serde_json::from_str(json).ok())
                    .flatten()
            })
        });
        if self.next.is_none() {
            self.lines = None;
        }
    }

    /// The entry for `name` if the last backup had one. Names must be asked for in walk order.
    pub fn find(&mut self, name: &[u8]) -> Option<Entry> {
        while let Some(e) = &self.next {
            match walk_order(&e.name.0, name) {
                Ordering::Less => self.advance(),
                Ordering::Equal => {
                    let found = self.next.take();
                    self.advance();
                    return found;
                }
                Ordering::Greater => return None,
            }
        }
        None
    }
}

/// Writes this backup's entries; [`Writer::commit`] puts them in place once the snapshot is.
pub struct Writer {
    out: std::io::BufWriter<zstd::Encoder<'static, std::fs::File>>,
    tmp: tempfile::TempPath,
    path: PathBuf,
}

impl Writer {
    /// Starts the cache that will replace `path`.
    ///
    /// # Errors
    /// The cache directory cannot be written.
    pub fn create(path: PathBuf, repo_id: &str, policy: &str) -> std::io::Result<Self> {
        let dir = path.parent().expect("cache files have a parent");
        std::fs::create_dir_all(dir)?;
        let (file, tmp) = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)?
            .into_parts();
        let mut out = std::io::BufWriter::new(zstd::Encoder::new(file, 1)?);
        serde_json::to_writer(
            &mut out,
            &Header {
                repo_id: repo_id.to_owned(),
                policy: policy.to_owned(),
            },
        )?;
        out.write_all(b"\n")?;
        Ok(Self { out, tmp, path })
    }

    /// Records one file.
    ///
    /// # Errors
    /// Writing the cache.
    pub fn push(&mut self, e: &Entry) -> std::io::Result<()> {
        let line = serde_json::to_vec(e)?;
        self.out.write_all(&line)?;
        writeln!(self.out, " {}", check(&line))
    }

    /// Replaces the previous cache with this one.
    ///
    /// # Errors
    /// Writing or renaming the cache.
    pub fn commit(self) -> std::io::Result<()> {
        let z = self
            .out
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        z.finish()?.sync_all()?;
        self.tmp.persist(&self.path).map_err(|e| e.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::ids::ChunkId;

    fn entry(name: &str, ino: u64) -> Entry {
        Entry {
            name: EntryName(name.as_bytes().to_vec()),
            stat: Some(FileStat {
                size: 3,
                mtime_ns: 1,
                ctime_ns: 2,
                ino,
                dev: 9,
            }),
            blake3: None,
            chunks: vec![ChunkRef::whole(ChunkId([ino as u8; 32]), 3)],
            pages: None,
        }
    }

    #[test]
    fn walk_order_puts_a_directory_before_its_contents() {
        let mut names = vec!["b", "a/y", "a", "a/x/z", "a-b", "a/x"];
        names.sort_by(|a, b| walk_order(a.as_bytes(), b.as_bytes()));
        assert_eq!(names, ["a", "a/x", "a/x/z", "a/y", "a-b", "b"]);
    }

    #[test]
    fn entries_are_found_in_walk_order_and_only_for_their_repository() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "p");
        let mut w = Writer::create(p.clone(), "repo", "p").unwrap();
        for (n, name) in ["a/1", "a/2", "b/1", "c"].iter().enumerate() {
            w.push(&entry(name, n as u64)).unwrap();
        }
        w.commit().unwrap();
        let mut r = Reader::open(&p, "repo", "p");
        assert_eq!(r.find(b"a/1").unwrap().stat.unwrap().ino, 0);
        // a/2 was deleted; a/3 is new.
        assert!(r.find(b"a/3").is_none());
        assert_eq!(r.find(b"b/1").unwrap().stat.unwrap().ino, 2);
        assert_eq!(r.find(b"c").unwrap(), entry("c", 3));
        assert!(r.find(b"d").is_none());
        assert!(Reader::open(&p, "other", "p").find(b"a/1").is_none());
        assert!(Reader::open(&p, "repo", "q").find(b"a/1").is_none());
        assert!(
            Reader::open(&dir.path().join("none"), "repo", "p")
                .find(b"a/1")
                .is_none()
        );
    }

    #[test]
    fn a_damaged_entry_ends_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "p");
        let mut w = Writer::create(p.clone(), "repo", "p").unwrap();
        for (n, name) in ["a", "b", "c"].iter().enumerate() {
            w.push(&entry(name, n as u64)).unwrap();
        }
        w.commit().unwrap();
        let text =
            String::from_utf8(zstd::decode_all(std::fs::File::open(&p).unwrap()).unwrap()).unwrap();
        // One digit of b's chunk length changes: still valid JSON, not the line written.
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        assert!(lines[2].contains("\"b\""));
        lines[2] = lines[2].replacen(",3]]", ",4]]", 1);
        let damaged = lines.join("\n") + "\n";
        assert_ne!(damaged, text);
        std::fs::write(&p, zstd::encode_all(damaged.as_bytes(), 1).unwrap()).unwrap();
        let mut r = Reader::open(&p, "repo", "p");
        assert!(r.find(b"a").is_some());
        assert!(r.find(b"b").is_none());
        assert!(r.find(b"c").is_none());
    }
}
