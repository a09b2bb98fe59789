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
    let err = restore_output(env);
    assert!(
        err.contains(needle),
        "restore error should mention {needle}:\n{err}"
    );
    err
}

/// A restore of the newest snapshot into a fresh directory, which must exit 1.
fn restore_output(env: &DrEnv) -> String {
    restore_into_fails(env, &env.path(&format!("out-{}", rand::random::<u32>())))
}

/// A restore of the newest snapshot into `out`, which must exit 1.
fn restore_into_fails(env: &DrEnv, out: &std::path::Path) -> String {
    env.fails(
        &[
            "restore",
            "--policy",
            "p",
            "--target-dir",
            out.to_str().unwrap(),
        ],
        1,
    )
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

/// Every entry below `root`, with its own metadata (symlinks not followed).
fn walk(root: &std::path::Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p.clone());
            }
            out.push((p, meta));
        }
    }
    out
}

/// Every entry below `root` but symlinks, with its permission bits.
fn modes(root: &std::path::Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    walk(root)
        .into_iter()
        .filter(|(_, m)| !m.file_type().is_symlink())
        .map(|(p, m)| (p, m.permissions().mode() & 0o7777))
        .collect()
}

/// A restore that stops part-way (here at a damaged blob in the middle of a pack) leaves only
/// private entries behind: files are created 0600 and directories 0700, and get their recorded
/// modes only at the end, so a database's files are never readable by others mid-restore.
#[test]
fn a_partial_restore_leaves_nothing_readable_by_others() {
    let (env, data) = backed_up();
    assert!(
        modes(&data).iter().any(|(_, m)| m & 0o044 != 0),
        "the test tree should have group/world-readable entries"
    );
    let p = packs(&env).remove(0);
    let mut bytes = std::fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&p, bytes).unwrap();
    let out = env.path("partial");
    restore_into_fails(&env, &out);
    let left = modes(&out);
    assert!(
        left.len() > 10,
        "the restore created nothing before failing: {left:?}"
    );
    for (path, mode) in left {
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
    }
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

