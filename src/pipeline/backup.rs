//! Backup: source artifacts → chunks → dedup → zstd + seal into packs → upload → commit.
//!
//! ```text
//! source task ──Artifact──▶ reader thread ──Batch(1 MiB of new chunks)──▶ N seal workers ──SealedPack──▶ uploads
//!   (async)     bounded 64   chunk + id +     bounded 2N                    compress, seal,   bounded 1     JoinSet,
//!                            dedup + BLAKE3                                 own pack each                   ≤ concurrency
//! ```
//!
//! Every stage stops when the next one goes away, so the first failure unwinds the whole
//! pipeline; nothing is committed unless every stage succeeded. Each worker fills its own pack
//! with its own data key, so sealing needs no shared state.

use std::collections::{BTreeSet, HashSet};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::progress::Progress;
use super::upload::{Budgeted, Stored, upload_all};
use super::{IndexSet, PipelineError, Repository, file_cache, pages};
use crate::repo::gc::Phase;
use crate::repo::ids::{ChunkId, IndexId, PackId, SnapshotId};
use crate::repo::keys::{ChunkIdKey, Recipients};
use crate::repo::layout;
use crate::repo::manifest::{self, ChunkRef, ManifestWriter, Refs, SourceInfo};
use crate::repo::meta::ChunkerParams;
use crate::repo::pack::{PackWriter, SealedPack};
use crate::source::{AnySource, Artifact, Body, Chunking, SnapshotCx, SourceError};
use crate::storage::PutMode;

/// Knobs of one backup run.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Policy id.
    pub policy: String,
    /// zstd level.
    pub compression: i32,
    /// Target pack size.
    pub pack_size: usize,
    /// Concurrent uploads.
    pub upload_concurrency: usize,
    /// Seal worker threads.
    pub workers: usize,
    /// Read files whose stat says they are unchanged since the last backup, instead of taking
    /// their chunks from the file cache.
    pub force_read: bool,
}

/// What a backup did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupSummary {
    pub policy: String,
    /// The new snapshot.
    pub snapshot: SnapshotId,
    /// Where it was written.
    pub location: String,
    /// Artifacts (files, directories, streams).
    pub artifacts: u64,
    /// Plaintext bytes read from the source.
    pub bytes_read: u64,
    /// Plaintext bytes of chunks the repository did not have.
    pub bytes_new: u64,
    /// Bytes uploaded (compressed and sealed).
    pub bytes_stored: u64,
    /// Chunk references in the snapshot (whole chunks or slices of them).
    pub chunks: u64,
    /// Chunks that were new.
    pub chunks_new: u64,
    /// Files taken from the last backup without reading (size, mtime, ctime, inode unchanged).
    pub files_unchanged: u64,
    /// Packs uploaded.
    pub packs: u64,
    /// Wall time.
    #[serde(with = "secs")]
    pub duration: Duration,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// How much new chunk data the reader hands to a seal worker at once: one channel message per
/// 8 KiB page block cost more than a tenth of a PostgreSQL backup in send/receive and wake-ups.
const BATCH_BYTES: usize = 1 << 20;
/// Plaintext size of a group of small chunks sealed as one zstd frame (`repo::pack`): 16
/// PostgreSQL pages compress 1.8x faster and to about half the size of 16 single pages.
const GROUP_BYTES: usize = 128 << 10;
/// Chunks larger than this are sealed alone.
const GROUP_MEMBER_MAX: usize = 32 << 10;
/// Read size for fixed-block artifacts.
const READ_BYTES: usize = 1 << 20;
/// A pack being built spills what it has sealed to its spool file past this many bytes: a
/// backup holds no pack in memory (16 MiB each, and as many as the budget in [`run`]).
const SPILL_BYTES: usize = 1 << 20;

