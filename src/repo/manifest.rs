//! Snapshot manifests (encrypted: they name files and hold chunk lists) and their `.refs`
//! summaries (plaintext + MAC: what retention and replication need without the identity).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::RepoError;
use super::ids::{ChunkId, IndexId, PackId, SnapshotId};
use super::keys::{ChunkIdKey, Identity, Recipients};
use super::mac;

/// Manifest format version written: 2 added chunk slices ([`ChunkRef`]).
pub const MANIFEST_VERSION: u32 = 2;
/// Oldest manifest format version read.
pub const MANIFEST_VERSION_MIN: u32 = 1;
/// Refs format version.
pub const REFS_VERSION: u32 = 1;
/// Largest decompressed manifest accepted (a guard against decompression bombs).
const MAX_MANIFEST: u64 = 4 << 30;

/// A path component sequence as raw bytes: file names need not be UTF-8.
/// Serialized as a JSON string when it is UTF-8, else as `{"b64": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryName(pub Vec<u8>);

impl Serialize for EntryName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(t) => s.serialize_str(t),
            Err(_) => {
                let mut m = BTreeMap::new();
                m.insert(
                    "b64",
                    base64::engine::general_purpose::STANDARD.encode(&self.0),
                );
                m.serialize(s)
            }
        }
    }
}

impl<'de> Deserialize<'de> for EntryName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Bytes { b64: String },
        }
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(Self(t.into_bytes())),
            Repr::Bytes { b64 } => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(Self)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// A BLAKE3 hash, written as 64 hex digits; held inline (a hex `String` per file took ~100
/// bytes of a restore's memory for each of 100,000 files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest(pub [u8; 32]);

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Digest;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("64 hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, t: &str) -> Result<Digest, E> {
                let mut b = [0u8; 32];
                hex::decode_to_slice(t, &mut b).map_err(E::custom)?;
                Ok(Digest(b))
            }
        }
        d.deserialize_str(V)
    }
}

/// What an artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A byte stream from a database (restored as a file).
    Stream,
}

/// `[chunk-id, length]`: a whole chunk of that plaintext length; or `[chunk-id, length,
/// start]` (format version 2): `length` bytes of the chunk's plaintext from `start` on, a
/// slice of a PostgreSQL page-set blob (`pipeline::pages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef(pub ChunkId, pub u32, pub Option<u32>);

impl ChunkRef {
    /// A whole chunk.
    pub fn whole(id: ChunkId, len: u32) -> Self {
        Self(id, len, None)
    }

    /// Where the referenced bytes start in the chunk's plaintext.
    pub fn start(&self) -> u32 {
        self.2.unwrap_or(0)
    }

    /// Whether `raw_len`, the chunk's plaintext length by its index, fits this reference: a
    /// whole reference must name it exactly, a slice must lie inside it.
    pub fn fits(&self, raw_len: u32) -> bool {
        match self.2 {
            None => self.1 == raw_len,
            Some(s) => u64::from(s) + u64::from(self.1) <= u64::from(raw_len),
        }
    }
}

impl Serialize for ChunkRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.2 {
            None => (&self.0, self.1).serialize(s),
            Some(start) => (&self.0, self.1, start).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ChunkRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ChunkRef;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("[chunk-id, length] or [chunk-id, length, start]")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<ChunkRef, A::Error> {
                use serde::de::Error;
                let id = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let len = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                let start = a.next_element()?;
                if a.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(4, &self));
                }
                Ok(ChunkRef(id, len, start))
            }
        }
        d.deserialize_seq(V)
    }
}

/// One artifact of a snapshot: a file, directory, symlink or stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Path relative to the source root (`.` for the root itself).
    pub name: EntryName,
    pub kind: EntryKind,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: Option<i64>,
    /// Plaintext size.
    pub size: u64,
    /// BLAKE3 of the whole plaintext (files and streams).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub blake3: Option<Digest>,
    /// Symlink target.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target: Option<EntryName>,
    /// Chunks in order.
    #[serde(default)]
    pub chunks: Vec<ChunkRef>,
}

