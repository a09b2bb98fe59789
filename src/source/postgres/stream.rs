//! Stream mode: `pg_basebackup -D - -Ft -X none` parsed as it streams, no temporary copy.
//!
//! The tar stream is read by one thread; each entry becomes an artifact whose body reads
//! exactly that entry's bytes from the shared stream, and the thread waits until the pipeline
//! has consumed (or dropped) it before reading the next header. The password is passed in
//! `PGPASSWORD`, never on the command line.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex, mpsc};

use super::lsn::Lsn;
use super::{BaseBackup, ServerInfo, chunking_for};
use crate::repo::manifest::{EntryKind, EntryName};
use crate::source::{Artifact, Body, Chunking, SnapshotCx, SourceError};

fn pg_basebackup_err(detail: String) -> SourceError {
    SourceError::Tool {
        tool: "pg_basebackup".to_owned(),
        detail,
    }
}

/// libpq environment for a connection string, so that no secret appears in `ps`.
pub fn libpq_env(conninfo: &str) -> Result<Vec<(&'static str, String)>, SourceError> {
    let c = tokio_postgres::Config::from_str(conninfo)
        .map_err(SourceError::secret("the PostgreSQL connection string"))?;
    let mut env = Vec::new();
    if let Some(h) = c.get_hosts().first() {
        env.push((
            "PGHOST",
            match h {
                tokio_postgres::config::Host::Tcp(s) => s.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            },
        ));
    }
    if let Some(p) = c.get_ports().first() {
        env.push(("PGPORT", p.to_string()));
    }
    if let Some(u) = c.get_user() {
        env.push(("PGUSER", u.to_owned()));
    }
    if let Some(p) = c.get_password() {
        env.push(("PGPASSWORD", String::from_utf8_lossy(p).into_owned()));
    }
    if let Some(d) = c.get_dbname() {
        env.push(("PGDATABASE", d.to_owned()));
    }
    Ok(env)
}

pub(super) async fn backup(
    conninfo: &str,
    info: &ServerInfo,
    bin_dir: Option<&Path>,
    cx: &SnapshotCx,
) -> Result<BaseBackup, SourceError> {
    let dirs: Vec<PathBuf> = bin_dir.into_iter().map(Path::to_path_buf).collect();
    let bin = super::binaries::find(
        "pg_basebackup",
        &dirs,
        info.version_num / 10000,
        super::binaries::Fits::AtLeast,
    )?;
    let mut child = Command::new(&bin)
        .args([
            "-D",
            "-",
            "-F",
            "t",
            "-X",
            "none",
            "-c",
            "fast",
            "-v",
            "--no-password",
        ])
        .envs(libpq_env(conninfo)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| pg_basebackup_err(format!("cannot run {}: {e}", bin.display())))?;
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let out = cx.out.clone();
    let cancel = cx.cancel.clone();
    let parsed = tokio::task::spawn_blocking(move || parse_tar(stdout, &out, &cancel))
        .await
        .map_err(|_| SourceError::Panicked("tar parser"))?;
    if parsed.is_err() {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| pg_basebackup_err(format!("waiting for it: {e}")))?;
    let log = err_thread.join().unwrap_or_default();
    let captured = parsed?;
    if !status.success() {
        return Err(pg_basebackup_err(format!(
            "failed ({status}): {}",
            log.trim()
        )));
    }
    // The end of the backup is in backup_manifest's WAL-Ranges (PostgreSQL 13+).
    let stop_lsn = captured
        .manifest
        .as_deref()
        .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
        .and_then(|m| m["WAL-Ranges"].as_array().and_then(|r| r.last().cloned()))
        .and_then(|r| r["End-LSN"].as_str().and_then(|s| Lsn::parse(s).ok()))
        .ok_or_else(|| SourceError::Answer(format!("the pg_basebackup stream had no backup_manifest with an End-LSN (stream mode needs PostgreSQL 13+): {}", log.trim())))?;
    let label = captured.label.ok_or_else(|| {
        SourceError::Answer("the pg_basebackup stream had no backup_label".to_owned())
    })?;
    Ok(BaseBackup {
        label,
        stop_lsn,
        tablespaces: std::collections::BTreeMap::new(),
    })
}

/// Reads exactly one tar entry's bytes from the shared stream.
struct EntryBody<R: Read> {
    src: Arc<Mutex<R>>,
    remaining: u64,
    done: Option<mpsc::SyncSender<std::io::Result<()>>>,
}

impl<R: Read> Read for EntryBody<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self
            .src
            .lock()
            .expect("tar stream lock")
            .read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "pg_basebackup stream ended inside a file",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

impl<R: Read> Drop for EntryBody<R> {
    fn drop(&mut self) {
        // Skip whatever the pipeline did not read, then let the parser go on.
        let mut buf = [0u8; 8192];
        let mut r = Ok(());
        while self.remaining > 0 {
            if let Err(e) = self.read(&mut buf) {
                r = Err(e);
                break;
            }
        }
        if let Some(d) = self.done.take() {
            let _ = d.send(r);
        }
    }
}

fn octal(field: &[u8]) -> u64 {
    let s: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .map(|&b| b as char)
        .collect();
    u64::from_str_radix(s.trim(), 8).unwrap_or(0)
}

fn cstr(field: &[u8]) -> Vec<u8> {
    field.iter().take_while(|&&b| b != 0).copied().collect()
}

/// The small files of the stream that dr reads itself.
#[derive(Default)]
struct Captured {
    label: Option<String>,
    manifest: Option<String>,
}

