//! Retention planning: a pure function from snapshot times, `now` and the policy's
//! rules to a plan that says, for each snapshot, keep or forget and *which rules* keep it.
//!
//! Rules, evaluated newest first in the policy's time zone: `keep_last` keeps the newest N;
//! `hourly`/`daily`/`weekly` (ISO weeks)/`monthly`/`yearly` each keep the newest snapshot of
//! each of the N most recent periods that have one. The newest snapshot is always kept.
//! Tiers say which storage class a kept snapshot's objects belong in by its age.
//!
//! [`apply`] executes a plan on one repository (forget, WAL prune); [`prune`] deletes the packs
//! nothing references any more, in two phases, without locking out backups.

pub mod apply;
pub mod prune;
pub mod tiers;

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;

use crate::config::Retention;
use crate::repo::ids::SnapshotId;

/// One snapshot's fate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlanEntry {
    pub snapshot: SnapshotId,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// The rules that keep it (`keep_last`, `daily 2026-11-23`, …); empty = forget.
    pub kept_by: Vec<String>,
    /// Storage class its age puts it in, when a tier applies.
    pub tier: Option<String>,
}

impl PlanEntry {
    /// Whether the plan keeps it.
    pub fn keep(&self) -> bool {
        !self.kept_by.is_empty()
    }
}

