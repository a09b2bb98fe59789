//! An opened repository on one storage target: its descriptor, keys and index cache.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::selection::{Selection, Taken};
use super::{IndexSet, PipelineError};
use crate::repo::gc::{GcRecord, Phase};
use crate::repo::ids::{IndexId, PackId, SnapshotId};
use crate::repo::index::Index;
use crate::repo::keys::{ChunkIdKey, Identity, Recipients};
use crate::repo::layout::{self, Parsed};
use crate::repo::manifest::{Artifact, Manifest, ManifestHead, Refs};
use crate::repo::meta::RepoMeta;
use crate::storage::{PutMode, Storage, StorageError};

/// A snapshot as listed: complete when its manifest exists (the commit rule).
#[derive(Debug, Clone)]
pub struct SnapshotListing {
    pub policy: String,
    pub id: SnapshotId,
    /// The manifest exists (the snapshot is committed).
    pub has_manifest: bool,
    /// The refs file exists.
    pub has_refs: bool,
}

/// Prune's state as recorded in the repository (`gc/`).
#[derive(Debug, Default)]
pub struct GcState {
    /// Pending marks by name.
    pub marks: Vec<(String, GcRecord)>,
    /// Sweep records by name.
    pub swept: Vec<(String, GcRecord)>,
}

impl GcState {
    /// Packs that are marked or deleted: never dedupe against them.
    pub fn avoided_packs(&self) -> HashSet<PackId> {
        self.marks
            .iter()
            .chain(&self.swept)
            .flat_map(|(_, r)| r.packs.iter().copied())
            .collect()
    }
}

/// An opened repository.
#[derive(Clone)]
pub struct Repository {
    /// Where it lives.
    pub storage: Storage,
    /// Its descriptor.
    pub meta: RepoMeta,
    /// Chunk-id and MAC keys.
    pub ids: ChunkIdKey,
    cache_dir: PathBuf,
}

