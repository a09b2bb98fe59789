//! Writing a checked manifest: a reader thread turns its artifacts into batches (directories
//! and empty files created, chunk destinations located and coalesced into ranged reads); a
//! fixed set of worker threads opens the fetched ranges and writes each chunk at its offset
//! (`pwrite`), creating each file as it first writes to it; flusher threads sync files as
//! they complete. Memory is a few batches, whatever the snapshot's size.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};

use super::fs::{create_nofollow, open_nofollow, private_dir, remove_any, remove_existing};
use super::{Existing, delta};
use crate::pipeline::index_set::{Loc, Located, PackRec};
use crate::pipeline::progress::Progress;
use crate::pipeline::{IndexSet, PipelineError, SpooledManifest};
use crate::repo::ids::ChunkId;
use crate::repo::keys::{ChunkIdKey, Identity};
use crate::repo::manifest::{Artifact, EntryKind};
use crate::repo::pack::{PackKey, member};

/// Largest ranged read (bounds memory: concurrency × this).
const MAX_RANGE: u64 = 2 << 20;
/// Gap between blobs still fetched in one read rather than two.
const MAX_GAP: u64 = 256 << 10;
/// A batch ends after this many artifacts…
const BATCH_ARTIFACTS: usize = 8_192;
/// …or chunk destinations (32 GiB of PostgreSQL relation files in 1 MiB windows).
const BATCH_PIECES: usize = 32_768;

/// A restore that says it is done has its data on disk, as pgBackRest's does: flusher
/// threads sync each file once it is complete while the workers go on, and the directories
/// are synced last (per directory rather than `syncfs`, so that a restore never waits on
/// other programs' data on a shared filesystem). Synced only when complete, a big relation
/// file doubled a PostgreSQL restore's time: the kernel starts writing it back only when
/// asked. So it is also synced every this many bytes written.
const FLUSH_EVERY: u64 = 32 << 20;

/// One chunk destination: where the chunk is in its pack, which of its bytes go (all, or a
/// slice), and where in which file of the batch.
pub(super) struct Piece {
    pub id: ChunkId,
    loc: Loc,
    pub file: u32,
    /// Bytes the manifest records (checked against the chunk as opened).
    pub len: u32,
    /// Where they start in the chunk's plaintext, for a slice (`ChunkRef`'s third field).
    pub start: Option<u32>,
    pub offset: u64,
}

/// A ranged read of one pack and the pieces it serves (`pieces[range]`, sorted by offset).
pub(super) struct RangeJob {
    pub pack: u32,
    pub start: u64,
    pub end: u64,
    pieces: std::ops::Range<usize>,
}

/// Consecutive artifacts of the manifest, ready to write: their paths (directories and
/// empty files already created), their metadata (chunk lists taken out), their chunk
/// destinations sorted by pack and offset, and the ranged reads that serve them.
#[derive(Default)]
pub(super) struct Batch {
    pub paths: Vec<Box<Path>>,
    pub entries: Vec<Artifact>,
    pub pieces: Vec<Piece>,
    pub jobs: Vec<RangeJob>,
    /// Bytes still to write per artifact: every [`FLUSH_EVERY`] of them the file goes to a
    /// flusher.
    pub remaining: Vec<AtomicU64>,
    /// Ranged reads not yet written (one for a batch without any): at zero the batch's
    /// metadata is set.
    pub unread: std::sync::atomic::AtomicUsize,
}

/// What a flusher is handed: a file of a batch to sync.
pub(super) type Flush = (Arc<Batch>, u32);

/// What the reader leaves for the end: directories to give their modes and times (deepest
/// first) and to sync, with every parent an entry was created in.
#[derive(Default)]
pub(super) struct Tail {
    pub dirs: Vec<(Box<Path>, u32, Option<i64>)>,
    pub sync: BTreeSet<Box<Path>>,
    /// Delta restore: bytes already in place, not written.
    pub reused: u64,
    /// Bytes of files left as holes.
    pub sparse: u64,
}

/// How the reader treats the target and the entries.
pub(super) struct How {
    pub existing: Existing,
    /// The repository's chunk-id key (a delta restore hashes what is there with it).
    pub ids: ChunkIdKey,
    pub layout: super::Layout,
    /// Bytes kept or left as holes count as done.
    pub progress: Arc<Progress>,
}

