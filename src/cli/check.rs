//! `dr check`: sources and storage targets against the live systems, with a capability probe
//! per target recorded under the state directory.

use std::path::Path;

use crate::error::{FAILED, OK};
use crate::source::AnySource;

use super::context;

/// Arguments of `dr check`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  dr -c /etc/dr/dr.toml check\nWrites probe objects under scratch/ in each target and records what the store really supports\n(versioning, Object Lock, storage classes, conditional writes) in <state_dir>/capabilities/<target>.json."
)]
pub struct CheckArgs {
    /// Only this policy's source and targets.
    #[arg(long)]
    pub policy: Option<String>,
}

pub(crate) async fn run(config: Option<&Path>, args: &CheckArgs) -> anyhow::Result<i32> {
    let config = context::load(config)?;
    let policies: Vec<_> = match &args.policy {
        Some(p) => vec![context::policy(&config, p)?],
        None => config.policies.values().collect(),
    };
    let mut targets: Vec<&str> = policies
        .iter()
        .flat_map(|p| p.targets.iter().map(String::as_str))
        .collect();
    if args.policy.is_none() {
        targets = config.storage.keys().map(String::as_str).collect();
    }
    targets.sort_unstable();
    targets.dedup();
    let mut failed = false;
    for name in targets {
        let result = async {
            let s = context::storage(&config, name).await?;
            let caps = s.probe().await?;
            let dir = config.state_dir.join("capabilities");
            std::fs::create_dir_all(&dir)?;
            std::fs::write(
                dir.join(format!("{name}.json")),
                serde_json::to_vec_pretty(&caps)?,
            )?;
            anyhow::Ok((s.location().to_owned(), caps))
        }
        .await;
        match result {
            Ok((loc, c)) => outln!(
                "storage {name} ({loc}): OK; versioning {}, object lock {}, storage classes {}, conditional writes {}",
                yes(c.versioning),
                yes(c.object_lock),
                yes(c.storage_classes),
                yes(c.conditional_writes)
            ),
            Err(e) => {
                failed = true;
                outln!("storage {name}: FAILED: {e:#}");
            }
        }
    }
    for p in policies {
        match AnySource::from_spec(&p.source).check().await {
            Ok(()) => outln!("policy {} ({}): source OK", p.id, p.source.kind()),
            Err(e) => {
                failed = true;
                outln!(
                    "policy {} ({}): source FAILED: {}",
                    p.id,
                    p.source.kind(),
                    anyhow::Error::from(e)
                );
            }
        }
        if let (crate::config::SourceSpec::Postgres(spec), Some(stream)) =
            (&p.source, &p.wal.stream)
        {
            let dirs: Vec<std::path::PathBuf> = spec.bin_dir.clone().into_iter().collect();
            let checked = match spec.conninfo.read() {
                Ok(c) => crate::source::postgres::receivewal::check(&c, &stream.slot, &dirs)
                    .await
                    .map_err(anyhow::Error::from),
                Err(e) => Err(anyhow::Error::from(e)),
            };
            match checked {
                Ok(line) => outln!("policy {}: {line}", p.id),
                Err(e) => {
                    failed = true;
                    outln!("policy {}: WAL streaming FAILED: {e:#}", p.id);
                }
            }
        }
    }
    Ok(if failed { FAILED } else { OK })
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