/// What the source recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceInfo {
    /// `files`, `postgres`, `redis`, `qdrant`.
    pub kind: String,
    /// Source-specific facts (versions, LSNs, counts…).
    pub facts: serde_json::Value,
}

/// The encrypted description of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// Repository it belongs to (a manifest copied from elsewhere is refused).
    pub repo_id: String,
    /// Policy id.
    pub policy: String,
    /// Snapshot id (must match the object name: a replayed manifest is refused).
    pub snapshot: SnapshotId,
    /// Source description.
    pub source: SourceInfo,
    /// Backup start.
    pub started: DateTime<Utc>,
    /// Backup end.
    pub finished: DateTime<Utc>,
    /// Artifacts in order.
    pub artifacts: Vec<Artifact>,
}

impl Manifest {
    /// JSON → zstd → age, as [`ManifestWriter`] writes it.
    ///
    /// # Errors
    /// `RepoError::Encrypt`.
    pub fn encode(&self, recipients: &Recipients) -> Result<Vec<u8>, RepoError> {
        let encrypt = |e: std::io::Error| RepoError::Encrypt(e.to_string());
        let mut w = ManifestWriter::with_version(
            recipients,
            Vec::new(),
            self.version,
            (&self.repo_id, &self.policy, &self.snapshot),
            self.started,
        )
        .map_err(encrypt)?;
        for a in &self.artifacts {
            w.push(a).map_err(encrypt)?;
        }
        w.finish(&self.source, self.finished).map_err(encrypt)
    }

    /// age → zstd → JSON, then checks it belongs where it was found (see [`Manifest::read`]).
    ///
    /// # Errors
    /// `RepoError::WrongIdentity`, `RepoError::Corrupt` or `RepoError::Version`, naming the object.
    pub fn decode(
        identity: &Identity,
        repo_id: &str,
        policy: &str,
        id: &SnapshotId,
        object: &str,
        bytes: &[u8],
    ) -> Result<Self, RepoError> {
        let mut artifacts = Vec::new();
        let head = Self::read(
            identity,
            (repo_id, policy, id),
            object,
            bytes,
            &mut |mut a| {
                // Parsing grows each chunk list by doubling; a caller holds them all along.
                a.chunks.shrink_to_fit();
                artifacts.push(a);
                Ok::<_, RepoError>(())
            },
        )?;
        Ok(Self {
            version: head.version,
            repo_id: head.repo_id,
            policy: head.policy,
            snapshot: head.snapshot,
            source: head.source,
            started: head.started,
            finished: head.finished,
            artifacts,
        })
    }

    /// Reads a manifest from `ciphertext` as a stream, handing each artifact to `each` as it
    /// is parsed: neither the manifest nor its artifacts are ever held whole (a snapshot of a
    /// million files has a manifest of ~300 MB of JSON). `each` sees artifacts only after the
    /// fields written before them (version, repository, policy, snapshot) have been checked:
    /// a manifest of another repository or snapshot, or of an unknown version, is refused
    /// before its first artifact. An error of `each` stops the reading and is returned.
    ///
    /// # Errors
    /// `RepoError::WrongIdentity`, `RepoError::Corrupt` or `RepoError::Version`, naming the
    /// object; whatever `each` returns.
    pub fn read<E: From<RepoError>>(
        identity: &Identity,
        (repo_id, policy, id): (&str, &str, &SnapshotId),
        object: &str,
        ciphertext: impl Read,
        each: &mut dyn FnMut(Artifact) -> Result<(), E>,
    ) -> Result<ManifestHead, E> {
        let mut stopped: Option<E> = None;
        let mut refused: Option<RepoError> = None;
        let want = Want {
            object,
            repo_id,
            policy,
            id,
        };
        let corrupt = |reason: String| RepoError::Corrupt {
            object: object.to_owned(),
            reason,
        };
        let read = identity.decrypt_with(object, ciphertext, |r| {
            let z = zstd::stream::read::Decoder::new(r)
                .map_err(|e| corrupt(format!("zstd: {e}")))?
                .take(MAX_MANIFEST);
            let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(
                1 << 16,
                z,
            ));
            let head = serde::de::DeserializeSeed::deserialize(
                HeadSeed {
                    want: &want,
                    each,
                    stopped: &mut stopped,
                    refused: &mut refused,
                },
                &mut de,
            )
            .and_then(|h| de.end().map(|()| h));
            head.map_err(|e| corrupt(e.to_string()))
        });
        match (read, stopped, refused) {
            (_, Some(e), _) => Err(e),
            (_, None, Some(e)) | (Err(e), None, None) => Err(e.into()),
            (Ok(head), None, None) => Ok(head),
        }
    }
}

