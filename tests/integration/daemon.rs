//! `dr daemon` as a process: scheduled backups, replication, drills on demand, the HTTP API
//! with roles, rate limit and metrics, the audit log, graceful shutdown, and kill -9.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::dr::{DrEnv, bin};
use crate::harness::http::{Response, request};
use crate::harness::{free_port, tree};

/// Polls the API every half second: the requests count against the daemon's rate limit.
pub(crate) fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub(crate) struct Daemon {
    child: Child,
    log: std::path::PathBuf,
}

impl Daemon {
    pub(crate) fn start(env: &DrEnv, extra: &[&str]) -> Self {
        Self::start_at(env, &env.config, extra)
    }

    fn start_at(env: &DrEnv, config: &Path, extra: &[&str]) -> Self {
        let log = env.path(&format!("daemon-{}.log", rand_suffix()));
        let mut args = vec!["daemon"];
        args.extend(extra);
        let child = env
            .cmd_at(config, &args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// Waits for exit; returns the code.
    pub(crate) fn wait(&mut self, within: Duration) -> Option<i32> {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                t0.elapsed() < within,
                "daemon did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> String {
    format!("{:x}", rand::random::<u32>())
}

/// Makes a token with `dr keygen --api-token` and appends its entry to the tokens file.
pub(crate) fn token(env: &DrEnv, tokens: &Path, name: &str, role: &str) -> String {
    let out = Command::new(bin())
        .args(["keygen", "--api-token", name, "--role", role])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let entry = &stderr[stderr.find("[tokens.").unwrap()..];
    let mut text = std::fs::read_to_string(tokens).unwrap_or_default();
    text.push_str(entry);
    std::fs::write(tokens, text).unwrap();
    std::fs::set_permissions(tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let _ = env;
    token
}

pub(crate) struct Setup {
    pub(crate) env: DrEnv,
    pub(crate) port: u16,
    pub(crate) operator: String,
    pub(crate) auditor: String,
}

pub(crate) fn setup(data_mb: usize, schedule: &str) -> Setup {
    let mut env = DrEnv::new();
    let data = env.path("data");
    tree::make(&data, data_mb);
    let port = free_port();
    let tokens = env.setup().join("tokens.toml");
    let operator = token(&env, &tokens, "ops-bot", "operator");
    let auditor = token(&env, &tokens, "auditor-jane", "auditor");
    env.add_storage(
        &format!(
            "\n[storage.replica]\ntype = \"local\"\npath = \"repo-replica\"\n\n[api]\nlisten = \"127.0.0.1:{port}\"\ntokens_file = \"tokens.toml\"\nrate_limit_per_minute = 400\n\n[daemon]\nreplicate_every = \"1s\"\nwal_check_every = \"1s\"\nretention_every = \"1h\"\n"
        ),
        vec![],
    );
    env.policy(
        "app",
        &format!(
            "source = {{ type = \"files\", path = \"{}\" }}\ntargets = [\"local\", \"replica\"]\nschedule = \"{schedule}\"\nrpo = \"1h\"\n",
            data.display()
        ),
    );
    std::fs::write(
        env.setup().join("restore-drills/app-drill.toml"),
        "policy = \"app\"\n",
    )
    .unwrap();
    Setup {
        env,
        port,
        operator,
        auditor,
    }
}

impl Setup {
    pub(crate) fn get(&self, path: &str, token: &str) -> Response {
        request(self.port, "GET", path, Some(token)).expect("the API answers")
    }

    pub(crate) fn status(&self) -> serde_json::Value {
        self.get("/v1/status", &self.auditor).json()
    }
}

#[test]
fn daemon_schedules_replicates_runs_drills_and_serves_the_api() {
    let s = setup(2, "*/2 * * * * *");
    let mut d = Daemon::start(&s.env, &[]);
    wait_until("the API", Duration::from_secs(30), || {
        request(s.port, "GET", "/healthz", None).is_some_and(|r| r.status == 200)
    });

    // Every route but the probes needs a token; a wrong one is refused too.
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/v1/status"),
        ("GET", "/v1/policies"),
        ("GET", "/v1/policies/app/snapshots"),
        ("GET", "/v1/drills"),
        ("GET", "/v1/drills/x"),
        ("GET", "/v1/reports/x"),
        ("GET", "/v1/reports/x/html"),
        ("GET", "/v1/jobs/1"),
        ("GET", "/no/such/route"),
        ("GET", "/v1/audit"),
        ("POST", "/v1/policies/app/backup"),
        ("POST", "/v1/drills/app-drill/run"),
    ] {
        let r = request(s.port, method, path, None).unwrap();
        assert_eq!(r.status, 401, "{method} {path} without a token: {}", r.body);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let r = request(s.port, method, path, Some("dr_not-a-token")).unwrap();
        assert_eq!(r.status, 401, "{method} {path} with a wrong token");
        assert_eq!(r.json()["code"], "invalid-token", "{}", r.body);
    }
    // The auditor reads but cannot change anything.
    for path in ["/v1/policies/app/backup", "/v1/drills/app-drill/run"] {
        let r = request(s.port, "POST", path, Some(&s.auditor)).unwrap();
        assert_eq!(r.status, 403, "auditor POST {path}: {}", r.body);
    }

    // Scheduled backups every 2 s, replicated to the second target.
    wait_until("two scheduled backups", Duration::from_secs(60), || {
        s.status()["policies"]["app"]["backups_ok"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    });
    wait_until("the replica up to date", Duration::from_secs(30), || {
        s.status()["replicas"]["replica"]["last_success"].is_string()
    });
    let snaps = s.get("/v1/policies/app/snapshots?region=replica", &s.auditor);
    assert_eq!(snaps.status, 200, "{}", snaps.body);
    assert!(!snaps.json().as_array().unwrap().is_empty());

    // An operator triggers a drill; it restores from the replica and passes.
    let r = request(
        s.port,
        "POST",
        "/v1/drills/app-drill/run",
        Some(&s.operator),
    )
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    // Accepted work is followed at its job: running, then succeeded with the report's id.
    let job = r.json()["status"].as_str().unwrap().to_owned();
    assert_eq!(r.header("location"), Some(job.as_str()));
    assert!(job.starts_with("/v1/jobs/"), "{}", r.body);
    wait_until("the drill job to end", Duration::from_secs(120), || {
        s.get(&job, &s.auditor).json()["state"] != "running"
    });
    let done = s.get(&job, &s.auditor).json();
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["kind"], "drill");
    let st = s.status();
    assert_eq!(st["drills"]["app-drill"]["last_verdict"], "pass", "{st:#}");
    let id = st["drills"]["app-drill"]["last_report"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(done["result"], id.as_str());
    // The drill by its name: its state and reports.
    let drill = s.get("/v1/drills/app-drill", &s.auditor).json();
    assert_eq!(drill["reports"][0]["id"], id.as_str(), "{drill:#}");
    assert_eq!(drill["reports"][0]["url"], format!("/v1/reports/{id}"));
    let rep = s.get(&format!("/v1/reports/{id}"), &s.auditor).json();
    assert_eq!(rep["signature_valid"], true);
    assert_eq!(rep["trusted_signer"], true);
    assert_eq!(rep["trusted"], true);
    assert_eq!(rep["verdict"], "pass");
    assert_eq!(rep["report"]["region"], "replica");
    let html = s.get(&format!("/v1/reports/{id}/html"), &s.auditor);
    assert_eq!(html.status, 200);
    assert!(html.body.contains("PASSED"), "{}", html.body);
    let list = s.get("/v1/drills", &s.auditor).json();
    assert_eq!(list["reports"][0]["id"], id.as_str());

    // An operator-triggered backup.
    let r = request(s.port, "POST", "/v1/policies/app/backup", Some(&s.operator)).unwrap();
    assert!(r.status == 202 || r.status == 409, "{}", r.body);

    // Prometheus text that a parser accepts, with the promised series.
    let m = s.get("/metrics", &s.auditor);
    assert_eq!(m.status, 200);
    assert_eq!(crate::deploy::promtool_lint(&m.body), "", "{}", m.body);
    let value = |name: &str, label: (&str, &str)| crate::harness::http::gauge(&m.body, name, label);
    assert!(
        value(
            "dr_backup_last_success_timestamp_seconds",
            ("policy", "app")
        )
        .unwrap()
            > 1.7e9
    );
    assert!(value("dr_backup_duration_seconds", ("policy", "app")).is_some());
    assert_eq!(
        value("dr_drill_last_verdict", ("drill", "app-drill")),
        Some(1.0)
    );
    assert!(value("dr_drill_rto_seconds", ("drill", "app-drill")).unwrap() > 0.0);
    assert!(value("dr_replication_lag_seconds", ("region", "replica")).is_some());

    // The audit log names the token's owner, never the token; no response carries a token.
    let audit = s.get("/v1/audit", &s.auditor);
    assert!(
        audit.body.contains("ops-bot") && audit.body.contains("drill.run"),
        "{}",
        audit.body
    );
    for body in [
        &audit.body,
        &m.body,
        &s.status().to_string(),
        &rep.to_string(),
    ] {
        assert!(!body.contains(&s.operator) && !body.contains(&s.auditor));
    }
    assert!(!s.get("/v1/policies", &s.auditor).body.contains("path"));

    // Bad input: unknown or path-like ids are plain 404s, a bad time a 400, never a panic.
    for path in [
        "/v1/drills/..%2F..%2Fetc%2Fpasswd",
        "/v1/reports/..%2F..%2Fetc%2Fpasswd",
        "/v1/reports/../../etc/passwd/html",
        "/v1/policies/..%2Fapp/snapshots",
        "/v1/policies/nope/snapshots",
    ] {
        let r = s.get(path, &s.auditor);
        assert!(r.status == 404, "{path}: {} {}", r.status, r.body);
    }
    assert_eq!(s.get("/v1/audit?since=yesterday", &s.auditor).status, 400);
    let r = request(
        s.port,
        "POST",
        "/v1/policies/..%2Fapp/backup",
        Some(&s.operator),
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);

    // Rate limit without a token: 400 a minute per address (the 401s above count too);
    // /healthz is never limited (api_abuse.rs tests the rest).
    let mut limited = None;
    for _ in 0..500 {
        let r = request(s.port, "GET", "/v1/status", None).unwrap();
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("429 after the limit");
    assert!(limited.header("retry-after").is_some());
    assert_eq!(limited.json()["code"], "rate-limited");
    assert_eq!(
        request(s.port, "GET", "/healthz", None).unwrap().status,
        200
    );

    // JSON logs with the policy on backup lines; SIGTERM stops it cleanly.
    d.signal("-TERM");
    assert_eq!(d.wait(Duration::from_secs(40)), Some(0));
    let log = d.log();
    let committed: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["fields"]["message"] == "Backup committed.")
        .collect();
    assert!(!committed.is_empty(), "{log}");
    assert_eq!(committed[0]["span"]["policy"], "app", "{}", committed[0]);
    assert!(log.contains("Daemon stopped."), "{log}");
    assert!(!log.contains(&s.operator));
    assert!(
        s.env
            .ok(&["verify", "--policy", "app", "--region", "replica"])
            .contains("OK")
    );
}

#[test]
fn shutdown_deadline_names_running_jobs_and_kill_9_loses_nothing() {
    let s = setup(60, "*/3 * * * * *");
    let running = |s: &Setup| {
        request(s.port, "GET", "/v1/status", Some(&s.auditor))
            .is_some_and(|r| r.status == 200 && r.json()["policies"]["app"]["running"] == true)
    };

    // SIGTERM during a backup with no grace: the job is named and cancelled, nothing partial.
    let mut d = Daemon::start(&s.env, &["--shutdown-grace", "0s"]);
    wait_until("a running backup", Duration::from_secs(60), || running(&s));
    d.signal("-TERM");
    assert_eq!(d.wait(Duration::from_secs(40)), Some(0));
    let log = d.log();
    assert!(
        log.contains("Shutdown deadline reached") && log.contains("backup app"),
        "{log}"
    );
    drop(d);

    // kill -9 during a backup, then restart: the next scheduled run commits.
    let d = Daemon::start(&s.env, &[]);
    wait_until("a running backup", Duration::from_secs(60), || running(&s));
    d.signal("-KILL");
    drop(d);
    let v = s.env.ok(&["verify", "--policy", "app"]);
    assert!(v.contains("OK"), "{v}");
    let mut d = Daemon::start(&s.env, &[]);
    wait_until("a backup after the crash", Duration::from_secs(180), || {
        request(s.port, "GET", "/v1/status", Some(&s.auditor)).is_some_and(|r| {
            r.status == 200 && r.json()["policies"]["app"]["backups_ok"].as_u64() >= Some(1)
        })
    });
    d.signal("-TERM");
    d.wait(Duration::from_secs(120));
    let v = s.env.ok(&["verify", "--policy", "app", "--data"]);
    assert!(v.contains("OK"), "{v}");
}

/// Two daemons with the same policies and the given election settings: exactly one is active
/// and runs backups, the standby runs nothing and serves the API; `kill -9` of the leader hands
/// over within the lease TTL (3 s) plus a renewal period.
fn one_active_and_handover(env: &DrEnv, target: &str, election: &str) {
    let data = env.path("data");
    tree::make(&data, 1);
    let (p1, p2) = (free_port(), free_port());
    let tokens = env.setup().join("tokens.toml");
    let auditor = token(env, &tokens, "auditor", "auditor");
    let base = std::fs::read_to_string(&env.config).unwrap();
    let daemon_cfg =
        format!("\n[daemon]\n{election}\nlease_ttl = \"3s\"\nretention_every = \"1h\"\n");
    for (file, port, state) in [("dr.toml", p1, "state"), ("dr2.toml", p2, "state2")] {
        let text = base.replace("[keys]", &format!("state_dir = \"{state}\"\n\n[keys]"));
        std::fs::write(
            env.setup().join(file),
            format!("{text}\n[api]\nlisten = \"127.0.0.1:{port}\"\ntokens_file = \"tokens.toml\"\n{daemon_cfg}"),
        )
        .unwrap();
    }
    env.policy(
        "app",
        &format!(
            "source = {{ type = \"files\", path = \"{}\" }}\ntargets = [\"{target}\"]\nschedule = \"*/2 * * * * *\"\n",
            data.display()
        ),
    );
    let status = |port: u16| {
        request(port, "GET", "/v1/status", Some(&auditor))
            .filter(|r| r.status == 200)
            .map(|r| r.json())
    };
    let mut a = Daemon::start_at(env, &env.setup().join("dr.toml"), &[]);
    wait_until("the first daemon active", Duration::from_secs(30), || {
        status(p1).is_some_and(|s| s["active"] == true)
    });
    let mut b = Daemon::start_at(env, &env.setup().join("dr2.toml"), &[]);
    wait_until("the second daemon's API", Duration::from_secs(30), || {
        status(p2).is_some()
    });
    wait_until("backups by the leader", Duration::from_secs(60), || {
        status(p1).is_some_and(|s| s["policies"]["app"]["backups_ok"].as_u64() >= Some(3))
    });
    let standby = status(p2).unwrap();
    assert_eq!(standby["active"], false, "{standby:#}");
    assert_eq!(
        standby["policies"]["app"]["backups_ok"], 0,
        "a standby runs nothing"
    );
    a.signal("-KILL");
    a.wait(Duration::from_secs(10));
    let t0 = std::time::Instant::now();
    wait_until("the standby to take over", Duration::from_secs(15), || {
        status(p2).is_some_and(|s| s["active"] == true)
    });
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "handover took {:?}",
        t0.elapsed()
    );
    wait_until("backups by the new leader", Duration::from_secs(60), || {
        status(p2).is_some_and(|s| s["policies"]["app"]["backups_ok"].as_u64() >= Some(1))
    });
    b.signal("-TERM");
    assert_eq!(b.wait(Duration::from_secs(40)), Some(0));
    assert!(
        env.ok(&["verify", "--policy", "app", "--data"])
            .contains("OK")
    );
}

/// The Kubernetes Lease API as far as leader election uses it: one namespace's Leases with
/// `resourceVersion` checked on every update (409 on a stale one), as the API server does.
fn lease_api() -> u16 {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let store: std::sync::Arc<std::sync::Mutex<HashMap<String, (u64, serde_json::Value)>>> =
        Default::default();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    return;
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or("").to_owned(),
                    parts.next().unwrap_or("").to_owned(),
                );
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let sent: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let name = path.rsplit('/').next().unwrap_or_default().to_owned();
                let mut st = store.lock().unwrap();
                let (code, out) = match method.as_str() {
                    "GET" => match st.get(&name) {
                        Some((_, v)) => (200, v.clone()),
                        None => (404, serde_json::json!({})),
                    },
                    "POST" => {
                        let n = sent["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        if st.contains_key(&n) {
                            (409, serde_json::json!({}))
                        } else {
                            let mut v = sent.clone();
                            v["metadata"]["resourceVersion"] = serde_json::json!("1");
                            st.insert(n, (1, v.clone()));
                            (201, v)
                        }
                    }
                    "PUT" => match st.get(&name).cloned() {
                        Some((rv, _))
                            if sent["metadata"]["resourceVersion"]
                                == serde_json::json!(rv.to_string()) =>
                        {
                            let mut v = sent.clone();
                            v["metadata"]["resourceVersion"] =
                                serde_json::json!((rv + 1).to_string());
                            st.insert(name, (rv + 1, v.clone()));
                            (200, v)
                        }
                        _ => (409, serde_json::json!({})),
                    },
                    _ => (405, serde_json::json!({})),
                };
                drop(st);
                let text = out.to_string();
                let mut w = conn;
                let _ = write!(
                    w,
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            });
        }
    });
    port
}

