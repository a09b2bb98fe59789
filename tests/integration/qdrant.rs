//! Qdrant: backup, restore with `priority=snapshot`, rename, and a drill against a real
//! server when `DR_TEST_QDRANT_BIN` (a qdrant binary, started here) or `DR_TEST_QDRANT_URL`
//! (a running server) is set; Qdrant is not installable from the package registries here, so
//! otherwise these print a SKIP line. Configuration and unreachable-server errors are tested
//! always.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::dr::DrEnv;
use crate::harness::{Server, free_port, wait_until};

/// A Qdrant to test against: one started here (kept alive by `_server`) or `DR_TEST_QDRANT_URL`.
struct Qdrant {
    url: String,
    _server: Option<(Server, tempfile::TempDir)>,
}

fn skip_line() {
    eprintln!(
        "SKIP qdrant: set DR_TEST_QDRANT_BIN (a qdrant binary) or DR_TEST_QDRANT_URL to run the Qdrant tests"
    );
}

fn qdrant() -> Option<Qdrant> {
    if let Ok(url) = std::env::var("DR_TEST_QDRANT_URL") {
        return Some(Qdrant { url, _server: None });
    }
    let Ok(bin) = std::env::var("DR_TEST_QDRANT_BIN") else {
        skip_line();
        return None;
    };
    Some(start(&bin, None))
}

