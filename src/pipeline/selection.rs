//! Which entries of a snapshot a partial restore takes: `--include` / `--exclude` globs
//! matched against entry paths (relative to the source root), as restic and rsync users
//! expect.
//!
//! A pattern matches an entry when it matches the entry's path or the path of a directory
//! above it, so `etc/nginx` takes everything under that directory. A pattern with a `/`
//! (other than at its end) is anchored at the source root; one without matches at any depth
//! (`*.log`, `cache`), as in rsync and restic; a leading `/` anchors it (`/cache`). `*` stays within one path
//! component, `**` crosses them (`**/*.conf`), `?`, `[abc]` and `{a,b}` work as in a shell.
//! An entry is taken when no `--include` is given or one matches, and no `--exclude` matches.
//! The directories above a taken entry are taken too (with their modes and times), so a
//! restored file always lands at its place in the tree.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::repo::manifest::{Artifact, EntryKind};

/// Include and exclude patterns.
#[derive(Debug, Clone)]
pub struct Selection {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

/// A pattern that is not a glob.
#[derive(Debug, thiserror::Error)]
#[error("`{pattern}` is not a valid glob: {reason}")]
pub struct BadPattern {
    pub pattern: String,
    pub reason: String,
}

/// `glob` (made from the user's `pattern`) with dr's rules: `*` stays within a component,
/// `\` escapes. Also `dr find`'s.
///
/// # Errors
/// Not a glob, named by the user's pattern.
pub fn compile(glob: &str, pattern: &str) -> Result<Glob, BadPattern> {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| BadPattern {
            pattern: pattern.to_owned(),
            reason: e.kind().to_string(),
        })
}

fn set(patterns: &[String]) -> Result<Option<GlobSet>, BadPattern> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        // Paths in a snapshot are relative: `/etc` means `etc`, `etc/` the same directory.
        // A pattern with no `/` but at its end matches at any depth, as rsync's do.
        let trimmed = p.trim_end_matches('/');
        let rel = trimmed.trim_start_matches('/');
        let any_depth = !trimmed.contains('/');
        let glob = match (rel.is_empty(), any_depth) {
            (true, _) => "**".to_owned(),
            (false, true) => format!("**/{rel}"),
            (false, false) => rel.to_owned(),
        };
        b.add(compile(&glob, p)?);
    }
    b.build().map(Some).map_err(|e| BadPattern {
        pattern: patterns.join(" "),
        reason: e.to_string(),
    })
}

/// Whether `set` matches `name` or one of the directories above it.
fn matches(set: &GlobSet, name: &[u8]) -> bool {
    let at = |end: usize| set.is_match(Path::new(OsStr::from_bytes(&name[..end])));
    name.iter()
        .enumerate()
        .filter(|&(_, &c)| c == b'/')
        .any(|(i, _)| at(i))
        || at(name.len())
}

impl Selection {
    /// The patterns of `--include` and `--exclude`.
    ///
    /// # Errors
    /// A pattern that is not a glob, named.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, BadPattern> {
        Ok(Self {
            include: set(include)?,
            exclude: set(exclude)?,
        })
    }

    /// Whether this selects everything (no pattern given).
    pub fn is_all(&self) -> bool {
        self.include.is_none() && self.exclude.is_none()
    }

    /// Whether the entry `name` itself is selected (without the directories above taken
    /// entries: see [`Taken`]).
    pub fn takes(&self, name: &[u8]) -> bool {
        if is_root(name) {
            return true;
        }
        self.include.as_ref().is_none_or(|s| matches(s, name))
            && !self.exclude.as_ref().is_some_and(|s| matches(s, name))
    }
}

fn is_root(name: &[u8]) -> bool {
    name.is_empty() || name == b"."
}

/// A selection applied to one snapshot: the entries it takes and the directories above them.
#[derive(Debug)]
pub struct Taken {
    selection: Selection,
    /// Directories not selected themselves that hold a selected entry (memory in proportion to
    /// the directories of what is restored, not to the files).
    above: HashSet<Box<[u8]>>,
    /// Entries taken, directories above included.
    pub entries: u64,
    /// Plaintext bytes taken.
    pub bytes: u64,
}