/// `leader_election = "kubernetes"` against the Lease API: one active daemon, handover on
/// `kill -9`. (There is no cluster here; [`lease_api`] enforces the API's concurrency rule.)
#[test]
fn kubernetes_lease_elects_one_active_daemon_and_hands_over() {
    let api = lease_api();
    let env = DrEnv::new();
    one_active_and_handover(
        &env,
        "local",
        &format!(
            "leader_election = \"kubernetes\"\nlease_namespace = \"dr\"\nkube_api = \"http://127.0.0.1:{api}\""
        ),
    );
}

/// Two daemons sharing a moto bucket with `leader_election = "bucket"`: exactly one is active;
/// Garage, which ignores conditional writes, is refused.
#[test]
fn bucket_lease_elects_one_active_daemon_and_hands_over() {
    let m = crate::harness::moto::shared();
    let mut env = DrEnv::new();
    env.add_storage(
        &m.s3.storage_toml("moto", &m.s3.bucket("lease", false)),
        m.s3.env("moto"),
    );
    one_active_and_handover(&env, "moto", "leader_election = \"bucket\"");
    let data = env.path("data");
    // Garage ignores conditional writes: a bucket lease there is refused up front.
    let g = crate::harness::garage::shared();
    let mut genv = DrEnv::new();
    genv.add_storage(
        &format!(
            "{}\n[daemon]\nleader_election = \"bucket\"\n",
            g.s3.storage_toml("garage", &g.bucket("lease"))
        ),
        g.s3.env("garage"),
    );
    genv.files_policy("app", &data, &["garage"]);
    let out = genv.fails(&["daemon"], 2);
    assert!(out.contains("ignores conditional writes"), "{out}");
}

