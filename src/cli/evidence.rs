//! `dr evidence export`: a period's drill evidence as a bundle an auditor checks without dr.

use std::path::{Path, PathBuf};

use crate::error::{OK, UsageError};
use crate::evidence;

use super::{context, output};

/// Arguments of `dr evidence`.
#[derive(Debug, clap::Args)]
pub struct EvidenceArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: EvidenceCommand,
}

/// Evidence subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum EvidenceCommand {
    /// Export every drill report of a period (signed JSON, signature, page), per-policy history
    /// with RTO/RPO charts and missed drills, the audit events, the signer keys (PEM),
    /// SHA256SUMS and VERIFY.md (openssl commands that check every signature), as a directory
    /// and a .tar.gz beside it.
    #[command(
        after_help = "Examples:\n  dr evidence export --from 2026-10-01 --to 2026-12-31 --out ./evidence-2026-Q4\n  dr evidence export --from 2026-11-01 --to 2026-11-30 --policy pg-main --out /tmp/pg-main-nov\nA date as --to means the whole of that day (UTC). The directory must not exist.\nThen: cd ./evidence-2026-Q4 && less VERIFY.md"
    )]
    Export {
        /// Period start: a date (UTC midnight), a date and time (UTC), or one with a zone.
        #[arg(long)]
        from: String,
        /// Period end (same forms; a date includes that day).
        #[arg(long)]
        to: String,
        /// Only this policy's drills and audit events.
        #[arg(long)]
        policy: Option<String>,
        /// The bundle directory to create (and DIR.tar.gz).
        #[arg(long)]
        out: PathBuf,
        /// A summary as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(config: Option<&Path>, args: &EvidenceArgs) -> anyhow::Result<i32> {
    let EvidenceCommand::Export {
        from,
        to,
        policy,
        out,
        json,
    } = &args.command;
    let config = context::load(config)?;
    let req = evidence::Request {
        from: crate::audit::parse_bound(from).map_err(|e| UsageError(format!("--from: {e}")))?,
        to: evidence::parse_end(to).map_err(|e| UsageError(format!("--to: {e}")))?,
        policy: policy.clone(),
    };
    let r = evidence::export(&config, &req, out).await;
    crate::audit::record(
        &config,
        crate::audit::Event::new(
            crate::audit::Via::Cli,
            &crate::host::user_name(),
            crate::audit::Action::EvidenceExport,
            &format!(
                "{}{} .. {} -> {}",
                policy
                    .as_deref()
                    .map(|p| format!("{p} "))
                    .unwrap_or_default(),
                req.from.to_rfc3339(),
                req.to.to_rfc3339(),
                out.display()
            ),
            r.as_ref().map(|_| ()).map_err(|e| crate::error::chain(e)),
        ),
    )
    .await;
    let s = r?;
    if *json {
        output::json(&s)?;
    } else {
        outln!(
            "{}: {} trusted report(s) ({} passed), {} not evidence, {} missed scheduled run(s), {} audit event(s), {} files",
            s.dir.display(),
            s.reports,
            s.passed,
            s.untrusted,
            s.missed_runs,
            s.audit_events,
            s.files
        );
        outln!("{}: the same, packed", s.archive.display());
        outln!(
            "Check it without dr: the commands in {}",
            s.dir.join("VERIFY.md").display()
        );
    }
    Ok(OK)
}
