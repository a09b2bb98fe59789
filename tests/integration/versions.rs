//! Issue 21, item 1: every supported PostgreSQL major, not only Debian's 15. For 14, 16, 17 and
//! 18 (server binaries from `scripts/pg-versions`, named by `DR_TEST_PG_MATRIX`), in `local`
//! mode: a full backup, an incremental after writes, PITR to a time and to an LSN asserted row
//! by row, and a drill, each restored cluster started with its own major's binaries through
//! `[sandbox] postgres` of dr.toml. Without that mapping (and no such binaries elsewhere) a
//! restore that starts the server is refused before anything is written, naming what to install.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::harness::dr::{DrEnv, bin};
use crate::harness::postgres::{Postgres, give_setup_to_postgres};

/// The `bin` directory of `major` from `DR_TEST_PG_MATRIX` (`14=/dir 16=/dir …`).
fn bin_of(major: i32) -> PathBuf {
    let matrix = std::env::var("DR_TEST_PG_MATRIX").unwrap_or_else(|_| {
        panic!(
            "DR_TEST_PG_MATRIX is not set: `scripts/pg-versions` installs PostgreSQL 14, 16, 17 and 18 and prints it (scripts/test does both)"
        )
    });
    matrix
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.parse() == Ok(major))
        .map(|(_, v)| PathBuf::from(v))
        .unwrap_or_else(|| panic!("DR_TEST_PG_MATRIX has no {major}: {matrix}"))
}

fn one_major(major: i32) {
    let pg_bin = bin_of(major);
    let mut env = DrEnv::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let archive = format!(
        "{} -c {} wal-push --policy pg %p",
        bin(),
        env.config.display()
    );
    let pg = Postgres::start_with(&pg_bin, Some(&archive));
    let version = pg.psql("select current_setting('server_version_num')::int / 10000");
    assert_eq!(version, major.to_string());
    let conninfo = env.setup().join("pg.conninfo");
    std::fs::write(&conninfo, pg.conninfo()).unwrap();
    std::fs::set_permissions(&conninfo, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.policy(
        "pg",
        &format!(
            "source = {{ type = \"postgres\", conninfo_file = \"pg.conninfo\", data_dir = \"{}\", mode = \"local\" }}\ntargets = [\"local\"]\n",
            pg.data.display()
        ),
    );
    let sandbox = format!(
        "\n[sandbox]\npostgres = {{ {major} = \"{}\" }}\n",
        pg_bin.display()
    );
    env.add_storage(&sandbox, vec![]);
    give_setup_to_postgres(&env.setup());

    pg.psql("create table t (id int primary key, filler text)");
    pg.psql("insert into t select g, md5(g::text) from generate_series(1, 5000) g");
    let full = env.json(&["backup", "--policy", "pg"]);
    pg.psql("insert into t values (5001, 'a'), (5002, 'b'), (5003, 'c')");
    pg.psql("update t set filler = 'changed' where id <= 20");
    let incremental = env.json(&["backup", "--policy", "pg"]);
    // Every page of both backups was checked against its checksum (initdb --data-checksums).
    for b in [&full, &incremental] {
        assert_eq!(
            b["bad_pages"],
            serde_json::json!([]),
            "PostgreSQL {major}: {b}"
        );
    }
    assert!(
        incremental["bytes_stored"].as_u64().unwrap() * 10 < full["bytes_stored"].as_u64().unwrap(),
        "PostgreSQL {major}: the second backup stores only what changed: {incremental} after {full}"
    );
    pg.psql("insert into t values (5004, 'd')");
    let lsn = pg.psql("select pg_current_wal_insert_lsn()");
    pg.psql("insert into t values (5005, 'e')");
    let t = pg.psql("select clock_timestamp()");
    std::thread::sleep(std::time::Duration::from_millis(300));
    pg.psql("insert into t values (5006, 'f'), (5007, 'g')");
    pg.switch_and_wait_archived();

    for (name, target, rows) in [
        ("by-lsn", vec!["--lsn", lsn.as_str()], "5004|5004|20"),
        (
            "by-time",
            vec!["--point-in-time", t.as_str()],
            "5005|5005|20",
        ),
        ("latest", vec![], "5007|5007|20"),
    ] {
        let r =
            crate::postgres::restore_and_start(&env, &pg_bin, &format!("{major}-{name}"), &target);
        assert_eq!(
            r.psql("select count(*), max(id), count(*) filter (where filler = 'changed') from t"),
            rows,
            "PostgreSQL {major}, restored {name}"
        );
        assert_eq!(
            r.psql("select current_setting('server_version_num')::int / 10000"),
            major.to_string()
        );
    }

    std::fs::write(
        env.setup().join("restore-drills/pg-drill.toml"),
        "policy = \"pg\"\nfrom_region = \"local\"\n[[check]]\nname = \"rows\"\nsql = \"select count(*) from t\"\nexpect = \">= 5007\"\n",
    )
    .unwrap();
    let out = env.run(&["drill", "run", "pg-drill", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(
        report["verdict"], "pass",
        "PostgreSQL {major} drill: {report:#}"
    );
    let sandbox_version = report["versions"]["postgresql (sandbox)"].as_str().unwrap();
    assert!(
        sandbox_version.starts_with(&format!("{major}.")),
        "{sandbox_version}"
    );

    // Without the mapping (and no PostgreSQL `major` in Debian's layout), `--start` is refused
    // with what to install.
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, text.replace(&sandbox, "")).unwrap();
    let dir = env.path("unmapped");
    let said = env.fails(
        &[
            "restore",
            "--policy",
            "pg",
            "--target-dir",
            dir.to_str().unwrap(),
            "--start",
        ],
        2,
    );
    assert!(
        said.contains(&format!("pg_ctl of PostgreSQL {major}")),
        "{said}"
    );
    assert!(
        said.contains(&format!("[sandbox] postgres = {{ {major} = \"DIR\" }}")),
        "{said}"
    );
    assert!(
        !dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none(),
        "nothing written before the refusal"
    );
}

#[test]
fn postgres_14_backs_up_and_recovers_exactly() {
    one_major(14);
}

#[test]
fn postgres_16_backs_up_and_recovers_exactly() {
    one_major(16);
}

#[test]
fn postgres_17_backs_up_and_recovers_exactly() {
    one_major(17);
}

#[test]
fn postgres_18_backs_up_and_recovers_exactly() {
    one_major(18);
}
