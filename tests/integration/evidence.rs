//! Issue 20, item 1: `dr evidence export` gives an auditor a period's evidence that checks out
//! with openssl alone: the commands of VERIFY.md run as written, and one altered byte makes
//! them fail. Missed scheduled drills are listed; reports that are not evidence are kept apart.

use std::path::Path;
use std::process::Command;

use crate::harness::dr::DrEnv;

fn drill(env: &DrEnv, name: &str, text: &str) {
    let dir = env.setup().join("restore-drills");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
}

/// The `sh` blocks of VERIFY.md, in order.
fn sh_blocks(verify_md: &str) -> Vec<String> {
    verify_md
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_owned())
        .collect()
}

/// Runs one block in `dir` with bash: (success, stdout + stderr).
fn run_block(dir: &Path, block: &str) -> (bool, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(block)
        .current_dir(dir)
        .output()
        .expect("bash runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn flip_a_byte(path: &Path) -> Vec<u8> {
    let orig = std::fs::read(path).unwrap();
    let mut bad = orig.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(path, bad).unwrap();
    orig
}

#[test]
fn an_exported_bundle_verifies_with_openssl_alone_and_shows_gaps() {
    let env = DrEnv::new();
    let data = env.path("data");
    crate::harness::tree::make(&data, 1);
    env.files_policy("app", &data, &["local"]);
    let from = chrono::Utc::now() - chrono::Duration::minutes(4);
    env.ok(&["backup", "--policy", "app"]);
    drill(&env, "app-check", "policy = \"app\"\nrpo = \"1h\"\n");
    drill(&env, "app-slow", "policy = \"app\"\nrpo = \"1s\"\n");
    // Scheduled every minute and never run: the closed windows since `from` are missed.
    drill(
        &env,
        "app-minutely",
        "policy = \"app\"\nschedule = \"* * * * *\"\n",
    );
    env.ok(&["drill", "run", "app-check"]);
    // The snapshot is over a second old by now: app-slow misses its RPO objective.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    env.fails(&["drill", "run", "app-slow"], 1);
    // A report that is not evidence: a stored one altered (and given a new id).
    let reports = env.setup().join("repo/drills/app-check");
    let stored = std::fs::read_dir(&reports)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&stored).unwrap();
    let id = stored.file_stem().unwrap().to_str().unwrap().to_owned();
    let forged_id = format!("{}-forged", &id);
    std::fs::write(
        reports.join(format!("{forged_id}.json")),
        // …whose drill name would lead out of the bundle if it were used as a path.
        text.replace(&id, &forged_id)
            .replace("\"drill\": \"app-check\"", "\"drill\": \"../../escaped\""),
    )
    .unwrap();

    let out = env.path("evidence");
    let (from_s, to_s) = (
        from.to_rfc3339(),
        (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339(),
    );
    let args = [
        "evidence",
        "export",
        "--from",
        &from_s,
        "--to",
        &to_s,
        "--out",
        out.to_str().unwrap(),
    ];
    let summary = env.json(&args);
    crate::interfaces::conforms("evidence-export", &summary);
    assert_eq!(summary["reports"], 2, "{summary:#}");
    assert_eq!(summary["passed"], 1, "{summary:#}");
    assert_eq!(summary["untrusted"], 1, "{summary:#}");
    assert_eq!(summary["sums_signed"], true, "{summary:#}");
    assert!(summary["missed_runs"].as_u64().unwrap() >= 2, "{summary:#}");

    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("bundle.json")).unwrap()).unwrap();
    crate::interfaces::conforms("evidence-bundle", &bundle);
    let gaps = bundle["missed"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0]["drill"], "app-minutely");
    assert!(
        !bundle["missed"].to_string().contains("app-check"),
        "an on-demand drill is never missed"
    );
    let policy_page = std::fs::read_to_string(out.join("policies/app/index.html")).unwrap();
    assert!(
        policy_page.contains("<tr class=missed><td class=bad>app-minutely"),
        "{policy_page}"
    );
    assert!(policy_page.contains("verdict-fail") && policy_page.contains("verdict-pass"));
    assert!(policy_page.contains("Recovery time (RTO)") && policy_page.contains("<svg"));
    assert!(
        policy_page.contains(&forged_id),
        "the untrusted report is listed apart"
    );
    let audit = std::fs::read_to_string(out.join("audit/events.jsonl")).unwrap();
    assert!(
        audit.contains("drill.run") && audit.contains("app-slow"),
        "{audit}"
    );
    for r in bundle["reports"].as_array().unwrap() {
        for k in ["json", "signature", "signed", "html", "signer_key"] {
            assert!(out.join(r[k].as_str().unwrap()).is_file(), "{k} of {r}");
        }
        assert_eq!(
            std::fs::metadata(out.join(r["signature"].as_str().unwrap()))
                .unwrap()
                .len(),
            64
        );
    }
    // The .signed file is what `dr drill verify-report` takes.
    let signed = out.join(bundle["reports"][0]["signed"].as_str().unwrap());
    env.ok(&["drill", "verify-report", signed.to_str().unwrap()]);

    // VERIFY.md, run as written.
    let verify = std::fs::read_to_string(out.join("VERIFY.md")).unwrap();
    let blocks = sh_blocks(&verify);
    assert_eq!(blocks.len(), 3, "keys, reports, sums:\n{verify}");
    for b in &blocks {
        assert!(b.contains("openssl"), "every block uses openssl:\n{b}");
        let (ok, said) = run_block(&out, b);
        assert!(ok, "{b}\n{said}");
    }
    let (_, said) = run_block(&out, &blocks[1]);
    assert_eq!(
        said.matches("Signature Verified Successfully").count(),
        2,
        "{said}"
    );
    let pubkey = run_block(&out, &blocks[0]).1;
    let signer = bundle["signers"][0].as_str().unwrap();
    let hexdump: String = pubkey
        .lines()
        .filter(|l| l.starts_with("    "))
        .flat_map(|l| l.trim().split(':'))
        .filter(|h| !h.is_empty())
        .collect();
    assert_eq!(
        hexdump, signer,
        "the pub: lines are the trusted key:\n{pubkey}"
    );

    // One altered byte of a report: its openssl check fails, and so does the file list.
    let report = out.join(bundle["reports"][0]["json"].as_str().unwrap());
    let orig = flip_a_byte(&report);
    let (ok, said) = run_block(&out, &blocks[1]);
    assert!(
        !ok && said.contains("Signature Verification Failure"),
        "{said}"
    );
    assert!(!run_block(&out, &blocks[2]).0);
    std::fs::write(&report, orig).unwrap();
    // One altered byte of the audit log (not signed itself): the signed file list catches it.
    let events = out.join("audit/events.jsonl");
    let orig = flip_a_byte(&events);
    let (ok, said) = run_block(&out, &blocks[2]);
    assert!(!ok && said.contains("FAILED"), "{said}");
    std::fs::write(&events, orig).unwrap();
    // And a changed SHA256SUMS does not pass its signature.
    let sums = out.join("SHA256SUMS");
    let orig = std::fs::read_to_string(&sums).unwrap();
    std::fs::write(
        &sums,
        orig.replacen("audit/events.jsonl", "audit/./events.jsonl", 1),
    )
    .unwrap();
    let (ok, said) = run_block(&out, &blocks[2]);
    assert!(
        !ok && said.contains("Signature Verification Failure"),
        "{said}"
    );
    std::fs::write(&sums, orig).unwrap();

    // The forged name stayed inside the bundle.
    assert!(!env.path("escaped").exists() && !out.join("../escaped").exists());
    assert!(
        out.join("untrusted/.._.._escaped").is_dir(),
        "{:?}",
        std::fs::read_dir(out.join("untrusted"))
            .unwrap()
            .collect::<Vec<_>>()
    );
    // The archive holds the same bundle under its name.
    let tar = Command::new("tar")
        .arg("tzf")
        .arg(env.path("evidence.tar.gz"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&tar.stdout);
    assert!(
        tar.status.success()
            && listing.contains("evidence/VERIFY.md")
            && listing.contains("evidence/SHA256SUMS.sig"),
        "{listing}"
    );

    // The export is in the audit log; an existing directory and an empty period are refused.
    let events = env.ok(&["audit"]);
    assert!(events.contains("evidence.export"), "{events}");
    let said = env.fails(&args, 2);
    assert!(said.contains("exists"), "{said}");
    let back = env.path("other");
    let said = env.fails(
        &[
            "evidence",
            "export",
            "--from",
            "2026-12-02",
            "--to",
            "2026-12-01",
            "--out",
            back.to_str().unwrap(),
        ],
        2,
    );
    assert!(said.contains("is not before"), "{said}");
    assert!(!back.exists());
}
