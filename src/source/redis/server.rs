//! Bringing a restored `dump.rdb` up in a throwaway `redis-server` and checking it holds as
//! many keys as the snapshot recorded.

use std::path::Path;
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
    /// Server version.
    pub version: String,
}

fn tool_err(detail: String) -> SourceError {
    SourceError::Tool {
        tool: "redis-server".to_owned(),
        detail,
    }
}

/// Starts `redis-server` on `dir/dump.rdb` (`appendonly no`, no saving, 127.0.0.1:`port`,
/// daemonized with a pid file in `dir`), waits until it has loaded the file, and checks the
/// key count against `expected` when given.
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
) -> Result<Started, SourceError> {
    let bin = ["redis-server", "/usr/bin/redis-server"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())
        .ok_or_else(|| SourceError::ToolMissing {
            tool: "redis-server".to_owned(),
            install: "apt-get install -y redis-server".to_owned(),
        })?;
    let mut cmd = match run_as {
        Some(u) => {
            crate::host::chown_tree(dir, u.uid, u.gid).map_err(|source| SourceError::Write {
                op: "chown to the server's user",
                path: dir.to_owned(),
                source,
            })?;
            let mut c = Command::new("runuser");
            c.args(["-u", u.name.as_str(), "--", bin]);
            c
        }
        None => Command::new(bin),
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
                    version: info_field(&server, "redis_version")
                        .unwrap_or("?")
                        .to_owned(),
                });
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
