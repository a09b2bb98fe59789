//! The jobs a daemon is running now (backups, drills) and where each stands: served as
//! `GET /v1/jobs`, and written every few seconds to `<state_dir>/jobs.json`, which `dr info`
//! on the same host (or a container sharing the state directory) reads.

use std::collections::BTreeMap;
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

/// The running jobs of one process.
#[derive(Debug, Clone, Default)]
pub struct Jobs {
    running: Arc<Mutex<BTreeMap<u64, Entry>>>,
    next: Arc<AtomicU64>,
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
    pub started: DateTime<Utc>,
    pub elapsed_seconds: f64,
    /// Bytes so far, of the total when known, rate and ETA.
    #[serde(flatten)]
    pub progress: ProgressView,
}

/// Listed while alive; dropping it ends the job.
#[must_use = "the job is listed only while this lives"]
pub struct Running {
    jobs: Jobs,
    id: u64,
    /// The job's counters, for the pipeline to update.
    pub progress: Arc<Progress>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.jobs.lock().remove(&self.id);
    }
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lists a job of `kind` named `name` (for `policy`) until the returned guard drops.
    pub fn start(&self, kind: &'static str, name: &str, policy: &str) -> Running {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let progress = Arc::new(Progress::default());
        self.lock().insert(
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
            progress,
        }
    }

    /// The jobs running now, oldest first.
    pub fn list(&self) -> Vec<JobView> {
        self.lock()
            .iter()
            .map(|(id, e)| {
                let elapsed = e.t0.elapsed();
                JobView {
                    id: *id,
                    kind: e.kind.to_owned(),
                    name: e.name.clone(),
                    policy: e.policy.clone(),
                    started: e.started,
                    elapsed_seconds: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
                    progress: e.progress.view(elapsed),
                }
            })
            .collect()
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
        drop(running);
        assert!(jobs.list().is_empty());

        // A file left by a daemon that is gone is not believed.
        let mut f: JobsFile =
            serde_json::from_slice(&std::fs::read(file(dir.path())).unwrap()).unwrap();
        f.updated -= chrono::Duration::minutes(5);
        std::fs::write(file(dir.path()), serde_json::to_vec(&f).unwrap()).unwrap();
        assert!(read(dir.path()).is_empty());
    }
}
