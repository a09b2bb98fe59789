//! Secrets never appear in output: every configured secret is grepped for in the full, most
//! verbose logs of a backup, restore, verify, check and a failing backup.

use std::os::unix::fs::PermissionsExt;

use crate::harness::dr::DrEnv;
use crate::harness::garage;
use crate::harness::redis::Redis;

#[test]
fn no_secret_in_any_output() {
    let g = garage::shared();
    let redis_pw = "redis-Pa55-zq81";
    let src = Redis::start(true, Some(redis_pw), &[]);
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut src.conn())
        .unwrap();
    let mut env = DrEnv::new();
    env.add_storage(
        &g.s3.storage_toml("eu", &g.bucket("secrets")),
        g.s3.env("eu"),
    );
    let pw = env.setup().join("redis.pass");
    std::fs::write(&pw, redis_pw).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.policy("cache", &format!("source = {{ type = \"redis\", url = \"redis://127.0.0.1:{}\", password_file = \"redis.pass\" }}\ntargets = [\"eu\"]\n", src.port));

    let identity = std::fs::read_to_string(env.setup().join("keys/restore.key")).unwrap();
    let identity = identity
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_owned();
    let chunk_key = std::fs::read_to_string(env.setup().join("keys/chunk-id.key"))
        .unwrap()
        .trim()
        .to_owned();
    let secrets = [
        redis_pw.to_owned(),
        g.s3.secret.clone(),
        identity,
        chunk_key,
    ];

    let out_dir = env.path("out");
    let mut transcript = String::new();
    for args in [
        vec!["-vv", "check"],
        vec!["-vv", "backup", "--policy", "cache"],
        vec!["-vv", "snapshots", "--policy", "cache"],
        vec!["-vv", "verify", "--policy", "cache", "--data"],
        vec![
            "-vv",
            "restore",
            "--policy",
            "cache",
            "--target-dir",
            out_dir.to_str().unwrap(),
        ],
        vec![
            "-vv",
            "--log-format",
            "json",
            "backup",
            "--policy",
            "cache",
            "--json",
        ],
    ] {
        let o = env.run(&args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        transcript.push_str(&String::from_utf8_lossy(&o.stdout));
        transcript.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    // A failing run prints errors too.
    std::fs::write(&pw, "not-the-password").unwrap();
    let o = env.run(&["-vv", "backup", "--policy", "cache"]);
    assert!(!o.status.success());
    transcript.push_str(&String::from_utf8_lossy(&o.stderr));
    assert!(
        transcript.len() > 1000,
        "the transcript is suspiciously short"
    );
    for s in &secrets {
        assert!(
            !transcript.contains(s.as_str()),
            "a secret appeared in the output"
        );
    }
    assert!(!transcript.contains("not-the-password"));
}
