//! Object keys: the only place that knows where each object type lives in a repository.

use std::fmt;

use super::ids::{IndexId, PackId, SnapshotId};

/// A key relative to the repository root (a storage target adds its own prefix).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a key listed by a storage backend (already relative to the repository root).
    pub fn from_listed(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The repository descriptor.
pub fn repo_meta() -> ObjectKey {
    ObjectKey("dr-repo.json".to_owned())
}

/// `packs/<aa>/<id>`.
pub fn pack(id: &PackId) -> ObjectKey {
    let h = id.to_hex();
    ObjectKey(format!("packs/{}/{h}", &h[..2]))
}

/// `index/<id>`.
pub fn index(id: &IndexId) -> ObjectKey {
    ObjectKey(format!("index/{id}"))
}

/// `snapshots/<policy>/<snapshot>` (the encrypted manifest).
pub fn manifest(policy: &str, id: &SnapshotId) -> ObjectKey {
    ObjectKey(format!("snapshots/{policy}/{id}"))
}

/// `snapshots/<policy>/<snapshot>.refs`.
pub fn refs(policy: &str, id: &SnapshotId) -> ObjectKey {
    ObjectKey(format!("snapshots/{policy}/{id}.refs"))
}

/// `wal/<policy>/<timeline>/<name>`: one object per WAL segment or history file.
pub fn wal(policy: &str, name: &str) -> ObjectKey {
    ObjectKey(format!(
        "wal/{policy}/{}/{name}",
        &name[..name.len().min(8)]
    ))
}

/// `wal-stream/<policy>/<segment>.<LEN>.partial`: the first `LEN` bytes (8 hex digits) of
/// the segment a WAL stream is writing, as far as it was received. Written once like every
/// object: a stream that received more writes a new one (and deletes the shorter). Kept apart
/// from `wal/`, where PostgreSQL's own `<segment>.partial` of a promoted standby is archived.
pub fn wal_stream(policy: &str, segment: &str, len: u64) -> ObjectKey {
    ObjectKey(format!("wal-stream/{policy}/{segment}.{len:08X}.partial"))
}

/// The segment name and length of a [`wal_stream`] object's file name.
pub fn parse_wal_stream(file: &str) -> Option<(&str, u64)> {
    let rest = file.strip_suffix(".partial")?;
    let (segment, len) = rest.split_once('.')?;
    (segment.len() == 24 && len.len() == 8)
        .then(|| u64::from_str_radix(len, 16).ok())
        .flatten()
        .map(|n| (segment, n))
}

/// A listing prefix.
#[derive(Clone, Debug)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// The prefix as a string (empty or ending in `/`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// All packs.
pub fn packs_prefix() -> KeyPrefix {
    KeyPrefix("packs/".to_owned())
}

/// All indexes.
pub fn index_prefix() -> KeyPrefix {
    KeyPrefix("index/".to_owned())
}

/// Snapshots of one policy, or of all policies when `policy` is `None`.
pub fn snapshots_prefix(policy: Option<&str>) -> KeyPrefix {
    KeyPrefix(match policy {
        Some(p) => format!("snapshots/{p}/"),
        None => "snapshots/".to_owned(),
    })
}

/// WAL of one policy.
pub fn wal_prefix(policy: &str) -> KeyPrefix {
    KeyPrefix(format!("wal/{policy}/"))
}

/// The streamed partial segments of one policy.
pub fn wal_stream_prefix(policy: &str) -> KeyPrefix {
    KeyPrefix(format!("wal-stream/{policy}/"))
}

/// A garbage-collection record.
pub fn gc(name: &str, phase: super::gc::Phase) -> ObjectKey {
    ObjectKey(format!("gc/{name}.{}", phase.suffix()))
}

/// Garbage-collection records.
pub fn gc_prefix() -> KeyPrefix {
    KeyPrefix("gc/".to_owned())
}

/// `drills/<drill>/<report-id>.json`: a signed drill report.
pub fn drill_report(drill: &str, id: &str) -> ObjectKey {
    ObjectKey(format!("drills/{drill}/{id}.json"))
}

/// Reports of one drill, or of all.
pub fn drills_prefix(drill: Option<&str>) -> KeyPrefix {
    KeyPrefix(match drill {
        Some(d) => format!("drills/{d}/"),
        None => "drills/".to_owned(),
    })
}

/// `groups/<group>/<run>.json`: one group backup run (`pipeline::group_run`).
pub fn group_run(group: &str, run: &SnapshotId) -> ObjectKey {
    ObjectKey(format!("groups/{group}/{run}.json"))
}

/// The runs of one group.
pub fn group_runs_prefix(group: &str) -> KeyPrefix {
    KeyPrefix(format!("groups/{group}/"))
}

/// Audit events.
pub fn audit_prefix() -> KeyPrefix {
    KeyPrefix("audit/".to_owned())
}

/// A free-form prefix (used by the storage conformance suite and probes).
pub fn scratch(name: &str) -> ObjectKey {
    ObjectKey(format!("scratch/{name}"))
}

/// The scratch prefix.
pub fn scratch_prefix() -> KeyPrefix {
    KeyPrefix("scratch/".to_owned())
}

/// What a listed key is.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A pack.
    Pack(PackId),
    /// An index.
    Index(IndexId),
    /// A manifest.
    Manifest { policy: String, id: SnapshotId },
    /// A refs file.
    Refs { policy: String, id: SnapshotId },
    /// A garbage-collection record.
    Gc {
        /// Record name (`<created>-<rand>`).
        name: String,
        /// Mark or swept.
        phase: super::gc::Phase,
    },
    /// Anything else.
    Other,
}

