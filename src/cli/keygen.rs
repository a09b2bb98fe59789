//! `dr keygen`: new age identities and chunk-id keys.

use std::path::PathBuf;

use crate::error::OK;
use crate::repo::keys::{ChunkIdKey, Identity};

/// Arguments of `dr keygen`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  dr keygen --out /etc/dr/restore.key          # prints the recipient to put in dr.toml\n  dr keygen --chunk-id-key /etc/dr/chunk-id.key\n  dr keygen --signing /etc/dr/drill-signing.key # prints the public key for keys.trusted_signers\n  dr keygen --api-token ci-bot --role operator  # prints the token once, and its tokens-file entry"
)]
pub struct KeygenArgs {
    /// Write a new age identity to this file (mode 0600) and print its recipient.
    #[arg(long, conflicts_with = "chunk_id_key")]
    pub out: Option<PathBuf>,
    /// Write a new chunk-id key to this file (mode 0600) instead.
    #[arg(long, conflicts_with = "signing")]
    pub chunk_id_key: Option<PathBuf>,
    /// Write a new Ed25519 drill-report signing key to this file (mode 0600) instead.
    #[arg(long)]
    pub signing: Option<PathBuf>,
    /// Make an API bearer token with this name instead (printed once, never stored).
    #[arg(long, conflicts_with_all = ["out", "chunk_id_key", "signing"], requires = "role")]
    pub api_token: Option<String>,
    /// Role of the API token.
    #[arg(long, value_parser = ["operator", "auditor"])]
    pub role: Option<String>,
}

pub(crate) fn run(args: &KeygenArgs) -> anyhow::Result<i32> {
    if let (Some(name), Some(role)) = (&args.api_token, &args.role) {
        let (token, hash) = crate::api::auth::generate_token();
        eprintln!(
            "Token for `{name}` (shown once; give it to the client as `Authorization: Bearer …`):"
        );
        outln!("{token}");
        eprintln!(
            "Add to the tokens file (api.tokens_file):\n\n[tokens.{name}]\nrole = \"{role}\"\ntoken_sha256 = \"{hash}\"\n"
        );
        return Ok(OK);
    }
    if let Some(path) = &args.signing {
        let (secret, public) = crate::drill::report::generate_signing_key();
        super::init::write_secret(path, &format!("{secret}\n"))?;
        eprintln!(
            "Wrote an Ed25519 signing key to {} (mode 0600). Put its public key in keys.trusted_signers:",
            path.display()
        );
        outln!("{public}");
        return Ok(OK);
    }
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
            outln!("{recipient}");
        }
        None => out!("{text}"),
    }
    Ok(OK)
}
