//! Turning a restored base backup into a cluster that recovers to a target: tablespace links,
//! `recovery.signal`, recovery settings; and, on request, starting it and reporting the point
//! actually reached.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::binaries::{self, Fits};
use crate::source::SourceError;

fn io<'a>(op: &'static str, p: &'a Path) -> impl Fn(std::io::Error) -> SourceError + 'a {
    move |source| SourceError::Write {
        op,
        path: p.to_owned(),
        source,
    }
}

/// Quotes a value for postgresql.conf.
fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Where tablespace `oid` of a cluster restored into `data_dir` goes: `map[oid]` when given,
/// else `<data_dir>.tablespaces/<oid>` (never the original path: a restore must not touch the
/// running cluster's files).
pub fn tablespace_place(data_dir: &Path, oid: &str, map: &BTreeMap<String, PathBuf>) -> PathBuf {
    map.get(oid).cloned().unwrap_or_else(|| {
        let mut d = data_dir.as_os_str().to_owned();
        d.push(".tablespaces");
        PathBuf::from(d).join(oid)
    })
}

/// Moves each tablespace restored under `pg_tblspc/<oid>` to its place
/// ([`tablespace_place`]) and links it; those `in_place` (a delta restore brought them up to
/// date where their links lead) stay.
///
/// # Errors
/// When a location exists and is not empty, or a move fails.
pub fn place_tablespaces(
    data_dir: &Path,
    tablespaces: &BTreeMap<String, String>,
    map: &BTreeMap<String, PathBuf>,
    in_place: &[(String, PathBuf)],
) -> Result<Vec<(String, PathBuf)>, SourceError> {
    let mut placed = in_place.to_vec();
    for oid in tablespaces.keys() {
        if in_place.iter().any(|(o, _)| o == oid) {
            continue;
        }
        let restored = data_dir.join("pg_tblspc").join(oid);
        let dest = tablespace_place(data_dir, oid, map);
        if dest.exists()
            && std::fs::read_dir(&dest)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            return Err(SourceError::Target(format!(
                "tablespace {oid}: {} is not empty; pass --tablespace-map {oid}=EMPTY_DIR",
                dest.display()
            )));
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        let _ = std::fs::remove_dir(&dest);
        std::fs::rename(&restored, &dest).map_err(io("moving the tablespace to", &dest))?;
        std::os::unix::fs::symlink(&dest, &restored).map_err(io("linking", &restored))?;
        placed.push((oid.clone(), dest));
    }
    Ok(placed)
}

/// Writes `recovery.signal` and appends the recovery settings to `postgresql.auto.conf`, both
/// synced (the caller syncs the data directory).
///
/// # Errors
/// File errors naming the path.
pub fn write_recovery(
    data_dir: &Path,
    restore_command: &str,
    target: &[(&str, String)],
) -> Result<(), SourceError> {
    let signal = data_dir.join("recovery.signal");
    std::fs::File::create(&signal)
        .and_then(|f| f.sync_all())
        .map_err(io("writing", &signal))?;
    let auto = data_dir.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&auto)
        .map_err(io("opening", &auto))?;
    let mut text = format!(
        "\n# Added by dr restore at {}\nrestore_command = {}\n",
        chrono::Utc::now().to_rfc3339(),
        conf_quote(restore_command)
    );
    for (k, v) in target {
        text.push_str(&format!("{k} = {}\n", conf_quote(v)));
    }
    text.push_str("recovery_target_timeline = 'latest'\n");
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io("writing", &auto))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("chmod 700", data_dir))?;
    Ok(())
}

fn server_user(name: &str) -> Result<crate::host::User, SourceError> {
    crate::host::User::lookup(name).ok_or_else(|| {
        SourceError::Target(format!(
            "no OS user `{name}` to run PostgreSQL as (pass --run-as)"
        ))
    })
}

/// A command run as `o.run_as` when we are root (PostgreSQL refuses to run as root).
fn as_user(o: &StartOptions, cmd: &Path) -> Command {
    let mut c = if crate::host::is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", o.run_as.as_str(), "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    };
    crate::host::clean_env(&mut c);
    c
}

