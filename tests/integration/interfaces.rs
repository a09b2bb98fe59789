//! Issue 23: interfaces that follow their ecosystems' conventions, against the real daemon
//! and CLI: Kubernetes probes without a token, RFC 7807 problem bodies (unknown routes
//! included), RFC 6750 token errors, `HEAD` as a read, case-insensitive `Bearer`, accepted
//! work followed at `/v1/jobs/{id}`, and a CLI whose stdout may be closed by its reader.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use crate::daemon::{Daemon, setup, wait_until};
use crate::harness::http::{request, request_with};

#[test]
fn api_probes_errors_and_accepted_work_follow_http_conventions() {
    let s = setup(1, "0 0 0 1 1 *");
    s.env.ok(&["backup", "--policy", "app"]);
    let _d = Daemon::start(&s.env, &[]);
    wait_until("the API", Duration::from_secs(30), || {
        request(s.port, "GET", "/healthz", None).is_some_and(|r| r.status == 200)
    });

    // Readiness is a probe: no token, and it says what it means.
    let r = request(s.port, "GET", "/readyz", None).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let ready = r.json();
    assert_eq!(ready["ready"], true, "{ready:#}");
    assert_eq!(ready["config_loaded"], true);
    assert_eq!(ready["role"], "active");
    assert_eq!(ready["storage"]["local"], "reachable", "{ready:#}");
    assert_eq!(ready["storage"]["replica"], "reachable", "{ready:#}");

    // Errors are problem documents; a missing token and a wrong one are told apart.
    let missing = request(s.port, "GET", "/v1/status", None).unwrap();
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.header("content-type"),
        Some("application/problem+json")
    );
    let p = missing.json();
    assert_eq!(p["type"], "urn:dr:problem:unauthorized", "{p:#}");
    assert_eq!(
        (p["status"].as_u64(), p["code"].as_str()),
        (Some(401), Some("unauthorized"))
    );
    assert!(p["title"].is_string() && p["detail"].is_string(), "{p:#}");
    let wrong = request(s.port, "GET", "/v1/status", Some("dr_not-issued")).unwrap();
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["code"], "invalid-token");
    assert!(
        wrong.json()["detail"]
            .as_str()
            .unwrap()
            .contains("not valid"),
        "{}",
        wrong.body
    );
    assert_eq!(
        wrong.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );

    // The scheme is case-insensitive (RFC 9110 §11.1).
    for scheme in ["bearer", "BEARER"] {
        let auth = format!("{scheme} {}", s.auditor);
        let r = request_with(s.port, "GET", "/v1/status", &[("Authorization", &auth)]).unwrap();
        assert_eq!(r.status, 200, "{scheme}: {}", r.body);
    }

    // HEAD is a read: the auditor may.
    let bearer = format!("Bearer {}", s.auditor);
    let head = request_with(s.port, "HEAD", "/v1/status", &[("Authorization", &bearer)]).unwrap();
    assert_eq!(head.status, 200, "{}", head.body);
    assert!(head.body.is_empty());

    // Unknown routes are 404 problem documents, not empty bodies.
    let r = s.get("/v1/nothing/here", &s.auditor);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "no-route", "{}", r.body);
    assert!(r.body.contains("/v1/nothing/here"));
    let r = s.get("/v1/policies/app/backup", &s.operator);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (405, Some("method-not-allowed")),
        "{}",
        r.body
    );
    for (path, code) in [
        ("/v1/jobs/999999", "unknown-job"),
        ("/v1/jobs/not-a-number", "unknown-job"),
        ("/v1/drills/no-such-drill", "unknown-drill"),
        ("/v1/reports/no-such-report", "unknown-report"),
    ] {
        let r = s.get(path, &s.auditor);
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (404, Some(code)),
            "{path}"
        );
    }

    // Accepted work names its job; the job ends with the snapshot it made.
    let r = request(s.port, "POST", "/v1/policies/app/backup", Some(&s.operator)).unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let job = r.json()["job"].as_u64().expect("a job id");
    let at = format!("/v1/jobs/{job}");
    assert_eq!(r.json()["status"], at.as_str());
    assert_eq!(r.header("location"), Some(at.as_str()));
    wait_until("the backup job to end", Duration::from_secs(60), || {
        s.get(&at, &s.auditor).json()["state"] != "running"
    });
    let done = s.get(&at, &s.auditor).json();
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(
        (done["kind"].as_str(), done["policy"].as_str()),
        (Some("backup"), Some("app"))
    );
    let snaps = s.env.json(&["snapshots", "--policy", "app"]);
    assert!(
        snaps
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == done["result"]),
        "{done:#} in {snaps:#}"
    );
}