impl Repository {
    /// Opens an existing repository.
    ///
    /// # Errors
    /// `NoRepository` when there is none; `WrongChunkKey` when the key does not match.
    pub async fn open(
        storage: Storage,
        ids: ChunkIdKey,
        state_dir: &Path,
    ) -> Result<Self, PipelineError> {
        match storage.get(&layout::repo_meta(), None).await {
            Ok(bytes) => {
                let meta = RepoMeta::decode(&ids, storage.location(), &bytes)?;
                Ok(Self::with(storage, meta, ids, state_dir))
            }
            Err(e) if e.is_not_found() => Err(PipelineError::NoRepository {
                location: storage.location().to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the repository, creating it first when the target is empty.
    ///
    /// # Errors
    /// As [`Repository::open`], plus storage errors while creating.
    pub async fn open_or_create(
        storage: Storage,
        ids: ChunkIdKey,
        recipients: &Recipients,
        state_dir: &Path,
    ) -> Result<Self, PipelineError> {
        match Self::open(storage.clone(), ids.clone(), state_dir).await {
            Err(PipelineError::NoRepository { .. }) => {
                let meta = RepoMeta::new(&ids, recipients.to_strings());
                match storage
                    .put(
                        &layout::repo_meta(),
                        Bytes::from(meta.encode()),
                        PutMode::CreateOnly,
                    )
                    .await
                {
                    Ok(()) => {
                        tracing::info!(location = storage.location(), repo = %meta.repo_id, "Created repository.");
                        Ok(Self::with(storage, meta, ids, state_dir))
                    }
                    // Another writer created it at the same moment: use theirs.
                    Err(StorageError::AlreadyExists { .. }) => {
                        Self::open(storage, ids, state_dir).await
                    }
                    Err(e) => Err(e.into()),
                }
            }
            other => other,
        }
    }

    fn with(storage: Storage, meta: RepoMeta, ids: ChunkIdKey, state_dir: &Path) -> Self {
        let cache_dir = state_dir.join("cache").join(&meta.repo_id);
        Self {
            storage,
            meta,
            ids,
            cache_dir,
        }
    }

    /// Loads every index (from the local cache when present; indexes never change).
    ///
    /// # Errors
    /// Storage errors, or a corrupt index (named).
    pub async fn load_index(&self) -> Result<IndexSet, PipelineError> {
        self.load_index_with(None, false, &mut |s, id, ix| s.add(id, ix))
            .await
    }

    /// The index a backup dedupes against: as [`Repository::load_index`], without the chunks
    /// of packs that prune marked or swept, or that storage does not hold with their recorded
    /// size (one listing of `packs/`). Those chunks are stored again, so a pack deleted by
    /// hand or by a hostile writer never makes later backups incomplete.
    ///
    /// # Errors
    /// Storage errors, or a corrupt index (named).
    pub async fn load_index_for_backup(&self) -> Result<IndexSet, PipelineError> {
        let present = self.pack_sizes().await?;
        let mut set = self
            .load_index_with(Some(present), true, &mut |s, id, ix| s.add(id, ix))
            .await?;
        let absent = set.absent_packs();
        if !absent.is_empty() {
            tracing::warn!(
                location = self.storage.location(),
                packs = absent.len(),
                first = %absent[0],
                "Packs named by the repository's indexes are missing or not their recorded size; their data is stored again by this backup (run `dr verify` to see which snapshots they break)."
            );
        }
        set.seal_presence();
        Ok(set)
    }

    /// Every pack in storage and its size (one listing).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn pack_sizes(
        &self,
    ) -> Result<std::collections::HashMap<PackId, u64>, PipelineError> {
        Ok(self
            .storage
            .list(&layout::packs_prefix())
            .await?
            .into_iter()
            .filter_map(|m| match layout::parse(&m.key) {
                Parsed::Pack(id) => Some((id, m.size)),
                _ => None,
            })
            .collect())
    }

    /// Every index's packs, and each of their chunks handed to `blob` with its location and
    /// the avoided packs (see [`IndexSet::add_with`]), locating a chunk in a pack that
    /// `present` (storage's listing) holds with its recorded size: how a restore finds its
    /// chunks without holding a map of them.
    ///
    /// # Errors
    /// Storage errors, or a corrupt index (named).
    pub async fn locate_chunks(
        &self,
        present: std::collections::HashMap<PackId, u64>,
        blob: &mut (dyn FnMut(&crate::repo::ids::ChunkId, super::index_set::Loc, &[bool]) + Send),
    ) -> Result<IndexSet, PipelineError> {
        self.load_index_with(Some(present), false, &mut |s, id, ix| {
            s.add_with(id, ix, blob)
        })
        .await
    }

    async fn load_index_with(
        &self,
        present: Option<std::collections::HashMap<PackId, u64>>,
        backup: bool,
        add: &mut (dyn FnMut(&mut IndexSet, IndexId, &crate::repo::index::Index) + Send),
    ) -> Result<IndexSet, PipelineError> {
        let listed = self.storage.list(&layout::index_prefix()).await?;
        // An index entry takes ~100 bytes of JSON: room for them all at once, so that the
        // presence table is not doubled while it grows.
        let expected = listed.iter().map(|m| m.size).sum::<u64>() / 100;
        let ids: Vec<IndexId> = listed
            .iter()
            .filter_map(|m| match layout::parse(&m.key) {
                Parsed::Index(id) => Some(id),
                _ => None,
            })
            .collect();
        let avoid = self.gc_state().await?.avoided_packs();
        // Merge each index as it arrives and drop it: peak memory is the merged set plus a
        // few parsed indexes (each of at most 16,384 blobs, ~2 MiB), not every index at once.
        let mut loaded = futures::stream::iter(ids)
            .map(|id| async move { self.read_index(&id).await.map(|ix| (id, ix)) })
            .buffered(2);
        let mut set = IndexSet::avoiding(avoid);
        if backup {
            set = set.for_backup(usize::try_from(expected).unwrap_or(0));
        }
        if let Some(present) = present {
            set = set.requiring_present(present);
        }
        while let Some((id, ix)) = loaded.try_next().await? {
            add(&mut set, id, &ix);
        }
        Ok(set)
    }

    /// This host's cache for this repository (indexes, the file cache).
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Where a backup spools the packs it builds (see [`crate::storage::Storage::spool_dir`]),
    /// created private; spool files a killed backup left behind a day ago are removed.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn spool_dir(&self) -> Result<PathBuf, PipelineError> {
        let dir = self
            .storage
            .spool_dir()
            .unwrap_or_else(|| self.cache_dir.join("spool"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| PipelineError::io("creating", &dir, e))?;
        let stale = std::time::Duration::from_secs(24 * 3600);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > stale));
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(dir)
    }

    /// Reads an index, from this host's cache when it holds it intact.
    ///
    /// # Errors
    /// Storage errors, or a corrupt index (named).
    pub async fn read_index(&self, id: &IndexId) -> Result<Index, PipelineError> {
        let cached = self.cache_dir.join("index").join(id.to_hex());
        if let Ok(bytes) = tokio::fs::read(&cached).await {
            // A damaged cache entry is refetched, not trusted.
            if let Ok(ix) = Index::decode(&self.ids, &self.meta.repo_id, id, &bytes) {
                return Ok(ix);
            }
        }
        let bytes = self.storage.get(&layout::index(id), None).await?;
        let ix = Index::decode(&self.ids, &self.meta.repo_id, id, &bytes)?;
        if let Err(e) = write_cache(cached.clone(), bytes).await {
            tracing::debug!(path = %cached.display(), error = %e, "Could not cache an index.");
        }
        Ok(ix)
    }

    /// Reads every garbage-collection record.
    ///
    /// # Errors
    /// Storage errors, or a record that fails its MAC (named): prune state that cannot be
    /// trusted stops writers rather than risk deduping against deleted data.
    pub async fn gc_state(&self) -> Result<GcState, PipelineError> {
        let mut state = GcState::default();
        for m in self.storage.list(&layout::gc_prefix()).await? {
            let Parsed::Gc { name, phase } = layout::parse(&m.key) else {
                continue;
            };
            let bytes = match self.storage.get(&m.key, None).await {
                Ok(b) => b,
                // Swept and removed between the listing and the read.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            let object = format!("{} in {}", m.key, self.storage.location());
            let r = GcRecord::decode(phase, &self.ids, &self.meta.repo_id, &object, &bytes)?;
            match phase {
                Phase::Mark => state.marks.push((name, r)),
                Phase::Swept => state.swept.push((name, r)),
            }
        }
        Ok(state)
    }

    /// Snapshots of one policy (or all), oldest first, including incomplete ones.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn list_snapshots(
        &self,
        policy: Option<&str>,
    ) -> Result<Vec<SnapshotListing>, PipelineError> {
        let listed = self.storage.list(&layout::snapshots_prefix(policy)).await?;
        let mut by_id: BTreeMap<(SnapshotId, String), SnapshotListing> = BTreeMap::new();
        for m in listed {
            let (policy, id, is_refs) = match layout::parse(&m.key) {
                Parsed::Manifest { policy, id } => (policy, id, false),
                Parsed::Refs { policy, id } => (policy, id, true),
                _ => continue,
            };
            let e = by_id
                .entry((id.clone(), policy.clone()))
                .or_insert(SnapshotListing {
                    policy,
                    id,
                    has_manifest: false,
                    has_refs: false,
                });
            if is_refs {
                e.has_refs = true
            } else {
                e.has_manifest = true
            }
        }
        Ok(by_id.into_values().collect())
    }

    /// Committed snapshots of a policy, oldest first.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn committed(&self, policy: &str) -> Result<Vec<SnapshotId>, PipelineError> {
        Ok(self
            .list_snapshots(Some(policy))
            .await?
            .into_iter()
            .filter(|s| s.has_manifest)
            .map(|s| s.id)
            .collect())
    }

