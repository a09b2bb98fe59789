//! `dr daemon`: scheduled backups, WAL lag, replication, retention and the status API.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::units::parse_duration;
use crate::daemon::{Daemon, DaemonOptions};
use crate::error::{OK, UsageError};

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
    let daemon = Daemon::new(Arc::new(config));
    let stop = context::shutdown_token();
    daemon
        .run(
            &DaemonOptions {
                shutdown_grace: args.shutdown_grace,
            },
            stop,
        )
        .await;
    Ok(OK)
}
