//! Pack objects: many sealed chunks in one object, and the per-pack data key wrapped with age.
//!
//! ```text
//! pack    = "DRPACK\0" 0x01  blob*  wrapped-key  u32le(len(wrapped-key))  "DRPKEND1"
//! blob    = nonce[24]  XChaCha20-Poly1305(data-key, nonce, aad = "dr-blob-v1" || chunk-id,
//!                                         flag[1] || payload)  tag[16]
//! flag    = 0 (payload is the plaintext) | 1 (payload is a zstd frame of the plaintext)
//! ```
//!
//! A fresh random data key per pack is encrypted with age to the repository's recipients: the
//! writer forgets it once the pack is sealed, so a writer cannot read what it wrote. The chunk id
//! in the AAD binds each blob to its id, so a blob moved to another place, or a pack swapped for
//! another, fails authentication instead of restoring the wrong bytes.

use bytes::Bytes;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use rand::RngCore;

use super::RepoError;
use super::ids::{ChunkId, PackId};
use super::keys::{ChunkIdKey, Identity, Recipients};

/// Leading bytes of every pack (format version in the last byte).
pub const PACK_MAGIC: &[u8; 8] = b"DRPACK\x00\x01";
/// Trailing bytes of every pack.
pub const TRAILER_MAGIC: &[u8; 8] = b"DRPKEND1";
const AAD_PREFIX: &[u8] = b"dr-blob-v1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a blob adds to its payload (nonce, flag, tag).
pub const BLOB_OVERHEAD: usize = NONCE_LEN + 1 + TAG_LEN;

/// Where a chunk lives inside its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlobEntry {
    /// Chunk id.
    pub id: ChunkId,
    /// Byte offset of the blob in the pack.
    pub offset: u32,
    /// Sealed length.
    pub len: u32,
    /// Plaintext length.
    pub raw_len: u32,
}

/// A finished pack, ready to upload.
#[derive(Debug, Clone)]
pub struct SealedPack {
    /// BLAKE3 of `bytes`.
    pub id: PackId,
    /// The whole object.
    pub bytes: Bytes,
    /// The data key, age-encrypted (also stored in the index so restores need no extra read).
    pub wrapped_key: Vec<u8>,
    /// Blobs in pack order.
    pub blobs: Vec<BlobEntry>,
}

/// Builds one pack.
pub struct PackWriter {
    key: [u8; 32],
    cipher: XChaCha20Poly1305,
    buf: Vec<u8>,
    blobs: Vec<BlobEntry>,
    scratch: Vec<u8>,
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        self.key.fill(0);
    }
}

impl PackWriter {
    /// Starts a pack with a fresh data key.
    pub fn new(capacity: usize) -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(PACK_MAGIC);
        Self {
            key,
            cipher: XChaCha20Poly1305::new(&key.into()),
            buf,
            blobs: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no blob was added.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Compresses (when that helps) and seals `plaintext` as chunk `id`.
    ///
    /// # Errors
    /// `RepoError::Encrypt` on a zstd failure (which only happens on allocation failure).
    pub fn add(
        &mut self,
        id: ChunkId,
        plaintext: &[u8],
        zstd: &mut zstd::bulk::Compressor<'_>,
    ) -> Result<(), RepoError> {
        let start = self.buf.len();
        let offset = u32::try_from(start)
            .map_err(|_| RepoError::Encrypt("pack exceeds 4 GiB".to_owned()))?;
        let mut nonce = [0u8; NONCE_LEN];
        // XChaCha's 192-bit nonces are safe to draw at random; the thread-local CSPRNG (ChaCha,
        // seeded from the OS) avoids a getrandom system call per chunk.
        rand::thread_rng().fill_bytes(&mut nonce);
        self.buf.extend_from_slice(&nonce);
        let body = self.buf.len();
        // Keep the plaintext when zstd does not shrink it (already-compressed data).
        self.scratch.clear();
        self.scratch
            .reserve(zstd::zstd_safe::compress_bound(plaintext.len()));
        let compressed = zstd
            .compress_to_buffer(plaintext, &mut self.scratch)
            .unwrap_or(usize::MAX);
        if compressed < plaintext.len() {
            self.buf.push(1);
            self.buf.extend_from_slice(&self.scratch);
        } else {
            self.buf.push(0);
            self.buf.extend_from_slice(plaintext);
        }
        let aad = aad(&id);
        let tag = self
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, &mut self.buf[body..])
            .map_err(|_| RepoError::Encrypt("sealing a chunk failed".to_owned()))?;
        self.buf.extend_from_slice(&tag);
        let len = u32::try_from(self.buf.len() - start)
            .map_err(|_| RepoError::Encrypt("chunk too large".to_owned()))?;
        let raw_len = u32::try_from(plaintext.len())
            .map_err(|_| RepoError::Encrypt("chunk too large".to_owned()))?;
        self.blobs.push(BlobEntry {
            id,
            offset,
            len,
            raw_len,
        });
        Ok(())
    }

