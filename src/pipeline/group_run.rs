//! Group backup runs: which snapshot of each snapshot-based member and which PostgreSQL
//! restore point belong together, so that an application can be recovered to that moment.
//!
//! ```text
//! groups/<group>/<run-id>.json = mac::seal("group-run", GroupRun as JSON)
//! ```
//!
//! Written once per run, after every member's backup committed and every restore point was
//! created (the record is the commit of the run), into the primary target of each member.
//! MAC'd like a snapshot's `.refs`: what it says was written by a writer of this repository.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{PipelineError, Repository};
use crate::repo::RepoError;
use crate::repo::ids::SnapshotId;
use crate::repo::layout;
use crate::repo::mac;
use crate::storage::{PutMode, StorageError};

const KIND: &str = "group-run";

/// One group backup run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRun {
    /// The group.
    pub group: String,
    /// The run's id (its start time and a random part).
    pub run: SnapshotId,
    /// When the last member was done.
    pub finished: DateTime<Utc>,
    /// Each member's point.
    pub members: Vec<RunMember>,
}

/// One member's point in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunMember {
    /// The policy.
    pub policy: String,
    /// Its source type.
    pub source: String,
    /// The moment its data is of: a snapshot's start, a restore point's creation.
    pub point: DateTime<Utc>,
    /// The snapshot taken (snapshot-based members).
    pub snapshot: Option<SnapshotId>,
    /// The restore point created (PostgreSQL members), and its LSN.
    pub restore_point: Option<String>,
    /// The restore point's LSN.
    pub lsn: Option<String>,
}

impl GroupRun {
    /// The greatest distance between two members' points, in seconds.
    pub fn skew_seconds(&self) -> f64 {
        let points = self.members.iter().map(|m| m.point);
        match (points.clone().min(), points.max()) {
            (Some(a), Some(b)) => (b - a).num_milliseconds() as f64 / 1000.0,
            _ => 0.0,
        }
    }
}

/// Stores `run` in `repo`.
///
/// # Errors
/// Storage errors.
pub async fn write(repo: &Repository, run: &GroupRun) -> Result<(), PipelineError> {
    let body = serde_json::to_vec(run).expect("a run serializes");
    let sealed = mac::seal(&repo.ids, KIND, &repo.meta.repo_id, &body);
    match repo
        .storage
        .put(
            &layout::group_run(&run.group, &run.run),
            sealed.into(),
            PutMode::CreateOnly,
        )
        .await
    {
        Ok(()) | Err(StorageError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Every run of `group` in `repo`, oldest first.
///
/// # Errors
/// Storage errors; a record whose MAC or contents do not check, naming it.
pub async fn list(repo: &Repository, group: &str) -> Result<Vec<GroupRun>, PipelineError> {
    let mut runs = Vec::new();
    for meta in repo.storage.list(&layout::group_runs_prefix(group)).await? {
        let bytes = repo.storage.get(&meta.key, None).await?;
        let object = format!("{} in {}", meta.key, repo.storage.location());
        let body = mac::open(&repo.ids, KIND, &repo.meta.repo_id, &object, &bytes)?;
        let run: GroupRun = serde_json::from_slice(body).map_err(|e| RepoError::Corrupt {
            object: object.clone(),
            reason: e.to_string(),
        })?;
        // The record must be where its contents say (no run moved to another group or id).
        if layout::group_run(&run.group, &run.run) != meta.key {
            return Err(RepoError::Corrupt {
                object,
                reason: format!("holds run {} of group {}", run.run, run.group),
            }
            .into());
        }
        runs.push(run);
    }
    runs.sort_by(|a, b| a.run.cmp(&b.run));
    Ok(runs)
}
