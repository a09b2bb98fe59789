//! `groups/*.toml`: one application group, checked against the policies.

use std::path::Path;
use std::time::Duration;

use super::Errors;
use crate::config::raw;
use crate::config::types::{Config, Group, PolicyId};

/// Validates one group file against the policies.
pub(crate) fn validate_group(
    id: &str,
    file: &Path,
    raw: raw::GroupConfig,
    main: &Config,
    errs: &mut Errors<'_>,
) -> Option<Group> {
    if raw.members.is_empty() {
        errs.push("members", "list the policies recovered together");
    }
    let mut members: Vec<PolicyId> = Vec::new();
    for (i, m) in raw.members.iter().enumerate() {
        match main.policies.keys().find(|k| k.as_str() == m) {
            None => {
                let known: Vec<&str> = main.policies.keys().map(PolicyId::as_str).collect();
                errs.push(
                    format!("members[{i}]"),
                    format!("no policy `{m}` (known: {})", known.join(", ")),
                );
            }
            Some(_) if members.iter().any(|k| k.as_str() == m) => {
                errs.push(format!("members[{i}]"), format!("`{m}` is listed twice"));
            }
            Some(k) => members.push(k.clone()),
        }
    }
    let max_skew = errs.duration("max_skew", raw.max_skew.as_ref(), Duration::from_secs(300));
    (members.len() == raw.members.len() && !members.is_empty()).then(|| Group {
        id: id.to_owned(),
        file: file.to_path_buf(),
        members,
        max_skew,
    })
}
