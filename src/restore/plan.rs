//! `dr restore --dry-run`: what a restore would do, checked as the real run checks it (engine
//! options, the snapshot or base backup chosen, the WAL it needs, the target directory, every
//! entry, chunk and pack), without writing anything.

use super::{Job, RestoreError, Target};
use crate::config::SourceSpec;
use crate::pipeline::restore::{self, DryRun};

/// The WAL a PostgreSQL restore replays, checked present.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WalRange {
    pub from: String,
    pub to: String,
}

/// What the restore would do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub policy: String,
    /// The snapshot (for PostgreSQL the base backup) that would be restored.
    pub snapshot: String,
    /// When it was taken.
    pub taken: chrono::DateTime<chrono::Utc>,
    /// `files`, `postgres`, `redis`, `qdrant`.
    pub source: String,
    /// PostgreSQL: the recovery target as given (`latest`: the end of the archived WAL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_target: Option<String>,
    /// PostgreSQL: the WAL segments replayed, every one checked present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalRange>,
    pub target_dir: String,
    #[serde(flatten)]
    pub restore: DryRun,
}

/// Plans the job's restore: every check of [`super::run`] before it writes.
///
/// # Errors
/// What the real run would fail with before writing (usage errors exit 2, the rest 1).
pub async fn plan(job: &Job<'_>) -> Result<Plan, RestoreError> {
    super::refuse_foreign_options(job)?;
    let (manifest, recovery_target, wal) = match &job.policy.source {
        SourceSpec::Postgres(_) => {
            let target = job
                .req
                .options
                .recovery_target
                .clone()
                .unwrap_or(Target::Latest);
            let (plan, manifest) = super::postgres::chosen(job, &target).await?;
            super::postgres::other_databases(&manifest, &job.req.options.db_include)?;
            let wal = WalRange {
                from: plan.wal_from,
                to: plan.wal_to,
            };
            (manifest, Some(describe(&target)), Some(wal))
        }
        _ => (super::files::chosen(job).await?, None, None),
    };
    let checked = restore::dry_run(
        job.repo,
        job.identity.clone(),
        &manifest,
        job.req.target_dir,
        job.req.existing,
    )
    .await?;
    Ok(Plan {
        policy: job.policy.id.to_string(),
        snapshot: manifest.snapshot.to_string(),
        taken: manifest.started,
        source: manifest.source.kind.clone(),
        recovery_target,
        wal,
        target_dir: job.req.target_dir.display().to_string(),
        restore: checked,
    })
}

/// A recovery target as an operator writes it.
fn describe(t: &Target) -> String {
    match t {
        Target::Time(t) => format!("time {}", t.format("%Y-%m-%d %H:%M:%S%.3f+00")),
        Target::Lsn(l) => format!("lsn {l}"),
        Target::Xid(x) => format!("xid {x}"),
        Target::Name(n) => format!("restore point {n}"),
        Target::Latest => "latest (the end of the archived WAL)".to_owned(),
        Target::Immediate => "immediate (the end of the base backup)".to_owned(),
    }
}
