//! Local mode: `pg_backup_start` / `pg_backup_stop` over one session, files read directly.
//!
//! Skipped, as PostgreSQL's documentation on base backups lists: the contents of `pg_wal`,
//! `pg_replslot`, `pg_dynshmem`, `pg_notify`, `pg_serial`, `pg_snapshots`, `pg_stat_tmp` and
//! `pg_subtrans` (the directories themselves are kept), `postmaster.pid`, `postmaster.opts`,
//! `pg_internal.init`, temporary files, and any `backup_label`/`tablespace_map`/signal files
//! (the backup's own label comes from `pg_backup_stop`). Tablespace links in `pg_tblspc` are
//! followed and their contents stored under `pg_tblspc/<oid>/`.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::Client;

use super::lsn::Lsn;
use super::{BLOCK_SIZE, BaseBackup, ServerInfo, is_relation_file, sql_err};
use crate::repo::manifest::{EntryKind, EntryName};
use crate::source::{Artifact, Body, Chunking, SnapshotCx, SourceError};

const SKIP_CONTENTS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];
const SKIP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "recovery.signal",
    "standby.signal",
    "pg_internal.init",
];
/// How long `pg_backup_stop` may wait for the last WAL segment to be archived.
const STOP_TIMEOUT: Duration = Duration::from_secs(600);

pub(super) async fn backup(
    client: &Client,
    info: &ServerInfo,
    data_dir: PathBuf,
    cx: &SnapshotCx,
) -> Result<BaseBackup, SourceError> {
    let (start_sql, stop_sql) = if info.version_num >= 150_000 {
        (
            "SELECT pg_backup_start($1, true)::text",
            "SELECT lsn::text, labelfile FROM pg_backup_stop(true)",
        )
    } else {
        (
            "SELECT pg_start_backup($1, true, false)::text",
            "SELECT lsn::text, labelfile FROM pg_stop_backup(false, true)",
        )
    };
    client.query_one(start_sql, &[&"dr base backup"]).await.map_err(sql_err("starting the backup (pg_backup_start; needs the pg_backup_start privilege or superuser)"))?;

    let out = cx.out.clone();
    let cancel = cx.cancel.clone();
    let walked = tokio::task::spawn_blocking(move || {
        let mut tablespaces = BTreeMap::new();
        walk(&data_dir, Path::new("."), &out, &cancel, &mut tablespaces).map(|()| tablespaces)
    })
    .await
    .map_err(|_| SourceError::Unusable("the data directory walker panicked".to_owned()));

    // Stop the backup whatever happened: the session would end it anyway, but an explicit
    // stop also waits until the WAL the backup needs is archived.
    let stop = tokio::time::timeout(STOP_TIMEOUT, client.query_one(stop_sql, &[])).await;
    let tablespaces = walked??;
    let row = stop
        .map_err(|_| SourceError::Unusable(format!("pg_backup_stop did not return within {STOP_TIMEOUT:?}: WAL archiving is not keeping up or archive_command fails (see the server log)")))?
        .map_err(sql_err("stopping the backup (pg_backup_stop)"))?;
    let stop_lsn = Lsn::parse(row.get::<_, &str>(0)).map_err(SourceError::Unusable)?;
    let label: String = row.get(1);
    // No tablespace_map: restore recreates the pg_tblspc links itself (from the recorded
    // `tablespaces` fact), and PostgreSQL must not see a map as well.
    send_text(cx, "backup_label", &label).await?;
    Ok(BaseBackup {
        label,
        stop_lsn,
        tablespaces,
    })
}

/// Sends a small in-memory file (backup_label).
pub(super) async fn send_text(cx: &SnapshotCx, name: &str, text: &str) -> Result<(), SourceError> {
    let a = Artifact {
        name: EntryName(name.as_bytes().to_vec()),
        kind: EntryKind::File,
        mode: 0o600,
        mtime_ns: Some(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)),
        target: None,
        body: Body::Reader(Box::new(std::io::Cursor::new(text.as_bytes().to_vec()))),
        chunking: Chunking::ContentDefined,
    };
    cx.out.send(a).await.map_err(|_| SourceError::PipelineGone)
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

fn send(out: &tokio::sync::mpsc::Sender<Artifact>, a: Artifact) -> Result<(), SourceError> {
    out.blocking_send(a).map_err(|_| SourceError::PipelineGone)
}

fn walk(
    dir: &Path,
    rel: &Path,
    out: &tokio::sync::mpsc::Sender<Artifact>,
    cancel: &tokio_util::sync::CancellationToken,
    tablespaces: &mut BTreeMap<String, String>,
) -> Result<(), SourceError> {
    if cancel.is_cancelled() {
        return Err(SourceError::Cancelled);
    }
    let read_err = |p: &Path, e| SourceError::Read {
        path: p.display().to_string(),
        source: e,
    };
    let meta = std::fs::metadata(dir).map_err(|e| read_err(dir, e))?;
    let name = EntryName(rel.as_os_str().as_bytes().to_vec());
    send(
        out,
        Artifact {
            name,
            kind: EntryKind::Dir,
            mode: meta.permissions().mode() & 0o7777,
            mtime_ns: Some(mtime_ns(&meta)),
            target: None,
            body: Body::None,
            chunking: Chunking::ContentDefined,
        },
    )?;
    let rel_str = rel.to_string_lossy();
    if SKIP_CONTENTS.iter().any(|s| rel_str == *s) {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| read_err(dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err(dir, e))?;
    entries.sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
    for entry in entries {
        let file_name = entry.file_name();
        let fname = file_name.to_string_lossy();
        let path = entry.path();
        let rel = if rel == Path::new(".") {
            PathBuf::from(&file_name)
        } else {
            rel.join(&file_name)
        };
        if SKIP_FILES.contains(&fname.as_ref()) || fname.starts_with("pgsql_tmp") {
            continue;
        }
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Dropped tables vanish during a backup; WAL replay recreates what matters.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_err(&path, e)),
        };
        let ft = meta.file_type();
        if ft.is_symlink() && rel.parent() == Some(Path::new("pg_tblspc")) {
            let target = std::fs::read_link(&path).map_err(|e| read_err(&path, e))?;
            tablespaces.insert(fname.into_owned(), target.display().to_string());
            walk(&path, &rel, out, cancel, tablespaces)?;
        } else if ft.is_dir() {
            walk(&path, &rel, out, cancel, tablespaces)?;
        } else if ft.is_file() {
            let chunking = if is_relation_file(&rel) {
                Chunking::Fixed(BLOCK_SIZE)
            } else {
                Chunking::ContentDefined
            };
            send(
                out,
                Artifact {
                    name: EntryName(rel.as_os_str().as_bytes().to_vec()),
                    kind: EntryKind::File,
                    mode: meta.permissions().mode() & 0o7777,
                    mtime_ns: Some(mtime_ns(&meta)),
                    target: None,
                    body: Body::File(path),
                    chunking,
                },
            )?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| read_err(&path, e))?;
            send(
                out,
                Artifact {
                    name: EntryName(rel.as_os_str().as_bytes().to_vec()),
                    kind: EntryKind::Symlink,
                    mode: 0o777,
                    mtime_ns: Some(mtime_ns(&meta)),
                    target: Some(EntryName(target.as_os_str().as_bytes().to_vec())),
                    body: Body::None,
                    chunking: Chunking::ContentDefined,
                },
            )?;
        }
    }
    Ok(())
}
