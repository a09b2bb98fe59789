//! Local mode: `pg_backup_start` / `pg_backup_stop` over one session, files read directly.
//!
//! Skipped, as PostgreSQL's documentation on base backups lists: the contents of `pg_wal`,
//! `pg_replslot`, `pg_dynshmem`, `pg_notify`, `pg_serial`, `pg_snapshots`, `pg_stat_tmp` and
//! `pg_subtrans` (the directories themselves are kept), `postmaster.pid`, `postmaster.opts`,
//! `pg_internal.init`, temporary files, and any `backup_label`/`tablespace_map`/signal files
//! (the backup's own label comes from `pg_backup_stop`). Tablespace links in `pg_tblspc` are
//! followed and their contents stored under `pg_tblspc/<oid>/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::Client;

use super::lsn::Lsn;
use super::{BLOCK_SIZE, BaseBackup, ServerInfo, is_relation_file, sql_err};
use crate::repo::manifest::{EntryKind, EntryName};
use crate::source::tree::{self, WalkRules};
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
        let mut rules = PgRules {
            tablespaces: BTreeMap::new(),
        };
        tree::walk(&data_dir, &out, &cancel, &mut rules).map(|_| rules.tablespaces)
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

/// PostgreSQL's rules: what a base backup leaves out, which symlinks are tablespaces, which
/// files hold relation pages.
struct PgRules {
    tablespaces: BTreeMap<String, String>,
}

impl WalkRules for PgRules {
    fn skip(&self, rel: &Path) -> bool {
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        SKIP_FILES.contains(&name.as_ref()) || name.starts_with("pgsql_tmp")
    }

    fn skip_contents(&self, rel: &Path) -> bool {
        SKIP_CONTENTS.iter().any(|s| rel == Path::new(s))
    }

    fn follow(&mut self, rel: &Path, target: &Path) -> bool {
        if rel.parent() != Some(Path::new("pg_tblspc")) {
            return false;
        }
        let oid = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.tablespaces.insert(oid, target.display().to_string());
        true
    }

    fn chunking(&self, rel: &Path) -> Chunking {
        if is_relation_file(rel) {
            Chunking::Fixed(BLOCK_SIZE)
        } else {
            Chunking::ContentDefined
        }
    }
}
