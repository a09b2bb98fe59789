//! The audit log: who changed what, when, with which result.
//!
//! Every restore, drill run, retention deletion, key operation and state-changing API call
//! (from the CLI, the daemon or the API) becomes one write-once object
//! `audit/<YYYYMMDD>/<event-id>.json` in the audit repository: the primary target of the first
//! policy (by id), else the first storage target. It is replicated with the rest. "Who" is the
//! API token's *name* or the OS user, never a token. If the repository cannot be written the
//! event goes to `state/audit-pending.jsonl` and a warning is logged; the next event retries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::repo::ids::SnapshotId;
use crate::repo::layout::ObjectKey;
use crate::storage::{PutMode, Storage};

/// How an action was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A `dr` command.
    Cli,
    /// An API call.
    Api,
    /// The daemon on its own (a schedule, a periodic pass).
    Daemon,
}

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A backup.
    Backup,
    /// A restore.
    Restore,
    /// A restore drill.
    DrillRun,
    /// Retention applied (snapshots forgotten, packs and WAL deleted).
    RetentionApply,
    /// An evidence bundle exported.
    EvidenceExport,
}

impl Via {
    /// As stored in the event.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cli => "cli",
            Self::Api => "api",
            Self::Daemon => "daemon",
        }
    }
}

impl Action {
    /// As stored in the event.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Restore => "restore",
            Self::DrillRun => "drill.run",
            Self::RetentionApply => "retention.apply",
            Self::EvidenceExport => "evidence.export",
        }
    }
}

/// One audit event; stored as JSON with string fields, so that events of any dr version read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Event id (time + random).
    pub id: String,
    /// When.
    pub time: DateTime<Utc>,
    /// Token name (API) or OS user (CLI, daemon).
    pub who: String,
    /// [`Via::as_str`].
    pub via: String,
    /// [`Action::as_str`].
    pub action: String,
    /// What it acted on (policy, drill, file).
    pub target: String,
    /// `ok` or `failed: …`.
    pub result: String,
    pub host: String,
}

impl Event {
    /// A new event happening now.
    pub fn new(
        via: Via,
        who: &str,
        action: Action,
        target: &str,
        result: Result<(), String>,
    ) -> Self {
        let time = Utc::now();
        Self {
            id: SnapshotId::new(time).to_string(),
            time,
            who: who.to_owned(),
            via: via.as_str().to_owned(),
            action: action.as_str().to_owned(),
            target: target.to_owned(),
            result: match result {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("failed: {e}"),
            },
            host: crate::host::name().unwrap_or_default(),
        }
    }
}

/// The storage target audit events go to.
pub fn audit_target(config: &Config) -> Option<&str> {
    config
        .policies
        .values()
        .next()
        .map(|p| p.targets[0].as_str())
        .or_else(|| config.storage.keys().next().map(String::as_str))
}

fn key(e: &Event) -> ObjectKey {
    ObjectKey::from_listed(format!("audit/{}/{}.json", e.time.format("%Y%m%d"), e.id))
}

/// Records `event`; never fails the caller (see the module docs).
pub async fn record(config: &Config, event: Event) {
    let mut pending = vec![event];
    let spool = config.state_dir.join("audit-pending.jsonl");
    if let Ok(text) = std::fs::read_to_string(&spool) {
        pending.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    let stored = async {
        let target = audit_target(config)
            .ok_or_else(|| crate::ops::OpsError::Usage("no storage target".to_owned()))?;
        let s = crate::ops::storage(config, target).await?;
        for e in &pending {
            let body = serde_json::to_vec(e).expect("an audit event serializes");
            match s
                .put(&key(e), bytes::Bytes::from(body), PutMode::CreateOnly)
                .await
            {
                Ok(()) | Err(crate::storage::StorageError::AlreadyExists { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok::<_, crate::ops::OpsError>(())
    }
    .await;
    match stored {
        Ok(()) => {
            let _ = std::fs::remove_file(&spool);
        }
        Err(e) => {
            tracing::warn!(error = crate::error::chain(&e), spool = %spool.display(), "Could not write the audit log to the repository; kept locally until the next event.");
            let lines: String = pending
                .iter()
                .filter_map(|e| serde_json::to_string(e).ok())
                .map(|l| l + "\n")
                .collect();
            let _ = std::fs::create_dir_all(&config.state_dir);
            let _ = std::fs::write(&spool, lines);
        }
    }
}

/// A bound of `dr audit --since/--until` (and the API's `?since=&until=`): anything a
/// point in time takes (`2026-12-01 14:02:00+00`, RFC 3339), or a date or a date and time
/// without a zone, read as UTC (`2026-12-01` is its midnight, as in journalctl).
///
/// # Errors
/// Not a time, with what is accepted.
pub fn parse_bound(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = crate::pipeline::pitr::parse_time(s) {
        return Ok(t);
    }
    let t = s.trim();
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(d) = chrono::NaiveDateTime::parse_from_str(t, fmt) {
            return Ok(d.and_utc());
        }
    }
    Err(format!(
        "`{s}` is not a time: use a date (2026-12-01), a date and time (2026-12-01 14:02, UTC) or one with a zone (2026-12-01 14:02:00+01)"
    ))
}

/// Audit events stored on `storage` at or after `since` and before `until`, oldest first.
///
/// # Errors
/// Listing fails.
pub async fn list(
    storage: &Storage,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Result<Vec<Event>, crate::storage::StorageError> {
    let mut out = Vec::new();
    for m in storage.list(&crate::repo::layout::audit_prefix()).await? {
        if let Some(since) = since
            && m.modified
                .is_some_and(|t| t < since - chrono::Duration::hours(1))
        {
            continue;
        }
        match storage.get(&m.key, None).await {
            Ok(b) => match serde_json::from_slice::<Event>(&b) {
                Ok(e) if since.is_none_or(|s| e.time >= s) && until.is_none_or(|u| e.time < u) => {
                    out.push(e);
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(object = %m.key, error = %err, "Skipping a malformed audit event.")
                }
            },
            Err(err) => {
                tracing::warn!(object = %m.key, error = %err, "Skipping an unreadable audit event.")
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_take_dates_times_and_zones() {
        let at = |s: &str| parse_bound(s).unwrap().to_rfc3339();
        assert_eq!(at("2026-12-01"), "2026-12-01T00:00:00+00:00");
        assert_eq!(at("2026-12-01 14:02"), "2026-12-01T14:02:00+00:00");
        assert_eq!(at("2026-12-01 14:02:30"), "2026-12-01T14:02:30+00:00");
        assert_eq!(at("2026-12-01 14:02:00+01"), "2026-12-01T13:02:00+00:00");
        assert_eq!(at("2026-12-01T14:02:00Z"), "2026-12-01T14:02:00+00:00");
        assert!(parse_bound("yesterday").is_err());
    }
}
