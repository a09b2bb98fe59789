//! `dr ls --policy ID SNAPSHOT [PATH]`: what a snapshot holds, read from its manifest alone.

use std::io::Write;
use std::path::Path;

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
    /// Snapshot: an id, a unique prefix of one or of the part after its `-`, `latest`,
    /// `latest~N` or `latest@TIME`.
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
    let s = context::Snapshots::open(config, &args.policy, args.region.as_deref()).await?;
    let manifest = s.manifest(&args.snapshot).await?;
    let identity = s.identity.clone();
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
    if json {
        writeln!(out, "{}", entry_json(a))
    } else {
        writeln!(out, "{}", entry_line(a, long))
    }
}

/// An entry as JSON: name, kind, mode, size, mtime, blake3, target.
pub(super) fn entry_json(a: &Artifact) -> serde_json::Value {
    serde_json::json!({
        "name": String::from_utf8_lossy(&a.name.0),
        "kind": a.kind,
        "mode": format!("{:o}", a.mode & 0o7777),
        "size": a.size,
        "mtime": a.mtime_ns.map(|t| chrono::DateTime::from_timestamp_nanos(t).to_rfc3339()),
        "blake3": a.blake3.map(|d| hex::encode(d.0)),
        "target": a.target.as_ref().map(|t| String::from_utf8_lossy(&t.0)),
    })
}

/// An entry as one line: its name (and link target), with `long` its kind, mode, size and
/// modification time (UTC) before it. Control characters in names are escaped, so that an
/// entry is one line even with a newline in its name (as `ls -b` does).
pub(super) fn entry_line(a: &Artifact, long: bool) -> String {
    let name = printable(&String::from_utf8_lossy(&a.name.0));
    let arrow = a
        .target
        .as_ref()
        .map(|t| format!(" -> {}", printable(&String::from_utf8_lossy(&t.0))))
        .unwrap_or_default();
    if !long {
        return format!("{name}{arrow}");
    }
    let kind = match a.kind {
        EntryKind::File | EntryKind::Stream => '-',
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
    };
    let mtime = a.mtime_ns.map_or("-".repeat(19), |t| {
        chrono::DateTime::from_timestamp_nanos(t)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    });
    format!(
        "{kind}{:04o} {:>10} {mtime} {name}{arrow}",
        a.mode & 0o7777,
        format_bytes(a.size)
    )
}

/// `name` with control characters escaped (`\n`, `\t`, `\u{1b}`), everything else as is.
pub(super) fn printable(name: &str) -> String {
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
