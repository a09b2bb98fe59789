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
        let v = env.ok(&["verify", "--policy", "c", "--data"]);
        assert!(v.trim_end().ends_with("OK"), "after kill {i}: {v}");
    }
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