    /// Appends the wrapped data key and trailer.
    ///
    /// # Errors
    /// `RepoError::Encrypt` when age fails.
    pub fn finish(mut self, recipients: &Recipients) -> Result<SealedPack, RepoError> {
        let wrapped_key = recipients.encrypt(&self.key)?;
        let mut buf = std::mem::take(&mut self.buf);
        let blobs = std::mem::take(&mut self.blobs);
        buf.extend_from_slice(&wrapped_key);
        buf.extend_from_slice(
            &u32::try_from(wrapped_key.len())
                .expect("an age header is small")
                .to_le_bytes(),
        );
        buf.extend_from_slice(TRAILER_MAGIC);
        let id = PackId(*blake3::hash(&buf).as_bytes());
        Ok(SealedPack {
            id,
            bytes: Bytes::from(buf),
            wrapped_key,
            blobs,
        })
    }
}

fn aad(id: &ChunkId) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_PREFIX.len() + 32);
    a.extend_from_slice(AAD_PREFIX);
    a.extend_from_slice(&id.0);
    a
}

/// An unwrapped pack data key, ready to open blobs.
pub struct PackKey(XChaCha20Poly1305);

impl PackKey {
    /// Unwraps a pack's data key with the restore identity.
    ///
    /// # Errors
    /// `RepoError::WrongIdentity` or `RepoError::Corrupt` naming the pack.
    pub fn unwrap(identity: &Identity, pack: &PackId, wrapped: &[u8]) -> Result<Self, RepoError> {
        let what = format!("data key of pack {pack}");
        let key = identity.decrypt(&what, wrapped)?;
        let key: [u8; 32] = key.try_into().map_err(|_| RepoError::Corrupt {
            object: what,
            reason: "data key is not 32 bytes".to_owned(),
        })?;
        Ok(Self(XChaCha20Poly1305::new(&key.into())))
    }

    /// Authenticates, decrypts and decompresses one blob, then checks its chunk id.
    ///
    /// # Errors
    /// `RepoError::Corrupt` naming the pack and chunk when anything does not match.
    pub fn open(
        &self,
        ids: &ChunkIdKey,
        pack: &PackId,
        entry: &BlobEntry,
        sealed: &[u8],
        zstd: &mut zstd::bulk::Decompressor<'_>,
    ) -> Result<Vec<u8>, RepoError> {
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        self.open_into(ids, pack, entry, sealed, zstd, &mut buf, &mut out)
            .map(<[u8]>::to_vec)
    }

    /// [`PackKey::open`] into caller-owned buffers, so a restore reuses the same memory for
    /// every chunk instead of allocating two buffers per chunk.
    ///
    /// # Errors
    /// As [`PackKey::open`].
    #[allow(clippy::too_many_arguments)]
    pub fn open_into<'b>(
        &self,
        ids: &ChunkIdKey,
        pack: &PackId,
        entry: &BlobEntry,
        sealed: &[u8],
        zstd: &mut zstd::bulk::Decompressor<'_>,
        buf: &'b mut Vec<u8>,
        out: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], RepoError> {
        let corrupt = |reason: &str| RepoError::Corrupt {
            object: format!("packs/{pack} (chunk {})", entry.id),
            reason: reason.to_owned(),
        };
        if sealed.len() != entry.len as usize || sealed.len() < BLOB_OVERHEAD {
            return Err(corrupt("blob has the wrong length"));
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        buf.clear();
        buf.extend_from_slice(body);
        self.0
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                &aad(&entry.id),
                buf,
                Tag::from_slice(tag),
            )
            .map_err(|_| {
                corrupt("authentication failed (data altered, or a blob from elsewhere)")
            })?;
        let plain: &[u8] = match buf.first() {
            Some(0) => &buf[1..],
            Some(1) => {
                out.clear();
                out.reserve(entry.raw_len as usize);
                zstd.decompress_to_buffer(&buf[1..], out)
                    .map_err(|e| corrupt(&format!("zstd: {e}")))?;
                out
            }
            _ => return Err(corrupt("unknown blob flag")),
        };
        if plain.len() != entry.raw_len as usize {
            return Err(corrupt("decompressed length differs from the index"));
        }
        if ids.chunk_id(plain) != entry.id {
            return Err(corrupt(
                "content does not hash to its chunk id (wrong chunk-id key?)",
            ));
        }
        Ok(plain)
    }
}

