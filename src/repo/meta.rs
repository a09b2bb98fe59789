//! `dr-repo.json`: the plaintext repository descriptor, written once when a repository is
//! created and copied unchanged to replicas (they are the same repository).

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::RepoError;
use super::keys::ChunkIdKey;

/// Descriptor format version.
pub const VERSION: u32 = 1;

/// Content-defined chunking parameters (fixed per repository: changing them breaks dedup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Minimum chunk size.
    pub min: u32,
    /// Average chunk size.
    pub avg: u32,
    /// Maximum chunk size.
    pub max: u32,
}

impl ChunkerParams {
    /// 128 KiB / 512 KiB / 2 MiB: a 1 MB change costs 1–3 MB, and 1 TB makes ~2M chunks.
    pub const DEFAULT: Self = Self {
        min: 128 << 10,
        avg: 512 << 10,
        max: 2 << 20,
    };
}

/// `dr-repo.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoMeta {
    /// Always `dr-repo`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Random id; bound into every MAC and manifest.
    pub repo_id: String,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Chunker parameters.
    pub chunker: ChunkerParams,
    /// MAC proving the writer's chunk-id key is this repository's.
    pub key_check: String,
    /// Recipients at creation (informational; new packs use the configured ones).
    pub recipients: Vec<String>,
}

impl RepoMeta {
    /// A new descriptor.
    pub fn new(keys: &ChunkIdKey, recipients: Vec<String>) -> Self {
        let mut b = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut b);
        let repo_id = hex::encode(b);
        Self {
            format: "dr-repo".to_owned(),
            version: VERSION,
            key_check: key_check(keys, &repo_id),
            repo_id,
            created: Utc::now(),
            chunker: ChunkerParams::DEFAULT,
            recipients,
        }
    }

    /// Parses and checks the key.
    ///
    /// # Errors
    /// `RepoError::Corrupt`, `RepoError::Version` or `RepoError::WrongChunkKey`.
    pub fn decode(keys: &ChunkIdKey, location: &str, bytes: &[u8]) -> Result<Self, RepoError> {
        let m: Self = serde_json::from_slice(bytes).map_err(|e| RepoError::Corrupt {
            object: format!("{location}/dr-repo.json"),
            reason: e.to_string(),
        })?;
        if m.format != "dr-repo" || m.version != VERSION {
            return Err(RepoError::Version {
                object: format!("{location}/dr-repo.json"),
                found: m.version,
                supported: VERSION,
            });
        }
        if key_check(keys, &m.repo_id) != m.key_check {
            return Err(RepoError::WrongChunkKey {
                location: location.to_owned(),
            });
        }
        Ok(m)
    }

    /// Pretty JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("meta serializes")
    }
}

fn key_check(keys: &ChunkIdKey, repo_id: &str) -> String {
    hex::encode(keys.mac(&[b"dr-key-check-v1", repo_id.as_bytes()]))
}
