//! `dr snapshots --policy ID`: list snapshots from their `.refs` (no identity needed).

use std::path::Path;

use crate::config::units::format_bytes;
use crate::error::OK;

use super::{context, output};

/// Arguments of `dr snapshots`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  dr snapshots --policy app-files\n  dr snapshots --policy pg-main --region us --json"
)]
pub struct SnapshotsArgs {
    /// Policy id.
    #[arg(long)]
    pub policy: String,
    /// Read a replica's copy instead of the primary.
    #[arg(long)]
    pub region: Option<String>,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// One snapshot, named as `dr backup --json` names the same figures.
#[derive(serde::Serialize)]
struct Row {
    id: String,
    started: String,
    finished: String,
    /// Plaintext bytes the backup read.
    bytes_read: u64,
    /// Bytes it stored (compressed and sealed, after dedup).
    bytes_stored: u64,
    artifacts: u64,
    source: String,
}

pub(crate) async fn run(config: Option<&Path>, args: &SnapshotsArgs) -> anyhow::Result<i32> {
    let config = context::load_scoped(config, crate::config::Scope::Focus(&args.policy))?;
    let policy = context::policy(&config, &args.policy)?;
    let repo = context::read_repo(&config, policy, args.region.as_deref()).await?;
    let mut rows = Vec::new();
    for id in repo.committed(policy.id.as_str()).await? {
        let r = repo.read_refs(policy.id.as_str(), &id).await?;
        rows.push(Row {
            id: id.to_string(),
            started: r.started.to_rfc3339(),
            finished: r.finished.to_rfc3339(),
            bytes_read: r.bytes_total,
            bytes_stored: r.bytes_new,
            artifacts: r.artifacts,
            source: r.source_kind,
        });
    }
    if args.json {
        output::json(&rows)?;
    } else if rows.is_empty() {
        outln!(
            "No snapshots of {} in {}.",
            policy.id,
            repo.storage.location()
        );
    } else {
        let w = rows.iter().map(|r| r.id.len()).max().unwrap_or(8);
        outln!(
            "{:<w$} {:<19} {:>12} {:>12} {:>9}",
            "SNAPSHOT",
            "FINISHED (UTC)",
            "READ",
            "STORED",
            "ARTIFACTS"
        );
        for r in &rows {
            let finished = r
                .finished
                .get(..19)
                .unwrap_or(&r.finished)
                .replace('T', " ");
            outln!(
                "{:<w$} {:<19} {:>12} {:>12} {:>9}",
                r.id,
                finished,
                format_bytes(r.bytes_read),
                format_bytes(r.bytes_stored),
                r.artifacts
            );
        }
    }
    if let (false, crate::config::SourceSpec::Postgres(spec)) = (args.json, &policy.source) {
        // Archive lag: the newest archived WAL file and how long ago it arrived.
        let wal = crate::pipeline::wal::list(&repo, policy.id.as_str()).await?;
        match crate::pipeline::wal::newest_segment(&wal) {
            Some((name, meta)) => {
                let age = meta.modified.map(|t| {
                    crate::config::units::format_duration(
                        (chrono::Utc::now() - t).to_std().unwrap_or_default(),
                    )
                });
                outln!(
                    "WAL archive: {} files, newest segment {name} archived {} ago{}",
                    wal.len(),
                    age.as_deref().unwrap_or("?"),
                    unarchived(spec, name).await
                );
            }
            None => outln!(
                "WAL archive: empty (is archive_command set to `dr wal-push --policy {}`?)",
                policy.id
            ),
        }
    }
    Ok(OK)
}

/// `, N written since` when the policy's server tells its WAL position within a few seconds
/// (this command may run far from the database; then nothing is added).
async fn unarchived(spec: &crate::config::PostgresSpec, newest: &str) -> String {
    let source = crate::source::postgres::PostgresSource::new(spec.clone());
    match source
        .archive_state(newest, std::time::Duration::from_secs(5))
        .await
    {
        Ok(a) => format!(
            "; {} of WAL written since is not archived yet",
            format_bytes(a.lag_bytes)
        ),
        Err(e) => {
            tracing::debug!(error = %e, "No WAL position from the server.");
            String::new()
        }
    }
}
