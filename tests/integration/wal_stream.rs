//! `wal.stream = true` against real PostgreSQL 15: the daemon streams WAL over the
//! replication protocol with a slot and stores the segment being written every
//! `stream_flush`; a disaster (kill -9, data directory deleted) loses at most that; a
//! `kill -9` of the daemon leaves no gap; a promoted standby's new timeline is streamed.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::{Daemon, wait_until};
use crate::harness::free_port;
use crate::harness::postgres::{Postgres, Restored, psql_at};
use crate::postgres::{PgSetup, restore_and_start, setup_archiving};

/// A PostgreSQL setup whose policy streams WAL (flushed every `flush`), with a daemon
/// configuration (API on a free port, WAL lag measured every second).
fn streaming(archive_command: Option<&str>, flush: &str) -> PgSetup {
    let mut s = setup_archiving("local", archive_command);
    let port = free_port();
    s.env.add_storage(
        &format!(
            "\n[api]\nlisten = \"127.0.0.1:{port}\"\n\n[daemon]\nwal_check_every = \"1s\"\nretention_every = \"1h\"\n"
        ),
        vec![],
    );
    let policy = s.env.setup().join("policies/pg.toml");
    let mut text = std::fs::read_to_string(&policy).unwrap();
    text.push_str(&format!(
        "rpo = \"10s\"\n\n[wal]\nstream = true\nstream_flush = \"{flush}\"\n"
    ));
    std::fs::write(&policy, text).unwrap();
    s
}

/// The receiver's status file.
fn status(s: &PgSetup) -> serde_json::Value {
    let path = s.env.setup().join("state/wal-stream/pg/status.json");
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn lsn(s: &str) -> u64 {
    let (a, b) = s.split_once('/').unwrap();
    (u64::from_str_radix(a, 16).unwrap() << 32) | u64::from_str_radix(b, 16).unwrap()
}

/// Waits until the stream has stored everything `pg` has flushed now.
fn wait_stored(s: &PgSetup, pg_port: u16, bin: &std::path::Path) {
    let target = lsn(&psql_at(bin, pg_port, "select pg_current_wal_flush_lsn()").unwrap());
    wait_until(
        "the stream to store the server's WAL",
        Duration::from_secs(60),
        || {
            status(s)["stored_lsn"]
                .as_str()
                .is_some_and(|l| lsn(l) >= target)
        },
    );
}

/// Rounds of 10,000 rows into `t`, each closing its WAL segment (`pg_switch_wal`).
fn segments(pg: &Postgres, rounds: std::ops::Range<i64>) {
    for round in rounds {
        pg.psql(&format!(
            "insert into t (id) select g from generate_series({}, {}) g",
            round * 10_000 + 1,
            round * 10_000 + 10_000
        ));
        pg.psql("select pg_switch_wal()");
    }
}

/// Rows written one per commit, with the moment each commit returned.
struct Writer {
    child: std::process::Child,
    committed: Vec<(i64, Instant)>,
}

impl Writer {
    fn start(pg: &Postgres) -> Self {
        let child = crate::harness::postgres::as_postgres(&pg.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Self {
            child,
            committed: Vec::new(),
        }
    }

    /// Inserts rows `from..` one transaction each, every `every`, for `for_`.
    fn write(&mut self, from: i64, every: Duration, for_: Duration) {
        let mut stdin = self.child.stdin.take().unwrap();
        let mut out = BufReader::new(self.child.stdout.take().unwrap());
        let t0 = Instant::now();
        let mut id = from;
        let mut line = String::new();
        while t0.elapsed() < for_ {
            writeln!(stdin, "insert into t (id) values ({id}) returning id;").unwrap();
            stdin.flush().unwrap();
            line.clear();
            out.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), id.to_string(), "psql answered {line:?}");
            self.committed.push((id, Instant::now()));
            id += 1;
            std::thread::sleep(every);
        }
        drop(stdin);
        self.child.wait().unwrap();
    }
}

