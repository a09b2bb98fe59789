//! `dr daemon`: scheduled backups, WAL lag, replication, retention and the status API.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::units::parse_duration;
use crate::daemon::{Daemon, DaemonOptions};
use crate::error::{FAILED, OK, UsageError};

use super::context;

/// Arguments of `dr daemon`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  dr -c /etc/dr/dr.toml daemon                       # JSON logs on stderr\n  dr daemon --log-format text --shutdown-grace 2m\nThe daemon refuses to start on any configuration error (exit 2). On SIGTERM it starts\nnothing new, gives running jobs --shutdown-grace to finish, then names and cancels the rest."
)]
pub struct DaemonArgs {
    /// How long running jobs may finish after SIGTERM/SIGINT before they are cancelled.
    #[arg(long, default_value = "30s", value_parser = grace)]
    pub shutdown_grace: Duration,
}

fn grace(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

pub(crate) async fn run(config: Option<&Path>, args: &DaemonArgs) -> anyhow::Result<i32> {
    let config = context::load(config)?;
    if config.policies.is_empty() {
        return Err(UsageError(format!(
            "no policies in {}: the daemon would have nothing to do",
            config.policies_dir.display()
        ))
        .into());
    }
    match crate::host::raise_open_files_limit() {
        Ok((soft, hard)) => tracing::debug!(soft, hard, "Open-file limit."),
        Err(e) => tracing::warn!(error = %e, "Could not raise the open-file limit."),
    }
    let config = Arc::new(config);
    let lease = Daemon::lease(&config).await?;
    let daemon = Daemon::new(config);
    // Refuse to start on a bad tokens file, like on any other configuration error.
    let state = crate::api::state(daemon.clone()).map_err(|e| UsageError(format!("{e:#}")))?;
    let stop = context::shutdown_token();
    let api = tokio::spawn(crate::api::serve(state, stop.clone()));
    let opts = DaemonOptions {
        shutdown_grace: args.shutdown_grace,
    };
    let run = daemon.run(&opts, stop.clone(), lease);
    tokio::pin!(run);
    let kept_lease = tokio::select! {
        kept = &mut run => kept,
        r = api => {
            // The API stopped before the daemon was told to: it could not listen.
            if let Ok(Err(e)) | Err(e) = r
                .map_err(anyhow::Error::from)
                .map(|served| served.map_err(anyhow::Error::from))
            {
                stop.cancel();
                run.await;
                return Err(e.context("the HTTP API failed"));
            }
            run.await
        }
    };
    if kept_lease {
        Ok(OK)
    } else {
        eprintln!(
            "dr: lost the leader lease; exiting so that a supervisor restarts this instance as standby"
        );
        Ok(FAILED)
    }
}
