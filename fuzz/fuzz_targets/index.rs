#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = dr::repo::keys::ChunkIdKey::from_secret(&[7; 32]);
    let _ = dr::repo::index::Index::decode(&keys, "repo", &dr::repo::ids::IndexId([0; 32]), data);
    let id = dr::repo::ids::SnapshotId::parse("20261124T000000.000Z-00000000").unwrap();
    let _ = dr::repo::manifest::Refs::decode(&keys, "repo", "p", &id, "o", data);
});
