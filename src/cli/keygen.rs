//! `dr keygen`: new age identities and chunk-id keys.

use std::path::PathBuf;

use crate::error::OK;
use crate::repo::keys::{ChunkIdKey, Identity};

/// Arguments of `dr keygen`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  dr keygen --out /etc/dr/restore.key          # prints the recipient to put in dr.toml\n  dr keygen --chunk-id-key /etc/dr/chunk-id.key"
)]
pub struct KeygenArgs {
    /// Write a new age identity to this file (mode 0600) and print its recipient.
    #[arg(long, conflicts_with = "chunk_id_key")]
    pub out: Option<PathBuf>,
    /// Write a new chunk-id key to this file (mode 0600) instead.
    #[arg(long)]
    pub chunk_id_key: Option<PathBuf>,
}

pub(crate) fn run(args: &KeygenArgs) -> anyhow::Result<i32> {
    if let Some(path) = &args.chunk_id_key {
        super::init::write_secret(path, &format!("{}\n", ChunkIdKey::generate_hex()))?;
        eprintln!(
            "Wrote a chunk-id key to {} (mode 0600). Every writer of a repository needs the same one.",
            path.display()
        );
        return Ok(OK);
    }
    let (text, recipient) = Identity::generate();
    match &args.out {
        Some(path) => {
            super::init::write_secret(path, &text)?;
            eprintln!("Wrote an age identity to {} (mode 0600).", path.display());
            println!("{recipient}");
        }
        None => print!("{text}"),
    }
    Ok(OK)
}
