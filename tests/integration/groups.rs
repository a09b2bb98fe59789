//! Application groups against real PostgreSQL and Redis written together by a test
//! "application" (each order row in PostgreSQL has its `order:<id>` key in Redis): group
//! backups, restores of the whole group to a time between them and to a run, each store
//! exactly at its point with the skew reported, and a group refused before writing when a
//! member is too far from the point.

use redis::Commands;

use crate::harness::postgres::Restored;
use crate::harness::redis::{Redis, conn_at};
use crate::postgres::{PgSetup, setup};

/// PostgreSQL policy `pg`, Redis policy `cache`, group `app` of both (`max_skew` 1m) and
/// group `tight` (`max_skew` 1s).
pub(crate) fn app() -> (PgSetup, Redis) {
    let s = setup("local");
    let cache = Redis::start(false, None, &[]);
    s.env.policy(
        "cache",
        &format!(
            "source = {{ type = \"redis\", url = \"redis://127.0.0.1:{}\" }}\ntargets = [\"local\"]\n",
            cache.port
        ),
    );
    let groups = s.env.setup().join("groups");
    std::fs::create_dir_all(&groups).unwrap();
    std::fs::write(
        groups.join("app.toml"),
        "members = [\"pg\", \"cache\"]\nmax_skew = \"1m\"\n\
         [[check]]\nname = \"every order has its key\"\n\
         left = { policy = \"pg\", sql = \"select count(*) from orders\" }\n\
         right = { policy = \"cache\", redis = \"DBSIZE\" }\n",
    )
    .unwrap();
    std::fs::write(
        groups.join("tight.toml"),
        "members = [\"pg\", \"cache\"]\nmax_skew = \"1s\"\n",
    )
    .unwrap();
    s.pg.psql("create table orders (id int primary key)");
    (s, cache)
}

/// Orders `from..=to`: a row, then its key.
pub(crate) fn write(s: &PgSetup, cache: &Redis, from: i64, to: i64) {
    s.pg.psql(&format!(
        "insert into orders select g from generate_series({from}, {to}) g"
    ));
    let mut c = cache.conn();
    for i in from..=to {
        let _: () = c.set(format!("order:{i}"), i).unwrap();
    }
}

