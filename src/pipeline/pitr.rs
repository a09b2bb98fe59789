//! Point-in-time recovery planning for PostgreSQL: pick the base backup for a target and
//! prove, before anything is written, that the archive holds every WAL segment from that
//! backup's start to the target.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{PipelineError, Repository, wal};
use crate::repo::ids::SnapshotId;
use crate::repo::manifest::Refs;
use crate::source::postgres::PgFacts;
use crate::source::postgres::facts::FactsError;
use crate::source::postgres::lsn::{Lsn, Segment};

/// Where recovery should stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A time (`recovery_target_time`).
    Time(DateTime<Utc>),
    /// An LSN (`recovery_target_lsn`).
    Lsn(Lsn),
    /// A transaction id (`recovery_target_xid`).
    Xid(String),
    /// A named restore point (`recovery_target_name`).
    Name(String),
    /// The end of the archived WAL.
    Latest,
    /// The end of the base backup (`recovery_target = 'immediate'`).
    Immediate,
}

/// The chosen backup and the WAL it needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The base backup.
    pub snapshot: SnapshotId,
    /// Its refs.
    pub refs: Refs,
    /// Its PostgreSQL facts (LSNs, timeline, versions, tablespaces).
    pub facts: PgFacts,
    /// Segments checked present, first and last.
    pub wal_from: String,
    /// Last segment needed.
    pub wal_to: String,
    /// WAL segment size of the cluster.
    pub wal_segment_size: u64,
}

/// Planning failures, each saying what is available.
#[derive(Debug, thiserror::Error)]
pub enum PitrError {
    /// No base backup ends before the target.
    #[error("no base backup of {policy} ends before {target}; recoverable range: {range}")]
    BeforeOldest {
        policy: String,
        /// Target as given.
        target: String,
        /// What is available.
        range: String,
    },
    /// The target is past the newest archived WAL.
    #[error("{target} is after the newest archived WAL of {policy}; recoverable range: {range}")]
    AfterNewest {
        policy: String,
        /// Target as given.
        target: String,
        /// What is available.
        range: String,
    },
    /// A segment is missing.
    #[error(
        "WAL segment {segment} is missing from the archive of {policy} at {location}: recovery from backup {snapshot} to the target would stop there. Nothing was written. Restore to an earlier target, or from a replica (--region) that has it"
    )]
    MissingWal {
        /// Missing segment.
        segment: String,
        policy: String,
        location: String,
        /// Backup it was needed for.
        snapshot: String,
    },
    /// The snapshot lacks PostgreSQL facts.
    #[error("snapshot {0} is not a PostgreSQL base backup")]
    NotPostgres(String),
    /// The snapshot chosen has facts that cannot be used.
    #[error(transparent)]
    Facts(#[from] FactsError),
    /// Anything else.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// What the repository holds of one PostgreSQL policy: its base backups (with usable facts)
/// and its archived WAL segments.
struct Catalog {
    /// Oldest first.
    backups: Vec<(Refs, PgFacts)>,
    /// Base backups whose facts cannot be used (never chosen; named when asked for).
    unusable: BTreeMap<SnapshotId, FactsError>,
    /// Archived segments with the time each reached the repository.
    archived: BTreeMap<Segment, DateTime<Utc>>,
    seg_size: u64,
}

impl Catalog {
    async fn read(repo: &Repository, policy: &str) -> Result<Self, PitrError> {
        let mut backups: Vec<(Refs, PgFacts)> = Vec::new();
        let mut unusable: BTreeMap<SnapshotId, FactsError> = BTreeMap::new();
        for id in repo.committed(policy).await? {
            let r = repo.read_refs(policy, &id).await?;
            if r.source_kind != "postgres" {
                continue;
            }
            match PgFacts::of(&id.to_string(), &r.facts) {
                Ok(f) => backups.push((r, f)),
                Err(e) => {
                    tracing::warn!(snapshot = %id, error = %e, "Skipping a base backup whose facts cannot be used.");
                    unusable.insert(id, e);
                }
            }
        }
        let wal_objects = wal::list(repo, policy).await?;
        let seg_size = backups
            .first()
            .map_or(16 << 20, |(_, f)| f.wal_segment_size);
        let mut archived: BTreeMap<Segment, DateTime<Utc>> = wal_objects
            .iter()
            .filter_map(|(n, m)| {
                Segment::parse(n, seg_size).map(|s| (s, m.modified.unwrap_or_else(Utc::now)))
            })
            .collect();
        // A segment a WAL stream is still receiving counts as archived up to where it was
        // stored (its longest partial; the feeder serves that one).
        let mut partial: BTreeMap<Segment, DateTime<Utc>> = BTreeMap::new();
        for p in wal::list_partials(repo, policy).await? {
            if let Some(s) = Segment::parse(&p.segment, seg_size) {
                let at = p.meta.modified.unwrap_or_else(Utc::now);
                partial
                    .entry(s)
                    .and_modify(|t| *t = (*t).max(at))
                    .or_insert(at);
            }
        }
        for (s, at) in partial {
            archived.entry(s).or_insert(at);
        }
        Ok(Self {
            backups,
            unusable,
            archived,
            seg_size,
        })
    }

    /// The segments of `timeline` from `from` on that are all present, as the last of them
    /// and when it was archived (`None` when `from` itself is missing).
    fn contiguous(&self, from: Segment) -> Option<(Segment, DateTime<Utc>)> {
        let mut last = None;
        let mut seg = from;
        while let Some(at) = self.archived.get(&seg) {
            last = Some((seg, *at));
            seg = seg.next();
        }
        last
    }
}

/// What a PostgreSQL policy can be recovered to now, as `dr info` shows it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Window {
    /// Base backups with usable facts.
    pub base_backups: usize,
    /// The earliest point: the end of the oldest base backup whose own WAL is archived.
    pub earliest: Option<DateTime<Utc>>,
    /// The latest point: when the last segment of the unbroken WAL after the newest such
    /// backup reached the repository (a target up to then is reachable).
    pub latest: Option<DateTime<Utc>>,
    /// The backup `latest` is reached from.
    pub latest_from: Option<String>,
    /// Archived WAL segments, and the first and last of them.
    pub wal_segments: usize,
    /// First archived segment.
    pub wal_first: Option<String>,
    /// Last archived segment.
    pub wal_last: Option<String>,
    /// The first segment missing after the newest restorable backup, when segments after it
    /// are archived (recovery stops before it).
    pub wal_gap: Option<String>,
}

