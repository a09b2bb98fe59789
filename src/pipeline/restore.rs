//! Restore: a manifest's artifacts into a directory, fetched with coalesced ranged reads in
//! parallel and written at their offsets (`pwrite`), out of order.
//!
//! Order of work: create directories and size the files; fetch and write all data; create
//! symlinks (last, so no write can follow one out of the target); then set permissions and
//! times (directories deepest first, so setting a read-only mode never blocks a later write).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::index_set::{Loc, PackRec};
use super::progress::Progress;
use super::{IndexSet, PipelineError, Repository};
use crate::repo::ids::ChunkId;
use crate::repo::keys::Identity;
use crate::repo::layout;
use crate::repo::manifest::{EntryKind, Manifest};
use crate::repo::pack::{PackKey, member};
use crate::storage::StorageError;

/// Largest ranged read (bounds memory: concurrency × this).
const MAX_RANGE: u64 = 2 << 20;
/// Gap between blobs still fetched in one read rather than two.
const MAX_GAP: u64 = 256 << 10;

/// Knobs of one restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Concurrent ranged reads.
    pub concurrency: usize,
    /// Restore into a non-empty directory.
    pub force: bool,
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreSummary {
    /// Policy.
    pub policy: String,
    /// Snapshot restored.
    pub snapshot: String,
    /// Target directory.
    pub target: String,
    /// Artifacts restored.
    pub artifacts: u64,
    /// Plaintext bytes written.
    pub bytes: u64,
    /// Bytes read from storage.
    pub downloaded: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// One chunk destination: where the chunk is in its pack and where it goes in which file.
/// Kept flat (72 bytes each) because a database restore has one per 8 KiB page.
struct Piece {
    id: ChunkId,
    loc: Loc,
    file: u32,
    offset: u64,
}

/// A ranged read of one pack and the pieces it serves (`pieces[range]`, sorted by offset).
struct RangeJob {
    pack: u32,
    start: u64,
    end: u64,
    pieces: std::ops::Range<usize>,
}

/// Maps a manifest entry name to a path under `target`, refusing anything that could escape it.
fn safe_path(target: &Path, name: &[u8], snapshot: &str) -> Result<PathBuf, PipelineError> {
    let rel = Path::new(OsStr::from_bytes(name));
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

/// Restores every artifact of `manifest` into `target`.
///
/// # Errors
/// Storage and repository errors name the object; local errors name the path. A restore that
/// fails leaves a partial tree behind (it never touches anything outside `target`).
pub async fn run(
    repo: &Repository,
    identity: Arc<Identity>,
    manifest: &Manifest,
    target: &Path,
    opts: &RestoreOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<RestoreSummary, PipelineError> {
    let t0 = Instant::now();
    let lap =
        |phase: &str| tracing::debug!(ms = t0.elapsed().as_millis() as u64, "Restore: {phase}.");
    prepare_target(target, opts.force)?;
    let snap = manifest.snapshot.to_string();
    let paths: Vec<PathBuf> = manifest
        .artifacts
        .iter()
        .map(|a| safe_path(target, &a.name.0, &snap))
        .collect::<Result<_, _>>()?;

    // Directories and empty files now. A file with data is created by the worker that first
    // writes to it, overlapping inode allocation (slow on ext4 after many deletions) with
    // decompression on the other threads; its chunks cover every byte, so it needs no sizing.
    // With --force an old file in the way is removed first, so that none of its bytes survive.
    // Everything is created private (0700 / 0600) and gets its recorded mode at the end: a
    // database's files are not readable by others while they are being restored.
    let mut parent_made: Option<&Path> = None;
    let mut empty = Vec::new();
    for (i, (a, p)) in manifest.artifacts.iter().zip(&paths).enumerate() {
        match a.kind {
            EntryKind::Dir => private_dir(p)?,
            EntryKind::File | EntryKind::Stream => {
                let parent = p.parent();
                if parent != parent_made
                    && let Some(parent) = parent
                {
                    private_dir(parent)?;
                    parent_made = Some(parent);
                }
                if a.chunks.is_empty() {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(p)
                        .map_err(|e| PipelineError::io("creating", p, e))?;
                    empty.push(u32::try_from(i).expect("fewer than 4G artifacts"));
                } else if opts.force {
                    match std::fs::remove_file(p) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(PipelineError::io("replacing", p, e));
                        }
                        _ => {}
                    }
                }
            }
            EntryKind::Symlink => {}
        }
    }
    lap("directories created");
    let total: u64 = manifest.artifacts.iter().map(|a| a.size).sum();
    progress
        .total
        .store(total, std::sync::atomic::Ordering::Relaxed);

    let needed: std::collections::HashSet<ChunkId> = manifest
        .artifacts
        .iter()
        .flat_map(|a| a.chunks.iter().map(|c| c.0))
        .collect();
    let mut index = repo.load_index_for(Some(&needed)).await?;
    drop(needed);
    lap("index loaded");
    let (pieces, jobs) = plan(manifest, &index, repo.storage.location())?;
    lap("planned");
    // The pieces carry every location: only the pack records are needed from here on.
    let packs: Arc<Vec<PackRec>> = Arc::new(std::mem::take(&mut index.packs));
    drop(index);
    check_packs(repo, &packs, &jobs).await?;
    lap("pack sizes checked");
    let paths = Arc::new(paths);
    // A fixed set of threads opens chunks and writes them, each with its own reusable buffers;
    // the async side only fetches. Memory: concurrency x range size in flight, plus one set of
    // buffers per worker, whatever the data size.
    let workers = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let (work_tx, work_rx) = tokio::sync::mpsc::channel::<Work>(workers);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (flush_tx, flush_rx) = std::sync::mpsc::channel();
    for i in empty {
        let _ = flush_tx.send(i);
    }
    let flusher = {
        let paths = paths.clone();
        std::thread::spawn(move || flusher(&paths, &flush_rx))
    };
    let ctx = Arc::new(WorkerCx {
        packs: packs.clone(),
        keys: Mutex::default(),
        identity,
        ids: repo.ids.clone(),
        paths: paths.clone(),
        remaining: manifest
            .artifacts
            .iter()
            .map(|a| AtomicU64::new(a.size))
            .collect(),
        flush: flush_tx,
        progress: progress.clone(),
        pieces,
    });
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (rx, ctx) = (work_rx.clone(), ctx.clone());
            std::thread::spawn(move || {
                let mut scratch = Scratch::default();
                let mut range = Vec::new();
                // One idle worker waits on the channel at a time; the others are busy.
                while let Some((job, fetched, reply)) =
                    rx.lock().expect("work queue lock").blocking_recv()
                {
                    let r = match fetched {
                        Fetched::Bytes(bytes) => ctx.write_range(&job, &bytes, &mut scratch),
                        Fetched::File(path) => read_range(&path, &job, &mut range).and_then(|()| {
                            Progress::add(&ctx.progress.transferred, range.len() as u64);
                            ctx.write_range(&job, &range, &mut scratch)
                        }),
                    };
                    let _ = reply.send(r);
                }
            })
        })
        .collect();
    drop(work_rx);
    let result = async {
        let mut stream = futures::stream::iter(jobs)
            .map(|job| {
                let (packs, progress, work_tx) = (packs.clone(), progress.clone(), work_tx.clone());
                async move {
                    let key = layout::pack(&packs[job.pack as usize].id);
                    // A local pack is read by the worker itself, into a buffer it reuses:
                    // 2 MiB buffers allocated on one thread and freed on another stayed
                    // resident in the allocator, by a varying amount per run.
                    let fetched = match repo.storage.local_file(&key) {
                        Some(path) => Fetched::File(path),
                        None => {
                            let bytes = repo.storage.get(&key, Some(job.start..job.end)).await?;
                            Progress::add(&progress.transferred, bytes.len() as u64);
                            Fetched::Bytes(bytes)
                        }
                    };
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    // The queue is as small as the worker count; waiting here is the backpressure.
                    work_tx.send((job, fetched, tx)).await.map_err(|_| {
                        PipelineError::Internal("restore workers stopped".to_owned())
                    })?;
                    rx.await
                        .map_err(|_| PipelineError::Internal("a restore worker died".to_owned()))?
                }
            })
            .buffer_unordered(opts.concurrency.max(1));
        while let Some(r) = stream.next().await {
            r?;
            if cancel.is_cancelled() {
                return Err(PipelineError::Cancelled);
            }
        }
        Ok(())
    }
    .await;
    drop(work_tx);
    for t in threads {
        let _ = t.join();
    }
    drop(ctx);
    let flushed = flusher
        .join()
        .map_err(|_| PipelineError::Internal("the restore flusher died".to_owned()))?;
    result?;
    flushed?;
    lap("data written");
    finish_metadata(manifest, &paths)?;
    lap("metadata set");
    // The files are synced (see FLUSH_EVERY); their entries, and the directories' modes and
    // times, once the directories are.
    sync_dirs(
        manifest
            .artifacts
            .iter()
            .zip(paths.iter())
            .filter(|(a, _)| a.kind == EntryKind::Dir)
            .map(|(_, p)| p.as_path())
            .chain(paths.iter().filter_map(|p| p.parent())),
    )?;
    lap("synced");
    Ok(RestoreSummary {
        policy: manifest.policy.clone(),
        snapshot: snap,
        target: target.display().to_string(),
        artifacts: manifest.artifacts.len() as u64,
        bytes: Progress::get(&progress.bytes),
        downloaded: Progress::get(&progress.transferred),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Fails before any data is written when a pack the restore reads is missing, or not the size
/// its index records (truncated or replaced): ranged reads of the blobs alone would not notice
/// a damaged tail.
async fn check_packs(
    repo: &Repository,
    packs: &[PackRec],
    jobs: &[RangeJob],
) -> Result<(), PipelineError> {
    let used: std::collections::BTreeSet<u32> = jobs.iter().map(|j| j.pack).collect();
    let mut heads = futures::stream::iter(used)
        .map(|pos| async move {
            let rec = &packs[pos as usize];
            let key = layout::pack(&rec.id);
            let location = repo.storage.location().to_owned();
            match repo.storage.head(&key).await? {
                None => Err(StorageError::NotFound {
                    key: key.to_string(),
                    location,
                }),
                Some(m) if m.size != rec.size => Err(StorageError::Truncated {
                    key: key.to_string(),
                    location,
                    expected: rec.size,
                    got: m.size,
                }),
                Some(_) => Ok(()),
            }
        })
        .buffer_unordered(8);
    while let Some(r) = heads.next().await {
        r?;
    }
    Ok(())
}

fn prepare_target(target: &Path, force: bool) -> Result<(), PipelineError> {
    match std::fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() && !force {
                return Err(PipelineError::TargetNotEmpty {
                    dir: target.display().to_string(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => private_dir(target),
        Err(e) => Err(PipelineError::io("reading", target, e)),
    }
}

/// Lists every chunk destination sorted by pack and offset, and coalesces neighbouring blobs
/// of a pack into ranged reads.
fn plan(
    manifest: &Manifest,
    index: &IndexSet,
    location: &str,
) -> Result<(Vec<Piece>, Vec<RangeJob>), PipelineError> {
    let mut pieces = Vec::with_capacity(manifest.artifacts.iter().map(|a| a.chunks.len()).sum());
    for (i, a) in manifest.artifacts.iter().enumerate() {
        let mut offset = 0u64;
        for c in &a.chunks {
            let loc = *index
                .chunks
                .get(&c.0)
                .ok_or_else(|| PipelineError::MissingChunk {
                    chunk: c.0.to_hex(),
                    artifact: String::from_utf8_lossy(&a.name.0).into_owned(),
                    location: location.to_owned(),
                })?;
            pieces.push(Piece {
                id: c.0,
                loc,
                file: u32::try_from(i).expect("fewer than 4G artifacts"),
                offset,
            });
            offset += u64::from(c.1);
        }
    }
    pieces.sort_unstable_by_key(|p| (p.loc.pack, p.loc.offset, p.loc.inner));
    let mut jobs: Vec<RangeJob> = Vec::new();
    for (n, p) in pieces.iter().enumerate() {
        let (s, e) = (
            u64::from(p.loc.offset),
            u64::from(p.loc.offset) + u64::from(p.loc.len),
        );
        match jobs.last_mut() {
            Some(r)
                if r.pack == p.loc.pack
                    && s <= r.end + MAX_GAP
                    && e.max(r.end) - r.start <= MAX_RANGE =>
            {
                r.end = r.end.max(e);
                r.pieces.end = n + 1;
            }
            _ => jobs.push(RangeJob {
                pack: p.loc.pack,
                start: s,
                end: e,
                pieces: n..n + 1,
            }),
        }
    }
    Ok((pieces, jobs))
}

/// A range to restore from: fetched bytes, or a local pack file the worker reads itself.
enum Fetched {
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

type Work = (
    RangeJob,
    Fetched,
    tokio::sync::oneshot::Sender<Result<(), PipelineError>>,
);

/// What every restore worker thread shares.
struct WorkerCx {
    packs: Arc<Vec<PackRec>>,
    keys: Mutex<HashMap<u32, Arc<PackKey>>>,
    identity: Arc<Identity>,
    ids: crate::repo::keys::ChunkIdKey,
    paths: Arc<Vec<PathBuf>>,
    /// Bytes still to write per artifact: every [`FLUSH_EVERY`] of them the file goes to the
    /// flusher.
    remaining: Vec<AtomicU64>,
    flush: std::sync::mpsc::Sender<u32>,
    progress: Arc<Progress>,
    pieces: Vec<Piece>,
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
        let mut files: HashMap<u32, std::fs::File> = HashMap::new();
        // Pieces of the same blob are adjacent: open it once, then take each chunk out of it
        // (the blob itself, or the members of a group) once and write it everywhere it goes.
        // Members that are contiguous both in the group and in one file (consecutive pages)
        // go out in one write instead of one per 8 KiB page.
        for blob in self.pieces[job.pieces.clone()].chunk_by(|a, b| a.loc.offset == b.loc.offset) {
            let b = &blob[0];
            let s = (u64::from(b.loc.offset) - job.start) as usize;
            let sealed = &bytes[s..s + b.loc.len as usize];
            let entry = IndexSet::entry(b.id, &b.loc);
            let opened = key.open_blob(&rec.id, &entry, sealed, z, buf, out)?;
            let mut run: Option<Run> = None;
            for chunk in blob.chunk_by(|a, b| a.loc.inner == b.loc.inner) {
                let c = &chunk[0];
                let plain = member(&self.ids, &rec.id, &IndexSet::entry(c.id, &c.loc), opened)?;
                let src = c.loc.inner.unwrap_or(0) as usize;
                for d in chunk {
                    match &mut run {
                        Some(r)
                            if r.file == d.file
                                && r.dest + r.len as u64 == d.offset
                                && r.src + r.len == src =>
                        {
                            r.len += plain.len();
                        }
                        _ => {
                            if let Some(r) = run.take() {
                                self.write(&mut files, &r, opened)?;
                            }
                            run = Some(Run {
                                file: d.file,
                                dest: d.offset,
                                src,
                                len: plain.len(),
                            });
                        }
                    }
                }
            }
            if let Some(r) = run {
                self.write(&mut files, &r, opened)?;
            }
        }
        Ok(())
    }

    /// Writes `opened[run.src..][..run.len]` at `run.dest` of its file.
    fn write(
        &self,
        files: &mut HashMap<u32, std::fs::File>,
        run: &Run,
        opened: &[u8],
    ) -> Result<(), PipelineError> {
        let path = &self.paths[run.file as usize];
        let f = match files.entry(run.file) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(
                // Created by whichever worker writes first; never truncated, since another
                // worker may already have written other parts (the target started empty,
                // or --force removed the old file).
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| PipelineError::io("opening", path, e))?,
            ),
        };
        f.write_all_at(&opened[run.src..run.src + run.len], run.dest)
            .map_err(|e| PipelineError::io("writing", path, e))?;
        let len = run.len as u64;
        Progress::add(&self.progress.bytes, len);
        let before = self.remaining[run.file as usize].fetch_sub(len, Ordering::AcqRel);
        if before == len || before / FLUSH_EVERY != (before - len) / FLUSH_EVERY {
            // The flusher outlives the workers; a send fails only if it already failed.
            let _ = self.flush.send(run.file);
        }
        Ok(())
    }
}

/// A restore that says it is done has its data on disk, as pgBackRest's does: one thread
/// syncs each file once it is complete while the workers go on, and the directories are synced
/// last (per file rather than `syncfs`, so that a restore never waits on other programs' data
/// on a shared filesystem). Synced only when complete, a big relation file doubled a
/// PostgreSQL restore's time: the kernel starts writing it back only when asked. So it is also
/// synced every this many bytes written.
const FLUSH_EVERY: u64 = 32 << 20;

/// Creates `dir` and any missing parents with mode 0700 (restore applies recorded modes last).
fn private_dir(dir: &Path) -> Result<(), PipelineError> {
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
    let dirs: std::collections::BTreeSet<&Path> = dirs.into_iter().collect();
    for d in dirs {
        std::fs::File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| PipelineError::io("syncing", d, e))?;
    }
    Ok(())
}

/// Syncs the files the workers name (complete, or another FLUSH_EVERY written) until they hang
/// up; the first error is returned after the channel is drained, naming the file.
fn flusher(paths: &[PathBuf], rx: &std::sync::mpsc::Receiver<u32>) -> Result<(), PipelineError> {
    let mut first_error = None;
    for file in rx {
        if first_error.is_some() {
            continue;
        }
        // Opened for each sync: holding every file open would run into the descriptor limit.
        let path = &paths[file as usize];
        if let Err(e) = std::fs::File::open(path).and_then(|f| f.sync_data()) {
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

fn finish_metadata(manifest: &Manifest, paths: &[PathBuf]) -> Result<(), PipelineError> {
    let mtime = |ns: Option<i64>| {
        ns.map(|ns| {
            filetime::FileTime::from_unix_time(
                ns.div_euclid(1_000_000_000),
                u32::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or(0),
            )
        })
    };
    for (a, p) in manifest.artifacts.iter().zip(paths) {
        match a.kind {
            EntryKind::File | EntryKind::Stream => {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(a.mode))
                    .map_err(|e| PipelineError::io("setting permissions of", p, e))?;
                if let Some(t) = mtime(a.mtime_ns) {
                    filetime::set_file_mtime(p, t)
                        .map_err(|e| PipelineError::io("setting the time of", p, e))?;
                }
            }
            EntryKind::Symlink => {
                let target = a
                    .target
                    .as_ref()
                    .map(|t| PathBuf::from(OsStr::from_bytes(&t.0)))
                    .unwrap_or_default();
                if let Some(parent) = p.parent() {
                    private_dir(parent)?;
                }
                if std::fs::symlink_metadata(p).is_ok() {
                    std::fs::remove_file(p).map_err(|e| PipelineError::io("replacing", p, e))?;
                }
                std::os::unix::fs::symlink(&target, p)
                    .map_err(|e| PipelineError::io("creating symlink", p, e))?;
                if let Some(t) = mtime(a.mtime_ns) {
                    filetime::set_symlink_file_times(p, t, t)
                        .map_err(|e| PipelineError::io("setting the time of", p, e))?;
                }
            }
            EntryKind::Dir => {}
        }
    }
    // Directories last and deepest first: their times change whenever an entry is created.
    let mut dirs: Vec<(usize, &PathBuf, u32, Option<i64>)> = manifest
        .artifacts
        .iter()
        .zip(paths)
        .filter(|(a, _)| a.kind == EntryKind::Dir)
        .map(|(a, p)| (p.components().count(), p, a.mode, a.mtime_ns))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    for (_, p, mode, ns) in dirs {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| PipelineError::io("setting permissions of", p, e))?;
        if let Some(t) = mtime(ns) {
            filetime::set_file_mtime(p, t)
                .map_err(|e| PipelineError::io("setting the time of", p, e))?;
        }
    }
    Ok(())
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
}