/// Classifies a key read from a listing; anything malformed is `Other`.
pub fn parse(key: &ObjectKey) -> Parsed {
    let parts: Vec<&str> = key.0.split('/').collect();
    match parts.as_slice() {
        ["packs", aa, id] => match PackId::from_hex(id) {
            Ok(p) if id.starts_with(aa) => Parsed::Pack(p),
            _ => Parsed::Other,
        },
        ["index", id] => IndexId::from_hex(id).map_or(Parsed::Other, Parsed::Index),
        ["snapshots", policy, name] => {
            let (stem, is_refs) = match name.strip_suffix(".refs") {
                Some(s) => (s, true),
                None => (*name, false),
            };
            match SnapshotId::parse(stem) {
                Ok(id) if is_refs => Parsed::Refs {
                    policy: (*policy).to_owned(),
                    id,
                },
                Ok(id) => Parsed::Manifest {
                    policy: (*policy).to_owned(),
                    id,
                },
                Err(_) => Parsed::Other,
            }
        }
        ["gc", file] => {
            use super::gc::Phase;
            [Phase::Mark, Phase::Swept]
                .into_iter()
                .find_map(|phase| {
                    let name = file.strip_suffix(phase.suffix())?.strip_suffix('.')?;
                    (!name.is_empty()).then(|| Parsed::Gc {
                        name: name.to_owned(),
                        phase,
                    })
                })
                .unwrap_or(Parsed::Other)
        }
        _ => Parsed::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_parse() {
        let p = PackId([0xab; 32]);
        assert_eq!(parse(&pack(&p)), Parsed::Pack(p));
        assert!(pack(&p).as_str().starts_with("packs/ab/abab"));
        let i = IndexId([1; 32]);
        assert_eq!(parse(&index(&i)), Parsed::Index(i));
        let s = SnapshotId::parse("20261123T140200Z-0badcafe").unwrap();
        assert_eq!(
            parse(&manifest("pg", &s)),
            Parsed::Manifest {
                policy: "pg".into(),
                id: s.clone()
            }
        );
        assert_eq!(
            parse(&refs("pg", &s)),
            Parsed::Refs {
                policy: "pg".into(),
                id: s
            }
        );
        assert_eq!(
            parse(&gc("20261124T010000Z-ab", crate::repo::gc::Phase::Swept)),
            Parsed::Gc {
                name: "20261124T010000Z-ab".into(),
                phase: crate::repo::gc::Phase::Swept
            }
        );
        assert_eq!(
            parse(&ObjectKey::from_listed("packs/zz/abab".into())),
            Parsed::Other
        );
        assert_eq!(
            parse(&ObjectKey::from_listed("snapshots/pg/x".into())),
            Parsed::Other
        );
    }
}