/// The reader: reads the (checked) manifest once more and sends batches to `tx` until it is
/// done or the receiver is gone.
///
/// # Errors
/// Creating a directory or file, a corrupt manifest.
pub(super) fn batches(
    m: &SpooledManifest,
    identity: &Identity,
    needed: &Located,
    target: &Path,
    how: &How,
    tx: &tokio::sync::mpsc::Sender<Arc<Batch>>,
    flush: &SyncSender<Flush>,
) -> Result<Tail, PipelineError> {
    let snapshot = m.snapshot.to_string();
    let (existing, progress) = (how.existing, &how.progress);
    let mut tail = Tail::default();
    let mut batch = Batch::default();
    let mut empty = Vec::new();
    // Delta: which files of the batch were there already (kept, to be checked).
    let mut kept: Vec<bool> = Vec::new();
    let mut parent_made: Option<PathBuf> = None;
    let mut gone = false;
    let raw_len = |id: &ChunkId| needed.get(id).map(|l| l.raw_len);
    let reused_total = std::cell::Cell::new(0);
    let send = |batch: &mut Batch,
                empty: &mut Vec<u32>,
                kept: &mut Vec<bool>|
     -> Result<bool, PipelineError> {
        let mut b = std::mem::take(batch);
        if existing == Existing::Delta {
            let reused = delta::drop_matching(&mut b, kept, &how.ids, &raw_len)?;
            reused_total.set(reused_total.get() + reused);
            Progress::add(&progress.bytes, reused);
            // Files with nothing left to write are synced as they are (their size may have
            // changed).
            for (f, k) in kept.iter().enumerate() {
                if *k && b.remaining[f].load(Ordering::Relaxed) == 0 {
                    empty.push(u32::try_from(f).expect("batches are small"));
                }
            }
        }
        kept.clear();
        b.plan();
        b.unread = b.jobs.len().max(1).into();
        let b = Arc::new(b);
        for i in empty.drain(..) {
            let _ = flush.send((b.clone(), i));
        }
        Ok(tx.blocking_send(b).is_ok())
    };
    m.read::<PipelineError>(identity, &mut |mut a| {
        if gone {
            return Ok(());
        }
        let dir = a.kind == EntryKind::Dir;
        let p = delta::place(target, &how.layout.redirect, &a.name.0, dir, &snapshot)?
            .into_boxed_path();
        let file = u32::try_from(batch.paths.len()).expect("batches are small");
        if a.kind == EntryKind::Dir {
            private_dir(&p)?;
            kept.push(false);
            tail.dirs.push((p.clone(), a.mode, a.mtime_ns));
            tail.sync.insert(p.clone());
        } else {
            // Symlinks' parents are made here too: directories exist before links do.
            let parent = p.parent().map(Path::to_path_buf);
            if parent != parent_made
                && let Some(parent) = parent
            {
                private_dir(&parent)?;
                tail.sync.insert(parent.clone().into_boxed_path());
                parent_made = Some(parent);
            }
            let mut there = false;
            match existing {
                Existing::Refuse => {}
                // Whatever is there goes (a link, or a hard link to a file elsewhere, is
                // removed rather than written through); a directory in the way fails here.
                Existing::Replace => remove_existing(&p)?,
                // Links and empty files are made afresh: nothing of them to keep.
                Existing::Delta if a.kind == EntryKind::Symlink || a.chunks.is_empty() => {
                    remove_any(&p)?;
                }
                Existing::Delta => there = delta::existing(&p, a.size)?,
            }
            if a.kind != EntryKind::Symlink
                && !a.chunks.is_empty()
                && how.layout.sparse.as_ref().is_some_and(|f| f(&a.name.0))
            {
                // A hole of the file's size; nothing of it is read.
                a.chunks.clear();
                Progress::add(&progress.bytes, a.size);
                tail.sparse += a.size;
                create_nofollow(&p, a.size)?;
                empty.push(file);
            } else if a.kind != EntryKind::Symlink && a.chunks.is_empty() {
                create_nofollow(&p, 0)?;
                empty.push(file);
            }
            // A file left as a hole has nothing to check.
            kept.push(there && !a.chunks.is_empty());
        }
        let mut offset = 0u64;
        for c in std::mem::take(&mut a.chunks) {
            let loc = needed
                .get(&c.0)
                .ok_or_else(|| PipelineError::Internal(format!("chunk {} was not located", c.0)))?;
            batch.pieces.push(Piece {
                id: c.0,
                loc,
                file,
                len: c.1,
                start: c.2,
                offset,
            });
            offset += u64::from(c.1);
        }
        batch.remaining.push(AtomicU64::new(offset));
        batch.paths.push(p);
        batch.entries.push(a);
        if batch.paths.len() >= BATCH_ARTIFACTS || batch.pieces.len() >= BATCH_PIECES {
            gone = !send(&mut batch, &mut empty, &mut kept)?;
        }
        Ok(())
    })?;
    if !gone && !batch.paths.is_empty() {
        send(&mut batch, &mut empty, &mut kept)?;
    }
    tail.reused = reused_total.get();
    Ok(tail)
}

