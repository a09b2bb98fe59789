//! Index objects: which chunks live where. Plaintext + MAC so writers can dedupe.
//!
//! Body (JSON): `{"version":1,"packs":[{"id","size","key","blobs":[[chunk-id,offset,len,raw-len],…]}]}`.
//! `key` is the pack's age-wrapped data key (base64), duplicated from the pack trailer so a
//! restore needs no extra read per pack. The object's name is the BLAKE3 of its bytes.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::RepoError;
use super::ids::{ChunkId, IndexId, PackId};
use super::keys::ChunkIdKey;
use super::mac;
use super::pack::BlobEntry;

const KIND: &str = "index";
/// Index format version.
pub const VERSION: u32 = 1;

/// One pack in an index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPack {
    /// Pack id.
    pub id: PackId,
    /// Object size in bytes.
    pub size: u64,
    /// age-wrapped data key, base64.
    pub key: String,
    /// Blobs in the pack.
    pub blobs: Vec<IndexBlob>,
}

/// `[chunk-id, offset, len, raw-len]`, and a fifth element for a member of a group blob: its
/// offset in the group's plaintext (see `pack.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct IndexBlob(
    pub ChunkId,
    pub u32,
    pub u32,
    pub u32,
    #[serde(default)] pub Option<u32>,
);

impl Serialize for IndexBlob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(if self.4.is_some() { 5 } else { 4 })?;
        t.serialize_element(&self.0)?;
        t.serialize_element(&self.1)?;
        t.serialize_element(&self.2)?;
        t.serialize_element(&self.3)?;
        if let Some(inner) = self.4 {
            t.serialize_element(&inner)?;
        }
        t.end()
    }
}

impl From<&BlobEntry> for IndexBlob {
    fn from(b: &BlobEntry) -> Self {
        Self(b.id, b.offset, b.len, b.raw_len, b.inner)
    }
}

impl IndexBlob {
    /// As a blob entry.
    pub fn entry(&self) -> BlobEntry {
        BlobEntry {
            id: self.0,
            offset: self.1,
            len: self.2,
            raw_len: self.3,
            inner: self.4,
        }
    }
}

impl IndexPack {
    /// Builds the index entry of a sealed pack.
    pub fn new(id: PackId, size: u64, wrapped_key: &[u8], blobs: &[BlobEntry]) -> Self {
        Self {
            id,
            size,
            key: base64::engine::general_purpose::STANDARD.encode(wrapped_key),
            blobs: blobs.iter().map(IndexBlob::from).collect(),
        }
    }

    /// The wrapped data key.
    ///
    /// # Errors
    /// `RepoError::Corrupt` when the base64 is bad.
    pub fn wrapped_key(&self) -> Result<Vec<u8>, RepoError> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.key)
            .map_err(|_| RepoError::Corrupt {
                object: format!("index entry of pack {}", self.id),
                reason: "bad key encoding".to_owned(),
            })
    }
}

/// An index object's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// Format version.
    pub version: u32,
    /// Packs described.
    pub packs: Vec<IndexPack>,
}

impl Index {
    /// Encodes and MACs; returns the id and bytes.
    pub fn encode(&self, keys: &ChunkIdKey, repo_id: &str) -> (IndexId, Vec<u8>) {
        let bytes = mac::seal_with(keys, KIND, repo_id, |out| {
            serde_json::to_writer(out, self).expect("index serializes");
        });
        (IndexId(*blake3::hash(&bytes).as_bytes()), bytes)
    }

    /// Checks name, MAC and version, then parses.
    ///
    /// # Errors
    /// `RepoError::Corrupt` naming the index object.
    pub fn decode(
        keys: &ChunkIdKey,
        repo_id: &str,
        id: &IndexId,
        bytes: &[u8],
    ) -> Result<Self, RepoError> {
        let object = format!("index/{id}");
        if IndexId(*blake3::hash(bytes).as_bytes()) != *id {
            return Err(RepoError::Corrupt {
                object,
                reason: "content does not hash to its name".to_owned(),
            });
        }
        let body = mac::open(keys, KIND, repo_id, &object, bytes)?;
        let index: Self = serde_json::from_slice(body).map_err(|e| RepoError::Corrupt {
            object: object.clone(),
            reason: e.to_string(),
        })?;
        if index.version != VERSION {
            return Err(RepoError::Version {
                object,
                found: index.version,
                supported: VERSION,
            });
        }
        Ok(index)
    }

    /// All chunk ids with their pack.
    pub fn chunks(&self) -> impl Iterator<Item = (ChunkId, &IndexPack)> {
        self.packs
            .iter()
            .flat_map(|p| p.blobs.iter().map(move |b| (b.0, p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let k = ChunkIdKey::from_secret(&[5; 32]);
        let idx = Index {
            version: VERSION,
            packs: vec![IndexPack::new(
                PackId([1; 32]),
                100,
                b"wrapped",
                &[
                    BlobEntry {
                        id: ChunkId([2; 32]),
                        offset: 8,
                        len: 50,
                        raw_len: 70,
                        inner: None,
                    },
                    BlobEntry {
                        id: ChunkId([3; 32]),
                        offset: 58,
                        len: 90,
                        raw_len: 8192,
                        inner: Some(8192),
                    },
                ],
            )],
        };
        let (id, bytes) = idx.encode(&k, "r");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains(",8,50,70]") && text.contains(",58,90,8192,8192]"),
            "{text}"
        );
        assert_eq!(Index::decode(&k, "r", &id, &bytes).unwrap(), idx);
        assert_eq!(idx.packs[0].wrapped_key().unwrap(), b"wrapped");
        assert!(Index::decode(&k, "r", &IndexId([0; 32]), &bytes).is_err());
    }
}