/// A pack being built, its spool file and its place in the budget.
struct Building {
    w: PackWriter,
    file: tempfile::NamedTempFile,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// New chunks for a seal worker.
#[derive(Default)]
struct Batch {
    jobs: Vec<(ChunkId, Vec<u8>)>,
    bytes: usize,
}

impl Batch {
    fn push(&mut self, id: ChunkId, data: Vec<u8>) {
        self.bytes += data.len();
        self.jobs.push((id, data));
    }
}

struct ReadOutcome {
    /// The manifest, written as the artifacts came.
    manifest: ManifestWriter<std::fs::File>,
    /// The file cache for the next backup.
    files: Option<file_cache::Writer>,
    files_unchanged: u64,
    /// Plaintext bytes of all artifacts.
    bytes_total: u64,
    /// Which of the index's packs hold chunks of this snapshot (every new pack does).
    used_packs: Vec<bool>,
    chunks: u64,
    bytes_new: u64,
}

/// New chunks already handed to the seal workers: the last [`RECENT`] to [`RECENT`] x 2 of
/// them, not every one (that set grew by 40 bytes per 8 KiB page of a full backup). A chunk
/// repeated further apart than that within one backup is stored twice, which costs space,
/// never correctness (the index keeps one location).
struct Recent {
    current: HashSet<ChunkId>,
    previous: HashSet<ChunkId>,
}

/// See [`Recent`]: 64k chunks are 512 MiB of PostgreSQL pages, 32 GiB of files.
const RECENT: usize = 1 << 16;

impl Recent {
    fn new() -> Self {
        Self {
            current: HashSet::with_capacity(RECENT),
            previous: HashSet::new(),
        }
    }

