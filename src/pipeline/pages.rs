//! Fixed-block artifacts (PostgreSQL relation files) backed up by page against the last
//! backup of the same file, pgBackRest's block incremental without its per-block metadata in
//! the repository.
//!
//! A file is read in windows of [`WINDOW_PAGES`] pages. Each page has a key: the first 16
//! bytes of its BLAKE3 chaining value at its place in the window's hash tree, which is how
//! the window's own chunk id is computed anyway
//! ([`crate::repo::keys::ChunkIdKey::window_id`]), so keys cost no hashing. The file cache
//! (writer-local, see `file_cache`) keeps each file's page keys and chunk references from the
//! last backup. Per window:
//!
//! * no page changed: the last backup's references for the window are taken as they are;
//! * up to [`MAX_CHANGED`] pages changed, and the window's pages would come from at most
//!   [`MAX_SOURCES`] chunks: the unchanged runs are slices of the old chunks, the changed pages
//!   go into the file's *delta* blob (up to a window's worth of changed pages), referenced by
//!   slices;
//! * otherwise, or without a last backup (first backup, lost cache, `--force-read`): the
//!   window is one chunk, deduplicated by its id like any other.
//!
//! So a full backup has one chunk and one reference per MiB (not one per 8 KiB page), an
//! unchanged window costs one reference, a changed page about two, and a window patched by
//! too many backups is rewritten whole: metadata follows the change, not the data size,
//! and no index of pages exists anywhere. References never cross a window boundary.

use crate::repo::ids::ChunkId;
use crate::repo::manifest::ChunkRef;

/// Pages per window: 1 MiB of 8 KiB pages.
pub const WINDOW_PAGES: usize = 128;
/// A window with more changed pages than this is stored whole.
pub const MAX_CHANGED: usize = WINDOW_PAGES / 2;
/// A window whose pages would come from more chunks than this is stored whole: a restore
/// reads every chunk a window takes pages from, so a window patched by many backups in a row
/// is rewritten rather than read from all of them. (A cap on the number of references
/// instead stored most B-tree index windows whole, whose leaf pages change scattered: 40 %
/// of a full backup for 2 % of pages changed. A reference costs ~40 bytes of manifest, a
/// window 0.1–1 MiB of storage.)
pub const MAX_SOURCES: usize = 8;

/// What tells a page from its earlier self.
pub type PageKey = [u8; 16];

/// The key of each page from the chaining values `window_id` left.
pub fn keys(cvs: &[[u8; 32]], out: &mut Vec<PageKey>) {
    out.extend(
        cvs.iter()
            .map(|cv| <PageKey>::try_from(&cv[..16]).expect("16 of 32")),
    );
}

/// One run of a window's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Unchanged pages: bytes of an existing chunk.
    Old(ChunkRef),
    /// Changed pages `first..first + pages` of the window, `len` bytes, to be stored.
    New {
        /// First page (in the window).
        first: usize,
        pages: usize,
        /// Bytes (the last page of a file may be short).
        len: u32,
    },
}

/// What to do with a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Store (or deduplicate) it as one chunk.
    Whole,
    /// Put it together from these runs, in order.
    Parts(Vec<Part>),
}

/// The last backup's view of one window: its page keys and the references covering it.
pub struct Before<'a> {
    /// Page keys.
    pub keys: &'a [PageKey],
    /// References, in order, covering exactly the window's bytes then.
    pub refs: &'a [ChunkRef],
}

