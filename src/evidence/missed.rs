//! Missed drills: a scheduled drill that did not run in its window is a gap in the evidence.
//!
//! A scheduled run at `t` has the window `[t − GRACE, next run)`: any report of that drill
//! started in it (whatever its verdict) means the drill ran. A window that has not closed yet
//! (its end is after `now`) is not judged. Consecutive missed runs are one gap, so that a
//! daemon that was down for a week is one line, not 10,080.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::config::schedule::Schedule;

/// How early a run may start and still count for its scheduled time (clock skew).
const GRACE: Duration = Duration::minutes(1);

/// At most this many scheduled runs are judged per drill (an every-minute drill over a year is
/// 525,600): past it, the rest of the period is one gap marked `truncated`.
const MAX_RUNS: usize = 100_000;

/// Scheduled runs of one drill, in a row, that did not happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// The drill.
    pub drill: String,
    /// The first missed run's scheduled time.
    pub first: DateTime<Utc>,
    /// The last one's.
    pub last: DateTime<Utc>,
    /// How many scheduled runs were missed.
    pub runs: usize,
    /// The period had more scheduled runs than are judged ([`MAX_RUNS`]).
    pub truncated: bool,
}

/// The gaps of `drill` on `schedule` in `[from, to)`, given the start times of its reports
/// (any order).
pub fn gaps(
    drill: &str,
    schedule: &Schedule,
    ran: &[DateTime<Utc>],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<Gap> {
    let mut ran = ran.to_vec();
    ran.sort_unstable();
    let mut out: Vec<Gap> = Vec::new();
    let mut open: Option<Gap> = None;
    let mut next = schedule.next_after(from - Duration::seconds(1));
    let mut judged = 0;
    while let Some(t) = next.filter(|t| *t < to) {
        let end = schedule.next_after(t);
        if end.is_none_or(|e| e > now) {
            break;
        }
        judged += 1;
        if judged > MAX_RUNS {
            if let Some(g) = open.as_mut() {
                g.truncated = true;
            } else {
                out.push(Gap {
                    drill: drill.to_owned(),
                    first: t,
                    last: t,
                    runs: 0,
                    truncated: true,
                });
            }
            break;
        }
        let lo = ran.partition_point(|r| *r < t - GRACE);
        let happened = ran.get(lo).is_some_and(|r| end.is_none_or(|e| *r < e));
        if happened {
            out.extend(open.take());
        } else {
            let g = open.get_or_insert_with(|| Gap {
                drill: drill.to_owned(),
                first: t,
                last: t,
                runs: 0,
                truncated: false,
            });
            g.last = t;
            g.runs += 1;
        }
        next = end;
    }
    out.extend(open);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn hourly() -> Schedule {
        Schedule::parse("0 * * * *", chrono_tz::UTC).unwrap()
    }

    #[test]
    fn runs_in_their_window_count_and_consecutive_misses_are_one_gap() {
        let from = at("2026-11-01T00:00:00Z");
        let to = at("2026-11-01T06:00:00Z");
        let now = at("2026-12-01T00:00:00Z");
        // 00:00 ran late (00:40), 01:00 a minute early (grace), 02 and 03 missed, 04 ran,
        // 05 missed.
        let ran = [
            at("2026-11-01T04:10:00Z"),
            at("2026-11-01T00:40:00Z"),
            at("2026-11-01T00:59:30Z"),
        ];
        let g = gaps("d", &hourly(), &ran, from, to, now);
        assert_eq!(g.len(), 2, "{g:?}");
        assert_eq!(
            (g[0].first, g[0].last, g[0].runs),
            (at("2026-11-01T02:00:00Z"), at("2026-11-01T03:00:00Z"), 2)
        );
        assert_eq!((g[1].first, g[1].runs), (at("2026-11-01T05:00:00Z"), 1));
    }

    #[test]
    fn an_open_window_is_not_judged_and_a_long_outage_is_bounded() {
        let from = at("2026-11-01T00:00:00Z");
        // The 02:00 window ends at 03:00, after now: not judged.
        let now = at("2026-11-01T02:30:00Z");
        let g = gaps("d", &hourly(), &[], from, at("2026-11-02T00:00:00Z"), now);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].runs, 2);
        let every_minute = Schedule::parse("* * * * *", chrono_tz::UTC).unwrap();
        let g = gaps(
            "d",
            &every_minute,
            &[],
            at("2025-01-01T00:00:00Z"),
            at("2026-01-01T00:00:00Z"),
            at("2026-12-01T00:00:00Z"),
        );
        assert_eq!(g.len(), 1);
        assert!(g[0].truncated);
        assert_eq!(g[0].runs, MAX_RUNS);
    }
}
