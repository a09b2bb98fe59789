//! Restore drills end to end against real servers: a PostgreSQL drill from a Garage replica
//! that passes, then fails for each reason it should (missing pack, missing WAL, an unmet SQL
//! expectation, an RTO over a tiny objective), each with the reason in its signed report; a
//! Redis drill; signature verification of stored reports.

use std::path::PathBuf;

use crate::harness::dr::DrEnv;
use crate::harness::garage;
use crate::harness::redis::Redis;
use crate::postgres::setup;

fn drill(env: &DrEnv, name: &str, text: &str) {
    let dir = env.setup().join("restore-drills");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
}

fn run(env: &DrEnv, name: &str) -> (serde_json::Value, Option<i32>) {
    let out = env.run(&["drill", "run", name, "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("drill {name}: {e}\nstderr: {stderr}"));
    (v, out.status.code())
}

fn failed_because(env: &DrEnv, name: &str, needle: &str) -> serde_json::Value {
    let (r, code) = run(env, name);
    assert_eq!(code, Some(1), "drill {name} should fail: {r:#}");
    assert_eq!(r["verdict"], "fail");
    let reasons = r["reasons"].to_string();
    assert!(
        reasons.contains(needle),
        "drill {name}: `{needle}` not in {reasons}"
    );
    r
}

fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn postgres_drill_passes_and_fails_for_the_right_reasons() {
    let mut s = setup("local");
    let g = garage::shared();
    s.env.add_storage(
        &g.s3.storage_toml("replica", &g.bucket("drills")),
        g.s3.env("replica"),
    );
    let policy = s.env.setup().join("policies/pg.toml");
    let text = std::fs::read_to_string(&policy).unwrap().replace(
        "targets = [\"local\"]",
        "targets = [\"local\", \"replica\"]\nrpo = \"1h\"\nrto = \"10m\"",
    );
    std::fs::write(&policy, text).unwrap();

    s.pg.psql(
        "create table orders (id int primary key, created_at timestamptz not null default now())",
    );
    s.pg.psql("insert into orders select g from generate_series(1, 1500) g");
    s.env.ok(&["backup", "--policy", "pg"]);
    s.pg.psql("insert into orders select g from generate_series(1501, 1600) g");
    s.pg.switch_and_wait_archived();
    s.env.ok(&["replicate"]);

    let checks = "[[check]]\nname = \"orders populated\"\nsql = \"select count(*) from orders\"\nexpect = \">= 1000\"\n\
                  [[check]]\nname = \"orders fresh\"\nsql = \"select max(created_at) from orders\"\nexpect_recent = \"1h\"\n";
    drill(&s.env, "nightly", &format!("policy = \"pg\"\n{checks}"));
    let (r, code) = run(&s.env, "nightly");
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["verdict"], "pass");
    assert_eq!(r["region"], "replica", "the default region is the replica");
    assert!(r["rto"]["seconds"].as_f64().unwrap() > 0.0);
    assert!(r["rto"]["met"].as_bool().unwrap());
    assert!(r["rpo"]["seconds"].as_f64().unwrap() < 3600.0, "{r:#}");
    assert!(
        r["timings"]["restore"].as_f64().is_some() && r["timings"]["recovery"].as_f64().is_some()
    );
    let checks_run = r["checks"].as_array().unwrap();
    assert_eq!(checks_run.len(), 5, "three built-in, two configured: {r:#}");
    assert!(checks_run.iter().all(|c| c["passed"] == true), "{r:#}");
    assert!(
        checks_run
            .iter()
            .any(|c| c["name"] == "orders populated" && c["actual"] == "1600")
    );
    // The sandbox is gone and the source cluster is untouched.
    assert_eq!(s.pg.psql("select count(*) from orders"), "1600");
    let tmp_left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("dr-drill-nightly-")
        })
        .collect();
    assert!(tmp_left.is_empty(), "sandbox left behind: {tmp_left:?}");

    // The stored report verifies; a changed copy does not.
    let signed = s.env.path("report.signed");
    let raw = s
        .env
        .cmd(&["drill", "show", r["id"].as_str().unwrap(), "--raw"])
        .output()
        .unwrap();
    std::fs::write(&signed, &raw.stdout).unwrap();
    let ok = s
        .env
        .ok(&["drill", "verify-report", signed.to_str().unwrap()]);
    assert!(ok.contains("signature valid"), "{ok}");
    let tampered = String::from_utf8(raw.stdout)
        .unwrap()
        .replacen("\"1600\"", "\"9999\"", 1);
    std::fs::write(&signed, tampered).unwrap();
    let bad = s
        .env
        .fails(&["drill", "verify-report", signed.to_str().unwrap()], 1);
    assert!(bad.contains("altered after signing"), "{bad}");
    // `DR_EXAMPLE_REPORT=docs/drill-report.example.json` refreshes the documented example.
    if let Ok(p) = std::env::var("DR_EXAMPLE_REPORT") {
        std::fs::write(p, serde_json::to_string_pretty(&r).unwrap() + "\n").unwrap();
    }
    let html = s.env.ok(&["drill", "show", "latest", "--html"]);
    assert!(html.contains("PASSED") && html.contains("orders populated"));
    // Who started it, which definition ran, and that it restored from a replica.
    let me = crate::harness::os_user_name();
    assert_eq!(r["trigger"]["by"], "cli", "{r:#}");
    assert_eq!(r["trigger"]["actor"], me.as_str());
    assert_eq!(r["region_role"], "replica");
    assert_eq!(r["definition_sha256"].as_str().map(str::len), Some(64));
    assert!(
        html.contains("on the command line") && html.contains("SHA-256"),
        "{html}"
    );
    assert!(!html.contains("the policy's primary storage"), "{html}");

    // An unmet expectation.
    drill(
        &s.env,
        "too-many",
        "policy = \"pg\"\nfrom_region = \"local\"\n[[check]]\nsql = \"select count(*) from orders\"\nexpect = \">= 100000\"\n",
    );
    failed_because(&s.env, "too-many", "expected value >= 100000, got 1600");

    // RTO over a tiny objective (a slow check makes sure it takes longer than a second).
    drill(
        &s.env,
        "impatient",
        "policy = \"pg\"\nfrom_region = \"local\"\nrto = \"1s\"\n[[check]]\nsql = \"select 1 from pg_sleep(1.2)\"\nexpect = \"1\"\n",
    );
    let r = failed_because(&s.env, "impatient", "RTO");
    assert!(r["rto"]["seconds"].as_f64().unwrap() > 1.0);
    assert!(!r["rto"]["met"].as_bool().unwrap());

    // A pack missing from the region restored from: named in the report.
    drill(
        &s.env,
        "local",
        "policy = \"pg\"\nfrom_region = \"local\"\n",
    );
    let repo = s.env.setup().join("repo");
    let pack = files_under(&repo.join("packs"))[0].clone();
    let aside = s.env.path("pack-aside");
    std::fs::rename(&pack, &aside).unwrap();
    let name = pack.file_name().unwrap().to_string_lossy().to_string();
    failed_because(&s.env, "local", &name[..16]);
    std::fs::rename(&aside, &pack).unwrap();

    // A WAL segment missing: the gap is named before anything is restored.
    let wal: Vec<PathBuf> = files_under(&repo.join("wal/pg"))
        .into_iter()
        .filter(|p| p.file_name().unwrap().len() == 24)
        .collect();
    let victim = wal[wal.len() - 2].clone();
    std::fs::rename(&victim, &aside).unwrap();
    failed_because(&s.env, "local", "WAL");
    std::fs::rename(&aside, &victim).unwrap();
    let (r, code) = run(&s.env, "local");
    assert_eq!(code, Some(0), "whole again: {r:#}");

    // Every drill left a signed report; the audit log has each run.
    let list = s.env.json(&["drill", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 4, "{list:#}");
    let audit = s.env.ok(&["audit"]);
    assert!(audit.matches("drill.run").count() >= 6, "{audit}");
}

