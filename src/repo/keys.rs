//! Key material: the chunk-id key (and the MAC key derived from it), age recipients for writing,
//! the age identity for reading.
//!
//! The chunk-id key file holds 64 hex digits. Two independent keys are derived from it with
//! BLAKE3's KDF, so a chunk id never doubles as a MAC.

use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;

use rand::RngCore;

use super::RepoError;
use super::ids::ChunkId;

const ID_CONTEXT: &str = "dr 2026-11 chunk id v1";
const MAC_CONTEXT: &str = "dr 2026-11 object mac v1";

/// Keyed hashing for chunk ids and MACs of plaintext objects.
#[derive(Clone)]
pub struct ChunkIdKey {
    id_key: [u8; 32],
    mac_key: [u8; 32],
}

impl fmt::Debug for ChunkIdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkIdKey(<secret>)")
    }
}

impl ChunkIdKey {
    /// Derives both keys from 32 bytes of secret.
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        Self {
            id_key: blake3::derive_key(ID_CONTEXT, secret),
            mac_key: blake3::derive_key(MAC_CONTEXT, secret),
        }
    }

    /// A new random secret, hex-encoded for a key file.
    pub fn generate_hex() -> String {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        hex::encode(b)
    }

    /// Reads a key file (64 hex digits), refusing loose permissions.
    ///
    /// # Errors
    /// `RepoError::Key` naming the file.
    pub fn load(path: &Path) -> Result<Self, RepoError> {
        let err = |reason: String| RepoError::Key {
            file: path.display().to_string(),
            reason,
        };
        crate::config::check_secret_file(path, true).map_err(err)?;
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut b = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut b)
            .map_err(|_| err("expected 64 hex digits".to_owned()))?;
        Ok(Self::from_secret(&b))
    }

    /// The id of a chunk.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// A MAC over `parts`, each length-prefixed so that boundaries cannot shift.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.mac_key);
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        *h.finalize().as_bytes()
    }
}

/// The age recipients every write encrypts to.
#[derive(Clone)]
pub struct Recipients(pub Vec<age::x25519::Recipient>);

impl Recipients {
    /// Encrypts `plaintext` to all recipients (binary age format).
    ///
    /// # Errors
    /// `RepoError::Encrypt` when age refuses (no recipients).
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, RepoError> {
        let mut out = Vec::with_capacity(plaintext.len() + 256);
        let mut w = self
            .encryptor()?
            .wrap_output(&mut out)
            .map_err(|e| RepoError::Encrypt(e.to_string()))?;
        w.write_all(plaintext)
            .map_err(|e| RepoError::Encrypt(e.to_string()))?;
        w.finish().map_err(|e| RepoError::Encrypt(e.to_string()))?;
        Ok(out)
    }

    /// An age encryptor to these recipients.
    ///
    /// # Errors
    /// `RepoError::Encrypt` (no recipients).
    pub fn encryptor(&self) -> Result<age::Encryptor, RepoError> {
        age::Encryptor::with_recipients(self.0.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| RepoError::Encrypt(e.to_string()))
    }

    /// The recipients as `age1…` strings.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

/// The restore identity: only hosts that restore, verify data or run drills have it. The file
/// may hold several keys (one `AGE-SECRET-KEY-` line each, as with `age`): after a key rotation
/// packs written before it still need the old key, since dedup keeps reusing them.
pub struct Identity(Vec<age::x25519::Identity>);

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Identity(<secret>)")
    }
}

impl Identity {
    /// A new identity and its file text (with the public key as a comment, like `age-keygen`).
    pub fn generate() -> (String, String) {
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        let public = id.to_public().to_string();
        let text = format!(
            "# created: {}\n# public key: {public}\n{}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            id.to_string().expose_secret()
        );
        (text, public)
    }