impl Batch {
    /// Sorts the pieces by pack and offset and coalesces neighbouring blobs of a pack into
    /// ranged reads.
    fn plan(&mut self) {
        self.pieces
            .sort_unstable_by_key(|p| (p.loc.pack, p.loc.offset, p.loc.inner));
        for (n, p) in self.pieces.iter().enumerate() {
            let (s, e) = (
                u64::from(p.loc.offset),
                u64::from(p.loc.offset) + u64::from(p.loc.len),
            );
            match self.jobs.last_mut() {
                Some(r)
                    if r.pack == p.loc.pack
                        && s <= r.end + MAX_GAP
                        && e.max(r.end) - r.start <= MAX_RANGE =>
                {
                    r.end = r.end.max(e);
                    r.pieces.end = n + 1;
                }
                _ => self.jobs.push(RangeJob {
                    pack: p.loc.pack,
                    start: s,
                    end: e,
                    pieces: n..n + 1,
                }),
            }
        }
    }
}

/// A range to restore from: fetched bytes, or a local pack file the worker reads itself.
pub(super) enum Fetched {
    Bytes(bytes::Bytes),
    File(PathBuf),
}

/// Reads `job`'s range of a local pack into `buf`.
fn read_range(path: &Path, job: &RangeJob, buf: &mut Vec<u8>) -> Result<(), PipelineError> {
    let len = usize::try_from(job.end - job.start).expect("ranges are at most a few MiB");
    buf.resize(len, 0);
    std::fs::File::open(path)
        .and_then(|f| f.read_exact_at(buf, job.start))
        .map_err(|e| PipelineError::io("reading", path, e))
}

/// A job for a worker: job `.1` of batch `.0`, its bytes, and where to say how it went.
pub(super) type Work = (
    Arc<Batch>,
    usize,
    Fetched,
    tokio::sync::oneshot::Sender<Result<(), PipelineError>>,
);

/// What every restore worker thread shares.
pub(super) struct WorkerCx {
    pub snapshot: String,
    pub packs: Arc<Vec<PackRec>>,
    pub keys: Mutex<HashMap<u32, Arc<PackKey>>>,
    pub identity: Arc<Identity>,
    pub ids: ChunkIdKey,
    pub flush: SyncSender<Flush>,
    pub progress: Arc<Progress>,
}

/// A worker thread: takes work until the queue closes. One idle worker waits on the queue at
/// a time; the others are busy.
pub(super) fn worker(cx: &WorkerCx, rx: &Mutex<tokio::sync::mpsc::Receiver<Work>>) {
    let mut scratch = Scratch::default();
    let mut range = Vec::new();
    while let Some((batch, job, fetched, reply)) =
        rx.lock().expect("work queue lock").blocking_recv()
    {
        let job_ref = &batch.jobs[job];
        let r = match fetched {
            Fetched::Bytes(bytes) => cx.write_range(&batch, job_ref, &bytes, &mut scratch),
            Fetched::File(path) => read_range(&path, job_ref, &mut range).and_then(|()| {
                Progress::add(&cx.progress.transferred, range.len() as u64);
                cx.write_range(&batch, job_ref, &range, &mut scratch)
            }),
        };
        let _ = reply.send(r);
    }
}

impl WorkerCx {
    fn key(&self, pack: u32) -> Result<Arc<PackKey>, PipelineError> {
        if let Some(k) = self.keys.lock().expect("key cache lock").get(&pack) {
            return Ok(k.clone());
        }
        let rec = &self.packs[pack as usize];
        let k = Arc::new(PackKey::unwrap(
            &self.identity,
            &rec.id,
            &rec.wrapped_key()?,
        )?);
        self.keys
            .lock()
            .expect("key cache lock")
            .insert(pack, k.clone());
        Ok(k)
    }

