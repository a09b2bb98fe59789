//! What a Qdrant snapshot records about itself, typed: written by the backup into the
//! manifest's source facts, read by restores and drills through [`QdrantFacts::of`]. The
//! stored JSON keeps the names it always had.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Sample, SnapshotFile};
use crate::source::FactsError;

/// A Qdrant snapshot's facts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QdrantFacts {
    /// The server's version at backup time.
    pub qdrant_version: String,
    /// The server's URL (no credentials: validation refuses them).
    pub server: String,
    /// Per collection.
    pub collections: Vec<CollectionFacts>,
}

impl QdrantFacts {
    /// The facts recorded in `snapshot`'s manifest.
    ///
    /// # Errors
    /// A fact is missing or malformed (not a Qdrant snapshot).
    pub fn of(snapshot: &str, stored: &Value) -> Result<Self, FactsError> {
        crate::source::decode_facts(snapshot, "Qdrant", stored.clone())
    }
}

/// What the manifest records per collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionFacts {
    /// Collection name.
    pub name: String,
    /// Exact point count at snapshot time.
    pub points: u64,
    /// `GET /collections/{c}` result (config, status).
    pub info: Value,
    /// Recorded searches.
    pub samples: Vec<Sample>,
    /// Server-side snapshot name (a single node's collection snapshot; empty when sharded).
    #[serde(default)]
    pub snapshot: String,
    /// SHA-256 of the snapshot file (checked while streaming).
    #[serde(default)]
    pub checksum: String,
    /// Snapshot size.
    #[serde(default)]
    pub size: u64,
    /// A distributed deployment's shards, one snapshot each; empty for a single node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardFacts>,
}

impl CollectionFacts {
    /// The entry holding the collection snapshot, or shard `id`'s snapshot.
    pub fn entry(&self, shard: Option<u32>) -> String {
        match shard {
            None => format!("collections/{}.snapshot", self.name),
            Some(id) => format!("collections/{}/shard-{id}.snapshot", self.name),
        }
    }
}

/// One shard of a collection in a distributed deployment, as backed up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardFacts {
    /// Shard id.
    pub id: u32,
    /// The peer the snapshot was taken on.
    pub peer: u64,
    /// Every replica at backup time: peer id → state (`Active`, `Dead`, …).
    pub replicas: BTreeMap<u64, String>,
    /// Points in the snapshotted replica, as its peer reported them.
    pub points: Option<u64>,
    /// The server's snapshot description.
    #[serde(flatten)]
    pub snapshot: SnapshotFile,
}
