//! `dr verify`: structure (cheap, needs only the writer keys) and data (decrypts and re-hashes
//! everything, needs the identity). Problems are collected, each naming the object, rather
//! than stopping at the first.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;

use super::index_set::{Loc, Located};
use super::progress::Progress;
use super::{IndexSet, PipelineError, Repository};
use crate::error::chain;
use crate::repo::ids::{ChunkId, IndexId, PackId};
use crate::repo::index::Index;
use crate::repo::keys::Identity;
use crate::repo::layout::{self, Parsed};
use crate::repo::manifest::{Artifact, ChunkRef};
use crate::repo::pack::{PackKey, member, parse_pack};

/// What verification found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    pub location: String,
    /// Committed snapshots checked.
    pub snapshots: u64,
    /// Incomplete snapshots (refs without manifest, younger than the commit window: a backup
    /// running now or interrupted, harmless). Older ones are problems: a backup that ran
    /// that long was cut off, or its manifest was deleted.
    pub incomplete: u64,
    /// Packs present.
    pub packs: u64,
    /// Packs read whole and hashed against their names (`read_packs`).
    pub packs_read: u64,
    /// Chunks decrypted and checked (data mode).
    pub chunks_checked: u64,
    /// Plaintext bytes checked (data mode).
    pub bytes_checked: u64,
    /// Everything wrong, each naming the object.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// No problems.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Which referenced packs [`run`] reads whole and hashes against their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPacks<'a> {
    /// None: sizes and MACs only.
    No,
    /// Every pack a verified snapshot references.
    All,
    /// Only those of this snapshot (a drill: the one it restored).
    Of(&'a crate::repo::ids::SnapshotId),
}

/// Verifies the snapshots of `policy` (all policies when `None`): structure always; with
/// `read_packs` referenced packs are also read whole and hashed against their names (no
/// identity needed, so a writer can run it; it catches damage no restore reads, such as a
/// pack's key trailer); with an `identity` every chunk is decrypted and re-hashed.
///
/// # Errors
/// Only when the repository cannot be listed at all; everything else is a reported problem.
pub async fn run(
    repo: &Repository,
    policy: Option<&str>,
    identity: Option<Arc<Identity>>,
    read_packs: ReadPacks<'_>,
    concurrency: usize,
    commit_window: std::time::Duration,
    progress: Arc<Progress>,
) -> Result<VerifyReport, PipelineError> {
    let mut report = VerifyReport {
        location: repo.storage.location().to_owned(),
        ..VerifyReport::default()
    };
    let packs: HashMap<PackId, u64> = repo.pack_sizes().await?;
    report.packs = packs.len() as u64;

    // Indexes one by one, so a bad one is reported and the rest still count. Only their packs
    // are kept: each snapshot's chunks are located when its data is verified.
    let avoid = repo.gc_state().await?.avoided_packs();
    let mut index = IndexSet::default();
    let mut good_indexes: HashSet<IndexId> = HashSet::new();
    let mut to_read: std::collections::BTreeSet<PackId> = std::collections::BTreeSet::new();
    for m in repo.storage.list(&layout::index_prefix()).await? {
        let Parsed::Index(id) = layout::parse(&m.key) else {
            continue;
        };
        match repo
            .storage
            .get(&m.key, None)
            .await
            .map_err(PipelineError::from)
            .and_then(|b| Index::decode(&repo.ids, &repo.meta.repo_id, &id, &b).map_err(Into::into))
        {
            Ok(ix) => {
                index.add_with(id, &ix, &mut |_, _, _| {});
                good_indexes.insert(id);
            }
            Err(e) => report.problems.push(format!("{e:#}")),
        }
    }

    for s in repo.list_snapshots(policy).await? {
        let name = format!("snapshot {}/{}", s.policy, s.id);
        if !s.has_manifest {
            let age = chrono::Utc::now() - s.id.time();
            if age.to_std().unwrap_or_default() > commit_window {
                report.problems.push(format!(
                    "{name}: its .refs exist without a manifest, written {} ago (longer than a backup may run, daemon.job_timeout): the backup was cut off, or its manifest was deleted; if it was the newest, restores now silently use an older snapshot",
                    crate::config::units::format_duration(age.to_std().unwrap_or_default())
                ));
            } else {
                report.incomplete += 1;
            }
            continue;
        }
        report.snapshots += 1;
        let read_whole = match read_packs {
            ReadPacks::No => false,
            ReadPacks::All => true,
            ReadPacks::Of(id) => *id == s.id,
        };
        if !s.has_refs {
            report
                .problems
                .push(format!("{name}: manifest without its .refs file"));
        }
        let refs = match repo.read_refs(&s.policy, &s.id).await {
            Ok(r) => Some(r),
            Err(e) => {
                report.problems.push(format!("{name}: {}", chain(&e)));
                None
            }
        };
        if let Some(refs) = &refs {
            for p in &refs.packs {
                let key = layout::pack(p);
                match (packs.get(p), index.pack_pos(p).map(|pos| index.pack(pos).size)) {
                    (None, _) => report.problems.push(format!("{name}: {key} is missing from {}", report.location)),
                    (Some(_), None) => report.problems.push(format!("{name}: {key} is in no index")),
                    (Some(have), Some(want)) if *have != want => report.problems.push(format!("{name}: {key} has {have} bytes, the index says {want} (truncated or replaced)")),
                    _ if read_whole => {
                        to_read.insert(*p);
                    }
                    _ => {}
                }
            }
            for i in &refs.indexes {
                if !good_indexes.contains(i) {
                    report
                        .problems
                        .push(format!("{name}: index/{i} is missing or unreadable"));
                }
            }
        }
        if let Some(identity) = &identity {
            let locating = Locating {
                indexes: &good_indexes,
                avoid: &avoid,
                present: &packs,
            };
            verify_data(
                repo,
                &locating,
                &s,
                refs.as_ref().map(|r| r.packs.iter().copied().collect()),
                identity,
                concurrency,
                &progress,
                &mut report,
            )
            .await;
        }
    }
    {
        // Whole packs are up to 16 MiB: two at a time bounds memory.
        let mut reads = futures::stream::iter(to_read)
            .map(|id| async move {
                let bytes = repo.storage.get(&layout::pack(&id), None).await?;
                tokio::task::spawn_blocking(move || parse_pack(&id, &bytes).map(|_| ()))
                    .await
                    .map_err(|e| PipelineError::Internal(e.to_string()))?
                    .map_err(PipelineError::from)
            })
            .buffer_unordered(2);
        while let Some(r) = reads.next().await {
            report.packs_read += 1;
            if let Err(e) = r {
                report.problems.push(chain(&e));
            }
        }
    }
    Ok(report)
}

