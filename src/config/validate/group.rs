//! `groups/*.toml`: one application group, checked against the policies.

use std::path::Path;
use std::time::Duration;

use super::Errors;
use crate::config::raw;
use crate::config::types::{
    CheckQuery, Config, CrossAsk, CrossCheck, CrossQuery, Group, PolicyId, SourceSpec,
};

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
    let mut checks = Vec::new();
    for (i, c) in raw.check.into_iter().enumerate() {
        let key = format!("check[{i}]");
        let left = cross_query(&format!("{key}.left"), c.left, &members, main, errs);
        let right = cross_query(&format!("{key}.right"), c.right, &members, main, errs);
        let tolerance = c.tolerance.unwrap_or(0.0);
        if !(tolerance >= 0.0 && tolerance.is_finite()) {
            errs.push(format!("{key}.tolerance"), "must be a number of at least 0");
        }
        if let (Some(left), Some(right)) = (left, right) {
            checks.push(CrossCheck {
                name: c.name,
                left,
                right,
                tolerance,
            });
        }
    }
    let schedule = super::optional_schedule(
        raw.schedule.as_deref(),
        raw.timezone.as_deref(),
        chrono_tz::UTC,
        errs,
    );
    (members.len() == raw.members.len() && !members.is_empty()).then(|| Group {
        id: id.to_owned(),
        file: file.to_path_buf(),
        members,
        max_skew,
        checks,
        schedule,
    })
}

/// One side of a cross-store check: a member and a question its source can answer.
fn cross_query(
    key: &str,
    raw: raw::CrossQueryConfig,
    members: &[PolicyId],
    main: &Config,
    errs: &mut Errors<'_>,
) -> Option<CrossQuery> {
    let Some(policy) = members.iter().find(|m| m.as_str() == raw.policy) else {
        errs.push(
            format!("{key}.policy"),
            format!("`{}` is not a member of this group", raw.policy),
        );
        return None;
    };
    let source = &main.policies.get(policy)?.source;
    let query = match (source, raw.sql, raw.redis, raw.points) {
        (SourceSpec::Postgres(_), Some(sql), None, None) => CrossAsk::Check(CheckQuery::Sql {
            database: raw.database.unwrap_or_else(|| "postgres".to_owned()),
            sql,
        }),
        (SourceSpec::Redis(_), None, Some(cmd), None) if !cmd.trim().is_empty() => CrossAsk::Check(
            CheckQuery::Redis(cmd.split_whitespace().map(str::to_owned).collect()),
        ),
        (SourceSpec::Qdrant(_), None, None, Some(c)) => CrossAsk::Points(c),
        (s, ..) => {
            errs.push(
                key,
                format!(
                    "{} is a {} policy: ask it with {}",
                    raw.policy,
                    s.kind(),
                    match s {
                        SourceSpec::Postgres(_) => "`sql` (and `database`)",
                        SourceSpec::Redis(_) => "`redis` (a command answering a number)",
                        SourceSpec::Qdrant(_) => "`points` (a collection)",
                        SourceSpec::Files { .. } => "nothing: files have no queries",
                    }
                ),
            );
            return None;
        }
    };
    Some(CrossQuery {
        policy: policy.clone(),
        query,
    })
}