    fn write_range(
        &self,
        batch: &Arc<Batch>,
        job: &RangeJob,
        bytes: &[u8],
        scratch: &mut Scratch,
    ) -> Result<(), PipelineError> {
        let rec = &self.packs[job.pack as usize];
        let key = self.key(job.pack)?;
        if scratch.zstd.is_none() {
            scratch.zstd = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| PipelineError::Internal(format!("zstd: {e}")))?,
            );
        }
        let Scratch { zstd, buf, out } = scratch;
        let z = zstd.as_mut().expect("set above");
        // One file open at a time per worker: a range of small files' chunks would otherwise
        // hold one descriptor per file (pieces of one file are mostly consecutive anyway).
        let mut file: Option<(u32, std::fs::File)> = None;
        // Pieces of the same blob are adjacent: open it once, then take each chunk out of it
        // (the blob itself, or the members of a group) once and write it everywhere it goes.
        // Members that are contiguous both in the group and in one file (consecutive pages)
        // go out in one write instead of one per 8 KiB page.
        for blob in batch.pieces[job.pieces.clone()].chunk_by(|a, b| a.loc.offset == b.loc.offset) {
            let b = &blob[0];
            let s = (u64::from(b.loc.offset) - job.start) as usize;
            let sealed = &bytes[s..s + b.loc.len as usize];
            let entry = IndexSet::entry(b.id, &b.loc);
            let opened = key.open_blob(&rec.id, &entry, sealed, z, buf, out)?;
            let mut run: Option<Run> = None;
            for chunk in blob.chunk_by(|a, b| a.loc.inner == b.loc.inner) {
                let c = &chunk[0];
                let plain = member(&self.ids, &rec.id, &IndexSet::entry(c.id, &c.loc), opened)?;
                for d in chunk {
                    // Checked against the index before anything was written; the opened
                    // chunk is the length its index says.
                    let (s, len) = (d.start.unwrap_or(0) as usize, d.len as usize);
                    if s + len > plain.len() {
                        return Err(PipelineError::HostileEntry {
                            snapshot: self.snapshot.clone(),
                            name: batch.paths[d.file as usize].display().to_string(),
                            reason: format!(
                                "lists bytes {s}..{} of chunk {}; it holds {}",
                                s + len,
                                d.id,
                                plain.len()
                            ),
                        });
                    }
                    let src = c.loc.inner.unwrap_or(0) as usize + s;
                    match &mut run {
                        Some(r)
                            if r.file == d.file
                                && r.dest + r.len as u64 == d.offset
                                && r.src + r.len == src =>
                        {
                            r.len += len;
                        }
                        _ => {
                            if let Some(r) = run.take() {
                                self.write(batch, &mut file, &r, opened)?;
                            }
                            run = Some(Run {
                                file: d.file,
                                dest: d.offset,
                                src,
                                len,
                            });
                        }
                    }
                }
            }
            if let Some(r) = run {
                self.write(batch, &mut file, &r, opened)?;
            }
        }
        Ok(())
    }

    /// Writes `opened[run.src..][..run.len]` at `run.dest` of its file.
    fn write(
        &self,
        batch: &Arc<Batch>,
        file: &mut Option<(u32, std::fs::File)>,
        run: &Run,
        opened: &[u8],
    ) -> Result<(), PipelineError> {
        let path = &batch.paths[run.file as usize];
        if file.as_ref().is_none_or(|(n, _)| *n != run.file) {
            // Created by whichever worker writes first; never truncated, since another
            // worker may already have written other parts (the target started empty, or
            // --force removed the old file). Never through a symlink.
            *file = None;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(|e| PipelineError::io("opening", path, e))?;
            *file = Some((run.file, f));
        }
        let f = &file.as_ref().expect("opened above").1;
        f.write_all_at(&opened[run.src..run.src + run.len], run.dest)
            .map_err(|e| PipelineError::io("writing", path, e))?;
        let len = run.len as u64;
        Progress::add(&self.progress.bytes, len);
        let before = batch.remaining[run.file as usize].fetch_sub(len, Ordering::AcqRel);
        if before == len || before / FLUSH_EVERY != (before - len) / FLUSH_EVERY {
            // The flushers outlive the workers; a send fails only if they already failed.
            let _ = self.flush.send((batch.clone(), run.file));
        }
        Ok(())
    }
}

/// Threads syncing restored files. A sync mostly waits for the filesystem's journal commit,
/// and concurrent syncs share one commit: with one thread, 100,000 small files took 36 s to
/// restore, three times restic's unsynced restore.
pub(super) const FLUSHERS: usize = 16;

/// Files waiting for a flusher at most: a full queue holds the workers back, so that queued
/// files do not keep their batches alive in ever larger numbers.
pub(super) const FLUSH_QUEUE: usize = 4096;

/// Syncs the files the workers name (complete, or another FLUSH_EVERY written) until they hang
/// up; the first error is returned after the channel is drained, naming the file.
pub(super) fn flusher(rx: &Mutex<std::sync::mpsc::Receiver<Flush>>) -> Result<(), PipelineError> {
    let mut first_error = None;
    loop {
        // One idle flusher waits on the channel at a time; the others are syncing.
        let Ok((batch, file)) = rx.lock().expect("flush queue lock").recv() else {
            break;
        };
        if first_error.is_some() {
            continue;
        }
        // Opened for each sync: holding every file open would run into the descriptor limit.
        let path = &batch.paths[file as usize];
        if let Err(e) = open_nofollow(path, false).and_then(|f| f.sync_data()) {
            first_error = Some(PipelineError::io("syncing", path, e));
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Verified bytes of one opened blob bound for one place in one file.
struct Run {
    file: u32,
    dest: u64,
    src: usize,
    len: usize,
}

/// A worker's buffers, reused for every chunk it opens: without them each chunk costs two
/// fresh multi-MiB allocations, which the allocator does not hand back promptly.
#[derive(Default)]
struct Scratch {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
    buf: Vec<u8>,
    out: Vec<u8>,
}
