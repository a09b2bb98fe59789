//! Pack objects: many sealed chunks in one object, and the per-pack data key wrapped with age.
//!
//! ```text
//! pack    = "DRPACK\0" 0x01  blob*  wrapped-key  u32le(len(wrapped-key))  "DRPKEND1"
//! blob    = nonce[24]  XChaCha20-Poly1305(data-key, nonce, aad, flag[1] || payload)  tag[16]
//! flag    = 0 (payload is the plaintext)                   aad = "dr-blob-v1" || chunk-id
//!         | 1 (payload is a zstd frame of the plaintext)   aad = "dr-blob-v1" || chunk-id
//!         | 2 (a zstd frame of several small chunks' plaintexts, concatenated: a group)
//!                                                          aad = "dr-group-v1"
//! ```
//!
//! **Groups** exist for small chunks (PostgreSQL's 8 KiB page blocks): zstd pays a fixed price
//! per frame for its entropy tables, so compressing 8 KiB pages one by one ran at half the speed
//! and half the ratio of 128 KiB runs of them. Each member keeps its own index entry (chunk id,
//! the group blob's offset and length, its plaintext length) plus `inner`, its offset in the
//! group's plaintext; dedup stays per chunk. A member is re-hashed against its keyed id after
//! decompression, which is what binds it to its id (the group's AAD cannot name every member).
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
const GROUP_AAD: &[u8] = b"dr-group-v1";
/// Largest plaintext a group's frame may claim (a group is ~128 KiB; this bounds a forged one).
const MAX_GROUP_PLAIN: u64 = 64 << 20;
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
    /// For a group member: its offset in the group's plaintext.
    pub inner: Option<u32>,
}

/// A finished pack, ready to upload.
#[derive(Debug, Clone)]
pub struct SealedPack {
    /// BLAKE3 of the whole object.
    pub id: PackId,
    /// The whole object's size.
    pub size: u64,
    /// The object's bytes after those already handed to [`PackWriter::spill`]: the whole
    /// object when nothing was spilled.
    pub bytes: Bytes,
    /// The data key, age-encrypted (also stored in the index so restores need no extra read).
    pub wrapped_key: Vec<u8>,
    /// Blobs in pack order.
    pub blobs: Vec<BlobEntry>,
}

/// A pack writer's working memory, handed from one pack to the next by
/// [`PackWriter::finish_keeping`] and [`PackWriter::with_buffers`]: a backup then touches the
/// same few MiB for every pack instead of fresh pages (with freed pages returned to the OS at
/// once, each fresh one is a page fault).
#[derive(Default)]
pub struct PackBuffers {
    buf: Vec<u8>,
    scratch: Vec<u8>,
    joined: Vec<u8>,
}

impl PackBuffers {
    /// The finished pack's bytes after those spilled (see [`PackWriter::finish_keeping`]).
    pub fn tail(&self) -> &[u8] {
        &self.buf
    }
}

/// Builds one pack.
pub struct PackWriter {
    key: [u8; 32],
    cipher: XChaCha20Poly1305,
    buf: Vec<u8>,
    blobs: Vec<BlobEntry>,
    scratch: Vec<u8>,
    joined: Vec<u8>,
    /// Bytes handed to [`PackWriter::spill`] so far, and their hash.
    spilled: u64,
    hasher: blake3::Hasher,
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        self.key.fill(0);
    }
}

impl PackWriter {
    /// Starts a pack with a fresh data key.
    pub fn new(capacity: usize) -> Self {
        Self::with_buffers(PackBuffers {
            buf: Vec::with_capacity(capacity),
            ..PackBuffers::default()
        })
    }

    /// Starts a pack with a fresh data key in the buffers of a finished one.
    pub fn with_buffers(b: PackBuffers) -> Self {
        let PackBuffers {
            mut buf,
            scratch,
            joined,
        } = b;
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        buf.clear();
        buf.extend_from_slice(PACK_MAGIC);
        Self {
            key,
            cipher: XChaCha20Poly1305::new(&key.into()),
            buf,
            blobs: Vec::new(),
            scratch,
            joined,
            spilled: 0,
            hasher: blake3::Hasher::new(),
        }
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        usize::try_from(self.spilled).expect("packs are below 4 GiB") + self.buf.len()
    }

