//! Qdrant: backup, restore with `priority=snapshot`, rename, and a drill against a real
//! server when `DR_TEST_QDRANT_BIN` (a qdrant binary, started here) or `DR_TEST_QDRANT_URL`
//! (a running server) is set; Qdrant is not installable from the package registries here, so
//! otherwise these print a SKIP line. Configuration and unreachable-server errors are tested
//! always.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::dr::DrEnv;
use crate::harness::{free_port, wait_until};

struct Qdrant {
    url: String,
    _child: Option<ChildGuard>,
    _dir: Option<tempfile::TempDir>,
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qdrant() -> Option<Qdrant> {
    if let Ok(url) = std::env::var("DR_TEST_QDRANT_URL") {
        return Some(Qdrant {
            url,
            _child: None,
            _dir: None,
        });
    }
    let Ok(bin) = std::env::var("DR_TEST_QDRANT_BIN") else {
        eprintln!(
            "SKIP qdrant: set DR_TEST_QDRANT_BIN (a qdrant binary) or DR_TEST_QDRANT_URL to run the Qdrant tests"
        );
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let (http, grpc) = (free_port(), free_port());
    let p = |s: &str| dir.path().join(s).display().to_string();
    let child = Command::new(bin)
        .env("QDRANT__SERVICE__HOST", "127.0.0.1")
        .env("QDRANT__SERVICE__HTTP_PORT", http.to_string())
        .env("QDRANT__SERVICE__GRPC_PORT", grpc.to_string())
        .env("QDRANT__STORAGE__STORAGE_PATH", p("storage"))
        .env("QDRANT__STORAGE__SNAPSHOTS_PATH", p("snapshots"))
        .env("QDRANT__STORAGE__TEMP_PATH", p("tmp"))
        .env("QDRANT__TELEMETRY_DISABLED", "true")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting DR_TEST_QDRANT_BIN");
    let url = format!("http://127.0.0.1:{http}");
    wait_until("qdrant", Duration::from_secs(60), || {
        crate::harness::http::request(http, "GET", "/readyz", None).is_some_and(|r| r.status == 200)
    });
    Some(Qdrant {
        url,
        _child: Some(ChildGuard(child)),
        _dir: Some(dir),
    })
}

fn rest(url: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let rt = crate::harness::rt();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let mut r = c.request(method.parse().unwrap(), format!("{url}{path}"));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        resp.json::<Value>().await.unwrap_or(Value::Null)
    })
}

fn top5(url: &str, c: &str, v: &[f32]) -> Value {
    let r = rest(
        url,
        "POST",
        &format!("/collections/{c}/points/query"),
        Some(json!({ "query": v, "limit": 5 })),
    );
    let pts = r["result"]["points"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    json!(pts.iter().map(|p| p["id"].clone()).collect::<Vec<_>>())
}

fn count(url: &str, c: &str) -> u64 {
    rest(
        url,
        "POST",
        &format!("/collections/{c}/points/count"),
        Some(json!({ "exact": true })),
    )["result"]["count"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn qdrant_backup_restore_rename_and_drill() {
    let Some(q) = qdrant() else { return };
    let c = format!("docs_{}", rand::random::<u32>());
    rest(
        &q.url,
        "PUT",
        &format!("/collections/{c}"),
        Some(json!({ "vectors": { "size": 16, "distance": "Cosine" } })),
    );
    let vecs: Vec<Vec<f32>> = (0..300)
        .map(|i| {
            (0..16)
                .map(|j| (((i * 31 + j * 7) % 97) as f32 / 97.0) - 0.5)
                .collect()
        })
        .collect();
    let points: Vec<Value> = vecs
        .iter()
        .enumerate()
        .map(|(i, v)| json!({ "id": i + 1, "vector": v, "payload": { "i": i } }))
        .collect();
    rest(
        &q.url,
        "PUT",
        &format!("/collections/{c}/points?wait=true"),
        Some(json!({ "points": points })),
    );
    let want = top5(&q.url, &c, &vecs[7]);

    let env = DrEnv::new();
    env.policy(
        "vectors",
        &format!("source = {{ type = \"qdrant\", url = \"{}\", collections = [\"{c}\"] }}\ntargets = [\"local\"]\nrpo = \"1h\"\n", q.url),
    );
    let b = env.json(&["backup", "--policy", "vectors"]);
    assert!(b["bytes_read"].as_u64().unwrap() > 10_000, "{b}");
    // The server-side snapshot is deleted after the download.
    wait_until("snapshot cleanup", Duration::from_secs(10), || {
        rest(&q.url, "GET", &format!("/collections/{c}/snapshots"), None)["result"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });

    rest(&q.url, "DELETE", &format!("/collections/{c}"), None);
    let stage = env.path("stage");
    env.ok(&[
        "restore",
        "--policy",
        "vectors",
        "--target-dir",
        stage.to_str().unwrap(),
        "--qdrant-url",
        &q.url,
    ]);
    assert_eq!(count(&q.url, &c), 300);
    assert_eq!(top5(&q.url, &c, &vecs[7]), want);

    // The RUNBOOK's commands: restore one collection under a new name.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/RUNBOOK.md")).unwrap();
    let blocks = crate::runbook::tested_blocks(&text, "tested-qdrant");
    assert!(!blocks.is_empty());
    let stage2 = env.path("stage2");
    crate::runbook::run_blocks(
        &blocks,
        &[
            ("DR_CONFIG", env.config.to_str().unwrap()),
            ("POLICY", "vectors"),
            ("RESTORE_DIR", stage2.to_str().unwrap()),
            ("QDRANT_URL", &q.url),
            ("COLLECTION", &c),
        ],
    );
    assert_eq!(count(&q.url, &format!("{c}_restored")), 300);

    std::fs::write(
        env.setup().join("restore-drills/vectors-drill.toml"),
        format!(
            "policy = \"vectors\"\n[sandbox]\nqdrant_url = \"{}\"\n",
            q.url
        ),
    )
    .unwrap();
    let out = env.run(&["drill", "run", "vectors-drill", "--json"]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["verdict"], "pass", "{r:#}");
    let collections = rest(&q.url, "GET", "/collections", None).to_string();
    assert!(
        !collections.contains("dr_drill_"),
        "scratch collection left: {collections}"
    );
}

#[test]
fn qdrant_configuration_and_unreachable_server_errors() {
    let env = DrEnv::new();
    env.policy(
        "vectors",
        "source = { type = \"qdrant\", url = \"http://key:secret@qdrant:6333\" }\ntargets = [\"local\"]\n",
    );
    std::fs::write(
        env.setup().join("restore-drills/v.toml"),
        "policy = \"vectors\"\n",
    )
    .unwrap();
    let out = env.fails(&["validate"], 2);
    assert!(
        out.contains("source.url") && out.contains("no credentials in the URL"),
        "{out}"
    );
    assert!(out.contains("sandbox.qdrant_url"), "{out}");
    assert!(!out.contains("secret@"), "{out}");

    let port = free_port();
    env.policy(
        "vectors",
        &format!("source = {{ type = \"qdrant\", url = \"http://127.0.0.1:{port}\" }}\ntargets = [\"local\"]\n"),
    );
    std::fs::remove_file(env.setup().join("restore-drills/v.toml")).unwrap();
    let out = env.fails(&["backup", "--policy", "vectors"], 1);
    assert!(out.contains("qdrant GET /"), "{out}");
    assert!(
        env.json(&["snapshots", "--policy", "vectors"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}
