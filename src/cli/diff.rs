//! `dr diff --policy ID SNAPSHOT1 SNAPSHOT2`: what changed between two snapshots, from their
//! manifests alone (content compared by size and BLAKE3, no data read).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use crate::config::units::format_bytes;
use crate::error::OK;
use crate::pipeline::{PipelineError, SpooledManifest};
use crate::repo::keys::Identity;
use crate::repo::manifest::Artifact;

use super::context;
use super::ls::printable;

/// Arguments of `dr diff`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Each line is one entry: `+` added, `-` removed, `M` content changed \
(size or BLAKE3; PostgreSQL relation files, which have no whole-file hash, by their chunk \
references), `T` type changed (file, directory, symlink), `U` only mode or modification \
time changed; then the totals. With --json, one object per change (change, name, kind, \
size_before, size_after) and a last line {\"summary\": {...}}.

Examples:
  dr diff --policy app-files latest~1 latest
  dr diff --policy pg-main 20261122 20261123 --json | jq -r 'select(.change == \"M\") | .name'"
)]
pub struct DiffArgs {
    /// Policy id.
    #[arg(long)]
    pub policy: String,
    /// The older snapshot (an id, a prefix, `latest~N`, `latest@TIME`).
    pub from: String,
    /// The newer snapshot.
    pub to: String,
    /// Also list entries whose mode or modification time alone changed.
    #[arg(long)]
    pub metadata: bool,
    /// JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
    /// Read a replica's copy instead of the primary.
    #[arg(long)]
    pub region: Option<String>,
}

/// An entry without its chunk list. A file recorded without a whole-file hash (PostgreSQL
/// relation files) gets the hash of its chunk references in its place: equal references are
/// equal bytes (chunk ids are keyed content hashes); a file rewritten with the same bytes
/// into other chunks shows as modified.
fn strip(mut a: Artifact) -> Artifact {
    if a.blake3.is_none() && !a.chunks.is_empty() {
        let mut h = blake3::Hasher::new();
        for c in &a.chunks {
            h.update(&c.0.0);
            h.update(&c.1.to_le_bytes());
            h.update(&c.start().to_le_bytes());
        }
        a.blake3 = Some(crate::repo::manifest::Digest(*h.finalize().as_bytes()));
    }
    a.chunks = Vec::new();
    a
}

/// Tree order: `Path`'s, component by component (the order dr's walker writes).
fn tree_cmp(a: &[u8], b: &[u8]) -> Ordering {
    Path::new(OsStr::from_bytes(a)).cmp(Path::new(OsStr::from_bytes(b)))
}

/// What happened to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
enum Change {
    #[serde(rename = "+")]
    Added,
    #[serde(rename = "-")]
    Removed,
    #[serde(rename = "M")]
    Modified,
    #[serde(rename = "T")]
    Type,
    #[serde(rename = "U")]
    Metadata,
}

/// How `new` differs from `old` (the same name), if it does.
fn compare(old: &Artifact, new: &Artifact) -> Option<Change> {
    if old.kind != new.kind {
        Some(Change::Type)
    } else if old.size != new.size || old.blake3 != new.blake3 || old.target != new.target {
        Some(Change::Modified)
    } else if old.mode != new.mode || old.mtime_ns != new.mtime_ns {
        Some(Change::Metadata)
    } else {
        None
    }
}

/// Counts and bytes of a diff.
#[derive(Debug, Default, serde::Serialize)]
struct Totals {
    added: u64,
    removed: u64,
    modified: u64,
    type_changed: u64,
    metadata: u64,
    bytes_added: u64,
    bytes_removed: u64,
    /// Sizes after minus before, of the modified entries.
    bytes_modified_delta: i64,
}

impl Totals {
    fn count(&mut self, c: Change, old: Option<&Artifact>, new: Option<&Artifact>) {
        let (before, after) = (old.map_or(0, |a| a.size), new.map_or(0, |a| a.size));
        match c {
            Change::Added => (self.added += 1, self.bytes_added += after).1,
            Change::Removed => (self.removed += 1, self.bytes_removed += before).1,
            Change::Modified | Change::Type => {
                if c == Change::Modified {
                    self.modified += 1;
                } else {
                    self.type_changed += 1;
                }
                self.bytes_modified_delta += after as i64 - before as i64;
            }
            Change::Metadata => self.metadata += 1,
        }
    }
}