/// `--force` over an earlier restore whose files were since made longer and different: none
/// of their old bytes survive (files with data are created by the restore workers, not
/// truncated up front, so the old ones must be gone first).
#[test]
fn force_restore_over_longer_files_leaves_none_of_their_bytes() {
    let (env, data) = backed_up();
    let target = env.path("again");
    let args = [
        "restore",
        "--policy",
        "p",
        "--target-dir",
        target.to_str().unwrap(),
    ];
    env.ok(&args);
    let mut grown = 0;
    for (p, meta) in walk(&target).into_iter().filter(|(_, m)| m.is_file()) {
        let mut perm = meta.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
        std::fs::set_permissions(&p, perm).unwrap();
        std::fs::write(&p, tree::noise(grown, meta.len() as usize * 2 + 4096)).unwrap();
        grown += 1;
    }
    assert!(grown > 10, "{grown}");
    std::fs::write(target.join("left-over"), b"not in the snapshot").unwrap();
    env.ok(&[&args[..], &["--force"]].concat());
    // A file that is not in the snapshot is left alone, not deleted.
    std::fs::remove_file(target.join("left-over")).unwrap();
    let d = tree::diff(&data, &target);
    assert!(d.is_empty(), "{d:#?}");
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

/// Every kind of damage issue 10 lists — to packs, to manifests, to keys — is caught by
/// `verify --data`, by `restore` and by a restore drill, each exiting 1 and naming what failed.
#[test]
fn every_damage_is_caught_by_verify_restore_and_drills() {
    let (env, data) = backed_up();
    std::fs::write(data.join("more.bin"), tree::noise(77, 2 << 20)).unwrap();
    env.ok(&["backup", "--policy", "p"]);
    let setup = env.setup();
    std::fs::create_dir_all(setup.join("restore-drills")).unwrap();
    std::fs::write(
        setup.join("restore-drills/d.toml"),
        "policy = \"p\"\nrpo = \"1h\"\n",
    )
    .unwrap();
    let (r, code) = drill(&env);
    assert_eq!(code, Some(0), "the undamaged drill should pass: {r}");

    // Another repository with the same keys, for a manifest that decrypts but is not ours.
    let other = env.path("other");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["dr.toml", "keys", "policies"] {
        cp(&setup.join(f), &other.join(f));
    }
    let out = env
        .cmd_at(&other.join("dr.toml"), &["backup", "--policy", "p"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let foreign: Vec<PathBuf> = std::fs::read_dir(other.join("repo/snapshots/p"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();

    let pristine = env.path("pristine");
    cp(&setup, &pristine);
    let packs = packs(&env);
    let (a, b) = (packs[0].clone(), packs[packs.len() - 1].clone());
    let (pa, pb) = (
        pack_name(&a)[..16].to_owned(),
        pack_name(&b)[..16].to_owned(),
    );
    let manifests = || -> Vec<PathBuf> {
        let mut m: Vec<PathBuf> = std::fs::read_dir(setup.join("repo/snapshots/p"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.to_string_lossy().ends_with(".refs"))
            .collect();
        m.sort();
        m
    };
    let new_key = |args: &[&str], file: &str| {
        let f = setup.join(file);
        std::fs::remove_file(&f).unwrap();
        let out = std::process::Command::new(crate::harness::dr::bin())
            .args(args)
            .arg(&f)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    let damages: Vec<(&str, Vec<&str>, Box<dyn Fn()>)> = vec![
        (
            "bit flip",
            vec![&pa],
            Box::new(|| {
                let mut x = std::fs::read(&a).unwrap();
                let mid = x.len() / 2;
                x[mid] ^= 0x10;
                std::fs::write(&a, x).unwrap();
            }),
        ),
        (
            "truncation",
            vec![&pa],
            Box::new(|| {
                let x = std::fs::read(&a).unwrap();
                std::fs::write(&a, &x[..x.len() - 100]).unwrap();
            }),
        ),
        (
            "swapped packs",
            vec![&pa, &pb],
            Box::new(|| {
                let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
                std::fs::write(&a, y).unwrap();
                std::fs::write(&b, x).unwrap();
            }),
        ),
        (
            "deleted pack",
            vec![&pa],
            Box::new(|| std::fs::remove_file(&a).unwrap()),
        ),
        (
            "replayed manifest",
            vec!["replayed or moved manifest"],
            Box::new(|| {
                let m = manifests();
                std::fs::copy(&m[0], &m[1]).unwrap();
            }),
        ),
        (
            "manifest from another repository",
            vec!["belongs to repository", "from another repository"],
            Box::new(|| {
                for f in &foreign {
                    std::fs::copy(
                        f,
                        setup.join("repo/snapshots/p").join(f.file_name().unwrap()),
                    )
                    .unwrap();
                }
            }),
        ),
        (
            "wrong age identity",
            vec!["encrypted to other age recipients"],
            Box::new(|| new_key(&["keygen", "--out"], "keys/restore.key")),
        ),
        (
            "wrong chunk-id key",
            vec!["chunk-id key does not match"],
            Box::new(|| new_key(&["keygen", "--chunk-id-key"], "keys/chunk-id.key")),
        ),
    ];
    for (what, needles, damage) in damages {
        eprintln!("damage: {what}");
        damage();
        let named = |text: &str| needles.iter().any(|n| text.contains(n));
        let v = env.fails(&["verify", "--policy", "p", "--data", "--read-packs"], 1);
        assert!(named(&v), "{what}: verify names none of {needles:?}:\n{v}");
        let r = restore_output(&env);
        assert!(named(&r), "{what}: restore names none of {needles:?}:\n{r}");
        let (d, code) = drill(&env);
        assert_eq!(code, Some(1), "{what}: the drill should fail: {d}");
        assert!(
            named(&d),
            "{what}: the drill names none of {needles:?}:\n{d}"
        );
        std::fs::remove_dir_all(&setup).unwrap();
        cp(&pristine, &setup);
    }
    let (r, code) = drill(&env);
    assert_eq!(code, Some(0), "whole again: {r}");
}

fn cp(from: &std::path::Path, to: &std::path::Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

fn drill(env: &DrEnv) -> (String, Option<i32>) {
    let out = env.run(&["drill", "run", "d", "--json"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "{text}");
    (text, out.status.code())
}
