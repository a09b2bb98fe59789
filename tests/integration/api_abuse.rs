//! Issue 15, items 6, 7 and part of 11, against the real `dr daemon`: what an attacker without
//! a token, or with write access to the bucket but not the signing key, could do before.
//!
//! * A drill report signed by an unknown key (made with `dr`'s own signing code and stored
//!   where drills store theirs) is not a pass anywhere: `dr drill list`, `dr drill show`,
//!   `/v1/drills`, `/v1/reports/{id}`, the HTML page, `/v1/status`, `/metrics`.
//! * Anonymous requests do not make an operator's token or `/healthz` answer 429.
//! * Half-open connections: one that never finishes its request head is closed after
//!   `api.header_read_timeout`, as is an idle keep-alive connection; 10,000 of them (against a
//!   daemon whose descriptor limit is 2,048) leave `/healthz` answering.
//! * `?region=../../etc` is a 400 with a code, not a 500.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::{Daemon, Setup, setup, wait_until};
use crate::harness::dr::bin;
use crate::harness::http::{gauge, request};

fn wait_for_api(s: &Setup) {
    wait_until("the API", Duration::from_secs(30), || {
        request(s.port, "GET", "/healthz", None).is_some_and(|r| r.status == 200)
    });
}

/// Issue 15, item 6: a report signed by a key nobody trusts claimed a pass everywhere but
/// `verify-report`.
#[test]
fn r15_forged_drill_reports_never_count_as_passes() {
    use dr::drill::report;

    let s = setup(1, "0 0 0 1 1 *");
    s.env.ok(&["backup", "--policy", "app"]);
    s.env.ok(&["replicate"]);
    let genuine = s.env.json(&["drill", "run", "app-drill"]);
    assert_eq!(genuine["verdict"], "pass", "{genuine:#}");
    let genuine_id = genuine["id"].as_str().unwrap().to_owned();

    // The forger copies the genuine report, makes it newer and better, and signs it with a key
    // of their own, as `dr` signs: a valid signature, by an unknown key.
    let dir = s.env.setup().join("repo/drills/app-drill");
    let stored = std::fs::read(dir.join(format!("{genuine_id}.json"))).unwrap();
    let mut forged = report::open("genuine", &stored).unwrap().report;
    forged.id = format!("2999{}", &genuine_id[4..]);
    forged.rto.seconds = Some(0.5);
    let (secret, forger_public) = report::generate_signing_key();
    let key = {
        let mut b = [0u8; 32];
        hex::decode_to_slice(&secret, &mut b).unwrap();
        ed25519_dalek::SigningKey::from_bytes(&b)
    };
    let bytes = report::sign(&forged, &key);
    assert!(report::open("forged", &bytes).unwrap().signature_valid);
    let forged_path = dir.join(format!("{}.json", forged.id));
    std::fs::write(&forged_path, &bytes).unwrap();
    // And a genuine report altered after signing (a valid key, a broken signature).
    let mut tampered = report::open("genuine", &stored).unwrap().report;
    tampered.id = format!("2998{}", &genuine_id[4..]);
    let tampered_bytes = String::from_utf8(report::sign(
        &tampered,
        &report::load_signing_key(&s.env.setup().join("keys/drill-signing.key")).unwrap(),
    ))
    .unwrap()
    .replace("\"bytes_restored\": ", "\"bytes_restored\": 1");
    std::fs::write(
        dir.join(format!("{}.json", tampered.id)),
        tampered_bytes.as_bytes(),
    )
    .unwrap();

    // `dr drill list`: the newest report is untrusted, not a pass; figures from the genuine one.
    let list = s.env.json(&["drill", "list"]);
    let row = &list[0];
    assert_eq!(row["last_report"], forged.id.as_str(), "{list:#}");
    assert_eq!(row["last_verdict"], "untrusted", "{list:#}");
    assert_eq!(row["last_trusted"], false);
    assert_eq!(row["last_pass"], genuine_id.as_str());
    assert_eq!(row["untrusted_reports"], 2);
    assert_ne!(row["last_rto_seconds"], 0.5);
    let text = s.env.ok(&["drill", "list"]);
    assert!(
        text.contains("last UNTRUSTED") && !text.contains("last pass"),
        "{text}"
    );

    // `dr drill show latest`: UNTRUSTED on the first line, PASS nowhere.
    let text = s.env.ok(&["drill", "show", "latest"]);
    let first = text.lines().next().unwrap();
    assert!(first.ends_with(": UNTRUSTED"), "{text}");
    assert!(
        text.lines().nth(1).unwrap().contains("NOT EVIDENCE"),
        "{text}"
    );
    assert!(!text.contains(": PASS"), "{text}");
    let shown = s.env.json(&["drill", "show", "latest"]);
    assert_eq!(shown["verdict"], "untrusted");
    assert_eq!(shown["trusted"], false);
    assert_eq!(shown["signature_valid"], true);
    assert_eq!(shown["trusted_signer"], false);
    assert_eq!(shown["signer"], forger_public.as_str());
    assert_eq!(shown["report"]["verdict"], "untrusted");
    assert_eq!(shown["claimed_verdict"], "pass");
    let tampered_shown = s.env.json(&["drill", "show", &tampered.id]);
    assert_eq!(tampered_shown["verdict"], "untrusted");
    assert_eq!(tampered_shown["signature_valid"], false);
    assert_eq!(tampered_shown["trusted_signer"], true);
    let html = s.env.ok(&["drill", "show", "latest", "--html"]);
    assert!(
        html.contains("UNTRUSTED") && !html.contains("PASSED"),
        "{html}"
    );
    // verify-report refused it before and still does.
    let raw = s.env.path("forged.signed");
    std::fs::copy(&forged_path, &raw).unwrap();
    s.env
        .fails(&["drill", "verify-report", raw.to_str().unwrap()], 1);

    // The daemon reads the stored reports at start: status, metrics and the API.
    let d = Daemon::start(&s.env, &[]);
    wait_for_api(&s);
    wait_until("the drill history", Duration::from_secs(30), || {
        s.status()["drills"]["app-drill"]["last_report"].is_string()
    });
    let st = s.status();
    let ds = &st["drills"]["app-drill"];
    assert_eq!(ds["last_report"], forged.id.as_str(), "{st:#}");
    assert_eq!(ds["last_verdict"], "untrusted", "{st:#}");
    assert_eq!(ds["last_trusted"], false);
    assert_ne!(
        ds["rto_seconds"], 0.5,
        "figures come from trusted reports only"
    );
    let m = s.get("/metrics", &s.auditor);
    assert_eq!(
        gauge(&m.body, "dr_drill_last_verdict", ("drill", "app-drill")),
        Some(0.0),
        "{}",
        m.body
    );
    assert_eq!(
        gauge(
            &m.body,
            "dr_drill_last_report_trusted",
            ("drill", "app-drill")
        ),
        Some(0.0)
    );

    let drills = s.get("/v1/drills", &s.auditor).json();
    let reports = drills["reports"].as_array().unwrap();
    let by_id = |id: &str| reports.iter().find(|r| r["id"] == id).unwrap().clone();
    let f = by_id(&forged.id);
    assert_eq!(f["verdict"], "untrusted", "{f:#}");
    assert_eq!(f["trusted"], false);
    assert_eq!(f["signature_valid"], true);
    assert_eq!(f["claimed_verdict"], "pass");
    let t = by_id(&tampered.id);
    assert_eq!(t["verdict"], "untrusted");
    assert_eq!(t["signature_valid"], false);
    let g = by_id(&genuine_id);
    assert_eq!(g["verdict"], "pass");
    assert_eq!(g["trusted"], true);
    assert_eq!(drills["drills"]["app-drill"]["last_verdict"], "untrusted");

    let one = s
        .get(&format!("/v1/reports/{}", forged.id), &s.auditor)
        .json();
    assert_eq!(one["verdict"], "untrusted");
    assert_eq!(one["trusted"], false);
    assert_eq!(one["report"]["verdict"], "untrusted");
    let page = s.get(&format!("/v1/reports/{}/html", forged.id), &s.auditor);
    assert_eq!(page.status, 200);
    let title = &page.body[..page.body.find("</title>").unwrap()];
    assert!(title.ends_with("UNTRUSTED"), "{title}");
    assert!(!page.body.contains("PASSED"));
    let page = s.get(&format!("/v1/reports/{genuine_id}/html"), &s.auditor);
    assert!(page.body.contains("PASSED"));
    drop(d);
}

