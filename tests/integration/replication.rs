//! Replication between two real Garage instances standing in for two regions.

use crate::harness::dr::DrEnv;
use crate::harness::garage::{self, Garage};
use crate::harness::tree;

#[test]
fn replica_catches_up_after_an_outage_and_restores() {
    let a = garage::shared();
    let mut b = Garage::start("region-b");
    let mut env = DrEnv::new();
    env.add_storage(&a.s3.storage_toml("eu", &a.bucket("eu")), a.s3.env("eu"));
    env.add_storage(&b.s3.storage_toml("us", &b.bucket("us")), b.s3.env("us"));
    let data = env.path("data");
    tree::make(&data, 8);
    env.files_policy("app", &data, &["eu", "us"]);

    env.ok(&["backup", "--policy", "app"]);
    let out = env.ok(&["replicate", "--policy", "app"]);
    assert!(
        out.contains("eu -> us") && out.contains("up to date"),
        "{out}"
    );
    let restored = env.path("from-us");
    env.ok(&[
        "restore",
        "--policy",
        "app",
        "--region",
        "us",
        "--target-dir",
        restored.to_str().unwrap(),
    ]);
    assert_eq!(tree::diff(&data, &restored), Vec::<String>::new());

    // The replica region goes down: backups to the primary go on, replication reports it.
    b.stop();
    std::fs::write(data.join("added-during-outage.txt"), tree::text(5, 300_000)).unwrap();
    env.ok(&["backup", "--policy", "app"]);
    let e = env.fails(&["replicate", "--policy", "app"], 1);
    assert!(e.contains("eu -> us"), "{e}");

    // Back up: it catches up, and the replica verifies.
    b.restart();
    env.ok(&["replicate", "--policy", "app"]);
    let v = env.ok(&["verify", "--policy", "app", "--region", "us", "--data"]);
    assert!(
        v.contains("2 snapshots") && v.trim_end().ends_with("OK"),
        "{v}"
    );
    let again = env.ok(&["replicate", "--policy", "app", "--json"]);
    assert!(
        again.contains("\"objects\": 0"),
        "a second pass copies nothing: {again}"
    );
    let latest = env.path("latest-from-us");
    env.ok(&[
        "restore",
        "--policy",
        "app",
        "--region",
        "us",
        "--target-dir",
        latest.to_str().unwrap(),
    ]);
    assert_eq!(tree::diff(&data, &latest), Vec::<String>::new());
}