    /// Loads an identity file; a missing file is the "no identity" error writers get.
    ///
    /// # Errors
    /// `RepoError::NoIdentity` when the file is not configured or absent, `RepoError::Key` when
    /// it is unreadable, loosely protected or malformed.
    pub fn load(path: Option<&Path>) -> Result<Self, RepoError> {
        let Some(path) = path else {
            return Err(RepoError::NoIdentity { file: None });
        };
        if !path.exists() {
            return Err(RepoError::NoIdentity {
                file: Some(path.display().to_string()),
            });
        }
        let err = |reason: String| RepoError::Key {
            file: path.display().to_string(),
            reason,
        };
        crate::config::check_secret_file(path, true).map_err(err)?;
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let keys = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
            .map(|l| age::x25519::Identity::from_str(l).map_err(|e| err(e.to_owned())))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(err("no AGE-SECRET-KEY-… line".to_owned()));
        }
        Ok(Self(keys))
    }

    /// The recipient of the first (newest-first by convention) key.
    pub fn recipient(&self) -> age::x25519::Recipient {
        self.0[0].to_public()
    }

    /// Decrypts an age file; `what` names the object in errors.
    ///
    /// # Errors
    /// `RepoError::WrongIdentity` when the object was encrypted to other recipients,
    /// `RepoError::Corrupt` when it does not decrypt.
    pub fn decrypt(&self, what: &str, ciphertext: &[u8]) -> Result<Vec<u8>, RepoError> {
        self.decrypt_with(what, ciphertext, |r| {
            let mut out = Vec::new();
            r.read_to_end(&mut out).map_err(|e| RepoError::Corrupt {
                object: what.to_owned(),
                reason: format!("age payload: {e}"),
            })?;
            Ok(out)
        })
    }

    /// Decrypts `ciphertext` and hands `read` the plaintext as a stream (each piece is
    /// authenticated before it is read): a large plaintext (a manifest) is never held whole.
    ///
    /// # Errors
    /// `RepoError::WrongIdentity` or `RepoError::Corrupt` naming `what`; whatever `read` returns.
    pub fn decrypt_with<T>(
        &self,
        what: &str,
        ciphertext: &[u8],
        read: impl FnOnce(&mut dyn Read) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        let dec = age::Decryptor::new(ciphertext).map_err(|e| RepoError::Corrupt {
            object: what.to_owned(),
            reason: format!("not an age file: {e}"),
        })?;
        let mut r = dec
            .decrypt(self.0.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => RepoError::WrongIdentity {
                    object: what.to_owned(),
                },
                other => RepoError::Corrupt {
                    object: what.to_owned(),
                    reason: other.to_string(),
                },
            })?;
        read(&mut r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_decrypt_and_wrong_identity() {
        let (text, _) = Identity::generate();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, &text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let id = Identity::load(Some(&f)).unwrap();
        let r = Recipients(vec![id.recipient()]);
        let ct = r.encrypt(b"hello").unwrap();
        assert_eq!(id.decrypt("x", &ct).unwrap(), b"hello");

        let (other, _) = Identity::generate();
        std::fs::write(&f, &other).unwrap();
        let other = Identity::load(Some(&f)).unwrap();
        assert!(
            matches!(other.decrypt("obj", &ct), Err(RepoError::WrongIdentity { object }) if object == "obj")
        );
        assert!(matches!(
            Identity::load(Some(&dir.path().join("missing"))),
            Err(RepoError::NoIdentity { .. })
        ));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Identity::load(Some(&f)),
            Err(RepoError::Key { .. })
        ));
    }

    #[test]
    fn an_identity_file_with_two_keys_opens_what_either_was_used_for() {
        use std::os::unix::fs::PermissionsExt;
        let (old, old_pub) = Identity::generate();
        let (new, _) = Identity::generate();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, format!("{new}{old}")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let both = Identity::load(Some(&f)).unwrap();
        let to_old = Recipients(vec![old_pub.parse().unwrap()])
            .encrypt(b"before")
            .unwrap();
        let to_new = Recipients(vec![both.recipient()])
            .encrypt(b"after")
            .unwrap();
        assert_eq!(both.decrypt("a", &to_old).unwrap(), b"before");
        assert_eq!(both.decrypt("b", &to_new).unwrap(), b"after");
    }

    #[test]
    fn derived_keys_differ() {
        let k = ChunkIdKey::from_secret(&[9; 32]);
        assert_ne!(k.chunk_id(b"a").0, k.mac(&[b"a"]));
        assert_ne!(k.mac(&[b"ab", b"c"]), k.mac(&[b"a", b"bc"]));
    }
}
