//! Garage (S3) started from its real binary: `cargo install garage --version 2.5.0 --locked`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::{S3Endpoint, Server, find_bin, free_port, home, wait_until};

const KEY_ID: &str = "GK0123456789abcdef01234567";
const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// One Garage node.
pub struct Garage {
    pub s3: S3Endpoint,
    pub server: Server,
    bin: PathBuf,
    config: PathBuf,
    dir: tempfile::TempDir,
}

impl Garage {
    /// Starts a single-node Garage with its own ports and data dir.
    pub fn start(region: &str) -> Self {
        let bin = find_bin(
            "garage",
            "DR_TEST_GARAGE_BIN",
            &[home(".cargo/bin")],
            "install it with `cargo install garage --version 2.5.0 --locked`",
        );
        let dir = tempfile::tempdir().unwrap();
        let (s3, rpc, admin) = (free_port(), free_port(), free_port());
        let d = dir.path();
        let config = d.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{m}\"\ndata_dir = \"{dd}\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\nconsistency_mode = \"consistent\"\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\n[s3_api]\ns3_region = \"{region}\"\napi_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.garage.localhost\"\n\n[admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\nadmin_token = \"test-admin\"\n",
                m = d.join("meta").display(),
                dd = d.join("data").display(),
                secret = hex::encode(rand::random::<[u8; 32]>()),
            ),
        )
        .unwrap();
        let server = Server::spawn(
            &[
                bin.to_str().unwrap(),
                "-c",
                config.to_str().unwrap(),
                "server",
            ],
            &d.join("garage.log"),
        );
        let g = Self {
            s3: S3Endpoint {
                endpoint: format!("http://127.0.0.1:{s3}"),
                region: region.to_owned(),
                key_id: KEY_ID.to_owned(),
                secret: SECRET.to_owned(),
            },
            server,
            bin,
            config,
            dir,
        };
        wait_until("garage status", Duration::from_secs(30), || {
            g.cli(&["status"]).is_ok()
        });
        let node = g.cli(&["node", "id", "-q"]).unwrap();
        let node = node.trim().split('@').next().unwrap().to_owned();
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])
            .unwrap();
        g.cli(&["layout", "apply", "--version", "1"]).unwrap();
        g.cli(&["key", "import", "--yes", "-n", "dr-test", KEY_ID, SECRET])
            .unwrap();
        g.cli(&["key", "allow", "--create-bucket", KEY_ID]).unwrap();
        wait_until("garage S3 port", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", s3)).is_ok()
        });
        g
    }

    /// Stops the node (its data stays).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Starts the stopped node again on the same ports and data.
    pub fn restart(&mut self) {
        self.server = Server::spawn(
            &[
                self.bin.to_str().unwrap(),
                "-c",
                self.config.to_str().unwrap(),
                "server",
            ],
            &self.dir.path().join("garage.log"),
        );
        let port: u16 = self
            .s3
            .endpoint
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        wait_until("garage status", Duration::from_secs(30), || {
            self.cli(&["status"]).is_ok()
        });
        wait_until("garage S3 port", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "garage {args:?}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.server.log_tail()
            ))
        }
    }

    /// A bucket the test key owns.
    pub fn bucket(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", hex::encode(rand::random::<[u8; 5]>()));
        self.cli(&["bucket", "create", &name]).unwrap();
        self.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", &name, "--key", KEY_ID,
        ])
        .unwrap();
        name
    }
}

/// The Garage shared by tests in this binary (each test uses its own bucket).
pub fn shared() -> &'static Garage {
    static G: OnceLock<Garage> = OnceLock::new();
    G.get_or_init(|| Garage::start("garage"))
}
