//! One file of a snapshot, in order, to a writer (`dr dump`): its chunks located, fetched a
//! few ahead, opened (each checked against its chunk id) and written; the whole file checked
//! against its recorded BLAKE3 at the end. Memory is a few blobs, whatever the file's size.

use std::io::Write;
use std::sync::Arc;

use futures::StreamExt;

use super::check::MAX_CHUNK;
use crate::pipeline::index_set::{Loc, Located, PackRec};
use crate::pipeline::{IndexSet, PipelineError, Repository, SpooledManifest};
use crate::repo::keys::Identity;
use crate::repo::layout;
use crate::repo::manifest::{Artifact, ChunkRef, EntryKind};
use crate::repo::pack::PackKey;

/// Blobs fetched ahead of the one being written.
const AHEAD: usize = 4;

/// Writes the file `name` of `manifest` to `out`; returns its size.
///
/// # Errors
/// `NoEntry` when the snapshot has no file of that name (a directory or symlink is named as
/// such), storage errors naming the object, a corrupt chunk, a whole-file hash that does not
/// match (after the bytes went out), or the writer's error.
pub async fn dump(
    repo: &Repository,
    identity: Arc<Identity>,
    manifest: &SpooledManifest,
    name: &[u8],
    mut out: Box<dyn Write + Send>,
) -> Result<u64, PipelineError> {
    let snapshot = manifest.snapshot.to_string();
    let found = {
        let (m, identity, name) = (manifest.clone(), identity.clone(), name.to_vec());
        super::blocking(move || {
            let mut found = None;
            m.read(&identity, &mut |a: Artifact| {
                if a.name.0 == name {
                    found = Some(a);
                }
                Ok::<_, PipelineError>(())
            })?;
            Ok(found)
        })
        .await?
    };
    let shown = String::from_utf8_lossy(name).into_owned();
    let a = match found {
        Some(a) if matches!(a.kind, EntryKind::File | EntryKind::Stream) => a,
        other => {
            return Err(PipelineError::NoEntry {
                snapshot,
                name: shown,
                what: other.map(|a| a.kind),
            });
        }
    };
    let hostile = |reason: String| PipelineError::HostileEntry {
        snapshot: snapshot.clone(),
        name: shown.clone(),
        reason,
    };
    let sum: u64 = a.chunks.iter().map(|c| u64::from(c.1)).sum();
    if sum != a.size || a.chunks.iter().any(|c| c.1 == 0 || c.1 > MAX_CHUNK) {
        return Err(hostile(format!(
            "has {} chunks of {sum} bytes for a size of {}",
            a.chunks.len(),
            a.size
        )));
    }
    let mut needed = Located::default();
    for c in &a.chunks {
        needed.need(&c.0);
    }
    needed.seal();
    let present = repo.pack_sizes().await?;
    let index = repo
        .locate_chunks(present, &mut |id, loc, avoided| {
            needed.offer(id, loc, avoided)
        })
        .await?;
    let packs: Arc<Vec<PackRec>> = Arc::new(index.packs);
    // Consecutive references into one blob (pages of a window, members of a group) share
    // one fetch.
    let mut blobs: Vec<(Loc, Vec<(ChunkRef, Loc)>)> = Vec::new();
    for c in &a.chunks {
        let loc = needed
            .get(&c.0)
            .ok_or_else(|| PipelineError::MissingChunk {
                chunk: c.0.to_string(),
                artifact: shown.clone(),
                location: repo.storage.location().to_owned(),
            })?;
        if !c.fits(loc.raw_len) {
            return Err(hostile(format!(
                "lists bytes {}..{} of chunk {}; it holds {}",
                c.start(),
                u64::from(c.start()) + u64::from(c.1),
                c.0,
                loc.raw_len
            )));
        }
        match blobs.last_mut() {
            Some((l, refs)) if l.pack == loc.pack && l.offset == loc.offset => {
                refs.push((*c, loc));
            }
            _ => blobs.push((loc, vec![(*c, loc)])),
        }
    }
    drop(needed);

    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Loc, Vec<(ChunkRef, Loc)>, bytes::Bytes)>(1);
    let writer = tokio::task::spawn_blocking({
        let (packs, identity, ids, expected) =
            (packs.clone(), identity.clone(), repo.ids.clone(), a.blake3);
        move || -> Result<u64, PipelineError> {
            let mut zstd = zstd::bulk::Decompressor::new()
                .map_err(|e| PipelineError::Internal(format!("zstd: {e}")))?;
            let mut key: Option<(u32, PackKey)> = None;
            let mut hash = blake3::Hasher::new();
            let mut written = 0u64;
            while let Some((loc, refs, sealed)) = rx.blocking_recv() {
                let rec = &packs[loc.pack as usize];
                if key.as_ref().is_none_or(|(p, _)| *p != loc.pack) {
                    key = Some((
                        loc.pack,
                        PackKey::unwrap(&identity, &rec.id, &rec.wrapped_key()?)?,
                    ));
                }
                let k = &key.as_ref().expect("set above").1;
                let mut opened: Option<(crate::repo::ids::ChunkId, Vec<u8>)> = None;
                for (c, l) in refs {
                    if opened.as_ref().is_none_or(|(id, _)| *id != c.0) {
                        let plain =
                            k.open(&ids, &rec.id, &IndexSet::entry(c.0, &l), &sealed, &mut zstd)?;
                        opened = Some((c.0, plain));
                    }
                    let plain = &opened.as_ref().expect("set above").1;
                    let (s, len) = (c.start() as usize, c.1 as usize);
                    let piece = plain.get(s..s + len).ok_or_else(|| {
                        PipelineError::Internal(format!(
                            "chunk {} is shorter than its index says",
                            c.0
                        ))
                    })?;
                    hash.update(piece);
                    out.write_all(piece)
                        .and_then(|()| if rx.is_empty() { out.flush() } else { Ok(()) })
                        .map_err(|e| {
                            PipelineError::io("writing", std::path::Path::new("stdout"), e)
                        })?;
                    written += len as u64;
                }
            }
            out.flush()
                .map_err(|e| PipelineError::io("writing", std::path::Path::new("stdout"), e))?;
            if let Some(want) = expected {
                if hash.finalize().as_bytes() != &want.0 {
                    return Err(PipelineError::Internal(
                        "the file's bytes do not match its recorded BLAKE3".to_owned(),
                    ));
                }
            }
            Ok(written)
        }
    });
    let fetched = async {
        let mut fetches = futures::stream::iter(blobs)
            .map(|(loc, refs)| {
                let key = layout::pack(&packs[loc.pack as usize].id);
                async move {
                    let range = u64::from(loc.offset)..u64::from(loc.offset) + u64::from(loc.len);
                    let bytes = repo.storage.get(&key, Some(range)).await?;
                    Ok::<_, PipelineError>((loc, refs, bytes))
                }
            })
            .buffered(AHEAD);
        while let Some(f) = fetches.next().await {
            if tx.send(f?).await.is_err() {
                break;
            }
        }
        drop(tx);
        Ok::<_, PipelineError>(())
    }
    .await;
    let written = super::joined(writer.await);
    fetched?;
    written
}
