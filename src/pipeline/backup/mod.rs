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
//!
//! This file runs the stages and commits; the reader thread is [`read`], a seal worker
//! [`seal`].

use std::collections::{BTreeSet, HashSet};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod read;
use read::read_artifacts;
mod seal;
use seal::seal_worker;

use super::progress::Progress;
use super::upload::{Budgeted, Stored, upload_all};
use super::{IndexSet, PipelineError, Repository, file_cache, pages};
use crate::repo::gc::Phase;
use crate::repo::ids::{ChunkId, IndexId, PackId, SnapshotId};
use crate::repo::keys::{ChunkIdKey, Recipients};
use crate::repo::layout;
use crate::repo::manifest::{self, ChunkRef, ManifestWriter, Refs, SourceInfo};
use crate::repo::meta::ChunkerParams;
use crate::repo::pack::{PackBuffers, PackWriter};
use crate::source::postgres::checksum::BadPage;
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
    /// Pages failing their checksum fail the backup (nothing committed) instead of being
    /// reported with it.
    pub fail_on_bad_page: bool,
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
    /// Wall time (`seconds` in JSON, as every duration dr prints).
    #[serde(with = "secs", rename = "seconds")]
    pub duration: Duration,
    /// PostgreSQL with data checksums: pages that failed their checksum (read twice).
    pub bad_pages: Vec<BadPage>,
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

/// New chunks for a seal worker: their bytes one after the other in one buffer, which goes
/// back to the reader once sealed ([`ToSeal::free`]) (one allocation per chunk was, with freed
/// pages returned to the OS at once, a page fault per 4 KiB read).
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    /// Each chunk's id and end in `data` (it starts where the one before ends).
    jobs: Vec<(ChunkId, usize)>,
}

impl Batch {
    fn from_pool(free: &crossbeam_channel::Receiver<Vec<u8>>) -> Self {
        let data = free.try_recv().unwrap_or_default();
        Self {
            data,
            jobs: Vec::new(),
        }
    }

    fn push(&mut self, id: ChunkId, data: &[u8]) {
        self.data.extend_from_slice(data);
        self.jobs.push((id, self.data.len()));
    }

    /// The chunks in order.
    fn chunks(&self) -> impl Iterator<Item = (ChunkId, &[u8])> {
        let mut start = 0;
        self.jobs.iter().map(move |&(id, end)| {
            let c = &self.data[start..end];
            start = end;
            (id, c)
        })
    }

    /// Hands the buffer back for the next batch (dropped when enough are waiting, or when
    /// a large chunk grew it).
    fn recycle(mut self, free: &crossbeam_channel::Sender<Vec<u8>>) {
        if self.data.capacity() <= 2 * BATCH_BYTES {
            self.data.clear();
            let _ = free.try_send(self.data);
        }
    }
}

/// The reader's end of the seal workers' queue.
struct ToSeal {
    batches: crossbeam_channel::Sender<Batch>,
    /// Buffers of sealed batches.
    free: crossbeam_channel::Receiver<Vec<u8>>,
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
        expected: progress.total.clone(),
    }));

    let workers = opts.workers.max(1);
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Batch>(workers * 2);
    let (free_tx, free_rx) = crossbeam_channel::bounded(workers);
    let to_seal = ToSeal {
        batches: job_tx,
        free: free_rx,
    };
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
                art_rx, writer, cache, &to_seal, &index, &ids, params, &progress, &cancel,
            )
        })
    };
    let mut sealers = Vec::new();
    for _ in 0..workers {
        let (jobs, free, packs, recipients) = (
            job_rx.clone(),
            free_tx.clone(),
            pack_tx.clone(),
            recipients.clone(),
        );
        let (level, size, budget, spool) = (
            opts.compression,
            opts.pack_size,
            budget.clone(),
            spool.clone(),
        );
        sealers.push(tokio::task::spawn_blocking(move || {
            seal_worker(
                &jobs,
                &free,
                &packs,
                &budget,
                &spool,
                level,
                size,
                &recipients,
            )
        }));
    }
    drop((job_rx, free_tx, pack_tx));

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

    if opts.fail_on_bad_page && !read.bad_pages.is_empty() {
        return Err(PipelineError::BadPages {
            pages: read.bad_pages,
        });
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
        facts: with_bad_pages(report.public_facts.clone(), &read.bad_pages),
    };
    let mut facts = report.facts;
    // The encrypted manifest keeps every bad page (the `.refs` the first 100).
    if let (false, Some(f)) = (read.bad_pages.is_empty(), facts.as_object_mut()) {
        f.insert("bad_pages".to_owned(), serde_json::json!(read.bad_pages));
    }
    let source = SourceInfo {
        kind: source_kind.to_owned(),
        facts,
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
        bad_pages: read.bad_pages,
    })
}

/// How many pages failed their checksum (and the first 100 of them), among a snapshot's
/// public facts, so that `dr snapshots`, `dr info` and the API show them without the key.
fn with_bad_pages(
    mut facts: std::collections::BTreeMap<String, serde_json::Value>,
    bad: &[BadPage],
) -> std::collections::BTreeMap<String, serde_json::Value> {
    if !bad.is_empty() {
        facts.insert("bad_pages".to_owned(), serde_json::json!(bad.len()));
        facts.insert(
            "bad_page_list".to_owned(),
            serde_json::json!(bad.iter().take(100).collect::<Vec<_>>()),
        );
    }
    facts
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

    use super::read::for_each_chunk;
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