#[test]
fn redis_drill_checks_keys_and_commands() {
    let src = Redis::start(true, None, &[]);
    let mut c = src.conn();
    for i in 0..500 {
        let _: () = redis::cmd("SET")
            .arg(format!("k:{i}"))
            .arg(i)
            .query(&mut c)
            .unwrap();
    }
    let _: () = redis::cmd("SET")
        .arg("config:version")
        .arg("42")
        .query(&mut c)
        .unwrap();
    let env = DrEnv::new();
    env.policy(
        "cache",
        &format!("source = {{ type = \"redis\", url = \"redis://127.0.0.1:{}\" }}\ntargets = [\"local\"]\nrpo = \"1h\"\n", src.port),
    );
    env.ok(&["backup", "--policy", "cache"]);
    drill(
        &env,
        "cache-weekly",
        "policy = \"cache\"\n[[check]]\nredis = \"GET config:version\"\nexpect = \"= 42\"\n[[check]]\nname = \"dbsize\"\nredis = \"DBSIZE\"\nexpect = \"= 501\"\n",
    );
    let (r, code) = run(&env, "cache-weekly");
    assert_eq!(code, Some(0), "{r:#}");
    let names: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "data restored and verified",
            "key count matches the backup",
            "GET config:version",
            "dbsize",
            "repository objects present and intact"
        ]
    );
    assert_eq!(r["region"], "local");
    drill(
        &env,
        "cache-wrong",
        "policy = \"cache\"\n[[check]]\nredis = \"GET config:version\"\nexpect = \"= 43\"\n",
    );
    failed_because(&env, "cache-wrong", "expected value = 43, got 42");
}

