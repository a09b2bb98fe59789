//! Bringing a restored `dump.rdb` up in a throwaway `redis-server` and checking it holds as
//! many keys as the snapshot recorded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{info_field, parse_keyspace};
use crate::source::SourceError;

/// What the started server reported.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Started {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Keys per database after loading.
    pub keyspace: std::collections::BTreeMap<String, u64>,
    /// Their sum.
    pub keys_total: u64,
    /// The server and its version (`redis-server 7.0.15`, `valkey-server 8.1.8`).
    pub version: String,
}

fn tool_err(detail: String) -> SourceError {
    SourceError::Tool {
        tool: "redis-server".to_owned(),
        detail,
    }
}

/// The RDB format version of a dump (`REDIS0012` → 12), from its first nine bytes.
pub fn rdb_version(header: &[u8]) -> Option<u32> {
    let digits = header.get(..9)?.strip_prefix(b"REDIS")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The newest RDB format a server of this `--version` line reads (`Redis server v=7.0.15 …`
/// → 10), from the release notes: Redis 6.2 wrote 9, 7.0 10, 7.2 11, 7.4 and 8.x 12; Valkey
/// (forked from 7.2) reads 11 through 8.1. `None` for a version not in that list.
pub fn rdb_readable(version_line: &str) -> Option<u32> {
    let v = version_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next()??, parts.next()??);
    let valkey = version_line.to_ascii_lowercase().contains("valkey");
    Some(match (valkey, major, minor) {
        (true, _, _) => 11,
        (false, 0..=5, _) => return None,
        (false, 6, _) => 9,
        (false, 7, 0..=1) => 10,
        (false, 7, 2..=3) => 11,
        (false, _, _) => 12,
    })
}

/// The server to start `dir/dump.rdb` with, and its `--version` line: the first of
/// `candidates` (`[sandbox] redis` of dr.toml), then `redis-server` and `valkey-server` on
/// PATH, that reads the dump's RDB version. A dump newer than every server here reads is
/// refused before anything starts, naming its version, each server's, and what to install (a
/// server started on it exits at once with "Can't handle RDB format version").
fn choose_server(dir: &Path, candidates: &[PathBuf]) -> Result<(PathBuf, String), SourceError> {
    let mut header = [0u8; 9];
    let read = std::fs::File::open(dir.join("dump.rdb"))
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header));
    // Without a readable header the server names what is wrong with the file.
    let rdb = read.ok().and_then(|()| rdb_version(&header));
    let mut found: Vec<(PathBuf, String)> = Vec::new();
    let defaults = ["redis-server", "valkey-server", "/usr/bin/redis-server"].map(PathBuf::from);
    for bin in candidates.iter().chain(&defaults) {
        let Ok(out) = Command::new(bin).arg("--version").output() else {
            continue;
        };
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if found.iter().any(|(_, l)| *l == line) {
            continue;
        }
        let reads = match (rdb, rdb_readable(&line)) {
            (Some(rdb), Some(max)) => rdb <= max,
            _ => true,
        };
        if reads {
            return Ok((bin.clone(), line));
        }
        found.push((bin.clone(), line));
    }
    let (tool, have) = match rdb {
        Some(rdb) => (
            format!(
                "a redis-server or valkey-server that reads RDB version {rdb} (this snapshot's)"
            ),
            found
                .iter()
                .map(|(b, l)| {
                    format!(
                        "{} is `{l}`, which reads up to RDB {}",
                        b.display(),
                        rdb_readable(l).map_or("?".to_owned(), |m| m.to_string())
                    )
                })
                .collect::<Vec<_>>(),
        ),
        None => ("redis-server".to_owned(), Vec::new()),
    };
    Err(SourceError::ToolMissing {
        tool: if have.is_empty() {
            tool
        } else {
            format!("{tool}; found only: {}", have.join("; "))
        },
        install: "Redis 7.4 or later reads RDB 12, 7.2 and Valkey 7.2–8.1 read 11, Debian 12's redis-server 7.0 reads 10 (apt-get install -y redis-server); name other servers in dr.toml: [sandbox] redis = [\"/opt/redis-7.4/bin/redis-server\", \"/usr/bin/valkey-server\"]".to_owned(),
    })
}

