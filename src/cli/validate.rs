//! `dr validate`: check the whole configuration and show the next runs.

use std::path::Path;

use chrono::Utc;

use crate::error::OK;

/// Arguments of `dr validate`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  dr -c /etc/dr/dr.toml validate\nExit code 2 and one line per problem (file: key: message) when anything is wrong."
)]
pub struct ValidateArgs {}

pub(crate) fn run(config: Option<&Path>, _args: &ValidateArgs) -> anyhow::Result<i32> {
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
    Ok(OK)
}
