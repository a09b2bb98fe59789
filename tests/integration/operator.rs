//! Operator tools against real repositories: `dr info`, browsing (`ls`, `find`, `diff`,
//! `dump`), snapshot selectors, partial restores.

use crate::harness::dr::DrEnv;
use crate::harness::tree;

/// `dr info` names every policy with its snapshots and replica state, and a broken policy file
/// by its key path instead of stopping at it (exit 3 so that scripts notice).
#[test]
fn info_shows_policies_replicas_and_broken_files() {
    let mut env = DrEnv::new();
    env.add_storage(
        "\n[storage.replica]\ntype = \"local\"\npath = \"repo-replica\"\n",
        vec![],
    );
    let data = env.path("data");
    tree::make(&data, 2);
    env.files_policy("app", &data, &["local", "replica"]);
    env.ok(&["backup", "--policy", "app"]);
    env.ok(&["replicate", "--policy", "app"]);
    std::fs::write(data.join("new.txt"), "second").unwrap();
    env.ok(&["backup", "--policy", "app"]);
    env.policy(
        "typo",
        "source = { type = \"files\", path = \"/srv\" }\ntargets = [\"nowhere\"]\nschedule = \"every tuesday\"\n",
    );

    let out = env.run(&["info", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let app = &info["policies"][0];
    assert_eq!(app["id"], "app", "{info}");
    assert_eq!(app["snapshots"], 2, "{info}");
    assert!(
        app["newest"]["bytes_read"].as_u64().unwrap() > 1 << 20,
        "{info}"
    );
    assert!(
        app["newest"]["bytes_stored"].as_u64() < app["oldest"]["bytes_stored"].as_u64(),
        "{info}"
    );
    assert!(
        app["repository_bytes"].as_u64().unwrap() >= app["bytes_stored"].as_u64().unwrap(),
        "{info}"
    );
    let replica = &app["replicas"][0];
    assert_eq!(replica["target"], "replica", "{info}");
    assert_eq!(
        (replica["snapshots"].as_u64(), replica["missing"].as_u64()),
        (Some(1), Some(1)),
        "{info}"
    );
    assert_eq!(replica["newest"], app["oldest"]["id"], "{info}");
    let broken = info["broken"].as_array().unwrap();
    assert_eq!(broken.len(), 1, "{info}");
    assert!(
        broken[0]["file"].as_str().unwrap().ends_with("typo.toml"),
        "{info}"
    );
    let errors = broken[0]["errors"].to_string();
    assert!(
        errors.contains("targets") && errors.contains("schedule"),
        "{errors}"
    );

    // The text form says the same; one policy alone ignores the broken file.
    let text = String::from_utf8(env.run(&["info"]).stdout).unwrap();
    assert!(text.contains("app (files) -> local, replica"), "{text}");
    assert!(
        text.contains("replica replica: 1 snapshots, 1 missing"),
        "{text}"
    );
    assert!(
        text.contains("BROKEN") && text.contains("typo.toml"),
        "{text}"
    );
    env.ok(&["replicate", "--policy", "app"]);
    let one = env.json(&["info", "--policy", "app"]);
    assert_eq!(one["policies"][0]["replicas"][0]["missing"], 0, "{one}");
    assert_eq!(one["policies"][0]["replicas"][0]["lag_seconds"], 0, "{one}");
    assert_eq!(one["broken"].as_array().map(Vec::len), Some(0), "{one}");
}

/// `dr ls` lists a snapshot from its manifest: everything, one subtree, long format with kinds
/// and sizes, JSON lines; a name with a newline stays on one line.
#[test]
fn ls_lists_a_snapshot_and_a_subtree() {
    let (env, _data) = backed_up_tree();

    let all = env.ok(&["ls", "--policy", "app", "latest"]);
    assert!(all.lines().any(|l| l == "nested/log.txt"), "{all}");
    assert!(all.lines().any(|l| l == "new\\nline"), "{all}");
    assert!(all.contains("link-to-log -> nested/log.txt"), "{all}");

    let sub = env.ok(&["ls", "--policy", "app", "latest", "nested/deeper/", "-l"]);
    let lines: Vec<&str> = sub.lines().collect();
    // The directory itself, zeros.img, deepest/ and its 50 files.
    assert_eq!(lines.len(), 53, "{sub}");
    assert!(lines.iter().all(|l| l.contains(" nested/deeper")), "{sub}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('d') && l.ends_with(" nested/deeper/deepest")),
        "{sub}"
    );
    assert!(!sub.contains("nested/log.txt"), "{sub}");

    let json = env.ok(&["ls", "--policy", "app", "latest", "read-only.txt", "--json"]);
    let entries = json_lines(&json);
    assert_eq!(entries.len(), 1, "{json}");
    assert_eq!(entries[0]["mode"], "444", "{json}");
    assert_eq!(entries[0]["size"], 9, "{json}");
    assert_eq!(
        entries[0]["blake3"],
        blake3::hash(b"read only").to_hex().as_str(),
        "{json}"
    );
    let none = env.ok(&["ls", "--policy", "app", "latest", "no/such/path"]);
    assert!(none.is_empty(), "{none}");
}

/// `dr find`, `dr diff`, `dr dump` and snapshot selectors on two snapshots of a tree; a
/// partial restore takes what --include names, minus --exclude, with the directories above.
#[test]
fn find_diff_dump_and_partial_restore() {
    let (env, data) = backed_up_tree();
    std::fs::write(data.join("nested/log.txt"), "rewritten").unwrap();
    std::fs::remove_file(data.join("empty")).unwrap();
    std::fs::write(data.join("nested/deeper/added.cfg"), "new file").unwrap();
    std::fs::set_permissions(
        data.join("read-only.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o400),
    )
    .unwrap();
    env.ok(&["backup", "--policy", "app"]);
    let ids: Vec<String> = env
        .json(&["snapshots", "--policy", "app"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2);

    // Selectors: latest~1 is the first; the hash part alone works; a prefix both share is
    // ambiguous (exit 2, both listed).
    let hash = ids[0].rsplit_once('-').unwrap().1;
    let first = env.ok(&["ls", "--policy", "app", hash, "empty"]);
    assert_eq!(first.trim(), "empty", "{first}");
    let again = env.ok(&["ls", "--policy", "app", "latest~1", "empty"]);
    assert_eq!(again.trim(), "empty", "{again}");
    let out = env.fails(&["ls", "--policy", "app", "20"], 2);
    assert!(
        out.contains(&ids[0]) && out.contains(&ids[1]) && out.contains("matches 2 snapshots"),
        "{out}"
    );

    let diff = env.ok(&["diff", "--policy", "app", "latest~1", "latest"]);
    assert!(
        diff.lines().any(|l| l.starts_with("M nested/log.txt")),
        "{diff}"
    );
    assert!(diff.lines().any(|l| l.starts_with("- empty")), "{diff}");
    assert!(
        diff.lines()
            .any(|l| l.starts_with("+ nested/deeper/added.cfg")),
        "{diff}"
    );
    assert!(diff.contains("1 added (8 B), 1 removed (0 B), "), "{diff}");
    assert!(!diff.contains("U read-only.txt"), "{diff}");
    let json = env.ok(&[
        "diff",
        "--policy",
        "app",
        ids[0].as_str(),
        "latest",
        "--metadata",
        "--json",
    ]);
    let lines = json_lines(&json);
    assert!(
        lines
            .iter()
            .any(|l| l["change"] == "U" && l["name"] == "read-only.txt"),
        "{json}"
    );
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(
        (summary["added"].as_u64(), summary["removed"].as_u64()),
        (Some(1), Some(1)),
        "{json}"
    );

    let found = env.ok(&["find", "--policy", "app", "added.cfg"]);
    assert!(
        found.contains(&ids[1]) && !found.contains(&ids[0]),
        "{found}"
    );
    assert!(
        found.contains("1 of 2 snapshots searched hold a match"),
        "{found}"
    );
    let found = env.ok(&["find", "--policy", "app", "nested/*.txt", "--json"]);
    assert_eq!(found.lines().count(), 2, "{found}");

    // dump: bytes as they were in each snapshot, large files too; a directory is refused.
    let old = env.run(&["dump", "--policy", "app", "latest~1", "nested/log.txt"]);
    assert!(
        old.status.success(),
        "{}",
        String::from_utf8_lossy(&old.stderr)
    );
    assert!(old.stdout.len() > 100_000, "{}", old.stdout.len());
    let new = env.run(&["dump", "--policy", "app", "latest", "/nested/log.txt"]);
    assert_eq!(new.stdout, b"rewritten");
    let big = env.run(&["dump", "--policy", "app", "latest", "random.bin"]);
    assert_eq!(big.stdout, std::fs::read(data.join("random.bin")).unwrap());
    let out = env.fails(&["dump", "--policy", "app", "latest", "nested"], 1);
    assert!(
        out.contains("no file `nested` (it is a directory)"),
        "{out}"
    );

    // A dry run of a partial restore counts what it would write, and writes nothing.
    let target = env.path("partial");
    let plan = env.json(&[
        "restore",
        "--policy",
        "app",
        "--target-dir",
        target.to_str().unwrap(),
        "--include",
        "nested/deeper/deepest",
        "--dry-run",
    ]);
    // `.`, nested, nested/deeper, deepest and its 50 files.
    assert_eq!(plan["artifacts"], 54, "{plan}");
    assert_eq!(plan["target_state"], "missing", "{plan}");
    assert!(!target.exists());
    let text = env.ok(&[
        "restore",
        "--policy",
        "app",
        "--target-dir",
        target.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(
        text.contains("Dry run: nothing was written") && text.contains(&ids[1]),
        "{text}"
    );
    assert!(!target.exists());

    // Partial restore.
    env.ok(&[
        "restore",
        "--policy",
        "app",
        "--target-dir",
        target.to_str().unwrap(),
        "--include",
        "nested/deeper",
        "--include",
        "link-to-log",
        "--exclude",
        "small-00?.cfg",
    ]);
    let mut got: Vec<String> = walk(&target);
    got.sort();
    assert!(
        got.contains(&"nested/deeper/added.cfg".to_owned()),
        "{got:?}"
    );
    assert!(
        got.contains(&"nested/deeper/deepest/small-010.cfg".to_owned()),
        "{got:?}"
    );
    assert!(got.contains(&"link-to-log".to_owned()), "{got:?}");
    assert!(!got.iter().any(|p| p.contains("small-009")), "{got:?}");
    assert!(
        !got.iter()
            .any(|p| p == "nested/log.txt" || p == "random.bin"),
        "{got:?}"
    );
    assert_eq!(
        std::fs::read(target.join("nested/deeper/zeros.img")).unwrap(),
        std::fs::read(data.join("nested/deeper/zeros.img")).unwrap()
    );
    let out = env.fails(
        &[
            "restore",
            "--policy",
            "app",
            "--target-dir",
            env.path("bad").to_str().unwrap(),
            "--include",
            "a[b",
        ],
        2,
    );
    assert!(out.contains("`a[b` is not a valid glob"), "{out}");
}

/// Every path under `root` (files, directories, symlinks), relative to it.
fn walk(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// A files policy `app` over a 2 MiB test tree, backed up once.
fn backed_up_tree() -> (DrEnv, std::path::PathBuf) {
    let env = DrEnv::new();
    let data = env.path("data");
    tree::make(&data, 2);
    env.files_policy("app", &data, &["local"]);
    env.ok(&["backup", "--policy", "app"]);
    (env, data)
}

/// Output of a `--json` command that prints one object per line.
fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Without a terminal, a long job logs progress lines (JSON fields with --log-format json); a
/// restore and a backup both know their total (a backup sizes its tree beside the walk), so
/// their lines carry percent and ETA.
#[test]
fn progress_lines_without_a_terminal() {
    let (env, data) = backed_up_tree();
    let last_progress_line = |args: &[&str]| {
        let mut all = vec!["--log-format", "json"];
        all.extend(args);
        let out = env
            .cmd(&all)
            .env("DR_PROGRESS_INTERVAL_MS", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .rfind(|v| v["target"] == "dr::progress")
            .unwrap_or_else(|| panic!("no progress line: {stderr}"))
    };
    let target = env.path("r");
    let last = last_progress_line(&[
        "restore",
        "--policy",
        "app",
        "--target-dir",
        target.to_str().unwrap(),
    ]);
    let f = &last["fields"];
    assert_eq!(f["job"], "restore", "{last}");
    assert!(f["total"].as_u64().unwrap() > 1 << 20, "{last}");
    assert!(
        f["percent"].as_f64().is_some() && f["bytes_per_second"].as_u64().is_some(),
        "{last}"
    );

    let (mut tree_bytes, mut dirs) = (0, vec![data.clone()]);
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                dirs.push(e.path());
            } else if m.is_file() {
                tree_bytes += m.len();
            }
        }
    }
    let last = last_progress_line(&["backup", "--policy", "app"]);
    let f = &last["fields"];
    assert_eq!(f["job"], "backup", "{last}");
    assert_eq!(f["total"].as_u64(), Some(tree_bytes), "{last}");
    assert!(f["eta_seconds"].as_u64().is_some(), "{last}");
}

/// `--delta` brings a directory that holds an older, tampered-with copy to the snapshot: files
/// already right are kept, a changed file gets only its changed chunks, strays are removed,
/// links and directories in the way are replaced (never written through).
#[test]
fn delta_restore_brings_an_old_copy_up_to_the_snapshot() {
    use std::os::unix::fs::MetadataExt;
    // Big enough that the 5 MiB random file is several chunks.
    let env = DrEnv::new();
    let data = env.path("data");
    tree::make(&data, 12);
    env.files_policy("app", &data, &["local"]);
    env.ok(&["backup", "--policy", "app"]);
    let copy = env.path("copy");
    let target = copy.to_str().unwrap();
    env.ok(&["restore", "--policy", "app", "--target-dir", target]);

    // The source moves on: a few bytes in the middle of the big file, a rewritten file, one
    // removed, one added, a symlink that became a directory and a directory that became a file.
    let big = data.join("random.bin");
    let mut bytes = std::fs::read(&big).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 16].copy_from_slice(b"changed 16 bytes");
    std::fs::write(&big, &bytes).unwrap();
    std::fs::write(data.join("nested/log.txt"), "rewritten").unwrap();
    std::fs::remove_file(data.join("nested/deeper/deepest/small-003.cfg")).unwrap();
    std::fs::write(data.join("nested/added.cfg"), "added").unwrap();
    std::fs::remove_file(data.join("link-to-log")).unwrap();
    std::fs::create_dir(data.join("link-to-log")).unwrap();
    std::fs::write(data.join("link-to-log/inside"), "now a directory").unwrap();
    std::fs::remove_dir(data.join("empty-dir")).unwrap();
    std::fs::write(data.join("empty-dir"), "now a file").unwrap();
    env.ok(&["backup", "--policy", "app"]);

    // The copy diverged too, in the ways a hostile or careless hand would leave it.
    let outside = env.path("outside.txt");
    std::fs::write(&outside, "must stay").unwrap();
    std::fs::write(copy.join("stray.txt"), "not in any snapshot").unwrap();
    std::fs::create_dir_all(copy.join("stray-dir/sub")).unwrap();
    std::fs::write(copy.join("stray-dir/sub/f"), "x").unwrap();
    std::fs::remove_file(copy.join("read-only.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, copy.join("read-only.txt")).unwrap();
    std::fs::remove_file(copy.join("-leading-dash")).unwrap();
    std::fs::hard_link(&outside, copy.join("-leading-dash")).unwrap();
    std::fs::set_permissions(
        copy.join("nested/log.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o400),
    )
    .unwrap();
    std::fs::write(
        copy.join("nested/run.sh"),
        "#!/bin/sh\necho changed, longer than before\n",
    )
    .unwrap();

    let delta = || {
        env.json(&[
            "restore",
            "--policy",
            "app",
            "--target-dir",
            target,
            "--delta",
        ])
    };
    let out = delta();
    assert_eq!(tree::diff(&data, &copy), Vec::<String>::new(), "{out}");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "must stay");
    assert_eq!(std::fs::metadata(&outside).unwrap().nlink(), 1);
    // stray.txt, stray-dir, small-003.cfg, and the symlink and directory whose names the
    // snapshot has as a directory and a file.
    assert_eq!(out["removed"], 5, "{out}");
    let (reused, written) = (
        out["reused"].as_u64().unwrap(),
        out["bytes"].as_u64().unwrap(),
    );
    // Most of the big file and the other files stay; what is written is the chunk around
    // the changed bytes, the files that changed and the files in place of the links.
    assert!(reused > bytes.len() as u64 / 2, "{out}");
    assert!(written < bytes.len() as u64 / 2, "{out}");

    // Run again: nothing left to write.
    let again = delta();
    assert_eq!(
        (again["bytes"].as_u64(), again["removed"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );
    assert_eq!(tree::diff(&data, &copy), Vec::<String>::new());

    // Whole-directory semantics only (no --include beside it: clap, exit 2); PostgreSQL's
    // options are refused for a files policy (exit 2).
    for (extra, says) in [
        (&["--delta", "--include", "nested"][..], "--include"),
        (
            &["--db-include", "shop"],
            "database selections (--db-include) apply to postgres policies only",
        ),
    ] {
        let mut args = vec!["restore", "--policy", "app", "--target-dir", target];
        args.extend(extra);
        let out = env.fails(&args, 2);
        assert!(out.contains(says), "{extra:?}: {out}");
    }
}
