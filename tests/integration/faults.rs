//! Backups, restores and verification through a proxy that injects S3 faults in front of real
//! Garage: retryable faults are retried and the results are exact; a store that keeps failing
//! gives a clear error naming the object, and no snapshot.

use std::sync::atomic::Ordering;

use crate::harness::dr::DrEnv;
use crate::harness::faults::{self, Faults};
use crate::harness::{S3Endpoint, garage, tree};

fn through(proxy: u16) -> S3Endpoint {
    let mut s3 = garage::shared().s3.clone();
    s3.endpoint = format!("http://127.0.0.1:{proxy}");
    s3
}

fn garage_port() -> u16 {
    garage::shared()
        .s3
        .endpoint
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn retryable_faults_are_retried_and_results_exact() {
    let (proxy, injected) = faults::start(
        garage_port(),
        Faults::Flaky {
            fail_every: 5,
            cut_every: 3,
        },
    );
    let s3 = through(proxy);
    let mut env = DrEnv::new();
    env.add_storage(
        &s3.storage_toml("flaky", &garage::shared().bucket("flaky")),
        s3.env("flaky"),
    );
    let data = env.path("data");
    tree::make(&data, 12);
    env.files_policy("f", &data, &["flaky"]);
    env.ok(&["backup", "--policy", "f"]);
    let out = env.path("out");
    env.ok(&[
        "restore",
        "--policy",
        "f",
        "--target-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(tree::diff(&data, &out), Vec::<String>::new());
    assert!(
        env.ok(&["verify", "--policy", "f", "--data"])
            .trim_end()
            .ends_with("OK")
    );
    let (errors, cuts) = (
        injected.errors.load(Ordering::SeqCst),
        injected.cuts.load(Ordering::SeqCst),
    );
    eprintln!(
        "fault proxy: {} requests, {errors} 503s, {cuts} cut responses; results exact",
        injected.requests.load(Ordering::SeqCst)
    );
    assert!(
        errors >= 3 && cuts >= 3,
        "the proxy injected too little to test anything ({errors} errors, {cuts} cuts)"
    );
}

#[test]
fn a_store_that_keeps_failing_gives_a_clear_error_and_no_snapshot() {
    let bucket = garage::shared().bucket("failing");
    let (proxy, injected) = faults::start(garage_port(), Faults::AlwaysFail("PUT"));
    let s3 = through(proxy);
    let mut env = DrEnv::new();
    env.add_storage(&s3.storage_toml("down", &bucket), s3.env("down"));
    let direct = garage::shared().s3.clone();
    env.add_storage(
        &direct.storage_toml("direct", &bucket),
        direct.env("direct"),
    );
    let data = env.path("data");
    tree::make(&data, 2);
    env.files_policy("f", &data, &["down"]);
    let e = env.fails(&["backup", "--policy", "f"], 1);
    assert!(
        e.contains("HTTP 500") && e.contains("InternalError") && e.contains("put of "),
        "{e}"
    );
    assert!(
        injected.errors.load(Ordering::SeqCst) >= 3,
        "no retries happened"
    );
    // Nothing was committed: the bucket, read directly, has no snapshot.
    env.files_policy("f", &data, &["direct"]);
    let listed = env.run(&["snapshots", "--policy", "f"]);
    let text = String::from_utf8_lossy(&listed.stdout).into_owned()
        + &String::from_utf8_lossy(&listed.stderr);
    assert!(
        text.contains("No snapshots") || text.contains("no dr repository"),
        "{text}"
    );
}

/// A PUT the store kept but whose answer was lost, and requests stalled past the timeout:
/// retried, and the results (backup, replication to the lossy store, restore, verify) exact.
#[test]
fn lost_answers_and_stalls_are_retried_without_losing_or_duplicating_data() {
    let (proxy, injected) = faults::start(
        garage_port(),
        Faults::Lossy {
            drop_put_every: 3,
            stall_every: 19,
            stall_ms: 1300,
        },
    );
    let s3 = through(proxy);
    let mut env = DrEnv::new();
    for name in ["lossy", "lossy-replica"] {
        let toml = s3
            .storage_toml(name, &garage::shared().bucket(name))
            .replace("timeout = \"20s\"", "timeout = \"1s\"")
            .replace("max_attempts = 3", "max_attempts = 5");
        env.add_storage(&toml, s3.env(name));
    }
    let data = env.path("data");
    tree::make(&data, 8);
    // Backups straight to the lossy store, and replication from a local primary into it.
    env.files_policy("f", &data, &["lossy"]);
    env.files_policy("g", &data, &["local", "lossy-replica"]);
    env.ok(&["backup", "--policy", "f"]);
    env.ok(&["backup", "--policy", "g"]);
    env.ok(&["replicate"]);
    for (policy, region) in [("f", "lossy"), ("g", "lossy-replica")] {
        let out = env.path(&format!("out-{policy}"));
        env.ok(&[
            "restore",
            "--policy",
            policy,
            "--region",
            region,
            "--target-dir",
            out.to_str().unwrap(),
        ]);
        assert_eq!(tree::diff(&data, &out), Vec::<String>::new());
        let v = env.ok(&["verify", "--policy", policy, "--region", region, "--data"]);
        assert!(v.trim_end().ends_with("OK"), "{v}");
    }
    let (dropped, stalls) = (
        injected.dropped.load(Ordering::SeqCst),
        injected.stalls.load(Ordering::SeqCst),
    );
    eprintln!(
        "fault proxy: {} requests, {dropped} stored PUTs with lost answers, {stalls} stalls; results exact",
        injected.requests.load(Ordering::SeqCst)
    );
    assert!(
        dropped >= 3 && stalls >= 1,
        "too little injected ({dropped} dropped, {stalls} stalls)"
    );
}

/// The store is down for 30 s in the middle of a burst of WAL: `wal-push` fails (PostgreSQL
/// keeps the segments and retries), nothing is reported archived that is not stored, and once
/// the store is back archiving catches up; a point-in-time recovery from the store then has
/// every row.
#[test]
fn wal_archiving_catches_up_after_the_store_was_down() {
    static DOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let (proxy, injected) = faults::start(garage_port(), Faults::Outage(&DOWN));
    let s3 = through(proxy);
    let mut s = crate::postgres::setup("local");
    let creds = s3.env("down");
    s.env.add_storage(
        &s3.storage_toml("down", &garage::shared().bucket("down")),
        creds.clone(),
    );
    let policy = s.env.setup().join("policies/pg.toml");
    let text = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("targets = [\"local\"]", "targets = [\"down\"]");
    std::fs::write(&policy, text).unwrap();
    // PostgreSQL's archiver does not have the test's environment: the credentials go into
    // the command.
    let env: Vec<String> = creds.iter().map(|(k, v)| format!("{k}={v}")).collect();
    s.pg.psql(&format!(
        "alter system set archive_command = '{} {} -c {} wal-push --policy pg %p'",
        env.join(" "),
        crate::harness::dr::bin(),
        s.env.config.display()
    ));
    s.pg.psql("select pg_reload_conf()");
    s.pg.psql("create table t (id int primary key, filler text)");
    s.env.ok(&["backup", "--policy", "pg"]);
    s.pg.switch_and_wait_archived();
    DOWN.store(true, Ordering::SeqCst);
    for i in 0..10 {
        s.pg.psql(&format!(
            "insert into t select g, repeat('x', 500) from generate_series({}, {}) g",
            i * 1000,
            i * 1000 + 999
        ));
        s.pg.psql("select pg_switch_wal()");
    }
    std::thread::sleep(std::time::Duration::from_secs(30));
    let failed: u64 =
        s.pg.psql("select failed_count from pg_stat_archiver")
            .parse()
            .unwrap();
    assert!(
        failed > 0,
        "no archive call failed: the test is not testing"
    );
    assert!(injected.errors.load(Ordering::SeqCst) > 0);
    DOWN.store(false, Ordering::SeqCst);
    s.pg.switch_and_wait_archived();
    let dir = s.env.path("after-outage");
    let port = crate::harness::free_port();
    let out = s.env.ok(&[
        "restore",
        "--policy",
        "pg",
        "--target-dir",
        dir.to_str().unwrap(),
        "--latest",
        "--start",
        "--port",
        &port.to_string(),
    ]);
    assert!(out.contains("recovered and promoted"), "{out}");
    let r = crate::harness::postgres::Restored::new(dir, port);
    assert_eq!(r.psql("select count(*) from t"), "10000");
}
