//! `dr ls --policy ID SNAPSHOT [PATH]`: what a snapshot holds, read from its manifest alone.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::config::units::format_bytes;
use crate::error::OK;
use crate::repo::manifest::{Artifact, EntryKind};

use super::context;

/// Arguments of `dr ls`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Lists every entry at or under PATH (default: all), in the snapshot's order.
Reads only the manifest (needs the restore identity: manifests are encrypted to it).

Examples:
  dr ls --policy app-files latest
  dr ls --policy app-files 20261123T1402 etc/nginx -l
  dr ls --policy pg-main latest base --json | jq -r 'select(.size > 1e9) | .name'"
)]
pub struct LsArgs {
    /// Policy id.
    #[arg(long)]
    pub policy: String,
    /// Snapshot id, a unique prefix of one, or `latest`.
    pub snapshot: String,
    /// Only this path and what is under it (relative to the source root).
    pub path: Option<String>,
    /// Long format: kind and mode, size, modification time (UTC).
    #[arg(short, long)]
    pub long: bool,
    /// One JSON object per line (name, kind, mode, size, mtime, blake3, target).
    #[arg(long)]
    pub json: bool,
    /// Read a replica's copy instead of the primary.
    #[arg(long)]
    pub region: Option<String>,
}

/// Whether `name` is `path` or under it, component-wise (`a/b` is under `a`, `ab` is not).
fn under(name: &[u8], path: &[u8]) -> bool {
    path.is_empty()
        || path == b"."
        || name
            .strip_prefix(path)
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
}

pub(crate) async fn run(config: Option<&Path>, args: &LsArgs) -> anyhow::Result<i32> {
    let config = context::load_scoped(config, crate::config::Scope::Focus(&args.policy))?;
    let policy = context::policy(&config, &args.policy)?;
    let identity = Arc::new(context::identity(&config)?);
    let repo = context::read_repo(&config, policy, args.region.as_deref()).await?;
    let id = repo.resolve(policy.id.as_str(), &args.snapshot).await?;
    let manifest = repo
        .spool_manifest(identity.clone(), policy.id.as_str(), &id)
        .await?;
    let path = args
        .path
        .as_deref()
        .unwrap_or("")
        .trim_matches('/')
        .as_bytes()
        .to_vec();
    let (long, json) = (args.long, args.json);
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        manifest.read(&identity, &mut |a: Artifact| {
            if under(&a.name.0, &path) {
                print(&mut out, &a, long, json)?;
            }
            anyhow::Ok(())
        })?;
        out.flush()?;
        Ok(())
    })
    .await??;
    Ok(OK)
}

fn print(out: &mut impl Write, a: &Artifact, long: bool, json: bool) -> std::io::Result<()> {
    let name = String::from_utf8_lossy(&a.name.0);
    let target = a.target.as_ref().map(|t| String::from_utf8_lossy(&t.0));
    if !json {
        // One entry per line even for names with a newline in them (as `ls -b` does).
        let (name, target) = (printable(&name), target.map(|t| printable(&t)));
        return print_text(out, a, &name, target.as_deref(), long);
    }
    let mtime = a.mtime_ns.map(chrono::DateTime::from_timestamp_nanos);
    let line = serde_json::json!({
        "name": name,
        "kind": a.kind,
        "mode": format!("{:o}", a.mode & 0o7777),
        "size": a.size,
        "mtime": mtime.map(|t| t.to_rfc3339()),
        "blake3": a.blake3.map(|d| hex::encode(d.0)),
        "target": target,
    });
    writeln!(out, "{line}")
}

/// `name` with control characters escaped (`\n`, `\t`, `\u{1b}`), everything else as is.
fn printable(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn print_text(
    out: &mut impl Write,
    a: &Artifact,
    name: &str,
    target: Option<&str>,
    long: bool,
) -> std::io::Result<()> {
    let mtime = a.mtime_ns.map(chrono::DateTime::from_timestamp_nanos);
    let arrow = target.map(|t| format!(" -> {t}")).unwrap_or_default();
    if !long {
        return writeln!(out, "{name}{arrow}");
    }
    let kind = match a.kind {
        EntryKind::File | EntryKind::Stream => '-',
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
    };
    writeln!(
        out,
        "{kind}{:04o} {:>10} {} {name}{arrow}",
        a.mode & 0o7777,
        format_bytes(a.size),
        mtime.map_or("-".repeat(19), |t| t
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::{printable, under};

    #[test]
    fn control_characters_in_names_are_escaped() {
        assert_eq!(printable("new\nline"), "new\\nline");
        assert_eq!(printable("tab\there ünï"), "tab\\there ünï");
    }

    #[test]
    fn a_path_covers_itself_and_what_is_below_it_only() {
        assert!(under(b"etc/nginx", b"etc"));
        assert!(under(b"etc", b"etc"));
        assert!(under(b"anything", b""));
        assert!(under(b"anything", b"."));
        assert!(!under(b"etcetera", b"etc"));
        assert!(!under(b"et", b"etc"));
    }
}
