//! Redis against real `redis-server`s: both SYNC framings, 100k keys of every type with TTLs
//! restored bit-exact (`DEBUG DIGEST` covers keys, types, values and expire times), auth, and
//! a damaged replication stream that must fail the backup and commit nothing.

use std::os::unix::fs::PermissionsExt;

use crate::harness::dr::DrEnv;
use crate::harness::free_port;
use crate::harness::redis::{Damage, Redis, damaging_proxy};

const POPULATE: &str = r"
for i = 1, tonumber(ARGV[1]) do
  local k = 'k:' .. i
  local t = i % 6
  if t == 0 then redis.call('SET', k, 'value-' .. i)
  elseif t == 1 then redis.call('HSET', k, 'a', i, 'b', 'x' .. i)
  elseif t == 2 then redis.call('RPUSH', k, i, i + 1, i + 2)
  elseif t == 3 then redis.call('SADD', k, 'm' .. i, 'n' .. i)
  elseif t == 4 then redis.call('ZADD', k, i, 'z' .. i, i + 1, 'y' .. i)
  else redis.call('XADD', k, '*', 'f', i) end
  if i % 10 == 0 then redis.call('EXPIRE', k, 3600 + (i % 1000)) end
end
return 1";

fn populate(r: &Redis, n: u32) {
    let _: i64 = redis::cmd("EVAL")
        .arg(POPULATE)
        .arg(0)
        .arg(n)
        .query(&mut r.conn())
        .unwrap();
}

fn policy(env: &DrEnv, port: u16, extra: &str) {
    env.policy("cache", &format!("source = {{ type = \"redis\", url = \"redis://127.0.0.1:{port}\"{extra} }}\ntargets = [\"local\"]\n"));
}

fn snapshot_count(env: &DrEnv) -> usize {
    env.json(&["snapshots", "--policy", "cache"])
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn both_framings_restore_100k_keys_exactly() {
    for diskless in [true, false] {
        let src = Redis::start(diskless, None, &[]);
        populate(&src, 100_000);
        let env = DrEnv::new();
        policy(&env, src.port, "");
        let b = env.json(&["backup", "--policy", "cache"]);
        assert!(b["bytes_read"].as_u64().unwrap() > 1_000_000, "{b}");
        let dir = tempfile::tempdir().unwrap();
        let out = env.ok(&[
            "restore",
            "--policy",
            "cache",
            "--target-dir",
            dir.path().to_str().unwrap(),
            "--force",
        ]);
        assert!(out.contains("appendonly no"), "{out}");
        if diskless {
            let other = env.path("delta");
            let out = env.fails(
                &[
                    "restore",
                    "--policy",
                    "cache",
                    "--target-dir",
                    other.to_str().unwrap(),
                    "--delta",
                ],
                2,
            );
            assert!(
                out.contains("delta restores (--delta) apply to files and postgres policies only"),
                "{out}"
            );
            assert!(
                !other.exists(),
                "refused, yet {} was created",
                other.display()
            );
        }
        let restored = Redis::start_in(dir, false, None, &[]);
        let n: u64 = redis::cmd("DBSIZE").query(&mut restored.conn()).unwrap();
        assert_eq!(n, 100_000, "diskless={diskless}");
        assert_eq!(
            restored.digest(),
            src.digest(),
            "diskless={diskless}: restored data differs"
        );
    }
}

#[test]
fn start_checks_the_key_count() {
    let src = Redis::start(true, None, &[]);
    populate(&src, 5_000);
    let env = DrEnv::new();
    policy(&env, src.port, "");
    env.ok(&["backup", "--policy", "cache"]);
    let dir = env.path("r");
    // Without --port a free port is picked and printed, never Redis's 6379.
    let out = env.ok(&[
        "restore",
        "--policy",
        "cache",
        "--target-dir",
        dir.to_str().unwrap(),
        "--start",
    ]);
    assert!(out.contains("with 5000 keys"), "{out}");
    let port: u16 = out
        .split("running on 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port printed: {out}"));
    assert_ne!(port, 6379, "{out}");
    let _: () = redis::cmd("SHUTDOWN")
        .arg("NOSAVE")
        .query(&mut crate::harness::redis::conn_at(port))
        .unwrap_or(());
}

