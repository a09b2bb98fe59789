//! All indexes of a repository, merged in memory: chunk id → location.

use std::collections::{HashMap, HashSet};

use crate::repo::ids::{ChunkId, IndexId, PackId};
use crate::repo::index::Index;
use crate::repo::pack::BlobEntry;

/// Where a chunk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Position in [`IndexSet::packs`].
    pub pack: u32,
    /// Offset in the pack.
    pub offset: u32,
    /// Sealed length.
    pub len: u32,
    /// Plaintext length.
    pub raw_len: u32,
    /// Offset in its group's plaintext, for a member of a group blob.
    pub inner: Option<u32>,
}

/// A pack known from an index.
#[derive(Debug, Clone)]
pub struct PackRec {
    /// Pack id.
    pub id: PackId,
    /// Object size.
    pub size: u64,
    /// Wrapped data key, base64 as stored.
    pub key: String,
    /// Position in [`IndexSet::indexes`] of the index describing it.
    pub index: u32,
}

impl PackRec {
    /// The age-wrapped data key.
    ///
    /// # Errors
    /// `RepoError::Corrupt` naming the pack when the stored encoding is bad.
    pub fn wrapped_key(&self) -> Result<Vec<u8>, crate::repo::RepoError> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&self.key)
            .map_err(|_| crate::repo::RepoError::Corrupt {
                object: format!("index entry of pack {}", self.id),
                reason: "bad key encoding".to_owned(),
            })
    }
}

/// Whether a backup must not dedupe against pack `id` of `size` bytes.
fn avoids(
    avoid: &HashSet<PackId>,
    present: Option<&HashMap<PackId, u64>>,
    id: &PackId,
    size: u64,
) -> bool {
    avoid.contains(id) || present.is_some_and(|p| p.get(id) != Some(&size))
}

/// What a backup needs of the chunk index: whether the repository holds a chunk outside the
/// packs it must avoid, and in which pack. 12-byte id prefixes with the pack's position,
/// sorted: 16 bytes per chunk, where a map of full locations took about 100 (a million small
/// files, or a large repository's history, would not fit a writer's memory budget). Two
/// chunks whose keyed ids share 96 bits are not expected in 10^13 backups of 10^7 chunks.
#[derive(Debug, Default)]
pub struct Presence(Vec<([u8; 12], u32)>);

fn prefix(id: &ChunkId) -> [u8; 12] {
    id.0[..12].try_into().expect("12 of 32")
}

impl Presence {
    /// The pack holding `id`.
    pub fn pack_of(&self, id: &ChunkId) -> Option<u32> {
        let k = prefix(id);
        self.0
            .binary_search_by(|e| e.0.cmp(&k))
            .ok()
            .map(|i| self.0[i].1)
    }
}

/// The merged view.
#[derive(Debug, Default)]
pub struct IndexSet {
    /// Chunk locations (empty in a backup's set, see [`IndexSet::for_backup`]).
    pub chunks: HashMap<ChunkId, Loc>,
    /// A backup's compact view of the chunks, instead of `chunks`.
    presence: Option<Presence>,
    /// Packs.
    pub packs: Vec<PackRec>,
    /// Index objects.
    pub indexes: Vec<IndexId>,
    pack_pos: HashMap<PackId, u32>,
    avoid: HashSet<PackId>,
    /// When set, the packs that exist in storage with their sizes: any other pack is avoided.
    present: Option<HashMap<PackId, u64>>,
}

impl IndexSet {
    /// An empty set that locates chunks in the `avoid` packs (marked or swept by prune) only
    /// when no other pack holds them.
    pub fn avoiding(avoid: HashSet<PackId>) -> Self {
        Self {
            avoid,
            ..Self::default()
        }
    }

    /// Also avoids every pack that is not in `present` (storage's listing) with the size its
    /// index records: deleted or damaged packs, by accident or by a hostile writer.
    pub fn requiring_present(mut self, present: HashMap<PackId, u64>) -> Self {
        self.present = Some(present);
        self
    }

