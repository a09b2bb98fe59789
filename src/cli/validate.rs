//! `dr validate`: check the whole configuration and show the next runs.

use std::path::Path;

use chrono::Utc;

use crate::error::OK;

/// Arguments of `dr validate`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  dr -c /etc/dr/dr.toml validate\nExit code 2 and one line per problem (file: key: message) when anything is wrong.\nWhen the repositories can be read (within 5 s), also says what retention would forget\nthere now, as the daemon's first pass would (`dr retention plan` says which rule keeps what)."
)]
pub struct ValidateArgs {}

pub(crate) async fn run(config: Option<&Path>, _args: &ValidateArgs) -> anyhow::Result<i32> {
    let c = super::context::load(config)?;
    outln!(
        "{}: OK ({} storage targets, {} policies)",
        c.path.display(),
        c.storage.len(),
        c.policies.len()
    );
    let now = Utc::now();
    for p in c.policies.values() {
        let runs: Vec<String> = p
            .schedule
            .next_runs(now, 3)
            .iter()
            .map(|t| {
                t.with_timezone(&p.schedule.timezone())
                    .format("%Y-%m-%d %H:%M:%S %Z")
                    .to_string()
            })
            .collect();
        outln!(
            "  {} ({} -> {}): schedule \"{}\" next: {}",
            p.id,
            p.source.kind(),
            p.targets.join(", "),
            p.schedule.expr(),
            runs.join(", ")
        );
    }
    for d in c.drills.values() {
        let when = d.schedule.as_ref().map_or("on demand".to_owned(), |s| {
            format!(
                "schedule \"{}\" next: {}",
                s.expr(),
                s.next_after(now)
                    .map(|t| t
                        .with_timezone(&s.timezone())
                        .format("%Y-%m-%d %H:%M:%S %Z")
                        .to_string())
                    .unwrap_or_default()
            )
        });
        outln!(
            "  drill {} (policy {} from {}): {when}",
            d.name,
            d.policy,
            d.from_region
        );
    }
    for g in c.groups.values() {
        let members: Vec<&str> = g.members.iter().map(|m| m.as_str()).collect();
        outln!(
            "  group {}: {} (max_skew {})",
            g.id,
            members.join(", "),
            crate::config::units::format_duration(g.max_skew)
        );
    }
    retention_effect(&c).await;
    Ok(OK)
}

/// What retention would do to the snapshots there now; nothing when the repositories cannot
/// be read within a few seconds (validation is about the files, not about reachability).
async fn retention_effect(c: &crate::config::Config) {
    let policies: Vec<_> = c.policies.values().collect();
    let plan = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        crate::ops::retention::run(c, &policies, Utc::now(), true),
    )
    .await;
    let Ok(Ok(plan)) = plan else {
        outln!(
            "  retention: repositories not read (unreachable or empty); see `dr retention plan`"
        );
        return;
    };
    for r in &plan.policies {
        if r.forgotten.is_empty() {
            outln!(
                "  retention of {} in {}: keeps all {} snapshots",
                r.policy,
                r.target,
                r.kept
            );
        } else {
            outln!(
                "  retention of {} in {}: keeps {}, would forget {} now: {}",
                r.policy,
                r.target,
                r.kept,
                r.forgotten.len(),
                r.forgotten_list()
            );
        }
    }
}
