//! The reader thread of a backup: artifacts in, chunks cut and identified (BLAKE3, keyed),
//! deduplicated against the index and the recent chunks, new ones batched to the seal workers;
//! PostgreSQL relation files compared page by page with their last backup; the manifest
//! written as the artifacts come.

use super::*;

pub(super) struct ReadOutcome {
    /// The manifest, written as the artifacts came.
    pub(super) manifest: ManifestWriter<std::fs::File>,
    /// The file cache for the next backup.
    pub(super) files: Option<file_cache::Writer>,
    pub(super) files_unchanged: u64,
    /// Plaintext bytes of all artifacts.
    pub(super) bytes_total: u64,
    /// Which of the index's packs hold chunks of this snapshot (every new pack does).
    pub(super) used_packs: Vec<bool>,
    pub(super) chunks: u64,
    pub(super) bytes_new: u64,
    /// Pages that failed their checksum twice (PostgreSQL with data checksums).
    pub(super) bad_pages: Vec<BadPage>,
}

/// A relation file whose pages are checked as they are read, and what failed.
pub(super) struct PageChecker<'a> {
    pub(super) check: crate::source::PageCheck,
    /// The file, to read a failing page again; its name as the manifest has it.
    pub(super) path: Option<&'a std::path::Path>,
    pub(super) name: &'a str,
    pub(super) bad: &'a mut Vec<BadPage>,
}

impl PageChecker<'_> {
    /// Checks the pages of a window whose first page is page `first` of the file. A page
    /// that fails is read again from the file, and counts only when it fails again
    /// (a page written meanwhile has a newer LSN and is then skipped).
    fn window(&mut self, win: &[u8], first: u64) {
        use crate::source::postgres::checksum::{self, Page};
        for (i, page) in win.chunks_exact(checksum::PAGE).enumerate() {
            let n = first + i as u64;
            let blkno = u32::try_from(self.check.first_block + n).unwrap_or(u32::MAX);
            let Page::Bad { .. } = checksum::check(page, blkno, self.check.start_lsn) else {
                continue;
            };
            let again = self.path.and_then(|p| read_page(p, n).ok());
            let verdict = match &again {
                Some(p) => checksum::check(p, blkno, self.check.start_lsn),
                None => checksum::check(page, blkno, self.check.start_lsn),
            };
            if let Page::Bad { stored, computed } = verdict {
                tracing::warn!(file = self.name, block = n, "A page fails its checksum.");
                self.bad.push(BadPage {
                    file: self.name.to_owned(),
                    block: n,
                    stored,
                    computed,
                });
            }
        }
    }
}

/// Page `n` of the file at `path`, read again.
fn read_page(path: &std::path::Path, n: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    const PAGE: usize = crate::source::postgres::checksum::PAGE;
    let mut buf = vec![0u8; PAGE];
    std::fs::File::open(path)?.read_exact_at(&mut buf, n * PAGE as u64)?;
    Ok(buf)
}

/// New chunks already handed to the seal workers: the last [`RECENT`] to [`RECENT`] x 2 of
/// them, not every one (that set grew by 40 bytes per 8 KiB page of a full backup). A chunk
/// repeated further apart than that within one backup is stored twice, which costs space,
/// never correctness (the index keeps one location).
///
/// Kept by the ids' first 16 bytes (half the memory of whole ids): two chunks of one backup
/// whose keyed ids share 128 bits are not expected in 2^90 backups.
pub(super) struct Recent {
    current: HashSet<[u8; 16]>,
    previous: HashSet<[u8; 16]>,
}

/// See [`Recent`]: 64k chunks are 512 MiB of PostgreSQL pages, 32 GiB of files.
pub(super) const RECENT: usize = 1 << 16;

impl Recent {
    fn new() -> Self {
        Self {
            current: HashSet::with_capacity(RECENT),
            previous: HashSet::new(),
        }
    }