/// A backup the daemon runs is listed with its progress (bytes of a total known up front,
/// percent, rate, ETA) in `GET /v1/jobs` and in `dr info` on the same host, and goes from
/// both when it is done.
#[test]
fn running_jobs_and_their_progress_are_listed() {
    let s = setup(200, "0 0 0 1 1 *");
    let mut d = Daemon::start(&s.env, &[]);
    wait_until("the API", Duration::from_secs(30), || {
        request(s.port, "GET", "/healthz", None).is_some_and(|r| r.status == 200)
    });
    let r = request(s.port, "POST", "/v1/policies/app/backup", Some(&s.operator)).unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let mut seen = None;
    wait_until(
        "the backup in /v1/jobs with its total",
        Duration::from_secs(30),
        || {
            let j = s.get("/v1/jobs", &s.auditor).json();
            let job = j["jobs"][0].clone();
            let known = job["total"].as_u64().is_some_and(|t| t > 150 << 20);
            seen = Some(job);
            known
        },
    );
    let job = seen.unwrap();
    assert_eq!(
        (job["kind"].as_str(), job["name"].as_str()),
        (Some("backup"), Some("app")),
        "{job}"
    );
    assert!(
        job["percent"].as_f64().is_some() && job["bytes_per_second"].is_u64(),
        "{job}"
    );
    // The daemon rewrites jobs.json every 2 s.
    wait_until(
        "dr info to list the running backup",
        Duration::from_secs(10),
        || {
            s.env.json(&["info"])["running"]
                .as_array()
                .is_some_and(|l| {
                    l.iter()
                        .any(|j| j["name"] == "app" && j["kind"] == "backup")
                })
        },
    );
    let text = s.env.ok(&["info"]);
    assert!(text.contains("RUNNING backup app"), "{text}");
    wait_until("the backup to end", Duration::from_secs(120), || {
        s.get("/v1/jobs", &s.auditor).json()["jobs"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    assert_eq!(s.status()["policies"]["app"]["backups_ok"], 1);
    d.signal("-TERM");
    assert_eq!(d.wait(Duration::from_secs(60)), Some(0));
    assert!(
        s.env.json(&["info"])["running"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}
