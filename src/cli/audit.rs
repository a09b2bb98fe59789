//! `dr audit`: the audit log.

use std::path::Path;

use crate::error::{OK, UsageError};

use super::{context, output};

/// Arguments of `dr audit`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  dr audit\n  dr audit --since 2026-11-01 --until 2026-12-01      # November (UTC)\n  dr audit --since '2026-11-23 14:00' --json\n  dr audit --since '2026-11-23 14:00:00+01'"
)]
pub struct AuditArgs {
    /// Only events at or after this time: a date, a date and time (UTC), or one with a zone.
    #[arg(long)]
    pub since: Option<String>,
    /// Only events before this time (same forms).
    #[arg(long)]
    pub until: Option<String>,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(config: Option<&Path>, args: &AuditArgs) -> anyhow::Result<i32> {
    let config = context::load(config)?;
    let bound = |s: Option<&str>| {
        s.map(crate::audit::parse_bound)
            .transpose()
            .map_err(UsageError)
    };
    let (since, until) = (bound(args.since.as_deref())?, bound(args.until.as_deref())?);
    let target = crate::audit::audit_target(&config)
        .ok_or_else(|| UsageError("no storage target".to_owned()))?;
    let s = context::storage(&config, target).await?;
    let events = crate::audit::list(&s, since, until).await?;
    if args.json {
        output::json(&events)?;
    } else {
        for e in events {
            outln!(
                "{}  {:<6} {:<16} {:<16} {:<20} {}",
                e.time.format("%Y-%m-%d %H:%M:%S"),
                e.via,
                e.who,
                e.action,
                e.target,
                e.result
            );
        }
    }
    Ok(OK)
}
