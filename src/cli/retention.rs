//! `dr retention plan`: what the policy's rules keep, and why.

use std::path::Path;

use chrono::Utc;

use crate::error::OK;
use crate::pipeline::PipelineError;
use crate::retention;

use super::{context, output};

/// Arguments of `dr retention`.
#[derive(Debug, clap::Args)]
pub struct RetentionArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RetentionCommand,
}

/// Retention subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RetentionCommand {
    /// Show which snapshots the rules keep (and which rule keeps each) and which they forget.
    #[command(
        after_help = "Examples:\n  dr retention plan --policy pg-main\n  dr retention plan --json        # every policy, machine-readable\nNothing is deleted: this only plans."
    )]
    Plan {
        /// Only this policy.
        #[arg(long)]
        policy: Option<String>,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(config: Option<&Path>, args: &RetentionArgs) -> anyhow::Result<i32> {
    let RetentionCommand::Plan { policy, json } = &args.command;
    let config = context::load(config)?;
    let policies: Vec<_> = match policy {
        Some(p) => vec![context::policy(&config, p)?],
        None => config.policies.values().collect(),
    };
    let now = Utc::now();
    let mut all = serde_json::Map::new();
    for p in policies {
        let ids = match context::read_repo(&config, p, None).await {
            Ok(repo) => repo.committed(p.id.as_str()).await?,
            Err(e)
                if matches!(
                    e.downcast_ref::<PipelineError>(),
                    Some(PipelineError::NoRepository { .. })
                ) =>
            {
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let snaps: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let t = id.time();
                (id, t)
            })
            .collect();
        let plan = retention::plan(&snaps, now, &p.retention, p.schedule.timezone());
        if *json {
            all.insert(p.id.to_string(), serde_json::to_value(&plan)?);
            continue;
        }
        let kept = plan.iter().filter(|e| e.keep()).count();
        println!(
            "{}: {} snapshots, keep {kept}, forget {}",
            p.id,
            plan.len(),
            plan.len() - kept
        );
        for e in &plan {
            let verdict = if e.keep() {
                format!("keep    {}", e.kept_by.join(", "))
            } else {
                "forget".to_owned()
            };
            let tier = e
                .tier
                .as_deref()
                .map(|t| format!("  [tier {t}]"))
                .unwrap_or_default();
            println!("  {}  {verdict}{tier}", e.snapshot);
        }
    }
    if *json {
        output::json(&all)?;
    }
    Ok(OK)
}