/// Starts `bin` on free ports with its storage in a temp dir; `cluster` = (this peer's p2p
/// port, the first peer's p2p port to join, if not the first).
fn start(bin: &str, cluster: Option<(u16, Option<u16>)>) -> Qdrant {
    let dir = tempfile::tempdir().unwrap();
    let (http, grpc) = (free_port(), free_port());
    let p = |s: &str| dir.path().join(s).display().to_string();
    let mut cmd: Vec<String> = vec![
        "env".into(),
        "-C".into(),
        p(""),
        "QDRANT__SERVICE__HOST=127.0.0.1".into(),
        format!("QDRANT__SERVICE__HTTP_PORT={http}"),
        format!("QDRANT__SERVICE__GRPC_PORT={grpc}"),
        format!("QDRANT__STORAGE__STORAGE_PATH={}", p("storage")),
        format!("QDRANT__STORAGE__SNAPSHOTS_PATH={}", p("snapshots")),
        format!("QDRANT__STORAGE__TEMP_PATH={}", p("tmp")),
        "QDRANT__TELEMETRY_DISABLED=true".into(),
    ];
    if let Some((p2p, _)) = cluster {
        cmd.push("QDRANT__CLUSTER__ENABLED=true".into());
        cmd.push(format!("QDRANT__CLUSTER__P2P__PORT={p2p}"));
    }
    cmd.push(bin.to_owned());
    cmd.push("--disable-telemetry".into());
    if let Some((p2p, join)) = cluster {
        cmd.extend(["--uri".into(), format!("http://127.0.0.1:{p2p}")]);
        if let Some(first) = join {
            cmd.extend(["--bootstrap".into(), format!("http://127.0.0.1:{first}")]);
        }
    }
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let server = Server::spawn(&args, &dir.path().join("qdrant.log"));
    server.wait_ready("qdrant", Duration::from_secs(60), || {
        crate::harness::http::request(http, "GET", "/readyz", None).is_some_and(|r| r.status == 200)
    });
    Qdrant {
        url: format!("http://127.0.0.1:{http}"),
        _server: Some((server, dir)),
    }
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

/// A deterministic pseudo-random vector of `dim` components for point `i` (splitmix64): no two
/// points share a vector, so top-k results have no ties to order differently after a restore.
fn vector(i: usize, dim: usize, salt: usize) -> Vec<f32> {
    (0..dim)
        .map(|j| {
            let mut z =
                ((i * 64 + j) as u64 ^ ((salt as u64) << 48)).wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Creates collection `c` and upserts `n` points in batches: unnamed 16-d vectors (`named` =
/// false, with a keyword payload index on `group`) or named `text` (8-d) and `image` (4-d).
fn fill(url: &str, c: &str, n: usize, named: bool, shards: Option<(u32, u32)>) {
    let mut spec = if named {
        json!({ "vectors": {
            "text": { "size": 8, "distance": "Dot" },
            "image": { "size": 4, "distance": "Euclid" }
        }})
    } else {
        json!({ "vectors": { "size": 16, "distance": "Cosine" } })
    };
    if let Some((shard_number, replication_factor)) = shards {
        spec["shard_number"] = json!(shard_number);
        spec["replication_factor"] = json!(replication_factor);
    }
    let r = rest(url, "PUT", &format!("/collections/{c}"), Some(spec));
    assert_eq!(r["result"], true, "{r}");
    if !named {
        let r = rest(
            url,
            "PUT",
            &format!("/collections/{c}/index?wait=true"),
            Some(json!({ "field_name": "group", "field_schema": "keyword" })),
        );
        assert_eq!(r["status"], "ok", "{r}");
    }
    for start in (0..n).step_by(1000) {
        let points: Vec<Value> = (start..(start + 1000).min(n))
            .map(|i| {
                let v = if named {
                    json!({ "text": vector(i, 8, 1), "image": vector(i, 4, 2) })
                } else {
                    json!(vector(i, 16, 0))
                };
                json!({ "id": i + 1, "vector": v, "payload": { "i": i, "group": format!("g{}", i % 7) } })
            })
            .collect();
        let r = rest(
            url,
            "PUT",
            &format!("/collections/{c}/points?wait=true"),
            Some(json!({ "points": points })),
        );
        assert_eq!(r["status"], "ok", "{r}");
    }
}

/// What a collection answers: exact count, a few points' payloads, top-5 ids of some searches.
fn fingerprint(url: &str, c: &str, named: bool) -> Value {
    let count = rest(
        url,
        "POST",
        &format!("/collections/{c}/points/count"),
        Some(json!({ "exact": true })),
    )["result"]["count"]
        .clone();
    // By id: a sharded collection answers in no particular order.
    let mut payloads: Vec<Value> = rest(
        url,
        "POST",
        &format!("/collections/{c}/points"),
        Some(json!({ "ids": [1, 777, 12_345, 19_999], "with_payload": true })),
    )["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    payloads.sort_by_key(|p| p["id"].as_u64());
    assert_eq!(payloads.len(), 4, "{payloads:?}");
    let top: Vec<Value> = [7usize, 4242, 20_001]
        .iter()
        .map(|&i| {
            let q = if named {
                json!({ "query": vector(i, 8, 1), "using": "text", "limit": 5 })
            } else {
                json!({ "query": vector(i, 16, 0), "limit": 5 })
            };
            let r = rest(
                url,
                "POST",
                &format!("/collections/{c}/points/query"),
                Some(q),
            );
            json!(
                r["result"]["points"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| p["id"].clone())
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    json!({ "count": count, "payloads": payloads, "top": top })
}

fn restore_args<'a>(stage: &'a Path, url: &'a str) -> Vec<&'a str> {
    vec![
        "restore",
        "--policy",
        "vectors",
        "--target-dir",
        stage.to_str().unwrap(),
        "--qdrant-url",
        url,
    ]
}

#[test]
fn qdrant_backup_restore_rename_and_drill() {
    let Some(q) = qdrant() else { return };
    let tag = rand::random::<u32>();
    let (docs, named) = (format!("docs_{tag}"), format!("named_{tag}"));
    fill(&q.url, &docs, 25_000, false, None);
    fill(&q.url, &named, 25_000, true, None);
    let want = (
        fingerprint(&q.url, &docs, false),
        fingerprint(&q.url, &named, true),
    );
    assert_eq!(want.0["count"], 25_000);

    let env = DrEnv::new();
    env.policy(
        "vectors",
        // snapshot_poll_above = 0: snapshots made with wait=false and polled for (the
        // cluster test below uses the default, one waiting request).
        &format!("source = {{ type = \"qdrant\", url = \"{}\", collections = [\"{docs}\", \"{named}\"], snapshot_poll_above = 0 }}\ntargets = [\"local\"]\nrpo = \"1h\"\n", q.url),
    );
    let b = env.json(&["backup", "--policy", "vectors"]);
    assert!(b["bytes_read"].as_u64().unwrap() > 1_000_000, "{b}");
    // The server-side snapshots are deleted after the download.
    for c in [&docs, &named] {
        wait_until("snapshot cleanup", Duration::from_secs(10), || {
            rest(&q.url, "GET", &format!("/collections/{c}/snapshots"), None)["result"]
                .as_array()
                .is_some_and(Vec::is_empty)
        });
        rest(&q.url, "DELETE", &format!("/collections/{c}"), None);
    }
    let stage = env.path("stage");
    env.ok(&restore_args(&stage, &q.url));
    assert_eq!(fingerprint(&q.url, &docs, false), want.0);
    assert_eq!(fingerprint(&q.url, &named, true), want.1);
    let info = rest(&q.url, "GET", &format!("/collections/{docs}"), None);
    assert_eq!(
        info["result"]["payload_schema"]["group"]["data_type"], "keyword",
        "{info}"
    );

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
            ("COLLECTION", &docs),
        ],
    );
    assert_eq!(
        fingerprint(&q.url, &format!("{docs}_restored"), false),
        want.0
    );

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

/// A three-peer cluster (needs `DR_TEST_QDRANT_BIN`: the harness starts the peers): a
/// collection of 4 shards × 2 replicas is backed up shard by shard, restored into the cluster
/// and into a single node; without the other peers' URLs the backup is refused, not partial.
#[test]
fn qdrant_cluster_is_backed_up_per_shard_and_restored_by_layout() {
    let Ok(bin) = std::env::var("DR_TEST_QDRANT_BIN") else {
        skip_line();
        return;
    };
    let first = free_port();
    let mut peers = vec![start(&bin, Some((first, None)))];
    for _ in 0..2 {
        peers.push(start(&bin, Some((free_port(), Some(first)))));
    }
    let url0 = peers[0].url.clone();
    wait_until("three peers", Duration::from_secs(60), || {
        rest(&url0, "GET", "/cluster", None)["result"]["peers"]
            .as_object()
            .is_some_and(|m| m.len() == 3)
    });
    let c = "sharded";
    fill(&url0, c, 20_000, false, Some((4, 2)));
    let want = fingerprint(&url0, c, false);
    assert_eq!(want["count"], 20_000);

    let env = DrEnv::new();
    let policy = |peers: &str| {
        format!(
            "source = {{ type = \"qdrant\", url = \"{url0}\", collections = [\"{c}\"]{peers} }}\ntargets = [\"local\"]\n"
        )
    };
    // Peer 0 alone holds only some shards: refused with the shards named.
    env.policy("vectors", &policy(""));
    let out = env.fails(&["backup", "--policy", "vectors"], 1);
    assert!(
        out.contains("no active replica on a peer with a known REST URL"),
        "{out}"
    );
    env.policy(
        "vectors",
        &policy(&format!(
            ", peers = [\"{}\", \"{}\"]",
            peers[1].url, peers[2].url
        )),
    );
    env.ok(&["check", "--policy", "vectors"]);
    let b = env.json(&["backup", "--policy", "vectors"]);
    assert!(b["bytes_read"].as_u64().unwrap() > 100_000, "{b}");

    // One file per shard, each shard once.
    let files = env.path("files");
    env.ok(&[
        "restore",
        "--policy",
        "vectors",
        "--target-dir",
        files.to_str().unwrap(),
    ]);
    let mut shards: Vec<String> = std::fs::read_dir(files.join("collections").join(c))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    shards.sort();
    assert_eq!(
        shards,
        [
            "shard-0.snapshot",
            "shard-1.snapshot",
            "shard-2.snapshot",
            "shard-3.snapshot"
        ]
    );

    // Into the same cluster after the collection is gone (peers taken from the policy).
    rest(&url0, "DELETE", &format!("/collections/{c}"), None);
    env.ok(&restore_args(&env.path("stage"), &url0));
    assert_eq!(fingerprint(&url0, c, false), want);
    let layout = rest(&url0, "GET", &format!("/collections/{c}/cluster"), None);
    assert_eq!(layout["result"]["shard_count"], 4, "{layout}");

    // Into a single node: all four shards local there.
    let single = start(&bin, None);
    env.ok(&restore_args(&env.path("stage-single"), &single.url));
    assert_eq!(fingerprint(&single.url, c, false), want);
}

/// The data generator the server tests rely on (checked here, where it always runs): distinct
/// vectors in [-0.5, 0.5), so searches have no ties.
#[test]
fn qdrant_test_vectors_are_distinct() {
    let mut seen = std::collections::HashSet::new();
    for i in 0..25_000 {
        let v = vector(i, 16, 0);
        assert!(v.iter().all(|x| (-0.5..0.5).contains(x)), "{v:?}");
        assert!(seen.insert(v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()));
    }
    assert_ne!(vector(3, 8, 1), vector(3, 8, 2));
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

    env.policy(
        "vectors",
        "source = { type = \"qdrant\", url = \"http://qdrant:6333\", peers = [\"http://qdrant-1:6333\", \"qdrant-2:6333\"] }\ntargets = [\"local\"]\n",
    );
    let out = env.fails(&["validate"], 2);
    assert!(
        out.contains("source.peers[1]")
            && out.contains("`qdrant-2:6333` is not an http:// or https:// URL"),
        "{out}"
    );

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

/// A group of PostgreSQL (a row per point) and Qdrant: a group backup, then a group drill
/// whose cross-store check compares the restored row count with the restored point count;
/// one point deleted from Qdrant only after a second group run makes the check fail.
#[test]
fn qdrant_group_drill_compares_rows_with_points() {
    let Some(q) = qdrant() else { return };
    let docs = format!("gdocs_{}", rand::random::<u32>());
    fill(&q.url, &docs, 500, false, None);
    let s = crate::postgres::setup("local");
    s.pg.psql("create table documents (id int primary key)");
    s.pg.psql("insert into documents select g from generate_series(1, 500) g");
    s.env.ok(&["backup", "--policy", "pg"]);
    s.env.policy(
        "vectors",
        &format!("source = {{ type = \"qdrant\", url = \"{}\", collections = [\"{docs}\"] }}\ntargets = [\"local\"]\n", q.url),
    );
    let groups = s.env.setup().join("groups");
    std::fs::create_dir_all(&groups).unwrap();
    std::fs::write(
        groups.join("app.toml"),
        format!(
            "members = [\"pg\", \"vectors\"]\nmax_skew = \"10m\"\n[[check]]\nname = \"every document has its embedding\"\nleft = {{ policy = \"pg\", sql = \"select count(*) from documents\" }}\nright = {{ policy = \"vectors\", points = \"{docs}\" }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        s.env.setup().join("restore-drills/app-drill.toml"),
        format!(
            "group = \"app\"\nrpo = \"1h\"\n[sandbox]\nqdrant_url = \"{}\"\n",
            q.url
        ),
    )
    .unwrap();
    s.env.ok(&["backup", "--group", "app"]);
    s.pg.switch_and_wait_archived();
    let out = s.env.run(&["drill", "run", "app-drill", "--json"]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["verdict"], "pass", "{r:#}");
    let cross = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "cross-store")
        .cloned()
        .unwrap();
    assert!(
        cross["actual"].as_str().unwrap().starts_with("500 and 500"),
        "{cross}"
    );

    rest(
        &q.url,
        "POST",
        &format!("/collections/{docs}/points/delete?wait=true"),
        Some(json!({ "points": [1] })),
    );
    s.env.ok(&["backup", "--group", "app"]);
    s.pg.switch_and_wait_archived();
    let out = s.env.run(&["drill", "run", "app-drill", "--json"]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["verdict"], "fail", "{r:#}");
    assert!(r["reasons"].to_string().contains("500 and 499"), "{r:#}");
    rest(&q.url, "DELETE", &format!("/collections/{docs}"), None);
}
