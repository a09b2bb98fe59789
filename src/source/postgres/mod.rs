//! The `postgres` source: base backups (local: `pg_backup_start`/`pg_backup_stop` + direct,
//! block-wise file reads; stream: `pg_basebackup` parsed as it streams). WAL archiving and
//! point-in-time restore build on the facts recorded here ([`facts`]; see `pipeline::wal`,
//! `pipeline::pitr` and `restore::postgres`).
//!
//! Relation files (under `base/`, `global/` and tablespaces) are cut into fixed
//! [`BLOCK_SIZE`] blocks: their bytes never shift, so a changed page changes one block and
//! every other block dedupes against earlier backups (block-level incrementals for free).

pub mod binaries;
pub mod checksum;
pub mod facts;
mod local;
pub mod lsn;
pub mod receivewal;
pub mod recovery;
pub mod stream;

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::Utc;
use tokio_postgres::Client;

use super::{SnapshotCx, SnapshotReport, SourceError};
use crate::config::{PgMode, PostgresSpec};
pub use facts::PgFacts;
use lsn::{Lsn, Segment};

/// Block size for relation files: one PostgreSQL page, so a changed page costs one page.
pub const BLOCK_SIZE: usize = 8 << 10;

/// Facts about the server, read before a backup.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `server_version_num`.
    pub version_num: i32,
    /// `server_version`.
    pub version: String,
    /// `pg_control_system().system_identifier`.
    pub system_identifier: String,
    /// `wal_segment_size` in bytes.
    pub wal_segment_size: u64,
    /// `data_directory`.
    pub data_directory: String,
}

/// WAL archiving as the server sees it (see [`PostgresSource::archive_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveState {
    /// WAL written past the newest archived segment.
    pub lag_bytes: u64,
    /// `pg_stat_archiver.failed_count`: failed `archive_command` runs since the server's
    /// statistics were last reset.
    pub failed_count: u64,
}

/// A PostgreSQL cluster to back up.
pub struct PostgresSource {
    spec: PostgresSpec,
}

/// Host and port of a connection string, for messages (never the password).
pub fn describe_conninfo(conninfo: &str) -> String {
    match tokio_postgres::Config::from_str(conninfo) {
        Ok(c) => {
            let hosts: Vec<String> = c
                .get_hosts()
                .iter()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(s) => s.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .collect();
            let ports: Vec<String> = c.get_ports().iter().map(ToString::to_string).collect();
            format!(
                "host={} port={} user={}",
                hosts.join(","),
                if ports.is_empty() {
                    "5432".to_owned()
                } else {
                    ports.join(",")
                },
                c.get_user().unwrap_or("?")
            )
        }
        Err(_) => "an unparsable connection string".to_owned(),
    }
}

/// Connects; the connection task runs until the client is dropped.
///
/// # Errors
/// `SourceError::Connect` naming the server (not the password).
pub async fn connect(conninfo: &str) -> Result<Client, SourceError> {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .map_err(|e| SourceError::Connect {
            target: format!("PostgreSQL ({})", describe_conninfo(conninfo)),
            detail: e.to_string(),
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended.");
        }
    });
    Ok(client)
}

fn sql_err(what: &str) -> impl Fn(tokio_postgres::Error) -> SourceError + '_ {
    move |e| SourceError::request(what, e)
}

/// Reads version, system identifier, segment size and data directory.
///
/// # Errors
/// When a query fails (e.g. missing privileges).
pub async fn server_info(client: &Client) -> Result<ServerInfo, SourceError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'), \
             (SELECT system_identifier::text FROM pg_control_system()), \
             pg_size_bytes(current_setting('wal_segment_size'))::bigint, current_setting('data_directory')",
            &[],
        )
        .await
        .map_err(sql_err("reading server facts"))?;
    Ok(ServerInfo {
        version_num: row.get(0),
        version: row.get(1),
        system_identifier: row.get(2),
        wal_segment_size: u64::try_from(row.get::<_, i64>(3)).unwrap_or(16 << 20),
        data_directory: row.get(4),
    })
}