    /// Resolves a snapshot selector (see [`select`]) among the policy's committed snapshots.
    ///
    /// # Errors
    /// `NoSnapshot` when nothing matches, `AmbiguousSnapshot` (listing the matches) when more
    /// than one does, `BadSelector` for a malformed `latest~N` / `latest@TIME`.
    pub async fn resolve(&self, policy: &str, selector: &str) -> Result<SnapshotId, PipelineError> {
        let all = self.committed(policy).await?;
        match select(&all, selector) {
            Ok(Some(id)) => Ok(id.clone()),
            Ok(None) => Err(PipelineError::NoSnapshot {
                policy: policy.to_owned(),
                selector: selector.to_owned(),
                location: self.storage.location().to_owned(),
                available: all.len(),
            }),
            Err(Selected::Ambiguous(matches)) => Err(PipelineError::AmbiguousSnapshot {
                policy: policy.to_owned(),
                selector: selector.to_owned(),
                matches: matches.into_iter().map(|m| m.to_string()).collect(),
            }),
            Err(Selected::Bad(reason)) => Err(PipelineError::BadSelector {
                selector: selector.to_owned(),
                reason,
            }),
        }
    }

    /// Reads and authenticates a snapshot's refs.
    ///
    /// # Errors
    /// Storage errors or a corrupt refs file (named).
    pub async fn read_refs(&self, policy: &str, id: &SnapshotId) -> Result<Refs, PipelineError> {
        let key = layout::refs(policy, id);
        let bytes = self.storage.get(&key, None).await?;
        Ok(Refs::decode(
            &self.ids,
            &self.meta.repo_id,
            policy,
            id,
            &format!("{key} in {}", self.storage.location()),
            &bytes,
        )?)
    }
}

