//! Operator tools against real repositories: `dr info`, `dr ls`.

use crate::harness::dr::DrEnv;
use crate::harness::tree;

/// `dr info` names every policy with its snapshots and replica state, and a broken policy file
/// by its key path instead of stopping at it (exit 3 so that scripts notice).
#[test]
fn info_shows_policies_replicas_and_broken_files() {
    let mut env = DrEnv::new();
    env.add_storage(
        "\n[storage.replica]\ntype = \"local\"\npath = \"repo-replica\"\n",
        vec![],
    );
    let data = env.path("data");
    tree::make(&data, 2);
    env.files_policy("app", &data, &["local", "replica"]);
    env.ok(&["backup", "--policy", "app"]);
    env.ok(&["replicate", "--policy", "app"]);
    std::fs::write(data.join("new.txt"), "second").unwrap();
    env.ok(&["backup", "--policy", "app"]);
    env.policy(
        "typo",
        "source = { type = \"files\", path = \"/srv\" }\ntargets = [\"nowhere\"]\nschedule = \"every tuesday\"\n",
    );

    let out = env.run(&["info", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let app = &info["policies"][0];
    assert_eq!(app["id"], "app", "{info}");
    assert_eq!(app["snapshots"], 2, "{info}");
    assert!(
        app["newest"]["bytes_total"].as_u64().unwrap() > 1 << 20,
        "{info}"
    );
    assert!(
        app["newest"]["bytes_new"].as_u64() < app["oldest"]["bytes_new"].as_u64(),
        "{info}"
    );
    assert!(
        app["repository_bytes"].as_u64().unwrap() >= app["bytes_stored"].as_u64().unwrap(),
        "{info}"
    );
    let replica = &app["replicas"][0];
    assert_eq!(replica["target"], "replica", "{info}");
    assert_eq!(
        (replica["snapshots"].as_u64(), replica["missing"].as_u64()),
        (Some(1), Some(1)),
        "{info}"
    );
    assert_eq!(replica["newest"], app["oldest"]["id"], "{info}");
    let broken = info["broken"].as_array().unwrap();
    assert_eq!(broken.len(), 1, "{info}");
    assert!(
        broken[0]["file"].as_str().unwrap().ends_with("typo.toml"),
        "{info}"
    );
    let errors = broken[0]["errors"].to_string();
    assert!(
        errors.contains("targets") && errors.contains("schedule"),
        "{errors}"
    );

    // The text form says the same; one policy alone ignores the broken file.
    let text = String::from_utf8(env.run(&["info"]).stdout).unwrap();
    assert!(text.contains("app (files) -> local, replica"), "{text}");
    assert!(
        text.contains("replica replica: 1 snapshots, 1 missing"),
        "{text}"
    );
    assert!(
        text.contains("BROKEN") && text.contains("typo.toml"),
        "{text}"
    );
    env.ok(&["replicate", "--policy", "app"]);
    let one = env.json(&["info", "--policy", "app"]);
    assert_eq!(one["policies"][0]["replicas"][0]["missing"], 0, "{one}");
    assert_eq!(one["policies"][0]["replicas"][0]["lag_seconds"], 0, "{one}");
    assert_eq!(one["broken"].as_array().map(Vec::len), Some(0), "{one}");
}

/// `dr ls` lists a snapshot from its manifest: everything, one subtree, long format with kinds
/// and sizes, JSON lines; a name with a newline stays on one line.
#[test]
fn ls_lists_a_snapshot_and_a_subtree() {
    let env = DrEnv::new();
    let data = env.path("data");
    tree::make(&data, 2);
    env.files_policy("app", &data, &["local"]);
    env.ok(&["backup", "--policy", "app"]);

    let all = env.ok(&["ls", "--policy", "app", "latest"]);
    assert!(all.lines().any(|l| l == "nested/log.txt"), "{all}");
    assert!(all.lines().any(|l| l == "new\\nline"), "{all}");
    assert!(all.contains("link-to-log -> nested/log.txt"), "{all}");

    let sub = env.ok(&["ls", "--policy", "app", "latest", "nested/deeper/", "-l"]);
    let lines: Vec<&str> = sub.lines().collect();
    // The directory itself, zeros.img, deepest/ and its 50 files.
    assert_eq!(lines.len(), 53, "{sub}");
    assert!(lines.iter().all(|l| l.contains(" nested/deeper")), "{sub}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('d') && l.ends_with(" nested/deeper/deepest")),
        "{sub}"
    );
    assert!(!sub.contains("nested/log.txt"), "{sub}");

    let json = env.ok(&["ls", "--policy", "app", "latest", "read-only.txt", "--json"]);
    let entries: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 1, "{json}");
    assert_eq!(entries[0]["mode"], "444", "{json}");
    assert_eq!(entries[0]["size"], 9, "{json}");
    assert_eq!(
        entries[0]["blake3"],
        blake3::hash(b"read only").to_hex().as_str(),
        "{json}"
    );
    let none = env.ok(&["ls", "--policy", "app", "latest", "no/such/path"]);
    assert!(none.is_empty(), "{none}");
}