/// A manifest without its artifacts, as [`Manifest::read`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    /// Format version.
    pub version: u32,
    /// Repository it belongs to.
    pub repo_id: String,
    /// Policy id.
    pub policy: String,
    /// Snapshot id.
    pub snapshot: SnapshotId,
    /// Source description.
    pub source: SourceInfo,
    /// Backup start.
    pub started: DateTime<Utc>,
    /// Backup end.
    pub finished: DateTime<Utc>,
    /// Number of artifacts.
    pub artifacts: u64,
}

/// What a manifest must say of itself before its artifacts are handed on.
struct Want<'a> {
    object: &'a str,
    repo_id: &'a str,
    policy: &'a str,
    id: &'a SnapshotId,
}

impl Want<'_> {
    fn check(
        &self,
        version: Option<u32>,
        repo_id: Option<&str>,
        policy: Option<&str>,
        snapshot: Option<&SnapshotId>,
    ) -> Result<(), RepoError> {
        let corrupt = |reason: String| RepoError::Corrupt {
            object: self.object.to_owned(),
            reason,
        };
        let (Some(version), Some(repo_id), Some(policy), Some(snapshot)) =
            (version, repo_id, policy, snapshot)
        else {
            return Err(corrupt(
                "its artifacts come before its version, repository, policy and snapshot".to_owned(),
            ));
        };
        if !(MANIFEST_VERSION_MIN..=MANIFEST_VERSION).contains(&version) {
            return Err(RepoError::Version {
                object: self.object.to_owned(),
                found: version,
                supported: MANIFEST_VERSION,
            });
        }
        if repo_id != self.repo_id {
            return Err(corrupt(format!(
                "belongs to repository {repo_id}, not {}",
                self.repo_id
            )));
        }
        if policy != self.policy || snapshot != self.id {
            return Err(corrupt(format!(
                "describes snapshot {policy}/{snapshot}, not this one (replayed or moved manifest)"
            )));
        }
        Ok(())
    }
}

/// Parses the manifest object field by field, streaming its artifacts to `each`.
struct HeadSeed<'a, 'f, E> {
    want: &'a Want<'a>,
    each: &'f mut dyn FnMut(Artifact) -> Result<(), E>,
    /// The error `each` stopped with.
    stopped: &'f mut Option<E>,
    /// The manifest said it is another one (checked before its artifacts).
    refused: &'f mut Option<RepoError>,
}

