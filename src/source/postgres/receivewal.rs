//! WAL streamed over the physical replication protocol by PostgreSQL's own `pg_receivewal`,
//! run and watched here, holding a replication slot.
//!
//! Why `pg_receivewal` and not the protocol in-process: tokio-postgres has no `CopyBoth`
//! (replication) support (rust-postgres#778 and #1182 are open PRs), and `pg_receivewal` is
//! what Barman's streaming archiver runs too: PostgreSQL's implementation of timeline
//! following (it fetches the history file and goes on on the new timeline), segment
//! pre-padding, `.partial` handling and restart from the newest local file or the slot. It
//! runs with `--synchronous` (each write flushed and confirmed at once, so the slot only
//! advances past WAL on this host's disk) and `--no-loop` (a lost connection ends it; the
//! caller restarts it, re-reading the connection string, so a failover to a promoted standby
//! is followed).
//!
//! A `dr` killed with `-9` leaves its `pg_receivewal` running and holding the slot; the next
//! start finds its pid in `DIR/.receiver.pid` and stops it first ([`take_over`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Client;

use super::lsn::Lsn;
use super::stream::libpq_env;
use crate::source::SourceError;

/// The pid file of the `pg_receivewal` writing into a directory.
const PID_FILE: &str = ".receiver.pid";
/// Bytes of `pg_receivewal`'s stderr kept for messages.
const TAIL: usize = 4096;

/// A replication slot as the server reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotState {
    /// Whether a receiver is connected to it.
    pub active: bool,
    /// The oldest WAL the slot keeps on the server.
    pub restart_lsn: Option<String>,
    /// `reserved`, `extended`, `unreserved` or `lost` (`max_slot_wal_keep_size`).
    pub wal_status: Option<String>,
    /// WAL the slot holds back on the server (`pg_wal` that cannot be recycled).
    pub retained_bytes: Option<u64>,
}

/// The server's WAL position (flushed, on a primary; received, on a standby) and the slot.
#[derive(Debug, Clone)]
pub struct ServerPosition {
    /// What can be streamed now.
    pub lsn: Lsn,
    /// The slot, `None` when it does not exist.
    pub slot: Option<SlotState>,
}

/// Reads the server's position and the slot `slot`.
///
/// # Errors
/// Query failures.
pub async fn position(client: &Client, slot: &str) -> Result<ServerPosition, SourceError> {
    let row = client
        .query_one(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                     ELSE pg_current_wal_flush_lsn() END)::text",
            &[],
        )
        .await
        .map_err(|e| SourceError::request("reading the WAL position", e))?;
    let lsn =
        Lsn::parse(row.get::<_, Option<&str>>(0).unwrap_or("0/0")).map_err(SourceError::Answer)?;
    let slot = client
        .query_opt(
            "SELECT active, restart_lsn::text, wal_status, \
                    CASE WHEN restart_lsn IS NULL THEN NULL ELSE pg_wal_lsn_diff( \
                      CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                      ELSE pg_current_wal_lsn() END, restart_lsn)::bigint END \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| SourceError::request("reading pg_replication_slots", e))?
        .map(|r| SlotState {
            active: r.get(0),
            restart_lsn: r.get(1),
            wal_status: r.get(2),
            retained_bytes: r.get::<_, Option<i64>>(3).map(|n| n.max(0).unsigned_abs()),
        });
    Ok(ServerPosition { lsn, slot })
}