#[test]
fn password_and_acl_user() {
    let src = Redis::start(true, Some("s3cret-pass"), &[]);
    populate(&src, 1_000);
    let _: String = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("backup")
        .arg("on")
        .arg(">backup-pass")
        .arg("+@all")
        .arg("~*")
        .query(&mut src.conn())
        .unwrap();
    let mut env = DrEnv::new();
    let pw = env.setup().join("redis.pass");
    std::fs::write(&pw, "s3cret-pass").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    policy(&env, src.port, ", password_file = \"redis.pass\"");
    env.ok(&["backup", "--policy", "cache"]);
    env.add_storage("", vec![("DR_TEST_REDIS_PW".into(), "backup-pass".into())]);
    policy(
        &env,
        src.port,
        ", username = \"backup\", password_env = \"DR_TEST_REDIS_PW\"",
    );
    env.ok(&["backup", "--policy", "cache"]);
    std::fs::write(&pw, "wrong").unwrap();
    policy(&env, src.port, ", password_file = \"redis.pass\"");
    let e = env.fails(&["backup", "--policy", "cache"], 1);
    assert!(
        e.to_lowercase().contains("wrongpass") || e.contains("authentication failed"),
        "{e}"
    );
    assert!(
        !e.contains("wrong\""),
        "the password leaked into the error: {e}"
    );
    assert_eq!(snapshot_count(&env), 2);
}

#[test]
fn damaged_stream_fails_and_commits_nothing() {
    let src = Redis::start(false, None, &[]);
    populate(&src, 20_000);
    let env = DrEnv::new();
    policy(&env, src.port, "");
    env.ok(&["backup", "--policy", "cache"]);
    for (damage, needle) in [
        (Damage::FlipBitAt(50_000), "checksum mismatch"),
        (Damage::CutAfter(50_000), "truncated"),
    ] {
        let proxy = damaging_proxy(src.port, damage);
        policy(&env, proxy, "");
        let e = env.fails(&["backup", "--policy", "cache"], 1);
        assert!(e.contains(needle), "expected {needle}: {e}");
        assert_eq!(snapshot_count(&env), 1, "a damaged stream left a snapshot");
    }
}

/// A Redis Cluster of `n` masters on fresh servers, slots spread by `redis-cli --cluster create`.
/// The bus port is a free port of its own: the default (port + 10000) overflows for ports
/// above 55535, which the kernel hands out.
fn cluster(n: usize) -> Vec<Redis> {
    let nodes: Vec<Redis> = (0..n)
        .map(|_| {
            let bus = crate::harness::free_port().to_string();
            Redis::start(
                true,
                None,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                    "--cluster-port",
                    &bus,
                ],
            )
        })
        .collect();
    let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
    args.extend(nodes.iter().map(|r| format!("127.0.0.1:{}", r.port)));
    args.extend([
        "--cluster-replicas".to_owned(),
        "0".to_owned(),
        "--cluster-yes".to_owned(),
    ]);
    let out = std::process::Command::new("redis-cli")
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    crate::harness::wait_until("cluster ok", std::time::Duration::from_secs(30), || {
        nodes.iter().all(|r| {
            redis::cmd("CLUSTER")
                .arg("INFO")
                .query::<String>(&mut r.conn())
                .is_ok_and(|i| i.contains("cluster_state:ok"))
        })
    });
    nodes
}

#[test]
fn cluster_backup_has_one_rdb_per_master_and_restore_checks_the_layout() {
    let nodes = cluster(3);
    // Each key is accepted by exactly the master owning its slot (the others answer MOVED).
    let mut conns: Vec<redis::Connection> = nodes.iter().map(Redis::conn).collect();
    for i in 0..3000 {
        let stored = conns
            .iter_mut()
            .map(|c| {
                redis::cmd("SET")
                    .arg(format!("key:{i}"))
                    .arg(i)
                    .query::<()>(c)
                    .is_ok()
            })
            .filter(|ok| *ok)
            .count();
        assert_eq!(stored, 1);
    }
    let env = DrEnv::new();
    policy(&env, nodes[0].port, "");
    let b = env.json(&["backup", "--policy", "cache"]);
    assert_eq!(b["artifacts"], 3, "{b}");

    let dir = env.path("restored");
    let out = env.ok(&[
        "restore",
        "--policy",
        "cache",
        "--target-dir",
        dir.to_str().unwrap(),
        "--cluster-layout-from",
        &format!("redis://127.0.0.1:{}", nodes[1].port),
    ]);
    assert!(out.contains("place "), "{out}");
    let map: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("slot-map.json")).unwrap()).unwrap();
    assert_eq!(map.as_array().unwrap().len(), 3);
    // Every shard's RDB loads, and together they hold every key with its value.
    let mut total = 0;
    for shard in map.as_array().unwrap() {
        let d = tempfile::tempdir().unwrap();
        std::fs::copy(
            dir.join(shard["file"].as_str().unwrap()),
            d.path().join("dump.rdb"),
        )
        .unwrap();
        let r = Redis::start_in(d, true, None, &[]);
        let n: u64 = redis::cmd("DBSIZE").query(&mut r.conn()).unwrap();
        assert_eq!(n, shard["keys"].as_u64().unwrap());
        total += n;
        let k: Option<String> = redis::cmd("RANDOMKEY").query(&mut r.conn()).unwrap();
        let k = k.unwrap();
        let v: String = redis::cmd("GET").arg(&k).query(&mut r.conn()).unwrap();
        assert_eq!(format!("key:{v}"), k);
    }
    assert_eq!(total, 3000);

    // A drill starts one sandbox server per master and checks the key count over all of them.
    std::fs::write(
        env.setup().join("restore-drills/cluster.toml"),
        "policy = \"cache\"\nrpo = \"1h\"\n[[check]]\nredis = \"GET key:42\"\nexpect = \"= 42\"\n",
    )
    .unwrap();
    let out = env.run(&["drill", "run", "cluster", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["verdict"], "pass", "{r:#}");
    assert!(r.to_string().contains("3000 keys"), "{r:#}");

    // A cluster with another layout is refused, naming both.
    let other = cluster(4);
    let dir2 = env.path("restored2");
    let err = env.fails(
        &[
            "restore",
            "--policy",
            "cache",
            "--target-dir",
            dir2.to_str().unwrap(),
            "--cluster-layout-from",
            &format!("redis://127.0.0.1:{}", other[0].port),
        ],
        2,
    );
    assert!(
        err.contains("refusing") && err.contains("[0-5460]") && err.contains("[0-4095]"),
        "{err}"
    );
    assert!(err.contains("\nhint: reshard the target cluster"), "{err}");
}