    /// True when `id` was not dispatched recently; remembers it.
    fn insert(&mut self, id: ChunkId) -> bool {
        if self.previous.contains(&id) || !self.current.insert(id) {
            return false;
        }
        if self.current.len() >= RECENT {
            self.previous = std::mem::replace(&mut self.current, HashSet::with_capacity(RECENT));
        }
        true
    }
}

/// Runs one backup of `source` into `repo` and commits it.
///
/// # Errors
/// The first failure of any stage; the repository then has no new snapshot (uploaded packs
/// stay as garbage for prune, or are reused by the next run through the index).
pub async fn run(
    repo: &Repository,
    recipients: &Recipients,
    source: AnySource,
    opts: &BackupOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<BackupSummary, PipelineError> {
    let t0 = Instant::now();
    let started = Utc::now();
    let snapshot = SnapshotId::new(started);
    let index = Arc::new(repo.load_index_for_backup().await?);
    let cancel = cancel.child_token();
    let source_kind = source.kind();

    let (art_tx, art_rx) = mpsc::channel::<Artifact>(64);
    let source_task = tokio::spawn(source.snapshot(SnapshotCx {
        out: art_tx,
        cancel: cancel.clone(),
    }));

    let workers = opts.workers.max(1);
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Batch>(workers * 2);
    let (pack_tx, mut pack_rx) = mpsc::channel::<Budgeted>(1);
    // Packs being filled, waiting and uploading are at most this many: a backup's memory is
    // this many packs, whatever the data size and however slow the store.
    let budget = Arc::new(tokio::sync::Semaphore::new(
        workers + opts.upload_concurrency.max(1),
    ));

    let spool = repo.spool_dir()?;
    let spool_err = |e| PipelineError::io("writing a manifest to", &spool, e);
    let (manifest_file, manifest_path) = tempfile::Builder::new()
        .prefix("manifest-")
        .tempfile_in(&spool)
        .map_err(spool_err)?
        .into_parts();
    let writer = ManifestWriter::new(
        recipients,
        manifest_file,
        &repo.meta.repo_id,
        &opts.policy,
        &snapshot,
        started,
    )
    .map_err(spool_err)?;
    // Trees whose files carry their stat, and PostgreSQL's relation files, keep a file cache
    // (see `file_cache`).
    let cache = matches!(source_kind, "files" | "postgres")
        .then(|| -> Result<_, PipelineError> {
            let path = file_cache::path(repo.cache_dir(), &opts.policy);
            let last = (!opts.force_read)
                .then(|| file_cache::Reader::open(&path, &repo.meta.repo_id, &opts.policy));
            let next = file_cache::Writer::create(path.clone(), &repo.meta.repo_id, &opts.policy)
                .map_err(|e| PipelineError::io("writing", &path, e))?;
            Ok((last, next))
        })
        .transpose()?;
    let reader = {
        let (index, ids, progress, cancel) = (
            index.clone(),
            repo.ids.clone(),
            progress.clone(),
            cancel.clone(),
        );
        let params = repo.meta.chunker;
        tokio::task::spawn_blocking(move || {
            read_artifacts(
                art_rx, writer, cache, &job_tx, &index, &ids, params, &progress, &cancel,
            )
        })
    };
    let mut sealers = Vec::new();
    for _ in 0..workers {
        let (jobs, packs, recipients) = (job_rx.clone(), pack_tx.clone(), recipients.clone());
        let (level, size, budget, spool) = (
            opts.compression,
            opts.pack_size,
            budget.clone(),
            spool.clone(),
        );
        sealers.push(tokio::task::spawn_blocking(move || {
            seal_worker(&jobs, &packs, &budget, &spool, level, size, &recipients)
        }));
    }
    drop((job_rx, pack_tx));

    let uploaded = upload_all(repo, &mut pack_rx, opts.upload_concurrency, &progress).await;
    if uploaded.is_err() {
        cancel.cancel();
    }
    drop(pack_rx);

    let read = reader
        .await
        .map_err(|e| PipelineError::Internal(format!("reader: {e}")))?;
    let mut sealed = Ok(());
    for s in sealers {
        let r = s
            .await
            .map_err(|e| PipelineError::Internal(format!("seal worker: {e}")))?;
        if sealed.is_ok() {
            sealed = r;
        }
    }
    let report = source_task
        .await
        .map_err(|e| PipelineError::Internal(format!("source task: {e}")))?;

    let report = first_error(report.map_err(PipelineError::from), read, sealed, uploaded)?;
    let (report, read, stored) = report;
    if cancel.is_cancelled() {
        return Err(PipelineError::Cancelled);
    }

    let (pack_ids, index_ids) = referenced_objects(&read.used_packs, &index, &stored);
    let bytes_stored: u64 = stored.packs.iter().map(|p| p.1).sum();
    let bytes_total = read.bytes_total;
    let artifacts = read.manifest.artifacts();
    let finished = Utc::now();
    let refs = Refs {
        version: manifest::REFS_VERSION,
        policy: opts.policy.clone(),
        snapshot: snapshot.clone(),
        source_kind: source_kind.to_owned(),
        started,
        finished,
        packs: pack_ids,
        indexes: index_ids,
        bytes_total,
        bytes_new: bytes_stored,
        artifacts,
        facts: report.public_facts.clone(),
    };
    let source = SourceInfo {
        kind: source_kind.to_owned(),
        facts: report.facts,
    };
    let manifest = read.manifest;
    tokio::task::spawn_blocking(move || manifest.finish(&source, finished))
        .await
        .map_err(|e| PipelineError::Internal(e.to_string()))?
        .map_err(spool_err)?;
    check_prune_race(repo, &refs.packs).await?;
    // Commit: refs, then the manifest. Only the manifest makes the snapshot exist.
    repo.storage
        .put(
            &layout::refs(&opts.policy, &snapshot),
            Bytes::from(refs.encode(&repo.ids, &repo.meta.repo_id)),
            PutMode::CreateOnly,
        )
        .await?;
    repo.storage
        .put_file(
            &layout::manifest(&opts.policy, &snapshot),
            &manifest_path,
            PutMode::CreateOnly,
        )
        .await?;
    tracing::info!(policy = %opts.policy, snapshot = %snapshot, bytes_total, bytes_stored, files_unchanged = read.files_unchanged, seconds = t0.elapsed().as_secs_f64(), "Backup committed.");
    if let Some(files) = read.files {
        // Only an optimisation: without it the next backup reads every file.
        if let Err(e) = tokio::task::spawn_blocking(move || files.commit())
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
        {
            tracing::warn!(error = %e, "Could not save the file cache; the next backup reads every file.");
        }
    }

    Ok(BackupSummary {
        policy: opts.policy.clone(),
        snapshot,
        location: repo.storage.location().to_owned(),
        artifacts,
        bytes_read: bytes_total,
        bytes_new: read.bytes_new,
        bytes_stored,
        chunks: read.chunks,
        chunks_new: stored.packs.iter().map(|p| p.2).sum(),
        files_unchanged: read.files_unchanged,
        packs: stored.packs.len() as u64,
        duration: t0.elapsed(),
    })
}

/// Picks the error that explains the failure: a stage that merely saw its neighbour stop
/// reports `Cancelled`, so any other error wins over it.
fn first_error<A, B, C>(
    a: Result<A, PipelineError>,
    b: Result<B, PipelineError>,
    c: Result<(), PipelineError>,
    d: Result<C, PipelineError>,
) -> Result<(A, B, C), PipelineError> {
    let errs = [
        a.as_ref().err(),
        b.as_ref().err(),
        c.as_ref().err(),
        d.as_ref().err(),
    ];
    if errs.iter().any(Option::is_some) {
        let primary = errs.iter().flatten().position(|e| {
            !matches!(
                e,
                PipelineError::Cancelled | PipelineError::Source(SourceError::PipelineGone)
            )
        });
        let all: Vec<PipelineError> = [a.err(), b.err(), c.err(), d.err()]
            .into_iter()
            .flatten()
            .collect();
        return Err(all
            .into_iter()
            .nth(primary.unwrap_or(0))
            .expect("at least one error"));
    }
    Ok((
        a.expect("checked"),
        b.expect("checked"),
        d.expect("checked"),
    ))
}

/// Where the reader sends chunks: new ones to the seal workers, in batches; known ones only
/// mark the packs the snapshot uses.
struct Sink<'a> {
    index: &'a IndexSet,
    jobs: &'a crossbeam_channel::Sender<Batch>,
    batch: Batch,
    dispatched: Recent,
    /// Which of the index's packs hold chunks of this snapshot (every new pack does).
    used_packs: Vec<bool>,
    bytes_new: u64,
}

impl<'a> Sink<'a> {
    fn new(index: &'a IndexSet, jobs: &'a crossbeam_channel::Sender<Batch>) -> Self {
        Self {
            index,
            jobs,
            batch: Batch::default(),
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
            self.batch.push(id, data.to_vec());
            if self.batch.bytes >= BATCH_BYTES {
                self.jobs
                    .send(std::mem::take(&mut self.batch))
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
                .send(self.batch)
                .map_err(|_| PipelineError::Cancelled)?;
        }
        Ok((self.used_packs, self.bytes_new))
    }
}

#[allow(clippy::too_many_arguments)]
fn read_artifacts(
    mut rx: mpsc::Receiver<Artifact>,
    mut manifest: ManifestWriter<std::fs::File>,
    cache: Option<(Option<file_cache::Reader>, file_cache::Writer)>,
    jobs: &crossbeam_channel::Sender<Batch>,
    index: &IndexSet,
    ids: &ChunkIdKey,
    params: ChunkerParams,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<ReadOutcome, PipelineError> {
    let (mut last, mut files) = cache.map_or((None, None), |(l, n)| (l, Some(n)));
    let mut sink = Sink::new(index, jobs);
    let (mut files_unchanged, mut bytes_total, mut chunks) = (0, 0, 0);
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
                let (chunks, keys) = back_up_pages(
                    r,
                    page,
                    &display,
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
    })
}

/// Backs up a fixed-block file window by window against the last backup of it (see
/// [`pages`]): `before` is the file cache that has its page keys, where they are, and its
/// references then. Writes this backup's page keys to `keys` as it goes; returns the file's
/// references and where its keys went.
#[allow(clippy::too_many_arguments)]
fn back_up_pages(
    r: impl Read,
    page: usize,
    what: &str,
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
fn for_each_chunk(
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

fn seal_worker(
    jobs: &crossbeam_channel::Receiver<Batch>,
    packs: &mpsc::Sender<Budgeted>,
    budget: &Arc<tokio::sync::Semaphore>,
    spool: &std::path::Path,
    level: i32,
    pack_size: usize,
    recipients: &Recipients,
) -> Result<(), PipelineError> {
    let mut z = zstd::bulk::Compressor::new(level)
        .map_err(|e| PipelineError::Internal(format!("zstd: {e}")))?;
    let spool_err = |e: std::io::Error| PipelineError::io("writing a pack to", spool, e);
    // A pack is started only with a place in the budget.
    let start = || -> Result<Building, PipelineError> {
        let permit = tokio::runtime::Handle::current()
            .block_on(budget.clone().acquire_owned())
            .map_err(|_| PipelineError::Cancelled)?;
        let file = tempfile::Builder::new()
            .prefix("pack-")
            .tempfile_in(spool)
            .map_err(spool_err)?;
        Ok(Building {
            w: PackWriter::new(SPILL_BYTES + (4 << 20)),
            file,
            permit,
        })
    };
    let ship = |b: Building| -> Result<(), PipelineError> {
        let Building {
            w,
            mut file,
            permit,
        } = b;
        let pack = w.finish(recipients)?;
        file.write_all(&pack.bytes).map_err(spool_err)?;
        packs
            .blocking_send(Budgeted {
                pack: SealedPack {
                    bytes: bytes::Bytes::new(),
                    ..pack
                },
                spool: file.into_temp_path(),
                _permit: permit,
            })
            .map_err(|_| PipelineError::Cancelled)
    };
    let mut current: Option<Building> = None;
    // Small chunks (page blocks) are sealed in groups of consecutive ones, large ones alone.
    let mut group: Vec<(ChunkId, Vec<u8>)> = Vec::new();
    // Seals into the current pack (started when there is none), then ships or spills it.
    let mut add = |current: &mut Option<Building>,
                   seal: &mut dyn FnMut(
        &mut PackWriter,
        &mut zstd::bulk::Compressor<'static>,
    ) -> Result<(), crate::repo::RepoError>|
     -> Result<(), PipelineError> {
        if current.is_none() {
            *current = Some(start()?);
        }
        let b = current.as_mut().expect("started above");
        seal(&mut b.w, &mut z)?;
        if b.w.len() >= pack_size {
            ship(current.take().expect("started above"))?;
        } else if b.w.pending() >= SPILL_BYTES {
            b.w.spill(&mut b.file).map_err(spool_err)?;
        }
        Ok(())
    };
    for batch in jobs {
        let mut group_bytes = 0;
        for (id, data) in batch.jobs {
            if data.len() > GROUP_MEMBER_MAX {
                add(&mut current, &mut |w, z| w.add(id, &data, z))?;
                continue;
            }
            group_bytes += data.len();
            group.push((id, data));
            if group_bytes >= GROUP_BYTES {
                add(&mut current, &mut |w, z| w.add_group(&group, z))?;
                group.clear();
                group_bytes = 0;
            }
        }
        if !group.is_empty() {
            add(&mut current, &mut |w, z| w.add_group(&group, z))?;
            group.clear();
        }
    }
    if let Some(b) = current.filter(|b| !b.w.is_empty()) {
        ship(b)?;
    }
    Ok(())
}

/// Refuses to commit a snapshot that uses a pack prune has deleted, or will be allowed to
/// delete soon. Prune sweeps a mark only after its `sweep_after` and only what no `.refs`
/// names then; a backup that passes this check writes its `.refs` well before that moment, so
/// the sweep sees it (the margin covers the time between this check and the write, and clock
/// skew between hosts). A refused backup commits nothing; the next run stores the data anew,
/// because writers never dedupe against marked packs.
async fn check_prune_race(repo: &Repository, packs: &[PackId]) -> Result<(), PipelineError> {
    let state = repo.gc_state().await?;
    let used: HashSet<&PackId> = packs.iter().collect();
    let now = Utc::now();
    let margin_cap = chrono::Duration::minutes(10);
    for (phase, (name, r)) in state
        .swept
        .iter()
        .map(|r| (Phase::Swept, r))
        .chain(state.marks.iter().map(|r| (Phase::Mark, r)))
    {
        let margin = ((r.sweep_after - r.created) / 4).min(margin_cap);
        if phase == Phase::Mark && now + margin < r.sweep_after {
            continue;
        }
        if let Some(p) = r.packs.iter().find(|p| used.contains(p)) {
            return Err(PipelineError::PruneRace {
                pack: layout::pack(p).to_string(),
                record: layout::gc(name, phase).to_string(),
            });
        }
    }
    Ok(())
}

/// The packs and indexes a snapshot needs: for retention and replication, which cannot read
/// the manifest.
fn referenced_objects(
    used: &[bool],
    index: &IndexSet,
    stored: &Stored,
) -> (Vec<PackId>, Vec<IndexId>) {
    let mut packs: BTreeSet<PackId> = stored.packs.iter().map(|p| p.0).collect();
    let mut indexes: BTreeSet<IndexId> = stored.indexes.iter().copied().collect();
    for (pos, _) in used.iter().enumerate().filter(|(_, u)| **u) {
        let rec = index.pack(u32::try_from(pos).expect("fewer than 4G packs"));
        packs.insert(rec.id);
        indexes.insert(index.indexes[rec.index as usize]);
    }
    (packs.into_iter().collect(), indexes.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn chunks_of(data: &[u8], chunking: Chunking) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let p = ChunkerParams {
            min: 256,
            avg: 1024,
            max: 4096,
        };
        let mut buf = Vec::new();
        for_each_chunk(data, chunking, p, "t", &mut buf, |c| {
            out.push(c.to_vec());
            Ok(())
        })
        .unwrap();
        // The same chunks as fastcdc's own streaming chunker (repositories keep deduplicating).
        if chunking == Chunking::ContentDefined {
            let theirs: Vec<Vec<u8>> = fastcdc::v2020::StreamCDC::new(data, p.min, p.avg, p.max)
                .map(|c| c.unwrap().data)
                .collect();
            assert_eq!(out, theirs);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn chunking_then_reassembling_gives_the_input(data in proptest::collection::vec(any::<u8>(), 0..40_000), block in 1usize..9000) {
            for chunking in [Chunking::ContentDefined, Chunking::Fixed(block)] {
                let chunks = chunks_of(&data, chunking);
                prop_assert_eq!(chunks.concat(), data.clone());
                prop_assert!(chunks.iter().all(|c| !c.is_empty()));
                if let Chunking::Fixed(n) = chunking {
                    prop_assert!(chunks.iter().rev().skip(1).all(|c| c.len() == n));
                }
            }
        }
    }

    #[test]
    fn content_defined_boundaries_resync_after_an_insertion() {
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut shifted = b"inserted bytes".to_vec();
        shifted.extend_from_slice(&data);
        let a: HashSet<Vec<u8>> = chunks_of(&data, Chunking::ContentDefined)
            .into_iter()
            .collect();
        let b = chunks_of(&shifted, Chunking::ContentDefined);
        let shared = b.iter().filter(|c| a.contains(*c)).count();
        assert!(
            shared * 10 >= b.len() * 8,
            "only {shared} of {} chunks shared",
            b.len()
        );
    }
}