impl<'de, E> serde::de::DeserializeSeed<'de> for HeadSeed<'_, '_, E> {
    type Value = ManifestHead;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<ManifestHead, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, E> serde::de::Visitor<'de> for HeadSeed<'_, '_, E> {
    type Value = ManifestHead;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a manifest object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ManifestHead, A::Error> {
        use serde::de::Error;
        fn set<T, E: Error>(slot: &mut Option<T>, v: T, name: &'static str) -> Result<(), E> {
            if slot.replace(v).is_some() {
                return Err(E::duplicate_field(name));
            }
            Ok(())
        }
        let (mut version, mut repo_id, mut policy, mut snapshot) = (None, None, None, None);
        let (mut source, mut started, mut finished, mut artifacts) = (None, None, None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "version" => set(&mut version, map.next_value()?, "version")?,
                "repo_id" => set(&mut repo_id, map.next_value::<String>()?, "repo_id")?,
                "policy" => set(&mut policy, map.next_value::<String>()?, "policy")?,
                "snapshot" => set(&mut snapshot, map.next_value()?, "snapshot")?,
                "source" => set(&mut source, map.next_value()?, "source")?,
                "started" => set(&mut started, map.next_value()?, "started")?,
                "finished" => set(&mut finished, map.next_value()?, "finished")?,
                "artifacts" => {
                    if artifacts.is_some() {
                        return Err(A::Error::duplicate_field("artifacts"));
                    }
                    if let Err(e) = self.want.check(
                        version,
                        repo_id.as_deref(),
                        policy.as_deref(),
                        snapshot.as_ref(),
                    ) {
                        *self.refused = Some(e);
                        return Err(A::Error::custom("refused"));
                    }
                    artifacts = Some(map.next_value_seed(ArtifactsSeed {
                        each: &mut *self.each,
                        stopped: &mut *self.stopped,
                    })?);
                }
                other => return Err(A::Error::unknown_field(other, FIELDS)),
            }
        }
        let missing = A::Error::missing_field;
        Ok(ManifestHead {
            version: version.ok_or_else(|| missing("version"))?,
            repo_id: repo_id.ok_or_else(|| missing("repo_id"))?,
            policy: policy.ok_or_else(|| missing("policy"))?,
            snapshot: snapshot.ok_or_else(|| missing("snapshot"))?,
            source: source.ok_or_else(|| missing("source"))?,
            started: started.ok_or_else(|| missing("started"))?,
            finished: finished.ok_or_else(|| missing("finished"))?,
            artifacts: artifacts.ok_or_else(|| missing("artifacts"))?,
        })
    }
}

const FIELDS: &[&str] = &[
    "version",
    "repo_id",
    "policy",
    "snapshot",
    "source",
    "started",
    "finished",
    "artifacts",
];

/// The `artifacts` array, each element handed on as it is parsed; yields the count.
struct ArtifactsSeed<'f, E> {
    each: &'f mut dyn FnMut(Artifact) -> Result<(), E>,
    stopped: &'f mut Option<E>,
}

impl<'de, E> serde::de::DeserializeSeed<'de> for ArtifactsSeed<'_, E> {
    type Value = u64;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, E> serde::de::Visitor<'de> for ArtifactsSeed<'_, E> {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of artifacts")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut n = 0u64;
        while let Some(a) = seq.next_element::<Artifact>()? {
            if let Err(e) = (self.each)(a) {
                *self.stopped = Some(e);
                return Err(serde::de::Error::custom("stopped"));
            }
            n += 1;
        }
        Ok(n)
    }
}

/// Writes a manifest while its artifacts come, JSON → zstd → age into `W` (a spool file): a
/// backup never holds its manifest, nor its artifacts, whole. The fields known only at the
/// end (the source's facts, the finish time) follow the artifacts: JSON objects are
/// unordered, so [`Manifest::decode`] reads it as any manifest (same format version).
pub struct ManifestWriter<W: Write> {
    out: std::io::BufWriter<zstd::stream::write::Encoder<'static, age::stream::StreamWriter<W>>>,
    artifacts: u64,
}

impl<W: Write> ManifestWriter<W> {
    /// Starts the manifest of snapshot `snapshot` of `policy` in repository `repo_id`.
    ///
    /// # Errors
    /// Writing to `out`, or age failing.
    pub fn new(
        recipients: &Recipients,
        out: W,
        repo_id: &str,
        policy: &str,
        snapshot: &SnapshotId,
        started: DateTime<Utc>,
    ) -> std::io::Result<Self> {
        Self::with_version(
            recipients,
            out,
            MANIFEST_VERSION,
            (repo_id, policy, snapshot),
            started,
        )
    }

