//! Invalid configuration and usage: exit code 2, every error with file and key path.

use std::os::unix::fs::PermissionsExt;

use crate::harness::dr::DrEnv;

fn invalid(env: &DrEnv, needles: &[&str]) {
    let e = env.fails(&["validate"], 2);
    for n in needles {
        assert!(e.contains(n), "validate output should contain {n:?}:\n{e}");
    }
    // Every command refuses an invalid configuration the same way.
    env.fails(&["backup", "--policy", "p"], 2);
}

#[test]
fn unknown_key_bad_unit_and_bad_cron_are_all_reported() {
    let env = DrEnv::new();
    env.policy("p", "source = { type = \"files\", path = \"/tmp\" }\ntargets = [\"local\"]\nschedule = \"61 * * * *\"\nrpo = \"5 min\"\n[retention]\ndaily = 7\nweeklyy = 4\n");
    // A TOML-level error (unknown key) stops that file; fix it to see the semantic ones.
    invalid(
        &env,
        &["policies/p.toml: retention.weeklyy: unknown field `weeklyy`"],
    );
    env.policy("p", "source = { type = \"files\", path = \"/tmp\" }\ntargets = [\"local\", \"mars\"]\nschedule = \"61 * * * *\"\nrpo = \"5 min\"\n");
    invalid(
        &env,
        &[
            "policies/p.toml: schedule:",
            "policies/p.toml: rpo:",
            "policies/p.toml: targets[1]: no storage target `mars`",
            "3 errors",
        ],
    );
}

#[test]
fn missing_and_world_readable_key_files() {
    let env = DrEnv::new();
    env.policy(
        "p",
        "source = { type = \"files\", path = \"/tmp\" }\ntargets = [\"local\"]\n",
    );
    let key = env.setup().join("keys/restore.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    invalid(&env, &["dr.toml: keys.identity_file:", "chmod 600"]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(env.setup().join("keys/chunk-id.key")).unwrap();
    invalid(&env, &["dr.toml: keys.chunk_id_key_file:", "chunk-id.key"]);
}

#[test]
fn missing_config_unknown_policy_and_bad_arguments_exit_2() {
    let env = DrEnv::new();
    let out = std::process::Command::new(crate::harness::dr::bin())
        .args(["-c", "/nonexistent/dr.toml", "validate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dr.toml: cannot read"));
    let e = env.fails(&["backup", "--policy", "nope"], 2);
    assert!(e.contains("no policy `nope`"), "{e}");
    env.fails(&["backup"], 2);
    env.fails(&["restore", "--policy", "x", "--bogus"], 2);
    let again = std::process::Command::new(crate::harness::dr::bin())
        .args(["init", "--dir"])
        .arg(env.setup())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "init refuses to overwrite");
}

#[test]
fn help_has_examples() {
    for cmd in [
        "backup",
        "restore",
        "verify",
        "init",
        "snapshots",
        "validate",
        "keygen",
        "check",
        "replicate",
        "wal-push",
        "wal-fetch",
    ] {
        let out = std::process::Command::new(crate::harness::dr::bin())
            .args([cmd, "--help"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("Example"),
            "{cmd} --help:\n{text}"
        );
    }
}

#[test]
fn validate_prints_next_runs() {
    let env = DrEnv::new();
    env.policy("p", "source = { type = \"files\", path = \"/tmp\" }\ntargets = [\"local\"]\nschedule = \"30 1 * * 1\"\ntimezone = \"Europe/Berlin\"\n");
    let out = env.ok(&["validate"]);
    assert_eq!(out.matches(" 01:30:00 CET").count(), 3, "{out}");
}

#[test]
fn shipped_example_policies_validate() {
    let env = DrEnv::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            std::fs::copy(
                &p,
                env.setup().join("policies").join(p.file_name().unwrap()),
            )
            .unwrap();
            n += 1;
        }
    }
    assert!(n > 0);
    // The shipped group and drills, which name those policies, validate with them.
    for sub in ["groups", "restore-drills"] {
        let to = env.setup().join(sub);
        std::fs::create_dir_all(&to).unwrap();
        for e in
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_owned() + sub).unwrap()
        {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    let out = env.ok(&["validate"]);
    assert!(out.contains(&format!("{n} policies")), "{out}");
    assert!(
        out.contains("group app: pg-main, qdrant-main, redis-cache"),
        "{out}"
    );
    assert!(out.contains("drill app-weekly"), "{out}");
}

#[test]
fn retention_plan_names_the_rule_that_keeps_each_snapshot() {
    let env = DrEnv::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), b"x").unwrap();
    env.policy("p", &format!("source = {{ type = \"files\", path = \"{}\" }}\ntargets = [\"local\"]\n[retention]\nkeep_last = 2\ndaily = 0\n", data.display()));
    for _ in 0..3 {
        env.ok(&["backup", "--policy", "p"]);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let out = env.ok(&["retention", "plan", "--policy", "p"]);
    assert!(out.contains("3 snapshots, keep 2, forget 1"), "{out}");
    assert_eq!(out.matches("keep    keep_last").count(), 2, "{out}");
    let json = env.json(&["retention", "plan"]);
    assert_eq!(json["p"].as_array().unwrap().len(), 3);
}

/// A typo in one policy must not stop the others: `wal-push`/`wal-fetch` read only dr.toml and
/// their own policy; `backup`, `restore` and `snapshots` of a healthy policy warn and go on;
/// `validate` (and the daemon) still refuse the whole configuration.
#[test]
fn a_broken_unrelated_policy_does_not_stop_a_healthy_one() {
    let env = DrEnv::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), b"hello\n").unwrap();
    env.files_policy("app", &data, &["local"]);
    env.policy(
        "pg",
        "source = { type = \"postgres\", conninfo_env = \"NO_SUCH_DSN\", data_dir = \"/nonexistent\" }\ntargets = [\"local\"]\n",
    );
    env.policy(
        "typo",
        "source = { type = \"files\", path = \"/tmp\" }\ntargets = [\"local\"]\nschedule = \"61 * * * *\"\n",
    );
    let e = env.fails(&["validate"], 2);
    assert!(e.contains("policies/typo.toml: schedule:"), "{e}");
    let out = env.run(&["backup", "--policy", "app"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("typo.toml"),
        "the broken policy is named: {stderr}"
    );
    env.ok(&["snapshots", "--policy", "app"]);
    // A relative --target-dir, as an operator types it (its parent is the empty path).
    let out = env
        .cmd(&["restore", "--policy", "app", "--target-dir", "r"])
        .current_dir(env.path(""))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.path("r").is_dir());
    // A WAL segment (any bytes under a segment name) archives and comes back.
    let seg = env.path("000000010000000000000001");
    let bytes = crate::harness::tree::noise(3, 1 << 20);
    std::fs::write(&seg, &bytes).unwrap();
    env.ok(&["wal-push", "--policy", "pg", seg.to_str().unwrap()]);
    let back = env.path("fetched");
    env.ok(&[
        "wal-fetch",
        "--policy",
        "pg",
        "000000010000000000000001",
        back.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&back).unwrap(), bytes);
    // An error in the policy itself is still fatal.
    env.fails(&["backup", "--policy", "typo"], 2);
}