/// Issue 15, item 7 (rate limit) and 11 (a bad `region` is a 400).
#[test]
fn r15_anonymous_requests_do_not_rate_limit_tokens_or_probes() {
    let s = setup(1, "0 0 0 1 1 *");
    let config = std::fs::read_to_string(&s.env.config)
        .unwrap()
        .replace("rate_limit_per_minute = 400", "rate_limit_per_minute = 20");
    std::fs::write(&s.env.config, config).unwrap();
    s.env.ok(&["backup", "--policy", "app"]);
    let _d = Daemon::start(&s.env, &[]);
    wait_for_api(&s);

    // Bad query parameters: 400 with a code (these count against the auditor's budget).
    for (path, code) in [
        (
            "/v1/policies/app/snapshots?region=../../etc",
            "unknown-region",
        ),
        (
            "/v1/policies/app/snapshots?region=%2e%2e%2fetc",
            "unknown-region",
        ),
        (
            "/v1/policies/app/snapshots?region=nowhere",
            "unknown-region",
        ),
        ("/v1/policies/app/snapshots?regoin=local", "bad-query"),
        ("/v1/audit?since=yesterday", "bad-query"),
    ] {
        let r = s.get(path, &s.auditor);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert_eq!(r.json()["code"], code, "{path}: {}", r.body);
        assert!(!r.body.contains("/etc/"), "{path}: {}", r.body);
    }
    let r = s.get("/v1/policies/app/snapshots?region=local", &s.auditor);
    assert_eq!(r.status, 200, "{}", r.body);

    // 60 anonymous requests and wrong tokens: the address is limited after 20 (the 401s
    // count), /healthz never is.
    let mut anonymous = Vec::new();
    for i in 0..60 {
        let token = (i % 2 == 0).then_some("dr_wrong");
        anonymous.push(request(s.port, "GET", "/v1/status", token).unwrap().status);
        let h = request(s.port, "GET", "/healthz", None).unwrap();
        assert_eq!(h.status, 200, "/healthz after {i} anonymous requests");
    }
    assert!(anonymous[..20].iter().all(|c| *c == 401), "{anonymous:?}");
    assert!(anonymous[20..].iter().all(|c| *c == 429), "{anonymous:?}");
    // /readyz (a probe, without a token) is never limited either.
    let r = request(s.port, "GET", "/readyz", None).unwrap();
    assert_eq!(r.status, 200, "/readyz after the flood: {}", r.body);

    // The operator's token has its own budget, untouched by the anonymous flood.
    for i in 0..20 {
        let r = s.get("/v1/status", &s.operator);
        assert_eq!(r.status, 200, "operator request {i}: {}", r.body);
    }
    let r = s.get("/v1/status", &s.operator);
    assert_eq!(r.status, 429, "the token's own limit");
    assert_eq!(r.json()["code"], "rate-limited");
    assert!(r.header("retry-after").is_some());
    // ...and exhausting it leaves the other token, /readyz and /healthz alone.
    assert_eq!(s.get("/v1/policies", &s.auditor).status, 200);
    assert_eq!(s.get("/readyz", &s.operator).status, 200);
    assert_eq!(
        request(s.port, "GET", "/healthz", None).unwrap().status,
        200
    );
}

