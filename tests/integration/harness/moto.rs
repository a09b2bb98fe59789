//! moto_server (PyPI `moto[server]`): S3 with versioning, Object Lock, storage classes and
//! conditional writes, in memory.

use std::sync::OnceLock;
use std::time::Duration;

use super::{S3Endpoint, Server, find_bin, free_port, home, wait_until};

/// One moto server.
pub struct Moto {
    pub s3: S3Endpoint,
    _server: Server,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts moto on a free port.
    pub fn start() -> Self {
        let bin = find_bin(
            "moto_server",
            "DR_TEST_MOTO_BIN",
            &[
                home(".local/bin"),
                home("svc/pyenv/bin"),
                home(".pyenv/shims"),
            ],
            "install it with `pip install 'moto[server]'`",
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let server = Server::spawn(
            &[
                bin.to_str().unwrap(),
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ],
            &dir.path().join("moto.log"),
        );
        wait_until("moto port", Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            s3: S3Endpoint {
                endpoint: format!("http://127.0.0.1:{port}"),
                region: "us-east-1".into(),
                key_id: "testing".into(),
                secret: "testing".into(),
            },
            _server: server,
            _dir: dir,
        }
    }
}

/// The moto server shared by tests in this binary.
pub fn shared() -> &'static Moto {
    static M: OnceLock<Moto> = OnceLock::new();
    M.get_or_init(Moto::start)
}
