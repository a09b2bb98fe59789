#![no_main]
use libfuzzer_sys::fuzz_target;

// Manifests are age files: the fuzzer exercises the age parser, zstd and the JSON decoder
// behind it with a fixed identity.
fuzz_target!(|data: &[u8]| {
    use std::sync::OnceLock;
    static ID: OnceLock<(tempfile::TempDir, dr::repo::keys::Identity)> = OnceLock::new();
    let (_, identity) = ID.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (text, _) = dr::repo::keys::Identity::generate();
        let f = dir.path().join("id");
        std::fs::write(&f, text).unwrap();
        let id = dr::repo::keys::Identity::load(Some(&f)).unwrap();
        (dir, id)
    });
    let id = dr::repo::ids::SnapshotId::parse("20261124T000000.000Z-00000000").unwrap();
    let _ = dr::repo::manifest::Manifest::decode(identity, "repo", "p", &id, "o", data);
    let _ = dr::drill::report::open("o", data);
});
