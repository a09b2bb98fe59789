//! The API's HTTP/1.1 server: our own accept loop, so that nobody without a token can take the
//! API down (issue 15, item 7).
//!
//! * **Connection cap** (`api.max_connections`): every accepted connection takes a slot. At
//!   the cap, a new connection closes a connection that is not serving a request (still in
//!   the TLS handshake, still sending its request head, or idle between requests) and takes
//!   its slot: the oldest such connection *of the peer address holding the most slots*. Only
//!   when every slot is serving a request is the new connection closed at once. An attacker
//!   flooding from one address therefore only ever pushes out its own connections: a probe
//!   from another address (the kubelet, a load balancer, an auditor) keeps its slot however
//!   fast the flood runs and however late its task is scheduled on a busy host. Within one
//!   address it is oldest first, so a probe's `GET /healthz`, whose head arrives with its
//!   first packet, is normally served before later connections push it out. Refusing
//!   newcomers instead would hand the API to whoever holds the slots.
//! * **Header-read timeout** (`api.header_read_timeout`, default 10 s): the TLS handshake and
//!   each request head must complete within it, counted from the connection's start or from
//!   the end of the previous response, so it is also the keep-alive idle timeout (hyper
//!   starts its timer whenever it waits for a request head).
//! * HTTP/1.1 only (TLS offers only `http/1.1` by ALPN): the timeouts above are HTTP/1's.
//! * A listen backlog of [`BACKLOG`] so that a burst of connections does not drop the SYN
//!   of a probe while the loop catches up.
//!
//! Shutdown: the loop stops accepting, idle connections close, requests being served get
//! [`SHUTDOWN_GRACE`] to finish.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Pending connections the kernel queues for the accept loop (capped by `net.core.somaxconn`).
pub const BACKLOG: u32 = 4096;

/// How long requests being served may finish after the shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `api.tokens_file` cannot be used.
    #[error("api.tokens_file: {0}")]
    Tokens(String),
    /// Binding or listening failed.
    #[error("cannot listen on {addr}")]
    Listen {
        /// `api.listen`.
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A TLS file is unreadable.
    #[error("cannot read {}", path.display())]
    ReadTlsFile {
        /// `api.tls_cert_file` or `api.tls_key_file`.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A TLS file holds no usable PEM certificate or key.
    #[error("{}: {what}", path.display())]
    BadTlsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, e.g. "no PEM certificate".
        what: String,
    },
    /// rustls refused the certificate and key.
    #[error("the TLS certificate and key do not make a server configuration")]
    TlsConfig(#[source] rustls::Error),
}

/// How the server is run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `api.max_connections`.
    pub max_connections: usize,
    /// `api.header_read_timeout`.
    pub header_read_timeout: Duration,
}

/// One open connection's entry.
struct Slot {
    /// Cancelled to close the connection.
    close: CancellationToken,
    /// A request is being served (its head was read, its response is not finished).
    busy: Arc<AtomicBool>,
    /// The peer's address, for the fair share at the cap.
    ip: IpAddr,
}

#[derive(Default)]
struct Open {
    /// Ids grow with accept order, so the first entry is the oldest connection.
    slots: BTreeMap<u64, Slot>,
    /// Open connections per peer address.
    per_ip: HashMap<IpAddr, usize>,
    next_id: u64,
    /// Connections closed to make room, and refused, since the last warning.
    evicted: u64,
    refused: u64,
    last_warning: Option<Instant>,
}

/// The open connections, against the cap.
pub struct Connections {
    max: usize,
    open: Mutex<Open>,
}

/// A connection's place among the open ones; dropping it gives the slot back.
pub struct Admitted {
    connections: Arc<Connections>,
    id: u64,
    close: CancellationToken,
    busy: Arc<AtomicBool>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        // Already gone when the connection was closed to make room.
        self.connections
            .open
            .lock()
            .expect("connections lock")
            .remove(self.id);
    }
}

impl Open {
    fn remove(&mut self, id: u64) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&slot.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&slot.ip);
            }
        }
        Some(slot)
    }

    /// The connection to close for a newcomer: not serving a request, of the address holding
    /// the most slots, the oldest of those.
    fn to_evict(&self) -> Option<u64> {
        let mut best: Option<(usize, u64)> = None;
        for (id, s) in &self.slots {
            if s.busy.load(Ordering::Acquire) {
                continue;
            }
            let held = self.per_ip.get(&s.ip).copied().unwrap_or(0);
            // Ids ascend, so the first connection seen of an address is its oldest.
            if best.is_none_or(|(h, _)| held > h) {
                best = Some((held, *id));
            }
        }
        best.map(|(_, id)| id)
    }
}

