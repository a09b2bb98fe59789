//! Runs the built `dr` binary against a throwaway setup made by `dr init`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A `dr init` setup in a temp dir plus extra env vars for S3 credentials.
pub struct DrEnv {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    env: Vec<(String, String)>,
}

/// The `dr` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dr")
}

impl DrEnv {
    /// `dr init` into a fresh temp dir.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let setup = dir.path().join("setup");
        let out = Command::new(bin())
            .args(["init", "--dir"])
            .arg(&setup)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dr init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            config: setup.join("dr.toml"),
            dir,
            env: Vec::new(),
        }
    }

    /// The setup directory (holding dr.toml, keys/, policies/, repo/).
    pub fn setup(&self) -> PathBuf {
        self.config.parent().unwrap().to_path_buf()
    }

    /// A scratch path inside the temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Appends to dr.toml and remembers env vars for every later command.
    pub fn add_storage(&mut self, toml: &str, env: Vec<(String, String)>) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(toml);
        std::fs::write(&self.config, text).unwrap();
        self.env.extend(env);
    }

    /// Writes `policies/<name>.toml`.
    pub fn policy(&self, name: &str, text: &str) {
        std::fs::write(
            self.setup().join("policies").join(format!("{name}.toml")),
            text,
        )
        .unwrap();
    }

    /// A `files` policy backing up `dir` to `targets`.
    pub fn files_policy(&self, name: &str, dir: &Path, targets: &[&str]) {
        let t: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        self.policy(
            name,
            &format!(
                "source = {{ type = \"files\", path = \"{}\" }}\ntargets = [{}]\n",
                dir.display(),
                t.join(", ")
            ),
        );
    }

    /// The command, ready to run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_at(&self.config, args)
    }

    /// The command with another dr.toml (sharing this setup's keys and credentials).
    pub fn cmd_at(&self, config: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("-c")
            .arg(config)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Runs `dr -c CONFIG args…`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and asserts exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "dr {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and asserts the exit code; returns stdout + stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "dr {args:?} should exit {code}:\n{text}"
        );
        assert!(!text.contains("panicked"), "dr {args:?} panicked:\n{text}");
        text
    }

    /// Runs with `--json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}