/// The recoverable window of `policy` from what its repository holds.
///
/// # Errors
/// Storage errors.
pub async fn window(repo: &Repository, policy: &str) -> Result<Window, PitrError> {
    let c = Catalog::read(repo, policy).await?;
    let name = |s: &Segment| s.name(c.seg_size);
    // Backups whose WAL up to their end is archived, with the end of the WAL after them.
    let restorable: Vec<(&Refs, &PgFacts, (Segment, DateTime<Utc>))> = c
        .backups
        .iter()
        .filter_map(|(r, f)| {
            c.contiguous(f.start_segment())
                .filter(|(last, _)| *last >= f.stop_segment())
                .map(|wal| (r, f, wal))
        })
        .collect();
    let newest = restorable.last();
    let wal_gap = newest.and_then(|(_, _, (last, _))| {
        let next = last.next();
        c.archived
            .range(next..)
            .next()
            .filter(|(s, _)| s.timeline == last.timeline)
            .map(|_| name(&next))
    });
    Ok(Window {
        base_backups: c.backups.len(),
        earliest: restorable.first().map(|(_, f, _)| f.stop_time()),
        latest: newest.map(|(_, f, (_, at))| (*at).max(f.stop_time())),
        latest_from: newest.map(|(r, _, _)| r.snapshot.to_string()),
        wal_segments: c.archived.len(),
        wal_first: c.archived.keys().next().map(name),
        wal_last: c.archived.keys().next_back().map(name),
        wal_gap,
    })
}

