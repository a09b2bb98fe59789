//! A seal worker of a backup: batches of new chunks compressed (small ones in groups) and
//! sealed into its own pack with its own data key, spilled to the pack's spool file as it
//! grows, and handed to the uploads when full.

use super::*;

/// A pack being built, its spool file and its place in the budget.
pub(super) struct Building {
    w: PackWriter,
    file: tempfile::NamedTempFile,
    permit: tokio::sync::OwnedSemaphorePermit,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn seal_worker(
    jobs: &crossbeam_channel::Receiver<Batch>,
    free: &crossbeam_channel::Sender<Vec<u8>>,
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
    // The last pack's buffers, for the next one.
    let mut buffers: Option<PackBuffers> = None;
    // A pack is started only with a place in the budget.
    let start = |buffers: &mut Option<PackBuffers>| -> Result<Building, PipelineError> {
        let permit = tokio::runtime::Handle::current()
            .block_on(budget.clone().acquire_owned())
            .map_err(|_| PipelineError::Cancelled)?;
        let file = tempfile::Builder::new()
            .prefix("pack-")
            .tempfile_in(spool)
            .map_err(spool_err)?;
        Ok(Building {
            w: match buffers.take() {
                Some(b) => PackWriter::with_buffers(b),
                None => PackWriter::new(SPILL_BYTES + (4 << 20)),
            },
            file,
            permit,
        })
    };
    let ship = |b: Building| -> Result<PackBuffers, PipelineError> {
        let Building {
            w,
            mut file,
            permit,
        } = b;
        let (pack, buffers) = w.finish_keeping(recipients)?;
        file.write_all(buffers.tail()).map_err(spool_err)?;
        packs
            .blocking_send(Budgeted {
                pack,
                spool: file.into_temp_path(),
                _permit: permit,
            })
            .map_err(|_| PipelineError::Cancelled)?;
        Ok(buffers)
    };
    let mut current: Option<Building> = None;
    // Seals into the current pack (started when there is none), then ships or spills it.
    let mut add = |current: &mut Option<Building>,
                   seal: &mut dyn FnMut(
        &mut PackWriter,
        &mut zstd::bulk::Compressor<'static>,
    ) -> Result<(), crate::repo::RepoError>|
     -> Result<(), PipelineError> {
        if current.is_none() {
            *current = Some(start(&mut buffers)?);
        }
        let b = current.as_mut().expect("started above");
        seal(&mut b.w, &mut z)?;
        if b.w.len() >= pack_size {
            buffers = Some(ship(current.take().expect("started above"))?);
        } else if b.w.pending() >= SPILL_BYTES {
            b.w.spill(&mut b.file).map_err(spool_err)?;
        }
        Ok(())
    };
    for batch in jobs {
        // Small chunks (page blocks) are sealed in groups of consecutive ones, large ones alone.
        let mut group: Vec<(ChunkId, &[u8])> = Vec::new();
        let mut group_bytes = 0;
        for (id, data) in batch.chunks() {
            if data.len() > GROUP_MEMBER_MAX {
                add(&mut current, &mut |w, z| w.add(id, data, z))?;
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
        }
        drop(group);
        batch.recycle(free);
    }
    if let Some(b) = current.filter(|b| !b.w.is_empty()) {
        ship(b)?;
    }
    Ok(())
}
