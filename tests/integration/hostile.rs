//! A compromised database host holds the writer's keys (the age recipients and the chunk-id /
//! MAC key): everything it forges decrypts and verifies. Each attack below is crafted with
//! those keys (harness::forge), run against the real binary, and must end with a clear error
//! (exit 1, naming the snapshot and entry) and nothing changed outside the restore target.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::dr::{DrEnv, bin};
use crate::harness::forge::{self, Forger};
use crate::harness::{free_port, tree};

/// A files backup of `a` (a short file) and `b` (100 KB of noise), and a directory outside
/// every restore target with files an attacker would like to change.
struct Setup {
    env: DrEnv,
    forger: Forger,
    outside: PathBuf,
    before: PathBuf,
}

fn setup() -> Setup {
    let env = DrEnv::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a"), b"payload\n").unwrap();
    std::fs::write(data.join("b"), tree::noise(1, 100_000)).unwrap();
    env.files_policy("p", &data, &["local"]);
    env.ok(&["backup", "--policy", "p"]);
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"victim\n").unwrap();
    std::fs::write(outside.join("victim2"), b"keep me\n").unwrap();
    for f in ["victim", "victim2"] {
        std::fs::set_permissions(outside.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let before = env.path("outside.before");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&outside)
        .arg(&before)
        .status()
        .unwrap();
    assert!(st.success());
    let forger = Forger::new(&env);
    Setup {
        env,
        forger,
        outside,
        before,
    }
}

impl Setup {
    /// Replaces the newest snapshot's entries.
    fn forge(&self, artifacts: Vec<dr::repo::manifest::Artifact>) {
        let mut m = self.forger.newest("p");
        m.artifacts = artifacts;
        self.forger.put_manifest(&m);
    }

    fn chunks(&self, name: &str) -> Vec<dr::repo::manifest::ChunkRef> {
        forge::chunks_of(&self.forger.newest("p"), name)
    }

    fn restore(&self, target: &Path, extra: &[&str]) -> std::process::Output {
        let mut args = vec![
            "restore",
            "--policy",
            "p",
            "--target-dir",
            target.to_str().unwrap(),
        ];
        args.extend(extra);
        self.env.run(&args)
    }

    /// A restore that must exit 1 mentioning `needle`, leaving `outside` as it was.
    fn refused(&self, target: &Path, extra: &[&str], needle: &str) {
        let out = self.restore(target, extra);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "restore should fail:\n{text}");
        assert!(text.contains(needle), "`{needle}` not in:\n{text}");
        assert!(!text.contains("panicked"), "{text}");
        self.outside_unchanged();
    }

    fn outside_unchanged(&self) {
        let d = tree::diff(&self.before, &self.outside);
        assert!(d.is_empty(), "outside the target changed: {d:?}");
    }
}

fn victim(s: &Setup) -> String {
    s.outside.join("victim").display().to_string()
}

#[test]
fn a_symlink_and_a_file_of_the_same_name_are_refused() {
    let s = setup();
    let a = s.chunks("a");
    s.forge(vec![
        forge::dir("."),
        forge::symlink("L", &victim(&s)),
        forge::file("L", 0o4777, a),
    ]);
    s.refused(&s.env.path("r1"), &[], "`L` is listed twice");
}

#[test]
fn entries_under_a_symlink_of_the_snapshot_are_refused() {
    let s = setup();
    let a = s.chunks("a");
    s.forge(vec![
        forge::dir("."),
        forge::symlink("D", s.outside.to_str().unwrap()),
        forge::file("D/planted", 0o644, a.clone()),
        forge::file("D/victim2", 0o644, a),
    ]);
    s.refused(&s.env.path("r2"), &[], "lies under D");
    assert!(!s.outside.join("planted").exists());
}

#[test]
fn force_never_writes_through_what_is_in_the_target() {
    let s = setup();
    let a = s.chunks("a");
    let target = s.env.path("r3");
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&s.outside, target.join("sub")).unwrap();
    std::os::unix::fs::symlink(victim(&s), target.join("f")).unwrap();
    std::fs::hard_link(s.outside.join("victim2"), target.join("h")).unwrap();
    // A directory on the way that is a symlink: refused.
    s.forge(vec![
        forge::dir("."),
        forge::dir("sub"),
        forge::file("sub/victim", 0o6755, a.clone()),
    ]);
    s.refused(&target, &["--force"], "is a symbolic link");
    // A file where a symlink or a hard link to a file elsewhere is: replaced, not written
    // through.
    s.forge(vec![
        forge::dir("."),
        forge::file("f", 0o644, a.clone()),
        forge::file("h", 0o644, a),
    ]);
    let out = s.restore(&target, &["--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["f", "h"] {
        let m = std::fs::symlink_metadata(target.join(f)).unwrap();
        assert!(m.is_file() && m.nlink() == 1, "{f} is not a new file");
        assert_eq!(std::fs::read(target.join(f)).unwrap(), b"payload\n");
    }
    s.outside_unchanged();
}

