//! Restore: a snapshot's artifacts into a directory, fetched with coalesced ranged reads in
//! parallel and written at their offsets (`pwrite`), out of order, in memory that does not
//! grow with the snapshot (a million files restore in the memory of a thousand).
//!
//! Everything read from the repository is input from a possibly hostile writer (a writer holds
//! the recipients and the chunk-id key, so a MAC that verifies proves only that *a* writer
//! wrote it). Nothing is written until the whole manifest has been checked ([`check`]): no
//! unsafe or duplicate path, nothing under a file or symlink of the snapshot, chunk lengths
//! that add up to the file sizes and fit their chunks, every chunk located in a pack present
//! with its recorded size. Every chunk is checked again against its recorded length as it is
//! written. Nothing is ever opened through a symlink: the target starts empty (or, with
//! `--force`, no directory on the way may be a symlink; with `--delta`, links where the
//! snapshot has directories are removed first), files are opened with `O_NOFOLLOW`,
//! permissions and times are set through handles opened the same way, and no entry lies
//! under a symlink the restore creates. Setuid/setgid bits are dropped unless asked for.
//!
//! The manifest is read three times from a private copy ([`SpooledManifest`]), never held:
//! 1. checked, collecting the ids of the chunks it needs (12 bytes each, sorted, once each);
//! 2. after one pass over the indexes gave those chunks their locations ([`Located`]),
//!    checked again reference by reference;
//! 3. written in batches ([`write`]): per batch, directories and empty files are created and
//!    its ranged reads join one stream with every other batch's; once a batch's last read is
//!    written, its files get their modes and times and its symlinks are created; directories
//!    get theirs last, deepest first, and are synced.
//!
//! Memory is the table of needed chunks ([`Located`]), the directories (for their modes at
//! the end), and a few batches.

mod check;
mod delta;
mod dump;
mod fs;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

pub use self::dump::dump;
pub use self::fs::sync_dirs;
use super::index_set::{Located, PackRec};
use super::progress::Progress;
use super::{PipelineError, Repository, SpooledManifest};
use crate::repo::keys::Identity;
use crate::repo::layout;
use crate::storage::StorageError;

/// What a restore does with a target directory that is not empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Existing {
    /// It must be empty (or missing).
    #[default]
    Refuse,
    /// `--force`: whatever is at an entry's path is replaced; no directory on the way may be
    /// a symlink.
    Replace,
    /// `--delta`: it holds an older copy; only what differs is written, what the snapshot
    /// does not have is removed (see [`delta`]).
    Delta,
}

/// Which entries are restored as sparse files of their recorded size, none of their data
/// read (PostgreSQL `--db-include`: the other databases' relation files), by entry name.
pub type Sparse = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// Where entries go besides the target, and which are left as holes: what the engine
/// decides about its own layout.
#[derive(Clone, Default)]
pub struct Layout {
    /// Files left as holes (see [`Sparse`]).
    pub sparse: Option<Sparse>,
    /// `--delta` only: the entry named `.0` and everything under it go into directory `.1`
    /// instead, which that name is a link to in the target (a PostgreSQL tablespace placed
    /// outside the data directory by an earlier restore, or on a replica). The link stays.
    pub redirect: Vec<(Vec<u8>, PathBuf)>,
}

