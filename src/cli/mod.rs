//! Command line: clap definitions and dispatch, one file per command.

/// `println!` for commands: a closed stdout (`dr snapshots | head`) ends the process quietly
/// (see [`output::line`]) instead of panicking.
macro_rules! outln {
    () => { $crate::cli::output::line(format_args!("\n")) };
    ($($t:tt)*) => { $crate::cli::output::line(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` for commands, as [`outln!`].
macro_rules! out {
    ($($t:tt)*) => { $crate::cli::output::line(format_args!($($t)*)) };
}

mod audit;
mod backup;
mod check;
mod context;
mod daemon;
mod diff;
mod drill;
mod dump;
mod evidence;
mod find;
mod info;
mod init;
mod keygen;
mod ls;
mod output;
pub use output::CLOSED_PIPE;
mod replicate;
mod restore;
mod retention;
mod snapshots;
mod validate;
mod verify;
mod wal_fetch;
mod wal_push;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Backup and disaster recovery for PostgreSQL, Qdrant, Redis and files.
#[derive(Debug, Parser)]
#[command(
    name = "dr",
    version,
    about,
    after_help = "Start with `dr init --dir ./dr-demo`, add a policy file, then `dr -c ./dr-demo/dr.toml backup --policy NAME`.\nExit codes: 0 ok, 1 the job failed, 2 usage or configuration error, 3 some policies failed."
)]
pub struct Args {
    /// Path of dr.toml (default: $DR_CONFIG, else ./dr.toml, else /etc/dr/dr.toml).
    // DR_CONFIG is read by `context::config_path`, not by clap: clap would print
    // `--config <FILE>` in every usage line as if it were required when the variable is set.
    #[arg(
        short,
        long,
        global = true,
        value_name = "FILE",
        help_heading = "Global options"
    )]
    pub config: Option<PathBuf>,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Global options")]
    pub verbose: u8,
    /// Log format (default: json for `daemon`, text otherwise).
    #[arg(long, global = true, value_enum, help_heading = "Global options")]
    pub log_format: Option<LogFormat>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands, one file each in this folder.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a ready-to-run local setup: dr.toml, keys, policies/ and a local repository.
    Init(init::InitArgs),
    /// Run scheduled backups, WAL monitoring, replication, retention and the status API.
    Daemon(daemon::DaemonArgs),
    /// Back up one policy now.
    Backup(backup::BackupArgs),
    /// Overview of every policy: snapshots, recoverable window, replicas, drills, broken files.
    Info(info::InfoArgs),
    /// List a policy's snapshots.
    Snapshots(snapshots::SnapshotsArgs),
    /// List what a snapshot holds (files, directories, relation files), from its manifest.
    Ls(ls::LsArgs),
    /// Find which snapshots hold a path (a glob), from their manifests.
    Find(find::FindArgs),
    /// What changed between two snapshots: added, removed, modified, with sizes.
    Diff(diff::DiffArgs),
    /// Write one file of a snapshot to stdout.
    Dump(dump::DumpArgs),
    /// Restore a snapshot.
    Restore(Box<restore::RestoreArgs>),
    /// Check that a repository's snapshots are complete and, with --data, intact.
    Verify(verify::VerifyArgs),
    /// Validate the configuration and show each schedule's next runs.
    Validate(validate::ValidateArgs),
    /// Check sources and storage targets against the live systems.
    Check(check::CheckArgs),
    /// Generate keys and tokens: an age identity, a chunk-id key, a drill-report signing key, or an API token.
    Keygen(keygen::KeygenArgs),
    /// Plan retention: which snapshots the rules keep and why.
    Retention(retention::RetentionArgs),
    /// Restore drills: run one now, list them, show or verify their signed reports.
    Drill(drill::DrillArgs),
    /// Show the audit log: who changed what, when, with which result.
    Audit(audit::AuditArgs),
    /// Export a period's drill evidence for auditors (checkable with openssl alone).
    Evidence(evidence::EvidenceArgs),
    /// Copy what replica targets lack from their primary, once.
    Replicate(replicate::ReplicateArgs),
    /// Archive one WAL file (PostgreSQL archive_command).
    WalPush(wal_push::WalPushArgs),
    /// Fetch one WAL file (PostgreSQL restore_command).
    WalFetch(wal_fetch::WalFetchArgs),
}

/// Sets up tracing on stderr.
pub fn init_logging(args: &Args) {
    let daemon = matches!(args.command, Command::Daemon(_));
    let default = match args.verbose {
        0 if daemon => "info,aws=warn",
        0 => "warn,dr::progress=info",
        1 => "info,aws=warn",
        _ => "debug,aws=info,hyper=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let format = args.log_format.unwrap_or(if daemon {
        LogFormat::Json
    } else {
        LogFormat::Text
    });
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs a command; returns the exit code.
///
/// # Errors
/// Any failure, for `main` to print with [`hints`] and map with [`exit_code`].
pub fn run(args: Args) -> anyhow::Result<i32> {
    // One TLS provider for everything (S3, the API, rediss://): several are linked in.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match args.command {
        Command::Init(a) => init::run(&a),
        Command::Keygen(a) => keygen::run(&a),
        command => {
            // Few blocking threads: each keeps its own allocator arena, and storage I/O is
            // bounded by the pipelines' own concurrency anyway.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .max_blocking_threads(8)
                .enable_all()
                .build()?;
            let config = args.config;
            rt.block_on(async move {
                match command {
                    Command::Daemon(a) => daemon::run(config.as_deref(), &a).await,
                    Command::Drill(a) => drill::run(config.as_deref(), &a).await,
                    Command::Audit(a) => audit::run(config.as_deref(), &a).await,
                    Command::Evidence(a) => evidence::run(config.as_deref(), &a).await,
                    Command::Backup(a) => backup::run(config.as_deref(), &a).await,
                    Command::Info(a) => info::run(config.as_deref(), &a).await,
                    Command::Snapshots(a) => snapshots::run(config.as_deref(), &a).await,
                    Command::Ls(a) => ls::run(config.as_deref(), &a).await,
                    Command::Find(a) => find::run(config.as_deref(), &a).await,
                    Command::Diff(a) => diff::run(config.as_deref(), &a).await,
                    Command::Dump(a) => dump::run(config.as_deref(), &a).await,
                    Command::Restore(a) => restore::run(config.as_deref(), &a).await,
                    Command::Verify(a) => verify::run(config.as_deref(), &a).await,
                    Command::Validate(a) => validate::run(config.as_deref(), &a).await,
                    Command::Check(a) => check::run(config.as_deref(), &a).await,
                    Command::WalPush(a) => wal_push::run(config.as_deref(), &a).await,
                    Command::Replicate(a) => replicate::run(config.as_deref(), &a).await,
                    Command::Retention(a) => retention::run(config.as_deref(), &a).await,
                    Command::WalFetch(a) => wal_fetch::run(config.as_deref(), &a).await,
                    Command::Init(_) | Command::Keygen(_) => {
                        unreachable!("handled above")
                    }
                }
            })
        }
    }
}

/// The exit code for an error that reached `main`: 2 for what the user has to fix (usage,
/// configuration, a refused restore), 1 for a job that ran and failed.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    use crate::error::{ErrorKind, FAILED, USAGE};
    match err.chain().find_map(classified).map(|e| e.kind()) {
        Some(ErrorKind::Usage) => USAGE,
        Some(ErrorKind::Failure) | None => FAILED,
    }
}

/// Whether `err` is stdout closed by its reader (`dr ls … | head`): `main` then exits
/// quietly with [`output::CLOSED_PIPE`], as a Unix tool ended by SIGPIPE does.
pub fn is_closed_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// What to do about an error that reached `main`, printed as `hint:` lines after it.
pub fn hints(err: &anyhow::Error) -> Vec<&str> {
    err.chain()
        .filter_map(classified)
        .filter_map(|e| e.hint())
        .collect()
}

/// The typed errors commands return, as their [`Classify`](crate::error::Classify); the
/// outermost one in a chain decides the exit code.
fn classified<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a dyn crate::error::Classify> {
    macro_rules! first_of {
        ($($t:ty),+) => {
            $(if let Some(x) = e.downcast_ref::<$t>() { return Some(x); })+
        };
    }
    first_of!(
        crate::config::ConfigErrors,
        crate::error::UsageError,
        crate::restore::RestoreError,
        crate::ops::OpsError,
        crate::drill::DrillError,
        crate::evidence::EvidenceError,
        crate::daemon::DaemonError,
        crate::pipeline::PipelineError
    );
    None
}

#[cfg(test)]
mod tests {
    use super::{exit_code, hints};
    use crate::restore::RestoreError;

    #[test]
    fn the_outermost_typed_error_decides_the_exit_code_and_every_hint_is_printed() {
        let refused = anyhow::Error::new(RestoreError::usage_with_hint(
            "policy web backs up files: point-in-time options apply to postgres policies only",
            "pick a snapshot with --snapshot",
        ))
        .context("restoring policy web");
        assert_eq!(exit_code(&refused), crate::error::USAGE);
        assert_eq!(hints(&refused), ["pick a snapshot with --snapshot"]);

        let failed = anyhow::Error::new(RestoreError::io("writing /srv/x")(std::io::Error::other(
            "disk full",
        )));
        assert_eq!(exit_code(&failed), crate::error::FAILED);
        assert!(hints(&failed).is_empty());

        let untyped = anyhow::anyhow!("something else");
        assert_eq!(exit_code(&untyped), crate::error::FAILED);
        let usage = anyhow::Error::new(crate::error::UsageError("--policy is required".into()));
        assert_eq!(exit_code(&usage), crate::error::USAGE);
    }
}
