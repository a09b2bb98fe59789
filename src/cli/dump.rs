//! `dr dump --policy ID SNAPSHOT PATH`: one file of a snapshot to stdout.

use std::path::Path;

use crate::error::OK;

use super::context;

/// Arguments of `dr dump`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Writes the file's bytes to stdout as they are fetched (memory stays a few \
MiB whatever its size); each chunk is checked against its id, and the whole file against its \
recorded BLAKE3 at the end (exit 1 if it does not match, after the bytes went out).

Examples:
  dr dump --policy app-files latest etc/nginx/nginx.conf
  dr dump --policy app-files 1a2b3c4d srv/app/config.yml > config.yml
  dr dump --policy pg-main latest postgresql.auto.conf"
)]
pub struct DumpArgs {
    /// Policy id.
    #[arg(long)]
    pub policy: String,
    /// Snapshot: an id, a unique prefix of one or of the part after its `-`, `latest`,
    /// `latest~N` or `latest@TIME`.
    pub snapshot: String,
    /// The file, relative to the source root (as `dr ls` prints it).
    pub path: String,
    /// Read a replica's copy instead of the primary.
    #[arg(long)]
    pub region: Option<String>,
}

pub(crate) async fn run(config: Option<&Path>, args: &DumpArgs) -> anyhow::Result<i32> {
    let s = context::Snapshots::open(config, &args.policy, args.region.as_deref()).await?;
    let manifest = s.manifest(&args.snapshot).await?;
    let name = args.path.trim_start_matches('/');
    crate::pipeline::restore::dump(
        &s.repo,
        s.identity.clone(),
        &manifest,
        name.as_bytes(),
        Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout(),
        )),
    )
    .await?;
    Ok(OK)
}
