//! `dr replicate`: bring every replica target up to date with its primary, once.

use std::path::Path;

use crate::error::{FAILED, OK, PARTIAL, UsageError};
use crate::ops::{self, replicate::PairResult};

use super::{context, output};

/// Arguments of `dr replicate`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  dr replicate                         # every policy, every replica in its targets\n  dr replicate --policy pg-main --to us\nA replica that is down is reported and skipped; it catches up on the next run.\nExit 0 all replicas up to date, 3 some failed, 1 all failed."
)]
pub struct ReplicateArgs {
    /// Only this policy.
    #[arg(long)]
    pub policy: Option<String>,
    /// Only this replica target.
    #[arg(long)]
    pub to: Option<String>,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(config: Option<&Path>, args: &ReplicateArgs) -> anyhow::Result<i32> {
    let config = match &args.policy {
        Some(id) => context::load_scoped(config, crate::config::Scope::Focus(id))?,
        None => context::load(config)?,
    };
    let policies: Vec<_> = match &args.policy {
        Some(p) => vec![context::policy(&config, p)?],
        None => config.policies.values().collect(),
    };
    let outcomes = ops::replicate::run(&config, &policies, args.to.as_deref()).await;
    if outcomes.is_empty() {
        return Err(UsageError(
            "nothing to replicate: no selected policy lists a replica target after its primary"
                .to_owned(),
        )
        .into());
    }
    let failed = outcomes
        .iter()
        .filter(|o| matches!(o.result, PairResult::Failed { .. }))
        .count();
    if args.json {
        output::json(&outcomes)?;
    } else {
        for o in &outcomes {
            let (primary, replica) = (&o.primary, &o.replica);
            match &o.result {
                PairResult::Replicated(rep) => outln!(
                    "{primary} -> {replica}: {} objects ({}) copied in {:.1}s; up to date",
                    rep.objects,
                    crate::config::units::format_bytes(rep.bytes),
                    rep.seconds
                ),
                PairResult::NoPrimary => outln!(
                    "{primary} -> {replica}: the primary has no repository yet; nothing to copy"
                ),
                PairResult::Failed { error } => eprintln!("dr: {primary} -> {replica}: {error}"),
            }
        }
    }
    Ok(match failed {
        0 => OK,
        n if n == outcomes.len() => FAILED,
        _ => PARTIAL,
    })
}
