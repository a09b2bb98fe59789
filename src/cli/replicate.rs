//! `dr replicate`: bring every replica target up to date with its primary, once.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{FAILED, OK, PARTIAL, UsageError};
use crate::pipeline::{PipelineError, Repository};
use crate::replication;

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
    let config = context::load(config)?;
    let policies: Vec<_> = match &args.policy {
        Some(p) => vec![context::policy(&config, p)?],
        None => config.policies.values().collect(),
    };
    // (primary, replica) -> policies
    let mut pairs: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for p in &policies {
        for r in p
            .targets
            .iter()
            .skip(1)
            .filter(|r| args.to.as_ref().is_none_or(|t| t == *r))
        {
            pairs
                .entry((p.targets[0].clone(), r.clone()))
                .or_default()
                .push(p.id.as_str());
        }
    }
    if pairs.is_empty() {
        return Err(UsageError(
            "nothing to replicate: no selected policy lists a replica target after its primary"
                .to_owned(),
        )
        .into());
    }
    let (mut ok, mut failed) = (0, 0);
    let mut reports = Vec::new();
    for ((primary, replica), pols) in pairs {
        let result = async {
            let p = context::storage(&config, &primary).await?;
            let repo =
                match Repository::open(p, context::chunk_key(&config)?, &config.state_dir).await {
                    Ok(r) => r,
                    Err(PipelineError::NoRepository { .. }) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
            let r = context::storage(&config, &replica).await?;
            anyhow::Ok(Some(
                replication::replicate(
                    &repo.storage,
                    &r,
                    &repo.meta,
                    &pols,
                    config.pipeline.upload_concurrency,
                )
                .await?,
            ))
        }
        .await;
        match result {
            Ok(Some(rep)) => {
                ok += 1;
                if !args.json {
                    println!(
                        "{primary} -> {replica}: {} objects ({}) copied in {:.1}s; up to date",
                        rep.objects,
                        crate::config::units::format_bytes(rep.bytes),
                        rep.seconds
                    );
                }
                reports.push(serde_json::json!({ "primary": primary, "replica": replica, "ok": true, "report": rep }));
            }
            Ok(None) => {
                ok += 1;
                if !args.json {
                    println!(
                        "{primary} -> {replica}: the primary has no repository yet; nothing to copy"
                    );
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("dr: {primary} -> {replica}: {e:#}");
                reports.push(serde_json::json!({ "primary": primary, "replica": replica, "ok": false, "error": format!("{e:#}") }));
            }
        }
    }
    if args.json {
        output::json(&reports)?;
    }
    Ok(match (ok, failed) {
        (_, 0) => OK,
        (0, _) => FAILED,
        _ => PARTIAL,
    })
}