/// Knobs of one restore.
#[derive(Clone)]
pub struct RestoreOptions {
    /// Concurrent ranged reads.
    pub concurrency: usize,
    /// What is done with what the target already holds.
    pub existing: Existing,
    /// Keep setuid/setgid bits (dropped by default: a hostile writer could plant a setuid
    /// root file on the restore host).
    pub keep_setuid: bool,
    /// Holes and redirected subtrees.
    pub layout: Layout,
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreSummary {
    pub policy: String,
    /// Snapshot restored.
    pub snapshot: String,
    /// Target directory (`target_dir` in JSON, as in the dry run's plan).
    #[serde(rename = "target_dir")]
    pub target: String,
    /// Artifacts restored.
    pub artifacts: u64,
    /// Plaintext bytes written.
    pub bytes: u64,
    /// Bytes read from storage.
    pub downloaded: u64,
    /// Delta restore: bytes found already in place (not written)…
    pub reused: u64,
    /// …and entries removed because the snapshot does not have them.
    pub removed: u64,
    /// Bytes of files left as holes, not restored ([`Sparse`]).
    pub sparse: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Restores every artifact of `manifest` into `target`.
///
/// # Errors
/// Storage and repository errors name the object; local errors name the path. A restore that
/// fails after the checks leaves a partial tree behind (it never touches anything outside
/// `target`).
pub async fn run(
    repo: &Repository,
    identity: Arc<Identity>,
    manifest: &SpooledManifest,
    target: &Path,
    opts: &RestoreOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<RestoreSummary, PipelineError> {
    let t0 = Instant::now();
    let lap =
        |phase: &str| tracing::debug!(ms = t0.elapsed().as_millis() as u64, "Restore: {phase}.");
    prepare_target(target, opts.existing)?;
    let snap = manifest.snapshot.to_string();
    let Ready {
        bytes: _,
        needed,
        packs,
    } = ready(
        repo,
        &identity,
        manifest,
        target,
        opts.existing,
        &progress,
        &lap,
    )
    .await?;
    let removed = if opts.existing == Existing::Delta {
        let (m, identity, target) = (manifest.clone(), identity.clone(), target.to_path_buf());
        let redirect = opts.layout.redirect.clone();
        let removed = blocking(move || delta::prune(&m, &identity, &target, &redirect)).await?;
        lap("pruned");
        removed
    } else {
        0
    };

    // A fixed set of threads opens chunks and writes them, each with its own reusable buffers;
    // the async side only fetches. Memory: concurrency x range size in flight, plus one set of
    // buffers per worker, whatever the data size.
    let workers = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let (work_tx, work_rx) = tokio::sync::mpsc::channel::<write::Work>(workers);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (flush_tx, flush_rx) = std::sync::mpsc::sync_channel(write::FLUSH_QUEUE);
    let flush_rx = Arc::new(Mutex::new(flush_rx));
    let flushers: Vec<_> = (0..write::FLUSHERS)
        .map(|_| {
            let rx = flush_rx.clone();
            std::thread::spawn(move || write::flusher(&rx))
        })
        .collect();
    let cx = Arc::new(write::WorkerCx {
        snapshot: snap.clone(),
        packs: packs.clone(),
        keys: Mutex::default(),
        identity: identity.clone(),
        ids: repo.ids.clone(),
        flush: flush_tx.clone(),
        progress: progress.clone(),
    });
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (rx, cx) = (work_rx.clone(), cx.clone());
            std::thread::spawn(move || write::worker(&cx, &rx))
        })
        .collect();
    drop(work_rx);
    let (batch_tx, batch_rx) = tokio::sync::mpsc::channel(1);
    let reader = tokio::task::spawn_blocking({
        let (m, identity, needed, target) = (
            manifest.clone(),
            identity.clone(),
            needed.clone(),
            target.to_path_buf(),
        );
        let how = write::How {
            existing: opts.existing,
            ids: repo.ids.clone(),
            layout: opts.layout.clone(),
            progress: progress.clone(),
        };
        move || write::batches(&m, &identity, &needed, &target, &how, &batch_tx, &flush_tx)
    });
    let written = async {
        // One stream of the ranged reads of every batch, so that the next batch's reads start
        // while the last of this one's finish (waiting for each batch's tail left workers idle
        // at every batch boundary). A batch without reads is one empty item.
        let batches = futures::stream::unfold(batch_rx, |mut rx| async move {
            rx.recv().await.map(|b| (b, rx))
        });
        let stream = batches
            .flat_map(|b: Arc<write::Batch>| {
                let jobs: Vec<Option<usize>> = if b.jobs.is_empty() {
                    vec![None]
                } else {
                    (0..b.jobs.len()).map(Some).collect()
                };
                futures::stream::iter(jobs.into_iter().map(move |j| (b.clone(), j)))
            })
            .map(|(batch, job)| {
                let (packs, progress, work_tx) = (packs.clone(), progress.clone(), work_tx.clone());
                async move {
                    let Some(job) = job else {
                        return Ok::<_, PipelineError>(batch);
                    };
                    let j = &batch.jobs[job];
                    let key = layout::pack(&packs[j.pack as usize].id);
                    // A local pack is read by the worker itself, into a buffer it reuses:
                    // 2 MiB buffers allocated on one thread and freed on another stayed
                    // resident in the allocator, by a varying amount per run.
                    let fetched = match repo.storage.local_file(&key) {
                        Some(path) => write::Fetched::File(path),
                        None => {
                            let bytes = repo.storage.get(&key, Some(j.start..j.end)).await?;
                            Progress::add(&progress.transferred, bytes.len() as u64);
                            write::Fetched::Bytes(bytes)
                        }
                    };
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    // The queue is as small as the worker count; waiting here is the
                    // backpressure.
                    work_tx
                        .send((batch.clone(), job, fetched, tx))
                        .await
                        .map_err(|_| {
                            PipelineError::Internal("restore workers stopped".to_owned())
                        })?;
                    rx.await.map_err(|_| {
                        PipelineError::Internal("a restore worker died".to_owned())
                    })??;
                    Ok(batch)
                }
            })
            .buffer_unordered(opts.concurrency.max(1));
        let mut stream = std::pin::pin!(stream);
        // A batch whose reads are all done gets its files' modes and its symlinks while the
        // others are written.
        let mut finishing = Vec::new();
        while let Some(r) = stream.next().await {
            let batch = r?;
            if cancel.is_cancelled() {
                return Err(PipelineError::Cancelled);
            }
            if batch
                .unread
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
                == 1
            {
                let (snap, keep, progress) = (snap.clone(), opts.keep_setuid, progress.clone());
                finishing.push(tokio::task::spawn_blocking(move || {
                    fs::finish_batch(&batch.entries, &batch.paths, &snap, keep)?;
                    Progress::add(&progress.items, batch.entries.len() as u64);
                    Ok(())
                }));
            }
        }
        for f in finishing {
            joined(f.await)?;
        }
        Ok(())
    }
    .await;
    // The batches' receiver is gone with the stream: the reader's sends fail, and it stops.
    let tail = joined(reader.await);
    drop(work_tx);
    for t in threads {
        let _ = t.join();
    }
    drop(cx);
    let mut flushed = Ok(());
    for f in flushers {
        let r = f
            .join()
            .map_err(|_| PipelineError::Internal("a restore flusher died".to_owned()))?;
        if flushed.is_ok() {
            flushed = r;
        }
    }
    written?;
    let mut tail = tail?;
    flushed?;
    let (reused, sparse) = (tail.reused, tail.sparse);
    lap("data written");
    // The files are synced as they complete; their entries, and the directories' modes and
    // times, once the directories are.
    blocking(move || {
        fs::finish_dirs(&mut tail.dirs)?;
        sync_dirs(tail.sync.iter().map(|p| &**p))
    })
    .await?;
    lap("synced");
    Ok(RestoreSummary {
        policy: manifest.policy.clone(),
        snapshot: snap,
        target: target.display().to_string(),
        artifacts: manifest.entries(),
        bytes: Progress::get(&progress.bytes) - reused - sparse,
        downloaded: Progress::get(&progress.transferred),
        reused,
        removed,
        sparse,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// A manifest checked whole, its chunks located, the packs they are in checked present.
struct Ready {
    /// Plaintext bytes to write.
    bytes: u64,
    needed: Arc<Located>,
    packs: Arc<Vec<PackRec>>,
}

/// Everything a restore checks before it writes: the entries (paths, shape, lengths), every
/// chunk located and its references fitting it, every pack read present with its size.
async fn ready(
    repo: &Repository,
    identity: &Arc<Identity>,
    manifest: &SpooledManifest,
    target: &Path,
    existing: Existing,
    progress: &Progress,
    lap: &(dyn Fn(&str) + Sync),
) -> Result<Ready, PipelineError> {
    // --delta removes a link where the snapshot has a directory before it writes (see
    // [`delta::prune`]); --force would write through it, and refuses it here.
    let links = existing == Existing::Replace;
    let checked = blocking({
        let (m, identity, target) = (manifest.clone(), identity.clone(), target.to_path_buf());
        move || check::entries(&m, &identity, &target, links)
    })
    .await?;
    lap("entries checked");
    progress
        .total
        .store(checked.bytes, std::sync::atomic::Ordering::Relaxed);

    // One listing of the packs: chunks held by several packs come from one that exists, and
    // every pack read is checked present with its recorded size before anything is written.
    // The needed chunks take their locations as the indexes stream by.
    let present = repo.pack_sizes().await?;
    let mut needed = checked.needed;
    let mut index = repo
        .locate_chunks(present.clone(), &mut |id, loc, avoided| {
            needed.offer(id, loc, avoided);
        })
        .await?;
    lap("index loaded");
    let needed = Arc::new(needed);
    blocking({
        let (m, identity, needed) = (manifest.clone(), identity.clone(), needed.clone());
        let location = repo.storage.location().to_owned();
        move || check::located(&m, &identity, &needed, &location)
    })
    .await?;
    // The needed chunks carry their locations: only the pack records are needed from here on.
    let packs: Arc<Vec<PackRec>> = Arc::new(std::mem::take(&mut index.packs));
    drop(index);
    check_packs(repo, &present, &packs, &needed)?;
    lap("references checked");
    Ok(Ready {
        bytes: checked.bytes,
        needed,
        packs,
    })
}

/// What a restore of `manifest` into `target` would do, checked as the real run checks it
/// (target, entries, chunks, packs) without writing anything.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DryRun {
    /// Entries that would be written (`artifacts` in JSON, as in the restore's own summary).
    #[serde(rename = "artifacts")]
    pub entries: u64,
    /// Plaintext bytes that would be written.
    pub bytes: u64,
    /// Packs that would be read…
    pub packs: u64,
    /// …and their size: at most this much is downloaded.
    pub pack_bytes: u64,
    /// `missing` (would be created), `empty`, or `not empty` (with --force or --delta).
    #[serde(rename = "target_state")]
    pub target: &'static str,
}

/// Checks a restore of `manifest` into `target` as [`run`] would, writing nothing.
///
/// # Errors
/// Whatever [`run`] would fail with before it writes: a non-empty target without `existing`,
/// an unsafe entry, a missing chunk or pack (named).
pub async fn dry_run(
    repo: &Repository,
    identity: Arc<Identity>,
    manifest: &SpooledManifest,
    target: &Path,
    existing: Existing,
) -> Result<DryRun, PipelineError> {
    let state = match std::fs::read_dir(target).map(|mut d| d.next().is_some()) {
        Ok(true) if existing == Existing::Refuse => {
            return Err(PipelineError::TargetNotEmpty {
                dir: target.display().to_string(),
            });
        }
        Ok(true) => "not empty",
        Ok(false) => "empty",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "missing",
        Err(e) => return Err(PipelineError::io("reading", target, e)),
    };
    let r = ready(
        repo,
        &identity,
        manifest,
        target,
        existing,
        &Progress::default(),
        &|_| {},
    )
    .await?;
    let packs = r.needed.packs();
    Ok(DryRun {
        entries: manifest.entries(),
        bytes: r.bytes,
        packs: packs.len() as u64,
        pack_bytes: packs.iter().map(|&p| r.packs[p as usize].size).sum(),
        target: state,
    })
}

/// Runs CPU or filesystem work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PipelineError> + Send + 'static,
) -> Result<T, PipelineError> {
    joined(tokio::task::spawn_blocking(f).await)
}

fn joined<T>(
    r: Result<Result<T, PipelineError>, tokio::task::JoinError>,
) -> Result<T, PipelineError> {
    r.map_err(|e| PipelineError::Internal(format!("a restore task failed: {e}")))?
}

/// Fails before any data is written when a pack the restore reads is missing, or not the size
/// its index records (truncated or replaced): ranged reads of the blobs alone would not notice
/// a damaged tail.
fn check_packs(
    repo: &Repository,
    present: &HashMap<crate::repo::ids::PackId, u64>,
    packs: &[PackRec],
    needed: &Located,
) -> Result<(), PipelineError> {
    for rec in needed.packs().into_iter().map(|pos| &packs[pos as usize]) {
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

fn prepare_target(target: &Path, existing: Existing) -> Result<(), PipelineError> {
    match std::fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() && existing == Existing::Refuse {
                return Err(PipelineError::TargetNotEmpty {
                    dir: target.display().to_string(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::private_dir(target),
        Err(e) => Err(PipelineError::io("reading", target, e)),
    }
}