#[test]
fn setuid_and_setgid_bits_are_dropped_unless_asked_for() {
    let s = setup();
    let a = s.chunks("a");
    s.forge(vec![
        forge::dir("."),
        forge::file("suid", 0o4755, a.clone()),
        forge::file("sgid", 0o2750, a),
    ]);
    let mode = |dir: &Path, f: &str| std::fs::metadata(dir.join(f)).unwrap().mode() & 0o7777;
    let plain = s.env.path("r4");
    assert!(s.restore(&plain, &[]).status.success());
    assert_eq!((mode(&plain, "suid"), mode(&plain, "sgid")), (0o755, 0o750));
    let kept = s.env.path("r5");
    assert!(s.restore(&kept, &["--keep-setuid"]).status.success());
    assert_eq!((mode(&kept, "suid"), mode(&kept, "sgid")), (0o4755, 0o2750));
}

#[test]
fn chunk_lengths_that_do_not_fit_the_file_are_refused_before_writing() {
    let s = setup();
    let mut b = s.chunks("b");
    let real = b[0];
    let cases: Vec<(&str, Vec<dr::repo::manifest::ChunkRef>, Option<u64>, &str)> = vec![
        // One chunk claiming 4 GiB: would make a 4 GB sparse file.
        (
            "huge",
            vec![dr::repo::manifest::ChunkRef::whole(real.0, u32::MAX)],
            None,
            "lists chunk",
        ),
        // A chunk listed shorter than it is: the next would overlap it.
        (
            "short",
            vec![
                dr::repo::manifest::ChunkRef::whole(real.0, real.1 - 1),
                real,
            ],
            None,
            "lists chunk",
        ),
        // A slice reaching past the chunk's end: would write bytes of whatever follows.
        (
            "slice",
            vec![dr::repo::manifest::ChunkRef(real.0, real.1, Some(1))],
            None,
            "lists bytes 1..",
        ),
        // A size that is not the chunks' sum.
        (
            "size",
            vec![real],
            Some(u64::from(real.1) + 4096),
            "has chunks of",
        ),
    ];
    for (i, (name, chunks, size, needle)) in cases.into_iter().enumerate() {
        let mut f = forge::file(name, 0o644, chunks);
        if let Some(size) = size {
            f.size = size;
        }
        s.forge(vec![forge::dir("."), f]);
        let target = s.env.path(&format!("r6-{i}"));
        s.refused(&target, &[], needle);
        let left: Vec<_> = std::fs::read_dir(&target)
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{name}: {left:?} written");
    }
    b.truncate(1);
}

#[test]
fn a_backup_after_a_pack_was_deleted_is_complete() {
    let s = setup();
    let packs: Vec<PathBuf> = std::fs::read_dir(s.env.setup().join("repo/packs"))
        .unwrap()
        .flat_map(|aa| std::fs::read_dir(aa.unwrap().path()).unwrap())
        .map(|p| p.unwrap().path())
        .collect();
    for p in &packs {
        std::fs::remove_file(p).unwrap();
    }
    let out = s.env.ok(&["backup", "--policy", "p"]);
    assert!(!out.contains("4 B new"), "nothing was stored again: {out}");
    let target = s.env.path("r7");
    let out = s.restore(&target, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = tree::diff(&s.env.path("data"), &target);
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn an_altered_repository_descriptor_is_refused() {
    let s = setup();
    let meta = s.env.setup().join("repo/dr-repo.json");
    let original = std::fs::read_to_string(&meta).unwrap();
    for (min, avg, max) in [(1, 1, 1), (64, 256, 1024)] {
        let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
        v["chunker"] = serde_json::json!({"min": min, "avg": avg, "max": max});
        std::fs::write(&meta, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        let err = s.env.fails(&["backup", "--policy", "p"], 1);
        assert!(err.contains("dr-repo.json"), "{err}");
    }
    std::fs::write(&meta, original).unwrap();
    s.env.ok(&["backup", "--policy", "p"]);
}

#[test]
fn a_deleted_newest_manifest_is_a_verify_error() {
    let s = setup();
    let mut cfg = std::fs::read_to_string(&s.env.config).unwrap();
    cfg.push_str("\n[daemon]\njob_timeout = \"1s\"\n");
    std::fs::write(&s.env.config, cfg).unwrap();
    s.env.ok(&["backup", "--policy", "p"]);
    let newest = s.forger.newest("p");
    let key = dr::repo::layout::manifest("p", &newest.snapshot);
    std::fs::remove_file(s.forger.repo.join(key.as_str())).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = s.env.fails(&["verify", "--policy", "p"], 1);
    assert!(out.contains("without a manifest"), "{out}");
}

#[test]
fn init_is_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let setup = dir.path().join("s");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000 && exec \"{}\" init --dir \"{}\"",
            bin(),
            setup.display()
        ))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let mode = |p: &str| std::fs::metadata(setup.join(p)).unwrap().mode() & 0o777;
    assert_eq!(mode("dr.toml"), 0o600);
    for d in ["keys", "policies", "repo", "state", "restore-drills"] {
        assert_eq!(mode(d), 0o700, "{d}");
    }
}

