//! Restore: a manifest's artifacts into a directory, fetched with coalesced ranged reads in
//! parallel and written at their offsets (`pwrite`), out of order.
//!
//! Everything read from the repository is input from a possibly hostile writer (a writer holds
//! the recipients and the chunk-id key, so a MAC that verifies proves only that *a* writer
//! wrote it). Before anything is written, [`check_entries`] refuses a manifest that lists a
//! path twice, puts an entry under a file or symlink, or whose chunk lengths do not add up to
//! the file sizes; every chunk is checked again against its recorded length as it is written.
//! Nothing is ever opened through a symlink: the target starts empty (or, with `--force`, no
//! directory on the way may be a symlink), files are opened with `O_NOFOLLOW`, permissions and
//! times are set through handles opened the same way, and symlinks are created after every
//! file and directory exists, before only the directories' own modes and times are set.
//! Setuid/setgid bits are dropped unless asked for.
//!
//! Order of work: check the entries; create directories; fetch and write all data (each file
//! created by the worker that first writes it, synced as it completes); set files'
//! permissions and times; create symlinks; set directories' permissions and times (deepest
//! first, so a read-only mode never blocks a later step).

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
use crate::repo::manifest::{Artifact, ChunkRef, EntryKind, Manifest};
use crate::repo::pack::{PackKey, member};
use crate::storage::StorageError;

/// Largest ranged read (bounds memory: concurrency × this).
const MAX_RANGE: u64 = 2 << 20;
/// Gap between blobs still fetched in one read rather than two.
const MAX_GAP: u64 = 256 << 10;
/// Largest chunk a manifest may list (dr's chunks are at most 2 MiB; a larger claim is a
/// forged or broken manifest, and would let it size buffers or files at will).
const MAX_CHUNK: u32 = 16 << 20;

/// Knobs of one restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Concurrent ranged reads.
    pub concurrency: usize,
    /// Restore into a non-empty directory.
    pub force: bool,
    /// Keep setuid/setgid bits (dropped by default: a hostile writer could plant a setuid
    /// root file on the restore host).
    pub keep_setuid: bool,
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

/// One chunk destination: where the chunk is in its pack, which of its bytes go (all, or a
/// slice), and where in which file. Kept flat: a large restore has one per MiB.
struct Piece {
    id: ChunkId,
    loc: Loc,
    file: u32,
    /// Bytes the manifest records (checked against the chunk as opened).
    len: u32,
    /// Where they start in the chunk's plaintext, for a slice (`ChunkRef`'s third field).
    start: Option<u32>,
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
    let paths = check_entries(manifest, target, &snap)?;
    if opts.force {
        refuse_links_on_the_way(manifest, &paths, target)?;
    }

    // Directories and empty files now. A file with data is created by the worker that first
    // writes to it, overlapping inode allocation (slow on ext4 after many deletions) with
    // decompression on the other threads; its chunks cover every byte, so it needs no sizing.
    // With --force an old file in the way is removed first, so that none of its bytes survive.
    // Everything is created private (0700 / 0600) and gets its recorded mode at the end: a
    // database's files are not readable by others while they are being restored.
    // Symlinks' parents are made here too, so that no directory is created once links exist.
    let mut parent_made: Option<&Path> = None;
    let mut empty = Vec::new();
    for (i, (a, p)) in manifest.artifacts.iter().zip(&paths).enumerate() {
        if a.kind == EntryKind::Dir {
            private_dir(p)?;
            continue;
        }
        let parent = p.parent();
        if parent != parent_made
            && let Some(parent) = parent
        {
            private_dir(parent)?;
            parent_made = Some(parent);
        }
        if opts.force {
            // Whatever is there goes (a link, or a hard link to a file elsewhere, is removed
            // rather than written through); a directory in the way fails here.
            remove_existing(p)?;
        }
        if a.kind != EntryKind::Symlink && a.chunks.is_empty() {
            create_nofollow(p)?;
            empty.push(u32::try_from(i).expect("fewer than 4G artifacts"));
        }
    }
    lap("directories created");
    let total: u64 = manifest.artifacts.iter().map(|a| a.size).sum();
    progress
        .total
        .store(total, std::sync::atomic::Ordering::Relaxed);