    /// A set for a backup: chunks are only kept as [`Presence`], and only outside avoided
    /// packs; `expected` chunks are room made at once.
    pub fn for_backup(mut self, expected: usize) -> Self {
        self.presence = Some(Presence(Vec::with_capacity(expected)));
        self
    }

    /// Sorts a backup's [`Presence`] once every index is added.
    pub fn seal_presence(&mut self) {
        if let Some(p) = self.presence.as_mut() {
            p.0.sort_unstable_by_key(|e| e.0);
            p.0.dedup_by(|a, b| a.0 == b.0);
            p.0.shrink_to_fit();
        }
    }

    /// The pack holding chunk `id` (outside avoided packs, in a backup's set).
    pub fn pack_of(&self, id: &ChunkId) -> Option<u32> {
        match &self.presence {
            Some(p) => p.pack_of(id),
            None => self.chunks.get(id).map(|l| l.pack),
        }
    }

    fn avoids(&self, id: &PackId, size: u64) -> bool {
        avoids(&self.avoid, self.present.as_ref(), id, size)
    }

    /// Packs an index names that storage does not hold with their recorded size.
    pub fn absent_packs(&self) -> Vec<PackId> {
        let Some(present) = &self.present else {
            return Vec::new();
        };
        self.packs
            .iter()
            .filter(|p| present.get(&p.id) != Some(&p.size))
            .map(|p| p.id)
            .collect()
    }

    /// Adds one index (only the chunks in `only`, when given); a pack described twice keeps
    /// its first description.
    pub fn add(
        &mut self,
        id: IndexId,
        index: &Index,
        only: Option<&std::collections::HashSet<ChunkId>>,
    ) {
        let ix = u32::try_from(self.indexes.len()).expect("fewer than 4G indexes");
        self.indexes.push(id);
        for p in &index.packs {
            if self.pack_pos.contains_key(&p.id) {
                continue;
            }
            let pos = u32::try_from(self.packs.len()).expect("fewer than 4G packs");
            self.pack_pos.insert(p.id, pos);
            self.packs.push(PackRec {
                id: p.id,
                size: p.size,
                key: p.key.clone(),
                index: ix,
            });
            let avoided = self.avoids(&p.id, p.size);
            if let Some(presence) = self.presence.as_mut() {
                if !avoided {
                    presence
                        .0
                        .extend(p.blobs.iter().map(|b| (prefix(&b.0), pos)));
                }
                continue;
            }
            for b in p
                .blobs
                .iter()
                .filter(|b| only.is_none_or(|o| o.contains(&b.0)))
            {
                let loc = Loc {
                    pack: pos,
                    offset: b.1,
                    len: b.2,
                    raw_len: b.3,
                    inner: b.4,
                };
                let (packs, avoid, present) = (&self.packs, &self.avoid, self.present.as_ref());
                match self.chunks.entry(b.0) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(loc);
                    }
                    std::collections::hash_map::Entry::Occupied(mut o) => {
                        let held = &packs[o.get().pack as usize];
                        if !avoided && avoids(avoid, present, &held.id, held.size) {
                            o.insert(loc);
                        }
                    }
                }
            }
        }
    }

    /// The pack record at `pos`.
    pub fn pack(&self, pos: u32) -> &PackRec {
        &self.packs[pos as usize]
    }

    /// Position of a pack.
    pub fn pack_pos(&self, id: &PackId) -> Option<u32> {
        self.pack_pos.get(id).copied()
    }

    /// A blob entry for a chunk at `loc`.
    pub fn entry(id: ChunkId, loc: &Loc) -> BlobEntry {
        BlobEntry {
            id,
            offset: loc.offset,
            len: loc.len,
            raw_len: loc.raw_len,
            inner: loc.inner,
        }
    }
}
