//! `kill -9` of `dr backup`, `dr retention apply` and `dr replicate` at random moments never
//! leaves a snapshot that `verify --data` rejects, in any region, and the next run succeeds.

use std::time::Duration;

use crate::harness::dr::DrEnv;
use crate::harness::tree;

#[test]
fn kill_9_during_backup_never_corrupts_the_repository() {
    let runs: u32 = std::env::var("DR_TEST_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let env = DrEnv::new();
    let data = env.path("data");
    tree::make(&data, 40);
    env.files_policy("c", &data, &["local"]);
    // Time uninterrupted backups of a round's worth of new data (after a first full one), the
    // shortest of two, then kill within that span. Every backup reads the whole tree
    // (--force-read): taking unchanged files from the file cache made a backup mostly process
    // start-up, too short and too variable to kill in the middle.
    env.ok(&["backup", "--policy", "c"]);
    let mut span_ms = u64::MAX;
    for seed in [998, 999] {
        std::fs::write(data.join("round.bin"), tree::noise(seed, 6 << 20)).unwrap();
        let t0 = std::time::Instant::now();
        env.ok(&["backup", "--policy", "c", "--force-read"]);
        span_ms = span_ms.min(u64::try_from(t0.elapsed().as_millis()).unwrap_or(1000));
    }
    let span_ms = span_ms.max(50);
    let mut killed = 0;
    for i in 0..runs {
        // Fresh content each round so every backup has packs to upload.
        std::fs::write(
            data.join("round.bin"),
            tree::noise(u64::from(i) + 1000, 6 << 20),
        )
        .unwrap();
        let mut child = env
            .cmd(&["backup", "--policy", "c", "--force-read"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % span_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
        // Structure after every kill (every committed snapshot has all its objects) ...
        let v = env.ok(&["verify", "--policy", "c"]);
        assert!(v.trim_end().ends_with("OK"), "after kill {i}: {v}");
    }
    // ... and every byte of every snapshot that exists once at the end: snapshots never change,
    // so this covers each one committed along the way.
    let v = env.ok(&["verify", "--policy", "c", "--data"]);
    assert!(v.trim_end().ends_with("OK"), "{v}");
    assert!(
        killed * 2 >= runs,
        "only {killed} of {runs} backups were killed mid-way; the test is not testing"
    );
    env.ok(&["backup", "--policy", "c"]);
    let out = env.path("out");
    env.ok(&[
        "restore",
        "--policy",
        "c",
        "--target-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(tree::diff(&data, &out), Vec::<String>::new());
    eprintln!("crash matrix: {runs} runs, {killed} killed mid-backup, 0 corrupt");
}

/// Retention (forget + two-phase collection) and replication killed at random points.
#[test]
fn kill_9_during_retention_and_replication_never_corrupts_any_region() {
    let runs: u32 = std::env::var("DR_TEST_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let mut env = DrEnv::new();
    env.add_storage(
        "\n[pipeline]\npack_size = \"1MiB\"\n\n[storage.replica]\ntype = \"local\"\npath = \"repo-replica\"\n",
        vec![],
    );
    let data = env.path("data");
    tree::make(&data, 8);
    env.policy(
        "c",
        &format!(
            "source = {{ type = \"files\", path = \"{}\" }}\ntargets = [\"local\", \"replica\"]\n\
             [retention]\nkeep_last = 2\ndaily = 0\nweekly = 0\nmonthly = 0\ngc_grace = \"1s\"\n",
            data.display()
        ),
    );
    let (mut killed, mut applies, mut replications) = (0, 0, 0);
    for i in 0..runs {
        std::fs::write(
            data.join("round.bin"),
            tree::noise(u64::from(i) * 7 + 3, 8 << 20),
        )
        .unwrap();
        env.ok(&["backup", "--policy", "c"]);
        std::thread::sleep(Duration::from_millis(1100));
        let args: &[&str] = if i % 2 == 0 {
            applies += 1;
            &["retention", "apply"]
        } else {
            replications += 1;
            &["replicate"]
        };
        let mut child = env
            .cmd(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Both take tens of milliseconds here (many 1 MiB packs to copy or delete).
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 60));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
        for region in [None, Some("replica")] {
            let mut a = vec!["verify", "--policy", "c"];
            if let Some(r) = region {
                a.extend(["--region", r]);
            }
            let out = env.run(&a);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            // A replica that has not received anything yet has no repository: that is fine.
            if region.is_some() && String::from_utf8_lossy(&out.stderr).contains("no dr repository")
            {
                continue;
            }
            assert!(
                out.status.success() && text.trim_end().ends_with("OK"),
                "after kill {i} ({args:?}), {region:?}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(
        killed * 4 >= runs,
        "only {killed} of {runs} runs were killed mid-way; the test is not testing"
    );
    // Everything finishes cleanly afterwards, and every byte kept in both regions is intact.
    env.ok(&["replicate"]);
    std::thread::sleep(Duration::from_millis(1100));
    env.ok(&["retention", "apply"]);
    std::thread::sleep(Duration::from_millis(1100));
    env.ok(&["retention", "apply"]);
    for region in ["local", "replica"] {
        let v = env.ok(&["verify", "--policy", "c", "--region", region, "--data"]);
        assert!(v.trim_end().ends_with("OK"), "{region}: {v}");
    }
    let out = env.path("out");
    env.ok(&[
        "restore",
        "--policy",
        "c",
        "--region",
        "replica",
        "--target-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(tree::diff(&data, &out), Vec::<String>::new());
    eprintln!(
        "crash matrix: {applies} retention applies and {replications} replications, {killed} killed mid-way, 0 corrupt"
    );
}