impl PostgresSource {
    /// A source for `spec`.
    pub fn new(spec: PostgresSpec) -> Self {
        Self { spec }
    }

    fn conninfo(&self) -> Result<String, SourceError> {
        self.spec
            .conninfo
            .read()
            .map_err(SourceError::secret("the PostgreSQL connection string"))
    }

    /// Creates the restore point `name` (`pg_create_restore_point`) and closes its WAL
    /// segment (`pg_switch_wal`) so that it is archived now: a recovery can then target the
    /// point at once. Returns its LSN and the server's time of creation.
    ///
    /// # Errors
    /// Connection or query failures (e.g. missing privileges).
    pub async fn restore_point(
        &self,
        name: &str,
    ) -> Result<(Lsn, chrono::DateTime<Utc>), SourceError> {
        let client = connect(&self.conninfo()?).await?;
        let row = client
            .query_one(
                "SELECT pg_create_restore_point($1)::text, clock_timestamp()",
                &[&name],
            )
            .await
            .map_err(sql_err(
                "creating a restore point (pg_create_restore_point)",
            ))?;
        let lsn = Lsn::parse(row.get::<_, &str>(0)).map_err(SourceError::Answer)?;
        let at: std::time::SystemTime = row.get(1);
        client
            .query_one("SELECT pg_switch_wal()::text", &[])
            .await
            .map_err(sql_err(
                "switching WAL after the restore point (pg_switch_wal)",
            ))?;
        Ok((lsn, at.into()))
    }

    /// How far WAL archiving is behind, and how often it failed. The lag is the WAL the
    /// server has written past the end of `newest_segment` (the newest segment the archive
    /// holds): what a loss of the server now would lose. On a standby, measured against the
    /// WAL it has received. Zero when the archive is ahead (a timeline switch, a segment
    /// archived by another server).
    ///
    /// Gives up after `wait` (a server that does not answer, a host far from it).
    ///
    /// # Errors
    /// Connection or query failures, no answer within `wait`; a name that is not a segment.
    pub async fn archive_state(
        &self,
        newest_segment: &str,
        wait: std::time::Duration,
    ) -> Result<ArchiveState, SourceError> {
        tokio::time::timeout(wait, self.archive_state_now(newest_segment))
            .await
            .unwrap_or_else(|_| {
                Err(SourceError::TimedOut(format!(
                    "the server did not tell its WAL position within {}s",
                    wait.as_secs()
                )))
            })
    }

    async fn archive_state_now(&self, newest_segment: &str) -> Result<ArchiveState, SourceError> {
        let client = connect(&self.conninfo()?).await?;
        let row = client
            .query_one(
                "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                 ELSE pg_current_wal_lsn() END)::text, \
                 pg_size_bytes(current_setting('wal_segment_size'))::bigint, \
                 (SELECT failed_count FROM pg_stat_archiver)",
                &[],
            )
            .await
            .map_err(sql_err("reading the server's WAL position"))?;
        let seg_size = u64::try_from(row.get::<_, i64>(1)).unwrap_or(16 << 20);
        let failed_count = u64::try_from(row.get::<_, i64>(2)).unwrap_or(0);
        let Some(now) = row.get::<_, Option<String>>(0) else {
            // A standby that has received nothing yet.
            return Ok(ArchiveState {
                lag_bytes: 0,
                failed_count,
            });
        };
        let now = Lsn::parse(&now).map_err(SourceError::Answer)?;
        let seg = Segment::parse(newest_segment, seg_size).ok_or_else(|| {
            SourceError::Answer(format!("`{newest_segment}` is not a WAL segment name"))
        })?;
        Ok(ArchiveState {
            lag_bytes: lsn::bytes_after(seg, now, seg_size),
            failed_count,
        })
    }

