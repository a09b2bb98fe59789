//! Raw config → validated types, one file per kind of config file (as in [`super::raw`]):
//! [`main`] (`dr.toml`), [`policy`] (`policies/*.toml`), [`drill`] (`restore-drills/*.toml`),
//! [`group`] (`groups/*.toml`).
//! Pure apart from `stat`-ing the secret files it must refuse when they are group/world
//! readable. Every problem is collected with its file and key path.

mod drill;
mod group;
mod main;
mod policy;

pub(crate) use drill::validate_drill;
pub(crate) use group::validate_group;
pub(crate) use main::validate_main;
pub(crate) use policy::validate_policy;

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ConfigError;
use super::units::parse_duration;

/// Collects errors for one file while walking it.
pub(crate) struct Errors<'a> {
    file: &'a Path,
    pub(crate) list: Vec<ConfigError>,
}

impl<'a> Errors<'a> {
    pub(crate) fn new(file: &'a Path) -> Self {
        Self {
            file,
            list: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            message: message.into(),
        });
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        v: Option<&String>,
        default: Duration,
    ) -> Duration {
        match v.map(|s| parse_duration(s)) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.push(key, e);
                default
            }
        }
    }
}

/// An optional `schedule` in an optional `timezone` (default `default_tz`), each error at its
/// key.
pub(super) fn optional_schedule(
    schedule: Option<&str>,
    timezone: Option<&str>,
    default_tz: chrono_tz::Tz,
    errs: &mut Errors<'_>,
) -> Option<crate::config::schedule::Schedule> {
    let tz = match timezone {
        None => default_tz,
        Some(s) => <chrono_tz::Tz as std::str::FromStr>::from_str(s).unwrap_or_else(|_| {
            errs.push("timezone", format!("`{s}` is not an IANA time zone"));
            chrono_tz::UTC
        }),
    };
    schedule.and_then(|e| {
        crate::config::schedule::Schedule::parse(e, tz)
            .map_err(|m| errs.push("schedule", m))
            .ok()
    })
}

pub(super) fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}