    /// Bytes sealed but not yet spilled.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes the bytes sealed so far to `out` (a spool file) and forgets them: a pack being
    /// built then holds only what was sealed since. [`SealedPack::bytes`] is the rest.
    ///
    /// # Errors
    /// The write's.
    pub fn spill(&mut self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.buf)?;
        self.hasher.update(&self.buf);
        self.spilled += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
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
        // Keep the plaintext when zstd does not shrink it (already-compressed data).
        let (flag, payload) = if shrinks(zstd, plaintext, &mut self.scratch) {
            (1, &self.scratch[..])
        } else {
            (0, plaintext)
        };
        let base = self.spilled;
        let (offset, len) = seal_blob(&mut self.buf, base, &self.cipher, &aad(&id), flag, payload)?;
        self.blobs.push(BlobEntry {
            id,
            offset,
            len,
            raw_len: u32_len(plaintext.len())?,
            inner: None,
        });
        Ok(())
    }

    /// Compresses several small chunks as one zstd frame and seals it as one group blob
    /// (see the module docs). One member, or a group zstd cannot shrink, is stored chunk by
    /// chunk instead.
    ///
    /// # Errors
    /// As [`PackWriter::add`].
    pub fn add_group(
        &mut self,
        members: &[(ChunkId, &[u8])],
        zstd: &mut zstd::bulk::Compressor<'_>,
    ) -> Result<(), RepoError> {
        if let [(id, data)] = members {
            return self.add(*id, data, zstd);
        }
        self.joined.clear();
        for (_, data) in members {
            self.joined.extend_from_slice(data);
        }
        if !shrinks(zstd, &self.joined, &mut self.scratch) {
            for (id, data) in members {
                self.add(*id, data, zstd)?;
            }
            return Ok(());
        }
        let base = self.spilled;
        let (offset, len) = seal_blob(
            &mut self.buf,
            base,
            &self.cipher,
            GROUP_AAD,
            2,
            &self.scratch,
        )?;
        let mut inner = 0u32;
        for (id, data) in members {
            let raw_len = u32_len(data.len())?;
            self.blobs.push(BlobEntry {
                id: *id,
                offset,
                len,
                raw_len,
                inner: Some(inner),
            });
            inner += raw_len;
        }
        Ok(())
    }

    /// Appends the wrapped data key and trailer.
    ///
    /// # Errors
    /// `RepoError::Encrypt` when age fails.
    pub fn finish(self, recipients: &Recipients) -> Result<SealedPack, RepoError> {
        let (pack, b) = self.finish_keeping(recipients)?;
        Ok(SealedPack {
            bytes: Bytes::from(b.buf),
            ..pack
        })
    }

    /// As [`PackWriter::finish`], but the pack's last bytes stay in the returned buffers
    /// ([`PackBuffers::tail`], for the caller to write after what it spilled; the pack's
    /// `bytes` are empty), which can then build the next pack.
    ///
    /// # Errors
    /// As [`PackWriter::finish`].
    pub fn finish_keeping(
        mut self,
        recipients: &Recipients,
    ) -> Result<(SealedPack, PackBuffers), RepoError> {
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
        self.hasher.update(&buf);
        let id = PackId(*self.hasher.finalize().as_bytes());
        let pack = SealedPack {
            id,
            size: self.spilled + buf.len() as u64,
            bytes: Bytes::new(),
            wrapped_key,
            blobs,
        };
        let buffers = PackBuffers {
            buf,
            scratch: std::mem::take(&mut self.scratch),
            joined: std::mem::take(&mut self.joined),
        };
        Ok((pack, buffers))
    }
}

/// Compresses `input` into `out`; true when that made it smaller.
fn shrinks(zstd: &mut zstd::bulk::Compressor<'_>, input: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    out.reserve(zstd::zstd_safe::compress_bound(input.len()));
    zstd.compress_to_buffer(input, out)
        .is_ok_and(|n| n < input.len())
}

/// Appends one sealed blob to `buf`, which starts at offset `base` of the pack; returns the
/// blob's offset in the pack and its length.
fn seal_blob(
    buf: &mut Vec<u8>,
    base: u64,
    cipher: &XChaCha20Poly1305,
    aad: &[u8],
    flag: u8,
    payload: &[u8],
) -> Result<(u32, u32), RepoError> {
    let start = buf.len();
    let offset = u32::try_from(base + start as u64)
        .map_err(|_| RepoError::Encrypt("pack exceeds 4 GiB".to_owned()))?;
    let mut nonce = [0u8; NONCE_LEN];
    // XChaCha's 192-bit nonces are safe to draw at random; the thread-local CSPRNG (ChaCha,
    // seeded from the OS) avoids a getrandom system call per chunk.
    rand::thread_rng().fill_bytes(&mut nonce);
    buf.extend_from_slice(&nonce);
    let body = buf.len();
    buf.push(flag);
    buf.extend_from_slice(payload);
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, &mut buf[body..])
        .map_err(|_| RepoError::Encrypt("sealing a chunk failed".to_owned()))?;
    buf.extend_from_slice(&tag);
    Ok((offset, u32_len(buf.len() - start)?))
}