/// How often the cap is reported in the log at most.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl Connections {
    /// At most `max` open connections.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::default(),
        })
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.open.lock().expect("connections lock").slots.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives a new connection from `ip` a slot. When all slots are taken it closes a
    /// connection that is not serving a request (see [`Open::to_evict`]); `None` (close the
    /// new one) when every open connection is serving a request.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut open = self.open.lock().expect("connections lock");
        if open.slots.len() >= self.max {
            let idle = open.to_evict();
            match idle.and_then(|id| open.remove(id)) {
                Some(oldest) => {
                    oldest.close.cancel();
                    open.evicted += 1;
                }
                None => open.refused += 1,
            }
            let now = Instant::now();
            if open
                .last_warning
                .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
            {
                tracing::warn!(
                    max_connections = self.max,
                    closed_idle = open.evicted,
                    refused = open.refused,
                    "The API is at its connection cap: closing the oldest idle connections (a connection flood, or raise api.max_connections)."
                );
                open.last_warning = Some(now);
                open.evicted = 0;
                open.refused = 0;
            }
            if open.slots.len() >= self.max {
                return None;
            }
        }
        let id = open.next_id;
        open.next_id += 1;
        let close = CancellationToken::new();
        let busy = Arc::new(AtomicBool::new(false));
        open.slots.insert(
            id,
            Slot {
                close: close.clone(),
                busy: busy.clone(),
                ip,
            },
        );
        *open.per_ip.entry(ip).or_default() += 1;
        Some(Admitted {
            connections: self.clone(),
            id,
            close,
            busy,
        })
    }
}

/// Marks a connection busy while a request is served: from its head being read until the
/// response body is sent (the guard travels in [`Guarded`]).
struct Busy(Arc<AtomicBool>);

impl Busy {
    fn enter(flag: &Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Release);
        Self(flag.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A response body holding its connection's [`Busy`] guard until hyper drops it (after the
/// last frame is written), so that a large response to a slow reader is not cut short by the
/// cap.
struct Guarded {
    inner: axum::body::Body,
    _busy: Busy,
}

impl hyper::body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Largest request head (and read buffer) per connection: our requests are a line and a few
/// headers, and 512 connections × hyper's default of ~400 KiB would be 200 MiB.
const MAX_BUF: usize = 64 * 1024;

/// Reads the certificate chain and key and makes the TLS acceptor (HTTP/1.1 by ALPN).
///
/// # Errors
/// Unreadable or malformed files, or a key that does not fit the certificate.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ServeError::ReadTlsFile {
            path: path.to_owned(),
            source,
        })
    };
    let bad = |path: &Path, what: &str| ServeError::BadTlsFile {
        path: path.to_owned(),
        what: what.to_owned(),
    };
    let certs = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad(cert, "not a PEM certificate chain"))?;
    if certs.is_empty() {
        return Err(bad(cert, "no PEM certificate"));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|_| bad(key, "no PEM private key (PKCS#8, PKCS#1 or SEC1)"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ServeError::TlsConfig)?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(ServeError::TlsConfig)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Binds `addr` with a [`BACKLOG`]-deep accept queue.
///
/// # Errors
/// The address is taken or not ours.
pub fn listen(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let err = |source| ServeError::Listen { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(BACKLOG).map_err(err)
}

/// Serves `app` on `listener` until `stop`, then lets requests being served finish for
/// [`SHUTDOWN_GRACE`].
///
/// # Cancel safety
/// Runs to the end of the grace period once `stop` is cancelled; dropping it earlier drops
/// the accept loop but not the connections already spawned.
pub async fn run(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let connections = Connections::new(limits.max_connections);
    let tracker = TaskTracker::new();
    // Cancelled at the end of the grace period: whatever still runs is dropped.
    let kill = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) or a connection reset before accept:
                // back off a little instead of spinning; connections closing free descriptors.
                tracing::warn!(error = %e, "Accepting an API connection failed.");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(admitted) = connections.admit(peer.ip()) else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (app, tls, stop, kill, limits) = (
            app.clone(),
            tls.clone(),
            stop.clone(),
            kill.clone(),
            limits.clone(),
        );
        tracker.spawn(async move {
            let close = admitted.close.clone();
            let busy = admitted.busy.clone();
            let serve = async {
                match tls {
                    None => connection(tcp, peer, app, &limits, busy, &stop).await,
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp));
                        match handshake.await {
                            Ok(Ok(io)) => connection(io, peer, app, &limits, busy, &stop).await,
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %peer, error = %e, "TLS handshake failed.");
                            }
                            Err(_) => {
                                tracing::debug!(peer = %peer, "TLS handshake timed out.");
                            }
                        }
                    }
                }
            };
            tokio::select! {
                () = serve => {}
                () = close.cancelled() => {
                    tracing::debug!(peer = %peer, "Closed an idle API connection to make room.");
                }
                () = kill.cancelled() => {}
            }
            drop(admitted);
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "API requests still running at the end of the shutdown grace period are dropped."
        );
        kill.cancel();
        tracker.wait().await;
    }
}

