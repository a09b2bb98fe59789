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

use super::lsn::{Lsn, Segment};
use super::{BaseBackup, ServerInfo, chunking_for, sql_err};
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
/// How long a backup waits for its last WAL segment to be archived.
const STOP_TIMEOUT: Duration = Duration::from_secs(600);

pub(super) async fn backup(
    client: &Client,
    primary: Option<&Client>,
    info: &ServerInfo,
    data_dir: PathBuf,
    cx: &SnapshotCx,
) -> Result<BaseBackup, SourceError> {
    let (start_sql, stop_sql) = if info.version_num >= 150_000 {
        (
            "SELECT pg_backup_start($1, true)::text",
            "SELECT lsn::text, labelfile FROM pg_backup_stop(false)",
        )
    } else {
        (
            "SELECT pg_start_backup($1, true, false)::text",
            "SELECT lsn::text, labelfile FROM pg_stop_backup(false, false)",
        )
    };
    let checksums: String = client
        .query_one("SHOW data_checksums", &[])
        .await
        .map_err(sql_err("reading data_checksums"))?
        .get(0);
    let start = client.query_one(start_sql, &[&"dr base backup"]).await.map_err(sql_err("starting the backup (pg_backup_start; needs the pg_backup_start privilege or superuser)"))?;
    // With data checksums, every page read is checked against the start LSN (see `checksum`).
    let check = if checksums == "on" {
        Some(
            Lsn::parse(start.get::<_, &str>(0))
                .map_err(SourceError::Answer)?
                .0,
        )
    } else {
        None
    };

    let sized = data_dir.clone();
    cx.size_in_background(move |cancel| {
        let mut rules = PgRules {
            tablespaces: BTreeMap::new(),
            check: None,
        };
        tree::size(&sized, cancel, &mut rules)
    });
    let out = cx.out.clone();
    let cancel = cx.cancel.clone();
    let walked = tokio::task::spawn_blocking(move || {
        let mut rules = PgRules {
            tablespaces: BTreeMap::new(),
            check,
        };
        tree::walk(&data_dir, &out, &cancel, &mut rules).map(|_| rules.tablespaces)
    })
    .await
    .map_err(|_| SourceError::Panicked("data directory walker"));

    // Stop the backup whatever happened (the session would end it anyway). It switches to a
    // new WAL segment; we then wait for the last segment the backup needs to be archived,
    // polling every 100 ms instead of pg_backup_stop's own one-second sleeps.
    let stop = client.query_one(stop_sql, &[]).await;
    let tablespaces = walked??;
    let row = stop.map_err(sql_err("stopping the backup (pg_backup_stop)"))?;
    let stop_lsn = Lsn::parse(row.get::<_, &str>(0)).map_err(SourceError::Answer)?;
    let label: String = row.get(1);
    let timeline = super::parse_label(&label).timeline.unwrap_or(1);
    let last_needed = Segment::of(
        timeline,
        Lsn(stop_lsn.0.saturating_sub(1)),
        info.wal_segment_size,
    )
    .name(info.wal_segment_size);
    // From a standby: the primary archives WAL, and is asked to close the segment holding
    // the backup's end so that it is archived now rather than when it fills.
    let archiver = match primary {
        Some(p) => {
            p.query_one("SELECT pg_switch_wal()::text", &[])
                .await
                .map_err(sql_err("switching WAL on the primary (pg_switch_wal)"))?;
            p
        }
        None => client,
    };
    wait_archived(archiver, &last_needed).await?;
    // No tablespace_map: restore recreates the pg_tblspc links itself (from the recorded
    // `tablespaces` fact), and PostgreSQL must not see a map as well.
    send_text(cx, "backup_label", &label).await?;
    Ok(BaseBackup {
        label,
        stop_lsn,
        tablespaces,
    })
}

/// Waits until PostgreSQL reports `segment` (or a later file) archived.
async fn wait_archived(client: &Client, segment: &str) -> Result<(), SourceError> {
    let t0 = std::time::Instant::now();
    loop {
        let row = client.query_one("SELECT coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '') FROM pg_stat_archiver", &[]).await.map_err(sql_err("reading pg_stat_archiver"))?;
        let (archived, failed): (String, String) = (row.get(0), row.get(1));
        if archived.get(..24).is_some_and(|a| a >= segment) {
            return Ok(());
        }
        if t0.elapsed() > STOP_TIMEOUT {
            return Err(SourceError::TimedOut(format!(
                "WAL segment {segment}, needed by this backup, was not archived within {STOP_TIMEOUT:?} (last archived: {archived:?}, last failed: {failed:?}): check archive_command and the server log"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
        stat: None,
        page_check: None,
    };
    cx.out.send(a).await.map_err(|_| SourceError::PipelineGone)
}

/// PostgreSQL's rules: what a base backup leaves out, which symlinks are tablespaces, which
/// files hold relation pages.
struct PgRules {
    tablespaces: BTreeMap<String, String>,
    /// The backup's start LSN when the cluster has data checksums: relation pages are checked.
    check: Option<u64>,
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
        chunking_for(rel)
    }

    fn page_check(&self, rel: &Path) -> Option<crate::source::PageCheck> {
        let start_lsn = self.check?;
        super::is_relation_file(rel).then(|| crate::source::PageCheck {
            first_block: super::checksum::first_block(
                &rel.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default(),
            ),
            start_lsn,
        })
    }
}
