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

/// The chunks one snapshot needs, by their ids' first 12 bytes (sorted, once each), and where
/// each is: what a restore or a verification holds instead of the repository's index. 24
/// bytes per distinct chunk of the snapshot, and 12 per blob holding them: the small files
/// sealed together in one group blob (dozens each) share its entry, so a million small files
/// take about 24 MiB, a 1 TiB database (a million 1 MiB windows, a blob each) about 36. A prefix shared with another chunk of the repository (by chance, or forged by a
/// writer) at worst locates the wrong blob: opening it checks the full id, and the chunk is
/// reported.
#[derive(Default)]
pub struct Located {
    ids: Vec<[u8; 12]>,
    /// Per id: its blob in `blobs` ([`UNSET`] while no index gave one), its plaintext length,
    /// its offset in the group ([`NO_GROUP`] for none).
    locs: Vec<[u32; 3]>,
    /// Blobs holding located chunks: pack, offset, sealed length.
    blobs: Vec<[u32; 3]>,
    /// Needed ids after the last deduplication.
    deduped: usize,
}

/// A packed location's "not in a group".
const NO_GROUP: u32 = u32::MAX;

/// A location no index gave yet.
const UNSET: u32 = u32::MAX;

impl Located {
    /// Notes that `id` is needed (then [`Located::seal`]). Many references to few chunks (a
    /// sparse file, repeated pages) stay small.
    pub fn need(&mut self, id: &ChunkId) {
        self.ids.push(prefix(id));
        if self.ids.len() >= 2 * self.deduped + (1 << 20) {
            self.ids.sort_unstable();
            self.ids.dedup();
            self.deduped = self.ids.len();
        }
    }

    /// Ends the collection: every needed chunk without a location yet.
    pub fn seal(&mut self) {
        self.ids.sort_unstable();
        self.ids.dedup();
        self.ids.shrink_to_fit();
        self.locs = vec![[UNSET, 0, NO_GROUP]; self.ids.len()];
    }

    /// An index's blob (as [`IndexSet::add_with`] hands it): taken when needed, in a pack not
    /// avoided if there is one.
    pub fn offer(&mut self, id: &ChunkId, loc: Loc, avoided: &[bool]) {
        if let Ok(i) = self.ids.binary_search(&prefix(id)) {
            let cur = self.locs[i][0];
            if cur == UNSET
                || (avoided[self.blobs[cur as usize][0] as usize] && !avoided[loc.pack as usize])
            {
                let blob = [loc.pack, loc.offset, loc.len];
                // An index lists a group's members one after the other.
                if self.blobs.last() != Some(&blob) {
                    self.blobs.push(blob);
                }
                let b = u32::try_from(self.blobs.len() - 1).expect("fewer than 4G blobs");
                self.locs[i] = [b, loc.raw_len, loc.inner.unwrap_or(NO_GROUP)];
            }
        }
    }

    /// Where `id` is, when an index said so.
    pub fn get(&self, id: &ChunkId) -> Option<Loc> {
        let i = self.ids.binary_search(&prefix(id)).ok()?;
        let [blob, raw_len, inner] = self.locs[i];
        let &[pack, offset, len] = self.blobs.get(blob as usize)?;
        Some(Loc {
            pack,
            offset,
            len,
            raw_len,
            inner: (inner != NO_GROUP).then_some(inner),
        })
    }

    /// The packs (positions) holding located chunks.
    pub fn packs(&self) -> std::collections::BTreeSet<u32> {
        self.locs
            .iter()
            .filter(|l| l[0] != UNSET)
            .map(|l| self.blobs[l[0] as usize][0])
            .collect()
    }
}

/// The merged view.
#[derive(Debug, Default)]
pub struct IndexSet {
    /// Chunk locations (empty in a backup's set, see [`IndexSet::for_backup`]).
    pub chunks: HashMap<ChunkId, Loc>,
    /// A backup's compact view of the chunks, instead of `chunks`.
    presence: Option<Presence>,
    pub packs: Vec<PackRec>,
    /// Index objects.
    pub indexes: Vec<IndexId>,
    pack_pos: HashMap<PackId, u32>,
    /// By pack position: whether it is avoided.
    avoided: Vec<bool>,
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