/// Parses the tar stream, sending artifacts; returns backup_label and backup_manifest.
fn parse_tar<R: Read + Send + 'static>(
    src: R,
    out: &tokio::sync::mpsc::Sender<Artifact>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Captured, SourceError> {
    let read_err = |e| SourceError::Read {
        path: "pg_basebackup stream".to_owned(),
        source: e,
    };
    let src = Arc::new(Mutex::new(src));
    let mut captured = Captured::default();
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    loop {
        if cancel.is_cancelled() {
            return Err(SourceError::Cancelled);
        }
        let mut h = [0u8; 512];
        src.lock()
            .expect("tar stream lock")
            .read_exact(&mut h)
            .map_err(read_err)?;
        if h.iter().all(|&b| b == 0) {
            return Ok(captured);
        }
        let size = octal(&h[124..136]);
        let padded = size.div_ceil(512) * 512;
        let kind = h[156];
        if matches!(kind, b'x' | b'L' | b'K') {
            let mut data = vec![0u8; usize::try_from(padded).unwrap_or(0)];
            src.lock()
                .expect("tar stream lock")
                .read_exact(&mut data)
                .map_err(read_err)?;
            data.truncate(usize::try_from(size).unwrap_or(0));
            match kind {
                b'L' => long_name = Some(cstr(&data)),
                b'K' => long_link = Some(cstr(&data)),
                _ => {
                    for rec in String::from_utf8_lossy(&data).split('\n') {
                        if let Some((_, kv)) = rec.split_once(' ') {
                            if let Some(p) = kv.strip_prefix("path=") {
                                long_name = Some(p.as_bytes().to_vec());
                            } else if let Some(p) = kv.strip_prefix("linkpath=") {
                                long_link = Some(p.as_bytes().to_vec());
                            }
                        }
                    }
                }
            }
            continue;
        }
        let mut name = long_name.take().unwrap_or_else(|| {
            let prefix = cstr(&h[345..500]);
            let base = cstr(&h[..100]);
            if prefix.is_empty() {
                base
            } else {
                [prefix, b"/".to_vec(), base].concat()
            }
        });
        while name.last() == Some(&b'/') {
            name.pop();
        }
        let link = long_link.take().unwrap_or_else(|| cstr(&h[157..257]));
        let mode = u32::try_from(octal(&h[100..108]) & 0o7777).unwrap_or(0o600);
        let mtime_ns = i64::try_from(octal(&h[136..148]))
            .ok()
            .map(|s| s * 1_000_000_000);
        let rel = PathBuf::from(String::from_utf8_lossy(&name).into_owned());
        let entry_name = EntryName(if name.is_empty() {
            b".".to_vec()
        } else {
            name.clone()
        });
        match kind {
            b'5' => {
                out.blocking_send(Artifact {
                    name: entry_name,
                    kind: EntryKind::Dir,
                    mode,
                    mtime_ns,
                    target: None,
                    body: Body::None,
                    chunking: Chunking::ContentDefined,
                    stat: None,
                    page_check: None,
                })
                .map_err(|_| SourceError::PipelineGone)?;
            }
            b'2' => {
                out.blocking_send(Artifact {
                    name: entry_name,
                    kind: EntryKind::Symlink,
                    mode: 0o777,
                    mtime_ns,
                    target: Some(EntryName(link)),
                    body: Body::None,
                    chunking: Chunking::ContentDefined,
                    stat: None,
                    page_check: None,
                })
                .map_err(|_| SourceError::PipelineGone)?;
            }
            b'0' | 0 => {
                let small = rel == Path::new("backup_label") || rel == Path::new("backup_manifest");
                // Small files dr reads itself are buffered; every other entry is read from the
                // shared stream by the pipeline, and we wait until it has been consumed.
                let (body, done): (Box<dyn Read + Send>, _) = if small {
                    let mut text = vec![0u8; usize::try_from(size).unwrap_or(0)];
                    src.lock()
                        .expect("tar stream lock")
                        .read_exact(&mut text)
                        .map_err(read_err)?;
                    let t = Some(String::from_utf8_lossy(&text).into_owned());
                    if rel == Path::new("backup_label") {
                        captured.label = t;
                    } else {
                        captured.manifest = t;
                    }
                    (Box::new(std::io::Cursor::new(text)), None)
                } else {
                    let (tx, rx) = mpsc::sync_channel(1);
                    (
                        Box::new(EntryBody {
                            src: src.clone(),
                            remaining: size,
                            done: Some(tx),
                        }),
                        Some(rx),
                    )
                };
                out.blocking_send(Artifact {
                    name: entry_name,
                    kind: EntryKind::File,
                    mode,
                    mtime_ns,
                    target: None,
                    body: Body::Reader(body),
                    chunking: chunking_for(&rel),
                    stat: None,
                    page_check: None,
                })
                .map_err(|_| SourceError::PipelineGone)?;
                if let Some(rx) = done {
                    rx.recv()
                        .map_err(|_| SourceError::PipelineGone)?
                        .map_err(read_err)?;
                }
                skip(&src, padded - size).map_err(read_err)?;
                continue;
            }
            _ => {
                skip(&src, padded).map_err(read_err)?;
                continue;
            }
        }
        skip(&src, padded).map_err(read_err)?;
    }
}

fn skip<R: Read>(src: &Arc<Mutex<R>>, n: u64) -> std::io::Result<()> {
    let mut g = src.lock().expect("tar stream lock");
    std::io::copy(&mut (&mut *g).take(n), &mut std::io::sink()).map(|_| ())
}