    /// True when `id` was not dispatched recently; remembers it.
    fn insert(&mut self, id: ChunkId) -> bool {
        let id: [u8; 16] = id.0[..16].try_into().expect("16 of 32");
        if self.previous.contains(&id) || !self.current.insert(id) {
            return false;
        }
        if self.current.len() >= RECENT {
            self.previous = std::mem::replace(&mut self.current, HashSet::with_capacity(RECENT));
        }
        true
    }
}

/// Where the reader sends chunks: new ones to the seal workers, in batches; known ones only
/// mark the packs the snapshot uses.
pub(super) struct Sink<'a> {
    index: &'a IndexSet,
    jobs: &'a ToSeal,
    batch: Batch,
    dispatched: Recent,
    /// Which of the index's packs hold chunks of this snapshot (every new pack does).
    used_packs: Vec<bool>,
    bytes_new: u64,
}

impl<'a> Sink<'a> {
    fn new(index: &'a IndexSet, jobs: &'a ToSeal) -> Self {
        Self {
            index,
            jobs,
            batch: Batch::from_pool(&jobs.free),
            dispatched: Recent::new(),
            used_packs: vec![false; index.packs.len()],
            bytes_new: 0,
        }
    }

    /// A chunk of the snapshot: stored unless the repository or this backup has it already.
    fn chunk(&mut self, id: ChunkId, data: &[u8]) -> Result<(), PipelineError> {
        if let Some(pack) = self.index.pack_of(&id) {
            self.used_packs[pack as usize] = true;
        } else if self.dispatched.insert(id) {
            self.bytes_new += data.len() as u64;
            self.batch.push(id, data);
            if self.batch.data.len() >= BATCH_BYTES {
                let next = Batch::from_pool(&self.jobs.free);
                self.jobs
                    .batches
                    .send(std::mem::replace(&mut self.batch, next))
                    .map_err(|_| PipelineError::Cancelled)?;
            }
        }
        Ok(())
    }

    /// The pack holding `r`'s chunk outside prune's packs. (Its length is not checked: an id
    /// names one content; the file cache that supplies references is checksummed.)
    fn holds(&self, r: &ChunkRef) -> Option<u32> {
        self.index.pack_of(&r.0)
    }

    /// References taken from the last backup, all held (see [`Sink::holds`]): their packs
    /// are used.
    fn reuse(&mut self, refs: &[ChunkRef]) -> bool {
        let packs: Option<Vec<u32>> = refs.iter().map(|r| self.holds(r)).collect();
        let Some(packs) = packs else {
            return false;
        };
        for p in packs {
            self.used_packs[p as usize] = true;
        }
        true
    }

