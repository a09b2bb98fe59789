//! Authenticated plaintext objects (indexes, `.refs`): readable by every writer, unforgeable
//! without the chunk-id key.
//!
//! ```text
//! object = "DRMAC1 " kind " " hex(mac) "\n" json-body
//! mac    = keyed-BLAKE3(mac-key, ["dr-mac-v1", kind, repo-id, json-body])
//! ```
//! The repository id in the MAC means an index or refs file copied from another repository
//! does not verify here.

use super::RepoError;
use super::keys::ChunkIdKey;

const MAGIC: &str = "DRMAC1";

/// Wraps `body` with its MAC.
pub fn seal(keys: &ChunkIdKey, kind: &str, repo_id: &str, body: &[u8]) -> Vec<u8> {
    seal_with(keys, kind, repo_id, |out| out.extend_from_slice(body))
}

/// As [`seal`], with the body written by `body` straight after the header's place: a large
/// body (an index of many small files' chunks) is not held twice.
pub fn seal_with(
    keys: &ChunkIdKey,
    kind: &str,
    repo_id: &str,
    body: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let header_len = MAGIC.len() + 1 + kind.len() + 1 + 64 + 1;
    let mut out = vec![0u8; header_len];
    body(&mut out);
    let mac = keys.mac(&[
        b"dr-mac-v1",
        kind.as_bytes(),
        repo_id.as_bytes(),
        &out[header_len..],
    ]);
    let header = format!("{MAGIC} {kind} {}\n", hex::encode(mac));
    out[..header_len].copy_from_slice(header.as_bytes());
    out
}

/// Checks the MAC and returns the body.
///
/// # Errors
/// `RepoError::Corrupt` naming `object` when the framing or MAC is wrong.
pub fn open<'a>(
    keys: &ChunkIdKey,
    kind: &str,
    repo_id: &str,
    object: &str,
    bytes: &'a [u8],
) -> Result<&'a [u8], RepoError> {
    let corrupt = |reason: &str| RepoError::Corrupt {
        object: object.to_owned(),
        reason: reason.to_owned(),
    };
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no MAC header"))?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| corrupt("bad MAC header"))?;
    let mut parts = header.split(' ');
    if parts.next() != Some(MAGIC) {
        return Err(corrupt("not a MAC'd dr object (or a newer format)"));
    }
    if parts.next() != Some(kind) {
        return Err(corrupt(&format!("not a {kind} object")));
    }
    let mut mac = [0u8; 32];
    hex::decode_to_slice(parts.next().unwrap_or_default(), &mut mac)
        .map_err(|_| corrupt("bad MAC"))?;
    let body = &bytes[nl + 1..];
    let want = keys.mac(&[b"dr-mac-v1", kind.as_bytes(), repo_id.as_bytes(), body]);
    // Not secret-dependent timing that matters here: the attacker cannot query us adaptively.
    if want != mac {
        return Err(corrupt(
            "MAC mismatch: altered, from another repository, or a different chunk-id key",
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_forgery() {
        let k = ChunkIdKey::from_secret(&[1; 32]);
        let obj = seal(&k, "index", "repo1", b"{\"a\":1}");
        assert_eq!(
            open(&k, "index", "repo1", "index/x", &obj).unwrap(),
            b"{\"a\":1}"
        );
        let mut bad = obj.clone();
        *bad.last_mut().unwrap() = b'2';
        assert!(
            open(&k, "index", "repo1", "index/x", &bad)
                .unwrap_err()
                .to_string()
                .contains("index/x")
        );
        assert!(open(&k, "index", "repo2", "index/x", &obj).is_err());
        assert!(open(&k, "refs", "repo1", "index/x", &obj).is_err());
        assert!(
            open(
                &ChunkIdKey::from_secret(&[2; 32]),
                "index",
                "repo1",
                "x",
                &obj
            )
            .is_err()
        );
    }
}
