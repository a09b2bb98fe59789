//! `dr audit`: the audit log.

use std::path::Path;

use crate::error::{OK, UsageError};

use super::{context, output};

/// Arguments of `dr audit`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  dr audit\n  dr audit --since '2026-11-01 00:00:00+00' --json")]
pub struct AuditArgs {
    /// Only events at or after this time.
    #[arg(long)]
    pub since: Option<String>,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(config: Option<&Path>, args: &AuditArgs) -> anyhow::Result<i32> {
    let config = context::load(config)?;
    let since = args
        .since
        .as_deref()
        .map(crate::pipeline::pitr::parse_time)
        .transpose()
        .map_err(UsageError)?;
    let target = crate::audit::audit_target(&config)
        .ok_or_else(|| UsageError("no storage target".to_owned()))?;
    let s = context::storage(&config, target).await?;
    let events = crate::audit::list(&s, since).await?;
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
