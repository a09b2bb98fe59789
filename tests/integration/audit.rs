//! Issue 20, item 4: the audit log names the actor (the OS user by name, its host), the
//! snapshots restores and retention touched, and `dr audit --since/--until` take dates.

use crate::harness::dr::DrEnv;

#[test]
fn audit_events_name_who_and_which_snapshots_and_take_dates() {
    let env = DrEnv::new();
    let data = env.path("data");
    crate::harness::tree::make(&data, 1);
    env.files_policy("app", &data, &["local"]);
    let old = env.json(&["backup", "--policy", "app"])["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    let new = env.json(&["backup", "--policy", "app"])["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    let to = env.path("restored");
    env.ok(&[
        "restore",
        "--policy",
        "app",
        "--target-dir",
        to.to_str().unwrap(),
    ]);
    // keep_last 1 + daily 30: the older snapshot of today goes.
    env.ok(&["retention", "apply"]);

    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let events = env.json(&["audit", "--since", &today, "--until", &tomorrow]);
    let events = events.as_array().unwrap();
    let restore = events
        .iter()
        .find(|e| e["action"] == "restore")
        .expect("a restore event");
    assert!(
        restore["target"]
            .as_str()
            .unwrap()
            .starts_with(&format!("app@{new} -> ")),
        "{restore:#}"
    );
    let forget = events
        .iter()
        .find(|e| e["action"] == "retention.apply")
        .expect("a retention event");
    assert!(
        forget["target"]
            .as_str()
            .unwrap()
            .contains(&format!("app@local: {old}")),
        "{forget:#}"
    );
    // The OS user by name (the tests run as a user the user database knows), and the host.
    let me = crate::harness::os_user_name();
    for e in events {
        assert_eq!(e["who"], me.as_str(), "{e:#}");
        assert!(!e["host"].as_str().unwrap().is_empty(), "{e:#}");
    }
    // Nothing before today's midnight; a bad bound is a usage error naming what is accepted.
    let before = env.json(&["audit", "--until", &today]);
    assert!(before.as_array().unwrap().is_empty(), "{before:#}");
    let out = env.fails(&["audit", "--since", "last tuesday"], 2);
    assert!(out.contains("use a date (2026-12-01)"), "{out}");
}