#[test]
fn a_closed_stdout_ends_a_command_quietly_as_sigpipe_would() {
    let env = crate::harness::dr::DrEnv::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..5000 {
        std::fs::write(data.join(format!("f{i:05}")), "x").unwrap();
    }
    env.files_policy("many", &data, &["local"]);
    env.ok(&["backup", "--policy", "many"]);
    let snaps = env.json(&["snapshots", "--policy", "many"]);
    let id = snaps[0]["id"].as_str().unwrap().to_owned();
    // `dr ls … | head -1`: the reader takes one line and goes away.
    for args in [
        vec!["ls", "--policy", "many", id.as_str()],
        vec!["ls", "--policy", "many", id.as_str(), "--json"],
        vec!["find", "--policy", "many", "f*"],
    ] {
        let mut child = env
            .cmd(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?} printed: {stderr}");
    }
}

#[test]
fn json_outputs_name_one_figure_one_way_and_tables_align() {
    let env = crate::harness::dr::DrEnv::new();
    let data = env.path("data");
    crate::harness::tree::make(&data, 1);
    env.files_policy("app", &data, &["local"]);
    let b = env.json(&["backup", "--policy", "app"]);
    assert!(
        b["seconds"].as_f64().is_some() && b.get("duration").is_none(),
        "{b:#}"
    );
    let snaps = env.json(&["snapshots", "--policy", "app"]);
    let s = &snaps[0];
    assert_eq!(s["id"], b["snapshot"]);
    for figure in ["bytes_read", "bytes_stored", "artifacts"] {
        assert_eq!(s[figure], b[figure], "{figure}: {s:#} vs {b:#}");
    }
    // The table's columns start where their headers do.
    let table = env.ok(&["snapshots", "--policy", "app"]);
    let mut lines = table.lines();
    let (head, row) = (lines.next().unwrap(), lines.next().unwrap());
    let at = |line: &str, i: usize| {
        line.split_whitespace()
            .nth(i)
            .map(|w| line.find(w).unwrap())
    };
    assert_eq!(at(head, 1), at(row, 1), "FINISHED column:\n{table}");

    // Configuration: every error at once, near misses suggested, cron fields as written.
    env.policy(
        "typo",
        &format!(
            "source = {{ type = \"files\", path = \"{}\" }}\ntargets = [\"local\"]\nschedule = \"0 25 * * *\"\nrpo = \"1h\"\n[retention]\nwekly = 2\n",
            data.display()
        ),
    );
    let out = env.fails(&["validate"], 2);
    assert!(
        out.contains("retention.wekly") && out.contains("did you mean `weekly`?"),
        "{out}"
    );
    assert!(
        out.contains("hour `25` is out of range 0-23 (field 2 of 5)"),
        "{out}"
    );
}

#[test]
fn a_daemon_started_on_snapshots_its_retention_will_forget_says_so_first() {
    let s = setup(1, "0 0 0 1 1 *");
    for _ in 0..3 {
        s.env.ok(&["backup", "--policy", "app"]);
    }
    // `validate` says it before anything runs.
    let v = s.env.ok(&["validate"]);
    assert!(
        v.contains("retention of app in local: keeps 1, would forget 2 now"),
        "{v}"
    );
    let mut d = Daemon::start(&s.env, &[]);
    // Three snapshots of one day under keep_last 1 + daily 30: two go.
    wait_until("the retention warning", Duration::from_secs(30), || {
        d.log().contains("Retention will forget snapshots")
    });
    let warning: serde_json::Value = d
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Retention will forget"))
        })
        .unwrap();
    assert_eq!(warning["level"], "WARN", "{warning:#}");
    assert_eq!(warning["fields"]["forgetting"], 2, "{warning:#}");
    assert_eq!(warning["fields"]["kept"], 1, "{warning:#}");
    d.signal("-TERM");
    assert_eq!(d.wait(Duration::from_secs(40)), Some(0));
}