#[test]
fn a_disaster_loses_at_most_the_flush_interval_and_a_drill_reports_rpo_under_10s() {
    let mut s = streaming(None, "5s");
    s.pg.psql(
        "create table t (id bigint primary key, at timestamptz not null default clock_timestamp())",
    );
    s.pg.psql("insert into t (id) select g from generate_series(1, 1000) g");
    s.env.ok(&["backup", "--policy", "pg"]);
    std::fs::write(
        s.env.setup().join("restore-drills/stream.toml"),
        "policy = \"pg\"\nrpo = \"10s\"\n[[check]]\nname = \"rows\"\nsql = \"select count(*) from t\"\nexpect = \">= 1000\"\n",
    )
    .unwrap();
    let daemon = Daemon::start(&s.env, &[]);
    wait_until("the stream to start", Duration::from_secs(60), || {
        status(&s)["state"] == "streaming" && status(&s)["stored_lsn"].is_string()
    });
    let slot =
        s.pg.psql("select slot_name || ' ' || active from pg_replication_slots");
    assert_eq!(slot, "dr_pg true", "{}", daemon.log());

    // Rows committed continuously for 20 s; a drill runs meanwhile.
    let mut writer = Writer::start(&s.pg);
    let writing = std::thread::spawn(move || {
        writer.write(1001, Duration::from_millis(20), Duration::from_secs(20));
        writer
    });
    std::thread::sleep(Duration::from_secs(8));
    let out = s.env.run(&["drill", "run", "stream", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("drill: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let writer = writing.join().unwrap();
    let rpo = report["rpo"]["seconds"].as_f64().unwrap();
    assert_eq!(report["verdict"], "pass", "{report:#}\n{}", daemon.log());
    assert!(rpo < 10.0, "drill RPO {rpo}s: {report:#}");
    eprintln!("drill while writing: RPO {rpo:.1}s");

    // The disaster, 5 s after the last commit: the primary is killed and its data is gone.
    std::thread::sleep(Duration::from_secs(5));
    let killed = Instant::now();
    s.pg.kill9();
    std::fs::remove_dir_all(&s.pg.data).unwrap();
    let st = status(&s);
    assert!(
        !st["last_error"].to_string().contains("differs"),
        "streamed and archived segments must be identical: {st:#}"
    );

    let restored: Restored = restore_and_start(
        &s.env,
        &crate::harness::postgres::bin_dir(),
        "after-disaster",
        &["--latest"],
    );
    let promised: Vec<i64> = writer
        .committed
        .iter()
        .filter(|(_, at)| killed.duration_since(*at) > Duration::from_secs(6))
        .map(|(id, _)| *id)
        .collect();
    let last_promised = *promised.last().unwrap();
    let have: i64 = restored
        .psql(&format!(
            "select count(*) from t where id between 1001 and {last_promised}"
        ))
        .parse()
        .unwrap();
    let total: i64 = restored.psql("select count(*) from t").parse().unwrap();
    let written = 1000 + writer.committed.len() as i64;
    eprintln!(
        "disaster: {written} rows committed, {total} recovered; {} promised (committed over 6 s before the kill), all of them present: {}",
        promised.len() + 1000,
        have == promised.len() as i64
    );
    assert_eq!(
        have,
        promised.len() as i64,
        "rows committed more than 6 s before the kill"
    );
    assert!(total >= 1000 + have);

    // A time inside the segment that was only stored partially: exactly the rows committed
    // by then. The target is when one row's insert ran (its `at`): the rows before it (one
    // session, one after the other) committed earlier, it itself later.
    let target = restored.psql(&format!(
        "select at from t where id = {}",
        promised[promised.len() - 50]
    ));
    let expected = restored.psql(&format!("select count(*) from t where at < '{target}'"));
    drop(restored);
    let at_time = restore_and_start(
        &s.env,
        &crate::harness::postgres::bin_dir(),
        "inside-the-partial",
        &["--point-in-time", &target],
    );
    assert_eq!(at_time.psql("select count(*) from t"), expected);
    let objects: Vec<String> = std::fs::read_dir(s.env.setup().join("repo/wal-stream/pg"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(objects.len(), 1, "one partial, the longest: {objects:?}");
    drop(daemon);
}

#[test]
fn a_killed_daemon_resumes_the_stream_without_a_gap_and_info_shows_the_slot() {
    // archive_command stores nothing: every WAL segment in the repository comes from the
    // stream.
    let mut s = streaming(Some("true"), "1s");
    s.pg.psql(
        "create table t (id bigint primary key, at timestamptz not null default clock_timestamp())",
    );
    let daemon = Daemon::start(&s.env, &[]);
    wait_until("the stream to start", Duration::from_secs(60), || {
        status(&s)["state"] == "streaming"
    });
    s.env.ok(&["backup", "--policy", "pg"]);
    let bin = crate::harness::postgres::bin_dir();
    segments(&s.pg, 0..3);
    wait_stored(&s, s.pg.port, &bin);

    // kill -9: its pg_receivewal is orphaned and keeps the slot; the server goes on
    // writing (3 more segments) with nobody storing them.
    drop(daemon);
    segments(&s.pg, 3..6);
    s.pg.psql("insert into t (id) values (999999)");
    let daemon = Daemon::start(&s.env, &[]);
    wait_stored(&s, s.pg.port, &bin);
    // A restart of the server: the stream reconnects and goes on.
    let starts = status(&s)["starts"].as_u64().unwrap();
    s.pg.while_stopped(|_| {});
    s.pg.psql("insert into t (id) values (1000000)");
    wait_until("the stream to reconnect", Duration::from_secs(60), || {
        status(&s)["starts"].as_u64().unwrap() > starts
    });
    wait_stored(&s, s.pg.port, &bin);
    let st = status(&s);
    assert_eq!(st["state"], "streaming", "{st:#}\n{}", daemon.log());
    assert!(
        !st["last_error"].to_string().contains("differs"),
        "no different segment under a stored name: {st:#}"
    );
    // One receiver writes into the directory: the killed daemon's died of SIGPIPE on its
    // next message, or the new daemon stopped it (receivewal::take_over).
    let dir = s.env.setup().join("state/wal-stream/pg/wal");
    let receivers = Command::new("pgrep")
        .args([
            "-af",
            &format!("pg_receivewal --directory {}", dir.display()),
        ])
        .output()
        .unwrap();
    let receivers = String::from_utf8_lossy(&receivers.stdout).into_owned();
    assert_eq!(
        receivers.lines().count(),
        1,
        "{receivers}\n{}",
        daemon.log()
    );
    assert_eq!(
        s.pg.psql("select count(*) from pg_replication_slots where slot_name = 'dr_pg' and active"),
        "1"
    );

    // No gap: the window starts at the backup and ends now, and a restore has every row.
    let info = s.env.json(&["info"]);
    let pg = &info["policies"][0]["postgres"];
    assert!(pg["wal_gap"].is_null(), "{pg:#}");
    assert_eq!(pg["stream"]["state"], "streaming", "{pg:#}");
    assert_eq!(pg["stream"]["slot_state"]["active"], true, "{pg:#}");
    assert!(
        pg["stream"]["slot_state"]["retained_bytes"].is_u64(),
        "{pg:#}"
    );
    let text = s.env.ok(&["info"]);
    assert!(
        text.contains("WAL stream: streaming from host=127.0.0.1"),
        "{text}"
    );
    assert!(text.contains("slot active"), "{text}");
    // `dr check` says the server can be streamed from and what the slot holds, changing nothing.
    let check = s.env.ok(&["check", "--policy", "pg"]);
    assert!(
        check.contains("policy pg: WAL streaming possible: slot dr_pg active, holds"),
        "{check}"
    );
    assert!(
        check.contains("max_slot_wal_keep_size = -1 (unlimited"),
        "{check}"
    );
    s.pg.psql("create role plain login");
    let conninfo = s.env.setup().join("plain.conninfo");
    std::fs::write(
        &conninfo,
        s.pg.conninfo().replace("user=postgres", "user=plain"),
    )
    .unwrap();
    std::fs::set_permissions(
        &conninfo,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    s.env.policy(
        "plain",
        &format!(
            "source = {{ type = \"postgres\", conninfo_file = \"plain.conninfo\", data_dir = \"{}\" }}\ntargets = [\"local\"]\n[wal]\nstream = true\n",
            s.pg.data.display()
        ),
    );
    let check = s.env.fails(&["check", "--policy", "plain"], 1);
    assert!(
        check.contains("WAL streaming FAILED") && check.contains("no REPLICATION attribute"),
        "{check}"
    );
    std::fs::remove_file(s.env.setup().join("policies/plain.toml")).unwrap();
    let runbook =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/RUNBOOK.md")).unwrap();
    let blocks = crate::runbook::tested_blocks(&runbook, "tested-stream");
    assert!(!blocks.is_empty(), "the runbook lost its WAL stream block");
    crate::runbook::run_blocks(
        &blocks,
        &[
            ("DR_CONFIG", s.env.config.to_str().unwrap()),
            ("POLICY", "pg"),
            ("PG_HOST", "127.0.0.1"),
            ("PG_PORT", &s.pg.port.to_string()),
        ],
    );
    drop(daemon);
    let restored = restore_and_start(&s.env, &bin, "after-restart", &["--latest"]);
    assert_eq!(restored.psql("select count(*) from t"), "60002");
}

#[test]
fn a_promoted_standby_s_new_timeline_is_streamed_and_restored() {
    let mut s = streaming(Some("true"), "1s");
    s.pg.psql("create table t (id bigint primary key)");
    let standby = s.pg.standby();
    let daemon = Daemon::start(&s.env, &[]);
    wait_until("the stream to start", Duration::from_secs(60), || {
        status(&s)["state"] == "streaming"
    });
    s.env.ok(&["backup", "--policy", "pg"]);
    s.pg.psql("insert into t select g from generate_series(1, 5000) g");
    let bin = crate::harness::postgres::bin_dir();
    wait_stored(&s, s.pg.port, &bin);
    let primary_lsn = s.pg.psql("select pg_current_wal_flush_lsn()");
    wait_until(
        "the standby to replay everything",
        Duration::from_secs(60),
        || lsn(&standby.psql("select pg_last_wal_replay_lsn()")) >= lsn(&primary_lsn),
    );

    // Failover: the primary is gone, the standby is promoted (timeline 2), and the
    // connection string now names it.
    s.pg.kill9();
    standby.promote();
    std::fs::write(s.env.setup().join("pg.conninfo"), standby.conninfo()).unwrap();
    standby.psql("insert into t select g from generate_series(5001, 8000) g");
    wait_until(
        "the stream to follow timeline 2",
        Duration::from_secs(90),
        || status(&s)["timeline"] == 2,
    );
    wait_stored(&s, standby.port, &bin);
    let history = s.env.setup().join("repo/wal/pg/00000002/00000002.history");
    assert!(history.exists(), "{}\n{}", history.display(), daemon.log());
    assert_eq!(
        standby
            .psql("select count(*) from pg_replication_slots where slot_name = 'dr_pg' and active"),
        "1"
    );
    drop(daemon);
    let restored = restore_and_start(&s.env, &bin, "timeline-2", &["--latest"]);
    assert_eq!(restored.psql("select count(*) from t"), "8000");
}
