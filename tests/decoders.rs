//! Every decoder of untrusted bytes, fed arbitrary and mutated input: errors, never panics.
//! (The same decoders have `cargo fuzz` targets in `fuzz/` for long runs outside CI.)

use std::io::Read;

use dr::repo::gc::{GcRecord, Phase};
use dr::repo::ids::{IndexId, PackId, SnapshotId};
use dr::repo::index::Index;
use dr::repo::keys::ChunkIdKey;
use dr::repo::manifest::Refs;
use dr::repo::meta::RepoMeta;
use dr::repo::pack::parse_pack;
use dr::source::redis::rdb::{RdbStream, read_preamble};
use proptest::prelude::*;

fn keys() -> ChunkIdKey {
    ChunkIdKey::from_secret(&[9; 32])
}

/// Valid encodings to mutate, so the fuzzing gets past the first checks.
fn seeds() -> Vec<Vec<u8>> {
    let k = keys();
    let meta = RepoMeta::new(
        &k,
        vec!["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p".into()],
    );
    vec![
        meta.encode(),
        dr::repo::mac::seal(&k, "index", "r", br#"{"version":1,"packs":[]}"#),
        dr::repo::mac::seal(&k, "refs", "r", b"{}"),
        b"DRPACK\0\x01rest".to_vec(),
        b"$EOF:0123456789012345678901234567890123456789\r\nREDIS0011\xff".to_vec(),
        b"$20\r\nREDIS0011\xfe\x00\xff12345678".to_vec(),
        b"DRSIG1 ed25519 00 00\n{}".to_vec(),
    ]
}

fn all_decoders(bytes: &[u8]) {
    let k = keys();
    let _ = RepoMeta::decode(&k, "loc", bytes);
    let _ = Index::decode(&k, "r", &IndexId([1; 32]), bytes);
    let id = SnapshotId::parse("20261124T000000.000Z-00000000").unwrap();
    let _ = Refs::decode(&k, "r", "p", &id, "o", bytes);
    let _ = GcRecord::decode(Phase::Mark, &k, "r", "o", bytes);
    let _ = parse_pack(&PackId([2; 32]), bytes);
    let _ = dr::drill::report::open("o", bytes);
    let _ = std::str::from_utf8(bytes).map(SnapshotId::parse);
    let mut r = std::io::BufReader::new(bytes);
    if let Ok(f) = read_preamble(&mut r) {
        let mut s = RdbStream::new(r, f);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        all_decoders(&bytes);
    }

    #[test]
    fn mutated_valid_objects_never_panic(
        which in 0usize..7,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut b = seeds()[which].clone();
        for (pos, x) in flips {
            let n = b.len();
            b[pos % n] ^= x;
        }
        let len = b.len();
        b.truncate(cut % (len + 1));
        all_decoders(&b);
    }
}