/// Plans retention for `snapshots` (any order) at `now`.
pub fn plan(
    snapshots: &[(SnapshotId, DateTime<Utc>)],
    now: DateTime<Utc>,
    rules: &Retention,
    tz: Tz,
) -> Vec<PlanEntry> {
    let mut sorted: Vec<&(SnapshotId, DateTime<Utc>)> = snapshots.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut entries: Vec<PlanEntry> = sorted
        .iter()
        .map(|(id, t)| {
            let age = (now - *t).to_std().unwrap_or_default();
            let tier = rules
                .tiers
                .iter()
                .rev()
                .find(|tier| age >= tier.after)
                .map(|tier| tier.storage_class.clone());
            PlanEntry {
                snapshot: id.clone(),
                time: *t,
                kept_by: Vec::new(),
                tier,
            }
        })
        .collect();
    for e in entries.iter_mut().take(rules.keep_last as usize) {
        e.kept_by.push("keep_last".to_owned());
    }
    type Bucket = fn(DateTime<Tz>) -> String;
    let buckets: [(&str, u32, Bucket); 5] = [
        ("hourly", rules.hourly, |t| {
            format!(
                "{}-{:02}-{:02} {:02}h",
                t.year(),
                t.month(),
                t.day(),
                t.hour()
            )
        }),
        ("daily", rules.daily, |t| {
            format!("{}-{:02}-{:02}", t.year(), t.month(), t.day())
        }),
        ("weekly", rules.weekly, |t| {
            format!("{}-W{:02}", t.iso_week().year(), t.iso_week().week())
        }),
        ("monthly", rules.monthly, |t| {
            format!("{}-{:02}", t.year(), t.month())
        }),
        ("yearly", rules.yearly, |t| t.year().to_string()),
    ];
    for (rule, count, bucket) in buckets {
        let mut seen: Vec<String> = Vec::new();
        for e in &mut entries {
            if seen.len() >= count as usize {
                break;
            }
            let b = bucket(e.time.with_timezone(&tz));
            if !seen.contains(&b) {
                e.kept_by.push(format!("{rule} {b}"));
                seen.push(b);
            }
        }
    }
    if let Some(newest) = entries.first_mut()
        && newest.kept_by.is_empty()
    {
        newest.kept_by.push("newest".to_owned());
    }
    entries
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;
    use crate::config::Tier;

    fn rules(
        keep_last: u32,
        hourly: u32,
        daily: u32,
        weekly: u32,
        monthly: u32,
        yearly: u32,
    ) -> Retention {
        Retention {
            keep_last,
            hourly,
            daily,
            weekly,
            monthly,
            yearly,
            wal_window: None,
            gc_grace: Duration::from_secs(86_400),
            tiers: Vec::new(),
        }
    }

    fn snaps(times: &[DateTime<Utc>]) -> Vec<(SnapshotId, DateTime<Utc>)> {
        times.iter().map(|t| (SnapshotId::new(*t), *t)).collect()
    }

    fn day(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap()
    }

    fn kept(p: &[PlanEntry]) -> Vec<DateTime<Utc>> {
        p.iter().filter(|e| e.keep()).map(|e| e.time).collect()
    }

    #[test]
    fn table() {
        // (rules, snapshot times, expected kept times newest first)
        let twice_a_day: Vec<DateTime<Utc>> =
            (1..=10).flat_map(|d| [day(d, 2), day(d, 14)]).collect();
        let cases: Vec<(Retention, Vec<DateTime<Utc>>, Vec<DateTime<Utc>>)> = vec![
            (
                rules(3, 0, 0, 0, 0, 0),
                twice_a_day.clone(),
                vec![day(10, 14), day(10, 2), day(9, 14)],
            ),
            (
                rules(0, 0, 3, 0, 0, 0),
                twice_a_day.clone(),
                vec![day(10, 14), day(9, 14), day(8, 14)],
            ),
            (
                rules(1, 0, 2, 0, 0, 0),
                twice_a_day.clone(),
                vec![day(10, 14), day(9, 14)],
            ),
            // 2026-11-01 is a Sunday: ISO week 44 ends there; weeks 45 and 44 keep their newest.
            (
                rules(0, 0, 0, 2, 0, 0),
                twice_a_day.clone(),
                vec![day(10, 14), day(8, 14)],
            ),
            (
                rules(0, 0, 0, 0, 1, 1),
                twice_a_day.clone(),
                vec![day(10, 14)],
            ),
            (
                rules(0, 2, 0, 0, 0, 0),
                vec![
                    day(1, 1),
                    day(1, 2),
                    day(1, 2) + chrono::Duration::minutes(30),
                ],
                vec![day(1, 2) + chrono::Duration::minutes(30), day(1, 1)],
            ),
        ];
        for (i, (r, times, want)) in cases.into_iter().enumerate() {
            let p = plan(&snaps(&times), day(20, 0), &r, chrono_tz::UTC);
            assert_eq!(kept(&p), want, "case {i}");
            assert!(p.iter().filter(|e| e.keep()).all(|e| !e.kept_by.is_empty()));
        }
    }

    #[test]
    fn rules_are_named_and_tiers_follow_age() {
        let mut r = rules(1, 0, 30, 0, 0, 0);
        r.tiers = vec![Tier {
            after: Duration::from_secs(5 * 86_400),
            storage_class: "STANDARD_IA".into(),
            only: vec![],
        }];
        let p = plan(
            &snaps(&[day(1, 2), day(18, 2)]),
            day(20, 0),
            &r,
            chrono_tz::UTC,
        );
        assert_eq!(
            p[0].kept_by,
            vec!["keep_last".to_owned(), "daily 2026-11-18".to_owned()]
        );
        assert_eq!(p[0].tier, None);
        assert_eq!(p[1].tier.as_deref(), Some("STANDARD_IA"));
    }

    #[test]
    fn buckets_use_the_policy_time_zone() {
        // 23:30 UTC on the 1st is already the 2nd in Berlin: two distinct Berlin days.
        let times = [
            Utc.with_ymd_and_hms(2026, 11, 1, 22, 30, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 1, 23, 30, 0).unwrap(),
        ];
        let r = rules(0, 0, 5, 0, 0, 0);
        assert_eq!(
            kept(&plan(&snaps(&times), day(20, 0), &r, chrono_tz::UTC)).len(),
            1
        );
        assert_eq!(
            kept(&plan(
                &snaps(&times),
                day(20, 0),
                &r,
                chrono_tz::Europe::Berlin
            ))
            .len(),
            2
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn invariants(offsets in proptest::collection::vec(0i64..(400 * 86_400), 1..60), k in 0u32..3, h in 0u32..5, d in 0u32..8, w in 0u32..5, m in 0u32..4, y in 0u32..3) {
            let base = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
            let times: Vec<DateTime<Utc>> = offsets.iter().map(|o| base + chrono::Duration::seconds(*o)).collect();
            let s = snaps(&times);
            let r = rules(k, h, d, w, m, y);
            let now = base + chrono::Duration::days(500);
            let p = plan(&s, now, &r, chrono_tz::UTC);
            // Never forgets the newest snapshot.
            let newest = times.iter().max().unwrap();
            prop_assert!(p.iter().any(|e| e.keep() && e.time == *newest));
            // Every snapshot appears once.
            prop_assert_eq!(p.len(), s.len());
            // Applying the plan twice changes nothing: what was kept is kept again.
            let kept_set: Vec<(SnapshotId, DateTime<Utc>)> = p.iter().filter(|e| e.keep()).map(|e| (e.snapshot.clone(), e.time)).collect();
            let again = plan(&kept_set, now, &r, chrono_tz::UTC);
            prop_assert!(again.iter().all(PlanEntry::keep), "second plan forgets something");
        }
    }
}
