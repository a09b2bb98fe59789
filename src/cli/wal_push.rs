//! `dr wal-push --policy ID %p`: PostgreSQL's `archive_command`. A call that has to upload
//! takes the next `.ready` segments along in parallel; the calls for those then return at
//! once (see `ops::wal_archive`).

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::error::{OK, UsageError};
use crate::ops::wal_archive::{self, Archived};
use crate::pipeline::wal::PushOutcome;
use crate::source::postgres::lsn::is_wal_file_name;

use super::context;

/// Arguments of `dr wal-push`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example, in postgresql.conf:\n  archive_mode = on\n  archive_command = 'dr -c /etc/dr/dr.toml wal-push --policy pg-main %p'\nExit 0 only once the segment is durably stored (or the identical segment already was);\nPostgreSQL keeps the segment and retries on any other exit code, so no WAL is ever dropped."
)]
pub struct WalPushArgs {
    /// Policy id (a postgres policy).
    #[arg(long)]
    pub policy: String,
    /// Path of the WAL file (%p).
    pub path: PathBuf,
}

pub(crate) async fn run(config: Option<&Path>, args: &WalPushArgs) -> anyhow::Result<i32> {
    let config = context::load_scoped(config, crate::config::Scope::Only(&args.policy))?;
    let policy = context::policy(&config, &args.policy)?;
    let name = args
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    if !is_wal_file_name(&name) {
        return Err(UsageError(format!(
            "{} is not a WAL file name (expected a segment, .history, .partial or .backup file)",
            args.path.display()
        ))
        .into());
    }
    let pid = policy.id.as_str();
    let markers = wal_archive::marker_dir(&config.state_dir, pid);
    let outcome = if wal_archive::stored_ahead(&markers, &name, &args.path) {
        Archived::Ahead
    } else {
        let data = tokio::fs::read(&args.path)
            .await
            .with_context(|| format!("reading {}", args.path.display()))?;
        let (repo, recipients) = context::write_repo(&config, policy).await?;
        let outcome = wal_archive::push_with_ahead(
            &repo,
            &recipients,
            pid,
            &args.path,
            &name,
            data,
            &markers,
            &policy.wal,
        )
        .await?;
        // A marker for another file of this name (rewritten since) is spent too.
        let _ = std::fs::remove_file(markers.join(&name));
        wal_archive::prune_markers(&markers);
        Archived::Now(outcome)
    };
    let state = config.state_dir.join("wal");
    if std::fs::create_dir_all(&state).is_ok() {
        let status = serde_json::json!({ "last_archived": name, "archived_at": chrono::Utc::now().to_rfc3339() });
        let _ = std::fs::write(
            state.join(format!("{}.json", policy.id)),
            status.to_string(),
        );
    }
    tracing::info!(policy = %policy.id, segment = %name, outcome = ?outcome, "WAL archived.");
    if outcome == Archived::Now(PushOutcome::AlreadyArchived) {
        eprintln!("dr wal-push: {name} was already archived (identical); nothing to do");
    }
    Ok(OK)
}