/// What locating a snapshot's chunks takes: the indexes that verified, the packs to avoid
/// and the packs present.
struct Locating<'a> {
    indexes: &'a HashSet<IndexId>,
    avoid: &'a HashSet<PackId>,
    present: &'a HashMap<PackId, u64>,
}

/// A verification reads a manifest in batches of this many artifacts…
const BATCH_ARTIFACTS: usize = 8_192;
/// …or chunk references.
const BATCH_CHUNKS: usize = 32_768;

/// Checks every chunk of snapshot `s` (decrypted, decompressed, re-hashed against its id) and
/// every artifact's size and recorded BLAKE3. Its manifest is read twice, never held: once
/// for the chunks it needs (located from the indexes, see [`Located`]), then in batches, each
/// planned at once in manifest order, so that each blob is fetched and opened once: the small
/// files sealed together in one group blob (dozens per 128 KiB) cost one read, not one each.
#[allow(clippy::too_many_arguments)]
async fn verify_data(
    repo: &Repository,
    locating: &Locating<'_>,
    s: &super::repository::SnapshotListing,
    refs_packs: Option<HashSet<PackId>>,
    identity: &Arc<Identity>,
    concurrency: usize,
    progress: &Progress,
    report: &mut VerifyReport,
) {
    let name = format!("snapshot {}/{}", s.policy, s.id);
    let m = match repo
        .spool_manifest(identity.clone(), &s.policy, &s.id)
        .await
    {
        Ok(m) => m,
        Err(e) => return report.problems.push(format!("{name}: {}", chain(&e))),
    };
    let needed = tokio::task::spawn_blocking({
        let (m, identity) = (m.clone(), identity.clone());
        move || {
            let mut needed = Located::default();
            m.read::<PipelineError>(&identity, &mut |a| {
                for c in &a.chunks {
                    needed.need(&c.0);
                }
                Ok(())
            })
            .map(|()| {
                needed.seal();
                needed
            })
        }
    })
    .await
    .map_err(|e| PipelineError::Internal(e.to_string()))
    .and_then(|r| r);
    let mut needed = match needed {
        Ok(n) => n,
        Err(e) => return report.problems.push(format!("{name}: {}", chain(&e))),
    };
    // The indexes that verified above, again (from this host's cache): a bad one was reported.
    // Chunks that several packs hold are located in one that exists (a pack deleted after a
    // later backup stored its chunks again is then a problem only of the snapshots using it).
    let mut index =
        IndexSet::avoiding(locating.avoid.clone()).requiring_present(locating.present.clone());
    let mut ids: Vec<&IndexId> = locating.indexes.iter().collect();
    ids.sort_unstable();
    for id in ids {
        match repo.read_index(id).await {
            Ok(ix) => index.add_with(*id, &ix, &mut |c, l, avoided| needed.offer(c, l, avoided)),
            Err(e) => report.problems.push(format!("{name}: {}", chain(&e))),
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Artifact>>(1);
    let reader = tokio::task::spawn_blocking({
        let (m, identity) = (m.clone(), identity.clone());
        move || {
            let (mut batch, mut chunks) = (Vec::new(), 0);
            let mut gone = false;
            m.read::<PipelineError>(&identity, &mut |a| {
                if gone {
                    return Ok(());
                }
                chunks += a.chunks.len();
                batch.push(a);
                if batch.len() >= BATCH_ARTIFACTS || chunks >= BATCH_CHUNKS {
                    chunks = 0;
                    gone = tx.blocking_send(std::mem::take(&mut batch)).is_err();
                }
                Ok(())
            })?;
            if !gone && !batch.is_empty() {
                let _ = tx.blocking_send(batch);
            }
            Ok::<(), PipelineError>(())
        }
    });
    let mut keys: HashMap<u32, Arc<PackKey>> = HashMap::new();
    let cx = Batch {
        repo,
        index: &index,
        needed: &needed,
        name: &name,
        refs_packs: refs_packs.as_ref(),
        identity,
        concurrency,
        progress,
    };
    while let Some(arts) = rx.recv().await {
        cx.verify(&arts, &mut keys, report).await;
    }
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => report.problems.push(format!("{name}: {}", chain(&e))),
        Err(e) => report.problems.push(format!("{name}: {e}")),
    }
}

/// What verifying a batch of a snapshot's artifacts takes.
struct Batch<'a> {
    repo: &'a Repository,
    index: &'a IndexSet,
    needed: &'a Located,
    name: &'a str,
    refs_packs: Option<&'a HashSet<PackId>>,
    identity: &'a Arc<Identity>,
    concurrency: usize,
    progress: &'a Progress,
}

