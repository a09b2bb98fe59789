//! Garbage-collection records: the state of two-phase pack deletion, kept in the repository
//! so that every writer sees it.
//!
//! ```text
//! gc/<created>-<rand>.mark    packs, indexes and stale refs found unreferenced at `created`;
//!                             they may be deleted from `sweep_after` on, if still unreferenced
//! gc/<created>-<rand>.swept   what a sweep actually deleted (packs some surviving index may
//!                             still describe: readers must not use those locations)
//! ```
//!
//! Both are MAC'd JSON like indexes. Writers never dedupe against a pack named in any record,
//! and a backup refuses to commit when a pack it uses is marked with a sweep time too close to
//! now (see `pipeline::backup`): together with the grace period this is what makes prune safe
//! to run while backups run, without locks.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::RepoError;
use super::ids::{IndexId, PackId};
use super::keys::ChunkIdKey;
use super::mac;

/// Record format version.
pub const VERSION: u32 = 1;

/// Which phase a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Found unreferenced; deletable after the grace period.
    Mark,
    /// Deleted.
    Swept,
}

impl Phase {
    /// File suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Mark => "mark",
            Self::Swept => "swept",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Self::Mark => "gc-mark",
            Self::Swept => "gc-swept",
        }
    }
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRecord {
    /// Format version.
    pub version: u32,
    /// When the packs were found unreferenced (mark) or deleted (swept).
    pub created: DateTime<Utc>,
    /// Earliest time a sweep may delete them (marks only; equal to `created` for swept).
    pub sweep_after: DateTime<Utc>,
    pub packs: Vec<PackId>,
    /// Index objects.
    pub indexes: Vec<IndexId>,
    /// Keys of `.refs` objects whose manifest never appeared (interrupted backups).
    pub stale_refs: Vec<String>,
}

impl GcRecord {
    /// Encodes and MACs.
    pub fn encode(&self, phase: Phase, keys: &ChunkIdKey, repo_id: &str) -> Vec<u8> {
        mac::seal(
            keys,
            phase.kind(),
            repo_id,
            &serde_json::to_vec(self).expect("gc record serializes"),
        )
    }

    /// Checks MAC and version.
    ///
    /// # Errors
    /// `RepoError::Corrupt` or `RepoError::Version` naming the object.
    pub fn decode(
        phase: Phase,
        keys: &ChunkIdKey,
        repo_id: &str,
        object: &str,
        bytes: &[u8],
    ) -> Result<Self, RepoError> {
        let body = mac::open(keys, phase.kind(), repo_id, object, bytes)?;
        let r: Self = serde_json::from_slice(body).map_err(|e| RepoError::Corrupt {
            object: object.to_owned(),
            reason: e.to_string(),
        })?;
        if r.version != VERSION {
            return Err(RepoError::Version {
                object: object.to_owned(),
                found: r.version,
                supported: VERSION,
            });
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_phases_do_not_mix() {
        let keys = ChunkIdKey::from_secret(&[3; 32]);
        let r = GcRecord {
            version: VERSION,
            created: Utc::now(),
            sweep_after: Utc::now(),
            packs: vec![PackId([7; 32])],
            indexes: vec![IndexId([8; 32])],
            stale_refs: vec!["snapshots/p/x.refs".into()],
        };
        let bytes = r.encode(Phase::Mark, &keys, "repo");
        assert_eq!(
            GcRecord::decode(Phase::Mark, &keys, "repo", "o", &bytes).unwrap(),
            r
        );
        assert!(GcRecord::decode(Phase::Swept, &keys, "repo", "o", &bytes).is_err());
        assert!(GcRecord::decode(Phase::Mark, &keys, "other", "o", &bytes).is_err());
    }
}