/// Splits a whole pack into its blobs region and wrapped key, checking the framing.
///
/// # Errors
/// `RepoError::Corrupt` naming the pack.
pub fn parse_pack(pack: &PackId, bytes: &[u8]) -> Result<(usize, Vec<u8>), RepoError> {
    let corrupt = |reason: &str| RepoError::Corrupt {
        object: format!("packs/{pack}"),
        reason: reason.to_owned(),
    };
    if bytes.len() < PACK_MAGIC.len() + 12 || &bytes[..8] != PACK_MAGIC {
        return Err(corrupt("not a dr pack (bad header)"));
    }
    if &bytes[bytes.len() - 8..] != TRAILER_MAGIC {
        return Err(corrupt("truncated (no trailer)"));
    }
    let n = u32::from_le_bytes(
        bytes[bytes.len() - 12..bytes.len() - 8]
            .try_into()
            .expect("4 bytes"),
    ) as usize;
    let end = bytes.len() - 12;
    if n > end - 8 {
        return Err(corrupt("bad trailer length"));
    }
    if PackId(*blake3::hash(bytes).as_bytes()) != *pack {
        return Err(corrupt("content does not hash to the pack id"));
    }
    Ok((end - n, bytes[end - n..end].to_vec()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn setup() -> (ChunkIdKey, Identity, Recipients) {
        let dir = tempfile::tempdir().unwrap();
        let (text, _) = Identity::generate();
        let f = dir.path().join("id");
        std::fs::write(&f, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let id = Identity::load(Some(&f)).unwrap();
        let r = Recipients(vec![id.recipient()]);
        (ChunkIdKey::from_secret(&[3; 32]), id, r)
    }

    pub(crate) fn seal(chunks: &[Vec<u8>], ids: &ChunkIdKey, r: &Recipients) -> SealedPack {
        let mut w = PackWriter::new(1024);
        let mut z = zstd::bulk::Compressor::new(3).unwrap();
        for c in chunks {
            w.add(ids.chunk_id(c), c, &mut z).unwrap();
        }
        w.finish(r).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn seal_then_open_is_identity(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..5000), 1..6), zeros in 0usize..20000) {
            let (ids, identity, r) = setup();
            let mut chunks = chunks;
            chunks.push(vec![0; zeros]);
            let p = seal(&chunks, &ids, &r);
            let (_, wrapped) = parse_pack(&p.id, &p.bytes).unwrap();
            prop_assert_eq!(&wrapped, &p.wrapped_key);
            let key = PackKey::unwrap(&identity, &p.id, &wrapped).unwrap();
            let mut z = zstd::bulk::Decompressor::new().unwrap();
            for (c, e) in chunks.iter().zip(&p.blobs) {
                let sealed = &p.bytes[e.offset as usize..(e.offset + e.len) as usize];
                prop_assert_eq!(&key.open(&ids, &p.id, e, sealed, &mut z).unwrap(), c);
            }
        }
    }

    #[test]
    fn tampering_is_detected() {
        let (ids, identity, r) = setup();
        let p = seal(&[b"hello world".repeat(100), vec![1, 2, 3]], &ids, &r);
        let key = PackKey::unwrap(&identity, &p.id, &p.wrapped_key).unwrap();
        let mut z = zstd::bulk::Decompressor::new().unwrap();
        let e = p.blobs[0];
        let mut sealed = p.bytes[e.offset as usize..(e.offset + e.len) as usize].to_vec();
        sealed[30] ^= 1;
        let err = key
            .open(&ids, &p.id, &e, &sealed, &mut z)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&p.id.to_hex()) && err.contains("authentication failed"),
            "{err}"
        );
        // A blob presented under another chunk's entry fails too.
        let e1 = p.blobs[1];
        let other = &p.bytes[e1.offset as usize..(e1.offset + e1.len) as usize];
        assert!(
            key.open(&ids, &p.id, &BlobEntry { id: e.id, ..e1 }, other, &mut z)
                .is_err()
        );
        // A truncated pack is named.
        let err = parse_pack(&p.id, &p.bytes[..p.bytes.len() - 3])
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
        // The wrong chunk-id key is caught after decryption.
        let wrong = ChunkIdKey::from_secret(&[4; 32]);
        let sealed = &p.bytes[e.offset as usize..(e.offset + e.len) as usize];
        assert!(
            key.open(&wrong, &p.id, &e, sealed, &mut z)
                .unwrap_err()
                .to_string()
                .contains("chunk-id key")
        );
    }
}
