//! `dr backup --group ID`: one backup run of an application group. The snapshot-based members
//! (Redis, Qdrant, files) are backed up at once, and at the same moment each PostgreSQL
//! member gets a restore point named after the run (`pg_create_restore_point`, its segment
//! switched so it is archived now): the members' points are as close together as the
//! sources allow, and `dr restore --group ID --run latest` recovers PostgreSQL to exactly
//! that restore point and every other member to its snapshot of the run. The run is recorded
//! (`pipeline::group_run`) only when every member succeeded, in each member's primary target.

use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Group, Policy, SourceSpec};
use crate::pipeline::group_run::{self, GroupRun, RunMember};
use crate::pipeline::progress::Progress;
use crate::repo::ids::SnapshotId;
use crate::source::postgres::PostgresSource;

/// Why a group run failed: every member that failed, with its error. Nothing was recorded.
#[derive(Debug, thiserror::Error)]
#[error("group {group}: {} (the run was not recorded)", .failures.join("; "))]
pub struct GroupError {
    /// The group.
    pub group: String,
    /// `<policy>: <error>` per failed member.
    pub failures: Vec<String>,
}

/// The name of the restore point a run creates in PostgreSQL members.
pub fn restore_point_name(group: &str, run: &SnapshotId) -> String {
    format!("dr-group-{group}-{run}")
}

/// Runs one backup of `group`: see the module docs.
///
/// # Errors
/// One member failing (each failure listed); the run is then not recorded.
pub async fn backup(
    config: &Config,
    group: &Group,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<GroupRun, GroupError> {
    let run = SnapshotId::new(Utc::now());
    let members: Vec<&Policy> = group
        .members
        .iter()
        .filter_map(|id| config.policies.get(id))
        .collect();
    let point_name = restore_point_name(&group.id, &run);
    let jobs = members.iter().map(|p| {
        let (progress, name) = (progress.clone(), point_name.clone());
        async move {
            let member = match &p.source {
                SourceSpec::Postgres(spec) => {
                    let (lsn, at) = PostgresSource::new(spec.clone())
                        .restore_point(&name)
                        .await
                        .map_err(|e| e.to_string())?;
                    RunMember {
                        policy: p.id.to_string(),
                        source: p.source.kind().to_owned(),
                        point: at,
                        snapshot: None,
                        restore_point: Some(name),
                        lsn: Some(lsn.to_string()),
                    }
                }
                _ => {
                    let s = super::backup::run(config, p, false, progress, cancel)
                        .await
                        .map_err(|e| crate::error::chain(&e))?;
                    RunMember {
                        policy: p.id.to_string(),
                        source: p.source.kind().to_owned(),
                        point: s.snapshot.time(),
                        snapshot: Some(s.snapshot),
                        restore_point: None,
                        lsn: None,
                    }
                }
            };
            Ok::<RunMember, String>(member)
        }
    });
    let results = futures::future::join_all(jobs).await;
    let mut failures = Vec::new();
    let mut done = Vec::new();
    for (p, r) in members.iter().zip(results) {
        match r {
            Ok(m) => done.push(m),
            Err(e) => failures.push(format!("{}: {e}", p.id)),
        }
    }
    let record = GroupRun {
        group: group.id.clone(),
        run,
        finished: Utc::now(),
        members: done,
    };
    // Recorded in each member's primary target (once per target).
    let mut targets: Vec<&str> = Vec::new();
    let all_done = failures.is_empty();
    for p in members.iter().filter(|_| all_done) {
        if targets.contains(&p.targets[0].as_str()) {
            continue;
        }
        targets.push(&p.targets[0]);
        let written = async {
            let (repo, _) = super::write_repo(config, p).await?;
            group_run::write(&repo, &record).await?;
            Ok::<(), super::OpsError>(())
        };
        if let Err(e) = written.await {
            failures.push(format!(
                "recording the run in {}: {}",
                p.targets[0],
                crate::error::chain(&e)
            ));
        }
    }
    if failures.is_empty() {
        Ok(record)
    } else {
        Err(GroupError {
            group: group.id.clone(),
            failures,
        })
    }
}
