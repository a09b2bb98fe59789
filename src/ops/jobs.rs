//! The jobs a daemon is running now (backups, drills) and where each stands: served as
//! `GET /v1/jobs`, and written every few seconds to `<state_dir>/jobs.json`, which `dr info`
//! on the same host (or a container sharing the state directory) reads. The last
//! [`KEEP_FINISHED`] finished jobs are kept with their outcome, so that work the API accepted
//! (`202` with a job id) can be followed to its end at `GET /v1/jobs/{id}`.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::pipeline::progress::{Progress, ProgressView};

/// How often the daemon rewrites `jobs.json`.
pub const WRITE_EVERY: Duration = Duration::from_secs(2);

/// A `jobs.json` older than this is a daemon that is gone (killed, or its host stopped).
const STALE_AFTER: Duration = Duration::from_secs(30);

/// Finished jobs kept for `GET /v1/jobs/{id}`.
pub const KEEP_FINISHED: usize = 100;

/// The running jobs of one process, and the last finished ones.
#[derive(Debug, Clone, Default)]
pub struct Jobs {
    running: Arc<Mutex<BTreeMap<u64, Entry>>>,
    finished: Arc<Mutex<VecDeque<JobView>>>,
    next: Arc<AtomicU64>,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Still running.
    Running,
    /// Ended with its result.
    Succeeded,
    /// Ended with an error.
    Failed,
    /// Ended without a result: cancelled (shutdown) or cut off.
    Interrupted,
}

#[derive(Debug)]
struct Entry {
    kind: &'static str,
    name: String,
    policy: String,
    started: DateTime<Utc>,
    t0: Instant,
    progress: Arc<Progress>,
}

/// One running job, as shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// Unique within the process.
    pub id: u64,
    /// `backup` or `drill`.
    pub kind: String,
    /// The policy (backup) or drill definition.
    pub name: String,
    /// The policy it backs up or restores.
    pub policy: String,
    pub state: JobState,
    pub started: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    /// What it made: the snapshot (backup) or report (drill) id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Why it failed (the typed error chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub elapsed_seconds: f64,
    /// Bytes so far, of the total when known, rate and ETA.
    #[serde(flatten)]
    pub progress: ProgressView,
}

/// Listed while alive; [`Running::finish`] (or dropping it: interrupted) ends the job.
#[must_use = "the job is listed only while this lives"]
pub struct Running {
    jobs: Jobs,
    id: u64,
    outcome: Option<Result<String, String>>,
    /// The job's counters, for the pipeline to update.
    pub progress: Arc<Progress>,
}

