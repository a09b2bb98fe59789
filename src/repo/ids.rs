//! Identifiers: 32-byte ids shown as hex, and snapshot ids that sort by time.

use std::fmt;

use chrono::{DateTime, Utc};
use rand::RngCore;

/// Nibble values of hex digits (either case); 0xff for anything else.
const NIBBLE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// 64 hex digits to 32 bytes, by table: manifests and indexes hold one id per 8 KiB page of
/// a database, and a restore parses them all.
fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = (NIBBLE[pair[0] as usize], NIBBLE[pair[1] as usize]);
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad & 0xf0 == 0).then_some(out)
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Parses 64 hex digits.
            ///
            /// # Errors
            /// When `s` is not 64 hex digits.
            pub fn from_hex(s: &str) -> Result<Self, String> {
                decode_hex32(s)
                    .map(Self)
                    .ok_or_else(|| format!("`{s}` is not a 64-digit hex id"))
            }

            /// Lowercase hex.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.to_hex()[..12])
            }
        }

        // Without allocating: manifests and indexes hold one id per 8 KiB page of a database.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut buf = [0u8; 64];
                hex::encode_to_slice(self.0, &mut buf).expect("64 hex digits for 32 bytes");
                s.serialize_str(std::str::from_utf8(&buf).expect("hex is ASCII"))
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Hex;
                impl serde::de::Visitor<'_> for Hex {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a 64-digit hex id")
                    }
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<$name, E> {
                        $name::from_hex(s).map_err(E::custom)
                    }
                }
                d.deserialize_str(Hex)
            }
        }
    };
}

hex_id!(
    /// Keyed BLAKE3 of a chunk's plaintext under the repository's chunk-id key.
    ChunkId
);
hex_id!(
    /// BLAKE3 of a pack object's bytes.
    PackId
);
hex_id!(
    /// BLAKE3 of an index object's bytes.
    IndexId
);

/// `20261123T140200.123Z-1a2b3c4d`: creation time (UTC, milliseconds, sortable) and 32 random
/// bits. Ids without milliseconds (`20261123T140200Z-…`, the first format) are still read.
#[derive(
    Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct SnapshotId(String);

impl SnapshotId {
    /// A new id for a snapshot started at `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        let mut r = [0u8; 4];
        rand::rngs::OsRng.fill_bytes(&mut r);
        Self(format!(
            "{}-{}",
            at.format("%Y%m%dT%H%M%S%.3fZ"),
            hex::encode(r)
        ))
    }

    /// Checks the shape of an id read from storage or the command line.
    ///
    /// # Errors
    /// When `s` is not `YYYYMMDDTHHMMSS[.mmm]Z-xxxxxxxx`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let b = s.as_bytes();
        let z = if b.get(15) == Some(&b'.') { 19 } else { 15 };
        let ok = b.len() == z + 10
            && b[8] == b'T'
            && b[z] == b'Z'
            && b[z + 1] == b'-'
            && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
            && (z == 15 || b[16..19].iter().all(u8::is_ascii_digit))
            && b[z + 2..]
                .iter()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "`{s}` is not a snapshot id (YYYYMMDDTHHMMSS.mmmZ-xxxxxxxx)"
            ))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The time encoded in the id.
    pub fn time(&self) -> DateTime<Utc> {
        let z = self.0.find('Z').expect("a parsed snapshot id has a Z");
        chrono::NaiveDateTime::parse_from_str(&self.0[..=z], "%Y%m%dT%H%M%S%.fZ")
            .map(|t| t.and_utc())
            .expect("a parsed snapshot id has a valid time")
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_round_trip_and_sort() {
        let t = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 11, 23, 14, 2, 0).unwrap();
        let id = SnapshotId::new(t);
        assert_eq!(SnapshotId::parse(id.as_str()).unwrap(), id);
        assert_eq!(id.time(), t);
        assert!(SnapshotId::parse("../../etc/passwd").is_err());
        assert!(SnapshotId::parse("20261123T140200Z-1A2B3C4D").is_err());
        let later = SnapshotId::new(t + chrono::Duration::milliseconds(1));
        assert!(later > id);
        let old = SnapshotId::parse("20261123T140200Z-0badcafe").unwrap();
        assert_eq!(old.time(), t);
        let ms = SnapshotId::parse("20261123T140200.250Z-0badcafe").unwrap();
        assert_eq!(ms.time(), t + chrono::Duration::milliseconds(250));
        assert!(SnapshotId::parse("20261123T140200.25Z-0badcafe").is_err());
    }

    #[test]
    fn hex_ids() {
        let id = ChunkId([7; 32]);
        assert_eq!(ChunkId::from_hex(&id.to_hex()).unwrap(), id);
        assert!(ChunkId::from_hex("zz").is_err());
        // Every byte value round-trips, in either case; any non-digit anywhere is refused.
        let all = ChunkId(std::array::from_fn(|i| (i * 8 + 3) as u8));
        assert_eq!(ChunkId::from_hex(&all.to_hex()).unwrap(), all);
        assert_eq!(
            ChunkId::from_hex(&all.to_hex().to_uppercase()).unwrap(),
            all
        );
        for bad in ["g", ":", "/", "@", "`", "G", " ", "\u{e9}"] {
            for at in [0, 1, 37, 63] {
                let mut s = all.to_hex();
                s.replace_range(at..=at, bad);
                assert!(ChunkId::from_hex(&s).is_err(), "{s}");
            }
        }
        assert!(ChunkId::from_hex(&all.to_hex()[..62]).is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ChunkId>(&json).unwrap(), id);
    }
}
