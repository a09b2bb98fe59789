//! Finding the PostgreSQL program that fits a cluster's major version.
//!
//! A server only starts a data directory of its own major, and `pg_basebackup` streams only
//! from servers up to its own: a program is therefore taken only when its `--version` says it
//! fits. Candidates, in order: the directories given (`[sandbox] postgres` of `dr.toml` for the
//! major, the policy's `source.bin_dir`), Debian's `/usr/lib/postgresql/<major>/bin`, then
//! `PATH`. A restore of a 17 backup on a host with only 15 on its PATH therefore fails before
//! anything starts, naming what to install, instead of a server that refuses the directory.

use std::path::{Path, PathBuf};

use crate::source::SourceError;

/// Which versions of a program will do for a cluster of some major version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fits {
    /// The same major (servers, `pg_ctl`, `initdb`).
    Exact,
    /// That major or newer (`pg_basebackup`).
    AtLeast,
    /// Any, the same major preferred (`psql` for plain queries).
    Any,
}

impl Fits {
    fn accepts(self, have: i32, want: i32) -> bool {
        match self {
            Self::Exact => have == want,
            Self::AtLeast => have >= want,
            Self::Any => true,
        }
    }
}

/// The major version a PostgreSQL program reports (`pg_ctl (PostgreSQL) 17.10` → 17).
pub fn program_major(program: &Path) -> Option<i32> {
    let out = std::process::Command::new(program)
        .arg("--version")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .ok()?;
    parse_major(&String::from_utf8_lossy(&out.stdout))
}

fn parse_major(version_line: &str) -> Option<i32> {
    let rest = version_line.split("(PostgreSQL)").nth(1)?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Finds `name` for a cluster of `major` (see the module docs for the order and [`Fits`]).
///
/// # Errors
/// [`SourceError::ToolMissing`] naming what was found, what to install and the `[sandbox]`
/// setting that points dr at it.
pub fn find(name: &str, dirs: &[PathBuf], major: i32, fits: Fits) -> Result<PathBuf, SourceError> {
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut seen: Vec<(PathBuf, Option<i32>)> = Vec::new();
    let candidates = dirs
        .iter()
        .cloned()
        .chain(std::iter::once(debian))
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .filter(|p| p.is_file());
    for p in candidates {
        if seen.iter().any(|(s, _)| *s == p) {
            continue;
        }
        let have = program_major(&p);
        if have == Some(major) {
            return Ok(p);
        }
        seen.push((p, have));
    }
    if let Some((p, _)) = seen
        .iter()
        .find(|(_, have)| have.is_some_and(|h| fits.accepts(h, major)))
    {
        return Ok(p.clone());
    }
    let found: Vec<String> = seen
        .iter()
        .map(|(p, have)| match have {
            Some(h) => format!("{} is PostgreSQL {h}", p.display()),
            None => format!("{} does not say its version", p.display()),
        })
        .collect();
    Err(SourceError::ToolMissing {
        tool: format!(
            "{name} of PostgreSQL {major}{}",
            if found.is_empty() {
                String::new()
            } else {
                format!(" (found only: {})", found.join("; "))
            }
        ),
        install: format!(
            "install PostgreSQL {major} (Debian: postgresql-{major}), or name its bin directory in dr.toml: [sandbox] postgres = {{ {major} = \"DIR\" }}"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_lines_of_every_packaging_give_the_major() {
        assert_eq!(parse_major("pg_ctl (PostgreSQL) 17.10\n"), Some(17));
        assert_eq!(
            parse_major("psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 18beta1"), Some(18));
        assert_eq!(parse_major("pg_ctl (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("something else 1.0"), None);
    }

    #[test]
    fn a_program_of_another_major_is_not_taken_and_the_error_says_what_to_do() {
        // A fake pg_ctl that says it is 15, in a directory given first.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("pg_ctl");
        std::fs::write(&fake, "#!/bin/sh\necho 'pg_ctl (PostgreSQL) 15.4'\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let dirs = [dir.path().to_path_buf()];
        assert_eq!(find("pg_ctl", &dirs, 15, Fits::Exact).unwrap(), fake);
        let e = find("pg_ctl", &dirs, 93, Fits::Exact)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pg_ctl of PostgreSQL 93"), "{e}");
        assert!(
            e.contains(&format!("{} is PostgreSQL 15", fake.display())),
            "{e}"
        );
        assert!(e.contains("[sandbox] postgres = { 93 = \"DIR\" }"), "{e}");
        // psql of any version does for plain queries; pg_basebackup of a newer major too.
        let psql = dir.path().join("psql");
        std::fs::write(&psql, "#!/bin/sh\necho 'psql (PostgreSQL) 15.4'\n").unwrap();
        std::fs::set_permissions(&psql, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert_eq!(find("psql", &dirs, 93, Fits::Any).unwrap(), psql);
        assert_eq!(find("pg_ctl", &dirs, 14, Fits::AtLeast).unwrap(), fake);
    }
}
