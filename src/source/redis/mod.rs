//! The `redis` source: the RDB snapshot streamed over the replication protocol
//! (`REPLCONF capa eof`, `REPLCONF rdb-only 1`, `SYNC`), verified while it streams (see
//! [`rdb`]), with no temporary file and no fork on our side. When the server refuses SYNC
//! (managed services often do) and `rdb_path` is configured, it falls back to `BGSAVE` and
//! reads the `dump.rdb` the server writes.
//!
//! **Cluster mode** (`INFO cluster` says `cluster_enabled:1`): every master is streamed the
//! same way, one artifact `shards/slots-<first slot>.rdb` each, and the slot map (which master
//! held which ranges, and its key count) goes into the manifest. Each master's stream is opened
//! only when the pipeline starts reading it, so no replication connection idles in a queue.

mod cluster;
mod facts;
pub mod rdb;
pub mod server;

pub use cluster::{Shard, layout_difference, live_layout};
pub use facts::{RedisFacts, ShardFacts};

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::{SnapshotCx, SnapshotReport, SourceError};
use crate::config::RedisSpec;
use rdb::{Framing, RdbStream};

/// How long the replication connection may stay silent.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// A Redis server to back up.
pub struct RedisSource {
    spec: RedisSpec,
}

/// Keys per database from `INFO keyspace` (`db0:keys=12,expires=3,avg_ttl=0`).
pub fn parse_keyspace(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let (db, rest) = l.trim().split_once(':')?;
            let keys = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("keys="))?
                .parse()
                .ok()?;
            db.starts_with("db").then(|| (db.to_owned(), keys))
        })
        .collect()
}

/// `field:value` from an INFO section.
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.trim()
            .strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
    })
}

fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl RedisSource {
    /// A source for `spec`.
    pub fn new(spec: RedisSpec) -> Self {
        Self { spec }
    }

    fn password(&self) -> Result<Option<String>, SourceError> {
        self.spec
            .password
            .as_ref()
            .map(|p| p.read().map_err(SourceError::secret("the Redis password")))
            .transpose()
    }

    fn target(&self) -> String {
        let scheme = if self.spec.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{}:{}", self.spec.host, self.spec.port)
    }

    /// The CA bundle for `rediss://`, when one is configured.
    fn ca_pem(&self) -> Result<Option<Vec<u8>>, SourceError> {
        match &self.spec.tls {
            Some(Some(f)) => std::fs::read(f).map(Some).map_err(|e| SourceError::Read {
                path: f.display().to_string(),
                source: e,
            }),
            _ => Ok(None),
        }
    }

    /// A rustls client configuration trusting the configured CA or the public web roots.
    fn tls_config(&self) -> std::io::Result<std::sync::Arc<rustls::ClientConfig>> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let pem = self
            .ca_pem()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        match pem {
            Some(pem) => {
                for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                    roots
                        .add(cert.map_err(|e| std::io::Error::other(format!("tls_ca_file: {e}")))?)
                        .map_err(|e| std::io::Error::other(format!("tls_ca_file: {e}")))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(std::sync::Arc::new(config))
    }

    /// A command connection (the `redis` crate).
    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, SourceError> {
        let info = redis::ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp(self.spec.host.clone(), self.spec.port),
            redis: redis::RedisConnectionInfo {
                db: 0,
                username: self.spec.username.clone(),
                password: self.password()?,
                ..Default::default()
            },
        };
        let client = match &self.spec.tls {
            None => redis::Client::open(info),
            Some(_) => redis::Client::build_with_tls(
                redis::ConnectionInfo {
                    addr: redis::ConnectionAddr::TcpTls {
                        host: self.spec.host.clone(),
                        port: self.spec.port,
                        insecure: false,
                        tls_params: None,
                    },
                    ..info
                },
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: self.ca_pem()?,
                },
            ),
        }
        .map_err(|e| self.connect_err(e))?;
        tokio::time::timeout(
            Duration::from_secs(10),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| self.connect_err("timed out"))?
        .map_err(|e| self.connect_err(e))
    }

    fn connect_err(&self, e: impl std::fmt::Display) -> SourceError {
        SourceError::Connect {
            target: self.target(),
            detail: e.to_string(),
        }
    }

    pub(crate) async fn check(&self) -> Result<(), SourceError> {
        let mut c = self.connection().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut c)
            .await
            .map_err(|e| SourceError::request("PING", e))?;
        Ok(())
    }

    /// Opens a replication stream positioned at the RDB payload.
    fn open_sync(
        &self,
        password: Option<&str>,
    ) -> std::io::Result<(BufReader<Box<dyn Conn>>, Framing)> {
        let tcp = TcpStream::connect((self.spec.host.as_str(), self.spec.port))?;
        tcp.set_read_timeout(Some(READ_TIMEOUT))?;
        let stream: Box<dyn Conn> = match &self.spec.tls {
            None => Box::new(tcp),
            Some(_) => {
                let name = rustls::pki_types::ServerName::try_from(self.spec.host.clone())
                    .map_err(std::io::Error::other)?;
                let conn = rustls::ClientConnection::new(self.tls_config()?, name)
                    .map_err(std::io::Error::other)?;
                Box::new(rustls::StreamOwned::new(conn, tcp))
            }
        };
        let mut r = BufReader::with_capacity(1 << 20, stream);
        let mut call = |args: &[&[u8]], must_succeed: bool| -> std::io::Result<()> {
            r.get_mut().write_all(&resp(args))?;
            let mut line = String::new();
            r.read_line(&mut line)?;
            if line.starts_with('-') && must_succeed {
                let msg = line.trim_end().trim_start_matches('-').to_owned();
                let kind = if msg.starts_with("WRONGPASS")
                    || msg.starts_with("NOAUTH")
                    || msg.starts_with("NOPERM")
                {
                    std::io::ErrorKind::PermissionDenied
                } else {
                    std::io::ErrorKind::Other
                };
                return Err(std::io::Error::new(kind, msg));
            }
            Ok(())
        };
        if let Some(p) = password {
            match &self.spec.username {
                Some(u) => call(&[b"AUTH", u.as_bytes(), p.as_bytes()], true)?,
                None => call(&[b"AUTH", p.as_bytes()], true)?,
            }
        }
        call(&[b"REPLCONF", b"capa", b"eof"], true)?;
        // Redis < 7 does not know rdb-only; it then also streams commands, which we ignore.
        call(&[b"REPLCONF", b"rdb-only", b"1"], false)?;
        r.get_mut().write_all(&resp(&[b"SYNC"]))?;
        let framing = rdb::read_preamble(&mut r)?;
        Ok((r, framing))
    }

    /// One artifact `dump.rdb` streamed over SYNC (BGSAVE as the fallback), verified as it
    /// streams; a cluster's masters one artifact each ([`cluster`]).
    pub(crate) async fn snapshot(self, cx: SnapshotCx) -> Result<SnapshotReport, SourceError> {
        let mut con = self.connection().await?;
        if let Some(shards) = self.cluster_masters(&mut con).await? {
            let server: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut con)
                .await
                .map_err(|e| SourceError::request("INFO server", e))?;
            let version = info_field(&server, "redis_version")
                .unwrap_or("?")
                .to_owned();
            return self.snapshot_cluster(cx, shards, version).await;
        }
        let server: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut con)
            .await
            .map_err(|e| SourceError::request("INFO server", e))?;
        let keyspace: String = redis::cmd("INFO")
            .arg("keyspace")
            .query_async(&mut con)
            .await
            .map_err(|e| SourceError::request("INFO keyspace", e))?;
        let keys = parse_keyspace(&keyspace);
        let version = info_field(&server, "redis_version")
            .unwrap_or("?")
            .to_owned();
        let password = self.password()?;

        let sync = {
            let this = RedisSource {
                spec: self.spec.clone(),
            };
            tokio::task::spawn_blocking(move || this.open_sync(password.as_deref()))
                .await
                .map_err(|_| SourceError::Panicked("SYNC task"))?
        };
        let (body, method, len): (Box<dyn std::io::Read + Send>, &str, _) = match sync {
            Ok((r, framing)) => {
                let (method, len) = match framing {
                    Framing::Length(n) => ("sync (length-framed)", Some(n)),
                    Framing::EofMark(_) => ("sync (diskless, EOF mark)", None),
                };
                (Box::new(RdbStream::new(r, framing)), method, len)
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::PermissionDenied
                    && e.to_string().starts_with("WRONGPASS") =>
            {
                return Err(SourceError::Auth {
                    target: self.target(),
                });
            }
            Err(e) => match &self.spec.rdb_path {
                Some(path) => {
                    tracing::warn!(error = %e, "SYNC was refused; falling back to BGSAVE.");
                    let body = self.bgsave(&mut con, path).await?;
                    let len = std::fs::metadata(path).ok().map(|m| m.len());
                    (Box::new(body), "bgsave", len)
                }
                None => {
                    return Err(SourceError::request(
                        format!("SYNC on {}", self.target()),
                        format!(
                            "{e} (and no source.rdb_path is configured for the BGSAVE fallback)"
                        ),
                    ));
                }
            },
        };
        cx.send_stream(b"dump.rdb".to_vec(), body, len).await?;
        let total: u64 = keys.values().sum();
        Ok(RedisFacts {
            redis_version: version,
            keyspace: Some(keys),
            keys_total: total,
            method: method.to_owned(),
            server: self.target(),
            cluster: None,
        }
        .report())
    }

    /// `BGSAVE`, wait for it to finish, then stream the file it wrote (still verified).
    async fn bgsave(
        &self,
        con: &mut redis::aio::MultiplexedConnection,
        path: &std::path::Path,
    ) -> Result<RdbStream<BufReader<std::fs::File>>, SourceError> {
        let before: i64 = redis::cmd("LASTSAVE")
            .query_async(con)
            .await
            .map_err(|e| SourceError::request("LASTSAVE", e))?;
        let _: String = redis::cmd("BGSAVE")
            .query_async(con)
            .await
            .map_err(|e| SourceError::request("BGSAVE", e))?;
        let t0 = std::time::Instant::now();
        loop {
            let info: String = redis::cmd("INFO")
                .arg("persistence")
                .query_async(con)
                .await
                .map_err(|e| SourceError::request("INFO persistence", e))?;
            let busy = info_field(&info, "rdb_bgsave_in_progress") == Some("1");
            let last: i64 = redis::cmd("LASTSAVE")
                .query_async(con)
                .await
                .map_err(|e| SourceError::request("LASTSAVE", e))?;
            if !busy && last > before {
                if info_field(&info, "rdb_last_bgsave_status") != Some("ok") {
                    return Err(SourceError::request(
                        "BGSAVE",
                        "it failed on the server (rdb_last_bgsave_status is not ok; see its log)",
                    ));
                }
                break;
            }
            if t0.elapsed() > READ_TIMEOUT {
                return Err(SourceError::TimedOut(format!(
                    "BGSAVE did not finish within {READ_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let f = std::fs::File::open(path).map_err(|e| SourceError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        let len = f
            .metadata()
            .map_err(|e| SourceError::Read {
                path: path.display().to_string(),
                source: e,
            })?
            .len();
        Ok(RdbStream::new(BufReader::new(f), Framing::Length(len)))
    }
}

/// A replication connection: plain TCP or TLS.
trait Conn: std::io::Read + Write + Send {}
impl<T: std::io::Read + Write + Send> Conn for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_and_info_fields() {
        let ks = parse_keyspace(
            "# Keyspace\r\ndb0:keys=100,expires=3,avg_ttl=10\r\ndb3:keys=7,expires=0,avg_ttl=0\r\n",
        );
        assert_eq!(ks.get("db0"), Some(&100));
        assert_eq!(ks.get("db3"), Some(&7));
        assert_eq!(
            info_field("# Server\r\nredis_version:7.0.15\r\n", "redis_version"),
            Some("7.0.15")
        );
    }
}