    /// As [`ManifestWriter::new`], with the version field given ([`Manifest::encode`] writes
    /// the manifest's own).
    fn with_version(
        recipients: &Recipients,
        out: W,
        version: u32,
        (repo_id, policy, snapshot): (&str, &str, &SnapshotId),
        started: DateTime<Utc>,
    ) -> std::io::Result<Self> {
        let age = recipients
            .encryptor()
            .map_err(std::io::Error::other)?
            .wrap_output(out)?;
        let mut out =
            std::io::BufWriter::with_capacity(1 << 16, zstd::stream::write::Encoder::new(age, 3)?);
        write!(out, "{{\"version\":{version},\"repo_id\":")?;
        serde_json::to_writer(&mut out, repo_id)?;
        out.write_all(b",\"policy\":")?;
        serde_json::to_writer(&mut out, policy)?;
        out.write_all(b",\"snapshot\":")?;
        serde_json::to_writer(&mut out, snapshot)?;
        out.write_all(b",\"started\":")?;
        serde_json::to_writer(&mut out, &started)?;
        out.write_all(b",\"artifacts\":[")?;
        Ok(Self { out, artifacts: 0 })
    }

    /// Appends the next artifact.
    ///
    /// # Errors
    /// Writing to the output.
    pub fn push(&mut self, a: &Artifact) -> std::io::Result<()> {
        if self.artifacts > 0 {
            self.out.write_all(b",")?;
        }
        serde_json::to_writer(&mut self.out, a)?;
        self.artifacts += 1;
        Ok(())
    }

    /// Artifacts so far.
    pub fn artifacts(&self) -> u64 {
        self.artifacts
    }

    /// Ends the manifest and returns the output.
    ///
    /// # Errors
    /// Writing to the output.
    pub fn finish(mut self, source: &SourceInfo, finished: DateTime<Utc>) -> std::io::Result<W> {
        self.out.write_all(b"],\"source\":")?;
        serde_json::to_writer(&mut self.out, source)?;
        self.out.write_all(b",\"finished\":")?;
        serde_json::to_writer(&mut self.out, &finished)?;
        self.out.write_all(b"}")?;
        let z = self
            .out
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        z.finish()?.finish()
    }
}

/// The plaintext summary of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refs {
    /// Format version.
    pub version: u32,
    /// Policy id.
    pub policy: String,
    /// Snapshot id.
    pub snapshot: SnapshotId,
    /// Source kind.
    pub source_kind: String,
    /// Backup start.
    pub started: DateTime<Utc>,
    /// Backup end.
    pub finished: DateTime<Utc>,
    /// Packs holding any chunk of this snapshot.
    pub packs: Vec<PackId>,
    /// Indexes describing those packs.
    pub indexes: Vec<IndexId>,
    /// Plaintext bytes in the snapshot.
    pub bytes_total: u64,
    /// Bytes this backup added to the repository (sealed).
    pub bytes_new: u64,
    /// Number of artifacts.
    pub artifacts: u64,
    /// Non-secret source facts (PG timeline, LSNs, …).
    #[serde(default)]
    pub facts: BTreeMap<String, serde_json::Value>,
}

impl Refs {
    /// Encodes and MACs.
    pub fn encode(&self, keys: &ChunkIdKey, repo_id: &str) -> Vec<u8> {
        mac::seal(
            keys,
            "refs",
            repo_id,
            &serde_json::to_vec(self).expect("refs serialize"),
        )
    }