/// Restores hold a bounded number of descriptors: 100,000 files restore under `ulimit -n
/// 256` (the default soft limit of many services is 1024).
#[test]
fn a_hundred_thousand_files_restore_under_a_low_descriptor_limit() {
    let env = DrEnv::new();
    let data = env.path("many");
    for d in 0..200 {
        let dir = data.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..500 {
            let n = d * 500 + f;
            std::fs::write(
                dir.join(format!("f{f}")),
                tree::text(n, 200 + (n as usize * 37) % 3800),
            )
            .unwrap();
        }
    }
    env.files_policy("many", &data, &["local"]);
    env.ok(&["backup", "--policy", "many"]);
    let target = env.path("many-restored");
    restore_under_256_descriptors(
        &env,
        &["--policy", "many", "--target-dir", target.to_str().unwrap()],
    );
    let d = tree::diff(&data, &target);
    assert!(d.is_empty(), "{:?}", &d[..d.len().min(5)]);
}

/// A PostgreSQL base backup whose configuration runs commands, and forged tablespace names.
#[test]
fn restored_postgres_runs_nothing_from_the_backup() {
    let s = crate::postgres::setup("local");
    let marker = s.env.path("pwned");
    for setting in ["recovery_end_command", "archive_cleanup_command"] {
        s.pg.psql(&format!(
            "alter system set {setting} = 'touch {}-{setting}'",
            marker.display()
        ));
    }
    s.pg.psql("select pg_reload_conf()");
    s.pg.psql("create table t (id int primary key)");
    s.pg.psql("insert into t select generate_series(1, 100)");
    s.env.ok(&["backup", "--policy", "pg"]);
    s.pg.psql("insert into t values (101)");
    s.pg.switch_and_wait_archived();
    let dir = s.env.path("pg-r");
    let port = free_port().to_string();
    let d = dir.to_str().unwrap();
    let out = s.env.ok(&[
        "restore",
        "--policy",
        "pg",
        "--target-dir",
        d,
        "--latest",
        "--start",
        "--port",
        &port,
    ]);
    assert!(out.contains("recovered and promoted"), "{out}");
    let restored = crate::harness::postgres::Restored::new(dir.clone(), port.parse().unwrap());
    assert_eq!(restored.psql("select count(*) from t"), "101");
    let planted: Vec<_> = std::fs::read_dir(s.env.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("pwned"))
        .map(|e| e.file_name())
        .collect();
    assert!(
        planted.is_empty(),
        "a command from the backup ran: {planted:?}"
    );
    assert!(
        !PathBuf::from(format!("{d}.wal-spool")).exists(),
        "spool left behind"
    );
    // --force into the running restored cluster is refused.
    let err = s.env.fails(
        &[
            "restore",
            "--policy",
            "pg",
            "--target-dir",
            d,
            "--force",
            "--latest",
        ],
        2,
    );
    assert!(err.contains("running PostgreSQL server"), "{err}");
    assert!(err.contains("\nhint: stop it first"), "{err}");
    drop(restored);
    let err = s.env.fails(
        &[
            "restore",
            "--policy",
            "pg",
            "--target-dir",
            &format!("{d}-x"),
            "--xid",
            "abc",
        ],
        2,
    );
    assert!(err.contains("--xid"), "{err}");
    // Restored for the operator to start by hand: the settings are named before they run.
    let plain = format!("{d}-plain");
    let out = s.env.ok(&[
        "restore",
        "--policy",
        "pg",
        "--target-dir",
        &plain,
        "--latest",
    ]);
    assert!(
        out.contains("postgresql.auto.conf: recovery_end_command"),
        "{out}"
    );

    // Forged tablespace names become paths beside the target: only OIDs are accepted.
    let forger = Forger::new(&s.env);
    let m = forger.newest("pg");
    let mut refs = forger.refs(&m);
    refs.facts.insert(
        "tablespaces".into(),
        serde_json::json!({"../evilsib": "/srv/evil"}),
    );
    forger.put_refs(&refs);
    let target = s.env.path("pg-ts");
    let err = s.env.fails(
        &[
            "restore",
            "--policy",
            "pg",
            "--target-dir",
            target.to_str().unwrap(),
        ],
        1,
    );
    assert!(err.contains("not an OID"), "{err}");
    assert!(!s.env.path("evilsib").exists());
    assert!(!target.exists() || std::fs::read_dir(&target).unwrap().next().is_none());
}