/// Largest piece of a manifest fetched at once while it is spooled.
const SPOOL_RANGE: u64 = 8 << 20;

/// A snapshot's manifest copied into an unnamed file of this process (it stays encrypted),
/// read as a stream as often as needed: a restore checks all of it before writing anything,
/// then writes as it reads it again, never holding its artifacts whole. Derefs to the
/// manifest's [`ManifestHead`] (source facts, times, artifact count).
#[derive(Clone, Debug)]
pub struct SpooledManifest {
    file: Arc<std::fs::File>,
    object: String,
    repo_id: String,
    head: ManifestHead,
    /// A partial restore's selection: `read` hands over only what it takes.
    taken: Option<Arc<Taken>>,
}

impl std::ops::Deref for SpooledManifest {
    type Target = ManifestHead;
    fn deref(&self) -> &ManifestHead {
        &self.head
    }
}

impl SpooledManifest {
    /// Hands every artifact to `each` (every selected one after [`Self::select`]), in
    /// manifest order (blocking: decrypts and parses).
    ///
    /// # Errors
    /// A corrupt manifest (named), or whatever `each` returns.
    pub fn read<E: From<crate::repo::RepoError>>(
        &self,
        identity: &Identity,
        each: &mut dyn FnMut(Artifact) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut selected = |a: Artifact| match &self.taken {
            Some(t) if !t.keeps(&a) => Ok(()),
            _ => each(a),
        };
        let head = Manifest::read(
            identity,
            (&self.repo_id, &self.head.policy, &self.head.snapshot),
            &self.object,
            std::io::BufReader::with_capacity(1 << 16, ReadAt(&self.file, 0)),
            &mut selected,
        )?;
        debug_assert_eq!(head, self.head, "the spooled copy is this process's own");
        Ok(())
    }