/// The port after `marker` in `out` (`… 127.0.0.1:PORT …`).
fn port_after(out: &str, marker: &str) -> u16 {
    let at = out
        .find(marker)
        .unwrap_or_else(|| panic!("`{marker}` in {out}"));
    let rest = &out[at + marker.len()..];
    rest[rest.find("127.0.0.1:").unwrap() + 10..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// The skew the plan printed for `member`.
fn skew(out: &str, member: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{member} (")))
        .unwrap_or_else(|| panic!("no plan line for {member}: {out}"));
    line.rsplit("skew ")
        .next()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap()
}

/// `dr restore --group … --start`; returns the restored PostgreSQL and the Redis key count.
fn restore_group(s: &PgSetup, name: &str, target: &[&str]) -> (Restored, i64, String) {
    let dir = s.env.path(name);
    let pg_dir = target
        .iter()
        .position(|a| *a == "--targets")
        .map_or_else(|| dir.join("pg"), |_| s.env.path(&format!("{name}-pg")));
    let mut args = vec![
        "restore",
        "--group",
        "app",
        "--target-dir",
        dir.to_str().unwrap(),
        "--start",
    ];
    args.extend(target);
    let out = s.env.ok(&args);
    let pg = Restored::new(pg_dir, port_after(&out, "recovered and promoted"));
    let mut r = conn_at(port_after(&out, "running on"));
    let keys: i64 = redis::cmd("DBSIZE").query(&mut r).unwrap();
    let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").arg("NOSAVE").query(&mut r);
    (pg, keys, out)
}

#[test]
fn a_group_restores_to_a_time_and_to_a_run_each_store_at_its_point() {
    let (s, cache) = app();
    s.env.ok(&["backup", "--policy", "pg"]);
    write(&s, &cache, 1, 100);
    let run1 = s.env.ok(&["backup", "--group", "app"]);
    assert!(run1.contains("group app run "), "{run1}");
    assert!(run1.contains("restore point dr-group-app-"), "{run1}");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    write(&s, &cache, 101, 150);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let between = chrono::Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(300));
    write(&s, &cache, 151, 200);
    s.env.ok(&["backup", "--group", "app"]);
    s.pg.switch_and_wait_archived();
    let t = between.to_rfc3339();

    // To a time between the runs: PostgreSQL exactly there, Redis at run 1's snapshot.
    let (pg, keys, out) = restore_group(&s, "at-time", &["--point-in-time", &t]);
    assert_eq!(
        pg.psql("select count(*), max(id) from orders"),
        "150|150",
        "{out}"
    );
    assert_eq!(keys, 100, "{out}");
    assert_eq!(skew(&out, "pg"), 0.0, "{out}");
    // Redis's snapshot is run 1's, and the skew is the distance from it to the time.
    let run1_snapshot = run1
        .lines()
        .find(|l| l.trim_start().starts_with("cache (redis): snapshot "))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or_else(|| panic!("{run1}"));
    assert!(out.contains(&format!("snapshot {run1_snapshot}")), "{out}");
    let taken = chrono::NaiveDateTime::parse_from_str(&run1_snapshot[..19], "%Y%m%dT%H%M%S%.3f")
        .unwrap()
        .and_utc();
    let want = (between - taken).num_milliseconds() as f64 / 1000.0;
    assert!(
        (skew(&out, "cache") - want).abs() < 0.11,
        "skew {want:.2}s expected: {out}"
    );
    assert!(out.contains("group app restored"), "{out}");
    drop(pg);

    // To the newest run: PostgreSQL to its restore point, Redis to its snapshot; PostgreSQL
    // where a targets file says, Redis under --target-dir.
    let targets = s.env.path("targets.toml");
    let pg_dir = s.env.path("at-run-pg");
    std::fs::write(
        &targets,
        format!("[pg]\ntarget_dir = \"{}\"\n", pg_dir.display()),
    )
    .unwrap();
    let (pg, keys, out) = restore_group(
        &s,
        "at-run",
        &["--run", "latest", "--targets", targets.to_str().unwrap()],
    );
    assert!(pg_dir.join("PG_VERSION").is_file() && s.env.path("at-run/cache").is_dir());
    assert_eq!(pg.psql("select count(*) from orders"), "200", "{out}");
    assert_eq!(keys, 200, "{out}");
    assert!(
        skew(&out, "cache") < 1.0,
        "one run's points are close: {out}"
    );
    drop(pg);

    // --json: the plan and each member's result, as documented.
    let dry = s.env.json(&[
        "restore",
        "--group",
        "app",
        "--point-in-time",
        &t,
        "--target-dir",
        s.env.path("json-dry").to_str().unwrap(),
        "--dry-run",
    ]);
    crate::interfaces::conforms("restore-group", &dry);
    assert_eq!(dry["plan"]["members"][0]["skew_seconds"], 0.0, "{dry:#}");
    assert_eq!(dry["members"].as_array().unwrap().len(), 2, "{dry:#}");
    assert!(!s.env.path("json-dry").exists());

    // A group allowing 1 s: refused before anything is written, every point named.
    let refused = s.env.path("refused");
    for dry_run in [true, false] {
        let mut args = vec!["restore", "--group", "tight", "--point-in-time", &t];
        args.extend(["--target-dir", refused.to_str().unwrap()]);
        if dry_run {
            args.push("--dry-run");
        }
        let err = s.env.fails(&args, 2);
        assert!(
            err.contains("cache is") && err.contains("from the group's point"),
            "{err}"
        );
        assert!(
            err.contains("nothing was written") && err.contains("pg: exactly"),
            "{err}"
        );
        assert!(err.contains("max_skew 1s"), "{err}");
    }
    assert!(!refused.exists());

    // RUNBOOK: "Recover the whole application to a point in time".
    let runbook =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/RUNBOOK.md")).unwrap();
    let blocks = crate::runbook::tested_blocks(&runbook, "tested-group");
    assert!(!blocks.is_empty(), "the runbook lost its group block");
    let app_dir = s.env.path("runbook-app");
    crate::runbook::run_blocks(
        &blocks,
        &[
            ("DR_CONFIG", s.env.config.to_str().unwrap()),
            ("GROUP", "app"),
            ("TARGET_TIME", &t),
            ("APP_RESTORE_DIR", app_dir.to_str().unwrap()),
        ],
    );
    assert!(app_dir.join("pg/PG_VERSION").is_file());
    assert!(app_dir.join("pg/recovery.signal").is_file());
    assert!(app_dir.join("cache/dump.rdb").is_file());

    // `dr info` shows the group and its newest run.
    let info = s.env.json(&["info"]);
    crate::interfaces::conforms("info", &info);
    let g = &info["groups"][0];
    assert_eq!(
        (g["id"].as_str(), g["runs"].as_u64()),
        (Some("app"), Some(2)),
        "{info:#}"
    );
    assert!(
        g["last_run"]["skew_seconds"].as_f64().unwrap() < 1.0,
        "{info:#}"
    );
    assert!(s.env.ok(&["info"]).contains("group app: pg, cache"));

    // Validation names the group and its members; a bad member is an error with its key.
    let v = s.env.ok(&["validate"]);
    assert!(v.contains("group app: pg, cache"), "{v}");
    std::fs::write(
        s.env.setup().join("groups/bad.toml"),
        "members = [\"pg\", \"nope\", \"pg\"]\n",
    )
    .unwrap();
    let err = s.env.fails(&["validate"], 2);
    assert!(
        err.contains("members[1]") && err.contains("no policy `nope`"),
        "{err}"
    );
    assert!(
        err.contains("members[2]") && err.contains("listed twice"),
        "{err}"
    );
}

#[test]
fn a_group_drill_restores_every_member_to_one_point_and_runs_cross_store_checks() {
    let (s, cache) = app();
    s.env.ok(&["backup", "--policy", "pg"]);
    write(&s, &cache, 1, 300);
    s.env.ok(&["backup", "--group", "app"]);
    s.pg.switch_and_wait_archived();
    std::fs::write(
        s.env.setup().join("restore-drills/app-drill.toml"),
        "group = \"app\"\nrpo = \"1h\"\n\
         [[check]]\nmember = \"pg\"\nname = \"orders\"\nsql = \"select count(*) from orders\"\nexpect = \">= 300\"\n\
         [[check]]\nmember = \"cache\"\nname = \"an order's key\"\nredis = \"GET order:300\"\nexpect = \"300\"\n",
    )
    .unwrap();
    let out = s.env.run(&["drill", "run", "app-drill", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["verdict"], "pass", "{r:#}");
    assert_eq!(r["group"], "app");
    assert_eq!(r["source"], "group");
    let members = r["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{r:#}");
    assert!(members.iter().all(|m| m["passed"] == true), "{r:#}");
    let checks = r["checks"].as_array().unwrap();
    let cross = checks
        .iter()
        .find(|c| c["kind"] == "cross-store")
        .unwrap_or_else(|| panic!("{r:#}"));
    assert_eq!(cross["passed"], true);
    assert!(
        cross["actual"].as_str().unwrap().starts_with("300 and 300"),
        "{cross}"
    );
    for name in [
        "pg: orders",
        "cache: an order's key",
        "pg: repository objects present and intact",
        "cache: repository objects present and intact",
    ] {
        assert!(
            checks
                .iter()
                .any(|c| c["name"] == name && c["passed"] == true),
            "{name}: {r:#}"
        );
    }
    assert!(r["rto"]["seconds"].as_f64().unwrap() > 0.0);
    assert!(r["rpo"]["seconds"].as_f64().unwrap() < 3600.0);
    crate::interfaces::conforms("drill-report", &r);

    // PostgreSQL moves on without Redis: the cross-store check fails, naming both numbers.
    s.pg.psql("insert into orders select g from generate_series(301, 305) g");
    s.pg.switch_and_wait_archived();
    let out = s.env.run(&["drill", "run", "app-drill", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{r:#}");
    let reasons = r["reasons"].to_string();
    assert!(
        reasons.contains("cross-store check `every order has its key`"),
        "{reasons}"
    );
    assert!(reasons.contains("305 and 300"), "{reasons}");
    // The report page lists the members.
    let html = s
        .env
        .ok(&["drill", "show", r["id"].as_str().unwrap(), "--html"]);
    assert!(html.contains("Members of group app"), "{html}");
    assert!(html.contains("every order has its key"), "{html}");
}

#[test]
fn the_daemon_backs_a_group_up_on_its_schedule() {
    let (mut s, cache) = app();
    s.env.ok(&["backup", "--policy", "pg"]);
    write(&s, &cache, 1, 10);
    let port = crate::harness::free_port();
    s.env
        .add_storage(&format!("\n[api]\nlisten = \"127.0.0.1:{port}\"\n"), vec![]);
    let file = s.env.setup().join("groups/app.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("schedule = \"*/2 * * * * *\"\n{text}")).unwrap();
    let runs = s.env.setup().join("repo/groups/app");
    let daemon = crate::daemon::Daemon::start(&s.env, &[]);
    crate::daemon::wait_until(
        "two scheduled group runs",
        std::time::Duration::from_secs(60),
        || std::fs::read_dir(&runs).map_or(0, |d| d.count()) >= 2,
    );
    assert!(
        daemon.log().contains("Group backup recorded"),
        "{}",
        daemon.log()
    );
    drop(daemon);
    let info = s.env.json(&["info"]);
    assert!(info["groups"][0]["runs"].as_u64().unwrap() >= 2, "{info:#}");
}
