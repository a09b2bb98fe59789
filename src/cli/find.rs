//! `dr find --policy ID PATTERN`: which snapshots hold a path, read from their manifests.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{OK, UsageError};
use crate::repo::manifest::Artifact;

use super::context;
use super::ls::{entry_json, entry_line};

/// Arguments of `dr find`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "PATTERN is a glob: without a `/` it matches entry names anywhere (like \
`find -name`), with one (a leading `/` too) the whole path from the source root (`*` within a component, `**` \
across them). Snapshots are searched newest first; each one's manifest is read (needs the \
restore identity), no data.

Examples:
  dr find --policy app-files nginx.conf
  dr find --policy app-files 'etc/**/*.conf' --newest 5
  dr find --policy app-files '*.sqlite' --json | jq -r .snapshot | sort -u"
)]
pub struct FindArgs {
    /// Policy id.
    #[arg(long)]
    pub policy: String,
    /// Glob to look for.
    pub pattern: String,
    /// Search only the N newest snapshots.
    #[arg(long, value_name = "N")]
    pub newest: Option<usize>,
    /// One JSON object per match (snapshot, name, kind, mode, size, mtime, blake3, target).
    #[arg(long)]
    pub json: bool,
    /// Read a replica's copy instead of the primary.
    #[arg(long)]
    pub region: Option<String>,
}

/// Matches a name (a pattern without `/`) or a whole path.
struct Pattern {
    glob: globset::GlobMatcher,
    whole_path: bool,
}

impl Pattern {
    fn new(pattern: &str) -> Result<Self, UsageError> {
        let rel = pattern.trim_start_matches('/').trim_end_matches('/');
        let glob = crate::pipeline::selection::compile(rel, pattern)
            .map_err(|e| UsageError(e.to_string()))?;
        Ok(Self {
            glob: glob.compile_matcher(),
            // A leading `/` anchors a pattern at the root too.
            whole_path: pattern.trim_end_matches('/').contains('/'),
        })
    }

    fn matches(&self, name: &[u8]) -> bool {
        let name = if self.whole_path {
            name
        } else {
            name.rsplit(|&c| c == b'/').next().unwrap_or(name)
        };
        self.glob.is_match(Path::new(OsStr::from_bytes(name)))
    }
}

pub(crate) async fn run(config: Option<&Path>, args: &FindArgs) -> anyhow::Result<i32> {
    let pattern = std::sync::Arc::new(Pattern::new(&args.pattern)?);
    let s = context::Snapshots::open(config, &args.policy, args.region.as_deref()).await?;
    let mut ids = s.repo.committed(&s.policy).await?;
    ids.reverse();
    ids.truncate(args.newest.unwrap_or(usize::MAX));
    let (mut holding, searched) = (0usize, ids.len());
    for id in ids {
        let manifest = s.manifest_of(&id).await?;
        let (identity, pattern, json) = (s.identity.clone(), pattern.clone(), args.json);
        let found = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut found = 0;
            manifest.read(&identity, &mut |a: Artifact| {
                if !pattern.matches(&a.name.0) {
                    return Ok(());
                }
                found += 1;
                if json {
                    let mut v = entry_json(&a);
                    v["snapshot"] = id.to_string().into();
                    writeln!(out, "{v}")?;
                } else {
                    if found == 1 {
                        writeln!(
                            out,
                            "{id} (taken {}):",
                            manifest.started.format("%Y-%m-%d %H:%M:%S UTC")
                        )?;
                    }
                    writeln!(out, "  {}", entry_line(&a, true))?;
                }
                anyhow::Ok(())
            })?;
            out.flush()?;
            Ok(found)
        })
        .await??;
        holding += usize::from(found > 0);
    }
    if !args.json {
        outln!(
            "{holding} of {searched} snapshots searched hold a match for `{}`.",
            args.pattern
        );
    }
    Ok(OK)
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn a_pattern_without_a_slash_matches_names_anywhere_one_with_a_slash_whole_paths() {
        let name = Pattern::new("*.conf").unwrap();
        assert!(name.matches(b"etc/nginx/nginx.conf"));
        assert!(name.matches(b"top.conf"));
        assert!(!name.matches(b"etc/nginx.conf.d/x"));
        let path = Pattern::new("/etc/*/nginx.conf").unwrap();
        assert!(path.matches(b"etc/nginx/nginx.conf"));
        assert!(!path.matches(b"srv/etc/nginx/nginx.conf"));
        assert!(Pattern::new("/top.conf").unwrap().matches(b"top.conf"));
        assert!(!Pattern::new("/top.conf").unwrap().matches(b"etc/top.conf"));
        assert!(Pattern::new("a[").is_err());
    }
}
