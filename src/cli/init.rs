//! `dr init --dir DIR`: a ready-to-run local setup.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::error::{OK, UsageError};
use crate::repo::keys::{ChunkIdKey, Identity};

/// Arguments of `dr init`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  dr init --dir ./dr-demo\n  cat > ./dr-demo/policies/app.toml <<'EOF'\n  source = { type = \"files\", path = \"/srv/app\" }\n  targets = [\"local\"]\n  EOF\n  dr -c ./dr-demo/dr.toml backup --policy app"
)]
pub struct InitArgs {
    /// Directory to create the setup in (created if missing; must not already hold dr.toml).
    #[arg(long)]
    pub dir: PathBuf,
    /// `init` writes a dr.toml and reads none: this hidden local `--config` keeps the global
    /// one (which clap propagates only to subcommands without an argument of that id) out of
    /// `dr init --help`. Given anyway, it is ignored.
    #[arg(short, long, hide = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Writes a secret file with mode 0600, refusing to overwrite.
pub(crate) fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // The mode given at creation is narrowed by the umask, never widened; set it anyway so
    // the file is 0600 exactly.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

pub(crate) fn run(args: &InitArgs) -> anyhow::Result<i32> {
    let dir = &args.dir;
    let config = dir.join("dr.toml");
    if config.exists() || dir.join("keys").exists() {
        return Err(UsageError(format!(
            "{} already holds a dr setup (dr.toml or keys/); refusing to overwrite it",
            dir.display()
        ))
        .into());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Modes set explicitly: whatever the umask, the setup is private to its owner.
    for sub in ["keys", "policies", "restore-drills", "repo", "state"] {
        let d = dir.join(sub);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .with_context(|| format!("creating {sub}/"))?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 700 {sub}/"))?;
    }
    let (identity, recipient) = Identity::generate();
    write_secret(&dir.join("keys/restore.key"), &identity)?;
    write_secret(
        &dir.join("keys/chunk-id.key"),
        &format!("{}\n", ChunkIdKey::generate_hex()),
    )?;
    let (signing, signer) = crate::drill::report::generate_signing_key();
    write_secret(&dir.join("keys/drill-signing.key"), &format!("{signing}\n"))?;
    let text = format!(
        r#"# dr configuration. Reference: README.md; every key is documented in src/config/raw.rs.

[keys]
# Every backup is encrypted to these age recipients (public keys). A host that only backs up
# needs nothing else; restoring needs the matching identity below.
recipients = ["{recipient}"]
# Private: keep it where restores and drills run. Backup-only hosts can delete it.
identity_file = "keys/restore.key"
# Secret shared by all writers of a repository (chunk ids and index MACs).
chunk_id_key_file = "keys/chunk-id.key"
# Signs restore drill reports; auditors check them against trusted_signers.
signing_key_file = "keys/drill-signing.key"
trusted_signers = ["{signer}"]

[storage.local]
type = "local"
path = "repo"

# A second region, for example:
# [storage.eu]
# type = "s3"
# bucket = "dr-eu"
# region = "eu-west-1"
# prefix = "prod/"
"#
    );
    write_secret(&config, &text)?;
    outln!("Created {}:", dir.display());
    outln!(
        "  dr.toml             storage target `local` at {}",
        dir.join("repo").display()
    );
    outln!("  keys/restore.key    age identity (mode 0600); recipient {recipient}");
    outln!("  keys/chunk-id.key   chunk-id key (mode 0600)");
    outln!(
        "  keys/drill-signing.key  Ed25519 key signing drill reports (mode 0600); public {signer}"
    );
    outln!("  policies/           one <policy-id>.toml per policy");
    outln!();
    outln!(
        "Next: write {} with",
        dir.join("policies/files.toml").display()
    );
    outln!("  source = {{ type = \"files\", path = \"/path/to/back/up\" }}");
    outln!("  targets = [\"local\"]");
    outln!("then run: dr -c {} backup --policy files", config.display());
    Ok(OK)
}