/// Chooses the backup for `target` (or uses `snapshot` when given) and checks WAL continuity.
///
/// # Errors
/// `PitrError` naming the available range or the missing segment.
pub async fn plan(
    repo: &Repository,
    policy: &str,
    target: &Target,
    snapshot: Option<&str>,
) -> Result<Plan, PitrError> {
    let Catalog {
        backups,
        mut unusable,
        archived,
        seg_size,
    } = Catalog::read(repo, policy).await?;
    let newest_wal = archived.values().max().copied();
    let range = || {
        let first = backups.iter().map(|(_, f)| f.stop_time()).min();
        match (first, newest_wal) {
            (Some(a), Some(b)) => format!(
                "{} .. {} (UTC)",
                a.format("%Y-%m-%d %H:%M:%S"),
                b.format("%Y-%m-%d %H:%M:%S")
            ),
            (Some(a), None) => format!(
                "only the backup end {} (no WAL archived)",
                a.format("%Y-%m-%d %H:%M:%S")
            ),
            _ => "none (no base backups)".to_owned(),
        }
    };
    let target_text = match target {
        Target::Time(t) => t.to_rfc3339(),
        Target::Lsn(l) => format!("LSN {l}"),
        Target::Xid(x) => format!("xid {x}"),
        Target::Name(n) => format!("restore point {n}"),
        Target::Latest => "the latest archived WAL".to_owned(),
        Target::Immediate => "the end of the backup".to_owned(),
    };

    let (chosen, facts) = if let Some(sel) = snapshot {
        let id = repo.resolve(policy, sel).await?;
        if let Some(e) = unusable.remove(&id) {
            return Err(e.into());
        }
        backups
            .iter()
            .find(|(r, _)| r.snapshot == id)
            .cloned()
            .ok_or_else(|| PitrError::NotPostgres(id.to_string()))?
    } else {
        let eligible = backups.iter().filter(|(_, f)| match target {
            Target::Time(t) => f.stop_time() <= *t,
            Target::Lsn(l) => f.stop_lsn() <= *l,
            _ => true,
        });
        eligible
            .max_by_key(|(r, _)| r.snapshot.clone())
            .cloned()
            .ok_or_else(|| PitrError::BeforeOldest {
                policy: policy.to_owned(),
                target: target_text.clone(),
                range: range(),
            })?
    };

    let timeline = facts.timeline;
    let (start, stop) = (facts.start_segment(), facts.stop_segment());
    let on_timeline: BTreeMap<Segment, DateTime<Utc>> = archived
        .iter()
        .filter(|(s, _)| s.timeline == timeline)
        .map(|(s, t)| (*s, *t))
        .collect();
    let last_archived = on_timeline.keys().next_back().copied();
    let end = match target {
        Target::Immediate => stop,
        Target::Lsn(l) => Segment::of(timeline, *l, seg_size).max(stop),
        Target::Time(t) => {
            if newest_wal.is_none_or(|n| n < *t) {
                return Err(PitrError::AfterNewest {
                    policy: policy.to_owned(),
                    target: target_text,
                    range: range(),
                });
            }
            // The first segment archived at or after the target holds it (or ends before it).
            on_timeline
                .iter()
                .filter(|(s, at)| **s >= stop && **at >= *t)
                .map(|(s, _)| *s)
                .next()
                .unwrap_or(stop)
        }
        Target::Xid(_) | Target::Name(_) | Target::Latest => {
            last_archived.unwrap_or(stop).max(stop)
        }
    };
    let mut seg = start;
    while seg <= end {
        if !on_timeline.contains_key(&seg) {
            return Err(PitrError::MissingWal {
                segment: seg.name(seg_size),
                policy: policy.to_owned(),
                location: repo.storage.location().to_owned(),
                snapshot: chosen.snapshot.to_string(),
            });
        }
        seg = seg.next();
    }
    Ok(Plan {
        snapshot: chosen.snapshot.clone(),
        wal_from: start.name(seg_size),
        wal_to: end.name(seg_size),
        wal_segment_size: seg_size,
        refs: chosen,
        facts,
    })
}

/// Parses an operator's time: RFC 3339 or `YYYY-MM-DD HH:MM:SS[.fff]` with an offset
/// (`+00`, `+00:00`, `Z`) or ` UTC`. A time without a zone is refused, not guessed.
///
/// # Errors
/// A message listing the accepted forms.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    let t = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    let t2 = t
        .strip_suffix(" UTC")
        .map(|x| format!("{x}+00:00"))
        .unwrap_or_else(|| t.replace('T', " "));
    // `+00` (PostgreSQL's own output) → `+00:00`.
    let t3 = match t2.rfind(['+', '-']) {
        Some(i) if i > 10 && t2.len() - i == 3 => format!("{t2}:00"),
        _ => t2.clone(),
    };
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%:z",
        "%Y-%m-%d %H:%M:%S%.fZ",
        "%Y-%m-%d %H:%M:%SZ",
    ] {
        if let Ok(d) = DateTime::parse_from_str(&t3, fmt) {
            return Ok(d.with_timezone(&Utc));
        }
        if let Ok(d) = chrono::NaiveDateTime::parse_from_str(&t3, fmt) {
            return Ok(d.and_utc());
        }
    }
    if chrono::NaiveDateTime::parse_from_str(&t3, "%Y-%m-%d %H:%M:%S%.f").is_ok() {
        return Err(format!(
            "`{s}` has no time zone; add one, e.g. '{s}+00' or '{s} UTC'"
        ));
    }
    Err(format!(
        "`{s}` is not a time; use e.g. '2026-11-23 14:02:00+00', '2026-11-23T14:02:00Z' or '2026-11-23 14:02:00 UTC'"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_forms() {
        let want = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 11, 23, 14, 2, 0).unwrap();
        for s in [
            "2026-11-23 14:02:00+00",
            "2026-11-23T14:02:00Z",
            "2026-11-23 14:02:00 UTC",
            "2026-11-23 16:02:00+02:00",
            "2026-11-23 15:02:00+01",
            "2026-11-23T14:02:00.000Z",
        ] {
            assert_eq!(parse_time(s), Ok(want), "{s}");
        }
        assert!(
            parse_time("2026-11-23 14:02:00")
                .unwrap_err()
                .contains("no time zone")
        );
        assert!(parse_time("yesterday").unwrap_err().contains("not a time"));
        assert!(parse_time("2026-11-23 14:02:00-05").is_ok());
    }
}
