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
    /// MAC of every other field (absent in descriptors written before it existed, which
    /// must then have the default chunker: no other was ever written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl RepoMeta {
    /// A new descriptor.
    pub fn new(keys: &ChunkIdKey, recipients: Vec<String>) -> Self {
        let mut b = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut b);
        let repo_id = hex::encode(b);
        let mut m = Self {
            format: "dr-repo".to_owned(),
            version: VERSION,
            key_check: key_check(keys, &repo_id),
            repo_id,
            created: Utc::now(),
            chunker: ChunkerParams::DEFAULT,
            recipients,
            mac: None,
        };
        m.mac = Some(m.fields_mac(keys));
        m
    }

    /// The MAC over every field but `mac` itself, in a fixed textual form.
    fn fields_mac(&self, keys: &ChunkIdKey) -> String {
        let c = &self.chunker;
        let fields = format!(
            "{}\n{}\n{}\n{}\n{}\n{} {} {}\n{}",
            self.format,
            self.version,
            self.repo_id,
            self.created.timestamp_nanos_opt().unwrap_or_default(),
            self.key_check,
            c.min,
            c.avg,
            c.max,
            self.recipients.join(" ")
        );
        hex::encode(keys.mac(&[b"dr-repo-meta-v1", fields.as_bytes()]))
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
        let corrupt = |reason: &str| RepoError::Corrupt {
            object: format!("{location}/dr-repo.json"),
            reason: reason.to_owned(),
        };
        match &m.mac {
            Some(mac) if *mac != m.fields_mac(keys) => {
                return Err(corrupt("its fields do not match their MAC (altered)"));
            }
            None if m.chunker != ChunkerParams::DEFAULT => {
                return Err(corrupt(
                    "chunker parameters differ from the only ones dr wrote before descriptors were authenticated (altered)",
                ));
            }
            _ => {}
        }
        // A writer holds the MAC key too: the parameters must also be ones the chunker takes
        // and that keep chunks within what restore accepts.
        let c = m.chunker;
        if !(16 << 10 <= c.min && c.min <= c.avg && c.avg <= c.max && c.max <= 8 << 20) {
            return Err(corrupt(&format!(
                "implausible chunker parameters {}/{}/{} (min 16 KiB, max 8 MiB)",
                c.min, c.avg, c.max
            )));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ChunkIdKey {
        ChunkIdKey::from_secret(&[7; 32])
    }

    fn decoded(m: &RepoMeta) -> Result<RepoMeta, RepoError> {
        RepoMeta::decode(&keys(), "loc", &m.encode())
    }

    #[test]
    fn every_field_is_authenticated() {
        let m = RepoMeta::new(&keys(), vec!["age1x".into()]);
        assert_eq!(decoded(&m).unwrap(), m);
        let mut altered = m.clone();
        altered.chunker.min = 64 << 10;
        assert!(matches!(decoded(&altered), Err(RepoError::Corrupt { .. })));
        let mut altered = m.clone();
        altered.recipients.push("age1y".into());
        assert!(matches!(decoded(&altered), Err(RepoError::Corrupt { .. })));
        // Written before the MAC existed: readable with the default chunker only.
        let mut old = m.clone();
        old.mac = None;
        assert_eq!(decoded(&old).unwrap(), old);
        old.chunker = ChunkerParams {
            min: 64,
            avg: 256,
            max: 1024,
        };
        assert!(matches!(decoded(&old), Err(RepoError::Corrupt { .. })));
        // A writer can compute the MAC, but not make the chunker panic or misbehave.
        let mut forged = m;
        forged.chunker = ChunkerParams {
            min: 1,
            avg: 1,
            max: 1,
        };
        forged.mac = Some(forged.fields_mac(&keys()));
        let err = decoded(&forged).unwrap_err().to_string();
        assert!(err.contains("dr-repo.json"), "{err}");
    }
}