/// `rediss://`: the command connection and the replication stream both over TLS, the server's
/// certificate checked against `tls_ca_file`; a wrong CA is a clear error.
#[test]
fn tls_backup_restores_exactly_and_checks_the_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    let sh = |args: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for ca in ["ca", "other-ca"] {
        sh(&format!(
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout {ca}.key -out {ca}.crt -days 2 -subj /CN={ca}"
        ));
    }
    sh(
        "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost",
    );
    sh(
        "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext && openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext",
    );
    let tls_port = free_port();
    let (crt, key, ca) = (d.join("server.crt"), d.join("server.key"), d.join("ca.crt"));
    let p = tls_port.to_string();
    let src = Redis::start(
        true,
        None,
        &[
            "--tls-port",
            &p,
            "--tls-cert-file",
            crt.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-ca-cert-file",
            ca.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
            "--tls-replication",
            "yes",
        ],
    );
    populate(&src, 5_000);
    let env = DrEnv::new();
    let policy_with = |ca: &std::path::Path| {
        env.policy(
            "cache",
            &format!(
                "source = {{ type = \"redis\", url = \"rediss://127.0.0.1:{tls_port}\", tls_ca_file = \"{}\" }}\ntargets = [\"local\"]\n",
                ca.display()
            ),
        );
    };
    policy_with(&d.join("other-ca.crt"));
    let err = env.fails(&["backup", "--policy", "cache"], 1);
    assert!(err.contains("rediss://127.0.0.1"), "{err}");
    policy_with(&ca);
    env.ok(&["backup", "--policy", "cache"]);
    let dir = tempfile::tempdir().unwrap();
    env.ok(&[
        "restore",
        "--policy",
        "cache",
        "--target-dir",
        dir.path().to_str().unwrap(),
    ]);
    let restored = Redis::start_in(dir, true, None, &[]);
    assert_eq!(restored.digest(), src.digest());
}

/// Issue 21, item 5: `--start` (and drills) on a dump the server cannot load used to wait for
/// an hour. A dump newer than the server reads is refused before it starts, naming both
/// versions; a server that exits while loading is noticed at once, with its log.
#[test]
fn a_server_that_cannot_load_the_dump_is_refused_or_noticed_at_once() {
    use dr::source::redis::server::start;
    let dir = tempfile::tempdir().unwrap();

    // A dump of a newer RDB format than Debian's redis-server 7.0 reads (Redis 7.4's: 12).
    std::fs::write(
        dir.path().join("dump.rdb"),
        b"REDIS0012\xfa\x09redis-ver\x057.4.1",
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    let e = start(
        dir.path(),
        free_port(),
        None,
        None,
        &[],
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("reads RDB version 12") && e.contains("reads up to RDB 10"),
        "{e}"
    );
    assert!(e.contains("Redis 7.4 or later"), "{e}");
    assert!(
        !dir.path().join("redis.pid").exists(),
        "refused before it started"
    );

    // A dump it reads the header of but cannot load: the server exits; dr says so quickly.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dump.rdb"),
        b"REDIS0010\xfe\x00\xff\x01\x02garbage",
    )
    .unwrap();
    let e = start(
        dir.path(),
        free_port(),
        None,
        None,
        &[],
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("exited while loading dump.rdb"), "{e}");
    assert!(e.lines().count() > 1, "the log's end is included: {e}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        t0.elapsed()
    );
}