fn u32_len(n: usize) -> Result<u32, RepoError> {
    u32::try_from(n).map_err(|_| RepoError::Encrypt("chunk too large".to_owned()))
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

    /// Authenticates, decrypts and decompresses one chunk (a blob, or a member of a group),
    /// then checks its chunk id.
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
        let blob = self.open_blob(pack, entry, sealed, zstd, &mut buf, &mut out)?;
        member(ids, pack, entry, blob).map(<[u8]>::to_vec)
    }

    /// Authenticates, decrypts and decompresses a whole blob: one chunk's plaintext, or a
    /// group's concatenated plaintexts (take members out with [`member`]).
    ///
    /// # Errors
    /// `RepoError::Corrupt` naming the pack and chunk when anything does not match.
    pub fn open_blob<'b>(
        &self,
        pack: &PackId,
        entry: &BlobEntry,
        sealed: &[u8],
        zstd: &mut zstd::bulk::Decompressor<'_>,
        buf: &'b mut Vec<u8>,
        out: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], RepoError> {
        let corrupt = |reason: &str| corrupt(pack, entry, reason);
        if sealed.len() != entry.len as usize || sealed.len() < BLOB_OVERHEAD {
            return Err(corrupt("blob has the wrong length"));
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        buf.clear();
        buf.extend_from_slice(body);
        let aad = match entry.inner {
            Some(_) => GROUP_AAD.to_vec(),
            None => aad(&entry.id),
        };
        self.0
            .decrypt_in_place_detached(XNonce::from_slice(nonce), &aad, buf, Tag::from_slice(tag))
            .map_err(|_| {
                corrupt("authentication failed (data altered, or a blob from elsewhere)")
            })?;
        let expected = match (buf.first(), entry.inner) {
            (Some(0), None) => return Ok(&buf[1..]),
            (Some(1), None) if u64::from(entry.raw_len) <= MAX_GROUP_PLAIN => {
                entry.raw_len as usize
            }
            (Some(1), None) => return Err(corrupt("implausible plaintext length")),
            (Some(2), Some(_)) => zstd::zstd_safe::get_frame_content_size(&buf[1..])
                .ok()
                .flatten()
                .filter(|n| *n <= MAX_GROUP_PLAIN)
                .ok_or_else(|| corrupt("group frame has no plausible content size"))?
                as usize,
            _ => return Err(corrupt("unknown blob flag")),
        };
        out.clear();
        out.reserve(expected);
        zstd.decompress_to_buffer(&buf[1..], out)
            .map_err(|e| corrupt(&format!("zstd: {e}")))?;
        Ok(out)
    }
}

/// Takes `entry`'s chunk out of its opened blob (the whole blob, or its slice of a group) and
/// checks that it hashes to its id.
///
/// # Errors
/// `RepoError::Corrupt` naming the pack and chunk.
pub fn member<'b>(
    ids: &ChunkIdKey,
    pack: &PackId,
    entry: &BlobEntry,
    blob: &'b [u8],
) -> Result<&'b [u8], RepoError> {
    let start = entry.inner.unwrap_or(0) as usize;
    let plain = blob
        .get(start..start + entry.raw_len as usize)
        .filter(|p| entry.inner.is_some() || p.len() == blob.len())
        .ok_or_else(|| corrupt(pack, entry, "decompressed length differs from the index"))?;
    if ids.chunk_id(plain) != entry.id {
        return Err(corrupt(
            pack,
            entry,
            "content does not hash to its chunk id (wrong chunk-id key?)",
        ));
    }
    Ok(plain)
}