    // One listing of the packs: chunks held by several packs come from one that exists, and
    // every pack read is checked present with its recorded size before anything is written.
    // The pieces, sorted by chunk id, take their locations as the indexes stream by: no map
    // of the repository's chunks, nor of the snapshot's, is built.
    let present = repo.pack_sizes().await?;
    let mut pieces = pieces_of(manifest);
    pieces.sort_unstable_by_key(|p| p.id);
    let mut index = repo
        .locate_chunks(present.clone(), &mut |id, loc, avoided| {
            let from = pieces.partition_point(|p| p.id < *id);
            for p in pieces[from..].iter_mut().take_while(|p| p.id == *id) {
                if p.loc.pack == UNSET
                    || (avoided[p.loc.pack as usize] && !avoided[loc.pack as usize])
                {
                    p.loc = loc;
                }
            }
        })
        .await?;
    lap("index loaded");
    let jobs = plan(manifest, &mut pieces, repo.storage.location())?;
    lap("planned");
    // The pieces carry every location: only the pack records are needed from here on.
    let packs: Arc<Vec<PackRec>> = Arc::new(std::mem::take(&mut index.packs));
    drop(index);
    check_packs(repo, &present, &packs, &jobs)?;
    drop(present);
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
    let flush_rx = Arc::new(Mutex::new(flush_rx));
    let flushers: Vec<_> = (0..FLUSHERS)
        .map(|_| {
            let (paths, rx) = (paths.clone(), flush_rx.clone());
            std::thread::spawn(move || flusher(&paths, &rx))
        })
        .collect();
    let ctx = Arc::new(WorkerCx {
        snapshot: snap.clone(),
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
    let mut flushed = Ok(());
    for f in flushers {
        let r = f
            .join()
            .map_err(|_| PipelineError::Internal("a restore flusher died".to_owned()))?;
        if flushed.is_ok() {
            flushed = r;
        }
    }
    result?;
    flushed?;
    lap("data written");
    finish_metadata(manifest, &paths, &snap, opts.keep_setuid)?;
    lap("metadata set");
    // The files are synced (see FLUSH_EVERY); their entries, and the directories' modes and
    // times, once the directories are.
    sync_dirs(
        manifest
            .artifacts
            .iter()
            .zip(paths.iter())
            .filter(|(a, _)| a.kind == EntryKind::Dir)
            .map(|(_, p)| &**p)
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
fn check_packs(
    repo: &Repository,
    present: &HashMap<crate::repo::ids::PackId, u64>,
    packs: &[PackRec],
    jobs: &[RangeJob],
) -> Result<(), PipelineError> {
    let used: std::collections::BTreeSet<u32> = jobs.iter().map(|j| j.pack).collect();
    for rec in used.into_iter().map(|pos| &packs[pos as usize]) {
        let key = layout::pack(&rec.id).to_string();
        let location = repo.storage.location().to_owned();
        match present.get(&rec.id) {
            None => return Err(StorageError::NotFound { key, location }.into()),
            Some(&got) if got != rec.size => {
                return Err(StorageError::Truncated {
                    key,
                    location,
                    expected: rec.size,
                    got,
                }
                .into());
            }
            Some(_) => {}
        }
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

/// A piece's location before the indexes gave one.
const UNSET: u32 = u32::MAX;

/// Every chunk destination of `manifest`, not yet located.
fn pieces_of(manifest: &Manifest) -> Vec<Piece> {
    let mut pieces = Vec::with_capacity(manifest.artifacts.iter().map(|a| a.chunks.len()).sum());
    for (i, a) in manifest.artifacts.iter().enumerate() {
        let mut offset = 0u64;
        for c in &a.chunks {
            pieces.push(Piece {
                id: c.0,
                loc: Loc {
                    pack: UNSET,
                    offset: 0,
                    len: 0,
                    raw_len: 0,
                    inner: None,
                },
                file: u32::try_from(i).expect("fewer than 4G artifacts"),
                len: c.1,
                start: c.2,
                offset,
            });
            offset += u64::from(c.1);
        }
    }
    pieces
}

/// Checks that every piece was located and fits its chunk, sorts them by pack and offset,
/// and coalesces neighbouring blobs of a pack into ranged reads.
fn plan(
    manifest: &Manifest,
    pieces: &mut [Piece],
    location: &str,
) -> Result<Vec<RangeJob>, PipelineError> {
    let name = |p: &Piece| {
        String::from_utf8_lossy(&manifest.artifacts[p.file as usize].name.0).into_owned()
    };
    // The first bad piece in manifest order is the one reported.
    if let Some(p) = pieces
        .iter()
        .filter(|p| p.loc.pack == UNSET)
        .min_by_key(|p| (p.file, p.offset))
    {
        return Err(PipelineError::MissingChunk {
            chunk: p.id.to_hex(),
            artifact: name(p),
            location: location.to_owned(),
        });
    }
    let unfit = |p: &&Piece| !ChunkRef(p.id, p.len, p.start).fits(p.loc.raw_len);
    if let Some(p) = pieces
        .iter()
        .filter(unfit)
        .min_by_key(|p| (p.file, p.offset))
    {
        return Err(PipelineError::HostileEntry {
            snapshot: manifest.snapshot.to_string(),
            name: name(p),
            reason: match p.start {
                None => format!(
                    "lists chunk {} as {} bytes, its index as {}",
                    p.id, p.len, p.loc.raw_len
                ),
                Some(s) => format!(
                    "lists bytes {s}..{} of chunk {}, which its index has as {} bytes",
                    u64::from(s) + u64::from(p.len),
                    p.id,
                    p.loc.raw_len
                ),
            },
        });
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
    Ok(jobs)
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
    snapshot: String,
    packs: Arc<Vec<PackRec>>,
    keys: Mutex<HashMap<u32, Arc<PackKey>>>,
    identity: Arc<Identity>,
    ids: crate::repo::keys::ChunkIdKey,
    paths: Arc<Vec<Box<Path>>>,
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
        // One file open at a time per worker: a range of small files' chunks would otherwise
        // hold one descriptor per file (pieces of one file are mostly consecutive anyway).
        let mut file: Option<(u32, std::fs::File)> = None;
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
                for d in chunk {
                    // Checked against the index when planned; the opened chunk is the length
                    // its index says.
                    let (s, len) = (d.start.unwrap_or(0) as usize, d.len as usize);
                    if s + len > plain.len() {
                        return Err(PipelineError::HostileEntry {
                            snapshot: self.snapshot.clone(),
                            name: self.paths[d.file as usize].display().to_string(),
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
                                self.write(&mut file, &r, opened)?;
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
                self.write(&mut file, &r, opened)?;
            }
        }
        Ok(())
    }

    /// Writes `opened[run.src..][..run.len]` at `run.dest` of its file.
    fn write(
        &self,
        file: &mut Option<(u32, std::fs::File)>,
        run: &Run,
        opened: &[u8],
    ) -> Result<(), PipelineError> {
        let path = &self.paths[run.file as usize];
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
        let before = self.remaining[run.file as usize].fetch_sub(len, Ordering::AcqRel);
        if before == len || before / FLUSH_EVERY != (before - len) / FLUSH_EVERY {
            // The flusher outlives the workers; a send fails only if it already failed.
            let _ = self.flush.send(run.file);
        }
        Ok(())
    }
}

/// A restore that says it is done has its data on disk, as pgBackRest's does: [`FLUSHERS`]
/// threads sync each file once it is complete while the workers go on, and the directories are synced
/// last (per file rather than `syncfs`, so that a restore never waits on other programs' data
/// on a shared filesystem). Synced only when complete, a big relation file doubled a
/// PostgreSQL restore's time: the kernel starts writing it back only when asked. So it is also
/// synced every this many bytes written.
const FLUSH_EVERY: u64 = 32 << 20;

/// Maps every entry to its path under `target`, refusing before anything is written a
/// manifest that could write outside the target or one place twice: unsafe names, a path
/// listed twice, an entry under a file or symlink of the snapshot (which, created later,
/// would lead elsewhere), chunk lengths that do not add up to the file's size.
fn check_entries(
    manifest: &Manifest,
    target: &Path,
    snapshot: &str,
) -> Result<Vec<Box<Path>>, PipelineError> {
    let refuse = |a: &Artifact, reason: String| PipelineError::HostileEntry {
        snapshot: snapshot.to_owned(),
        name: String::from_utf8_lossy(&a.name.0).into_owned(),
        reason,
    };
    // Boxed: exactly their length (a pushed-to PathBuf keeps up to twice its length).
    let paths: Vec<Box<Path>> = manifest
        .artifacts
        .iter()
        .map(|a| safe_path(target, &a.name.0, snapshot).map(PathBuf::into_boxed_path))
        .collect::<Result<_, _>>()?;
    let mut kinds: HashMap<&Path, EntryKind> = HashMap::with_capacity(paths.len());
    for (a, p) in manifest.artifacts.iter().zip(&paths) {
        if kinds.insert(&**p, a.kind).is_some() {
            return Err(refuse(a, "is listed twice".to_owned()));
        }
        if **p == *target && a.kind != EntryKind::Dir {
            return Err(refuse(a, "names the target directory itself".to_owned()));
        }
        match a.kind {
            EntryKind::File | EntryKind::Stream => {
                if let Some(c) = a.chunks.iter().find(|c| c.1 == 0 || c.1 > MAX_CHUNK) {
                    return Err(refuse(a, format!("lists chunk {} as {} bytes", c.0, c.1)));
                }
                let sum: u64 = a.chunks.iter().map(|c| u64::from(c.1)).sum();
                if sum != a.size {
                    return Err(refuse(
                        a,
                        format!("has chunks of {sum} bytes for a size of {}", a.size),
                    ));
                }
            }
            EntryKind::Dir | EntryKind::Symlink if !a.chunks.is_empty() => {
                return Err(refuse(a, "is a directory or symlink with data".to_owned()));
            }
            EntryKind::Symlink if a.target.as_ref().is_none_or(|t| t.0.is_empty()) => {
                return Err(refuse(a, "is a symlink without a target".to_owned()));
            }
            EntryKind::Dir | EntryKind::Symlink => {}
        }
    }
    for (a, p) in manifest.artifacts.iter().zip(&paths) {
        let mut under = p.ancestors().skip(1).take_while(|d| *d != target);
        if let Some(d) = under.find(|d| kinds.get(d).is_some_and(|k| *k != EntryKind::Dir)) {
            return Err(refuse(
                a,
                format!(
                    "lies under {}, which the snapshot lists as a file or symlink",
                    d.strip_prefix(target).unwrap_or(d).display()
                ),
            ));
        }
    }
    Ok(paths)
}

/// With `--force`: refuses when a directory any entry goes into is a symlink in the existing
/// tree (writing through it would land outside the target). Each directory is looked at once.
fn refuse_links_on_the_way(
    manifest: &Manifest,
    paths: &[Box<Path>],
    target: &Path,
) -> Result<(), PipelineError> {
    let mut seen: std::collections::HashSet<&Path> = std::collections::HashSet::new();
    for (a, p) in manifest.artifacts.iter().zip(paths) {
        let own = (a.kind == EntryKind::Dir).then_some(&**p);
        for d in own
            .into_iter()
            .chain(p.ancestors().skip(1))
            .take_while(|d| *d != target)
        {
            // Its parents were looked at when it was first seen.
            if !seen.insert(d) {
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
    }
    Ok(())
}

/// Removes whatever is at `p` (not following a symlink); nothing there is fine.
fn remove_existing(p: &Path) -> Result<(), PipelineError> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(PipelineError::io("replacing", p, e))
        }
        _ => Ok(()),
    }
}

/// Creates an empty private file (never through a symlink).
fn create_nofollow(p: &Path) -> Result<(), PipelineError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
        .map(drop)
        .map_err(|e| PipelineError::io("creating", p, e))
}

/// Opens `p` to read, failing on a symlink (`dir`: and on anything but a directory).
fn open_nofollow(p: &Path, dir: bool) -> std::io::Result<std::fs::File> {
    let flags = libc::O_NOFOLLOW | if dir { libc::O_DIRECTORY } else { 0 };
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(p)
}

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
    // The parent of a relative target (`--target-dir out`) is the empty path: the current
    // directory.
    let dirs: std::collections::BTreeSet<&Path> = dirs
        .into_iter()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .collect();
    for d in dirs {
        open_nofollow(d, true)
            .and_then(|f| f.sync_all())
            .map_err(|e| PipelineError::io("syncing", d, e))?;
    }
    Ok(())
}

/// Threads syncing restored files. A sync mostly waits for the filesystem's journal commit,
/// and concurrent syncs share one commit: with one thread, 100,000 small files took 36 s to
/// restore, three times restic's unsynced restore.
const FLUSHERS: usize = 16;

/// Syncs the files the workers name (complete, or another FLUSH_EVERY written) until they hang
/// up; the first error is returned after the channel is drained, naming the file.
fn flusher(
    paths: &[Box<Path>],
    rx: &Mutex<std::sync::mpsc::Receiver<u32>>,
) -> Result<(), PipelineError> {
    let mut first_error = None;
    loop {
        // One idle flusher waits on the channel at a time; the others are syncing.
        let Ok(file) = rx.lock().expect("flush queue lock").recv() else {
            break;
        };
        if first_error.is_some() {
            continue;
        }
        // Opened for each sync: holding every file open would run into the descriptor limit.
        let path = &paths[file as usize];
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

/// Files' permissions and times, then symlinks, then directories' permissions and times
/// (deepest first: their times change whenever an entry is created). Files and directories
/// are changed through handles opened without following links; a file's size is checked
/// against the manifest on the way.
fn finish_metadata(
    manifest: &Manifest,
    paths: &[Box<Path>],
    snapshot: &str,
    keep_setuid: bool,
) -> Result<(), PipelineError> {
    let mtime = |ns: Option<i64>| {
        ns.map(|ns| {
            filetime::FileTime::from_unix_time(
                ns.div_euclid(1_000_000_000),
                u32::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or(0),
            )
        })
    };
    let set = |f: &std::fs::File, p: &Path, mode: u32, ns: Option<i64>| {
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| PipelineError::io("setting permissions of", p, e))?;
        if let Some(t) = mtime(ns) {
            filetime::set_file_handle_times(f, None, Some(t))
                .map_err(|e| PipelineError::io("setting the time of", p, e))?;
        }
        Ok::<_, PipelineError>(())
    };
    let entries = || manifest.artifacts.iter().zip(paths);
    for (a, p) in entries().filter(|(a, _)| matches!(a.kind, EntryKind::File | EntryKind::Stream)) {
        let f = open_nofollow(p, false).map_err(|e| PipelineError::io("opening", p, e))?;
        let len = f
            .metadata()
            .map_err(|e| PipelineError::io("looking at", p, e))?
            .len();
        if len != a.size {
            return Err(PipelineError::HostileEntry {
                snapshot: snapshot.to_owned(),
                name: String::from_utf8_lossy(&a.name.0).into_owned(),
                reason: format!("was restored with {len} bytes, not its {}", a.size),
            });
        }
        set(&f, p, file_mode(a.mode, keep_setuid), a.mtime_ns)?;
    }
    for (a, p) in entries().filter(|(a, _)| a.kind == EntryKind::Symlink) {
        let target = a
            .target
            .as_ref()
            .map(|t| PathBuf::from(OsStr::from_bytes(&t.0)))
            .unwrap_or_default();
        std::os::unix::fs::symlink(&target, p)
            .map_err(|e| PipelineError::io("creating symlink", p, e))?;
        if let Some(t) = mtime(a.mtime_ns) {
            filetime::set_symlink_file_times(p, t, t)
                .map_err(|e| PipelineError::io("setting the time of", p, e))?;
        }
    }
    let mut dirs: Vec<(usize, &Box<Path>, u32, Option<i64>)> = entries()
        .filter(|(a, _)| a.kind == EntryKind::Dir)
        .map(|(a, p)| (p.components().count(), p, a.mode, a.mtime_ns))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    for (_, p, mode, ns) in dirs {
        let f = open_nofollow(p, true).map_err(|e| PipelineError::io("opening", p, e))?;
        // Setgid and sticky bits on directories are kept (group inheritance, /tmp-like dirs).
        set(&f, p, mode & 0o3777, ns)?;
    }
    Ok(())
}

/// The permission bits a restored file gets: setuid/setgid only when asked for (a hostile
/// writer could otherwise plant a setuid file owned by the restoring user, often root).
fn file_mode(recorded: u32, keep_setuid: bool) -> u32 {
    if keep_setuid {
        recorded & 0o7777
    } else {
        recorded & 0o1777
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
}