#[test]
fn help_keeps_global_options_apart_and_usage_shows_only_what_is_required() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(crate::harness::dr::bin())
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let backup = run(&["backup", "--help"], &[]);
    let (own, global) = backup
        .split_once("Global options:")
        .expect("a global section");
    assert!(
        own.contains("--policy") && !own.contains("--config"),
        "{backup}"
    );
    assert!(
        global.contains("-c, --config <FILE>") && global.contains("DR_CONFIG"),
        "{backup}"
    );
    // init writes a dr.toml and reads none: no --config offered.
    let init = run(&["init", "--help"], &[]);
    assert!(!init.contains("--config"), "{init}");
    // A config path from the environment is not shown as if it were a required argument.
    let usage = run(&["snapshots"], &[("DR_CONFIG", "/nonexistent/dr.toml")]);
    assert!(
        usage.contains("Usage: dr snapshots --policy <POLICY>\n"),
        "{usage}"
    );
    assert!(!usage.contains("--config"), "{usage}");
    let keygen = run(&["--help"], &[]);
    assert!(
        keygen.contains("signing key") && keygen.contains("API token"),
        "{keygen}"
    );
}

/// The schema in docs/json/NAME.schema.json (or docs/NAME.schema.json).
fn schema(name: &str) -> jsonschema::Validator {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let path = [
        root.join("json").join(format!("{name}.schema.json")),
        root.join(format!("{name}.schema.json")),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| panic!("no schema for {name}"));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::validator_for(&s).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(crate) fn conforms(name: &str, v: &serde_json::Value) {
    let errors: Vec<String> = schema(name)
        .iter_errors(v)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:#?}\n{v:#}");
}

#[test]
fn every_json_output_matches_its_documented_schema() {
    let s = setup(1, "0 0 0 1 1 *");
    let env = &s.env;
    let first = env.json(&["backup", "--policy", "app"]);
    std::fs::write(env.path("data/new-file"), "changed").unwrap();
    conforms("backup", &env.json(&["backup", "--policy", "app"]));
    conforms("snapshots", &env.json(&["snapshots", "--policy", "app"]));
    let lines = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let out = env.ok(&a);
        let v: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(!v.is_empty(), "{args:?} printed nothing");
        v
    };
    for (name, args) in [
        ("ls", vec!["ls", "--policy", "app", "latest"]),
        ("find", vec!["find", "--policy", "app", "*"]),
        (
            "diff",
            vec![
                "diff",
                "--policy",
                "app",
                first["snapshot"].as_str().unwrap(),
                "latest",
            ],
        ),
    ] {
        for v in lines(&args) {
            conforms(name, &v);
        }
    }
    conforms(
        "verify",
        &env.json(&["verify", "--policy", "app", "--data"]),
    );
    let (to, plan_to) = (env.path("restored"), env.path("planned"));
    let (to, plan_to) = (to.to_str().unwrap(), plan_to.to_str().unwrap());
    conforms(
        "restore",
        &env.json(&["restore", "--policy", "app", "--target-dir", to]),
    );
    conforms(
        "restore-dry-run",
        &env.json(&[
            "restore",
            "--policy",
            "app",
            "--target-dir",
            plan_to,
            "--dry-run",
        ]),
    );
    conforms(
        "retention-plan",
        &env.json(&["retention", "plan", "--policy", "app"]),
    );
    conforms(
        "retention-apply",
        &env.json(&["retention", "apply", "--dry-run"]),
    );
    conforms("replicate", &env.json(&["replicate"]));
    let report = env.json(&["drill", "run", "app-drill"]);
    conforms("drill-report", &report);
    conforms("drill-list", &env.json(&["drill", "list"]));
    let shown = env.json(&["drill", "show", "latest"]);
    conforms("drill-show", &shown);
    conforms("drill-report", &shown["report"]);
    conforms("audit", &env.json(&["audit"]));
    conforms("info", &env.json(&["info"]));
}
