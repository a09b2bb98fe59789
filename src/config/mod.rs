//! Configuration: `dr.toml` plus one `policies/<id>.toml` per policy (docs/ARCHITECTURE.md §2).
//!
//! Loading runs in phases: [`raw`] mirrors the files with serde (unknown keys are errors),
//! [`validate`] turns them into the types in [`types`], collecting **every** problem with its
//! file and dotted key path. Nothing here touches the network.

pub mod raw;
pub mod schedule;
pub mod types;
pub mod units;
mod validate;

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use schedule::Schedule;
pub use types::*;

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file it is in.
    pub file: PathBuf,
    /// Dotted key path (`retention.weekly`), empty for whole-file problems.
    pub key: String,
    /// What is wrong, and what to do where that helps.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// All problems found in a configuration; exit code 2.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl crate::error::Classify for ConfigErrors {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Usage
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "invalid configuration ({n} error{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for (i, e) in self.0.iter().enumerate() {
            if i + 1 == n {
                write!(f, "  {e}")?
            } else {
                writeln!(f, "  {e}")?
            }
        }
        Ok(())
    }
}

/// Refuses a secret file that is missing (when `required`) or readable by group or others.
///
/// # Errors
/// A message naming the file and the fix.
pub fn check_secret_file(path: &Path, required: bool) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err(format!("{} is not a regular file", path.display())),
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                Err(format!(
                    "{} is readable by group or others (mode {mode:04o}); run `chmod 600 {}`",
                    path.display(),
                    path.display()
                ))
            } else {
                Ok(())
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Parses TOML into `T`, and the errors found on the way. Every unknown key is reported (with
/// its key path, its line and the nearest known key: "did you mean `weekly`?") and the file
/// parsed again without it, so that one typo does not hide the rest of the file's errors (the
/// value, when it then parses, is validated as usual); any other parse error ends it.
fn parse_toml<T: DeserializeOwned>(file: &Path, text: &str) -> (Option<T>, Vec<ConfigError>) {
    match parse_toml_inner(file, text) {
        Ok((v, errors)) => (Some(v), errors),
        Err(errors) => (None, errors),
    }
}

fn parse_toml_inner<T: DeserializeOwned>(
    file: &Path,
    text: &str,
) -> Result<(T, Vec<ConfigError>), Vec<ConfigError>> {
    let error = |key: String, msg: String, line: Option<usize>| ConfigError {
        file: file.to_path_buf(),
        key: if key == "." { String::new() } else { key },
        message: match line {
            Some(l) => format!("{msg} (line {l})"),
            None => msg,
        },
    };
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let first = serde_path_to_error::deserialize(toml::Deserializer::new(text));
    let e = match first {
        Ok(v) => return Ok((v, Vec::new())),
        Err(e) => e,
    };
    let path = e.path().to_string();
    let inner = e.into_inner();
    let msg = inner.message().trim().to_owned();
    let mut errors = vec![error(
        path.clone(),
        with_suggestion(&msg),
        inner.span().map(|s| line_of(s.start)),
    )];
    let Some(field) = unknown_field(&msg) else {
        return Err(errors);
    };
    // The text parsed as TOML (only the schema refused it): drop each unknown key in turn.
    let mut table: toml::Table = toml::from_str(text).map_err(|_| errors.clone())?;
    let (mut path, mut field) = (path, field.to_owned());
    for _ in 0..64 {
        if !remove_key(&mut table, &path, &field) {
            break;
        }
        match serde_path_to_error::deserialize(toml::Value::Table(table.clone())) {
            Ok(v) => return Ok((v, errors)),
            Err(e) => {
                let p = e.path().to_string();
                let msg = e.into_inner().message().trim().to_owned();
                let Some(f) = unknown_field(&msg) else {
                    errors.push(error(p, with_suggestion(&msg), None));
                    return Err(errors);
                };
                // Where the key is written: its first `key =` in the text.
                let line = text
                    .match_indices(f)
                    .find(|(i, _)| text[i + f.len()..].trim_start().starts_with('='))
                    .map(|(i, _)| line_of(i));
                errors.push(error(p.clone(), with_suggestion(&msg), line));
                (path, field) = (p, f.to_owned());
            }
        }
    }
    Err(errors)
}

/// `unknown field `x`, expected one of …` → `x`.
fn unknown_field(msg: &str) -> Option<&str> {
    Some(msg.strip_prefix("unknown field `")?.split_once('`')?.0)
}

/// The `quoted` words of a serde message.
fn backquoted(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// serde's "unknown field/variant `x`, expected one of …" with the nearest expected name.
fn with_suggestion(msg: &str) -> String {
    let Some(rest) = msg
        .strip_prefix("unknown field `")
        .or_else(|| msg.strip_prefix("unknown variant `"))
    else {
        return msg.to_owned();
    };
    let Some((got, tail)) = rest.split_once('`') else {
        return msg.to_owned();
    };
    let best = backquoted(tail)
        .into_iter()
        .map(|c| (strsim::jaro_winkler(got, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, c)) => format!("{msg}; did you mean `{c}`?"),
        None => msg.to_owned(),
    }
}

/// Removes `field` from the table at key path `path` (serde_path_to_error's, which ends with
/// the field itself for a plain table, and at the table for a tagged one such as `source`).
fn remove_key(root: &mut toml::Table, path: &str, field: &str) -> bool {
    let mut parts: Vec<&str> = if path == "." || path.is_empty() {
        Vec::new()
    } else {
        path.split('.').collect()
    };
    if parts.last() == Some(&field) {
        parts.pop();
    }
    let mut t = root;
    for p in parts {
        // `tier[1]`: an element of an array of tables.
        let (name, index) = match p.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (p, None),
        };
        let v = match (t.get_mut(name), index) {
            (Some(v), None) => v,
            (Some(toml::Value::Array(a)), Some(i)) => match a.get_mut(i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
        match v {
            toml::Value::Table(inner) => t = inner,
            _ => return false,
        }
    }
    t.remove(field).is_some()
}

/// Calls `f(id, file, text, errors)` for each `*.toml` in `dir`, in name order, after checking
/// the file stem is a valid id. A missing folder is an error only when `required`.
fn for_each_file(
    dir: &Path,
    required: bool,
    only: Option<&str>,
    all: &mut Vec<ConfigError>,
    mut f: impl FnMut(PolicyId, &Path, &str, &mut validate::Errors<'_>),
) {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return,
        Err(e) => {
            all.push(ConfigError {
                file: dir.to_path_buf(),
                key: String::new(),
                message: format!("cannot read the folder: {e}"),
            });
            return;
        }
        Ok(entries) => entries,
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| only.is_none_or(|o| p.file_stem().is_some_and(|s| s == o)))
        .collect();
    files.sort();
    for file in files {
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let mut errs = validate::Errors::new(&file);
        match (PolicyId::parse(&stem), std::fs::read_to_string(&file)) {
            (Err(e), _) => errs.push("", e),
            (_, Err(e)) => errs.push("", format!("cannot read: {e}")),
            (Ok(id), Ok(text)) => f(id, &file, &text, &mut errs),
        }
        all.extend(errs.list);
    }
}

/// What [`load_scoped`] reads, for commands that concern one policy.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// `dr.toml` and this policy's file only (`wal-push`, `wal-fetch`: PostgreSQL calls them
    /// per segment, and a typo in another policy must not stop WAL archiving).
    Only(&'a str),
    /// Everything, but only errors in `dr.toml` and this policy's file are fatal; the others
    /// come back as warnings (`backup`, `restore`, `snapshots` of one policy).
    Focus(&'a str),
    /// Everything; only errors in `dr.toml` are fatal, each broken policy or drill file comes
    /// back as errors (`info`, which names broken policies instead of stopping at them).
    All,
}

/// Loads `dr.toml` and the policies (and drills) `scope` asks for. Returns the configuration
/// and the errors found outside the scope (policies and drills with them are left out).
///
/// # Errors
/// Every error in `dr.toml` or the scoped policy's file.
pub fn load_scoped(
    path: &Path,
    scope: Scope<'_>,
) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
    let (id, only) = match scope {
        Scope::Only(id) => (Some(id), true),
        Scope::Focus(id) => (Some(id), false),
        Scope::All => (None, false),
    };
    let (config, all) = load_files(path, id.filter(|_| only), !only)?;
    let fatal = |e: &ConfigError| {
        e.file == config.path
            || id.is_some_and(|id| {
                e.file.parent() == Some(config.policies_dir.as_path())
                    && e.file.file_stem().is_some_and(|s| s == id)
            })
    };
    let (fatal, warnings): (Vec<_>, Vec<_>) = all.into_iter().partition(fatal);
    if fatal.is_empty() {
        Ok((config, warnings))
    } else {
        Err(ConfigErrors(fatal))
    }
}

/// Loads and validates `dr.toml`, every policy file and every drill file.
///
/// # Errors
/// Every problem found, each with file and key path.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let (config, all) = load_files(path, None, true)?;
    if all.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(all))
    }
}

/// `dr.toml` (returned at once when it cannot be parsed at all), then the policy files (only
/// `only`'s, when given) and the drill files (when `drills`), with every error found in any.
fn load_files(
    path: &Path,
    only: Option<&str>,
    drills: bool,
) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
    // Relative paths in the files are relative to dr.toml; make that independent of the cwd.
    let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            message: format!("cannot read: {e} (create one with `dr init --dir DIR`)"),
        }])
    })?;
    let (raw, mut all) = parse_toml::<raw::DrConfig>(path, &text);
    let Some(raw) = raw else {
        return Err(ConfigErrors(all));
    };
    let mut errs = validate::Errors::new(path);
    let mut config = validate::validate_main(path, raw, &mut errs);
    all.extend(errs.list);

    let policies_dir = config.policies_dir.clone();
    for_each_file(
        &policies_dir,
        true,
        only,
        &mut all,
        |id, file, text, errs| {
            let (raw, parse_errors) = parse_toml::<raw::PolicyConfig>(file, text);
            errs.list.extend(parse_errors);
            if let Some(raw) = raw {
                let policy = validate::validate_policy(id.clone(), file, raw, &config, errs);
                config.policies.insert(id, policy);
            }
        },
    );
    if !drills {
        return Ok((config, all));
    }
    let groups_dir = config.groups_dir.clone();
    let mut groups = std::collections::BTreeMap::new();
    for_each_file(
        &groups_dir,
        false,
        None,
        &mut all,
        |id, file, text, errs| {
            let (raw, parse_errors) = parse_toml::<raw::GroupConfig>(file, text);
            errs.list.extend(parse_errors);
            if let Some(raw) = raw
                && let Some(g) = validate::validate_group(id.as_str(), file, raw, &config, errs)
            {
                groups.insert(g.id.clone(), g);
            }
        },
    );
    config.groups = groups;
    let drills_dir = config.drills_dir.clone();
    let mut drills = std::collections::BTreeMap::new();
    for_each_file(
        &drills_dir,
        false,
        None,
        &mut all,
        |id, file, text, errs| {
            let (raw, parse_errors) = parse_toml::<raw::DrillConfig>(file, text);
            errs.list.extend(parse_errors);
            if let Some(raw) = raw
                && let Some(d) = validate::validate_drill(id.as_str(), file, raw, &config, errs)
            {
                drills.insert(d.name.clone(), d);
            }
        },
    );
    config.drills = drills;
    Ok((config, all))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;

    const RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    struct Setup {
        dir: tempfile::TempDir,
    }

    impl Setup {
        fn new(main_extra: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("policies")).unwrap();
            let key = dir.path().join("chunk.key");
            std::fs::write(&key, "00".repeat(32)).unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::write(
                dir.path().join("dr.toml"),
                format!(
                    "[keys]\nrecipients = [\"{RECIPIENT}\"]\nchunk_id_key_file = \"chunk.key\"\n\n[storage.local]\ntype = \"local\"\npath = \"repo\"\n{main_extra}"
                ),
            )
            .unwrap();
            Self { dir }
        }

        fn policy(&self, name: &str, text: &str) -> &Self {
            std::fs::write(
                self.dir
                    .path()
                    .join("policies")
                    .join(format!("{name}.toml")),
                text,
            )
            .unwrap();
            self
        }

        fn load(&self) -> Result<Config, ConfigErrors> {
            load(&self.dir.path().join("dr.toml"))
        }

        /// The single error's `key: message`.
        fn error(&self) -> (String, String) {
            let errs = self.load().expect_err("config should be invalid").0;
            assert_eq!(errs.len(), 1, "{errs:?}");
            (errs[0].key.clone(), errs[0].message.clone())
        }
    }

    const MINIMAL: &str =
        "source = { type = \"files\", path = \"/srv/data\" }\ntargets = [\"local\"]\n";

    #[test]
    fn every_unknown_key_and_every_other_error_is_reported_at_once_with_suggestions() {
        let s = Setup::new("");
        s.policy(
            "p",
            "source = { type = \"files\", path = \"/x\", pth = 1 }\ntargets = [\"local\"]\nschedul = \"0 2 * * *\"\ncompression = 42\n[retention]\nwekly = 2\ndaily = 3\n[[retention.tier]]\nafter = \"30d\"\nstorage_class = \"GLACIER\"\noly = []\n",
        );
        let errs = s.load().expect_err("invalid").0;
        let got: Vec<(&str, &str)> = errs
            .iter()
            .map(|e| (e.key.as_str(), e.message.as_str()))
            .collect();
        let has = |key: &str, text: &str| got.iter().any(|(k, m)| *k == key && m.contains(text));
        assert!(has("source", "unknown field `pth`"), "{got:#?}");
        assert!(
            has("schedul", "did you mean `schedule`? (line 3)"),
            "{got:#?}"
        );
        assert!(
            has("retention.wekly", "did you mean `weekly`? (line 6)"),
            "{got:#?}"
        );
        assert!(
            has("retention.tier[0].oly", "did you mean `only`? (line 11)"),
            "{got:#?}"
        );
        // Validation still runs on what is left.
        assert!(has("compression", "out of range"), "{got:#?}");
        assert_eq!(got.len(), 5, "{got:#?}");
    }

    #[test]
    fn sandbox_maps_postgres_majors_to_directories() {
        let s = Setup::new("[sandbox]\npostgres = { 17 = \"pg17/bin\", 18 = \"/opt/pg18/bin\" }\n");
        s.policy("app-files", MINIMAL);
        let c = s.load().unwrap();
        assert_eq!(c.sandbox.postgres[&17], s.dir.path().join("pg17/bin"));
        assert_eq!(
            c.sandbox.postgres[&18],
            std::path::Path::new("/opt/pg18/bin")
        );
        let s = Setup::new("[sandbox]\npostgres = { seventeen = \"/x\" }\n");
        s.policy("app-files", MINIMAL);
        let (key, message) = s.error();
        assert_eq!(key, "sandbox.postgres.seventeen");
        assert!(message.contains("not a PostgreSQL major"), "{message}");
    }

    #[test]
    fn minimal_policy_gets_defaults() {
        let s = Setup::new("");
        s.policy("app-files", MINIMAL);
        let c = s.load().unwrap();
        let p = c.policy("app-files").unwrap();
        assert_eq!(p.schedule.expr(), "0 2 * * *");
        assert_eq!(p.compression, 3);
        assert_eq!(
            (p.retention.daily, p.retention.weekly, p.retention.monthly),
            (30, 12, 12)
        );
        assert_eq!(c.pipeline.pack_size, 16 << 20);
        assert!(
            matches!(&c.storage["local"], StorageTarget::Local { path } if path.ends_with("repo"))
        );
    }

    #[test]
    fn wal_settings_have_defaults_ranges_and_belong_to_postgres() {
        let s = Setup::new("");
        s.policy(
            "pg",
            "source = { type = \"postgres\", conninfo_env = \"X\", data_dir = \"/srv/pg\" }\ntargets = [\"local\"]\n",
        );
        let c = s.load().unwrap();
        assert_eq!(c.policy("pg").unwrap().compression, 1, "pages: level 1");
        let w = c.policy("pg").unwrap().wal.clone();
        assert!(w.push_parallel >= 2);
        assert_eq!((w.push_ahead, w.fetch_ahead), (8 * w.push_parallel, 32));
        s.policy(
            "pg",
            "source = { type = \"postgres\", conninfo_env = \"X\", data_dir = \"/srv/pg\" }\ntargets = [\"local\"]\n[wal]\npush_parallel = 3\npush_ahead = 0\nfetch_ahead = 64\n",
        );
        let w = s.load().unwrap().policy("pg").unwrap().wal.clone();
        assert_eq!((w.push_parallel, w.push_ahead, w.fetch_ahead), (3, 0, 64));
        s.policy(
            "pg",
            "source = { type = \"postgres\", conninfo_env = \"X\", data_dir = \"/srv/pg\" }\ntargets = [\"local\"]\n[wal]\npush_parallel = 0\n",
        );
        assert_eq!(s.error().0, "wal.push_parallel");
        s.policy("pg", &format!("{MINIMAL}[wal]\nfetch_ahead = 8\n"));
        assert_eq!(s.error().0, "wal");
    }

    #[test]
    fn wal_stream_has_a_slot_flush_and_lag_and_its_keys_need_it() {
        let s = Setup::new("");
        let pg = "source = { type = \"postgres\", conninfo_env = \"X\", data_dir = \"/srv/pg\" }\ntargets = [\"local\"]\n";
        s.policy("pg-main", &format!("{pg}[wal]\nstream = true\n"));
        let c = s.load().unwrap();
        let st = c.policy("pg-main").unwrap().wal.stream.clone().unwrap();
        assert_eq!(st.slot, "dr_pg_main");
        assert_eq!((st.flush, st.max_lag), (Duration::from_secs(5), 1 << 30));
        assert_eq!(
            c.policy("pg-main").unwrap().wal.push_ahead,
            8 * c.policy("pg-main").unwrap().wal.push_parallel
        );
        std::fs::remove_file(s.dir.path().join("policies/pg-main.toml")).unwrap();
        s.policy(
            "pg",
            &format!("{pg}[wal]\nstream = true\nslot = \"s1\"\nstream_flush = \"1s\"\nstream_max_lag = \"64MiB\"\n"),
        );
        let st = s
            .load()
            .unwrap()
            .policy("pg")
            .unwrap()
            .wal
            .stream
            .clone()
            .unwrap();
        assert_eq!(
            (st.slot.as_str(), st.flush, st.max_lag),
            ("s1", Duration::from_secs(1), 64 << 20)
        );
        for (text, key) in [
            ("stream = true\nslot = \"Bad-Slot\"\n", "wal.slot"),
            ("stream = true\nstream_flush = \"0s\"\n", "wal.stream_flush"),
            (
                "stream = true\nstream_max_lag = \"lots\"\n",
                "wal.stream_max_lag",
            ),
            ("slot = \"s1\"\n", "wal.slot"),
            (
                "stream = false\nstream_flush = \"5s\"\n",
                "wal.stream_flush",
            ),
        ] {
            s.policy("pg", &format!("{pg}[wal]\n{text}"));
            assert_eq!(s.error().0, key, "{text}");
        }
    }

    #[test]
    fn unknown_key_in_policy_names_the_key() {
        let s = Setup::new("");
        s.policy(
            "p",
            &format!("{MINIMAL}[retention]\ndaily = 3\nweeky = 2\n"),
        );
        let (key, msg) = s.error();
        assert_eq!(key, "retention.weeky");
        assert!(msg.contains("unknown field `weeky`"), "{msg}");
    }

    #[test]
    fn unknown_key_in_each_tagged_variant_is_rejected() {
        let s = Setup::new("");
        s.policy(
            "p",
            "source = { type = \"files\", path = \"/x\", pth = 1 }\ntargets = [\"local\"]\n",
        );
        let (key, msg) = s.error();
        assert_eq!(key, "source");
        assert!(msg.contains("unknown field `pth`"), "{msg}");

        let s = Setup::new("[storage.eu]\ntype = \"s3\"\nbucket = \"b\"\nregoin = \"x\"\n");
        let (key, msg) = s.error();
        assert_eq!(key, "storage.eu");
        assert!(msg.contains("unknown field `regoin`"), "{msg}");

        let s = Setup::new("[storage.disk]\ntype = \"local\"\npath = \"x\"\nextra = 1\n");
        assert!(s.error().1.contains("unknown field `extra`"));
    }

    #[test]
    fn all_semantic_errors_are_collected_with_paths() {
        let s = Setup::new("");
        s.policy(
            "p",
            "source = { type = \"files\", path = \"relative\" }\ntargets = [\"nowhere\"]\nschedule = \"0 25 * * *\"\nrpo = \"5 minutes\"\ncompression = 42\ntimezone = \"Mars/Base\"\n[retention]\ndaily = 3\nwal_window = \"14\"\n",
        );
        let errs = s.load().unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        for want in [
            "source.path",
            "targets[0]",
            "schedule",
            "rpo",
            "compression",
            "timezone",
            "retention.wal_window",
        ] {
            assert!(keys.contains(&want), "missing {want} in {keys:?}");
        }
        assert!(errs.iter().all(|e| e.file.ends_with("policies/p.toml")));
        let rpo = errs.iter().find(|e| e.key == "rpo").unwrap();
        assert!(
            rpo.message.contains("15m"),
            "error lists accepted forms: {}",
            rpo.message
        );
        let text = ConfigErrors(errs).to_string();
        assert!(text.contains("policies/p.toml: rpo: "), "{text}");
    }

    #[test]
    fn bad_cron_is_reported() {
        let s = Setup::new("");
        s.policy("p", &format!("{MINIMAL}schedule = \"every day\"\n"));
        let (key, msg) = s.error();
        assert_eq!(key, "schedule");
        assert!(msg.contains("fields"), "{msg}");
    }

    #[test]
    fn world_readable_keys_are_refused() {
        let s = Setup::new("");
        s.policy("p", MINIMAL);
        std::fs::set_permissions(
            s.dir.path().join("chunk.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let (key, msg) = s.error();
        assert_eq!(key, "keys.chunk_id_key_file");
        assert!(msg.contains("chmod 600"), "{msg}");
    }

    #[test]
    fn missing_chunk_key_and_missing_dr_toml() {
        let s = Setup::new("");
        std::fs::remove_file(s.dir.path().join("chunk.key")).unwrap();
        assert_eq!(s.error().0, "keys.chunk_id_key_file");
        let errs = load(Path::new("/nonexistent/dr.toml")).unwrap_err();
        assert!(errs.to_string().contains("dr init"), "{errs}");
    }

    #[test]
    fn bad_policy_file_name_and_units() {
        let s = Setup::new("[pipeline]\npack_size = \"16MB!\"\n");
        s.policy("Bad Name", MINIMAL);
        let errs = s.load().unwrap_err().0;
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().any(|e| e.key == "pipeline.pack_size"));
        assert!(errs.iter().any(|e| e.message.contains("policy id")));
    }

    #[test]
    fn toml_syntax_error_has_line() {
        let s = Setup::new("");
        s.policy(
            "p",
            "source = { type = \"files\", path = \"/x\" }\ntargets = [\"local\"\n",
        );
        let (_, msg) = s.error();
        assert!(msg.contains("line"), "{msg}");
    }
}