    fn finish(self) -> Result<(Vec<bool>, u64), PipelineError> {
        if !self.batch.jobs.is_empty() {
            self.jobs
                .batches
                .send(self.batch)
                .map_err(|_| PipelineError::Cancelled)?;
        }
        Ok((self.used_packs, self.bytes_new))
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn read_artifacts(
    mut rx: mpsc::Receiver<Artifact>,
    mut manifest: ManifestWriter<std::fs::File>,
    cache: Option<(Option<file_cache::Reader>, file_cache::Writer)>,
    jobs: &ToSeal,
    index: &IndexSet,
    ids: &ChunkIdKey,
    params: ChunkerParams,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<ReadOutcome, PipelineError> {
    let (mut last, mut files) = cache.map_or((None, None), |(l, n)| (l, Some(n)));
    let mut sink = Sink::new(index, jobs);
    let (mut files_unchanged, mut bytes_total, mut chunks) = (0, 0, 0);
    let mut bad_pages = Vec::new();
    let manifest_err = |e| PipelineError::Internal(format!("writing the manifest: {e}"));
    let cache_err = |e| PipelineError::Internal(format!("writing the file cache: {e}"));
    let mut buf = Vec::new();
    while let Some(a) = rx.blocking_recv() {
        if cancel.is_cancelled() {
            return Err(PipelineError::Cancelled);
        }
        let display = String::from_utf8_lossy(&a.name.0).into_owned();
        let mut art = manifest::Artifact {
            name: a.name,
            kind: a.kind,
            mode: a.mode,
            mtime_ns: a.mtime_ns,
            size: 0,
            blake3: None,
            target: a.target,
            chunks: Vec::new(),
        };
        let fixed = match a.chunking {
            Chunking::Fixed(page) => Some(page),
            Chunking::ContentDefined => None,
        };
        // What the last backup stored of this file: a tree's file may be taken from it whole,
        // a relation file is compared with it page by page.
        let last_entry = (a.stat.is_some() || fixed.is_some())
            .then(|| last.as_mut().and_then(|l| l.find(&art.name.0)))
            .flatten();
        // A file unchanged since the last backup is taken from it, only while the repository
        // still holds every one of its chunks outside prune's packs.
        let (unchanged, before) = match (a.stat, last_entry) {
            (Some(st), Some(e)) if e.stat == Some(st) && fixed.is_none() => {
                let whole = e.chunks.iter().map(|c| u64::from(c.1)).sum::<u64>() == st.size;
                (whole.then_some(e), None)
            }
            (_, Some(e)) if fixed.is_some() => (None, e.pages.map(|at| (at, e.chunks))),
            _ => (None, None),
        };
        let unchanged = unchanged.filter(|e| sink.reuse(&e.chunks));
        let path = match &a.body {
            Body::File(p) => Some(p.clone()),
            _ => None,
        };
        let reader: Option<Box<dyn Read + Send>> = match a.body {
            // Taken from the last backup: not read.
            _ if unchanged.is_some() => None,
            Body::None => None,
            Body::Reader(r) => Some(r),
            Body::File(path) => match std::fs::File::open(&path) {
                // Read in large blocks by `for_each_chunk` itself.
                Ok(f) => Some(Box::new(f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!(path = %path.display(), "File vanished during the backup; it is not in this snapshot.");
                    continue;
                }
                Err(e) => {
                    return Err(SourceError::Read {
                        path: path.display().to_string(),
                        source: e,
                    }
                    .into());
                }
            },
        };
        let mut page_keys = None;
        match (reader, fixed) {
            (Some(r), Some(page)) => {
                let old = before.map(|(at, refs)| (last.as_ref().expect("found in it"), at, refs));
                let checker = a.page_check.map(|check| PageChecker {
                    check,
                    path: path.as_deref(),
                    name: &display,
                    bad: &mut bad_pages,
                });
                let (chunks, keys) = back_up_pages(
                    r,
                    page,
                    &display,
                    checker,
                    old,
                    files.as_mut(),
                    &mut sink,
                    ids,
                    params,
                    &mut buf,
                    progress,
                )?;
                art.size = chunks.iter().map(|c| u64::from(c.1)).sum();
                art.chunks = chunks;
                page_keys = keys;
            }
            (Some(r), None) => {
                // Content-defined artifacts (plain files) record their whole-content hash,
                // so a restored file can be compared with `b3sum`. (Fixed page blocks do
                // not: every chunk's keyed id is checked on restore and verify.)
                let mut whole = blake3::Hasher::new();
                for_each_chunk(r, a.chunking, params, &display, &mut buf, |data| {
                    whole.update(data);
                    let len = data.len() as u64;
                    art.size += len;
                    let id = ids.chunk_id(data);
                    art.chunks.push(ChunkRef::whole(
                        id,
                        u32::try_from(len).expect("chunks are at most a few MiB"),
                    ));
                    Progress::add(&progress.bytes, len);
                    sink.chunk(id, data)
                })?;
                art.blake3 = Some(manifest::Digest(*whole.finalize().as_bytes()));
            }
            (None, _) => {}
        }
        if let Some(e) = unchanged {
            art.size = e.chunks.iter().map(|c| u64::from(c.1)).sum();
            art.blake3 = e.blake3;
            art.chunks = e.chunks;
            files_unchanged += 1;
            Progress::add(&progress.bytes, art.size);
        }
        Progress::add(&progress.items, 1);
        bytes_total += art.size;
        chunks += art.chunks.len() as u64;
        if let Some(f) = files.as_mut()
            && (a.stat.is_some() || page_keys.is_some())
        {
            let e = file_cache::Entry {
                name: art.name.clone(),
                stat: a.stat,
                blake3: art.blake3,
                chunks: art.chunks.clone(),
                pages: page_keys,
            };
            f.push(&e).map_err(cache_err)?;
        }
        manifest.push(&art).map_err(manifest_err)?;
    }
    let (used_packs, bytes_new) = sink.finish()?;
    Ok(ReadOutcome {
        manifest,
        files,
        files_unchanged,
        bytes_total,
        used_packs,
        chunks,
        bytes_new,
        bad_pages,
    })
}

/// Backs up a fixed-block file window by window against the last backup of it (see
/// [`pages`]): `before` is the file cache that has its page keys, where they are, and its
/// references then. Writes this backup's page keys to `keys` as it goes; returns the file's
/// references and where its keys went.
#[allow(clippy::too_many_arguments)]
pub(super) fn back_up_pages(
    r: impl Read,
    page: usize,
    what: &str,
    mut checker: Option<PageChecker<'_>>,
    before: Option<(&file_cache::Reader, [u64; 2], Vec<ChunkRef>)>,
    mut keys_out: Option<&mut file_cache::Writer>,
    sink: &mut Sink,
    ids: &ChunkIdKey,
    params: ChunkerParams,
    buf: &mut Vec<u8>,
    progress: &Progress,
) -> Result<(Vec<ChunkRef>, Option<[u64; 2]>), PipelineError> {
    let window = page * pages::WINDOW_PAGES;
    let (mut cvs, mut keys, mut old_keys, mut pending) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut delta = pages::Delta::default();
    let mut old = before
        .as_ref()
        .map(|(_, _, refs)| pages::Windows::new(refs));
    let keys_at = keys_out.as_ref().map(|w| w.keys_at());
    let mut pages_seen = 0u64;
    let cache_err = |e| PipelineError::Internal(format!("writing the file cache: {e}"));
    let flush = |delta: &mut pages::Delta, sink: &mut Sink| -> Result<(), PipelineError> {
        let id = ids.chunk_id(&delta.buf);
        sink.chunk(id, &delta.buf)?;
        delta.ids.push(id);
        delta.buf.clear();
        Ok(())
    };
    for_each_chunk(r, Chunking::Fixed(window), params, what, buf, |win| {
        let id = ids.window_id(win, page, &mut cvs);
        keys.clear();
        pages::keys(&cvs, &mut keys);
        let first = pages_seen;
        pages_seen += keys.len() as u64;
        if let Some(c) = checker.as_mut() {
            c.window(win, first);
        }
        if let Some(w) = keys_out.as_mut() {
            w.push_keys(&keys).map_err(cache_err)?;
        }
        // The last backup's view of this window, if it lines up and is still held.
        let old_refs = old.as_mut().and_then(|o| o.next(window));
        let was = match (&before, old_refs) {
            (Some((cache, at, _)), Some(refs)) => {
                let n = refs
                    .iter()
                    .map(|r| r.1 as usize)
                    .sum::<usize>()
                    .div_ceil(page) as u64;
                (cache.keys(*at, first, n, &mut old_keys)
                    && old_keys.len() as u64 == n
                    && refs.iter().all(|r| sink.holds(r).is_some()))
                .then_some(pages::Before {
                    keys: &old_keys,
                    refs,
                })
            }
            _ => None,
        };
        let len = u32::try_from(win.len()).expect("a window");
        Progress::add(&progress.bytes, u64::from(len));
        match pages::plan(page, win.len(), &keys, was.as_ref()) {
            pages::Plan::Whole => {
                sink.chunk(id, win)?;
                pending.push(pages::Pending::Ready(ChunkRef::whole(id, len)));
            }
            pages::Plan::Parts(parts) => {
                for p in parts {
                    match p {
                        pages::Part::Old(r) => {
                            sink.reuse(std::slice::from_ref(&r));
                            pending.push(pages::Pending::Ready(r));
                        }
                        pages::Part::New { first, len, .. } => {
                            let bytes = &win[first * page..first * page + len as usize];
                            if delta.buf.len() + bytes.len() > window {
                                flush(&mut delta, sink)?;
                            }
                            pending.push(pages::Pending::Delta {
                                blob: delta.ids.len(),
                                start: u32::try_from(delta.buf.len()).expect("a window"),
                                len,
                            });
                            delta.buf.extend_from_slice(bytes);
                        }
                    }
                }
            }
        }
        Ok(())
    })?;
    if !delta.buf.is_empty() {
        flush(&mut delta, sink)?;
    }
    let chunks = pending.into_iter().map(|p| p.resolve(&delta)).collect();
    Ok((chunks, keys_at.map(|at| [at, pages_seen])))
}

/// Cuts `r` into chunks and hands each to `f`, borrowed from `buf`, one read buffer reused for
/// every artifact of a backup: no allocation and no copy for chunks the repository already
/// has. (fastcdc's `StreamCDC` zeroes a fresh 2 MiB buffer per artifact and moves the rest of
/// it after every chunk: with 100,000 small files that was half of a backup's CPU.)
///
/// Content-defined cut points are fastcdc's own (`FastCDC::cut` over a window that always
/// holds `max` bytes past the chunk start, or the end of the stream), so chunks are the same
/// as `StreamCDC`'s and repositories written before keep deduplicating.
pub(super) fn for_each_chunk(
    mut r: impl Read,
    chunking: Chunking,
    p: ChunkerParams,
    what: &str,
    buf: &mut Vec<u8>,
    mut f: impl FnMut(&[u8]) -> Result<(), PipelineError>,
) -> Result<(), PipelineError> {
    let read_err = |e: std::io::Error| {
        PipelineError::Source(SourceError::Read {
            path: what.to_owned(),
            source: e,
        })
    };
    // Reads until `buf[from..]` is full or the stream ends; the bytes now held.
    let mut fill = |buf: &mut [u8], from: usize| -> Result<(usize, bool), PipelineError> {
        let mut got = from;
        while got < buf.len() {
            match r.read(&mut buf[got..]) {
                Ok(0) => return Ok((got, true)),
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_err(e)),
            }
        }
        Ok((got, false))
    };
    match chunking {
        Chunking::ContentDefined => {
            let max = p.max as usize;
            if buf.len() < 2 * max {
                buf.resize(2 * max, 0);
            }
            let (mut len, mut eof) = fill(buf, 0)?;
            let mut start = 0;
            loop {
                let cdc = fastcdc::v2020::FastCDC::new(&buf[..len], p.min, p.avg, p.max);
                while start < len && (eof || len - start >= max) {
                    let (_, end) = cdc.cut(start, len - start);
                    f(&buf[start..end])?;
                    start = end;
                }
                if eof {
                    break;
                }
                buf.copy_within(start..len, 0);
                (len, eof) = fill(buf, len - start)?;
                start = 0;
            }
        }
        Chunking::Fixed(n) => {
            let want = n * (READ_BYTES / n).max(1);
            if buf.len() < want {
                buf.resize(want, 0);
            }
            loop {
                // Fill the window, so that only the file's last block can be short.
                let (got, eof) = fill(&mut buf[..want], 0)?;
                for block in buf[..got].chunks(n) {
                    f(block)?;
                }
                if eof {
                    break;
                }
            }
        }
    }
    Ok(())
}