/// Takes one change: its kind, the entry before and after.
type Emit<'a> = dyn FnMut(Change, Option<&Artifact>, Option<&Artifact>) -> anyhow::Result<()> + 'a;

/// Walks both manifests in step (both in tree order: memory is two entries), or, when one of
/// them is not in tree order (PostgreSQL's are in the server's order; thousands of entries),
/// holds the older one's entries by name. Hands each change to `emit` in tree order.
fn diff(
    from: &SpooledManifest,
    to: &SpooledManifest,
    identity: &Arc<Identity>,
    emit: &mut Emit<'_>,
) -> anyhow::Result<()> {
    if in_tree_order(from, identity)? && in_tree_order(to, identity)? {
        let (old, old_reader) = stream(from.clone(), identity.clone());
        let (new, new_reader) = stream(to.clone(), identity.clone());
        let (mut o, mut n) = (old.recv().ok(), new.recv().ok());
        let result = loop {
            // Less: `o` is gone from the newer snapshot; Greater: `n` is new; Equal: both.
            let order = match (&o, &n) {
                (None, None) => break Ok(()),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(a), Some(b)) => tree_cmp(&a.name.0, &b.name.0),
            };
            let r = match order {
                Ordering::Less => emit(Change::Removed, o.as_ref(), None),
                Ordering::Greater => emit(Change::Added, None, n.as_ref()),
                Ordering::Equal => {
                    let (a, b) = (o.as_ref().expect("both"), n.as_ref().expect("both"));
                    compare(a, b).map_or(Ok(()), |c| emit(c, Some(a), Some(b)))
                }
            };
            if let Err(e) = r {
                break Err(e);
            }
            if order != Ordering::Greater {
                o = old.recv().ok();
            }
            if order != Ordering::Less {
                n = new.recv().ok();
            }
        };
        drop((old, new));
        for r in [old_reader.join(), new_reader.join()] {
            // A reader stopped by the dropped channel returns Ok; a corrupt manifest its error.
            r.map_err(|_| anyhow::anyhow!("a manifest reader died"))??;
        }
        return result;
    }
    let mut old: BTreeMap<Box<Path>, Artifact> = BTreeMap::new();
    from.read(identity, &mut |a| {
        old.insert(Path::new(OsStr::from_bytes(&a.name.0)).into(), strip(a));
        Ok::<_, PipelineError>(())
    })?;
    let mut changes: BTreeMap<Box<Path>, (Change, Option<Artifact>, Option<Artifact>)> =
        BTreeMap::new();
    to.read(identity, &mut |b| {
        let key: Box<Path> = Path::new(OsStr::from_bytes(&b.name.0)).into();
        let b = strip(b);
        match old.remove(&key) {
            None => {
                changes.insert(key, (Change::Added, None, Some(b)));
            }
            Some(a) => {
                if let Some(c) = compare(&a, &b) {
                    changes.insert(key, (c, Some(a), Some(b)));
                }
            }
        }
        Ok::<_, PipelineError>(())
    })?;
    for (key, a) in old {
        changes.insert(key, (Change::Removed, Some(a), None));
    }
    for (c, a, b) in changes.values() {
        emit(*c, a.as_ref(), b.as_ref())?;
    }
    Ok(())
}

/// Whether every entry comes after the one before it in tree order.
fn in_tree_order(m: &SpooledManifest, identity: &Identity) -> anyhow::Result<bool> {
    let (mut last, mut sorted): (Option<Vec<u8>>, bool) = (None, true);
    m.read(identity, &mut |a| {
        if sorted {
            sorted = last
                .as_deref()
                .is_none_or(|l| tree_cmp(l, &a.name.0) == Ordering::Less);
            last = Some(a.name.0);
        }
        Ok::<_, PipelineError>(())
    })?;
    Ok(sorted)
}