/// Whether the server `conninfo` names can be streamed from with `slot` (`dr check`):
/// the role may replicate, there is room for a WAL sender and a slot, this host has a
/// `pg_receivewal` for the server's major, and what the slot holds back now. Changes nothing
/// (the slot is created by the receiver, not here).
///
/// # Errors
/// Connection failures, or a line saying what is missing.
pub async fn check(
    conninfo: &str,
    slot: &str,
    bin_dirs: &[PathBuf],
) -> Result<String, SourceError> {
    let client = super::connect(conninfo).await?;
    let row = client
        .query_one(
            "SELECT (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),                     current_setting('max_wal_senders')::int, current_setting('max_replication_slots')::int,                     current_setting('max_slot_wal_keep_size'), current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(|e| SourceError::request("reading the replication settings", e))?;
    let (may, senders, slots): (Option<bool>, i32, i32) = (row.get(0), row.get(1), row.get(2));
    let (keep, version): (String, i32) = (row.get(3), row.get(4));
    let mut missing = Vec::new();
    if may != Some(true) {
        missing.push("the role has no REPLICATION attribute (ALTER ROLE … REPLICATION)".to_owned());
    }
    if senders < 1 || slots < 1 {
        missing.push(format!(
            "max_wal_senders = {senders}, max_replication_slots = {slots}: both need room for one more"
        ));
    }
    if let Err(e) = super::binaries::find(
        "pg_receivewal",
        bin_dirs,
        version / 10000,
        super::binaries::Fits::AtLeast,
    ) {
        missing.push(e.to_string());
    }
    if !missing.is_empty() {
        return Err(SourceError::Setup(format!(
            "WAL streaming: {}",
            missing.join("; ")
        )));
    }
    let p = position(&client, slot).await?;
    let slot_text = match p.slot {
        None => format!("slot {slot} not created yet (the daemon creates it)"),
        Some(st) => format!(
            "slot {slot} {}, holds {} bytes of WAL ({})",
            if st.active { "active" } else { "inactive" },
            st.retained_bytes.unwrap_or(0),
            st.wal_status.as_deref().unwrap_or("?")
        ),
    };
    Ok(format!(
        "WAL streaming possible: {slot_text}; max_slot_wal_keep_size = {keep}{}",
        if keep == "-1" {
            " (unlimited: set it, see the RUNBOOK)"
        } else {
            ""
        }
    ))
}

/// The major version and WAL segment size of the server `client` is connected to.
///
/// # Errors
/// Query failures.
pub async fn server(client: &Client) -> Result<(i32, u64), SourceError> {
    let info = super::server_info(client).await?;
    Ok((info.version_num / 10000, info.wal_segment_size))
}

/// A running `pg_receivewal`.
pub struct Receiver {
    child: tokio::process::Child,
    tail: Arc<Mutex<String>>,
    dir: PathBuf,
}

impl Receiver {
    /// Creates the slot if it does not exist, then starts `bin` (a `pg_receivewal`) writing
    /// into `dir`; the password goes in the environment, never on the command line.
    ///
    /// # Errors
    /// The slot cannot be created (naming `pg_receivewal`'s message), or it cannot start.
    pub async fn start(
        bin: &Path,
        conninfo: &str,
        dir: &Path,
        slot: &str,
    ) -> Result<Self, SourceError> {
        let env = libpq_env(conninfo)?;
        let tool = |detail: String| SourceError::Tool {
            tool: "pg_receivewal".to_owned(),
            detail,
        };
        let out = tokio::process::Command::new(bin)
            .args([
                "--create-slot",
                "--if-not-exists",
                "--no-password",
                "--slot",
                slot,
            ])
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| tool(format!("cannot run {}: {e}", bin.display())))?;
        if !out.status.success() {
            return Err(tool(format!(
                "creating the replication slot {slot} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let mut child = tokio::process::Command::new(bin)
            .arg("--directory")
            .arg(dir)
            .args([
                "--slot",
                slot,
                "--synchronous",
                "--no-loop",
                "--no-password",
                "--verbose",
            ])
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| tool(format!("cannot run {}: {e}", bin.display())))?;
        if let Some(pid) = child.id() {
            let _ = std::fs::write(dir.join(PID_FILE), pid.to_string());
        }
        let tail = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let tail = tail.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "dr::wal_stream", "pg_receivewal: {line}");
                    let mut t = tail
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    t.push_str(&line);
                    t.push('\n');
                    if t.len() > TAIL {
                        let cut = (t.len() - TAIL..t.len())
                            .find(|i| t.is_char_boundary(*i))
                            .unwrap_or(0);
                        t.drain(..cut);
                    }
                }
            });
        }
        Ok(Self {
            child,
            tail,
            dir: dir.to_path_buf(),
        })
    }

    /// `Some(message)` once it has exited: its status and the end of its output.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok().flatten()?;
        let _ = std::fs::remove_file(self.dir.join(PID_FILE));
        Some(format!(
            "pg_receivewal exited ({status}): {}",
            self.last_lines()
        ))
    }

    /// The last lines it wrote.
    pub fn last_lines(&self) -> String {
        let t = self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let lines: Vec<&str> = t.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join(" / ")
    }

    /// Stops it as its own `SIGINT` handling expects (what was received is flushed), killing
    /// it after 10 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_file(self.dir.join(PID_FILE));
    }
}