/// Settings forced on every server dr starts from restored data, whatever its restored
/// configuration files say (the command line outranks them). The files come from the
/// database host: a compromised one could otherwise have the host that restores or drills
/// run commands (`recovery_end_command`, `archive_command`, …), load libraries, write files
/// elsewhere (`external_pid_file`, the log collector) or use another data directory.
fn forced_settings(o: &StartOptions, data_dir: &Path) -> Vec<(&'static str, String)> {
    let dir = data_dir.display().to_string();
    let mut v: Vec<(&'static str, String)> = vec![
        ("port", o.port.to_string()),
        ("listen_addresses", "127.0.0.1".to_owned()),
        ("unix_socket_directories", dir.clone()),
        ("data_directory", dir),
        ("archive_mode", "off".to_owned()),
        ("archive_command", String::new()),
        ("archive_cleanup_command", String::new()),
        ("recovery_end_command", String::new()),
        ("restore_command", o.restore_command.clone()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("ssl", "off".to_owned()),
        ("ssl_passphrase_command", String::new()),
        ("dynamic_library_path", "$libdir".to_owned()),
        ("shared_preload_libraries", String::new()),
        ("session_preload_libraries", String::new()),
        ("local_preload_libraries", String::new()),
        ("jit", "off".to_owned()),
        ("jit_provider", "llvmjit".to_owned()),
        ("external_pid_file", String::new()),
        ("logging_collector", "off".to_owned()),
    ];
    if o.major >= 15 {
        v.push(("archive_library", String::new()));
    }
    if o.major >= 18 {
        v.push(("extension_control_path", "$system".to_owned()));
    }
    v
}

/// Settings in the restored `postgresql.conf` / `postgresql.auto.conf` that run a command or
/// load code when the server starts: dr overrides them when it starts the server itself; an
/// operator who starts it by hand should look at them first (the files come from the
/// database host). Returns `file: line` for each, in file order.
pub fn risky_settings(data_dir: &Path) -> Vec<String> {
    const RISKY: &[&str] = &[
        "archive_command",
        "archive_library",
        "archive_cleanup_command",
        "recovery_end_command",
        "ssl_passphrase_command",
        "shared_preload_libraries",
        "session_preload_libraries",
        "local_preload_libraries",
        "dynamic_library_path",
        "jit_provider",
        "external_pid_file",
        "data_directory",
        "include",
        "include_dir",
        "include_if_exists",
    ];
    let mut out = Vec::new();
    for file in ["postgresql.conf", "postgresql.auto.conf"] {
        let text = std::fs::read_to_string(data_dir.join(file)).unwrap_or_default();
        for line in text.lines().map(str::trim) {
            let key = line
                .split(|c: char| c == '=' || c.is_whitespace())
                .next()
                .unwrap_or_default();
            let value = line[key.len()..]
                .trim_start()
                .trim_start_matches('=')
                .trim();
            let empty = value.is_empty() || value == "''" || value.starts_with("''");
            if RISKY.contains(&key) && !empty {
                out.push(format!("{file}: {line}"));
            }
        }
    }
    out
}

/// `s` as one word for `/bin/sh` (pg_ctl hands its `-o` options to a shell).
fn shell_word(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Runs one query with `psql` over the restored server's socket in `data_dir`; returns the
/// unaligned, tuples-only output.
///
/// # Errors
/// psql missing, or the query's error.
pub fn psql(data_dir: &Path, o: &StartOptions, db: &str, sql: &str) -> Result<String, SourceError> {
    let psql = binaries::find("psql", &o.bin_dirs, o.major, Fits::Any)?;
    let out = as_user(o, &psql)
        .arg("-h")
        .arg(data_dir)
        .args([
            "-p",
            &o.port.to_string(),
            "-U",
            o.db_user.as_str(),
            "-d",
            db,
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            sql,
        ])
        .output()
        .map_err(|e| SourceError::Tool {
            tool: "psql".to_owned(),
            detail: format!("cannot run it: {e}"),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(SourceError::Tool {
            tool: "psql".to_owned(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Stops a server started by [`start`] at once (`-m immediate`: a sandbox has nothing to
/// save). Errors are ignored: the caller removes the directory next.
pub fn stop(data_dir: &Path, o: &StartOptions) {
    if let Ok(pg_ctl) = binaries::find("pg_ctl", &o.bin_dirs, o.major, Fits::Exact) {
        let _ = as_user(o, &pg_ctl)
            .arg("-D")
            .arg(data_dir)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output();
    }
}

/// A started, promoted cluster and the point recovery reached.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reached {
    /// `pg_last_xact_replay_timestamp()`.
    pub replay_timestamp: Option<String>,
    /// `pg_current_wal_lsn()` after promotion.
    pub lsn: String,
    /// Port it listens on.
    pub port: u16,
    /// Seconds from start to promotion.
    pub seconds: f64,
}

/// How to start the restored cluster.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Directories to look for the server's programs in first ([`binaries::find`]).
    pub bin_dirs: Vec<PathBuf>,
    /// The cluster's major version: the programs must be of it.
    pub major: i32,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// OS user when running as root.
    pub run_as: String,
    /// Database user to query with.
    pub db_user: String,
    /// Give up after.
    pub timeout: Duration,
    /// Extra directories the server must own (tablespaces).
    pub also_own: Vec<PathBuf>,
    /// `restore_command` (forced on the command line, as every other command setting).
    pub restore_command: String,
    /// Ends the wait for start-up and promotion at once (SIGTERM/SIGINT of `dr restore
    /// --start`, a drill cancelled): the server is then stopped.
    pub cancel: tokio_util::sync::CancellationToken,
}

/// Starts the cluster in `data_dir`, waits for it to finish recovery and promote, and reports
/// the point reached. Archiving is off for this server: a restored copy must not write into
/// the production archive.
///
/// # Errors
/// When the server does not start or does not promote in time (with its log's tail).
pub fn start(data_dir: &Path, o: &StartOptions) -> Result<Reached, SourceError> {
    let t0 = Instant::now();
    let pg_ctl = binaries::find("pg_ctl", &o.bin_dirs, o.major, Fits::Exact)?;
    if crate::host::is_root() {
        let u = server_user(&o.run_as)?;
        for p in std::iter::once(data_dir.to_path_buf()).chain(o.also_own.iter().cloned()) {
            crate::host::chown_tree(&p, u.uid, u.gid).map_err(io("chown", &p))?;
        }
    }
    let log = data_dir.join("dr-restore.log");
    let opts = forced_settings(o, data_dir)
        .iter()
        .map(|(k, v)| format!("-c {}", shell_word(&format!("{k}={v}"))))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = as_user(o, &pg_ctl)
        .arg("-D")
        .arg(data_dir)
        .arg("-l")
        .arg(&log)
        .args([
            "-w",
            "-t",
            &o.timeout.as_secs().to_string(),
            "-o",
            &opts,
            "start",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| SourceError::Tool {
            tool: pg_ctl.display().to_string(),
            detail: format!("cannot run it: {e}"),
        })?;
    // `pg_ctl -w` itself waits for start-up (all of a long WAL replay without hot standby):
    // watched here so that a signal ends it at once.
    while child
        .try_wait()
        .map_err(io("waiting for pg_ctl", data_dir))?
        .is_none()
    {
        if o.cancel.is_cancelled() {
            let _ = child.kill();
            let _ = child.wait();
            stop(data_dir, o);
            return Err(SourceError::Cancelled);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child
        .wait_with_output()
        .map_err(io("waiting for pg_ctl", data_dir))?;
    let log_tail = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    };
    if !out.status.success() {
        return Err(SourceError::Restored(format!(
            "the restored server did not start: {}\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            log_tail()
        )));
    }
    let query = |sql: &str| psql(data_dir, o, "postgres", sql);
    loop {
        if o.cancel.is_cancelled() {
            stop(data_dir, o);
            return Err(SourceError::Cancelled);
        }
        match query("SELECT pg_is_in_recovery()") {
            Ok(s) if s == "f" => break,
            Ok(_) => {}
            Err(e) if t0.elapsed() > o.timeout => {
                return Err(SourceError::Restored(format!("{e}\n{}", log_tail())));
            }
            Err(_) => {}
        }
        if t0.elapsed() > o.timeout {
            return Err(SourceError::Restored(format!(
                "the restored server did not finish recovery within {:?}:\n{}",
                o.timeout,
                log_tail()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let ts = query("SELECT coalesce(pg_last_xact_replay_timestamp()::text, '')")?;
    let lsn = query("SELECT pg_current_wal_lsn()::text")?;
    Ok(Reached {
        replay_timestamp: (!ts.is_empty()).then_some(ts),
        lsn,
        port: o.port,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn risky_settings_are_listed_with_their_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("postgresql.conf"),
            "shared_buffers = 1GB\n#archive_command = 'x'\narchive_command = ''\nshared_preload_libraries = 'pg_stat_statements'\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("postgresql.auto.conf"),
            "recovery_end_command='touch /tmp/x'\n",
        )
        .unwrap();
        assert_eq!(
            super::risky_settings(dir.path()),
            vec![
                "postgresql.conf: shared_preload_libraries = 'pg_stat_statements'",
                "postgresql.auto.conf: recovery_end_command='touch /tmp/x'",
            ]
        );
    }
}