/// A thread reading `m`'s entries into a small queue.
fn stream(
    m: SpooledManifest,
    identity: Arc<Identity>,
) -> (
    std::sync::mpsc::Receiver<Artifact>,
    std::thread::JoinHandle<Result<(), PipelineError>>,
) {
    let (tx, rx) = std::sync::mpsc::sync_channel(1024);
    let reader = std::thread::spawn(move || {
        let r = m.read(&identity, &mut |a| {
            tx.send(strip(a)).map_err(|_| PipelineError::Cancelled)
        });
        match r {
            Err(PipelineError::Cancelled) => Ok(()),
            other => other,
        }
    });
    (rx, reader)
}

pub(crate) async fn run(config: Option<&Path>, args: &DiffArgs) -> anyhow::Result<i32> {
    let s = context::Snapshots::open(config, &args.policy, args.region.as_deref()).await?;
    let from = s.manifest(&args.from).await?;
    let to = s.manifest(&args.to).await?;
    let (identity, json, metadata) = (s.identity.clone(), args.json, args.metadata);
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        if !json {
            writeln!(
                out,
                "from {} (taken {})\n  to {} (taken {})",
                from.snapshot,
                from.started.format("%Y-%m-%d %H:%M:%S UTC"),
                to.snapshot,
                to.started.format("%Y-%m-%d %H:%M:%S UTC"),
            )?;
        }
        let mut totals = Totals::default();
        diff(&from, &to, &identity, &mut |c, a, b| {
            totals.count(c, a, b);
            if c == Change::Metadata && !metadata {
                return Ok(());
            }
            let e = b.or(a).expect("a change has an entry");
            if json {
                let line = serde_json::json!({
                    "change": c,
                    "name": String::from_utf8_lossy(&e.name.0),
                    "kind": e.kind,
                    "size_before": a.map(|a| a.size),
                    "size_after": b.map(|b| b.size),
                });
                writeln!(out, "{line}")?;
            } else {
                let sizes = match (a, b) {
                    (Some(a), Some(b)) if a.size != b.size => {
                        format!("  ({} -> {})", format_bytes(a.size), format_bytes(b.size))
                    }
                    _ => format!("  ({})", format_bytes(e.size)),
                };
                let sym = serde_json::to_value(c)?;
                writeln!(
                    out,
                    "{} {}{sizes}",
                    sym.as_str().unwrap_or("?"),
                    printable(&String::from_utf8_lossy(&e.name.0))
                )?;
            }
            Ok(())
        })?;
        if json {
            writeln!(out, "{}", serde_json::json!({ "summary": totals }))?;
        } else {
            let delta = totals.bytes_modified_delta;
            writeln!(
                out,
                "{} added ({}), {} removed ({}), {} modified ({}{}), {} changed type, {} metadata only{}",
                totals.added,
                format_bytes(totals.bytes_added),
                totals.removed,
                format_bytes(totals.bytes_removed),
                totals.modified,
                if delta < 0 { "-" } else { "+" },
                format_bytes(delta.unsigned_abs()),
                totals.type_changed,
                totals.metadata,
                if metadata { "" } else { " (listed with --metadata)" },
            )?;
        }
        out.flush()?;
        Ok(())
    })
    .await??;
    Ok(OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::{EntryKind, EntryName};

    fn art(name: &str, size: u64, mode: u32) -> Artifact {
        Artifact {
            name: EntryName(name.as_bytes().to_vec()),
            kind: EntryKind::File,
            mode,
            mtime_ns: Some(1),
            size,
            blake3: None,
            target: None,
            chunks: vec![],
        }
    }

    #[test]
    fn tree_order_is_by_component_not_by_byte() {
        // `-` sorts before `/` byte-wise, after the end of a component tree-wise.
        assert_eq!(tree_cmp(b"a/b", b"a-c"), Ordering::Less);
        assert_eq!(tree_cmp(b".", b"-dash"), Ordering::Less);
        assert_eq!(tree_cmp(b"a", b"a/b"), Ordering::Less);
    }

    #[test]
    fn changes_are_classified_by_what_differs() {
        let a = art("x", 1, 0o644);
        assert_eq!(compare(&a, &a), None);
        assert_eq!(compare(&a, &art("x", 2, 0o644)), Some(Change::Modified));
        assert_eq!(compare(&a, &art("x", 1, 0o600)), Some(Change::Metadata));
        let mut d = art("x", 0, 0o755);
        d.kind = EntryKind::Dir;
        assert_eq!(compare(&a, &d), Some(Change::Type));
    }
}