    pub(super) async fn check(&self) -> Result<(), SourceError> {
        let client = connect(&self.conninfo()?).await?;
        let info = server_info(&client).await?;
        let archive: String = client
            .query_one("SELECT current_setting('archive_mode')", &[])
            .await
            .map_err(sql_err("reading archive_mode"))?
            .get(0);
        if archive == "off" {
            return Err(SourceError::Setup("archive_mode is off: set archive_mode = on and archive_command = 'dr -c /etc/dr/dr.toml wal-push --policy ID %p' (needs a restart)".to_owned()));
        }
        if self.spec.mode == PgMode::Local {
            let dir = self
                .spec
                .data_dir
                .as_ref()
                .expect("validated: local mode has a data_dir");
            std::fs::read_dir(dir).map_err(|e| SourceError::Read {
                path: dir.display().to_string(),
                source: e,
            })?;
            if std::path::Path::new(&info.data_directory) != dir.as_path() {
                tracing::warn!(configured = %dir.display(), server = %info.data_directory, "source.data_dir differs from the server's data_directory (fine for a sidecar that mounts it elsewhere).");
            }
        }
        Ok(())
    }

    pub(super) async fn snapshot(self, cx: SnapshotCx) -> Result<SnapshotReport, SourceError> {
        let conninfo = self.conninfo()?;
        let primary = connect(&conninfo).await?;
        // From a standby, everything but WAL switching and archiving is asked of the standby.
        let standby = match &self.spec.standby {
            None => None,
            Some(s) => {
                let c = s
                    .read()
                    .map_err(SourceError::secret("the standby's connection string"))?;
                Some(standby_client(&primary, connect(&c).await?).await?)
            }
        };
        let client = standby.as_ref().unwrap_or(&primary);
        let info = server_info(client).await?;
        let start_time = Utc::now();
        let backup = match self.spec.mode {
            PgMode::Local => {
                local::backup(
                    client,
                    standby.as_ref().map(|_| &primary),
                    &info,
                    self.spec.data_dir.clone().expect("validated"),
                    &cx,
                )
                .await?
            }
            PgMode::Stream => {
                // pg_basebackup sends about the databases' size (plus the global catalog).
                if let Ok(row) = client
                    .query_one(
                        "SELECT sum(pg_database_size(oid))::bigint FROM pg_database",
                        &[],
                    )
                    .await
                {
                    cx.expect(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0));
                }
                stream::backup(&conninfo, &info, self.spec.bin_dir.as_deref(), &cx).await?
            }
        };
        let stop_time = Utc::now();
        let databases = client
            .query("SELECT oid::text, datname FROM pg_database", &[])
            .await
            .map_err(sql_err("listing the databases"))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let seg = info.wal_segment_size;
        let label = parse_label(&backup.label);
        let timeline = label.timeline.unwrap_or(1);
        let start_lsn = label.start_lsn.ok_or_else(|| {
            SourceError::Answer("the backup label has no START WAL LOCATION".to_owned())
        })?;
        let facts = serde_json::to_value(PgFacts {
            system_identifier: info.system_identifier.clone(),
            server_version: info.version.clone(),
            server_version_num: info.version_num,
            wal_segment_size: seg,
            timeline,
            start_lsn: start_lsn.to_string(),
            stop_lsn: backup.stop_lsn.to_string(),
            start_segment: Segment::of(timeline, start_lsn, seg).name(seg),
            stop_segment: Segment::of(timeline, backup.stop_lsn, seg).name(seg),
            start_time: start_time.to_rfc3339(),
            stop_time: stop_time.to_rfc3339(),
            mode: match self.spec.mode {
                PgMode::Local => "local",
                PgMode::Stream => "stream",
            }
            .to_owned(),
            data_directory: info.data_directory.clone(),
            tablespaces: backup.tablespaces,
            databases,
        })
        .expect("facts serialize");
        let mut public_facts: BTreeMap<String, serde_json::Value> = facts
            .as_object()
            .expect("an object")
            .iter()
            .filter(|(k, _)| *k != "databases")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if standby.is_some() {
            public_facts.insert("backup_from".to_owned(), "standby".into());
        }
        Ok(SnapshotReport {
            facts,
            public_facts,
        })
    }
}

