//! Runs every ```` ```bash tested ```` block of RUNBOOK.md, in order, against a real
//! repository, with `dr` on PATH and the runbook's variables set.

use std::path::Path;

use crate::harness::dr::{DrEnv, bin};
use crate::harness::{free_port, postgres, tree};

/// The blocks of the runbook fenced as ```` ```bash <marker> ````.
pub(crate) fn tested_blocks(text: &str, marker: &str) -> Vec<String> {
    let open = format!("```bash {marker}");
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match (&mut cur, line.trim_end()) {
            (None, l) if l == open => cur = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn runbook_commands_work() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/RUNBOOK.md")).unwrap();
    let blocks = tested_blocks(&text, "tested");
    assert!(blocks.len() >= 4, "the runbook lost its tested blocks");
    let env = DrEnv::new();
    let data = env.path("data");
    tree::make(&data, 4);
    env.files_policy("app-files", &data, &["local"]);
    env.ok(&["backup", "--policy", "app-files"]);
    // A second snapshot, unchanged, for `diff latest~1 latest`.
    env.ok(&["backup", "--policy", "app-files"]);
    std::fs::write(
        env.setup().join("restore-drills/files-drill.toml"),
        "policy = \"app-files\"\n",
    )
    .unwrap();
    let restore_dir = env.path("restore");
    let partial = env.path("partial");
    let (html, signed) = (env.path("report.html"), env.path("report.signed"));
    let evidence = env.path("evidence");
    let (new_identity, after) = (env.path("restore-2027.key"), env.path("after-rotation"));
    run_blocks(
        &blocks,
        &[
            ("DR_CONFIG", env.config.to_str().unwrap()),
            ("POLICY", "app-files"),
            ("RESTORE_DIR", restore_dir.to_str().unwrap()),
            ("PARTIAL_DIR", partial.to_str().unwrap()),
            ("DRILL", "files-drill"),
            ("REPORT_HTML", html.to_str().unwrap()),
            ("REPORT_FILE", signed.to_str().unwrap()),
            ("EVIDENCE_DIR", evidence.to_str().unwrap()),
            ("NEW_IDENTITY", new_identity.to_str().unwrap()),
            ("ROTATED_DIR", after.to_str().unwrap()),
            (
                "IDENTITY_FILE",
                env.setup().join("keys/restore.key").to_str().unwrap(),
            ),
        ],
    );
    assert_eq!(
        tree::diff(&data, &after),
        Vec::<String>::new(),
        "restored with the new identity"
    );
    assert_eq!(tree::diff(&data, &restore_dir), Vec::<String>::new());
    let log = std::fs::read(data.join("nested/log.txt")).unwrap();
    assert_eq!(
        std::fs::read(partial.with_extension("log.txt")).unwrap(),
        log
    );
    assert_eq!(std::fs::read(partial.join("nested/log.txt")).unwrap(), log);
    assert!(!partial.join("nested/deeper/zeros.img").exists());
    assert!(!partial.join("random.bin").exists());
    assert!(std::fs::read_to_string(&html).unwrap().contains("PASSED"));
    let bundle = std::fs::read_to_string(evidence.join("bundle.json")).unwrap();
    assert!(
        bundle.contains("files-drill"),
        "the drill's report is in the bundle: {bundle}"
    );
    assert!(evidence.with_extension("tar.gz").is_file());
    assert!(env.ok(&["audit"]).contains("drill.run"));
}

pub(crate) fn run_blocks(blocks: &[String], vars: &[(&str, &str)]) {
    let path = format!(
        "{}:{}:{}",
        Path::new(bin()).parent().unwrap().display(),
        postgres::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (i, block) in blocks.iter().enumerate() {
        let out = std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", block])
            .env("PATH", &path)
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "RUNBOOK.md block {i} failed:\n{block}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn runbook_postgres_commands_work() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/RUNBOOK.md")).unwrap();
    let blocks = tested_blocks(&text, "tested-pg");
    assert!(!blocks.is_empty(), "the runbook lost its PostgreSQL blocks");
    let s = crate::postgres::setup("local");
    s.pg.psql("create table orders (id int primary key)");
    s.pg.psql("insert into orders select generate_series(1, 100)");
    // For "restore one database": `shop` with its own orders, and one to leave out.
    s.pg.psql("create database shop");
    s.pg.psql("create database crm");
    postgres::psql_in(
        &postgres::bin_dir(),
        s.pg.port,
        "shop",
        "create table orders as select generate_series(1, 42) id",
    )
    .unwrap();
    s.env.ok(&["backup", "--policy", "pg"]);
    s.pg.psql("insert into orders values (101)");
    let t = s.pg.psql("select clock_timestamp()");
    std::thread::sleep(std::time::Duration::from_millis(300));
    s.pg.psql("insert into orders values (102)");
    s.pg.switch_and_wait_archived();
    let dir = s.env.path("pg-restore");
    let port = free_port();
    let restored = postgres::Restored::new(dir.clone(), port);
    let (one_dir, one_port) = (s.env.path("one-db"), free_port());
    let one_db = postgres::Restored::new(one_dir.clone(), one_port);
    let (port, one_port) = (port.to_string(), one_port.to_string());
    let vars = [
        ("DR_CONFIG", s.env.config.to_str().unwrap()),
        ("POLICY", "pg"),
        ("TARGET_TIME", &t),
        ("PGDATA_RESTORE", dir.to_str().unwrap()),
        ("PG_PORT", &port),
        ("DB", "shop"),
        ("PGDATA_ONE_DB", one_dir.to_str().unwrap()),
        ("PG_PORT_ONE_DB", &one_port),
    ];
    // The point-in-time restore, one database, then the delta restore of the first copy to
    // the latest.
    let [pitr, one, delta] = blocks.as_slice() else {
        panic!("the runbook has {} PostgreSQL blocks, not 3", blocks.len())
    };
    run_blocks(std::slice::from_ref(pitr), &vars);
    assert_eq!(
        restored.psql("select count(*), max(id) from orders"),
        "101|101"
    );
    run_blocks(std::slice::from_ref(one), &vars);
    assert_eq!(
        one_db.psql("select string_agg(datname, ',' order by datname) from pg_database"),
        "postgres,shop,template0,template1"
    );
    run_blocks(std::slice::from_ref(delta), &vars);
    assert_eq!(
        restored.psql("select count(*), max(id) from orders"),
        "102|102"
    );
}

#[test]
fn runbook_redis_commands_work() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/RUNBOOK.md")).unwrap();
    let blocks = tested_blocks(&text, "tested-redis");
    assert!(!blocks.is_empty(), "the runbook lost its Redis blocks");
    let src = crate::harness::redis::Redis::start(true, None, &[]);
    let _: () = redis::cmd("SET")
        .arg("greeting")
        .arg("hello")
        .query(&mut src.conn())
        .unwrap();
    let env = DrEnv::new();
    env.policy("cache", &format!("source = {{ type = \"redis\", url = \"redis://127.0.0.1:{}\" }}\ntargets = [\"local\"]\n", src.port));
    env.ok(&["backup", "--policy", "cache"]);
    let dir = env.path("redis-restore");
    let port = free_port().to_string();
    run_blocks(
        &blocks,
        &[
            ("DR_CONFIG", env.config.to_str().unwrap()),
            ("POLICY", "cache"),
            ("RESTORE_DIR", dir.to_str().unwrap()),
            ("REDIS_PORT", &port),
        ],
    );
    assert!(dir.join("dump.rdb").is_file());
}

#[test]
fn runbook_region_commands_work_without_the_primary() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/RUNBOOK.md")).unwrap();
    let blocks = tested_blocks(&text, "tested-region");
    assert!(!blocks.is_empty(), "the runbook lost its region blocks");
    let mut env = DrEnv::new();
    let replica = env.path("region-b");
    env.add_storage(
        &format!(
            "\n[storage.region-b]\ntype = \"local\"\npath = \"{}\"\n",
            replica.display()
        ),
        vec![],
    );
    let data = env.path("data");
    tree::make(&data, 3);
    env.files_policy("app-files", &data, &["local", "region-b"]);
    env.ok(&["backup", "--policy", "app-files"]);
    env.ok(&["replicate", "--policy", "app-files"]);
    // The primary region is gone.
    std::fs::remove_dir_all(env.setup().join("repo")).unwrap();
    let restore_dir = env.path("restore");
    run_blocks(
        &blocks,
        &[
            ("DR_CONFIG", env.config.to_str().unwrap()),
            ("POLICY", "app-files"),
            ("REGION", "region-b"),
            ("RESTORE_DIR", restore_dir.to_str().unwrap()),
        ],
    );
    assert_eq!(tree::diff(&data, &restore_dir), Vec::<String>::new());
}
