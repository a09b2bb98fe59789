//! Runs every ```` ```bash tested ```` block of RUNBOOK.md, in order, against a real
//! repository, with `dr` on PATH and the runbook's variables set.

use crate::harness::dr::{DrEnv, bin};
use crate::harness::tree;

/// The tested blocks of the runbook.
fn tested_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match (&mut cur, line.trim_end()) {
            (None, "```bash tested") => cur = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn runbook_commands_work() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/RUNBOOK.md")).unwrap();
    let blocks = tested_blocks(&text);
    assert!(blocks.len() >= 4, "the runbook lost its tested blocks");
    let env = DrEnv::new();
    let data = env.path("data");
    tree::make(&data, 4);
    env.files_policy("app-files", &data, &["local"]);
    env.ok(&["backup", "--policy", "app-files"]);
    let bin_dir = std::path::Path::new(bin()).parent().unwrap();
    let restore_dir = env.path("restore");
    for (i, block) in blocks.iter().enumerate() {
        let out = std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", block])
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin_dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("DR_CONFIG", &env.config)
            .env("POLICY", "app-files")
            .env("RESTORE_DIR", &restore_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "RUNBOOK.md tested block {i} failed:\n{block}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(tree::diff(&data, &restore_dir), Vec::<String>::new());
}
