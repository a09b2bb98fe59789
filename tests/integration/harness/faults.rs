//! A fault-injecting HTTP/1.1 proxy in front of a real S3 server (Garage): every Nth request
//! answered 503 without reaching the store, every Mth GET response cut halfway, every request
//! of one method failed with 500, PUTs stored but their answer lost, requests stalled past the
//! client's timeout, or everything while an outage flag is set. Nothing else is changed or
//! reordered.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What to inject.
#[derive(Clone, Copy, Debug)]
pub enum Faults {
    /// Every `fail_every`-th request gets 503 SlowDown; every `cut_every`-th GET response is
    /// cut after half its body.
    Flaky { fail_every: u64, cut_every: u64 },
    /// Every request with this method gets 500 InternalError.
    AlwaysFail(&'static str),
    /// Every `drop_put_every`-th PUT reaches the store, which keeps it, but the answer is lost
    /// (the connection is closed); every `stall_every`-th request waits `stall_ms` before it
    /// is forwarded (past the client's timeout).
    Lossy {
        drop_put_every: u64,
        stall_every: u64,
        stall_ms: u64,
    },
    /// While the flag is set, every request gets 503 (the store is down).
    Outage(&'static std::sync::atomic::AtomicBool),
}

/// Counters of what was injected.
#[derive(Default, Debug)]
pub struct Injected {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub cuts: AtomicU64,
    /// PUTs stored whose answer was dropped.
    pub dropped: AtomicU64,
    /// Requests held past the client's timeout.
    pub stalls: AtomicU64,
    /// Requests (request line + Range) whose last attempt was damaged: a flaky fault is
    /// transient, so the retry of the same request goes through.
    last_damaged: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Injected {
    /// Whether this request may be damaged now (not if its previous attempt was).
    fn may_damage(&self, signature: &str) -> bool {
        let mut set = self.last_damaged.lock().unwrap();
        if set.remove(signature) {
            false
        } else {
            set.insert(signature.to_owned());
            true
        }
    }
}

struct Head {
    lines: Vec<String>,
}

impl Head {
    fn read(r: &mut impl BufRead) -> std::io::Result<Option<Self>> {
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            if r.read_line(&mut l)? == 0 {
                return Ok(None);
            }
            let l = l.trim_end_matches(['\r', '\n']).to_owned();
            if l.is_empty() {
                return Ok(Some(Self { lines }));
            }
            lines.push(l);
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.lines.iter().skip(1).find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        })
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.lines.join("\r\n").into_bytes();
        out.extend_from_slice(b"\r\n\r\n");
        out
    }
}

/// Reads a message body: content-length, chunked, or nothing.
fn read_body(r: &mut impl BufRead, head: &Head, no_body: bool) -> std::io::Result<Vec<u8>> {
    if no_body {
        return Ok(Vec::new());
    }
    if head
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let mut raw = Vec::new();
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            raw.extend_from_slice(size.as_bytes());
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)?;
            raw.extend_from_slice(&chunk);
            if n == 0 {
                return Ok(raw);
            }
        }
    }
    let n: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)?;
    Ok(body)
}

fn error_response(status: &str, code: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Starts the proxy; returns its port and the injection counters.
pub fn start(upstream: u16, faults: Faults) -> (u16, Arc<Injected>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let injected = Arc::new(Injected::default());
    let inj = injected.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let inj = inj.clone();
            std::thread::spawn(move || {
                let _ = serve(client, upstream, faults, &inj);
            });
        }
    });
    (port, injected)
}

fn serve(client: TcpStream, upstream: u16, faults: Faults, inj: &Injected) -> std::io::Result<()> {
    let mut out = client.try_clone()?;
    let mut r = BufReader::new(client);
    while let Some(head) = Head::read(&mut r)? {
        let body = read_body(&mut r, &head, false)?;
        let n = inj.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let method = head.lines[0].split(' ').next().unwrap_or("").to_owned();
        let signature = format!("{} {}", head.lines[0], head.header("range").unwrap_or(""));
        match faults {
            Faults::AlwaysFail(m) if m == method => {
                inj.errors.fetch_add(1, Ordering::SeqCst);
                out.write_all(&error_response(
                    "500 Internal Server Error",
                    "InternalError",
                ))?;
                continue;
            }
            Faults::Outage(down) if down.load(Ordering::SeqCst) => {
                inj.errors.fetch_add(1, Ordering::SeqCst);
                out.write_all(&error_response(
                    "503 Service Unavailable",
                    "ServiceUnavailable",
                ))?;
                continue;
            }
            Faults::Flaky { fail_every, .. }
                if n % fail_every == 0 && inj.may_damage(&signature) =>
            {
                inj.errors.fetch_add(1, Ordering::SeqCst);
                out.write_all(&error_response("503 Service Unavailable", "SlowDown"))?;
                continue;
            }
            Faults::Lossy {
                stall_every,
                stall_ms,
                ..
            } if n % stall_every == 0 && inj.may_damage(&signature) => {
                inj.stalls.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(stall_ms));
            }
            _ => {}
        }
        let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
        up.write_all(&head.bytes())?;
        up.write_all(&body)?;
        let mut ur = BufReader::new(up);
        let rhead = Head::read(&mut ur)?.ok_or_else(|| std::io::Error::other("upstream closed"))?;
        let status: u16 = rhead.lines[0]
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let rbody = read_body(
            &mut ur,
            &rhead,
            method == "HEAD" || status == 204 || status == 304,
        )?;
        if let Faults::Lossy { drop_put_every, .. } = faults
            && method == "PUT"
            && status == 200
            && n % drop_put_every == 0
            && inj.may_damage(&signature)
        {
            inj.dropped.fetch_add(1, Ordering::SeqCst);
            let _ = out.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        if let Faults::Flaky { cut_every, .. } = faults
            && method == "GET"
            && rbody.len() > 1
            && n % cut_every == 0
            && inj.may_damage(&signature)
        {
            inj.cuts.fetch_add(1, Ordering::SeqCst);
            out.write_all(&rhead.bytes())?;
            out.write_all(&rbody[..rbody.len() / 2])?;
            let _ = out.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        out.write_all(&rhead.bytes())?;
        out.write_all(&rbody)?;
    }
    Ok(())
}