/// Decides how to store a window of `len` bytes whose pages (of `page` bytes) have `keys`.
pub fn plan(page: usize, len: usize, keys: &[PageKey], before: Option<&Before>) -> Plan {
    let Some(b) = before else {
        return Plan::Whole;
    };
    let changed = |i: usize| b.keys.get(i) != Some(&keys[i]);
    let n_changed = (0..keys.len()).filter(|&i| changed(i)).count();
    if n_changed == 0 && b.keys.len() == keys.len() {
        return Plan::Parts(b.refs.iter().copied().map(Part::Old).collect());
    }
    if n_changed > MAX_CHANGED {
        return Plan::Whole;
    }
    let mut parts: Vec<Part> = Vec::new();
    // The reference holding the next unchanged page, and where it starts in the window.
    let (mut r, mut r_at) = (0usize, 0usize);
    for (i, _) in keys.iter().enumerate() {
        let (s, e) = (i * page, ((i + 1) * page).min(len));
        let plen = u32::try_from(e - s).expect("a page");
        if changed(i) {
            match parts.last_mut() {
                Some(Part::New { pages, len, .. }) => {
                    *pages += 1;
                    *len += plen;
                }
                _ => parts.push(Part::New {
                    first: i,
                    pages: 1,
                    len: plen,
                }),
            }
            continue;
        }
        while r < b.refs.len() && r_at + b.refs[r].1 as usize <= s {
            r_at += b.refs[r].1 as usize;
            r += 1;
        }
        let Some(old) = b.refs.get(r).filter(|o| e <= r_at + o.1 as usize) else {
            // The old references do not cover the page whole: not one of ours.
            return Plan::Whole;
        };
        let start = old.start() + u32::try_from(s - r_at).expect("within a chunk");
        match parts.last_mut() {
            Some(Part::Old(p)) if p.0 == old.0 && p.start() + p.1 == start => p.1 += plen,
            _ => parts.push(Part::Old(ChunkRef(old.0, plen, Some(start)))),
        }
    }
    // The chunks the window's pages come from: the old ones and this backup's delta blob.
    let mut sources: Vec<&ChunkId> = parts
        .iter()
        .filter_map(|p| match p {
            Part::Old(r) => Some(&r.0),
            Part::New { .. } => None,
        })
        .collect();
    sources.sort_unstable();
    sources.dedup();
    if sources.len() + 1 > MAX_SOURCES {
        return Plan::Whole;
    }
    // A slice that is all of an old reference stays that reference.
    for p in &mut parts {
        if let Part::Old(s) = p
            && let Some(o) = b
                .refs
                .iter()
                .find(|o| o.0 == s.0 && o.start() == s.start() && o.1 == s.1)
        {
            *s = *o;
        }
    }
    Plan::Parts(parts)
}

/// Cuts a file's references into windows, for [`Before`]: each call takes those covering the
/// next `window` bytes; `None` once they do not line up with window boundaries.
pub struct Windows<'a> {
    refs: &'a [ChunkRef],
    at: usize,
}

impl<'a> Windows<'a> {
    /// Over a file's references.
    pub fn new(refs: &'a [ChunkRef]) -> Self {
        Self { refs, at: 0 }
    }

    /// The references covering the next `window` bytes (fewer at the end of the file).
    pub fn next(&mut self, window: usize) -> Option<&'a [ChunkRef]> {
        let from = self.at;
        let mut bytes = 0usize;
        while self.at < self.refs.len() && bytes < window {
            bytes += self.refs[self.at].1 as usize;
            self.at += 1;
        }
        if bytes > window {
            // A reference across a boundary: nothing further lines up.
            self.refs = &[];
            self.at = 0;
            return None;
        }
        (self.at > from).then(|| &self.refs[from..self.at])
    }
}

/// A file's changed pages, gathered into delta blobs of up to a window.
#[derive(Default)]
pub struct Delta {
    /// The pages of the blob being gathered.
    pub buf: Vec<u8>,
    /// Ids of the blobs already stored, by number.
    pub ids: Vec<ChunkId>,
}

/// A reference of a file's list before its delta blobs' ids are known.
#[derive(Debug, Clone, Copy)]
pub enum Pending {
    /// Known.
    Ready(ChunkRef),
    /// `len` bytes from `start` of delta blob number `blob`.
    Delta {
        /// Delta blob number.
        blob: usize,
        /// Offset in it.
        start: u32,
        /// Bytes.
        len: u32,
    },
}

