//! `kill -9` of `dr backup` at random moments never leaves a snapshot that `verify --data`
//! rejects, and the next backup succeeds.

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
    // Time one uninterrupted backup of a round's worth of new data (after a first full one),
    // then kill within that span.
    env.ok(&["backup", "--policy", "c"]);
    std::fs::write(data.join("round.bin"), tree::noise(999, 6 << 20)).unwrap();
    let t0 = std::time::Instant::now();
    env.ok(&["backup", "--policy", "c"]);
    let span_ms = u64::try_from(t0.elapsed().as_millis())
        .unwrap_or(1000)
        .max(50);
    let mut killed = 0;
    for i in 0..runs {
        // Fresh content each round so every backup has packs to upload.
        std::fs::write(
            data.join("round.bin"),
            tree::noise(u64::from(i) + 1000, 6 << 20),
        )
        .unwrap();
        let mut child = env
            .cmd(&["backup", "--policy", "c"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(u64::from(
            rand::random::<u32>() % 1500,
        )));
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
