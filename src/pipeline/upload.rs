//! A backup's uploads: sealed packs from their spool files, at most `upload_concurrency` at a
//! time, and the index objects describing them, written beside the uploads every
//! [`INDEX_BLOBS`] blobs (packs before their index: the commit rule).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::progress::Progress;
use super::{PipelineError, Repository};
use crate::repo::ids::{IndexId, PackId};
use crate::repo::index::{Index, IndexPack, VERSION as INDEX_VERSION};
use crate::repo::layout;
use crate::repo::pack::SealedPack;
use crate::storage::{PutMode, StorageError};

/// A sealed pack with its place in the budget, given back once it is stored.
pub(super) struct Budgeted {
    pub(super) pack: SealedPack,
    /// The whole pack, spooled (removed when dropped, after the upload).
    pub(super) spool: tempfile::TempPath,
    pub(super) _permit: tokio::sync::OwnedSemaphorePermit,
}

/// An index object is written every this many blobs (~2 MiB of JSON): a backup of a million
/// small files held one index of them all, and its JSON twice, at the end (316 MiB), and the
/// next backup parsed it whole (153 MiB); 65,536 still left 95 and 103 MiB.
const INDEX_BLOBS: usize = 1 << 14;

/// What the uploads stored: every pack, and the index objects describing them.
#[derive(Default)]
pub(super) struct Stored {
    /// Pack, size, blobs.
    pub(super) packs: Vec<(PackId, u64, u64)>,
    pub(super) indexes: Vec<IndexId>,
    /// Stored packs no index describes yet.
    pending: Vec<IndexPack>,
    pending_blobs: usize,
    /// Index objects being written, beside the uploads: each waits on its sync, which behind
    /// a busy filesystem journal took ~0.3 s and stalled the packs behind it.
    writing: JoinSet<Result<IndexId, PipelineError>>,
}

impl Stored {
    async fn add(&mut self, repo: &Repository, p: IndexPack) -> Result<(), PipelineError> {
        self.packs.push((p.id, p.size, p.blobs.len() as u64));
        self.pending_blobs += p.blobs.len();
        self.pending.push(p);
        if self.pending_blobs >= INDEX_BLOBS {
            self.flush(repo).await?;
        }
        Ok(())
    }

    /// Starts indexing the packs stored so far (packs before their index, as the commit rule
    /// says); at most two index objects are in flight.
    async fn flush(&mut self, repo: &Repository) -> Result<(), PipelineError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        while self.writing.len() >= 2 {
            self.join_one().await?;
        }
        let packs = std::mem::take(&mut self.pending);
        self.pending_blobs = 0;
        let repo = repo.clone();
        self.writing
            .spawn(async move { write_index(&repo, packs).await });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), PipelineError> {
        if let Some(r) = self.writing.join_next().await {
            let id = r.map_err(|e| PipelineError::Internal(format!("index write: {e}")))??;
            self.indexes.push(id);
        }
        Ok(())
    }

    /// Indexes the rest and waits for every index object.
    async fn finish(&mut self, repo: &Repository) -> Result<(), PipelineError> {
        self.flush(repo).await?;
        while !self.writing.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }
}

pub(super) async fn upload_all(
    repo: &Repository,
    rx: &mut mpsc::Receiver<Budgeted>,
    concurrency: usize,
    progress: &Arc<Progress>,
) -> Result<Stored, PipelineError> {
    let mut set: JoinSet<Result<IndexPack, PipelineError>> = JoinSet::new();
    let mut done = Stored::default();
    let joined = |r: Result<Result<IndexPack, PipelineError>, tokio::task::JoinError>| {
        r.map_err(|e| PipelineError::Internal(format!("upload task: {e}")))?
    };
    while let Some(Budgeted {
        pack: p,
        spool,
        _permit: permit,
    }) = rx.recv().await
    {
        while let Some(r) = set.try_join_next() {
            done.add(repo, joined(r)?).await?;
        }
        while set.len() >= concurrency.max(1) {
            let r = set.join_next().await.expect("set is not empty");
            done.add(repo, joined(r)?).await?;
        }
        let (storage, progress) = (repo.storage.clone(), progress.clone());
        set.spawn(async move {
            // The pack's place in the budget is given back once it is stored.
            let _permit = permit;
            let size = p.size;
            match storage
                .put_file(&layout::pack(&p.id), &spool, PutMode::CreateOnly)
                .await
            {
                // Same id = same bytes: an earlier, unindexed run already stored it.
                Ok(()) | Err(StorageError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            Progress::add(&progress.transferred, size);
            Ok(IndexPack::new(p.id, size, &p.wrapped_key, &p.blobs))
        });
    }
    while let Some(r) = set.join_next().await {
        done.add(repo, joined(r)?).await?;
    }
    // Whatever uploaded fine is indexed even when a later stage failed: the next run then
    // dedupes against it instead of uploading it again.
    done.finish(repo).await?;
    Ok(done)
}

async fn write_index(repo: &Repository, packs: Vec<IndexPack>) -> Result<IndexId, PipelineError> {
    let (id, bytes) = Index {
        version: INDEX_VERSION,
        packs,
    }
    .encode(&repo.ids, &repo.meta.repo_id);
    match repo
        .storage
        .put(&layout::index(&id), Bytes::from(bytes), PutMode::CreateOnly)
        .await
    {
        Ok(()) | Err(StorageError::AlreadyExists { .. }) => Ok(id),
        Err(e) => Err(e.into()),
    }
}
