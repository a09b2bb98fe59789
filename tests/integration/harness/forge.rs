//! Forging repository objects as a compromised writer could: it holds the age recipients and
//! the chunk-id (MAC) key, so its manifests decrypt and its `.refs` verify. (The forger reads
//! the real manifest with the identity only for convenience, to reuse real chunk lists.)

use std::path::PathBuf;

use dr::repo::ids::SnapshotId;
use dr::repo::keys::{ChunkIdKey, Identity, Recipients};
use dr::repo::layout::{self, Parsed};
use dr::repo::manifest::{Artifact, ChunkRef, EntryKind, EntryName, Manifest, Refs};

use super::dr::DrEnv;

pub struct Forger {
    pub repo: PathBuf,
    ids: ChunkIdKey,
    identity: Identity,
    repo_id: String,
}

impl Forger {
    pub fn new(env: &DrEnv) -> Self {
        let setup = env.setup();
        let repo = setup.join("repo");
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(repo.join("dr-repo.json")).unwrap()).unwrap();
        Self {
            ids: ChunkIdKey::load(&setup.join("keys/chunk-id.key")).unwrap(),
            identity: Identity::load(Some(&setup.join("keys/restore.key"))).unwrap(),
            repo_id: meta["repo_id"].as_str().unwrap().to_owned(),
            repo,
        }
    }

    /// The newest committed snapshot of `policy` and its manifest.
    pub fn newest(&self, policy: &str) -> Manifest {
        let dir = self.repo.join("snapshots").join(policy);
        let mut ids: Vec<SnapshotId> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let key = format!(
                    "snapshots/{policy}/{}",
                    e.unwrap().file_name().to_string_lossy()
                );
                match layout::parse(&layout::ObjectKey::from_listed(key)) {
                    Parsed::Manifest { id, .. } => Some(id),
                    _ => None,
                }
            })
            .collect();
        ids.sort_by_key(|i| i.as_str().to_owned());
        let id = ids.pop().expect("a committed snapshot");
        let key = layout::manifest(policy, &id);
        let bytes = std::fs::read(self.repo.join(key.as_str())).unwrap();
        Manifest::decode(&self.identity, &self.repo_id, policy, &id, "m", &bytes).unwrap()
    }

    /// Replaces the snapshot's manifest with `m` (encrypted to the repository's recipient).
    pub fn put_manifest(&self, m: &Manifest) {
        let r = Recipients(vec![self.identity.recipient()]);
        let key = layout::manifest(&m.policy, &m.snapshot);
        std::fs::write(self.repo.join(key.as_str()), m.encode(&r).unwrap()).unwrap();
    }

    /// The snapshot's `.refs`.
    pub fn refs(&self, m: &Manifest) -> Refs {
        let key = layout::refs(&m.policy, &m.snapshot);
        let bytes = std::fs::read(self.repo.join(key.as_str())).unwrap();
        Refs::decode(
            &self.ids,
            &self.repo_id,
            &m.policy,
            &m.snapshot,
            "r",
            &bytes,
        )
        .unwrap()
    }

    /// Replaces the snapshot's `.refs` (with a valid MAC).
    pub fn put_refs(&self, r: &Refs) {
        let key = layout::refs(&r.policy, &r.snapshot);
        std::fs::write(
            self.repo.join(key.as_str()),
            r.encode(&self.ids, &self.repo_id),
        )
        .unwrap();
    }
}

/// The chunk list of the manifest's entry `name`.
pub fn chunks_of(m: &Manifest, name: &str) -> Vec<ChunkRef> {
    m.artifacts
        .iter()
        .find(|a| a.name.0 == name.as_bytes())
        .unwrap_or_else(|| panic!("no entry {name}"))
        .chunks
        .clone()
}

/// A directory entry.
pub fn dir(name: &str) -> Artifact {
    entry(name, EntryKind::Dir, 0o755, Vec::new(), None)
}

/// A symlink entry.
pub fn symlink(name: &str, to: &str) -> Artifact {
    entry(name, EntryKind::Symlink, 0o777, Vec::new(), Some(to))
}

/// A file entry with `chunks` (its size is their sum).
pub fn file(name: &str, mode: u32, chunks: Vec<ChunkRef>) -> Artifact {
    entry(name, EntryKind::File, mode, chunks, None)
}

fn entry(
    name: &str,
    kind: EntryKind,
    mode: u32,
    chunks: Vec<ChunkRef>,
    target: Option<&str>,
) -> Artifact {
    Artifact {
        name: EntryName(name.as_bytes().to_vec()),
        kind,
        mode,
        mtime_ns: Some(1_700_000_000_000_000_000),
        size: chunks.iter().map(|c| u64::from(c.1)).sum(),
        blake3: None,
        target: target.map(|t| EntryName(t.as_bytes().to_vec())),
        chunks,
    }
}
