//! `restore-drills/*.toml`: one drill, checked against the main config and its policies.

use std::path::Path;
use std::time::Duration;

use super::{Errors, resolve};
use crate::config::raw;
use crate::config::types::{
    CheckQuery, Config, Drill, DrillCheck, DrillPoint, Expectation, Policy, PolicyId, SourceSpec,
};
use crate::config::units::parse_duration;

/// Validates one drill file against the main config and its policies.
pub(crate) fn validate_drill(
    name: &str,
    file: &Path,
    raw: raw::DrillConfig,
    main: &Config,
    errs: &mut Errors<'_>,
) -> Option<Drill> {
    let members: Vec<&Policy> = match (raw.policy.as_deref(), raw.group.as_deref()) {
        (Some(p), None) => match main.policy(p) {
            Ok(p) => vec![p],
            Err(_) => {
                let known: Vec<&str> = main.policies.keys().map(PolicyId::as_str).collect();
                errs.push(
                    "policy",
                    format!("no policy `{p}` (known: {})", known.join(", ")),
                );
                return None;
            }
        },
        (None, Some(g)) => match main.groups.get(g) {
            Some(g) => g
                .members
                .iter()
                .filter_map(|m| main.policies.get(m))
                .collect(),
            None => {
                let known: Vec<&str> = main.groups.keys().map(String::as_str).collect();
                errs.push(
                    "group",
                    format!("no group `{g}` (known: {})", known.join(", ")),
                );
                return None;
            }
        },
        _ => {
            errs.push(
                "",
                "name what the drill restores: a `policy`, or a `group` (groups/<id>.toml)",
            );
            return None;
        }
    };
    let policy = members[0];
    let group = raw.group.clone();
    let schedule = super::optional_schedule(
        raw.schedule.as_deref(),
        raw.timezone.as_deref(),
        policy.schedule.timezone(),
        errs,
    );
    let from_region = match raw.from_region {
        Some(r) if members.iter().all(|p| p.targets.contains(&r)) => r,
        Some(r) if group.is_some() => {
            errs.push(
                "from_region",
                format!(
                    "not every member of group {} writes to `{r}`",
                    group.as_deref().unwrap_or_default()
                ),
            );
            policy.targets[0].clone()
        }
        Some(r) => {
            errs.push(
                "from_region",
                format!(
                    "policy {} does not write to `{r}` (its targets: {})",
                    policy.id,
                    policy.targets.join(", ")
                ),
            );
            policy.targets[0].clone()
        }
        // A group's members each from their own primary.
        None if group.is_some() => policy.targets[0].clone(),
        // A replica by default: the drill then proves replication too.
        None => policy.targets.get(1).unwrap_or(&policy.targets[0]).clone(),
    };
    // A group is recovered to a time like PostgreSQL (its other members to their snapshot
    // before it), but not to a random one.
    let is_pg = members
        .iter()
        .any(|p| matches!(p.source, SourceSpec::Postgres(_)));
    let random_ok = is_pg && group.is_none();
    let point = match raw.point_in_time.as_deref().map(str::trim) {
        None | Some("latest") => DrillPoint::Latest,
        Some("random") if random_ok => DrillPoint::Random,
        Some(p) if p.ends_with(" ago") && is_pg => {
            match parse_duration(p.trim_end_matches(" ago").trim()) {
                Ok(d) => DrillPoint::Ago(d),
                Err(e) => {
                    errs.push("point_in_time", e);
                    DrillPoint::Latest
                }
            }
        }
        Some(p) => {
            errs.push(
                "point_in_time",
                if is_pg {
                    format!(
                        "`{p}`: use \"latest\", \"random\" or \"<duration> ago\" (e.g. \"2h ago\")"
                    )
                } else {
                    format!(
                        "`{p}`: only \"latest\" applies to a policy without WAL (policy {})",
                        policy.id
                    )
                },
            );
            DrillPoint::Latest
        }
    };
    let sb = raw.sandbox.unwrap_or_default();
    let is_qdrant = members
        .iter()
        .any(|p| matches!(p.source, SourceSpec::Qdrant(_)));
    if is_qdrant && sb.qdrant_url.is_none() {
        errs.push(
            "sandbox.qdrant_url",
            "a Qdrant drill restores into a scratch collection on a server you name here (it never picks the production one by itself)",
        );
    }
    let base = main.path.parent().unwrap_or(Path::new("."));
    let mut checks = Vec::new();
    for (i, c) in raw.check.into_iter().enumerate() {
        let key = format!("check[{i}]");
        // The policy asked: the drill's, or in a group drill the member it names.
        let (asked, member) = match (&group, c.member.as_deref()) {
            (None, None) => (policy, None),
            (None, Some(_)) => {
                errs.push(format!("{key}.member"), "only group drills name a member");
                continue;
            }
            (Some(g), None) => {
                errs.push(
                    format!("{key}.member"),
                    format!("say which member of group {g} it asks"),
                );
                continue;
            }
            (Some(g), Some(m)) => match members.iter().find(|p| p.id.as_str() == m) {
                Some(p) => (*p, Some(p.id.clone())),
                None => {
                    errs.push(
                        format!("{key}.member"),
                        format!("`{m}` is not a member of group {g}"),
                    );
                    continue;
                }
            },
        };
        let is_pg = matches!(asked.source, SourceSpec::Postgres(_));
        let query = match (c.sql, c.redis) {
            (Some(sql), None) if is_pg => CheckQuery::Sql {
                database: c.database.unwrap_or_else(|| "postgres".to_owned()),
                sql,
            },
            (None, Some(cmd)) if matches!(asked.source, SourceSpec::Redis(_)) => {
                let parts: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
                if parts.is_empty() {
                    errs.push(format!("{key}.redis"), "empty command");
                    continue;
                }
                CheckQuery::Redis(parts)
            }
            _ => {
                errs.push(
                    &key,
                    if is_pg {
                        "a PostgreSQL drill check needs `sql` (and no `redis`)"
                    } else {
                        "checks take `sql` for postgres policies and `redis` for redis policies"
                    },
                );
                continue;
            }
        };
        let expect = c.expect.as_deref().and_then(|e| {
            Expectation::parse(e)
                .map_err(|m| errs.push(format!("{key}.expect"), m))
                .ok()
        });
        let expect_recent = c
            .expect_recent
            .as_ref()
            .map(|r| errs.duration(&format!("{key}.expect_recent"), Some(r), Duration::ZERO));
        if expect.is_none() && expect_recent.is_none() {
            errs.push(&key, "say what to expect: `expect` and/or `expect_recent`");
        }
        let name = c.name.unwrap_or_else(|| match &query {
            CheckQuery::Sql { sql, .. } => sql.clone(),
            CheckQuery::Redis(p) => p.join(" "),
        });
        checks.push(DrillCheck {
            name,
            query,
            expect,
            expect_recent,
            member,
        });
    }
    Some(Drill {
        name: name.to_owned(),
        file: file.to_path_buf(),
        policy: policy.id.clone(),
        group,
        schedule,
        from_region,
        point,
        // A group is as slow and as old as its slowest and oldest member.
        rto: errs.duration(
            "rto",
            raw.rto.as_ref(),
            members.iter().map(|p| p.rto).max().unwrap_or(policy.rto),
        ),
        rpo: errs.duration(
            "rpo",
            raw.rpo.as_ref(),
            members.iter().map(|p| p.rpo).max().unwrap_or(policy.rpo),
        ),
        sandbox_dir: sb.dir.as_deref().map(|d| resolve(base, d)),
        run_as: sb.run_as.unwrap_or_else(|| "postgres".to_owned()),
        db_user: sb.db_user.unwrap_or_else(|| "postgres".to_owned()),
        start_timeout: errs.duration(
            "sandbox.start_timeout",
            sb.start_timeout.as_ref(),
            Duration::from_secs(3600),
        ),
        qdrant_url: sb.qdrant_url.map(|u| u.trim_end_matches('/').to_owned()),
        checks,
    })
}