/// Issue 21, item 5: a Valkey 8.1 dump (RDB 11) is backed up, and the RDB version chooses the
/// server that starts it: Debian's redis-server 7.0 (RDB 10) is refused before anything
/// starts, naming both versions and `[sandbox] redis`; with Valkey named there, `--start` and a
/// drill load it with every key.
#[test]
fn a_valkey_dump_starts_with_a_server_that_reads_it() {
    let valkey = crate::harness::redis::valkey_bin();
    let src = Redis::start_bin(&valkey, tempfile::tempdir().unwrap(), true, None, &[]);
    populate(&src, 3_000);
    let mut env = DrEnv::new();
    policy(&env, src.port, "");
    env.ok(&["backup", "--policy", "cache"]);
    let restore = |env: &DrEnv, name: &str| {
        let dir = env.path(name);
        env.run(&[
            "restore",
            "--policy",
            "cache",
            "--target-dir",
            dir.to_str().unwrap(),
            "--start",
        ])
    };
    // Only what PATH has (the valkey run of this suite puts valkey-server on it).
    let on_path = std::process::Command::new("valkey-server")
        .arg("--version")
        .output()
        .is_ok();
    if !on_path {
        let out = restore(&env, "refused");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{said}");
        assert!(
            said.contains("reads RDB version 11") && said.contains("reads up to RDB 10"),
            "{said}"
        );
        assert!(said.contains("[sandbox] redis = ["), "{said}");
    }
    env.add_storage(
        &format!("\n[sandbox]\nredis = [\"{}\"]\n", valkey.display()),
        vec![],
    );
    let out = restore(&env, "started");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("valkey-server 8.1.") && text.contains("with 3000 keys"),
        "{text}"
    );
    let port: u16 = text
        .split("running on 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port printed: {text}"));
    let _: () = redis::cmd("SHUTDOWN")
        .arg("NOSAVE")
        .query(&mut crate::harness::redis::conn_at(port))
        .unwrap_or(());
    std::fs::write(
        env.setup().join("restore-drills/cache-drill.toml"),
        "policy = \"cache\"\nfrom_region = \"local\"\n",
    )
    .unwrap();
    let out = env.run(&["drill", "run", "cache-drill", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["verdict"], "pass", "{report:#}");
    assert!(
        report["versions"].to_string().contains("8.1."),
        "{report:#}"
    );
}

/// A `redis-server` that says it is 7.4 and, started, leaves a process that never answers:
/// a server stuck loading a dump.
pub(crate) fn stuck_server(dir: &std::path::Path) -> std::path::PathBuf {
    let fake = dir.join("stuck-redis-server");
    std::fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'Redis server v=7.4.1 sha=00000000:0 malloc=libc bits=64 build=0'; exit 0; }\nwhile [ $# -gt 0 ]; do [ \"$1\" = --pidfile ] && pidfile=$2; shift; done\nsleep 3600 >/dev/null 2>&1 &\necho $! > \"$pidfile\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    fake
}

/// Runs `dr restore --policy POLICY --target-dir DIR --start`, sends it SIGTERM after
/// `after`, and returns how long it then took to exit, and its output.
pub(crate) fn terminate_restore_start(
    env: &DrEnv,
    policy: &str,
    dir: &std::path::Path,
    after: std::time::Duration,
) -> (std::time::Duration, std::process::Output) {
    let child = env
        .cmd(&[
            "restore",
            "--policy",
            policy,
            "--target-dir",
            dir.to_str().unwrap(),
            "--start",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let pid = child.id().to_string();
    let t = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (t.elapsed(), out)
}

/// Issue 21, item 5: SIGTERM ends `restore --start`'s wait for a server that never finishes
/// loading at once (it used to take minutes), and the server goes with it.
#[test]
fn sigterm_ends_the_wait_for_a_stuck_server_at_once() {
    let src = Redis::start(true, None, &[]);
    populate(&src, 100);
    let mut env = DrEnv::new();
    policy(&env, src.port, "");
    env.ok(&["backup", "--policy", "cache"]);
    let fake = stuck_server(env.dir.path());
    env.add_storage(
        &format!("\n[sandbox]\nredis = [\"{}\"]\n", fake.display()),
        vec![],
    );
    let dir = env.path("r");
    let (took, out) =
        terminate_restore_start(&env, "cache", &dir, std::time::Duration::from_secs(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        took < std::time::Duration::from_secs(2),
        "exited {took:?} after SIGTERM: {stderr}"
    );
    let pid = std::fs::read_to_string(dir.join("redis.pid")).unwrap();
    crate::harness::wait_until(
        "the stuck server to be gone",
        std::time::Duration::from_secs(5),
        || !std::path::Path::new("/proc").join(pid.trim()).exists(),
    );
}