impl Batch<'_> {
    /// Verifies consecutive artifacts `arts` of the snapshot.
    async fn verify(
        &self,
        arts: &[Artifact],
        keys: &mut HashMap<u32, Arc<PackKey>>,
        report: &mut VerifyReport,
    ) {
        let Self {
            repo,
            index,
            needed,
            name,
            refs_packs,
            identity,
            concurrency,
            progress,
        } = *self;
        let art_name = |i: usize| String::from_utf8_lossy(&arts[i].name.0).into_owned();
        // Artifacts that already failed a check: not hashed.
        let mut failed = vec![false; arts.len()];
        let mut locs: Vec<(u32, ChunkRef, Loc)> = Vec::new();
        for (i, a) in arts.iter().enumerate() {
            let first = locs.len();
            for c in &a.chunks {
                let Some(l) = needed.get(&c.0) else {
                    report.problems.push(format!(
                        "{name}: {}: chunk {} is in no index",
                        art_name(i),
                        c.0
                    ));
                    failed[i] = true;
                    break;
                };
                if !c.fits(l.raw_len) {
                    report.problems.push(format!(
                        "{name}: {}: lists {} bytes from {} of chunk {}, which is {} bytes",
                        art_name(i),
                        c.1,
                        c.start(),
                        c.0,
                        l.raw_len
                    ));
                    failed[i] = true;
                    break;
                }
                let rec = index.pack(l.pack);
                if let Some(rp) = refs_packs
                    && !rp.contains(&rec.id)
                {
                    report.problems.push(format!("{name}: {}: chunk {} is in pack {} which the .refs file does not list (prune could delete it)", art_name(i), c.0, rec.id));
                }
                if let std::collections::hash_map::Entry::Vacant(v) = keys.entry(l.pack) {
                    match rec
                        .wrapped_key()
                        .and_then(|w| PackKey::unwrap(identity, &rec.id, &w))
                    {
                        Ok(k) => {
                            v.insert(Arc::new(k));
                        }
                        Err(e) => {
                            report
                                .problems
                                .push(format!("{name}: {}: {e}", art_name(i)));
                            failed[i] = true;
                            break;
                        }
                    }
                }
                let art = u32::try_from(i).expect("fewer than 4G artifacts");
                locs.push((art, *c, l));
            }
            if failed[i] {
                locs.truncate(first);
            }
        }
        // Consecutive chunks in one blob (members of a group, across artifacts) are fetched and
        // opened once.
        let runs: Vec<Vec<(u32, ChunkRef, Loc)>> = locs
            .chunk_by(|a, b| (a.2.pack, a.2.offset) == (b.2.pack, b.2.offset))
            .map(<[_]>::to_vec)
            .collect();
        drop(locs);
        let mut opened = futures::stream::iter(runs)
            .map(|run| {
                let l = run[0].2;
                let rec = index.pack(l.pack).clone();
                let key = keys[&l.pack].clone();
                let ids = repo.ids.clone();
                // Only artifacts with a recorded BLAKE3 need their bytes back (to hash them in
                // order); the others (PostgreSQL pages) only their lengths: a run of 1 MiB
                // windows is not copied out of its blob.
                let want: Vec<bool> = run
                    .iter()
                    .map(|r| arts[r.0 as usize].blake3.is_some())
                    .collect();
                async move {
                    let arts: Vec<u32> = run.iter().map(|r| r.0).collect();
                    let plain = async {
                        let bytes = repo
                            .storage
                            .get(
                                &layout::pack(&rec.id),
                                Some(u64::from(l.offset)..u64::from(l.offset) + u64::from(l.len)),
                            )
                            .await?;
                        tokio::task::spawn_blocking(move || {
                            let mut z = zstd::bulk::Decompressor::new()
                                .map_err(|e| PipelineError::Internal(e.to_string()))?;
                            let (mut buf, mut out) = (Vec::new(), Vec::new());
                            let first = IndexSet::entry(run[0].1.0, &l);
                            let blob =
                                key.open_blob(&rec.id, &first, &bytes, &mut z, &mut buf, &mut out)?;
                            // Slices of one chunk are adjacent: each chunk is re-hashed once.
                            let mut last: Option<(ChunkId, &[u8])> = None;
                            run.iter()
                                .zip(want)
                                .map(|((_, c, l), want)| {
                                    let plain = match last {
                                        Some((id, p)) if id == c.0 => p,
                                        _ => member(&ids, &rec.id, &IndexSet::entry(c.0, l), blob)?,
                                    };
                                    last = Some((c.0, plain));
                                    let s = c.start() as usize;
                                    let bytes = &plain[s..s + c.1 as usize];
                                    Ok((bytes.len() as u64, want.then(|| bytes.to_vec())))
                                })
                                .collect::<Result<Vec<_>, crate::repo::RepoError>>()
                                .map_err(PipelineError::from)
                        })
                        .await
                        .map_err(|e| PipelineError::Internal(e.to_string()))?
                    }
                    .await;
                    (arts, plain)
                }
            })
            // Each blob in flight holds up to four copies of up to 2 MiB (fetched, decrypted,
            // decompressed, handed back): four at a time keep verify within a backup's memory
            // (eight took a 10 GiB tree to 68 MiB); opening is CPU-bound on two cores anyway.
            .buffered(concurrency.clamp(1, 4));
        // Artifacts are hashed in manifest order as their chunks arrive.
        let mut current: Option<(usize, blake3::Hasher, u64)> = None;
        let mut next = 0usize;
        let mut finish = |upto: usize,
                          current: &mut Option<(usize, blake3::Hasher, u64)>,
                          failed: &[bool],
                          report: &mut VerifyReport| {
            while next < upto {
                let i = next;
                next += 1;
                let (hasher, size) = match current.take() {
                    Some((c, h, s)) if c == i => (h, s),
                    other => {
                        *current = other;
                        (blake3::Hasher::new(), 0)
                    }
                };
                if failed[i] {
                    continue;
                }
                let a = &arts[i];
                report.bytes_checked += size;
                if size != a.size {
                    report.problems.push(format!(
                        "{name}: {}: {size} bytes, the manifest says {}",
                        art_name(i),
                        a.size
                    ));
                } else if let Some(want) = &a.blake3
                    && hasher.finalize().as_bytes() != &want.0
                {
                    report.problems.push(format!("{name}: {}: BLAKE3 of the restored content differs from the one recorded at backup", art_name(i)));
                }
            }
        };
        while let Some((arts, plain)) = opened.next().await {
            match plain {
                Ok(members) => {
                    report.chunks_checked += members.len() as u64;
                    for (art, (len, data)) in arts.iter().zip(members) {
                        let i = *art as usize;
                        if current.as_ref().is_none_or(|c| c.0 != i) {
                            finish(i, &mut current, &failed, report);
                            current = Some((i, blake3::Hasher::new(), 0));
                        }
                        if let Some((_, h, s)) = current.as_mut() {
                            if let Some(d) = &data {
                                h.update(d);
                            }
                            *s += len;
                        }
                        Progress::add(&progress.bytes, len);
                    }
                }
                Err(e) => {
                    let mut named = arts;
                    named.dedup();
                    for art in named {
                        let i = art as usize;
                        if !failed[i] {
                            failed[i] = true;
                            report
                                .problems
                                .push(format!("{name}: {}: {}", art_name(i), chain(&e)));
                        }
                    }
                }
            }
        }
        finish(arts.len(), &mut current, &failed, report);
    }
}
