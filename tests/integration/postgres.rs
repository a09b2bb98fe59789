//! PostgreSQL against a real server: base backups in both modes, WAL archiving through
//! `dr wal-push`, point-in-time restores that are checked row by row, block-level
//! incrementals, and the WAL continuity check.

use std::os::unix::fs::PermissionsExt;

use crate::harness::dr::{DrEnv, bin};
use crate::harness::free_port;
use crate::harness::postgres::{Postgres, Restored, give_setup_to_postgres, give_to_postgres};

pub(crate) struct PgSetup {
    pub env: DrEnv,
    pub pg: Postgres,
}

pub(crate) fn setup(mode: &str) -> PgSetup {
    setup_archiving(mode, None)
}

/// [`setup`] with another `archive_command` than `dr wal-push` (e.g. `true`, when only a WAL
/// stream is to store WAL).
pub(crate) fn setup_archiving(mode: &str, archive_command: Option<&str>) -> PgSetup {
    let env = DrEnv::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let archive = archive_command.map_or_else(
        || {
            format!(
                "{} -c {} wal-push --policy pg %p",
                bin(),
                env.config.display()
            )
        },
        str::to_owned,
    );
    let pg = Postgres::start(Some(&archive));
    let conninfo = env.setup().join("pg.conninfo");
    std::fs::write(&conninfo, pg.conninfo()).unwrap();
    std::fs::set_permissions(&conninfo, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.policy("pg", &format!("source = {{ type = \"postgres\", conninfo_file = \"pg.conninfo\", data_dir = \"{}\", mode = \"{mode}\" }}\ntargets = [\"local\"]\n", pg.data.display()));
    give_setup_to_postgres(&env.setup());
    PgSetup { env, pg }
}

impl PgSetup {
    /// `dr restore --policy pg <target args> --start`, returning the running restored cluster.
    fn restore_and_start(&self, name: &str, target: &[&str]) -> Restored {
        restore_and_start(
            &self.env,
            &crate::harness::postgres::bin_dir(),
            name,
            target,
        )
    }
}

/// `dr restore --policy pg <target args> --start` into `env`'s scratch dir `name`, the restored
/// cluster then run (and stopped when dropped) with the binaries of `bin`.
pub(crate) fn restore_and_start(
    env: &DrEnv,
    bin: &std::path::Path,
    name: &str,
    target: &[&str],
) -> Restored {
    let dir = env.path(name);
    let port = free_port();
    let mut args = vec![
        "restore",
        "--policy",
        "pg",
        "--target-dir",
        dir.to_str().unwrap(),
        "--start",
    ];
    let p = port.to_string();
    args.extend(["--port", &p]);
    args.extend(target);
    let out = env.ok(&args);
    assert!(out.contains("recovered and promoted"), "{name}: {out}");
    Restored::with_bin(dir, port, bin.to_path_buf())
}

#[test]
fn pitr_to_time_lsn_and_restore_point_is_exact() {
    let s = setup("local");
    s.pg.psql("create table t (id int primary key, filler text)");
    s.pg.psql("insert into t select g, repeat('x', 200) from generate_series(1, 5000) g");
    s.env.ok(&["backup", "--policy", "pg"]);
    s.pg.psql("insert into t values (5001, 'a'), (5002, 'b'), (5003, 'c')");
    let lsn = s.pg.psql("select pg_current_wal_insert_lsn()");
    s.pg.psql("select pg_create_restore_point('before_more')");
    let t = s.pg.psql("select clock_timestamp()");
    std::thread::sleep(std::time::Duration::from_millis(300));
    s.pg.psql("insert into t values (5004, 'd'), (5005, 'e'), (5006, 'f')");
    s.pg.switch_and_wait_archived();

    for (name, target) in [
        ("by-time", vec!["--point-in-time", t.as_str()]),
        ("by-lsn", vec!["--lsn", lsn.as_str()]),
        ("by-name", vec!["--restore-point", "before_more"]),
    ] {
        let r = s.restore_and_start(name, &target);
        assert_eq!(
            r.psql("select count(*), max(id) from t"),
            "5003|5003",
            "restore {name} ({target:?})"
        );
    }
    let r = s.restore_and_start("latest", &["--latest"]);
    assert_eq!(r.psql("select count(*), max(id) from t"), "5006|5006");
}

#[test]
fn stream_mode_full_cycle() {
    let s = setup("stream");
    s.pg.psql("create table s (id int primary key)");
    s.pg.psql("insert into s select generate_series(1, 2000)");
    let b = s.env.json(&["backup", "--policy", "pg"]);
    assert!(b["artifacts"].as_u64().unwrap() > 500, "{b}");
    s.pg.psql("insert into s select generate_series(2001, 2500)");
    s.pg.switch_and_wait_archived();
    let r = s.restore_and_start("stream-restore", &["--latest"]);
    assert_eq!(r.psql("select count(*) from s"), "2500");
}

/// After light pgbench traffic the second base backup stores a small fraction of the first,
/// and restoring it gives exactly the source's data.
#[test]
fn block_level_incremental_is_small_and_exact() {
    let s = setup("local");
    let pgbench = |args: &[&str]| {
        let out = std::process::Command::new(s.pg.bin.join("pgbench"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &s.pg.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(args)
            .arg("postgres")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pgbench {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    pgbench(&["-i", "-s", "10", "-q"]);
    s.pg.psql("checkpoint");
    let full = s.env.json(&["backup", "--policy", "pg"]);
    // A copy restored from the full backup and started: promoted on a timeline of its own,
    // it diverges as an old primary does; --delta brings it back below.
    let old = s.restore_and_start(
        "old",
        &[
            "--snapshot",
            full["snapshot"].as_str().unwrap(),
            "--immediate",
        ],
    );
    old.psql("create table diverged as select generate_series(1, 1000) g");
    old.psql("checkpoint");
    pgbench(&["-n", "-c", "1", "-t", "300"]);
    s.pg.psql("checkpoint");
    let incr = s.env.json(&["backup", "--policy", "pg"]);
    let (f, i) = (
        full["bytes_stored"].as_u64().unwrap(),
        incr["bytes_stored"].as_u64().unwrap(),
    );
    eprintln!(
        "block incremental: full stored {f} bytes, incremental {i} bytes ({:.1} %)",
        i as f64 * 100.0 / f as f64
    );
    assert!(
        i * 10 <= f,
        "incremental stored {i} of the full's {f} bytes (> 10 %)"
    );
    // Page blocks are sealed in groups; every one of both snapshots re-hashes to its id.
    let v = s.env.json(&["verify", "--data", "--policy", "pg"]);
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(
        v["chunks_checked"].as_u64(),
        Some(full["chunks"].as_u64().unwrap() + incr["chunks"].as_u64().unwrap()),
        "{v}"
    );

    let dump = |port: u16| {
        let out = std::process::Command::new(s.pg.bin.join("pg_dump"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "--no-comments",
                "postgres",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        // pg_dump writes a random \restrict key per run; everything else must match.
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // A third backup builds on the second's slices and delta blobs; restoring it puts
    // together pages from all three.
    pgbench(&["-n", "-c", "1", "-t", "300"]);
    s.pg.psql("checkpoint");
    let third = s.env.json(&["backup", "--policy", "pg"]);
    let t = third["bytes_stored"].as_u64().unwrap();
    assert!(
        t * 10 <= f,
        "third backup stored {t} of the full's {f} bytes (> 10 %)"
    );
    let v = s.env.json(&["verify", "--data", "--policy", "pg"]);
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "{v}");
    let source = dump(s.pg.port);
    let snap = third["snapshot"].as_str().unwrap();
    let r = s.restore_and_start("incr", &["--snapshot", snap, "--immediate"]);
    let restored = dump(r.port);
    if restored != source {
        std::fs::write("/tmp/dr-dump-source.sql", &source).unwrap();
        std::fs::write("/tmp/dr-dump-restored.sql", &restored).unwrap();
        panic!(
            "pg_dump of the restored third backup differs from the source (see /tmp/dr-dump-*.sql)"
        );
    }

    // --delta onto the old copy: refused while it runs; once stopped, only what differs is
    // written, the diverged table and the old timeline's WAL go, and it starts as the third
    // backup.
    let old_dir = old.data.to_str().unwrap().to_owned();
    let delta = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--policy",
            "pg",
            "--snapshot",
            snap,
            "--immediate",
            "--target-dir",
            &old_dir,
            "--delta",
        ];
        args.extend(extra);
        args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>()
    };
    let refuse = delta(&[]);
    let refuse: Vec<&str> = refuse.iter().map(String::as_str).collect();
    let out = s.env.fails(&refuse, 2);
    assert!(out.contains("running PostgreSQL server"), "{out}");
    drop(old);
    let port = free_port().to_string();
    let args = delta(&["--start", "--port", &port]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = s.env.json(&args);
    let r = Restored::new(std::path::PathBuf::from(&old_dir), port.parse().unwrap());
    let d = &d["restore"];
    let (reused, written) = (d["reused"].as_u64().unwrap(), d["bytes"].as_u64().unwrap());
    eprintln!(
        "delta restore: {written} bytes written, {reused} kept, {} removed",
        d["removed"]
    );
    assert!(written * 5 < reused, "{d}");
    assert!(d["removed"].as_u64().unwrap() > 0, "{d}");
    assert_eq!(
        dump(r.port),
        source,
        "the delta-restored copy differs from the source"
    );
    assert_eq!(
        r.psql("select count(*) from pg_class where relname = 'diverged'"),
        "0"
    );
}

#[test]
fn missing_wal_segment_fails_before_writing_anything() {
    let s = setup("local");
    s.pg.psql("create table w (id int)");
    s.env.ok(&["backup", "--policy", "pg"]);
    for i in 0..3 {
        s.pg.psql(&format!("insert into w values ({i})"));
        s.pg.switch_and_wait_archived();
    }
    let mut segs: Vec<std::path::PathBuf> = walkdir(&s.env.setup().join("repo/wal/pg"));
    segs.retain(|p| p.file_name().unwrap().len() == 24);
    segs.sort();
    let victim = segs[segs.len() - 2].clone();
    let victim_name = victim.file_name().unwrap().to_str().unwrap().to_owned();
    // `dr info` before and after: the window reaches the newest segment, then stops at the gap.
    let window = |what: &str| {
        let info = s.env.json(&["info", "--policy", "pg"]);
        assert_eq!(info["schema"], "dr.info/2", "{what}: {info}");
        info["policies"][0]["postgres"].clone()
    };
    let time = |w: &serde_json::Value, k: &str| {
        chrono::DateTime::parse_from_rfc3339(w[k].as_str().unwrap_or_else(|| panic!("{k}: {w}")))
            .unwrap()
    };
    let before = window("before");
    assert_eq!(before["wal_gap"], serde_json::Value::Null, "{before}");
    assert_eq!(before["base_backups"], 1, "{before}");
    assert!(
        time(&before, "earliest") < time(&before, "latest"),
        "{before}"
    );
    assert_eq!(
        before["wal_last"].as_str(),
        segs.last().unwrap().file_name().unwrap().to_str(),
        "{before}"
    );
    // A dry run names the base backup and the WAL range it checked, and writes nothing…
    let target = s.env.path("never-written");
    let dry = |code: i32| {
        let args = [
            "restore",
            "--policy",
            "pg",
            "--latest",
            "--target-dir",
            target.to_str().unwrap(),
            "--dry-run",
            "--json",
        ];
        let out = s.env.run(&args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let plan: serde_json::Value = serde_json::from_slice(&dry(0).stdout).unwrap();
    assert_eq!(
        plan["wal"]["to"].as_str(),
        segs.last().unwrap().file_name().unwrap().to_str(),
        "{plan}"
    );
    assert_eq!(
        (plan["target_state"].as_str(), plan["source"].as_str()),
        (Some("missing"), Some("postgres")),
        "{plan}"
    );
    assert!(
        plan["bytes"].as_u64().unwrap() > 1 << 20 && plan["packs"].as_u64().unwrap() > 0,
        "{plan}"
    );
    assert!(!target.exists(), "a dry run created the target directory");
    std::fs::remove_file(&victim).unwrap();
    // …and fails as the real run will once a segment is gone.
    let e = String::from_utf8(dry(1).stderr).unwrap();
    assert!(e.contains(&victim_name), "{e}");
    let after = window("after");
    assert_eq!(
        after["wal_gap"].as_str(),
        Some(victim_name.as_str()),
        "{after}"
    );
    assert!(time(&after, "latest") < time(&before, "latest"), "{after}");
    assert_eq!(after["earliest"], before["earliest"], "{after}");
    let text = s.env.ok(&["info", "--policy", "pg"]);
    assert!(
        text.contains(&format!("WAL GAP: {victim_name} is missing")),
        "{text}"
    );
    let e = s.env.fails(
        &[
            "restore",
            "--policy",
            "pg",
            "--latest",
            "--target-dir",
            target.to_str().unwrap(),
        ],
        1,
    );
    assert!(
        e.contains(victim.file_name().unwrap().to_str().unwrap())
            && e.contains("Nothing was written"),
        "{e}"
    );
    assert!(!target.exists(), "the target directory was created");

    let e = s.env.fails(
        &[
            "restore",
            "--policy",
            "pg",
            "--point-in-time",
            "2001-01-01 00:00:00+00",
            "--target-dir",
            target.to_str().unwrap(),
        ],
        1,
    );
    assert!(
        e.contains("no base backup") && e.contains("recoverable range"),
        "{e}"
    );
    let e = s.env.fails(
        &[
            "restore",
            "--policy",
            "pg",
            "--point-in-time",
            "2999-01-01 00:00:00+00",
            "--target-dir",
            target.to_str().unwrap(),
        ],
        1,
    );
    assert!(e.contains("after the newest archived WAL"), "{e}");
    let e = s.env.fails(
        &[
            "restore",
            "--policy",
            "pg",
            "--point-in-time",
            "2026-11-23 14:02:00",
            "--target-dir",
            target.to_str().unwrap(),
        ],
        2,
    );
    assert!(e.contains("no time zone"), "{e}");
}

#[test]
fn wal_push_is_idempotent_and_refuses_a_different_segment() {
    let s = setup("local");
    let dir = s.env.path("fake-wal");
    std::fs::create_dir_all(&dir).unwrap();
    let seg = dir.join("0000000100000000000000F0");
    std::fs::write(&seg, vec![7u8; 1 << 20]).unwrap();
    let p = seg.to_str().unwrap();
    s.env.ok(&["wal-push", "--policy", "pg", p]);
    s.env.ok(&["wal-push", "--policy", "pg", p]);
    std::fs::write(&seg, vec![8u8; 1 << 20]).unwrap();
    let e = s.env.fails(&["wal-push", "--policy", "pg", p], 1);
    assert!(
        e.contains("a different 0000000100000000000000F0 is already archived"),
        "{e}"
    );
    // wal-fetch gives back the first content.
    let out = s.env.path("fetched");
    s.env.ok(&[
        "wal-fetch",
        "--policy",
        "pg",
        "0000000100000000000000F0",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), vec![7u8; 1 << 20]);
    let e = s.env.fails(
        &[
            "wal-fetch",
            "--policy",
            "pg",
            "0000000100000000000000F9",
            out.to_str().unwrap(),
        ],
        1,
    );
    assert!(e.contains("not archived"), "{e}");
}

/// `dr snapshots` tells how much WAL the server has written past the newest archived segment
/// (the daemon's `dr_wal_archive_lag_bytes` is the same measurement): what losing the
/// primary now would lose.
#[test]
fn archive_lag_in_bytes_is_the_wal_written_past_the_archive() {
    let s = setup("local");
    s.pg.psql("create table lag (id int, filler text)");
    s.pg.switch_and_wait_archived();
    let newest = s.pg.psql("select last_archived_wal from pg_stat_archiver");
    // The end of that segment (16 MiB segments): the start of the next one.
    let number = u64::from_str_radix(&newest[8..16], 16).unwrap() * 256
        + u64::from_str_radix(&newest[16..], 16).unwrap();
    let end = (number + 1) << 24;
    let end = format!("{:X}/{:X}", end >> 32, end & 0xffff_ffff);
    s.pg.psql("insert into lag select g, repeat('x', 300) from generate_series(1, 10000) g");
    let written = |what: &str| -> f64 {
        s.pg.psql(&format!(
            "select pg_wal_lsn_diff(pg_current_wal_lsn(), '{end}')"
        ))
        .parse()
        .unwrap_or_else(|e| panic!("{what}: {e}"))
    };
    let before = written("before");
    let out = s.env.ok(&["snapshots", "--policy", "pg"]);
    let after = written("after");
    let line = out
        .lines()
        .find(|l| l.starts_with("WAL archive:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains(&format!("newest segment {newest}")), "{line}");
    let (_, lag) = line
        .split_once("; ")
        .unwrap_or_else(|| panic!("no lag in {line}"));
    let (n, unit) = lag.split_once(' ').unwrap();
    let scale = match unit.split(' ').next().unwrap() {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        u => panic!("unit {u} in {line}"),
    };
    let shown = n.parse::<f64>().unwrap() * scale;
    assert!(before > 1e6, "the insert wrote {before} bytes of WAL");
    assert!(
        shown >= before * 0.99 && shown <= after * 1.01,
        "{line}: expected between {before} and {after} bytes"
    );
}

/// An operator's own `restore_command = 'dr wal-fetch --policy …'`: the first call fetches
/// its file and starts a feeder that reads the following segments ahead into a spool; later
/// calls take theirs from it, byte for byte what was archived; a file never archived fails
/// (exit 1, recovery ends); removing the spool stops the feeder.
#[test]
fn operator_wal_fetch_reads_ahead_through_a_feeder() {
    let s = setup("local");
    s.pg.psql("create table f (id int, filler text)");
    let mut names = Vec::new();
    for _ in 0..4 {
        s.pg.psql("insert into f select g, repeat('y', 100) from generate_series(1, 2000) g");
        // The insert position: with synchronous_commit off, the write position may still be
        // at the start of the segment, whose name is the previous segment's.
        names.push(s.pg.psql("select pg_walfile_name(pg_current_wal_insert_lsn())"));
        s.pg.switch_and_wait_archived();
    }
    let spool = s.env.setup().join("state/wal-feed/pg");
    let fetch = |name: &str, code: i32| {
        let out = s.env.path(&format!("fetched-{name}"));
        let args = ["wal-fetch", "--policy", "pg", name, out.to_str().unwrap()];
        if code == 0 {
            s.env.ok(&args);
            let original = std::fs::read(s.pg.data.join("pg_wal").join(name)).unwrap();
            assert!(std::fs::read(&out).unwrap() == original, "{name} differs");
        } else {
            s.env.fails(&args, code);
        }
    };
    fetch(&names[0], 0);
    crate::harness::wait_until(
        "the feeder to read the next segments ahead",
        std::time::Duration::from_secs(30),
        || names[1..].iter().all(|n| spool.join(n).exists()),
    );
    for n in &names[1..] {
        fetch(n, 0);
        assert!(!spool.join(n).exists(), "{n} was taken from the spool");
    }
    fetch("0000000100000000000000F7", 1);
    std::fs::remove_dir_all(&spool).unwrap();
    let lock = s.env.setup().join("state/wal-feed/pg.lock");
    crate::harness::wait_until(
        "the feeder to stop",
        std::time::Duration::from_secs(30),
        || !lock.exists(),
    );
}

pub(crate) fn walkdir(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walkdir(&path))
        } else {
            out.push(path)
        }
    }
    out
}

/// A table in a tablespace outside the data directory survives backup and restore; the
/// restore places the tablespace beside the restored data directory, not at its original path.
#[test]
fn tablespaces_are_backed_up_and_restored() {
    let s = setup("local");
    let ts = s.env.path("tblspc");
    std::fs::create_dir_all(&ts).unwrap();
    give_to_postgres(&ts);
    s.pg.psql(&format!(
        "create tablespace extra location '{}'",
        ts.display()
    ));
    s.pg.psql("create table far (id int) tablespace extra");
    s.pg.psql("insert into far select generate_series(1, 777)");
    s.pg.psql("checkpoint");
    let b = s.env.json(&["backup", "--policy", "pg"]);
    assert!(b["bytes_read"].as_u64().unwrap() > 0);
    s.pg.switch_and_wait_archived();
    let r = s.restore_and_start("ts-restore", &["--latest"]);
    assert_eq!(r.psql("select count(*) from far"), "777");
    let (dir, placed) = (
        s.env.path("ts-restore"),
        s.env.path("ts-restore.tablespaces"),
    );
    assert!(placed.is_dir(), "tablespace not placed beside the restore");
    // The one link in pg_tblspc leads there.
    let linked_to_placed = || {
        let link = dir
            .join("pg_tblspc")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        std::fs::read_link(link.path())
            .unwrap()
            .starts_with(&placed)
    };
    assert!(linked_to_placed());

    // --delta onto that stopped copy: the placed tablespace is brought up to date where its
    // link leads (the link stays), only what changed is written.
    drop(r);
    s.pg.psql("insert into far select generate_series(778, 1000)");
    s.pg.psql("checkpoint");
    s.env.ok(&["backup", "--policy", "pg"]);
    s.pg.switch_and_wait_archived();
    let port = free_port();
    let d = s.env.json(&[
        "restore",
        "--policy",
        "pg",
        "--latest",
        "--target-dir",
        dir.to_str().unwrap(),
        "--delta",
        "--start",
        "--port",
        &port.to_string(),
    ]);
    let r = Restored::new(dir.clone(), port);
    assert_eq!(r.psql("select count(*) from far"), "1000");
    assert!(linked_to_placed(), "{d}");
    let (written, reused) = (
        d["restore"]["bytes"].as_u64().unwrap(),
        d["restore"]["reused"].as_u64().unwrap(),
    );
    assert!(written * 4 < reused, "{d}");
}

/// Soak: the point-in-time case 20 times in a row (run with `--ignored`; not in every CI run).
#[test]
#[ignore = "soak: cargo test --features integration-tests -- --ignored pitr_soak"]
fn pitr_soak() {
    let runs: usize = std::env::var("DR_TEST_PITR_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let s = setup("local");
    s.pg.psql("create table soak (run int, id int)");
    s.env.ok(&["backup", "--policy", "pg"]);
    for run in 0..runs {
        s.pg.psql(&format!(
            "insert into soak values ({run}, 1), ({run}, 2), ({run}, 3)"
        ));
        let t = s.pg.psql("select clock_timestamp()");
        std::thread::sleep(std::time::Duration::from_millis(50));
        s.pg.psql(&format!(
            "insert into soak values ({run}, 4), ({run}, 5), ({run}, 6)"
        ));
        s.pg.switch_and_wait_archived();
        let r = s.restore_and_start(&format!("soak-{run}"), &["--point-in-time", &t]);
        assert_eq!(
            r.psql(&format!("select count(*) from soak where run = {run}")),
            "3",
            "run {run}"
        );
        assert_eq!(
            r.psql("select count(*) from soak"),
            ((run + 1) * 6 - 3).to_string(),
            "run {run}"
        );
    }
    eprintln!("PITR soak: {runs} of {runs} restores row-exact");
}

/// Retention prunes WAL only before the oldest kept base backup and outside `wal_window`;
/// everything the kept backup needs stays, and PITR from it still works.
#[test]
fn retention_prunes_wal_only_where_pitr_cannot_need_it() {
    let s = setup("local");
    let policy = s.env.setup().join("policies/pg.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    let rules =
        "\n[retention]\nkeep_last = 1\ndaily = 0\nweekly = 0\nmonthly = 0\ngc_grace = \"1s\"\n";
    std::fs::write(&policy, format!("{text}{rules}wal_window = \"1h\"\n")).unwrap();
    s.pg.psql("create table t (id int primary key)");
    for i in 0..3 {
        s.pg.psql(&format!("insert into t values ({i})"));
        s.env.ok(&["backup", "--policy", "pg"]);
        s.pg.switch_and_wait_archived();
    }
    let wal_files = || {
        walkdir(&s.env.setup().join("repo/wal/pg"))
            .into_iter()
            .filter(|p| p.file_name().unwrap().len() == 24)
            .count()
    };
    let before = wal_files();
    // Inside the one-hour window nothing goes, although two backups are forgotten.
    let out = s.env.json(&["retention", "apply", "--policy", "pg"]);
    assert_eq!(
        out["policies"][0]["forgotten"].as_array().unwrap().len(),
        2,
        "{out:#}"
    );
    assert_eq!(out["policies"][0]["wal_deleted"], 0, "{out:#}");
    assert_eq!(wal_files(), before);

    // With a window of a second, WAL before the kept backup's start goes; the rest stays.
    std::fs::write(&policy, format!("{text}{rules}wal_window = \"1s\"\n")).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let out = s.env.json(&["retention", "apply", "--policy", "pg"]);
    let deleted = out["policies"][0]["wal_deleted"].as_u64().unwrap();
    assert!(deleted >= 2, "{out:#}");
    assert_eq!(wal_files(), before - deleted as usize);
    let first_kept = out["policies"][0]["wal_kept_from"]
        .as_str()
        .unwrap()
        .to_owned();
    for p in walkdir(&s.env.setup().join("repo/wal/pg")) {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.len() == 24 {
            assert!(
                name[8..] >= first_kept[8..],
                "{name} is before {first_kept} and should be gone"
            );
        }
    }
    s.pg.psql("insert into t values (99)");
    s.pg.switch_and_wait_archived();
    let r = s.restore_and_start("after-prune", &["--latest"]);
    assert_eq!(r.psql("select count(*) from t"), "4");
}

/// `kill -9` of `dr wal-push` in the middle of archiving (the first attempt of every segment,
/// after a random few milliseconds): PostgreSQL retries, the push is idempotent, and PITR to
/// the end afterwards has every row — no WAL is lost across the crashes.
#[test]
fn kill_9_of_wal_push_loses_no_wal() {
    let s = setup("local");
    let setup_dir = s.env.setup();
    let (marks, log) = (
        setup_dir.join("wal-push-marks"),
        setup_dir.join("wal-push-kills.log"),
    );
    std::fs::create_dir_all(&marks).unwrap();
    let wrapper = setup_dir.join("archive.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\n\"{bin}\" -c \"{cfg}\" wal-push --policy pg \"$1\" &\npid=$!\n\
             if [ ! -e \"{marks}/$2\" ]; then touch \"{marks}/$2\"; sleep \"0.0$((RANDOM % 6))\"; kill -9 $pid 2>/dev/null; fi\n\
             wait $pid; rc=$?\n# A signal exit (137) would make PostgreSQL restart its archiver after 10 s: report 1.\n\
             if [ $rc = 137 ]; then echo \"$2\" >> \"{log}\"; exit 1; fi\nexit $rc\n",
            bin = crate::harness::dr::bin(),
            cfg = s.env.config.display(),
            marks = marks.display(),
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    give_setup_to_postgres(&setup_dir);
    s.pg.psql(&format!(
        "alter system set archive_command = 'bash {} %p %f'",
        wrapper.display()
    ));
    s.pg.psql("select pg_reload_conf()");
    s.pg.psql("create table t (id int primary key, filler text)");
    s.env.ok(&["backup", "--policy", "pg"]);
    for i in 0..50 {
        s.pg.psql(&format!(
            "insert into t select g, repeat('x', 500) from generate_series({}, {}) g",
            i * 1000,
            i * 1000 + 999
        ));
        s.pg.psql("select pg_switch_wal()");
    }
    s.pg.switch_and_wait_archived();
    let killed = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();
    eprintln!("wal-push crash matrix: 51 segments, {killed} pushes killed mid-way, then retried");
    assert!(
        killed >= 3,
        "only {killed} pushes were killed; the test is not testing"
    );
    let r = s.restore_and_start("after-wal-push-kills", &["--latest"]);
    assert_eq!(r.psql("select count(*) from t"), "50000");
}

/// A `wal-push` that uploads takes the next `.ready` files along (in parallel) and leaves a
/// marker for each; the calls for those then succeed without storage, only for the very
/// bytes that were stored: a different file under a stored name is still refused.
#[test]
fn wal_push_stores_the_next_ready_segments_ahead() {
    let env = DrEnv::new();
    env.policy(
        "pg",
        "source = { type = \"postgres\", conninfo_env = \"NO_SUCH_DSN\", data_dir = \"/nonexistent\" }\ntargets = [\"local\"]\n",
    );
    let pg_wal = env.path("pg_wal");
    std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
    let names: Vec<String> = (1..=12)
        .map(|i| format!("0000000100000000000000{i:02X}"))
        .collect();
    for (i, n) in names.iter().enumerate() {
        std::fs::write(
            pg_wal.join(n),
            crate::harness::tree::noise(i as u64, 1 << 20),
        )
        .unwrap();
        std::fs::write(
            pg_wal.join("archive_status").join(format!("{n}.ready")),
            b"",
        )
        .unwrap();
    }
    let push = |n: &str| {
        env.run(&[
            "wal-push",
            "--policy",
            "pg",
            pg_wal.join(n).to_str().unwrap(),
        ])
    };
    assert!(push(&names[0]).status.success());
    // As PostgreSQL does after a successful call.
    std::fs::remove_file(
        pg_wal
            .join("archive_status")
            .join(format!("{}.ready", names[0])),
    )
    .unwrap();
    let markers = env.setup().join("state/wal-pushed/pg");
    let ahead = std::fs::read_dir(&markers).unwrap().count();
    assert!(ahead >= 7, "only {ahead} segments were stored ahead");
    // The file PostgreSQL hands over differs from what was stored ahead: no shortcut, and the
    // store refuses a different file under that name.
    std::fs::write(
        pg_wal.join(&names[1]),
        crate::harness::tree::noise(99, 1 << 20),
    )
    .unwrap();
    let out = push(&names[1]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("different"));
    std::fs::write(
        pg_wal.join(&names[1]),
        crate::harness::tree::noise(1, 1 << 20),
    )
    .unwrap();
    for n in &names[1..] {
        std::fs::remove_file(pg_wal.join("archive_status").join(format!("{n}.ready"))).unwrap();
        let out = push(n);
        assert!(
            out.status.success(),
            "{n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let left: Vec<_> = std::fs::read_dir(&markers)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "markers left: {left:?}");
    for (i, n) in names.iter().enumerate() {
        let back = env.path(&format!("back-{n}"));
        env.ok(&["wal-fetch", "--policy", "pg", n, back.to_str().unwrap()]);
        assert_eq!(
            std::fs::read(&back).unwrap(),
            crate::harness::tree::noise(i as u64, 1 << 20)
        );
    }
}

/// A failover: a restored copy is promoted (timeline 2) and archives into the same policy.
/// A point-in-time recovery from the timeline-1 base backup then follows the history file to
/// the end of timeline 2, through the spool dr feeds (history files and both timelines' names).
#[test]
fn pitr_follows_a_timeline_switch_through_the_spool() {
    let s = setup("local");
    s.pg.psql("create table t (id int primary key)");
    s.pg.psql("insert into t select generate_series(1, 100)");
    s.env.ok(&["backup", "--policy", "pg"]);
    s.pg.psql("insert into t values (101)");
    s.pg.switch_and_wait_archived();
    let failover = s.restore_and_start("failover", &["--latest"]);
    let pg_ctl = crate::harness::postgres::bin_dir().join("pg_ctl");
    let dir = failover.data.to_str().unwrap().to_owned();
    let ctl = |args: &[&str]| {
        let out = crate::harness::postgres::as_postgres(&pg_ctl)
            .args(["-D", &dir])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ctl(&["-m", "fast", "-w", "stop"]);
    let opts = format!(
        "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={dir} -c archive_mode=on -c archive_command='{} -c {} wal-push --policy pg %p'",
        failover.port,
        bin(),
        s.env.config.display()
    );
    let log = format!("{dir}/failover.log");
    ctl(&["-l", &log, "-o", &opts, "-w", "start"]);
    // Promoted while dr kept archiving off: its history file is archived by hand, as a server
    // that archived all along would have done at promotion.
    let out = crate::harness::postgres::as_postgres(std::path::Path::new(bin()))
        .arg("-c")
        .arg(&s.env.config)
        .args([
            "wal-push",
            "--policy",
            "pg",
            &format!("{dir}/pg_wal/00000002.history"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    failover.psql("insert into t select generate_series(102, 200)");
    let timeline = "select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)";
    assert_eq!(failover.psql(timeline), "00000002");
    let last = failover.psql("select pg_walfile_name(pg_switch_wal())");
    crate::harness::wait_until(
        "timeline 2 archived",
        std::time::Duration::from_secs(60),
        || failover.psql("select coalesce(last_archived_wal, '') from pg_stat_archiver") >= last,
    );
    drop(failover);
    let r = s.restore_and_start("after-failover", &["--latest"]);
    assert_eq!(r.psql("select count(*) from t"), "200");
    assert_eq!(r.psql(timeline), "00000003");
}

/// Browsing a PostgreSQL snapshot: `ls` lists relation files, `diff` names the relation
/// that changed between two base backups, `dump` returns a relation file (page windows and
/// their incremental slices) whose bytes hash to what the manifest records.
#[test]
fn browsing_base_backups_ls_diff_dump() {
    let s = setup("local");
    s.pg.psql("create table t (id int primary key, filler text)");
    s.pg.psql("insert into t select g, repeat('x', 200) from generate_series(1, 20000) g");
    s.pg.psql("checkpoint");
    s.env.ok(&["backup", "--policy", "pg"]);
    s.pg.psql("update t set filler = 'changed' where id % 100 = 0");
    s.pg.psql("checkpoint");
    s.env.ok(&["backup", "--policy", "pg"]);
    let rel = s.pg.psql("select pg_relation_filepath('t')");

    let ls = s
        .env
        .ok(&["ls", "--policy", "pg", "latest", &rel, "--json"]);
    let entry: serde_json::Value = serde_json::from_str(ls.lines().next().unwrap()).unwrap();
    assert_eq!(entry["name"], rel.as_str(), "{ls}");
    let size = entry["size"].as_u64().unwrap();
    assert!(size > 4 << 20, "{ls}");

    let diff = s.env.ok(&["diff", "--policy", "pg", "latest~1", "latest"]);
    assert!(
        diff.lines().any(|l| l.starts_with(&format!("M {rel} "))),
        "{diff}"
    );

    let out = s.env.run(&["dump", "--policy", "pg", "latest", &rel]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len() as u64, size);
    let full = s.env.path("full");
    s.env.ok(&[
        "restore",
        "--policy",
        "pg",
        "--target-dir",
        full.to_str().unwrap(),
    ]);
    assert!(
        out.stdout == std::fs::read(full.join(&rel)).unwrap(),
        "dump and restore differ"
    );
    let version = s
        .env
        .run(&["dump", "--policy", "pg", "latest", "PG_VERSION"]);
    assert_eq!(
        version.stdout,
        std::fs::read(s.pg.data.join("PG_VERSION")).unwrap()
    );

    // Options of another engine are refused, not ignored.
    let dir = s.env.path("partial");
    let out = s.env.fails(
        &[
            "restore",
            "--policy",
            "pg",
            "--target-dir",
            dir.to_str().unwrap(),
            "--include",
            "base",
        ],
        2,
    );
    assert!(
        out.contains("--include and --exclude apply to files policies only"),
        "{out}"
    );
}

/// `--db-include shop`: shop's data is restored, the other database's relation files are holes
/// of their size (WAL replay fills the pages it touches), the cluster starts, and the other
/// database can be dropped. Database names stay out of the repository's unencrypted objects.
#[test]
fn db_include_restores_one_database_and_leaves_the_others_droppable() {
    use std::os::unix::fs::MetadataExt;
    let s = setup("local");
    let bin = crate::harness::postgres::bin_dir();
    let sql = |port: u16, db: &str, q: &str| {
        crate::harness::postgres::psql_in(&bin, port, db, q)
            .unwrap_or_else(|e| panic!("psql -d {db} {q}: {e}"))
    };
    s.pg.psql("create database shop");
    s.pg.psql("create database crm_acme");
    sql(
        s.pg.port,
        "shop",
        "create table orders as select generate_series(1, 5000) id",
    );
    sql(
        s.pg.port,
        "crm_acme",
        "create table contacts as select g id, repeat('x', 500) filler from generate_series(1, 30000) g",
    );
    s.pg.psql("checkpoint");
    s.env.ok(&["backup", "--policy", "pg"]);
    // Changes in both after the backup: replay writes pages of the excluded database too.
    sql(s.pg.port, "shop", "insert into orders values (5001)");
    sql(
        s.pg.port,
        "crm_acme",
        "update contacts set filler = 'y' where id % 1000 = 0",
    );
    s.pg.switch_and_wait_archived();

    let mut stack = vec![s.env.setup().join("repo")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(8).any(|w| w == b"crm_acme"),
                    "{} holds a database name in the clear",
                    p.display()
                );
            }
        }
    }

    let out = s.env.fails(
        &[
            "restore",
            "--policy",
            "pg",
            "--target-dir",
            s.env.path("none").to_str().unwrap(),
            "--db-include",
            "nope",
            "--dry-run",
        ],
        2,
    );
    assert!(
        out.contains("no database nope in base backup")
            && out.contains("it has: crm_acme, postgres, shop, template0, template1"),
        "{out}"
    );

    let r = s.restore_and_start("one-db", &["--latest", "--db-include", "shop"]);
    assert_eq!(
        sql(r.port, "shop", "select count(*), max(id) from orders"),
        "5001|5001"
    );
    let oid = r.psql("select oid from pg_database where datname = 'crm_acme'");
    let dir = r.data.join("base").join(&oid);
    let (mut size, mut allocated) = (0, 0);
    for e in std::fs::read_dir(&dir).unwrap() {
        let m = e.unwrap().metadata().unwrap();
        size += m.len();
        allocated += m.blocks() * 512;
    }
    assert!(
        size > 10 << 20 && allocated * 4 < size,
        "crm_acme: {allocated} of {size} bytes allocated"
    );
    r.psql("drop database crm_acme");
    assert!(!dir.exists());
    assert_eq!(
        r.psql("select string_agg(datname, ',' order by datname) from pg_database"),
        "postgres,shop,template0,template1"
    );
}

/// Issue 21, item 4: with data checksums (the harness's clusters have them), every page a
/// `local` backup reads is checked. A clean cluster has no bad page (PostgreSQL's own
/// checksums, thousands of pages); one page damaged with `dd` while the server is stopped is
/// named with its file and block in the backup's output, its `.refs` (`dr info`), and fails
/// the backup under `on_bad_page = "fail"`; pages being written while the backup reads them
/// are not reported (the re-read and start-LSN rules).
#[test]
fn page_checksums_are_checked_and_a_damaged_page_is_named() {
    let mut s = setup("local");
    s.pg.psql("create table c (id int primary key, filler text)");
    s.pg.psql("insert into c select g, md5(g::text) from generate_series(1, 20000) g");
    s.pg.psql("create table w (id int primary key, v int)");
    s.pg.psql("insert into w select g, 0 from generate_series(1, 20000) g");
    s.pg.psql("checkpoint");
    let clean = s.env.json(&["backup", "--policy", "pg"]);
    assert_eq!(clean["bad_pages"], serde_json::json!([]), "{clean}");
    let file = s.pg.psql("select pg_relation_filepath('c')");
    s.pg.while_stopped(|data| {
        let out = std::process::Command::new("dd")
            .arg("if=/dev/urandom")
            .arg(format!("of={}", data.join(&file).display()))
            .args([
                "bs=1",
                &format!("seek={}", 3 * 8192 + 8000),
                "count=64",
                "conv=notrunc",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    // Rows of `w` are updated all through the next backup: none of its pages is reported.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, port, bin) = (stop.clone(), s.pg.port, s.pg.bin.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                crate::harness::postgres::psql_at(
                    &bin,
                    port,
                    &format!("update w set v = v + 1 where id % 10 = {}", n % 10),
                )
                .unwrap();
                n += 1;
            }
            n
        })
    };
    let out = s.env.run(&["backup", "--policy", "pg", "--json"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let updates = writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "warn is the default: committed\n{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bad = v["bad_pages"].as_array().unwrap();
    assert_eq!(
        bad.len(),
        1,
        "exactly the damaged page ({updates} updates of w ran meanwhile): {bad:?}"
    );
    assert_eq!(bad[0]["file"], file.as_str());
    assert_eq!(bad[0]["block"], 3);
    assert!(updates > 0);
    assert!(
        stderr.contains("WARNING: 1 page(s) fail their checksum")
            && stderr.contains(&format!("{file} block 3")),
        "{stderr}"
    );
    let info = s.env.json(&["info", "--policy", "pg"]);
    assert_eq!(info["policies"][0]["newest"]["bad_pages"], 1, "{info:#}");
    // The snapshot still plans and reads as any other (its manifest lists the page too).
    let plan_dir = s.env.path("plan");
    s.env.ok(&[
        "restore",
        "--policy",
        "pg",
        "--target-dir",
        plan_dir.to_str().unwrap(),
        "--dry-run",
    ]);

    let policy = std::fs::read_to_string(s.env.setup().join("policies/pg.toml")).unwrap();
    std::fs::write(
        s.env.setup().join("policies/pg.toml"),
        policy.replace(
            "mode = \"local\" }",
            "mode = \"local\", on_bad_page = \"fail\" }",
        ),
    )
    .unwrap();
    let before = s
        .env
        .json(&["snapshots", "--policy", "pg"])
        .as_array()
        .unwrap()
        .len();
    let said = s.env.fails(&["backup", "--policy", "pg"], 1);
    assert!(
        said.contains("1 page(s) fail their checksum") && said.contains("not committed"),
        "{said}"
    );
    let after = s
        .env
        .json(&["snapshots", "--policy", "pg"])
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after, "nothing committed");
}

/// Issue 21, item 5, for PostgreSQL: SIGTERM ends `restore --start`'s wait for start-up and
/// recovery at once (here a `pg_ctl` that never returns, as `pg_ctl -w` during a long replay).
#[test]
fn sigterm_ends_the_wait_for_recovery_at_once() {
    let mut s = setup("local");
    s.pg.psql("create table t (id int)");
    s.env.ok(&["backup", "--policy", "pg"]);
    let major =
        s.pg.psql("select current_setting('server_version_num')::int / 10000");
    let fake = s.env.path("fake-bin");
    std::fs::create_dir(&fake).unwrap();
    std::fs::write(
        fake.join("pg_ctl"),
        format!("#!/bin/sh\n[ \"$1\" = --version ] && {{ echo 'pg_ctl (PostgreSQL) {major}.0'; exit 0; }}\nfor a; do [ \"$a\" = start ] && exec sleep 30; done\nexit 0\n"),
    )
    .unwrap();
    std::fs::set_permissions(fake.join("pg_ctl"), std::fs::Permissions::from_mode(0o755)).unwrap();
    give_to_postgres(&fake);
    s.env.add_storage(
        &format!(
            "\n[sandbox]\npostgres = {{ {major} = \"{}\" }}\n",
            fake.display()
        ),
        vec![],
    );
    let dir = s.env.path("r");
    let (took, out) = crate::redis::terminate_restore_start(
        &s.env,
        "pg",
        &dir,
        std::time::Duration::from_secs(4),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        took < std::time::Duration::from_secs(2),
        "exited {took:?} after SIGTERM: {stderr}"
    );
}

/// Issue 21, item 3: a backup from a streaming standby (`source.standby_conninfo_file`, dr on
/// the standby's host reading its data directory). The backup functions run on the standby
/// (its label says `BACKUP FROM: standby`), the primary only switches WAL and archives it, and
/// reads nothing for the backup; a PITR from that backup is row-exact.
#[test]
fn a_backup_from_a_standby_recovers_exactly_and_leaves_the_primary_alone() {
    let s = setup("local");
    s.pg.psql("create table t (id int primary key, filler text)");
    s.pg.psql("insert into t select g, md5(g::text) from generate_series(1, 20000) g");
    s.pg.psql("checkpoint");
    let standby = s.pg.standby();
    crate::harness::wait_until(
        "the standby to catch up",
        std::time::Duration::from_secs(30),
        || standby.psql("select count(*) from t") == "20000",
    );
    let conninfo = s.env.setup().join("standby.conninfo");
    std::fs::write(&conninfo, standby.conninfo()).unwrap();
    std::fs::set_permissions(&conninfo, std::fs::Permissions::from_mode(0o600)).unwrap();
    s.env.policy(
        "pg",
        &format!(
            "source = {{ type = \"postgres\", conninfo_file = \"pg.conninfo\", standby_conninfo_file = \"standby.conninfo\", data_dir = \"{}\", mode = \"local\" }}\ntargets = [\"local\"]\n",
            standby.data.display()
        ),
    );
    give_setup_to_postgres(&s.env.setup());
    let primary_file =
        s.pg.data
            .join(s.pg.psql("select pg_relation_filepath('t')"));
    let atime = |p: &std::path::Path| std::fs::metadata(p).unwrap().accessed().unwrap();
    // An atime older than the mtime: any read moves it (relatime's rule), as a control shows.
    let age = |p: &std::path::Path| {
        let m = filetime::FileTime::from_last_modification_time(&std::fs::metadata(p).unwrap());
        filetime::set_file_atime(
            p,
            filetime::FileTime::from_unix_time(m.unix_seconds() - 3600, 0),
        )
        .unwrap();
    };
    let control = s.env.path("control");
    std::fs::write(&control, b"x").unwrap();
    age(&control);
    let aged = atime(&control);
    let _ = std::fs::read(&control).unwrap();
    let atimes_move = atime(&control) != aged;
    age(&primary_file);
    let (before_atime, before_reads) = (
        atime(&primary_file),
        s.pg.psql("select sum(blks_read) from pg_stat_database"),
    );
    let backup = s.env.json(&["backup", "--policy", "pg"]);
    assert_eq!(backup["bad_pages"], serde_json::json!([]), "{backup}");
    let after_reads = s.pg.psql("select sum(blks_read) from pg_stat_database");
    if atimes_move {
        assert_eq!(
            atime(&primary_file),
            before_atime,
            "the primary's relation file was not read"
        );
    } else {
        eprintln!(
            "NOTE: this filesystem does not update atimes (noatime): only pg_stat_database's blks_read is compared"
        );
    }
    let (b, a): (i64, i64) = (before_reads.parse().unwrap(), after_reads.parse().unwrap());
    assert!(
        a - b < 100,
        "the primary read {} blocks during the backup",
        a - b
    );
    let label = s
        .env
        .ok(&["dump", "--policy", "pg", "latest", "backup_label"]);
    assert!(label.contains("BACKUP FROM: standby"), "{label}");

    s.pg.psql("insert into t values (20001, 'a'), (20002, 'b')");
    let t = s.pg.psql("select clock_timestamp()");
    std::thread::sleep(std::time::Duration::from_millis(300));
    s.pg.psql("insert into t values (20003, 'c')");
    s.pg.switch_and_wait_archived();
    let r = s.restore_and_start("from-standby", &["--point-in-time", t.as_str()]);
    assert_eq!(r.psql("select count(*), max(id) from t"), "20002|20002");
}