/// Drill sandboxes never run restored data as root or as a user that can read dr's keys.
#[test]
fn drills_refuse_a_sandbox_user_that_could_read_the_keys() {
    if !crate::harness::postgres::is_root() {
        eprintln!(
            "SKIP drills_refuse_a_sandbox_user_that_could_read_the_keys: needs root (switches users)"
        );
        return;
    }
    let s = crate::postgres::setup("local");
    s.env.ok(&["backup", "--policy", "pg"]);
    let drills = s.env.setup().join("restore-drills");
    std::fs::create_dir_all(&drills).unwrap();
    let refused = |name: &str, text: &str, needle: &str| {
        std::fs::write(drills.join(format!("{name}.toml")), text).unwrap();
        let out = s.env.run(&["drill", "run", name, "--json"]);
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["verdict"], "fail", "{r:#}");
        assert!(r["reasons"].to_string().contains(needle), "{needle}: {r:#}");
    };
    let drill = "policy = \"pg\"\nfrom_region = \"local\"\n";
    refused(
        "as-root",
        &format!("{drill}[sandbox]\nrun_as = \"root\"\n"),
        "is root",
    );
    // The identity readable by the sandbox user: refused, naming the file.
    let key = s.env.setup().join("keys/restore.key");
    std::os::unix::fs::chown(&key, Some(crate::harness::postgres::postgres_uid()), None).unwrap();
    refused("readable", drill, "restore.key");
}

/// A PostgreSQL cluster of 5,000 tables (over 20,000 files) restores under `ulimit -n 256`.
#[test]
fn postgres_with_5000_tables_restores_under_a_low_descriptor_limit() {
    let s = crate::postgres::setup("local");
    s.pg.psql(
        "do $$ begin for i in 1..5000 loop \
         execute format('create table t%s (id int primary key, v text)', i); \
         execute format('insert into t%s values (%s, repeat(''x'', %s))', i, i, i % 100); \
         if i % 500 = 0 then commit; end if; \
         end loop; end $$",
    );
    s.env.ok(&["backup", "--policy", "pg"]);
    s.pg.switch_and_wait_archived();
    let dir = s.env.path("pg-many");
    let port = free_port();
    let port_arg = port.to_string();
    restore_under_256_descriptors(
        &s.env,
        &[
            "--policy",
            "pg",
            "--latest",
            "--target-dir",
            dir.to_str().unwrap(),
            "--start",
            "--port",
            &port_arg,
        ],
    );
    let files = crate::postgres::walkdir(&dir.join("base")).len();
    assert!(
        files > 15_000,
        "only {files} files: the test is not testing"
    );
    let r = crate::harness::postgres::Restored::new(dir, port);
    assert_eq!(
        r.psql("select count(*) from pg_class where relname ~ '^t[0-9]+$' and relkind = 'r'"),
        "5000"
    );
    assert_eq!(r.psql("select v from t4321"), "x".repeat(21));
}

/// `dr restore ARGS` with the soft descriptor limit at 256, which must succeed.
fn restore_under_256_descriptors(env: &DrEnv, args: &[&str]) {
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$@\"")
        .arg("sh")
        .arg(bin())
        .arg("-c")
        .arg(&env.config)
        .arg("restore")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore under ulimit -n 256: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