fn corrupt(pack: &PackId, entry: &BlobEntry, reason: &str) -> RepoError {
    RepoError::Corrupt {
        object: format!("packs/{pack} (chunk {})", entry.id),
        reason: reason.to_owned(),
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
        fn seal_then_open_is_identity(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..5000), 1..6), zeros in 0usize..20000, spill in any::<u8>()) {
            let (ids, identity, r) = setup();
            let mut chunks = chunks;
            chunks.push(vec![0; zeros]);
            // Spilled after some of the chunks (as a backup does to its spool file): the
            // spilled bytes and the rest make the same pack.
            let mut w = PackWriter::new(1024);
            let mut z = zstd::bulk::Compressor::new(3).unwrap();
            let mut spilled = Vec::new();
            for (n, c) in chunks.iter().enumerate() {
                w.add(ids.chunk_id(c), c, &mut z).unwrap();
                if spill & (1 << (n % 8)) != 0 {
                    w.spill(&mut spilled).unwrap();
                }
            }
            let mut p = w.finish(&r).unwrap();
            spilled.extend_from_slice(&p.bytes);
            prop_assert_eq!(p.size, spilled.len() as u64);
            p.bytes = Bytes::from(spilled);
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
    fn a_pack_built_in_reused_buffers_holds_only_its_own_blobs() {
        let (ids, identity, r) = setup();
        let mut z = zstd::bulk::Compressor::new(3).unwrap();
        let first: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = PackWriter::new(16);
        w.add(ids.chunk_id(&first), &first, &mut z).unwrap();
        let mut spilled = Vec::new();
        w.spill(&mut spilled).unwrap();
        let (_, buffers) = w.finish_keeping(&r).unwrap();
        // The next pack starts in the same memory, with a new key, and none of the first.
        let mut w = PackWriter::with_buffers(buffers);
        let second = b"second pack".repeat(40);
        w.add(ids.chunk_id(&second), &second, &mut z).unwrap();
        let mut out = Vec::new();
        w.spill(&mut out).unwrap();
        let (p, buffers) = w.finish_keeping(&r).unwrap();
        assert!(p.bytes.is_empty());
        out.extend_from_slice(buffers.tail());
        assert_eq!(p.size, out.len() as u64);
        let (_, wrapped) = parse_pack(&p.id, &out).unwrap();
        let key = PackKey::unwrap(&identity, &p.id, &wrapped).unwrap();
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        assert_eq!(p.blobs.len(), 1);
        let e = &p.blobs[0];
        let sealed = &out[e.offset as usize..(e.offset + e.len) as usize];
        assert_eq!(key.open(&ids, &p.id, e, sealed, &mut d).unwrap(), second);
    }

    #[test]
    fn group_members_open_one_by_one_and_are_bound_to_their_ids() {
        let (ids, identity, r) = setup();
        // Compressible pages, as PostgreSQL's are.
        let pages: Vec<Vec<u8>> = (0..16u8)
            .map(|i| {
                let mut p = vec![i; 8192];
                p[..16].copy_from_slice(&[i.wrapping_mul(7); 16]);
                p
            })
            .collect();
        let members: Vec<(ChunkId, &[u8])> =
            pages.iter().map(|p| (ids.chunk_id(p), &p[..])).collect();
        let mut w = PackWriter::new(1024);
        let mut z = zstd::bulk::Compressor::new(3).unwrap();
        w.add_group(&members, &mut z).unwrap();
        w.add(ids.chunk_id(b"alone"), b"alone", &mut z).unwrap();
        let p = w.finish(&r).unwrap();
        assert_eq!(p.blobs.len(), 17);
        assert!(p.blobs[..16].iter().all(|b| b.offset == p.blobs[0].offset));
        assert_eq!(p.blobs[16].inner, None);
        assert!(
            p.bytes.len() < 16 * 8192 / 10,
            "the group compressed to {}",
            p.bytes.len()
        );
        let key = PackKey::unwrap(&identity, &p.id, &p.wrapped_key).unwrap();
        let mut dz = zstd::bulk::Decompressor::new().unwrap();
        let sealed = |e: &BlobEntry| &p.bytes[e.offset as usize..(e.offset + e.len) as usize];
        for (page, e) in pages.iter().zip(&p.blobs) {
            assert_eq!(&key.open(&ids, &p.id, e, sealed(e), &mut dz).unwrap(), page);
        }
        // A member presented under another member's id, a group entry without its `inner`,
        // a single blob presented as a group member, and an `inner` past the group's end all
        // fail with a clear error (no panic).
        let (e0, e1, alone) = (p.blobs[0], p.blobs[1], p.blobs[16]);
        let cases = [
            (
                BlobEntry { id: e1.id, ..e0 },
                e0,
                "does not hash to its chunk id",
            ),
            (BlobEntry { inner: None, ..e0 }, e0, "authentication failed"),
            (
                BlobEntry {
                    inner: Some(0),
                    ..alone
                },
                alone,
                "authentication failed",
            ),
            (
                BlobEntry {
                    inner: Some(16 * 8192),
                    ..e0
                },
                e0,
                "length differs",
            ),
        ];
        for (entry, stored, needle) in cases {
            let err = key
                .open(&ids, &p.id, &entry, sealed(&stored), &mut dz)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        // A bit flip in the group is caught by the AEAD.
        let mut bad = sealed(&e0).to_vec();
        bad[40] ^= 1;
        assert!(key.open(&ids, &p.id, &e0, &bad, &mut dz).is_err());
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
