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

    /// The id of `window` (exactly [`ChunkIdKey::chunk_id`] of it), computed from the BLAKE3
    /// chaining values of its `page`-byte blocks, which are left in `cvs`: the key by which
    /// a backup tells which pages of a relation file changed, at no hashing cost beyond the
    /// id's own. `page` is a power of two of at least 1 KiB (BLAKE3's chunk); only the last
    /// page may be short, so every page is a subtree of the window's BLAKE3 tree.
    pub fn window_id(&self, window: &[u8], page: usize, cvs: &mut Vec<[u8; 32]>) -> ChunkId {
        use blake3::hazmat::{HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};
        assert!(page.is_power_of_two() && page >= blake3::CHUNK_LEN);
        cvs.clear();
        for (i, p) in window.chunks(page).enumerate() {
            cvs.push(
                blake3::Hasher::new_keyed(&self.id_key)
                    .set_input_offset((i * page) as u64)
                    .update(p)
                    .finalize_non_root(),
            );
        }
        if cvs.len() <= 1 {
            // One page is the whole tree: its root is not a chaining value.
            return self.chunk_id(window);
        }
        // BLAKE3's left subtree holds the largest power of two of chunks less than the
        // whole; page boundaries are such powers, so it is a power of two of pages.
        fn split(cvs: &[[u8; 32]]) -> (&[[u8; 32]], &[[u8; 32]]) {
            cvs.split_at(1 << (usize::BITS - 1 - (cvs.len() - 1).leading_zeros()))
        }
        fn merge(cvs: &[[u8; 32]], mode: Mode) -> [u8; 32] {
            if let [cv] = cvs {
                return *cv;
            }
            let (l, r) = split(cvs);
            merge_subtrees_non_root(&merge(l, mode), &merge(r, mode), mode)
        }
        let mode = Mode::KeyedHash(&self.id_key);
        let (l, r) = split(cvs);
        let root = merge_subtrees_root(&merge(l, mode), &merge(r, mode), mode);
        ChunkId(*root.as_bytes())
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
        ciphertext: impl Read,
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
    fn window_ids_are_chunk_ids() {
        let k = ChunkIdKey::from_secret(&[3; 32]);
        let data: Vec<u8> = (0..130 * 8192 + 100).map(|i| (i * 7 % 251) as u8).collect();
        let mut cvs = Vec::new();
        for len in [
            1,
            1000,
            8192,
            8193,
            2 * 8192,
            3 * 8192 - 5,
            5 * 8192,
            127 * 8192,
            128 * 8192,
            130 * 8192 + 100,
        ] {
            let w = &data[..len];
            assert_eq!(k.window_id(w, 8192, &mut cvs), k.chunk_id(w), "{len} bytes");
            assert_eq!(cvs.len(), len.div_ceil(8192));
        }
        // A page's value depends on its content and place, not on its neighbours.
        k.window_id(&data[..4 * 8192], 8192, &mut cvs);
        let before = cvs.clone();
        let mut changed = data[..4 * 8192].to_vec();
        changed[2 * 8192 + 9] ^= 1;
        k.window_id(&changed, 8192, &mut cvs);
        assert_eq!((cvs[0], cvs[1], cvs[3]), (before[0], before[1], before[3]));
        assert_ne!(cvs[2], before[2]);
    }

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