/// `standby` once it is checked to be a streaming standby of `primary`'s cluster.
async fn standby_client(primary: &Client, standby: Client) -> Result<Client, SourceError> {
    let row = standby
        .query_one(
            "SELECT pg_is_in_recovery(), (SELECT system_identifier::text FROM pg_control_system())",
            &[],
        )
        .await
        .map_err(sql_err("asking the standby whether it is one"))?;
    let (in_recovery, id): (bool, String) = (row.get(0), row.get(1));
    let primary_id: String = primary
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .map_err(sql_err("reading the primary's system identifier"))?
        .get(0);
    if !in_recovery {
        return Err(SourceError::Setup(
            "source.standby_conninfo names a server that is not in recovery: not a standby"
                .to_owned(),
        ));
    }
    if id != primary_id {
        return Err(SourceError::Setup(format!(
            "the standby (system identifier {id}) is not of the primary's cluster ({primary_id})"
        )));
    }
    Ok(standby)
}

/// What a base backup method returns.
pub(super) struct BaseBackup {
    label: String,
    stop_lsn: Lsn,
    tablespaces: BTreeMap<String, String>,
}

pub(super) struct Label {
    pub(super) timeline: Option<u32>,
    pub(super) start_lsn: Option<Lsn>,
}

/// Reads `START WAL LOCATION: 0/2000028 (file …)` and `START TIMELINE: 1` from a backup label.
pub(super) fn parse_label(label: &str) -> Label {
    let mut l = Label {
        timeline: None,
        start_lsn: None,
    };
    for line in label.lines() {
        if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
            l.start_lsn = rest
                .split_whitespace()
                .next()
                .and_then(|s| Lsn::parse(s).ok());
        } else if let Some(rest) = line.strip_prefix("START TIMELINE: ") {
            l.timeline = rest.trim().parse().ok();
        }
    }
    l
}

/// Page-sized blocks for relation files, content-defined chunks for everything else.
pub(super) fn chunking_for(rel: &std::path::Path) -> super::Chunking {
    if is_relation_file(rel) {
        super::Chunking::Fixed(BLOCK_SIZE)
    } else {
        super::Chunking::ContentDefined
    }
}

/// Whether a data-directory path (relative) holds relation data, chunked in fixed blocks.
pub(crate) fn is_relation_file(rel: &std::path::Path) -> bool {
    let mut c = rel.components();
    matches!(
        c.next().and_then(|c| c.as_os_str().to_str()),
        Some("base" | "global" | "pg_tblspc")
    ) && rel
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.as_bytes().first().is_some_and(u8::is_ascii_digit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_is_parsed() {
        let l = parse_label(
            "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 3\n",
        );
        assert_eq!(l.start_lsn, Some(Lsn(0x0200_0028)));
        assert_eq!(l.timeline, Some(3));
    }

    #[test]
    fn relation_files() {
        use std::path::Path;
        assert!(is_relation_file(Path::new("base/5/16384")));
        assert!(is_relation_file(Path::new("base/5/16384.1")));
        assert!(is_relation_file(Path::new("global/1262_fsm")));
        assert!(!is_relation_file(Path::new("base/5/PG_VERSION")));
        assert!(!is_relation_file(Path::new("pg_xact/0000")));
        assert!(is_relation_file(Path::new(
            "pg_tblspc/16400/PG_15_202209061/5/16401"
        )));
    }

    #[test]
    fn conninfo_description_hides_passwords() {
        let d = describe_conninfo(
            "host=db.internal port=6543 user=backup password=hunter2 dbname=postgres",
        );
        assert!(
            d.contains("db.internal") && d.contains("6543") && !d.contains("hunter2"),
            "{d}"
        );
        let d = describe_conninfo("postgresql://backup:hunter2@db:5433/postgres");
        assert!(!d.contains("hunter2"), "{d}");
    }
}
