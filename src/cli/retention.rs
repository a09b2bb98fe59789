//! `dr retention plan|apply`: what the policy's rules keep and why; forgetting the rest and
//! collecting the packs nobody references any more.

use std::path::Path;

use chrono::Utc;

use crate::config::{Config, Policy};
use crate::error::{OK, PARTIAL};
use crate::ops::{
    self,
    retention::{ApplyOutput, existing_repo, plan_of},
};

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
    /// Forget what the plan does not keep (on every target of the policy), prune WAL outside
    /// the PITR window, and collect unreferenced packs in two phases.
    #[command(
        after_help = "Examples:\n  dr retention apply --dry-run          # what would go\n  dr retention apply --policy pg-main\nPacks are deleted only by a later run, after retention.gc_grace, and only if still unused;\nbackups may run at the same time."
    )]
    Apply {
        /// Only this policy (pack collection still covers the whole repository).
        #[arg(long)]
        policy: Option<String>,
        /// Report what would be deleted without deleting anything.
        #[arg(long)]
        dry_run: bool,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(config: Option<&Path>, args: &RetentionArgs) -> anyhow::Result<i32> {
    let config = context::load(config)?;
    match &args.command {
        RetentionCommand::Plan { policy, json } => plan(&config, policy.as_deref(), *json).await,
        RetentionCommand::Apply {
            policy,
            dry_run,
            json,
        } => apply_all(&config, policy.as_deref(), *dry_run, *json).await,
    }
}

fn selected<'a>(config: &'a Config, policy: Option<&str>) -> anyhow::Result<Vec<&'a Policy>> {
    Ok(match policy {
        Some(p) => vec![context::policy(config, p)?],
        None => config.policies.values().collect(),
    })
}

async fn plan(config: &Config, policy: Option<&str>, json: bool) -> anyhow::Result<i32> {
    let now = Utc::now();
    let mut all = serde_json::Map::new();
    for p in selected(config, policy)? {
        let plan = match existing_repo(config, p, None).await? {
            Some(repo) => plan_of(&repo, p, now).await?,
            None => Vec::new(),
        };
        if json {
            all.insert(p.id.to_string(), serde_json::to_value(&plan)?);
            continue;
        }
        let kept = plan.iter().filter(|e| e.keep()).count();
        outln!(
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
            outln!("  {}  {verdict}{tier}", e.snapshot);
        }
    }
    if json {
        output::json(&all)?;
    }
    Ok(OK)
}

async fn apply_all(
    config: &Config,
    policy: Option<&str>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<i32> {
    let policies = selected(config, policy)?;
    let out = ops::retention::run(config, &policies, Utc::now(), dry_run).await;
    if !dry_run {
        let summary = out
            .as_ref()
            .map_err(|e| format!("{e:#}"))
            .and_then(|o| match o.errors() {
                0 => Ok(o.audit_summary()),
                n => Err(format!("{n} deletions failed")),
            });
        let target = policy.unwrap_or("all policies");
        let (target, result) = match &summary {
            Ok(s) => (format!("{target}: {s}"), Ok(())),
            Err(e) => (target.to_owned(), Err(e.clone())),
        };
        crate::audit::record(
            config,
            crate::audit::Event::new(
                crate::audit::Via::Cli,
                &crate::host::user_name(),
                crate::audit::Action::RetentionApply,
                &target,
                result,
            ),
        )
        .await;
    }
    let out = out?;
    if json {
        output::json(&out)?;
    } else {
        print_apply(&out);
    }
    Ok(if out.errors() == 0 { OK } else { PARTIAL })
}

fn print_apply(out: &ApplyOutput) {
    use crate::config::units::format_bytes;
    let would = if out.dry_run { "would " } else { "" };
    for r in &out.policies {
        outln!(
            "{} on {}: keep {}, {would}forget {}{}",
            r.policy,
            r.target,
            r.kept,
            r.forgotten.len(),
            r.wal_kept_from
                .as_ref()
                .map(|w| format!(", WAL: {would}delete {} segments before {w}", r.wal_deleted))
                .unwrap_or_default()
        );
        for s in &r.forgotten {
            outln!("  {would}forget {s}");
        }
        for e in &r.errors {
            outln!("  FAILED {e}");
        }
    }
    for c in &out.collections {
        outln!(
            "packs on {}: {would}mark {} ({}) and {} indexes; {would}delete {} ({}) and {} indexes; {} rescued",
            c.target,
            c.marked_packs,
            format_bytes(c.marked_bytes),
            c.marked_indexes,
            c.deleted_packs,
            format_bytes(c.deleted_bytes),
            c.deleted_indexes,
            c.rescued_packs
        );
        for (name, t) in &c.pending {
            outln!("  gc/{name}.mark: deletable after {}", t.to_rfc3339());
        }
        for e in &c.errors {
            outln!("  FAILED {e}");
        }
        if let Some(until) = c.locked_until {
            outln!(
                "  deleted objects stay as Object Lock-protected versions until at most {} (the bucket's lifecycle rule removes them after)",
                until.to_rfc3339()
            );
        }
    }
    for t in &out.tiers {
        if t.moved + t.locks_extended > 0 {
            outln!(
                "tiers on {}: {would}move {} packs ({}) to their storage class; {} locks extended",
                t.target,
                t.moved,
                format_bytes(t.moved_bytes),
                t.locks_extended
            );
        }
        if let Some(s) = &t.skipped {
            outln!("tiers on {}: skipped: {s}", t.target);
        }
        for e in &t.errors {
            outln!("  FAILED {e}");
        }
    }
}
