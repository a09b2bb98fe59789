//! Throwaway servers for drills. Each sandbox is a fresh directory and a free port on
//! 127.0.0.1; dropping the guard stops the server and removes the directory, so a sandbox is
//! torn down on success, failure, panic or cancellation alike. Production servers are never
//! contacted: a sandbox only knows its own directory and port.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::source::postgres::recovery::{self, StartOptions};

/// Why a sandbox server cannot be started safely.
#[derive(Debug, thiserror::Error)]
pub enum SandboxUserError {
    /// The configured OS user does not exist.
    #[error(
        "drills run as root start the sandbox server as `sandbox.run_as` = `{0}`, and there is no such OS user"
    )]
    NoUser(String),
    /// The configured OS user is root.
    #[error(
        "`sandbox.run_as` = `{0}` is root: the sandbox server runs restored data, which a compromised database host could have crafted, so it must not run as root"
    )]
    Root(String),
    /// The configured OS user can read a secret.
    #[error(
        "the sandbox server's OS user `{user}` can read {file}: a server running restored data (which a compromised database host could have crafted) must not be able to read dr's keys; make the file owned by dr's user with mode 0600, or choose another `sandbox.run_as`"
    )]
    CanRead {
        /// The user.
        user: String,
        /// The secret file.
        file: String,
    },
}

/// The OS user a sandbox server runs as: `run_as` when dr runs as root (refused when it is
/// root itself or can read any of [`crate::config::Config::restore_host_secrets`]), `None` when dr does not
/// run as root (the server runs as dr's own user then; see RUNBOOK "Drill host set-up").
///
/// # Errors
/// [`SandboxUserError`].
pub fn server_user(
    config: &crate::config::Config,
    run_as: &str,
) -> Result<Option<crate::host::User>, SandboxUserError> {
    if !crate::host::is_root() {
        tracing::warn!(
            "Drill sandbox servers run as dr's own OS user, which can read dr's keys; run drills as root with sandbox.run_as set to an unprivileged user to isolate them."
        );
        return Ok(None);
    }
    let user = crate::host::User::lookup(run_as)
        .ok_or_else(|| SandboxUserError::NoUser(run_as.to_owned()))?;
    if user.uid == 0 {
        return Err(SandboxUserError::Root(run_as.to_owned()));
    }
    for f in config.restore_host_secrets() {
        if std::fs::metadata(f).is_ok_and(|m| user.can_read(&m)) {
            return Err(SandboxUserError::CanRead {
                user: run_as.to_owned(),
                file: f.display().to_string(),
            });
        }
    }
    Ok(Some(user))
}

/// A sandbox directory (removed on drop, after the server in it is stopped).
pub struct Sandbox {
    dir: Option<tempfile::TempDir>,
    pg: Option<(PathBuf, StartOptions)>,
    redis: Vec<(u16, PathBuf)>,
    qdrant: Vec<(crate::source::qdrant::Client, String)>,
}

impl Sandbox {
    /// A new directory under `parent` (default: the system temp dir), traversable by the
    /// PostgreSQL OS user when dr runs as root.
    ///
    /// # Errors
    /// I/O.
    pub fn new(parent: Option<&Path>, name: &str) -> std::io::Result<Self> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        std::fs::create_dir_all(&parent)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("dr-drill-{name}-"))
            .tempdir_in(parent)?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
        Ok(Self {
            dir: Some(dir),
            pg: None,
            redis: Vec::new(),
            qdrant: Vec::new(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("present until drop").path()
    }

    /// Records a PostgreSQL server to stop on drop.
    pub fn own_postgres(&mut self, data_dir: PathBuf, o: StartOptions) {
        self.pg = Some((data_dir, o));
    }

    /// The PostgreSQL server started here, if any: its data directory and how it runs.
    pub fn postgres(&self) -> Option<&(PathBuf, StartOptions)> {
        self.pg.as_ref()
    }

    /// The ports of the redis-servers started here.
    pub fn redis_ports(&self) -> Vec<u16> {
        self.redis.iter().map(|(p, _)| *p).collect()
    }

    /// Records a redis-server (port, its directory) to stop on drop.
    pub fn own_redis(&mut self, port: u16, dir: PathBuf) {
        self.redis.push((port, dir));
    }

    /// Records a scratch Qdrant collection to drop.
    pub fn own_qdrant_collection(&mut self, client: crate::source::qdrant::Client, name: String) {
        self.qdrant.push((client, name));
    }

    /// Drops the scratch Qdrant collections now (also done on drop).
    pub async fn drop_qdrant_collections(&mut self) {
        for (client, name) in self.qdrant.drain(..) {
            if let Err(e) = client.delete_collection(&name).await {
                tracing::warn!(collection = %name, error = %e, "Could not drop a drill's scratch collection.");
            }
        }
    }

    /// A free TCP port on 127.0.0.1.
    ///
    /// # Errors
    /// When none can be bound.
    pub fn free_port() -> std::io::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.qdrant.is_empty() {
            // Dropped on cancellation, possibly inside the runtime: use a thread of our own.
            let mut pending = std::mem::take(&mut self.qdrant);
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(async {
                        for (client, name) in pending.drain(..) {
                            let _ = client.delete_collection(&name).await;
                        }
                    });
                }
            })
            .join();
        }
        if let Some((dir, o)) = self.pg.take() {
            recovery::stop(&dir, &o);
        }
        for (port, dir) in std::mem::take(&mut self.redis) {
            // The pid file is in the sandbox; SIGKILL is fine: nothing there is worth saving.
            let pid_file = dir.join("redis.pid");
            let stopped = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "shutdown", "nosave"])
                .output()
                .is_ok_and(|o| o.status.success());
            if !stopped && let Ok(pid) = std::fs::read_to_string(&pid_file) {
                let _ = Command::new("kill").args(["-9", pid.trim()]).output();
            }
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                tracing::warn!(dir = %path.display(), error = %e, "Could not remove a drill sandbox.");
            }
        }
    }
}