    /// This manifest restricted to what `selection` takes and the directories above it (one
    /// pass to find those; blocking). Everything selected: the manifest as it is.
    ///
    /// # Errors
    /// A corrupt manifest (named).
    pub fn select(self, identity: &Identity, selection: Selection) -> Result<Self, PipelineError> {
        if selection.is_all() {
            return Ok(self);
        }
        let mut taken = Taken::new(selection);
        self.read(identity, &mut |a| {
            taken.see(&a);
            Ok::<_, PipelineError>(())
        })?;
        Ok(Self {
            taken: Some(Arc::new(taken)),
            ..self
        })
    }

    /// Entries [`Self::read`] hands over: all of them, or what a selection takes.
    pub fn entries(&self) -> u64 {
        self.taken
            .as_ref()
            .map_or(self.head.artifacts, |t| t.entries)
    }
}

/// Reads a file from the start through `pread`, so that readers share one handle.
struct ReadAt<'a>(&'a std::fs::File, u64);

impl std::io::Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.0.read_at(buf, self.1)?;
        self.1 += n as u64;
        Ok(n)
    }
}

impl Repository {
    /// Copies a snapshot's manifest into this host's spool (a few MiB at a time) and reads
    /// its head: what a restore of any size reads its manifest from.
    ///
    /// # Errors
    /// Storage errors, `WrongIdentity`, or a corrupt manifest (named).
    pub async fn spool_manifest(
        &self,
        identity: Arc<Identity>,
        policy: &str,
        id: &SnapshotId,
    ) -> Result<SpooledManifest, PipelineError> {
        let key = layout::manifest(policy, id);
        let object = format!("{key} in {}", self.storage.location());
        let dir = self.spool_dir()?;
        let mut file = tempfile::tempfile_in(&dir)
            .map_err(|e| PipelineError::io("creating a file in", &dir, e))?;
        let size = match self.storage.head(&key).await? {
            Some(m) => m.size,
            None => {
                return Err(StorageError::NotFound {
                    key: key.to_string(),
                    location: self.storage.location().to_owned(),
                }
                .into());
            }
        };
        let mut at = 0;
        while at < size {
            let end = (at + SPOOL_RANGE).min(size);
            let bytes = self.storage.get(&key, Some(at..end)).await?;
            file = tokio::task::spawn_blocking(move || {
                use std::io::Write;
                file.write_all(&bytes).map(|()| file)
            })
            .await
            .map_err(|e| PipelineError::Internal(e.to_string()))?
            .map_err(|e| PipelineError::io("writing a file in", &dir, e))?;
            at = end;
        }
        let (repo_id, policy, snapshot) =
            (self.meta.repo_id.clone(), policy.to_owned(), id.clone());
        tokio::task::spawn_blocking(move || {
            let head = Manifest::read(
                &identity,
                (&repo_id, &policy, &snapshot),
                &object,
                std::io::BufReader::with_capacity(1 << 16, ReadAt(&file, 0)),
                &mut |_| Ok::<_, PipelineError>(()),
            )?;
            Ok(SpooledManifest {
                file: Arc::new(file),
                object,
                repo_id,
                head,
                taken: None,
            })
        })
        .await
        .map_err(|e| PipelineError::Internal(e.to_string()))?
    }
}

/// Writes a cache file through a temp name. Takes the fetched `Bytes` itself: `tokio::fs::write`
/// would copy a multi-MiB index once more, which was a cold-cache restore's memory peak.
async fn write_cache(path: PathBuf, bytes: bytes::Bytes) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        let dir = path.parent().expect("cache paths have a parent");
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".tmp-{}", hex::encode(rand::random::<[u8; 8]>())));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &path)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Why a selector did not pick one snapshot.
#[derive(Debug, PartialEq)]
pub enum Selected<'a> {
    /// More than one snapshot matches (all of them, oldest first).
    Ambiguous(Vec<&'a SnapshotId>),
    /// The selector is malformed.
    Bad(String),
}