/// Every kind of pack damage makes a drill fail, naming the pack, instead of restoring wrong
/// data: a flipped bit, a truncation, two packs swapped, a pack deleted.
#[test]
fn drills_fail_on_every_kind_of_pack_damage() {
    let env = DrEnv::new();
    let data = env.path("data");
    crate::harness::tree::make(&data, 2);
    env.files_policy("app", &data, &["local"]);
    env.ok(&["backup", "--policy", "app"]);
    std::fs::write(
        data.join("more.bin"),
        crate::harness::tree::noise(77, 2 << 20),
    )
    .unwrap();
    env.ok(&["backup", "--policy", "app"]);
    drill(&env, "d", "policy = \"app\"\nrpo = \"1h\"\n");
    let (r, code) = run(&env, "d");
    assert_eq!(code, Some(0), "{r:#}");
    let packs = files_under(&env.setup().join("repo/packs"));
    assert!(packs.len() >= 2, "{packs:?}");
    let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy()[..16].to_owned();
    let keep = |p: &PathBuf| std::fs::read(p).unwrap();
    let (a, b) = (packs[0].clone(), packs[1].clone());
    let (orig_a, orig_b) = (keep(&a), keep(&b));
    let restore = || {
        std::fs::write(&a, &orig_a).unwrap();
        std::fs::write(&b, &orig_b).unwrap();
    };
    let damages: Vec<(&str, Box<dyn Fn()>)> = vec![
        (
            "bit flip",
            Box::new(|| {
                let mut x = orig_a.clone();
                let mid = x.len() / 2;
                x[mid] ^= 0x10;
                std::fs::write(&a, x).unwrap();
            }),
        ),
        (
            "truncation",
            Box::new(|| std::fs::write(&a, &orig_a[..orig_a.len() - 100]).unwrap()),
        ),
        (
            "swap",
            Box::new(|| {
                std::fs::write(&a, &orig_b).unwrap();
                std::fs::write(&b, &orig_a).unwrap();
            }),
        ),
        ("deletion", Box::new(|| std::fs::remove_file(&a).unwrap())),
    ];
    for (what, damage) in damages {
        damage();
        let (r, code) = run(&env, "d");
        assert_eq!(code, Some(1), "{what}: {r:#}");
        let reasons = r["reasons"].to_string();
        assert!(
            reasons.contains(&name(&a)) || reasons.contains(&name(&b)),
            "{what}: the failure names neither pack: {reasons}"
        );
        restore();
    }
    let (r, code) = run(&env, "d");
    assert_eq!(code, Some(0), "whole again: {r:#}");
}