    /// Whether chunks must not be located in pack `id` of `size` bytes when another pack
    /// holds them (and a backup must not dedupe against it).
    fn avoids(&self, id: &PackId, size: u64) -> bool {
        self.avoid.contains(id)
            || self
                .present
                .as_ref()
                .is_some_and(|p| p.get(id) != Some(&size))
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

    /// Adds one index; a pack described twice keeps its first description.
    pub fn add(&mut self, id: IndexId, index: &Index) {
        let (mut chunks, mut presence) = (std::mem::take(&mut self.chunks), self.presence.take());
        self.add_with(id, index, &mut |chunk, loc, avoided| {
            if let Some(p) = presence.as_mut() {
                if !avoided[loc.pack as usize] {
                    p.0.push((prefix(chunk), loc.pack));
                }
                return;
            }
            match chunks.entry(*chunk) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(loc);
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    if !avoided[loc.pack as usize] && avoided[o.get().pack as usize] {
                        o.insert(loc);
                    }
                }
            }
        });
        self.chunks = chunks;
        self.presence = presence;
    }

    /// Adds one index's packs (a pack described twice keeps its first description) and
    /// hands every blob of a newly added pack to `blob`, with its location and, by pack
    /// position, which packs are avoided; keeps no chunk itself. A restore locates its
    /// chunks this way without a map of them.
    pub fn add_with(
        &mut self,
        id: IndexId,
        index: &Index,
        blob: &mut dyn FnMut(&ChunkId, Loc, &[bool]),
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
            self.avoided.push(avoided);
            for b in &p.blobs {
                let loc = Loc {
                    pack: pos,
                    offset: b.1,
                    len: b.2,
                    raw_len: b.3,
                    inner: b.4,
                };
                blob(&b.0, loc, &self.avoided);
            }
        }
    }

    /// Whether the pack at `pos` is one to avoid (marked or swept by prune, or not in
    /// storage with its recorded size).
    pub fn is_avoided(&self, pos: u32) -> bool {
        self.avoided[pos as usize]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn loc(pack: u32, offset: u32, raw_len: u32, inner: Option<u32>) -> Loc {
        Loc {
            pack,
            offset,
            len: 100,
            raw_len,
            inner,
        }
    }

    #[test]
    fn located_chunks_share_their_group_blob_and_prefer_packs_not_avoided() {
        let mut l = Located::default();
        for n in [3, 1, 2, 1, 4] {
            l.need(&id(n));
        }
        l.seal();
        let avoided = [true, false, false];
        // Pack 0 (avoided) holds chunk 1 alone; pack 1 a group of 1, 2 and 9 (not needed);
        // pack 2 chunk 3. Chunk 4 is in no index.
        l.offer(&id(1), loc(0, 8, 10, None), &avoided);
        l.offer(&id(1), loc(1, 8, 10, Some(0)), &avoided);
        l.offer(&id(2), loc(1, 8, 20, Some(10)), &avoided);
        l.offer(&id(9), loc(1, 8, 30, Some(30)), &avoided);
        l.offer(&id(3), loc(2, 8, 40, None), &avoided);
        l.offer(&id(3), loc(1, 500, 40, None), &avoided); // already in a pack not avoided
        assert_eq!(l.get(&id(1)), Some(loc(1, 8, 10, Some(0))));
        assert_eq!(l.get(&id(2)), Some(loc(1, 8, 20, Some(10))));
        assert_eq!(l.get(&id(3)), Some(loc(2, 8, 40, None)));
        assert_eq!((l.get(&id(4)), l.get(&id(9))), (None, None));
        assert_eq!(l.blobs.len(), 3, "the group's members share one blob entry");
        assert_eq!(l.packs(), [1, 2].into_iter().collect());
    }
}
