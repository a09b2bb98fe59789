//! Static checks of deploy/ (no Docker daemon or Kubernetes here): the YAML parses, every file
//! a Dockerfile, compose file or chart refers to exists, the configurations they install
//! validate with `dr validate`, and the chart carries the promised security settings.

use std::path::{Path, PathBuf};

use crate::harness::dr::bin;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(p: &Path) -> serde_yaml::Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn validate(dir: &Path, env: &[(&str, &str)]) {
    let out = std::process::Command::new(bin())
        .arg("-c")
        .arg(dir.join("dr.toml"))
        .arg("validate")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn init(dir: &Path) {
    let out = std::process::Command::new(bin())
        .args(["init", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
}

fn copy_all(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_a_health_check() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    assert!(text.matches("\nFROM ").count() + usize::from(text.starts_with("FROM")) >= 2);
    for needle in [
        "USER 10001",
        "HEALTHCHECK",
        "/healthz",
        "postgresql-15",
        "redis-server",
        "--locked",
    ] {
        assert!(text.contains(needle), "Dockerfile lacks {needle}");
    }
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        for src in line
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .split_last()
            .unwrap()
            .1
        {
            assert!(root().join(src).exists(), "Dockerfile copies missing {src}");
        }
    }
}

#[test]
fn compose_stack_refers_to_existing_files_and_its_config_validates() {
    let dir = root().join("deploy/compose");
    let c = yaml(&dir.join("docker-compose.yml"));
    let services = c["services"].as_mapping().unwrap();
    for name in [
        "postgres",
        "redis",
        "qdrant",
        "garage-eu",
        "garage-us",
        "dr",
    ] {
        assert!(services.contains_key(name), "compose lacks service {name}");
    }
    let declared = c["volumes"].as_mapping().unwrap();
    for (name, s) in services {
        let name = name.as_str().unwrap();
        if let Some(b) = s.get("build") {
            let ctx = dir.join(b["context"].as_str().unwrap());
            assert!(ctx.is_dir(), "{name}: build context");
            let df = ctx.join(b["dockerfile"].as_str().unwrap_or("Dockerfile"));
            assert!(df.is_file(), "{name}: {}", df.display());
        }
        if let Some(f) = s.get("env_file") {
            assert!(dir.join(f.as_str().unwrap()).is_file(), "{name}: env_file");
        }
        for v in s
            .get("volumes")
            .and_then(|v| v.as_sequence())
            .into_iter()
            .flatten()
        {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            if src.starts_with('.') {
                assert!(dir.join(src).exists(), "{name}: volume source {src}");
            } else {
                assert!(
                    declared.contains_key(src),
                    "{name}: undeclared volume {src}"
                );
            }
        }
    }
    // What config/init.sh installs, validated.
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc");
    init(&etc);
    let generated = std::fs::read_to_string(etc.join("dr.toml")).unwrap();
    let stack = std::fs::read_to_string(dir.join("config/dr.stack.toml")).unwrap();
    std::fs::write(
        etc.join("dr.toml"),
        format!(
            "state_dir = \"{}\"\n{generated}{stack}",
            tmp.path().join("state").display()
        ),
    )
    .unwrap();
    copy_all(&dir.join("config/policies"), &etc.join("policies"));
    copy_all(
        &dir.join("config/restore-drills"),
        &etc.join("restore-drills"),
    );
    std::fs::write(etc.join("tokens.toml"), "").unwrap();
    std::fs::set_permissions(
        etc.join("tokens.toml"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    validate(
        &etc,
        &[("PG_MAIN_DSN", "host=x"), ("REDIS_BACKUP_PASSWORD", "x")],
    );
    for script in [
        "config/init.sh",
        "garage/init.sh",
        "postgres/init-replication.sh",
    ] {
        let out = std::process::Command::new("sh")
            .arg("-n")
            .arg(dir.join(script))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn helm_chart_has_the_resources_and_security_settings_and_its_config_validates() {
    let dir = root().join("deploy/helm/dr");
    let chart = yaml(&dir.join("Chart.yaml"));
    assert_eq!(chart["name"], "dr");
    let values = yaml(&dir.join("values.yaml"));
    let t = |f: &str| std::fs::read_to_string(dir.join("templates").join(f)).unwrap();
    let deployment = t("deployment.yaml");
    for needle in [
        "kind: Deployment",
        "readOnlyRootFilesystem: true",
        "runAsNonRoot: true",
        "defaultMode: 0400",
        "chmod 0400",
        "resources:",
        "path: /healthz",
        "path: /readyz",
        "serviceAccountName",
    ] {
        assert!(deployment.contains(needle), "deployment lacks {needle}");
    }
    for (file, kind) in [
        ("serviceaccount.yaml", "kind: ServiceAccount"),
        ("serviceaccount.yaml", "kind: Role"),
        ("serviceaccount.yaml", "coordination.k8s.io"),
        ("configmap.yaml", "kind: ConfigMap"),
        ("service.yaml", "kind: Service"),
        ("pdb.yaml", "kind: PodDisruptionBudget"),
        ("servicemonitor.yaml", "kind: ServiceMonitor"),
    ] {
        assert!(t(file).contains(kind), "{file}");
    }
    yaml(&dir.join("examples/postgres-sidecar.yaml"));

    // The ConfigMap's dr.toml, rendered by hand with the secrets in a temp dir.
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path();
    init(&etc.join("gen"));
    let secrets = etc.join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for (from, to) in [
        ("restore.key", "restore.key"),
        ("chunk-id.key", "chunk-id.key"),
        ("drill-signing.key", "drill-signing.key"),
    ] {
        std::fs::copy(etc.join("gen/keys").join(from), secrets.join(to)).unwrap();
    }
    std::fs::write(secrets.join("tokens.toml"), "").unwrap();
    std::fs::write(secrets.join("pg-main.conninfo"), "host=x").unwrap();
    for f in std::fs::read_dir(&secrets).unwrap() {
        std::fs::set_permissions(
            f.unwrap().path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o400),
        )
        .unwrap();
    }
    let recipients: Vec<String> = values["recipients"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| format!("\"{}\"", r.as_str().unwrap()))
        .collect();
    let config = format!(
        "policies_dir = \"policies\"\ndrills_dir = \"restore-drills\"\n{}\n[keys]\nrecipients = [{}]\nidentity_file = \"/etc/dr/secrets/restore.key\"\nchunk_id_key_file = \"/etc/dr/secrets/chunk-id.key\"\nsigning_key_file = \"/etc/dr/secrets/drill-signing.key\"\n",
        values["config"].as_str().unwrap(),
        recipients.join(", ")
    )
    .replace("/etc/dr/secrets", secrets.to_str().unwrap())
    .replace("/var/lib/dr/state", etc.join("state").to_str().unwrap());
    std::fs::write(etc.join("dr.toml"), config).unwrap();
    for (key, sub) in [("policies", "policies"), ("drills", "restore-drills")] {
        std::fs::create_dir(etc.join(sub)).unwrap();
        for (name, text) in values[key].as_mapping().unwrap() {
            let text = text
                .as_str()
                .unwrap()
                .replace("/etc/dr/secrets", secrets.to_str().unwrap());
            std::fs::write(etc.join(sub).join(name.as_str().unwrap()), text).unwrap();
        }
    }
    validate(etc, &[]);
}

/// `/metrics` for a status with one of everything: a PostgreSQL policy with its WAL, a
/// replica, a drill, a worker, a repository.
fn scrape_of_everything() -> String {
    use dr::daemon::status::{
        DaemonStatus, DrillStatus, PolicyStatus, ReplicaStatus, WalStatus, WorkerStatus,
    };
    let now = Some(chrono::Utc::now());
    let mut s = DaemonStatus {
        started: now,
        active: true,
        ..DaemonStatus::default()
    };
    s.policies.insert(
        "pg".to_owned(),
        PolicyStatus {
            last_success: now,
            last_failure: now,
            last_duration_seconds: Some(1.0),
            next_run: now,
            schedule_interval_seconds: Some(3600.0),
            backups_ok: 2,
            bytes_stored_total: 10,
            snapshots: [("local".to_owned(), 2)].into(),
            wal: Some(WalStatus {
                lag_seconds: Some(1.0),
                lag_bytes: Some(0),
                archive_failures: Some(1),
                stream: Some(dr::ops::wal_stream::StreamStatus {
                    state: "streaming".to_owned(),
                    lag_bytes: Some(0),
                    lag_seconds: Some(0.5),
                    slot_state: Some(dr::source::postgres::receivewal::SlotState {
                        active: true,
                        retained_bytes: Some(1 << 20),
                        ..Default::default()
                    }),
                    max_lag_bytes: 1 << 30,
                    ..Default::default()
                }),
                ..WalStatus::default()
            }),
            ..PolicyStatus::default()
        },
    );
    s.replicas.insert(
        "replica".to_owned(),
        ReplicaStatus {
            lag_seconds: Some(1.0),
            ..ReplicaStatus::default()
        },
    );
    s.drills.insert(
        "d".to_owned(),
        DrillStatus {
            last_verdict: Some(dr::drill::report::Verdict::Pass),
            last_trusted: Some(true),
            last_run: now,
            rto_seconds: Some(1.0),
            rpo_seconds: Some(1.0),
            ..DrillStatus::default()
        },
    );
    s.workers
        .insert("retention".to_owned(), WorkerStatus::default());
    s.repositories.insert("local".to_owned(), 100);
    dr::api::metrics::render_classic(&s)
}

/// The sample names of a scrape (`dr_backup_runs_total`, not its family `dr_backup_runs`).
fn sample_names(scrape: &str) -> std::collections::BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Every `dr_*` name in a PromQL expression.
fn metrics_in(expr: &str) -> impl Iterator<Item = &str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("dr_"))
}

/// `promtool` (Debian's `prometheus` package), or a failure naming what to install.
pub(crate) fn promtool() -> std::process::Command {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "promtool not found: apt-get install -y prometheus (it ships promtool)"
    );
    std::process::Command::new("promtool")
}

/// `promtool check metrics` of a scrape: its lint findings, empty when clean.
pub(crate) fn promtool_lint(scrape: &str) -> String {
    use std::io::Write;
    let mut child = promtool()
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        String::new()
    } else {
        text
    }
}

#[test]
fn metrics_are_promtool_clean_and_alerts_and_dashboard_use_exported_series() {
    let scrape = scrape_of_everything();
    assert_eq!(promtool_lint(&scrape), "", "{scrape}");
    let names = sample_names(&scrape);
    for counter in [
        "dr_backup_runs_total",
        "dr_backup_stored_bytes_total",
        "dr_wal_archive_failures_total",
    ] {
        assert!(names.contains(counter), "{counter} in {names:?}");
    }
    for gauge in [
        "dr_snapshots",
        "dr_repository_size_bytes",
        "dr_backup_last_failure_timestamp_seconds",
    ] {
        assert!(names.contains(gauge), "{gauge} in {names:?}");
    }

    let path = root().join("deploy/prometheus/alerts.yaml");
    let check = promtool()
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let rules = yaml(&path);
    let mut n = 0;
    for r in rules["groups"][0]["rules"].as_sequence().unwrap() {
        let expr = r["expr"].as_str().unwrap();
        assert!(metrics_in(expr).next().is_some(), "{expr}");
        for m in metrics_in(expr) {
            assert!(
                names.contains(m),
                "alert uses {m}, which /metrics does not export"
            );
        }
        n += 1;
    }
    assert!(n >= 6);

    let text = std::fs::read_to_string(root().join("deploy/grafana/dr.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            for m in metrics_in(t["expr"].as_str().unwrap()) {
                assert!(names.contains(m), "panel {} uses {m}", p["title"]);
            }
        }
    }
}