/// Opens a connection that sends an incomplete request head and nothing more.
fn half_open(addr: &SocketAddr) -> Option<TcpStream> {
    let mut c = TcpStream::connect_timeout(addr, Duration::from_secs(2)).ok()?;
    c.write_all(b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .ok()?;
    Some(c)
}

/// Whether the server closed `c` within `within` (EOF or reset).
fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
    c.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            // A 408 or 400 before closing is fine too.
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// `GET /healthz` with a deadline on connecting and on the answer.
fn probe(addr: &SocketAddr, from: Ipv4Addr, deadline: Duration) -> Result<u16, String> {
    let t0 = Instant::now();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(&SocketAddr::from((from, 0)).into())
        .map_err(|e| format!("bind {from}: {e}"))?;
    socket
        .connect_timeout(&(*addr).into(), deadline)
        .map_err(|e| format!("connect: {e}"))?;
    let mut c = TcpStream::from(socket);
    c.set_read_timeout(Some(
        deadline
            .saturating_sub(t0.elapsed())
            .max(Duration::from_millis(10)),
    ))
    .unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    c.read_to_end(&mut out)
        .map_err(|e| format!("read after {:?}: {e}", t0.elapsed()))?;
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))
}

/// Issue 15, item 7 (connections): slowloris and a connection flood.
#[test]
fn r15_half_open_connections_time_out_and_a_flood_leaves_healthz_answering() {
    const FLOOD: usize = 10_000;
    // The flood comes from 127.0.0.1, the probes from another address, as a kubelet's or load
    // balancer's would: at the cap, the address holding the most slots gives one up.
    const PROBE_FROM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
    let s = setup(1, "0 0 0 1 1 *");
    let mut config = std::fs::read_to_string(&s.env.config).unwrap();
    config = config.replace(
        "rate_limit_per_minute = 400",
        "rate_limit_per_minute = 400\nheader_read_timeout = \"2s\"",
    );
    std::fs::write(&s.env.config, config).unwrap();
    // The daemon gets 2,048 descriptors (soft and hard): without a connection cap the flood
    // below exhausts them.
    let log = s.env.path("daemon-flood.log");
    let child = Command::new("sh")
        .args(["-c", "ulimit -n 2048 && exec \"$0\" \"$@\"", bin(), "-c"])
        .arg(&s.env.config)
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(child);
    wait_for_api(&s);
    let addr: SocketAddr = ([127, 0, 0, 1], s.port).into();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // Slowloris: an unfinished request head is closed after the 2 s header-read timeout...
    let mut slow = half_open(&addr).expect("connect");
    let t0 = Instant::now();
    assert!(
        closed_within(&mut slow, Duration::from_secs(10)),
        "an unfinished request head still open after {:?}",
        t0.elapsed()
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "closed early: {:?}",
        t0.elapsed()
    );
    // ...and so is a keep-alive connection left idle after a response.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    let n = idle.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut idle, Duration::from_secs(10)),
        "an idle keep-alive connection still open"
    );

    // The test itself needs a descriptor per connection it holds.
    let soft = dr::host::raise_open_files_limit()
        .ok()
        .and_then(|l| l.0)
        .unwrap_or(1024);
    let flood = FLOOD.min(usize::try_from(soft).unwrap_or(FLOOD).saturating_sub(500));
    assert!(
        flood >= 2_500,
        "open-file limit {soft} is too low for this test"
    );

    // A flood of half-open connections, far over the cap (512) and the daemon's descriptors,
    // opened as fast as this thread can; /healthz is probed while it goes on.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = std::collections::VecDeque::with_capacity(flood);
            let mut failed = 0usize;
            let t0 = Instant::now();
            while held.len() < flood && t0.elapsed() < Duration::from_secs(60) {
                match half_open(&addr) {
                    Some(c) => held.push_back(c),
                    None => failed += 1,
                }
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
            }
            // Then keep it up for 3 s (at most 5,000 more), as an attacker whose connections
            // are closed would: reconnect.
            let t1 = Instant::now();
            for _ in 0..5_000 {
                if t1.elapsed() > Duration::from_secs(3) {
                    break;
                }
                held.pop_front();
                match half_open(&addr) {
                    Some(c) => held.push_back(c),
                    None => failed += 1,
                }
            }
            (held, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut answers = Vec::new();
    while !flooder.is_finished() || answers.len() < 10 {
        answers.push(probe(&addr, PROBE_FROM, Duration::from_secs(2)));
        std::thread::sleep(Duration::from_millis(200));
        if answers.len() > 400 {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (held, failed) = flooder.join().unwrap();
    eprintln!(
        "flood: {} connections opened, {failed} could not connect, {} /healthz probes",
        held.len(),
        answers.len()
    );
    let bad: Vec<_> = answers.iter().filter(|a| *a != &Ok(200)).collect();
    assert!(
        bad.is_empty(),
        "/healthz during a flood of {} half-open connections ({failed} could not connect): {} of {} probes failed: {bad:?}\n{}",
        held.len(),
        bad.len(),
        answers.len(),
        log_text()
    );
    assert!(
        held.len() >= flood / 2,
        "the flood opened only {} connections ({failed} failed)",
        held.len()
    );
    // With the flood still held open, /healthz and a token still answer, from the flood's own
    // address too once it stops opening connections.
    assert_eq!(
        probe(&addr, Ipv4Addr::LOCALHOST, Duration::from_secs(2)),
        Ok(200)
    );
    assert_eq!(s.get("/v1/status", &s.auditor).status, 200);
    let log = log_text();
    assert!(log.contains("connection cap"), "{log}");
    assert!(!log.contains("Too many open files"), "{log}");
    drop(held);
}

/// HTTPS (`api.tls_cert_file`) goes through the same server: it answers, and a client that
/// connects and never starts the TLS handshake is closed after the header-read timeout.
#[test]
fn r15_tls_serves_and_a_stalled_handshake_times_out() {
    let s = setup(1, "0 0 0 1 1 *");
    let (cert, key) = (s.env.setup().join("api.crt"), s.env.setup().join("api.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=dr-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // An end-entity certificate: webpki refuses a CA certificate as the server's.
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = std::fs::read_to_string(&s.env.config).unwrap().replace(
        "rate_limit_per_minute = 400",
        "rate_limit_per_minute = 400\nheader_read_timeout = \"2s\"\ntls_cert_file = \"api.crt\"\ntls_key_file = \"api.key\"",
    );
    std::fs::write(&s.env.config, config).unwrap();
    let d = Daemon::start(&s.env, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
        )
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let get = |path: &str, token: Option<&str>| {
        let mut r = client.get(format!("https://127.0.0.1:{}{path}", s.port));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        rt.block_on(async { r.send().await.map(|r| r.status().as_u16()) })
    };
    let mut last = None;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        match get("/healthz", None) {
            Ok(200) => break,
            other => last = Some(format!("{other:?}")),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        get("/healthz", None).ok(),
        Some(200),
        "HTTPS /healthz: {last:?}\n{}",
        d.log()
    );
    assert_eq!(
        get("/v1/status", Some(&s.auditor)).unwrap(),
        200,
        "{}",
        d.log()
    );
    assert_eq!(get("/v1/status", None).unwrap(), 401);

    let mut stalled = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let t0 = Instant::now();
    assert!(
        closed_within(&mut stalled, Duration::from_secs(10)),
        "a connection without a TLS handshake still open after {:?}",
        t0.elapsed()
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "closed early: {:?}",
        t0.elapsed()
    );
}