impl Pending {
    /// The reference, once the delta blobs are stored.
    pub fn resolve(self, delta: &Delta) -> ChunkRef {
        match self {
            Self::Ready(r) => r,
            Self::Delta { blob, start, len } => ChunkRef(delta.ids[blob], len, Some(start)),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const PAGE: usize = 16;

    fn key(b: u8) -> PageKey {
        [b; 16]
    }

    /// Puts a window together from a plan, against a store of chunk contents.
    fn assemble(
        plan: &[Part],
        store: &std::collections::HashMap<ChunkId, Vec<u8>>,
        window: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        for p in plan {
            match p {
                Part::Old(r) => {
                    let c = &store[&r.0];
                    let s = r.start() as usize;
                    out.extend_from_slice(&c[s..s + r.1 as usize]);
                }
                Part::New { first, len, .. } => {
                    out.extend_from_slice(&window[first * PAGE..first * PAGE + *len as usize]);
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Whatever the last backup's layout and whichever pages changed, a plan puts back
        /// exactly the new window, and takes unchanged pages only from where they were.
        #[test]
        fn plans_rebuild_the_window(
            old in proptest::collection::vec(0u8..4, 1..20),
            cuts in proptest::collection::vec(any::<bool>(), 20),
            flips in proptest::collection::vec(0u8..6, 20),
            grow in 0usize..3,
            short in 0usize..PAGE,
        ) {
            // Old window: pages with content byte = value; stored as chunks cut where `cuts`.
            let n_old = old.len();
            let old_len = n_old * PAGE - if short > 0 { PAGE - short } else { 0 };
            let old_bytes: Vec<u8> = (0..old_len).map(|i| old[i / PAGE]).collect();
            let mut store = std::collections::HashMap::new();
            let mut refs = Vec::new();
            let mut at = 0;
            for (i, cut) in cuts.iter().enumerate().take(n_old) {
                let end = ((i + 1) * PAGE).min(old_len);
                if i + 1 == n_old || *cut {
                    let id = ChunkId([(refs.len() + 1) as u8; 32]);
                    // Some chunks are larger than the slice used (slices of delta blobs).
                    let mut content = vec![9u8; PAGE];
                    content.extend_from_slice(&old_bytes[at..end]);
                    store.insert(id, content);
                    refs.push(ChunkRef(id, (end - at) as u32, Some(PAGE as u32)));
                    at = end;
                }
            }
            // New window: some pages change (value + 10), maybe more pages.
            let n_new = n_old + grow;
            let new_len = if grow == 0 { old_len } else { n_new * PAGE };
            let new_bytes: Vec<u8> = (0..new_len).map(|i| {
                let p = i / PAGE;
                if p < n_old && flips[p] != 0 { old[p] } else { old.get(p).copied().unwrap_or(0) + 10 }
            }).collect();
            let key_of = |bytes: &[u8], i: usize, len: usize| {
                let mut k = key(bytes[i * PAGE]);
                k[1] = (((i + 1) * PAGE).min(len) - i * PAGE) as u8;
                k
            };
            let old_keys: Vec<PageKey> = (0..n_old).map(|i| key_of(&old_bytes, i, old_len)).collect();
            let new_keys: Vec<PageKey> = (0..n_new).map(|i| key_of(&new_bytes, i, new_len)).collect();
            let before = Before { keys: &old_keys, refs: &refs };
            match plan(PAGE, new_len, &new_keys, Some(&before)) {
                Plan::Whole => {
                    // Only ever for a window with changes (too many, or too scattered).
                    let changed = (0..n_new).filter(|&i| old_keys.get(i) != Some(&new_keys[i])).count();
                    prop_assert!(changed > 0);
                }
                Plan::Parts(parts) => {
                    prop_assert_eq!(assemble(&parts, &store, &new_bytes), new_bytes.clone());
                    for p in &parts {
                        if let Part::New { first, pages, .. } = p {
                            for (i, k) in new_keys.iter().enumerate().skip(*first).take(*pages) {
                                prop_assert!(old_keys.get(i) != Some(k));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_unchanged_window_keeps_its_references_and_one_page_costs_two_more() {
        let refs = [ChunkRef::whole(ChunkId([1; 32]), 8 * PAGE as u32)];
        let keys: Vec<PageKey> = (0..8).map(key).collect();
        let b = Before {
            keys: &keys,
            refs: &refs,
        };
        assert_eq!(
            plan(PAGE, 8 * PAGE, &keys, Some(&b)),
            Plan::Parts(vec![Part::Old(refs[0])])
        );
        let mut changed = keys.clone();
        changed[3] = key(99);
        let Plan::Parts(p) = plan(PAGE, 8 * PAGE, &changed, Some(&b)) else {
            panic!("whole")
        };
        assert_eq!(
            p,
            vec![
                Part::Old(ChunkRef(ChunkId([1; 32]), 3 * PAGE as u32, Some(0))),
                Part::New {
                    first: 3,
                    pages: 1,
                    len: PAGE as u32
                },
                Part::Old(ChunkRef(
                    ChunkId([1; 32]),
                    4 * PAGE as u32,
                    Some(4 * PAGE as u32)
                )),
            ]
        );
        // Without a last backup, or with too much changed, the window is stored whole.
        assert_eq!(plan(PAGE, 8 * PAGE, &keys, None), Plan::Whole);
        let many = Before {
            keys: &(0..128).map(key).collect::<Vec<_>>(),
            refs: &[ChunkRef::whole(ChunkId([1; 32]), 128 * PAGE as u32)],
        };
        let mut most: Vec<PageKey> = (0..128).map(key).collect();
        for k in most.iter_mut().take(MAX_CHANGED + 1) {
            *k = key(200);
        }
        assert_eq!(plan(PAGE, 128 * PAGE, &most, Some(&many)), Plan::Whole);
    }

    /// Each backup patches one more page with its own delta blob: once the window would be
    /// read from more than MAX_SOURCES chunks, it is stored whole again.
    #[test]
    fn a_window_patched_by_many_backups_is_rewritten() {
        let mut keys: Vec<PageKey> = (0..128).map(key).collect();
        let mut refs = vec![ChunkRef::whole(ChunkId([0; 32]), 128 * PAGE as u32)];
        for backup in 1..=MAX_SOURCES {
            let mut now = keys.clone();
            now[backup * 10] = key(200 + backup as u8);
            let b = Before {
                keys: &keys,
                refs: &refs,
            };
            match plan(PAGE, 128 * PAGE, &now, Some(&b)) {
                Plan::Parts(parts) => {
                    assert!(backup < MAX_SOURCES, "backup {backup} still patched");
                    // This backup's delta blob holds the changed page.
                    let delta = ChunkId([backup as u8; 32]);
                    refs = parts
                        .into_iter()
                        .map(|p| match p {
                            Part::Old(r) => r,
                            Part::New { len, .. } => ChunkRef(delta, len, Some(0)),
                        })
                        .collect();
                }
                Plan::Whole => {
                    assert_eq!(backup, MAX_SOURCES);
                }
            }
            keys = now;
        }
    }

    #[test]
    fn windows_follow_the_references_and_stop_at_one_across_a_boundary() {
        let r = |n: u32| ChunkRef::whole(ChunkId([n as u8; 32]), n);
        let refs = [r(4), r(6), r(10), r(3)];
        let mut w = Windows::new(&refs);
        assert_eq!(w.next(10), Some(&refs[..2]));
        assert_eq!(w.next(10), Some(&refs[2..3]));
        assert_eq!(w.next(10), Some(&refs[3..]));
        assert_eq!(w.next(10), None);
        let across = [r(4), r(8)];
        let mut w = Windows::new(&across);
        assert_eq!(w.next(10), None);
        assert_eq!(w.next(10), None);
    }
}
