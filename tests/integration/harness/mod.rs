//! Test harness: real servers as child processes on 127.0.0.1 with free ports and temp dirs,
//! and a runner for the built `dr` binary.
//!
//! Servers are started through a small shell watchdog that kills them when the test process
//! exits, so shared servers (kept in `OnceLock`s) never outlive the test binary. A missing
//! binary fails the test with the package to install; nothing is skipped silently.

pub mod browser;
pub mod dr;
pub mod faults;
pub mod forge;
pub mod garage;
pub mod http;
pub mod moto;
pub mod postgres;
pub mod redis;
pub mod tree;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The name of the user the tests run as (`id -un`), as dr's audit log and reports name it.
pub fn os_user_name() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Finds a binary: `$env_var`, then PATH, then extra places; panics naming what to install.
pub fn find_bin(name: &str, env_var: &str, extra: &[PathBuf], install: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env_var) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(extra.iter().cloned()) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` not found: {install}, or set {env_var} to its path");
}

/// Home-relative path.
pub fn home(rel: &str) -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(rel)
}

/// A server process that dies with the test binary.
pub struct Server {
    child: Child,
    pub log: PathBuf,
}

impl Server {
    /// Starts `cmd` under a watchdog that kills it when this process exits.
    pub fn spawn(cmd: &[&str], log: &Path) -> Self {
        let quoted: Vec<String> = cmd
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        let script = format!(
            "{} > '{}' 2>&1 & pid=$!; trap 'kill $pid 2>/dev/null' TERM EXIT; while kill -0 {} 2>/dev/null && kill -0 $pid 2>/dev/null; do sleep 0.5; done; kill $pid 2>/dev/null; wait $pid",
            quoted.join(" "),
            log.display(),
            std::process::id()
        );
        let child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .spawn()
            .expect("bash");
        Self {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Stops the server: SIGTERM to the watchdog, whose trap stops the server, then waits.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .arg(self.child.id().to_string())
                .status();
            let _ = self.child.wait();
        }
    }

    /// Polls `f` until it is true; on timeout panics with the server's log tail.
    pub fn wait_ready(&self, what: &str, timeout: Duration, f: impl FnMut() -> bool) {
        assert!(
            poll(timeout, f),
            "timed out waiting for {what}; its log ends:\n{}",
            self.log_tail()
        );
    }

    /// The server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    assert!(poll(timeout, f), "timed out waiting for {what}");
}

/// Polls `f` every 100 ms until it is true (returns true) or `timeout` passes (false).
fn poll(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// A multi-threaded runtime for harness setup code.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// S3 endpoint details of a test store.
#[derive(Clone, Debug)]
pub struct S3Endpoint {
    pub endpoint: String,
    pub region: String,
    pub key_id: String,
    pub secret: String,
}

impl S3Endpoint {
    /// A raw SDK client (for bucket setup and for tests that inspect objects).
    pub fn client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                &self.key_id,
                &self.secret,
                None,
                None,
                "test",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Creates a fresh bucket with a unique name.
    pub fn bucket(&self, prefix: &str, object_lock: bool) -> String {
        let name = format!("{prefix}-{}", hex::encode(rand::random::<[u8; 5]>()));
        let c = self.client();
        rt().block_on(async {
            let mut req = c.create_bucket().bucket(&name);
            if object_lock {
                req = req.object_lock_enabled_for_bucket(true);
            }
            req.send().await.unwrap_or_else(|e| {
                panic!(
                    "creating bucket {name} at {}: {}",
                    self.endpoint,
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
        });
        name
    }

    /// A dr.toml `[storage.NAME]` section for a bucket; credentials come from env vars
    /// `<NAME>_KEY` and `<NAME>_SECRET` (see [`S3Endpoint::env`]).
    pub fn storage_toml(&self, name: &str, bucket: &str) -> String {
        let up = name.to_uppercase().replace('-', "_");
        format!(
            "\n[storage.{name}]\ntype = \"s3\"\nbucket = \"{bucket}\"\nregion = \"{}\"\nendpoint = \"{}\"\nprefix = \"dr/\"\naccess_key_id_env = \"DR_TEST_{up}_KEY\"\nsecret_access_key_env = \"DR_TEST_{up}_SECRET\"\ntimeout = \"20s\"\nmax_attempts = 3\n",
            self.region, self.endpoint
        )
    }

    /// The env vars `storage_toml` refers to.
    pub fn env(&self, name: &str) -> Vec<(String, String)> {
        let up = name.to_uppercase().replace('-', "_");
        vec![
            (format!("DR_TEST_{up}_KEY"), self.key_id.clone()),
            (format!("DR_TEST_{up}_SECRET"), self.secret.clone()),
        ]
    }

    /// Credentials as 0600 files (library tests cannot set env vars: no `unsafe` anywhere).
    fn credential_files(&self) -> ::dr::config::CredentialSource {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("dr-test-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tag = hex::encode(rand::random::<[u8; 4]>());
        let (a, b) = (
            dir.join(format!("{tag}-key")),
            dir.join(format!("{tag}-secret")),
        );
        std::fs::write(&a, &self.key_id).unwrap();
        std::fs::write(&b, &self.secret).unwrap();
        std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o600)).unwrap();
        ::dr::config::CredentialSource::Files {
            access_key_id: a,
            secret_access_key: b,
        }
    }

    /// A validated storage target for library-level tests.
    pub fn target(&self, bucket: &str) -> ::dr::config::StorageTarget {
        ::dr::config::StorageTarget::S3(::dr::config::S3Target {
            bucket: bucket.to_owned(),
            region: self.region.clone(),
            endpoint: Some(self.endpoint.clone()),
            prefix: "t/".to_owned(),
            path_style: true,
            credentials: self.credential_files(),
            timeout: Duration::from_secs(20),
            max_attempts: 3,
            lock: None,
        })
    }
}