/// Stops a `pg_receivewal` an earlier, killed `dr` left writing into `dir` (it would hold
/// the slot, and write beside the new one): the pid in `dir/.receiver.pid`, if that process
/// is a `pg_receivewal` writing into `dir`.
pub fn take_over(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join(PID_FILE)) else {
        return;
    };
    let Some(pid) = text
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let ours = |pid: rustix::process::Pid| {
        std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero()))
            .ok()
            .is_some_and(|cmd| {
                let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
                let dir = dir.as_os_str().as_encoded_bytes();
                args.first().is_some_and(|a| a.ends_with(b"pg_receivewal")) && args.contains(&dir)
            })
    };
    if !ours(pid) {
        return;
    }
    tracing::warn!(pid = pid.as_raw_nonzero().get(), dir = %dir.display(), "Stopping the pg_receivewal an earlier dr left running.");
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    for _ in 0..100 {
        if !ours(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    std::thread::sleep(Duration::from_millis(200));
}

/// How much of a `.partial` segment `pg_receivewal` has written: the end of the last 8 KiB
/// page holding a non-zero byte (it pre-fills the file with zeros, and the rest of that
/// page is zeros too, so the prefix padded back with zeros is the file).
pub fn received_len(data: &[u8]) -> usize {
    const PAGE: usize = 8192;
    data.iter()
        .rposition(|b| *b != 0)
        .map_or(0, |last| ((last / PAGE) + 1) * PAGE)
        .min(data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_length_is_the_end_of_the_last_written_page() {
        let mut seg = vec![0u8; 64 << 10];
        assert_eq!(received_len(&seg), 0);
        seg[0] = 1;
        assert_eq!(received_len(&seg), 8192);
        seg[8192 * 3 + 17] = 9;
        assert_eq!(received_len(&seg), 8192 * 4);
        let full = vec![7u8; 8192 * 2 + 100];
        assert_eq!(received_len(&full), full.len());
    }

    #[test]
    fn a_receiver_left_running_is_stopped_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, other) = (tmp.path().join("wal"), tmp.path().join("other"));
        std::fs::create_dir_all(&dir).unwrap();
        // A stand-in named pg_receivewal that stops on SIGINT, as the real one does.
        let fake = tmp.path().join("pg_receivewal");
        std::fs::copy("/bin/bash", &fake).unwrap();
        let spawn = |into: &Path| {
            std::process::Command::new(&fake)
                .args(["-c", "trap 'exit 0' INT; sleep 30 & wait", "--directory"])
                .arg(into)
                .spawn()
                .unwrap()
        };
        let (mut left, mut unrelated) = (spawn(&dir), spawn(&other));
        std::thread::sleep(Duration::from_millis(200));
        // A pid file naming a process that writes elsewhere is not acted on.
        std::fs::write(dir.join(PID_FILE), unrelated.id().to_string()).unwrap();
        take_over(&dir);
        assert!(unrelated.try_wait().unwrap().is_none());
        std::fs::write(dir.join(PID_FILE), left.id().to_string()).unwrap();
        let t0 = std::time::Instant::now();
        take_over(&dir);
        assert!(left.wait().unwrap().success(), "stopped with SIGINT");
        assert!(t0.elapsed() < Duration::from_secs(5));
        let _ = unrelated.kill();
        let _ = unrelated.wait();
    }
}