impl Taken {
    /// An empty set of directories for `selection`; feed it a snapshot with [`Taken::see`].
    pub fn new(selection: Selection) -> Self {
        Self {
            selection,
            above: HashSet::new(),
            entries: 0,
            bytes: 0,
        }
    }

    /// Records one artifact of the snapshot (first pass, in any order).
    pub fn see(&mut self, a: &Artifact) {
        let name = &a.name.0;
        if !self.selection.takes(name) {
            return;
        }
        self.entries += 1;
        self.bytes += a.size;
        for (i, _) in name.iter().enumerate().filter(|&(_, &c)| c == b'/') {
            let dir = &name[..i];
            if !self.selection.takes(dir) && self.above.insert(dir.into()) {
                self.entries += 1;
            }
        }
    }

    /// Whether the restore writes `a` (second and later passes).
    pub fn keeps(&self, a: &Artifact) -> bool {
        self.selection.takes(&a.name.0)
            || (a.kind == EntryKind::Dir && self.above.contains(&a.name.0[..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::EntryName;

    fn art(name: &str, kind: EntryKind) -> Artifact {
        Artifact {
            name: EntryName(name.as_bytes().to_vec()),
            kind,
            mode: 0o644,
            mtime_ns: None,
            size: 1,
            blake3: None,
            target: None,
            chunks: vec![],
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn patterns_match_the_entry_or_a_directory_above_it() {
        let s = Selection::new(&strings(&["/etc/nginx/", "**/*.conf"]), &[]).unwrap();
        assert!(s.takes(b"etc/nginx"));
        assert!(s.takes(b"etc/nginx/sites/default"));
        assert!(s.takes(b"srv/app/app.conf"));
        assert!(s.takes(b"app.conf"));
        assert!(!s.takes(b"etc/nginx-old/x"));
        assert!(!s.takes(b"etc"));
        assert!(s.takes(b"."), "the root is always taken");
        // `*` stays within a component.
        let one = Selection::new(&strings(&["etc/*.conf"]), &[]).unwrap();
        assert!(one.takes(b"etc/a.conf"));
        assert!(!one.takes(b"etc/sub/a.conf"));
        // Without a `/`, any depth; a leading `/` anchors.
        let name = Selection::new(&strings(&["cache"]), &[]).unwrap();
        assert!(name.takes(b"cache/x") && name.takes(b"srv/cache/x"));
        let anchored = Selection::new(&strings(&["/cache"]), &[]).unwrap();
        assert!(anchored.takes(b"cache/x") && !anchored.takes(b"srv/cache/x"));
    }

    #[test]
    fn excludes_win_over_includes() {
        let s = Selection::new(&strings(&["var"]), &strings(&["var/cache", "*.tmp"])).unwrap();
        assert!(s.takes(b"var/lib/x"));
        assert!(!s.takes(b"var/cache/y"));
        assert!(!s.takes(b"var/lib/z.tmp"));
        assert!(!s.takes(b"home/x"));
        assert!(Selection::new(&[], &[]).unwrap().is_all());
        let e = Selection::new(&strings(&["a[b"]), &[]).unwrap_err();
        assert!(e.to_string().contains("a[b"), "{e}");
    }

    #[test]
    fn directories_above_a_taken_entry_are_kept_and_no_others() {
        let s = Selection::new(&strings(&["a/b/wanted.txt"]), &[]).unwrap();
        let all = [
            art(".", EntryKind::Dir),
            art("a", EntryKind::Dir),
            art("a/b", EntryKind::Dir),
            art("a/b/wanted.txt", EntryKind::File),
            art("a/b/other.txt", EntryKind::File),
            art("a/c", EntryKind::Dir),
            art("z", EntryKind::Dir),
        ];
        let mut t = Taken::new(s);
        for a in &all {
            t.see(a);
        }
        let kept: Vec<&str> = all
            .iter()
            .filter(|a| t.keeps(a))
            .map(|a| std::str::from_utf8(&a.name.0).unwrap())
            .collect();
        assert_eq!(kept, [".", "a", "a/b", "a/b/wanted.txt"]);
        assert_eq!((t.entries, t.bytes), (4, 2));
    }
}
