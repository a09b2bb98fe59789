//! `dr drill run|list|show|verify-report`: restore drills and their signed reports.

use std::path::{Path, PathBuf};

use crate::config::DrillPoint;
use crate::drill::{self, report};
use crate::error::{FAILED, OK, UsageError};

use super::{context, output};

/// Arguments of `dr drill`.
#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DrillCommand,
}

/// Drill subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DrillCommand {
    /// Run a drill now: restore into a sandbox, check, measure RTO/RPO, store a signed report.
    #[command(
        after_help = "Examples:\n  dr drill run pg-main-nightly\n  dr drill run redis-cache-weekly --json\nExit 0 when the drill passed, 1 when it failed (the report says why)."
    )]
    Run {
        /// Drill name (file stem in restore-drills/).
        name: String,
        /// The report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List the drills and their last results.
    List {
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show one report: a summary, the HTML page, or the signed file itself.
    #[command(
        after_help = "Examples:\n  dr drill show 20261124T0300          # unique prefix of a report id\n  dr drill show latest --html > report.html\n  dr drill show latest --raw > report.signed && dr drill verify-report report.signed"
    )]
    Show {
        /// Report id, a unique prefix, or `latest`.
        id: String,
        /// Print the HTML page.
        #[arg(long, conflicts_with_all = ["raw", "json"])]
        html: bool,
        /// Print the stored, signed bytes (for `verify-report` and archiving).
        #[arg(long, conflicts_with = "json")]
        raw: bool,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Check a stored report's signature against the trusted signers.
    #[command(
        after_help = "Examples:\n  dr drill verify-report report.signed\n  dr drill verify-report report.signed --trust 3b6a27bc…   # without a dr.toml\nExit 0 when the signature is valid and the signer trusted, 1 otherwise."
    )]
    VerifyReport {
        /// The file (`dr drill show ID --raw`).
        file: PathBuf,
        /// Trusted signer public key (hex); repeatable. Default: keys.trusted_signers.
        #[arg(long)]
        trust: Vec<String>,
    },
}

pub(crate) async fn run(config: Option<&Path>, args: &DrillArgs) -> anyhow::Result<i32> {
    match &args.command {
        DrillCommand::VerifyReport { file, trust } => verify(config, file, trust),
        DrillCommand::Run { name, json } => run_drill(config, name, *json).await,
        DrillCommand::List { json } => list(config, *json).await,
        DrillCommand::Show {
            id,
            html,
            raw,
            json,
        } => show(config, id, *html, *raw, *json).await,
    }
}

fn verify(config: Option<&Path>, file: &Path, trust: &[String]) -> anyhow::Result<i32> {
    let bytes = std::fs::read(file).map_err(|e| UsageError(format!("{}: {e}", file.display())))?;
    let trusted = if trust.is_empty() {
        drill::store::trusted_signers(&context::load(config)?)
    } else {
        trust.to_vec()
    };
    let what = file.display().to_string();
    let signed = report::open(&what, &bytes)?;
    match report::check_trusted(&what, &signed, &trusted) {
        Ok(()) => {
            outln!(
                "{what}: signature valid, signed by trusted key {}: drill {} report {} ({}), {}",
                signed.signer,
                signed.report.drill,
                signed.report.id,
                signed.report.started.to_rfc3339(),
                signed.report.verdict.as_str().to_uppercase()
            );
            Ok(OK)
        }
        Err(e) => {
            eprintln!("dr: {e}");
            Ok(FAILED)
        }
    }
}

/// Prints a report, its first line naming what it counts as (`verdict`): an untrusted one says
/// so there, with what it claims, before anything it says.
fn print_report(r: &report::Report, verdict: report::Verdict) {
    outln!(
        "drill {} ({} policy {}, from region {}): {}",
        r.drill,
        r.source,
        r.policy,
        r.region,
        verdict.as_str().to_uppercase()
    );
    if verdict == report::Verdict::Untrusted {
        outln!(
            "  NOT EVIDENCE: not validly signed by a trusted key (keys.trusted_signers); it claims {}, which counts for nothing",
            r.verdict.as_str().to_uppercase()
        );
    }
    let fmt = |o: &report::Objective| {
        format!(
            "{} (objective {:.0}s) {}",
            o.seconds
                .map_or("not measured".to_owned(), |s| format!("{s:.1}s")),
            o.objective_seconds,
            if o.met { "met" } else { "NOT MET" }
        )
    };
    outln!("  RTO {}", fmt(&r.rto));
    outln!("  RPO {}", fmt(&r.rpo));
    outln!(
        "  snapshot {}  target {}  reached {}",
        r.snapshot.as_deref().unwrap_or("-"),
        r.target,
        r.reached.as_deref().unwrap_or("-")
    );
    for c in &r.checks {
        outln!(
            "  [{}] {}: expected {}; found {}",
            if c.passed { "ok" } else { "FAIL" },
            c.name,
            c.expected,
            c.actual
        );
    }
    for reason in &r.reasons {
        outln!("  why: {reason}");
    }
    outln!("  report {}", r.id);
}