/// Picks one of `all` (oldest first) by selector:
/// - `latest`, `latest~N` (the N-th before the newest), `latest@TIME` (the newest taken at or
///   before TIME, e.g. `latest@'2026-11-23 14:00+00'`);
/// - a full id or a unique prefix of one (`20261123T1402`);
/// - the random part after the `-`, or a unique prefix of it (`1a2b3c4d`, `1a2b`).
///
/// `Ok(None)` when nothing matches.
///
/// # Errors
/// `Ambiguous` with every match, `Bad` for a malformed `latest~N` / `latest@TIME`.
pub fn select<'a>(
    all: &'a [SnapshotId],
    selector: &str,
) -> Result<Option<&'a SnapshotId>, Selected<'a>> {
    if let Some(scope) = selector.strip_prefix("latest") {
        if scope.is_empty() {
            return Ok(all.last());
        }
        if let Some(n) = scope.strip_prefix('~') {
            let n: usize = n.parse().map_err(|_| {
                Selected::Bad(format!(
                    "`~{n}` is not a count (latest~2 is the third newest)"
                ))
            })?;
            return Ok(all.len().checked_sub(n + 1).map(|i| &all[i]));
        }
        if let Some(at) = scope.strip_prefix('@') {
            let at = super::pitr::parse_time(at).map_err(Selected::Bad)?;
            return Ok(all.iter().rev().find(|s| s.time() <= at));
        }
        return Err(Selected::Bad(
            "after `latest` comes nothing, `~N` or `@TIME`".to_owned(),
        ));
    }
    let matches: Vec<&SnapshotId> = all
        .iter()
        .filter(|s| {
            let id = s.as_str();
            id.starts_with(selector)
                || id
                    .rsplit_once('-')
                    .is_some_and(|(_, hash)| !selector.is_empty() && hash.starts_with(selector))
        })
        .collect();
    match matches.len() {
        0 => Ok(None),
        1 => Ok(Some(matches[0])),
        _ => Err(Selected::Ambiguous(matches)),
    }
}

#[cfg(test)]
mod select_tests {
    use super::{Selected, SnapshotId, select};

    fn ids() -> Vec<SnapshotId> {
        [
            "20261122T100000.000Z-aa11bb22",
            "20261123T140200.000Z-1a2b3c4d",
            "20261123T140500.000Z-1a2bffff",
            "20261124T000000.000Z-99990000",
        ]
        .into_iter()
        .map(|s| SnapshotId::parse(s).unwrap())
        .collect()
    }

    #[test]
    fn selectors_pick_one_snapshot_or_say_why_not() {
        let all = ids();
        let pick = |s: &str| select(&all, s).map(|o| o.map(|id| id.as_str().to_owned()));
        assert_eq!(pick("latest"), Ok(Some(all[3].to_string())));
        assert_eq!(pick("latest~0"), Ok(Some(all[3].to_string())));
        assert_eq!(pick("latest~3"), Ok(Some(all[0].to_string())));
        assert_eq!(pick("latest~4"), Ok(None));
        assert_eq!(
            pick("latest@2026-11-23 14:03:00+00"),
            Ok(Some(all[1].to_string()))
        );
        assert_eq!(pick("latest@2026-11-01 00:00:00+00"), Ok(None));
        assert!(matches!(pick("latest~x"), Err(Selected::Bad(_))));
        assert!(matches!(pick("latestish"), Err(Selected::Bad(_))));
        assert_eq!(pick("20261122"), Ok(Some(all[0].to_string())));
        assert_eq!(pick("aa11"), Ok(Some(all[0].to_string())));
        assert_eq!(pick("1a2b3c4d"), Ok(Some(all[1].to_string())));
        assert_eq!(pick("nothing"), Ok(None));
        // Two snapshots share the hash prefix and three the time prefix: all are listed.
        assert_eq!(
            select(&all, "1a2b"),
            Err(Selected::Ambiguous(vec![&all[1], &all[2]]))
        );
        assert_eq!(
            select(&all, "202611").unwrap_err(),
            Selected::Ambiguous(all.iter().collect())
        );
    }
}