impl Running {
    /// The job's id (for `GET /v1/jobs/{id}`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Ends the job with what it made, or why it failed.
    pub fn finish(mut self, outcome: Result<String, String>) {
        self.outcome = Some(outcome);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(e) = lock(&self.jobs.running).remove(&self.id) else {
            return;
        };
        let mut v = e.view(self.id);
        v.finished = Some(Utc::now());
        (v.state, v.result, v.error) = match self.outcome.take() {
            Some(Ok(made)) => (JobState::Succeeded, Some(made), None),
            Some(Err(why)) => (JobState::Failed, None, Some(why)),
            None => (JobState::Interrupted, None, None),
        };
        let mut done = lock(&self.jobs.finished);
        if done.len() == KEEP_FINISHED {
            done.pop_front();
        }
        done.push_back(v);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Entry {
    fn view(&self, id: u64) -> JobView {
        let elapsed = self.t0.elapsed();
        JobView {
            id,
            kind: self.kind.to_owned(),
            name: self.name.clone(),
            policy: self.policy.clone(),
            state: JobState::Running,
            started: self.started,
            finished: None,
            result: None,
            error: None,
            elapsed_seconds: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
            progress: self.progress.view(elapsed),
        }
    }
}

impl Jobs {
    /// Lists a job of `kind` named `name` (for `policy`) until the returned guard drops.
    pub fn start(&self, kind: &'static str, name: &str, policy: &str) -> Running {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let progress = Arc::new(Progress::default());
        lock(&self.running).insert(
            id,
            Entry {
                kind,
                name: name.to_owned(),
                policy: policy.to_owned(),
                started: Utc::now(),
                t0: Instant::now(),
                progress: progress.clone(),
            },
        );
        Running {
            jobs: self.clone(),
            id,
            outcome: None,
            progress,
        }
    }

    /// The jobs running now, oldest first.
    pub fn list(&self) -> Vec<JobView> {
        lock(&self.running)
            .iter()
            .map(|(id, e)| e.view(*id))
            .collect()
    }

    /// Job `id`, running or among the last finished.
    pub fn get(&self, id: u64) -> Option<JobView> {
        if let Some(e) = lock(&self.running).get(&id) {
            return Some(e.view(id));
        }
        lock(&self.finished).iter().find(|v| v.id == id).cloned()
    }
}

/// `<state_dir>/jobs.json`: a daemon's running jobs as of `updated`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobsFile {
    /// The daemon's process id and host.
    pub pid: u32,
    pub host: String,
    pub updated: DateTime<Utc>,
    pub jobs: Vec<JobView>,
}

/// Where the daemon keeps it.
pub fn file(state_dir: &Path) -> PathBuf {
    state_dir.join("jobs.json")
}

/// Writes the running jobs (replacing the file whole: a reader never sees half of it).
///
/// # Errors
/// The state directory cannot be written.
pub fn write(state_dir: &Path, jobs: Vec<JobView>) -> std::io::Result<()> {
    let f = JobsFile {
        pid: std::process::id(),
        host: crate::host::name().unwrap_or_default(),
        updated: Utc::now(),
        jobs,
    };
    let path = file(state_dir);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&f).expect("serializes"))?;
    std::fs::rename(&tmp, &path)
}

/// The jobs of a daemon sharing this state directory: none when there is no file or it is
/// stale (the daemon removes it when it stops; one killed leaves it, believed for 30 s).
/// Not by process id: a container sharing the directory sees other process ids.
pub fn read(state_dir: &Path) -> Vec<JobView> {
    let Ok(bytes) = std::fs::read(file(state_dir)) else {
        return Vec::new();
    };
    let Ok(f) = serde_json::from_slice::<JobsFile>(&bytes) else {
        return Vec::new();
    };
    let fresh = (Utc::now() - f.updated)
        .to_std()
        .map_or(true, |age| age < STALE_AFTER);
    if fresh { f.jobs } else { Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_listed_while_it_runs_and_read_back_from_the_file() {
        let jobs = Jobs::default();
        let running = jobs.start("backup", "pg-main", "pg-main");
        running.progress.total.store(1000, Ordering::Relaxed);
        Progress::add(&running.progress.bytes, 250);
        let listed = jobs.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].kind.as_str(), listed[0].progress.percent),
            ("backup", Some(25.0))
        );
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), listed.clone()).unwrap();
        assert_eq!(read(dir.path()), listed);
        let id = running.id();
        running.finish(Ok("20261204T000000.000Z-00000000".to_owned()));
        assert!(jobs.list().is_empty());
        let done = jobs.get(id).expect("kept once finished");
        assert_eq!(done.state, JobState::Succeeded);
        assert!(done.finished.is_some() && done.result.is_some());
        drop(jobs.start("drill", "d", "pg-main"));
        assert_eq!(jobs.get(id + 1).unwrap().state, JobState::Interrupted);
        for _ in 0..KEEP_FINISHED {
            drop(jobs.start("backup", "x", "x"));
        }
        assert!(
            jobs.get(id).is_none(),
            "only the last {KEEP_FINISHED} are kept"
        );

        // A file left by a daemon that is gone is not believed.
        let mut f: JobsFile =
            serde_json::from_slice(&std::fs::read(file(dir.path())).unwrap()).unwrap();
        f.updated -= chrono::Duration::minutes(5);
        std::fs::write(file(dir.path()), serde_json::to_vec(&f).unwrap()).unwrap();
        assert!(read(dir.path()).is_empty());
    }
}