async fn run_drill(config: Option<&Path>, name: &str, json: bool) -> anyhow::Result<i32> {
    let config = context::load(config)?;
    let d = config.drills.get(name).ok_or_else(|| {
        let known: Vec<&str> = config.drills.keys().map(String::as_str).collect();
        UsageError(format!(
            "no drill `{name}` in {} (known: {})",
            config.drills_dir.display(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ))
    })?;
    let cancel = context::shutdown_token();
    let progress = std::sync::Arc::new(crate::pipeline::progress::Progress::default());
    let bar = output::Bar::start("drill restore", progress.clone());
    let trigger = drill::report::Trigger {
        by: "cli".to_owned(),
        actor: crate::host::user_name(),
    };
    let r = drill::run(&config, d, trigger, progress, &cancel).await;
    drop(bar);
    let outcome = match &r {
        Ok(rep) if rep.verdict == report::Outcome::Pass => Ok(()),
        Ok(rep) => Err(format!("drill failed: {}", rep.reasons.join("; "))),
        Err(e) => Err(crate::error::chain(e)),
    };
    crate::audit::record(
        &config,
        crate::audit::Event::new(
            crate::audit::Via::Cli,
            &crate::host::user_name(),
            crate::audit::Action::DrillRun,
            name,
            outcome,
        ),
    )
    .await;
    let r = r?;
    if json {
        output::json(&r)?;
    } else {
        // Signed just now with this host's key, which is always trusted.
        print_report(&r, report::Verdict::of_trusted(&r));
    }
    Ok(if r.verdict == report::Outcome::Pass {
        OK
    } else {
        FAILED
    })
}

async fn list(config: Option<&Path>, json: bool) -> anyhow::Result<i32> {
    let config = context::load(config)?;
    let reports = drill::store::all_reports(&config).await?;
    let mut rows = Vec::new();
    for d in config.drills.values() {
        let mine = || reports.iter().rev().filter(|s| s.report.drill == d.name);
        let last = mine().next();
        let last_trusted = mine().find(|s| s.trusted);
        let last_pass = mine().find(|s| s.verdict() == report::Verdict::Pass);
        rows.push(serde_json::json!({
            "name": d.name, "policy": d.policy.as_str(), "from_region": d.from_region,
            "schedule": d.schedule.as_ref().map(|s| s.expr().to_owned()),
            "point_in_time": match d.point { DrillPoint::Latest => "latest".to_owned(), DrillPoint::Random => "random".to_owned(), DrillPoint::Ago(a) => format!("{}s ago", a.as_secs()) },
            "rto_objective_seconds": d.rto.as_secs(), "rpo_objective_seconds": d.rpo.as_secs(),
            "last_report": last.map(|s| s.report.id.clone()),
            "last_verdict": last.map(report::Signed::verdict),
            "last_trusted": last.map(|s| s.trusted),
            // Figures only from the newest trusted report.
            "last_rto_seconds": last_trusted.and_then(|s| s.report.rto.seconds),
            "last_rpo_seconds": last_trusted.and_then(|s| s.report.rpo.seconds),
            "last_pass": last_pass.map(|s| s.report.id.clone()),
            "runs": reports.iter().filter(|s| s.report.drill == d.name).count(),
            "untrusted_reports": reports.iter().filter(|s| s.report.drill == d.name && !s.trusted).count(),
        }));
    }
    if json {
        output::json(&rows)?;
        return Ok(OK);
    }
    if rows.is_empty() {
        outln!(
            "no drills in {} (see restore-drills/README.md)",
            config.drills_dir.display()
        );
    }
    for r in rows {
        let verdict = r["last_verdict"].as_str().unwrap_or("never run");
        outln!(
            "{:<24} policy {:<16} from {:<8} schedule {:<14} last {} {}{}",
            r["name"].as_str().unwrap_or(""),
            r["policy"].as_str().unwrap_or(""),
            r["from_region"].as_str().unwrap_or(""),
            r["schedule"].as_str().unwrap_or("(on demand)"),
            if verdict == "untrusted" {
                "UNTRUSTED"
            } else {
                verdict
            },
            r["last_report"].as_str().unwrap_or(""),
            match r["untrusted_reports"].as_u64() {
                Some(n @ 1..) => format!(
                    "  ({n} UNTRUSTED report{}: not signed by a trusted key, not counted)",
                    if n == 1 { "" } else { "s" }
                ),
                _ => String::new(),
            }
        );
    }
    Ok(OK)
}

async fn show(
    config: Option<&Path>,
    id: &str,
    html: bool,
    raw: bool,
    json: bool,
) -> anyhow::Result<i32> {
    let config = context::load(config)?;
    let all = drill::store::all_reports(&config).await?;
    let matches: Vec<&report::Signed> = if id == "latest" {
        all.last().into_iter().collect()
    } else {
        all.iter().filter(|s| s.report.id.starts_with(id)).collect()
    };
    let [s] = matches.as_slice() else {
        return Err(UsageError(format!(
            "{} drill reports match `{id}` ({} stored; see `dr drill list`)",
            matches.len(),
            all.len()
        ))
        .into());
    };
    if raw {
        use std::io::Write;
        std::io::stdout().write_all(&s.raw)?;
    } else if html {
        out!(
            "{}",
            drill::html::render(s, &drill::store::history(&all, s))
        );
    } else if json {
        output::json(&drill::store::describe(s))?;
    } else {
        print_report(&s.report, s.verdict());
        outln!(
            "  signature {} ({} signer {})",
            if s.signature_valid {
                "valid"
            } else {
                "INVALID"
            },
            if s.signer_trusted {
                "trusted"
            } else {
                "UNTRUSTED"
            },
            s.signer
        );
    }
    Ok(OK)
}