    /// Checks MAC, version and that it describes the snapshot it is named after.
    ///
    /// # Errors
    /// `RepoError::Corrupt` or `RepoError::Version` naming the object.
    pub fn decode(
        keys: &ChunkIdKey,
        repo_id: &str,
        policy: &str,
        id: &SnapshotId,
        object: &str,
        bytes: &[u8],
    ) -> Result<Self, RepoError> {
        let body = mac::open(keys, "refs", repo_id, object, bytes)?;
        let r: Self = serde_json::from_slice(body).map_err(|e| RepoError::Corrupt {
            object: object.to_owned(),
            reason: e.to_string(),
        })?;
        if r.version != REFS_VERSION {
            return Err(RepoError::Version {
                object: object.to_owned(),
                found: r.version,
                supported: REFS_VERSION,
            });
        }
        if r.policy != policy || r.snapshot != *id {
            return Err(RepoError::Corrupt {
                object: object.to_owned(),
                reason: "describes another snapshot".to_owned(),
            });
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn identity() -> Identity {
        let dir = tempfile::tempdir().unwrap();
        let (text, _) = Identity::generate();
        let f = dir.path().join("id");
        std::fs::write(&f, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        Identity::load(Some(&f)).unwrap()
    }

    fn artifact() -> impl Strategy<Value = Artifact> {
        (
            proptest::collection::vec(any::<u8>(), 1..20),
            any::<u32>(),
            any::<Option<i64>>(),
            any::<u64>(),
            proptest::collection::vec(
                (any::<[u8; 32]>(), any::<u32>(), any::<Option<u32>>()),
                0..4,
            ),
        )
            .prop_map(|(name, mode, mtime_ns, size, chunks)| Artifact {
                name: EntryName(name),
                kind: EntryKind::File,
                mode,
                mtime_ns,
                size,
                blake3: Some(Digest([0xab; 32])),
                target: None,
                chunks: chunks
                    .into_iter()
                    .map(|(c, l, s)| ChunkRef(ChunkId(c), l, s))
                    .collect(),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn manifest_round_trips(artifacts in proptest::collection::vec(artifact(), 0..8)) {
            let id = identity();
            let r = Recipients(vec![id.recipient()]);
            let t = Utc::now();
            let sid = SnapshotId::new(t);
            let m = Manifest { version: MANIFEST_VERSION, repo_id: "r".into(), policy: "p".into(), snapshot: sid.clone(), source: SourceInfo { kind: "files".into(), facts: serde_json::json!({"path": "/x"}) }, started: t, finished: t, artifacts };
            let bytes = m.encode(&r).unwrap();
            prop_assert_eq!(&Manifest::decode(&id, "r", "p", &sid, "o", &bytes).unwrap(), &m);
            // Written as the artifacts come, it reads as the same manifest.
            let mut w = ManifestWriter::new(&r, Vec::new(), "r", "p", &sid, t).unwrap();
            for a in &m.artifacts {
                w.push(a).unwrap();
            }
            prop_assert_eq!(w.artifacts(), m.artifacts.len() as u64);
            let streamed = w.finish(&m.source, t).unwrap();
            prop_assert_eq!(&Manifest::decode(&id, "r", "p", &sid, "o", &streamed).unwrap(), &m);
            prop_assert!(Manifest::decode(&id, "other-repo", "p", &sid, "o", &bytes).is_err());
            let other = SnapshotId::new(t + chrono::Duration::seconds(5));
            prop_assert!(Manifest::decode(&id, "r", "p", &other, "o", &bytes).is_err());
        }
    }

    #[test]
    fn non_utf8_names_survive_json() {
        let n = EntryName(vec![0x66, 0xff, 0x0a]);
        let j = serde_json::to_string(&n).unwrap();
        assert!(j.contains("b64"));
        assert_eq!(serde_json::from_str::<EntryName>(&j).unwrap(), n);
        let u = EntryName("ünïcödé name\n".as_bytes().to_vec());
        assert_eq!(
            serde_json::from_str::<EntryName>(&serde_json::to_string(&u).unwrap()).unwrap(),
            u
        );
    }
}
