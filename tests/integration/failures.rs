//! Damaged repositories and wrong keys: every failure is detected, names the object, exits 1,
//! and nothing panics or restores wrong data.

use std::path::PathBuf;

use crate::harness::dr::DrEnv;
use crate::harness::tree;

fn backed_up() -> (DrEnv, PathBuf) {
    let env = DrEnv::new();
    let data = env.path("data");
    tree::make(&data, 6);
    env.files_policy("p", &data, &["local"]);
    env.ok(&["backup", "--policy", "p"]);
    (env, data)
}

fn packs(env: &DrEnv) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for aa in std::fs::read_dir(env.setup().join("repo/packs")).unwrap() {
        for p in std::fs::read_dir(aa.unwrap().path()).unwrap() {
            v.push(p.unwrap().path());
        }
    }
    v.sort();
    v
}

fn pack_name(p: &std::path::Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn restore_fails(env: &DrEnv, needle: &str) -> String {
    let out = env.path(&format!("out-{}", rand::random::<u32>()));
    let err = env.fails(
        &[
            "restore",
            "--policy",
            "p",
            "--target-dir",
            out.to_str().unwrap(),
        ],
        1,
    );
    assert!(
        err.contains(needle),
        "restore error should mention {needle}:\n{err}"
    );
    err
}

#[test]
fn truncated_pack_is_named_by_verify_and_restore() {
    let (env, _) = backed_up();
    let p = packs(&env).remove(0);
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let v = env.fails(&["verify", "--policy", "p"], 1);
    assert!(v.contains(&pack_name(&p)) && v.contains("truncated"), "{v}");
    let v = env.fails(&["verify", "--policy", "p", "--data"], 1);
    assert!(v.contains(&pack_name(&p)), "{v}");
    restore_fails(&env, &pack_name(&p));
}

#[test]
fn deleted_pack_is_named_by_verify_and_restore() {
    let (env, _) = backed_up();
    let p = packs(&env).pop().unwrap();
    std::fs::remove_file(&p).unwrap();
    let v = env.fails(&["verify", "--policy", "p", "--data"], 1);
    assert!(v.contains(&pack_name(&p)) && v.contains("missing"), "{v}");
    let e = restore_fails(&env, &pack_name(&p));
    assert!(e.contains("not found"), "{e}");
}

#[test]
fn flipped_bit_fails_authentication() {
    let (env, _) = backed_up();
    let p = packs(&env).remove(0);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&p, bytes).unwrap();
    let v = env.fails(&["verify", "--policy", "p", "--data"], 1);
    assert!(
        v.contains(&pack_name(&p)) && v.contains("authentication failed"),
        "{v}"
    );
    restore_fails(&env, "authentication failed");
}

#[test]
fn wrong_identity_and_wrong_chunk_key_are_clear_errors() {
    let (env, _) = backed_up();
    let key = env.setup().join("keys/restore.key");
    std::fs::remove_file(&key).unwrap();
    let out = std::process::Command::new(crate::harness::dr::bin())
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    restore_fails(&env, "encrypted to other age recipients");

    let ck = env.setup().join("keys/chunk-id.key");
    std::fs::remove_file(&ck).unwrap();
    let out = std::process::Command::new(crate::harness::dr::bin())
        .args(["keygen", "--chunk-id-key"])
        .arg(&ck)
        .output()
        .unwrap();
    assert!(out.status.success());
    let e = env.fails(&["backup", "--policy", "p"], 1);
    assert!(e.contains("chunk-id key does not match"), "{e}");
    restore_fails(&env, "chunk-id key does not match");
}

#[test]
fn restore_refuses_a_non_empty_directory_and_unknown_snapshots() {
    let (env, data) = backed_up();
    let e = env.fails(
        &[
            "restore",
            "--policy",
            "p",
            "--target-dir",
            data.to_str().unwrap(),
        ],
        1,
    );
    assert!(e.contains("not empty") && e.contains("--force"), "{e}");
    let e = env.fails(
        &[
            "restore",
            "--policy",
            "p",
            "--snapshot",
            "19990101",
            "--target-dir",
            env.path("x").to_str().unwrap(),
        ],
        1,
    );
    assert!(e.contains("no snapshot `19990101`"), "{e}");
}

#[test]
fn a_manifest_moved_to_another_name_is_refused() {
    let (env, _) = backed_up();
    env.ok(&["backup", "--policy", "p"]);
    let dir = env.setup().join("repo/snapshots/p");
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.to_string_lossy().ends_with(".refs"))
        .collect();
    manifests.sort();
    // Replay the older manifest under the newer name.
    std::fs::copy(&manifests[0], &manifests[1]).unwrap();
    let v = env.fails(&["verify", "--policy", "p", "--data"], 1);
    assert!(v.contains("replayed or moved manifest"), "{v}");
}
