//! Files round trips through every storage kind, dedup ratios, and the writer-only host.

use std::io::{Seek, SeekFrom, Write};

use crate::harness::dr::DrEnv;
use crate::harness::{garage, moto, tree};

fn round_trip(env: &DrEnv, target: &str) {
    let data = env.path(&format!("data-{target}"));
    tree::make(&data, 24);
    env.files_policy(target, &data, &[target]);
    let b = env.json(&["backup", "--policy", target]);
    assert!(b["bytes_read"].as_u64().unwrap() > 20 << 20, "{b}");
    let out = env.path(&format!("restored-{target}"));
    env.ok(&[
        "restore",
        "--policy",
        target,
        "--target-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        tree::diff(&data, &out),
        Vec::<String>::new(),
        "restore from {target} differs"
    );
    assert!(
        env.ok(&["verify", "--policy", target, "--data"])
            .contains("OK")
    );
}

#[test]
fn files_round_trip_local() {
    round_trip(&DrEnv::new(), "local");
}

#[test]
fn files_round_trip_garage() {
    let g = garage::shared();
    let mut env = DrEnv::new();
    env.add_storage(
        &g.s3.storage_toml("garage", &g.bucket("files")),
        g.s3.env("garage"),
    );
    round_trip(&env, "garage");
}

#[test]
fn files_round_trip_moto() {
    let m = moto::shared();
    let mut env = DrEnv::new();
    env.add_storage(
        &m.s3.storage_toml("moto", &m.s3.bucket("files", false)),
        m.s3.env("moto"),
    );
    round_trip(&env, "moto");
}

/// Unchanged data stores < 1 % new bytes; 1 MB changed inside a large file stores < 5 MB.
#[test]
fn incremental_backups_store_only_changes() {
    let env = DrEnv::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    let big = data.join("big.img");
    let mut content = tree::noise(7, 128 << 20);
    content[40 << 20..48 << 20].fill(0);
    std::fs::write(&big, &content).unwrap();
    std::fs::write(data.join("notes.txt"), tree::text(3, 4 << 20)).unwrap();
    env.files_policy("inc", &data, &["local"]);

    let full = env.json(&["backup", "--policy", "inc"]);
    let full_stored = full["bytes_stored"].as_u64().unwrap();
    let again = env.json(&["backup", "--policy", "inc"]);
    let again_stored = again["bytes_stored"].as_u64().unwrap();
    assert!(
        again_stored * 100 < full_stored,
        "unchanged data stored {again_stored} of {full_stored}"
    );

    let mut f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    f.seek(SeekFrom::Start(77 << 20)).unwrap();
    f.write_all(&tree::noise(99, 1 << 20)).unwrap();
    drop(f);
    let changed = env.json(&["backup", "--policy", "inc"]);
    let changed_stored = changed["bytes_stored"].as_u64().unwrap();
    assert!(
        changed_stored < 5 << 20,
        "1 MiB change stored {changed_stored} bytes"
    );

    let out = env.path("out");
    env.ok(&[
        "restore",
        "--policy",
        "inc",
        "--target-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(tree::diff(&data, &out), Vec::<String>::new());
    // The first snapshot still restores the old content.
    let first = full["snapshot"].as_str().unwrap();
    let old = env.path("old");
    env.ok(&[
        "restore",
        "--policy",
        "inc",
        "--snapshot",
        first,
        "--target-dir",
        old.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(old.join("big.img")).unwrap(), content);
}

/// A host with dr.toml but without the identity backs up, and cannot restore.
#[test]
fn writer_without_identity_can_back_up_but_not_restore() {
    let env = DrEnv::new();
    let data = env.path("data");
    tree::make(&data, 3);
    env.files_policy("w", &data, &["local"]);
    std::fs::remove_file(env.setup().join("keys/restore.key")).unwrap();
    env.ok(&["backup", "--policy", "w"]);
    assert!(
        env.ok(&["snapshots", "--policy", "w"]).contains("SNAPSHOT"),
        "snapshots are listed from plaintext refs"
    );
    assert!(
        env.ok(&["verify", "--policy", "w"]).contains("OK"),
        "structure checks need no identity"
    );
    let err = env.fails(
        &[
            "restore",
            "--policy",
            "w",
            "--target-dir",
            env.path("out").to_str().unwrap(),
        ],
        1,
    );
    assert!(err.contains("no identity"), "{err}");
    let err = env.fails(&["verify", "--policy", "w", "--data"], 1);
    assert!(err.contains("no identity"), "{err}");
}

/// A file whose size, mtime, ctime and inode are unchanged since the last backup is taken
/// from it without reading; a file rewritten with its old size and mtime (its ctime moved)
/// is read, and `--force-read` reads everything.
#[test]
fn unchanged_files_are_not_read_again() {
    let env = DrEnv::new();
    let data = env.path("data");
    tree::make(&data, 4);
    fn count(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    count(&e.path())
                } else {
                    u64::from(e.file_type().unwrap().is_file())
                }
            })
            .sum()
    }
    let files = count(&data);
    env.files_policy("fc", &data, &["local"]);
    let first = env.json(&["backup", "--policy", "fc"]);
    assert_eq!(first["files_unchanged"], 0, "{first}");
    let again = env.json(&["backup", "--policy", "fc"]);
    assert_eq!(again["files_unchanged"], files, "{again}");

    // Same length, other bytes, the old mtime put back: only the ctime tells.
    let log = data.join("nested/log.txt");
    let meta = std::fs::metadata(&log).unwrap();
    let mut other = std::fs::read(&log).unwrap();
    other.iter_mut().for_each(|b| *b = b.wrapping_add(1));
    std::fs::write(&log, &other).unwrap();
    filetime::set_file_mtime(&log, filetime::FileTime::from_last_modification_time(&meta)).unwrap();
    let third = env.json(&["backup", "--policy", "fc"]);
    assert_eq!(third["files_unchanged"], files - 1, "{third}");
    let out = env.path("out");
    env.ok(&[
        "restore",
        "--policy",
        "fc",
        "--target-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(tree::diff(&data, &out), Vec::<String>::new());
    assert_eq!(std::fs::read(out.join("nested/log.txt")).unwrap(), other);

    let forced = env.json(&["backup", "--policy", "fc", "--force-read"]);
    assert_eq!(forced["files_unchanged"], 0, "{forced}");
    assert_eq!(forced["bytes_new"], 0, "{forced}");
}
