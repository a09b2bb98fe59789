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

use crate::pipeline::pages::PageKey;
use crate::repo::manifest::{ChunkRef, EntryName};
use crate::source::FileStat;

#[derive(Serialize, Deserialize)]
struct Header {
    repo_id: String,
    policy: String,
    /// Names the page-key file written with this cache (see [`keys_path`]).
    #[serde(default)]
    generation: String,
}

/// Page keys are 16 bytes each, raw (they are random: nothing to compress), in a file beside
/// the cache, which starts with the cache's generation. A backup appends each window's keys
/// as it goes and the next one reads each window's back with one `pread`: no file's keys are
/// ever held whole (a 1 GiB relation segment has 2 MiB of them). A damaged key only makes
/// a page look changed.
pub fn keys_path(cache: &Path) -> PathBuf {
    cache.with_extension("pages")
}

const KEY: usize = std::mem::size_of::<PageKey>();

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
    pub blake3: Option<crate::repo::manifest::Digest>,
    /// Its chunks.
    pub chunks: Vec<ChunkRef>,
    /// For a fixed-block file (PostgreSQL relation): where its pages' keys are in the key
    /// file, and how many there are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<[u64; 2]>,
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
    /// The page-key file, when it belongs to this cache.
    keys: Option<std::fs::File>,
}

impl Reader {
    /// Opens the cache at `path` when it exists and belongs to this repository and policy;
    /// otherwise a reader that finds nothing.
    pub fn open(path: &Path, repo_id: &str, policy: &str) -> Self {
        let mut r = Self {
            lines: None,
            next: None,
            keys: None,
        };
        let Ok(f) = std::fs::File::open(path) else {
            return r;
        };
        let Ok(z) = zstd::Decoder::new(f) else {
            return r;
        };
        let mut lines = std::io::BufReader::new(z).lines();
        let header = lines
            .next()
            .and_then(Result::ok)
            .and_then(|l| serde_json::from_str::<Header>(&l).ok())
            .filter(|h| h.repo_id == repo_id && h.policy == policy);
        if let Some(h) = header {
            r.keys = std::fs::File::open(keys_path(path)).ok().filter(|f| {
                use std::os::unix::fs::FileExt;
                let mut g = [0u8; 32];
                f.read_exact_at(&mut g, 0).is_ok() && hex::encode(g) == h.generation
            });
            r.lines = Some(lines);
            r.advance();
        }
        r
    }

    /// The keys of pages `first..first + n` of a file whose keys are at `at` (`Entry::pages`),
    /// into `out`; false when the key file cannot give them.
    pub fn keys(&self, [at, count]: [u64; 2], first: u64, n: u64, out: &mut Vec<PageKey>) -> bool {
        use std::os::unix::fs::FileExt;
        out.clear();
        let Some(f) = &self.keys else {
            return false;
        };
        let n = n.min(count.saturating_sub(first));
        let mut raw = vec![0u8; usize::try_from(n).unwrap_or(0) * KEY];
        if f.read_exact_at(&mut raw, 32 + (at + first) * KEY as u64)
            .is_err()
        {
            return false;
        }
        out.extend(
            raw.chunks(KEY)
                .map(|c| PageKey::try_from(c).expect("16 bytes")),
        );
        true
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
    keys: std::io::BufWriter<std::fs::File>,
    keys_tmp: tempfile::TempPath,
    /// Keys written so far.
    keys_len: u64,
}

impl Writer {
    /// Starts the cache that will replace `path`.
    ///
    /// # Errors
    /// The cache directory cannot be written.
    pub fn create(path: PathBuf, repo_id: &str, policy: &str) -> std::io::Result<Self> {
        let dir = path.parent().expect("cache files have a parent");
        std::fs::create_dir_all(dir)?;
        let temp = || {
            tempfile::Builder::new()
                .prefix(".tmp-")
                .tempfile_in(dir)
                .map(tempfile::NamedTempFile::into_parts)
        };
        let (file, tmp) = temp()?;
        let (keys_file, keys_tmp) = temp()?;
        let generation: [u8; 32] = rand::random();
        let mut keys = std::io::BufWriter::with_capacity(1 << 16, keys_file);
        keys.write_all(&generation)?;
        let mut out = std::io::BufWriter::new(zstd::Encoder::new(file, 1)?);
        serde_json::to_writer(
            &mut out,
            &Header {
                repo_id: repo_id.to_owned(),
                policy: policy.to_owned(),
                generation: hex::encode(generation),
            },
        )?;
        out.write_all(b"\n")?;
        Ok(Self {
            out,
            tmp,
            path,
            keys,
            keys_tmp,
            keys_len: 0,
        })
    }

    /// Where the next page keys written go (for `Entry::pages`).
    pub fn keys_at(&self) -> u64 {
        self.keys_len
    }

    /// Appends page keys (of the file being read, in page order).
    ///
    /// # Errors
    /// Writing the key file.
    pub fn push_keys(&mut self, keys: &[PageKey]) -> std::io::Result<()> {
        for k in keys {
            self.keys.write_all(k)?;
        }
        self.keys_len += keys.len() as u64;
        Ok(())
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
        self.keys
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?
            .sync_all()?;
        // Keys first: a cache never names a key file older than itself (a newer one fails
        // the generation check, and is only a cost).
        self.keys_tmp
            .persist(keys_path(&self.path))
            .map_err(|e| e.error)?;
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
    fn page_keys_are_read_back_by_window_and_only_from_their_own_cache() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "p");
        let mut w = Writer::create(p.clone(), "repo", "p").unwrap();
        w.push_keys(&[[1; 16], [2; 16]]).unwrap();
        let at = w.keys_at();
        let keys: Vec<PageKey> = (0..300u16).map(|i| [(i % 251) as u8; 16]).collect();
        w.push_keys(&keys).unwrap();
        let mut e = entry("a", 1);
        e.pages = Some([at, 300]);
        w.push(&e).unwrap();
        w.commit().unwrap();
        let mut r = Reader::open(&p, "repo", "p");
        let found = r.find(b"a").unwrap().pages.unwrap();
        let mut out = Vec::new();
        assert!(r.keys(found, 128, 128, &mut out));
        assert_eq!(out, keys[128..256]);
        // The last window is short.
        assert!(r.keys(found, 256, 128, &mut out));
        assert_eq!(out, keys[256..]);
        // A key file from another run of the cache is not used.
        let other = dir.path().join("other.jsonl.zst");
        Writer::create(other.clone(), "repo", "p")
            .unwrap()
            .commit()
            .unwrap();
        std::fs::rename(keys_path(&other), keys_path(&p)).unwrap();
        let r = Reader::open(&p, "repo", "p");
        assert!(!r.keys(found, 0, 128, &mut out));
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