/// Serves one connection: HTTP/1.1 with the header-read timeout, the peer address for the
/// rate limiter, and the busy flag for the cap.
async fn connection<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    limits: &Limits,
    busy: Arc<AtomicBool>,
    stop: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let guard = Busy::enter(&busy);
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move {
            let r = tower_service::Service::call(&mut app, req)
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            Ok::<_, Infallible>(r.map(|inner| Guarded {
                inner,
                _busy: guard,
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stop.cancelled() => {
            // Finish the request being served, then close; an idle connection closes now.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Timeouts, resets and malformed requests: the client's business, not an error here.
        tracing::debug!(peer = %peer, error = %e, "API connection ended.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn at_the_cap_the_address_holding_most_slots_gives_one_up() {
        let c = Connections::new(4);
        let probe = c.admit(OTHER).unwrap();
        let flood: Vec<_> = (0..3).map(|_| c.admit(LOCAL).unwrap()).collect();
        // However many newcomers the flooding address sends, the older probe stays.
        let mut newer = Vec::new();
        for _ in 0..10 {
            newer.push(c.admit(LOCAL).unwrap());
            assert!(!probe.close.is_cancelled());
            assert_eq!(c.len(), 4);
        }
        assert!(flood.iter().all(|f| f.close.is_cancelled()));
        // A newcomer from a third address also takes a flood slot, the oldest of them.
        let third = c.admit(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))).unwrap();
        assert!(newer[7].close.is_cancelled());
        assert!(!newer[8].close.is_cancelled() && !probe.close.is_cancelled());
        // Counts follow the closes: two flood slots left, so one more probe address fits.
        drop(newer);
        assert_eq!(c.len(), 2);
        let per_ip = c.open.lock().unwrap().per_ip.clone();
        assert_eq!(per_ip.get(&LOCAL), None);
        assert_eq!(per_ip.len(), 2);
        drop((probe, third));
        assert!(c.is_empty() && c.open.lock().unwrap().per_ip.is_empty());
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let c = Connections::new(3);
        let a = c.admit(LOCAL).unwrap();
        let b = c.admit(LOCAL).unwrap();
        let d = c.admit(LOCAL).unwrap();
        assert_eq!(c.len(), 3);
        // `a` serves a request: `b` is the oldest idle one.
        let _busy = Busy::enter(&a.busy);
        let e = c.admit(LOCAL).unwrap();
        assert!(!a.close.is_cancelled());
        assert!(b.close.is_cancelled());
        assert!(!d.close.is_cancelled());
        assert_eq!(c.len(), 3);
        // The evicted connection's task ends later; its slot is already free.
        drop(b);
        assert_eq!(c.len(), 3);
        let _f = c.admit(LOCAL).unwrap();
        assert!(d.close.is_cancelled());
        drop(e);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn when_every_connection_serves_a_request_the_new_one_is_refused() {
        let c = Connections::new(2);
        let a = c.admit(LOCAL).unwrap();
        let b = c.admit(LOCAL).unwrap();
        let _x = Busy::enter(&a.busy);
        let y = Busy::enter(&b.busy);
        assert!(c.admit(LOCAL).is_none());
        assert_eq!(c.len(), 2);
        drop(y);
        assert!(c.admit(LOCAL).is_some());
        assert!(b.close.is_cancelled());
    }
}
