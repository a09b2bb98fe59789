//! `dr retention apply`: forget, two-phase pack collection, and prune racing backups.

use std::path::Path;
use std::thread;
use std::time::Duration;

use crate::harness::dr::DrEnv;
use crate::harness::tree;

fn policy(env: &DrEnv, data: &Path, keep_last: u32, grace: &str) {
    env.policy(
        "app",
        &format!(
            "source = {{ type = \"files\", path = \"{}\" }}\ntargets = [\"local\"]\n\
             [retention]\nkeep_last = {keep_last}\nhourly = 0\ndaily = 0\nweekly = 0\nmonthly = 0\nyearly = 0\ngc_grace = \"{grace}\"\n",
            data.display()
        ),
    );
}

fn packs_on_disk(env: &DrEnv) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for d in std::fs::read_dir(env.setup().join("repo/packs")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let f = f.unwrap();
            if !f.file_name().to_string_lossy().starts_with('.') {
                n += 1;
                bytes += f.metadata().unwrap().len();
            }
        }
    }
    (n, bytes)
}

fn snapshot_count(env: &DrEnv) -> usize {
    env.json(&["snapshots", "--policy", "app"])
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn apply_forgets_then_deletes_packs_only_after_the_grace_period() {
    let env = DrEnv::new();
    let data = env.path("data");
    tree::make(&data, 4);
    policy(&env, &data, 2, "3s");
    for i in 0..4u64 {
        std::fs::write(
            data.join("changing.bin"),
            tree::noise(1001 + 10 * i, 3 << 20),
        )
        .unwrap();
        env.ok(&["backup", "--policy", "app"]);
    }
    assert_eq!(snapshot_count(&env), 4);
    let before = packs_on_disk(&env);

    // Dry run: reports, changes nothing.
    let dry = env.json(&["retention", "apply", "--dry-run"]);
    assert_eq!(
        dry["policies"][0]["forgotten"].as_array().unwrap().len(),
        2,
        "{dry}"
    );
    assert_eq!(snapshot_count(&env), 4);
    assert_eq!(packs_on_disk(&env), before);

    // Packs younger than the grace period are not even marked (they may be an in-flight
    // backup's): wait until the old ones are old enough.
    thread::sleep(Duration::from_secs(4));
    let first = env.json(&["retention", "apply"]);
    assert_eq!(
        first["policies"][0]["forgotten"].as_array().unwrap().len(),
        2,
        "{first}"
    );
    let gc = &first["collections"][0];
    assert!(gc["marked_packs"].as_u64().unwrap() >= 2, "{first}");
    assert_eq!(gc["deleted_packs"], 0, "phase one deletes nothing: {first}");
    assert_eq!(snapshot_count(&env), 2);
    assert_eq!(packs_on_disk(&env), before, "marked packs are still there");

    // Before the grace period ends a second run still deletes nothing.
    let second = env.json(&["retention", "apply"]);
    assert_eq!(second["collections"][0]["deleted_packs"], 0, "{second}");

    thread::sleep(Duration::from_secs(4));
    let third = env.json(&["retention", "apply"]);
    let gc3 = &third["collections"][0];
    assert_eq!(gc3["deleted_packs"], gc["marked_packs"], "{third}");
    assert!(gc3["deleted_bytes"].as_u64().unwrap() > 2 << 20, "{third}");
    let after = packs_on_disk(&env);
    assert_eq!(
        after.0,
        before.0 - gc["marked_packs"].as_u64().unwrap() as usize
    );

    // What is kept is whole: every chunk of both snapshots decrypts and hashes right, and the
    // newest restores to the current data.
    assert!(
        env.ok(&["verify", "--policy", "app", "--data"])
            .contains("OK")
    );
    let out = env.path("restored");
    env.ok(&[
        "restore",
        "--policy",
        "app",
        "--target-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(tree::diff(&data, &out), Vec::<String>::new());

    // Applying again changes nothing.
    let again = env.json(&["retention", "apply"]);
    assert_eq!(
        again["policies"][0]["forgotten"].as_array().unwrap().len(),
        0
    );
    assert_eq!(again["collections"][0]["deleted_packs"], 0);
    assert_eq!(packs_on_disk(&env), after);
}

/// Backups and prune run at the same time, over and over, with a short grace period and data
/// that keeps coming back (so backups keep wanting packs prune has just marked). A backup may
/// refuse to commit (it says why); no committed snapshot may ever miss data.
#[test]
fn prune_racing_backups_never_loses_a_referenced_pack() {
    let env = DrEnv::new();
    let data = env.path("data");
    tree::make(&data, 2);
    policy(&env, &data, 1, "1s");
    let variants: Vec<Vec<u8>> = (0..3)
        .map(|i| tree::noise(2001 + 10 * i, 1 << 20))
        .collect();
    std::fs::write(data.join("cycling.bin"), &variants[0]).unwrap();
    env.ok(&["backup", "--policy", "app"]);

    let stop = std::sync::atomic::AtomicBool::new(false);
    let (committed, refused) = thread::scope(|s| {
        let backups = s.spawn(|| {
            let (mut committed, mut refused) = (0, 0);
            for i in 0..24 {
                std::fs::write(data.join("cycling.bin"), &variants[i % 3]).unwrap();
                let out = env.run(&["backup", "--policy", "app"]);
                let err = String::from_utf8_lossy(&out.stderr).to_string();
                if out.status.success() {
                    committed += 1;
                } else {
                    assert!(
                        err.contains("being deleted by prune"),
                        "a backup failed for another reason: {err}"
                    );
                    refused += 1;
                }
                thread::sleep(Duration::from_millis(150));
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            (committed, refused)
        });
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let out = env.run(&["retention", "apply"]);
            assert!(
                out.status.success(),
                "retention apply failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            thread::sleep(Duration::from_millis(300));
        }
        backups.join().unwrap()
    });
    eprintln!("prune race: {committed} backups committed, {refused} refused");
    assert!(committed >= 12, "most backups commit: {committed}");

    // Let every pending mark come due and be swept, then check everything kept.
    thread::sleep(Duration::from_secs(2));
    env.ok(&["retention", "apply"]);
    thread::sleep(Duration::from_secs(2));
    env.ok(&["retention", "apply"]);
    let v = env.ok(&["verify", "--policy", "app", "--data"]);
    assert!(v.contains("OK"), "{v}");
    let out = env.path("restored");
    env.ok(&[
        "restore",
        "--policy",
        "app",
        "--target-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(tree::diff(&data, &out), Vec::<String>::new());
}