/// Stops the daemonized server whose pid is in `pidfile` (SIGKILL: a sandbox has nothing to
/// save).
fn kill(pidfile: &Path) {
    let pid = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Whether the daemonized server (its pid in `pidfile`) is gone: the file was written and
/// its process no longer exists, or it never appeared within `grace`.
fn exited(pidfile: &Path, started: Instant, grace: Duration) -> bool {
    match std::fs::read_to_string(pidfile) {
        Ok(pid) => !Path::new("/proc").join(pid.trim()).exists(),
        Err(_) => started.elapsed() > grace,
    }
}

/// Starts `redis-server` on `dir/dump.rdb` (`appendonly no`, no saving, 127.0.0.1:`port`,
/// daemonized with a pid file in `dir`), waits until it has loaded the file, and checks the
/// key count against `expected` when given. A dump newer than the server reads is refused
/// first, naming both versions; a server that exits (a damaged file) is noticed within a
/// fraction of a second, with the end of its log.
///
/// With `run_as` (dr runs as root), `dir` is given to that user and the server runs as it.
/// The server sees none of dr's environment (it may hold credentials).
///
/// # Errors
/// When the server does not start or load, or holds a different number of keys.
pub fn start(
    dir: &Path,
    port: u16,
    expected: Option<u64>,
    run_as: Option<&crate::host::User>,
    servers: &[PathBuf],
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Started, SourceError> {
    let (bin, _version) = choose_server(dir, servers)?;
    let mut cmd = match run_as {
        Some(u) => {
            crate::host::chown_tree(dir, u.uid, u.gid).map_err(|source| SourceError::Write {
                op: "chown to the server's user",
                path: dir.to_owned(),
                source,
            })?;
            let mut c = Command::new("runuser");
            c.args(["-u", u.name.as_str(), "--"]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let out = crate::host::clean_env(&mut cmd)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dbfilename",
            "dump.rdb",
            "--appendonly",
            "no",
            "--save",
            "",
            "--daemonize",
            "yes",
        ])
        .arg("--dir")
        .arg(dir)
        .arg("--pidfile")
        .arg(dir.join("redis.pid"))
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .output()
        .map_err(|e| tool_err(format!("cannot run it: {e}")))?;
    if !out.status.success() {
        return Err(tool_err(format!(
            "did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| {
        SourceError::Connect {
            target: format!("redis://127.0.0.1:{port}"),
            detail: e.to_string(),
        }
    })?;
    let t0 = Instant::now();
    let log = || {
        std::fs::read_to_string(dir.join("redis.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    };
    loop {
        if cancel.is_cancelled() {
            // Interrupted (SIGTERM/SIGINT, a cancelled drill): the server goes too.
            kill(&dir.join("redis.pid"));
            return Err(SourceError::Cancelled);
        }
        let loaded = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .and_then(|mut c| {
                let persistence: String = redis::cmd("INFO").arg("persistence").query(&mut c)?;
                let ks: String = redis::cmd("INFO").arg("keyspace").query(&mut c)?;
                let server: String = redis::cmd("INFO").arg("server").query(&mut c)?;
                Ok((info_field(&persistence, "loading") == Some("0"), ks, server))
            });
        match loaded {
            Ok((true, ks, server)) => {
                let keyspace = parse_keyspace(&ks);
                let keys_total = keyspace.values().sum();
                if let Some(want) = expected
                    && want != keys_total
                {
                    return Err(SourceError::Restored(format!(
                        "the restored server holds {keys_total} keys, the snapshot recorded {want}"
                    )));
                }
                return Ok(Started {
                    port,
                    keyspace,
                    keys_total,
                    // Valkey answers `redis_version:7.2.4` for clients, and its own beside it.
                    version: match info_field(&server, "valkey_version") {
                        Some(v) => format!("valkey-server {v}"),
                        None => format!(
                            "redis-server {}",
                            info_field(&server, "redis_version").unwrap_or("?")
                        ),
                    },
                });
            }
            _ if exited(&dir.join("redis.pid"), t0, Duration::from_secs(10)) => {
                return Err(SourceError::Restored(format!(
                    "the restored redis-server exited while loading dump.rdb; the end of its log:\n{}",
                    log()
                )));
            }
            _ if t0.elapsed() > Duration::from_secs(600) => {
                return Err(SourceError::Restored(format!(
                    "the restored redis-server did not finish loading:\n{}",
                    log()
                )));
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdb_versions_and_what_each_server_reads() {
        assert_eq!(rdb_version(b"REDIS0012\xfa"), Some(12));
        assert_eq!(rdb_version(b"REDIS0010"), Some(10));
        assert_eq!(rdb_version(b"NOTREDIS0"), None);
        assert_eq!(rdb_version(b"REDIS"), None);
        for (line, max) in [
            (
                "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=1",
                Some(10),
            ),
            ("Redis server v=7.2.4 sha=0", Some(11)),
            ("Redis server v=7.4.1 sha=0", Some(12)),
            ("Redis server v=8.0.2 sha=0", Some(12)),
            ("Redis server v=6.2.14 sha=0", Some(9)),
            ("Valkey server v=8.1.8 sha=0", Some(11)),
            ("Redis server v=5.0.7 sha=0", None),
            ("something else", None),
        ] {
            assert_eq!(rdb_readable(line), max, "{line}");
        }
    }
}
