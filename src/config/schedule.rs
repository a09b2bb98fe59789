//! Cron schedules: standard 5-field expressions (`min hour dom month dow`, Sunday = 0 or 7) and
//! 6-field ones with seconds first, evaluated in a policy's time zone.
//!
//! The `cron` crate wants 6 or 7 fields and numbers weekdays 1–7 from Sunday, so a 5-field
//! expression gets a `0` seconds field and its weekday numbers are shifted; names (`MON`) pass
//! through unchanged.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// A parsed, validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: cron::Schedule,
    tz: Tz,
}

impl Schedule {
    /// Parses `expr` for time zone `tz`.
    ///
    /// # Errors
    /// A message saying what is wrong with the expression.
    pub fn parse(expr: &str, tz: Tz) -> Result<Self, String> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        check_ranges(expr, &fields)?;
        let six = match fields.len() {
            5 => {
                let dow = shift_weekdays(fields[4])?;
                format!(
                    "0 {} {} {} {} {dow}",
                    fields[0], fields[1], fields[2], fields[3]
                )
            }
            6 => expr.to_owned(),
            n => {
                return Err(format!(
                    "`{expr}` has {n} fields; expected 5 (min hour day-of-month month day-of-week) or 6 (seconds first)"
                ));
            }
        };
        let cron = cron::Schedule::from_str(&six).map_err(|e| format!("`{expr}`: {e}"))?;
        if cron.upcoming(Utc).next().is_none() {
            return Err(format!("`{expr}` never fires"));
        }
        Ok(Self {
            expr: expr.to_owned(),
            cron,
            tz,
        })
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone the expression is evaluated in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first run strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .after(&after.with_timezone(&self.tz))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The next `n` runs strictly after `after`.
    pub fn next_runs(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        self.cron
            .after(&after.with_timezone(&self.tz))
            .take(n)
            .map(|t| t.with_timezone(&Utc))
            .collect()
    }
}

/// Maps a standard cron weekday field (0–7, Sunday = 0 and 7) to the `cron` crate's 1–7 from
/// Sunday.
fn shift_weekdays(field: &str) -> Result<String, String> {
    let shift = |s: &str| -> Result<String, String> {
        match s.parse::<u32>() {
            Ok(n @ 0..=6) => Ok((n + 1).to_string()),
            Ok(7) => Ok("1".to_owned()),
            Ok(n) => Err(format!("day-of-week {n} is out of range 0-7")),
            Err(_) => Ok(s.to_owned()), // a name such as MON, or `*`/`?`
        }
    };
    let mut out = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let mapped = match range.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (shift(a)?, b.trim());
                if b == "7" {
                    // `5-7` (Fri–Sun) becomes `6-7,1`; a step over such a range is ambiguous.
                    if step.is_some() {
                        return Err(format!(
                            "day-of-week `{item}`: a step over a range ending in 7 is not supported; write the days out"
                        ));
                    }
                    out.push(format!("{a}-7"));
                    out.push("1".to_owned());
                    continue;
                }
                format!("{a}-{}", shift(b)?)
            }
            None => shift(range)?,
        };
        out.push(match step {
            Some(s) => format!("{mapped}/{s}"),
            None => mapped,
        });
    }
    Ok(out.join(","))
}

/// Each numeric value of each field within its range, named as the user wrote the
/// expression (the cron crate checks the 6-field form it is given, one number off for
/// weekdays and hours).
fn check_ranges(expr: &str, fields: &[&str]) -> Result<(), String> {
    const FIVE: [(&str, u32, u32); 5] = [
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("day of week", 0, 7),
    ];
    let specs: Vec<(&str, u32, u32)> = match fields.len() {
        5 => FIVE.to_vec(),
        6 => std::iter::once(("second", 0, 59)).chain(FIVE).collect(),
        _ => return Ok(()), // the caller names the count
    };
    for (i, (field, (name, lo, hi))) in fields.iter().zip(specs).enumerate() {
        // `a`, `a-b`, `*`, each optionally `/step`; names (`MON`, `JAN`) are the crate's to check.
        for part in field.split(',') {
            let range = part.split_once('/').map_or(part, |(r, _)| r);
            for v in range.split('-') {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if !v.parse().is_ok_and(|n: u32| (lo..=hi).contains(&n)) {
                    return Err(format!(
                        "`{expr}`: {name} `{v}` is out of range {lo}-{hi} (field {} of {})",
                        i + 1,
                        fields.len()
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    use super::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn out_of_range_values_name_the_field_as_written() {
        for (expr, want) in [
            (
                "0 25 * * *",
                "`0 25 * * *`: hour `25` is out of range 0-23 (field 2 of 5)",
            ),
            (
                "60 * * * *",
                "`60 * * * *`: minute `60` is out of range 0-59 (field 1 of 5)",
            ),
            (
                "0 0 0 * *",
                "`0 0 0 * *`: day of month `0` is out of range 1-31 (field 3 of 5)",
            ),
            (
                "0 0 * 1-13 *",
                "`0 0 * 1-13 *`: month `13` is out of range 1-12 (field 4 of 5)",
            ),
            (
                "0 0 * * 8",
                "`0 0 * * 8`: day of week `8` is out of range 0-7 (field 5 of 5)",
            ),
            (
                "61 0 0 * * *",
                "`61 0 0 * * *`: second `61` is out of range 0-59 (field 1 of 6)",
            ),
        ] {
            assert_eq!(Schedule::parse(expr, chrono_tz::UTC).unwrap_err(), want);
        }
        for ok in [
            "*/15 0-23 1,15 1-12/2 0-7",
            "0 */2 * * MON-FRI",
            "0 0 0 1 1 *",
        ] {
            assert!(Schedule::parse(ok, chrono_tz::UTC).is_ok(), "{ok}");
        }
    }

    #[test]
    fn five_fields_daily() {
        let s = Schedule::parse("0 2 * * *", chrono_tz::UTC).unwrap();
        let runs = s.next_runs(at(2026, 11, 23, 22, 0), 3);
        assert_eq!(
            runs,
            vec![
                at(2026, 11, 24, 2, 0),
                at(2026, 11, 25, 2, 0),
                at(2026, 11, 26, 2, 0)
            ]
        );
    }

    #[test]
    fn weekday_numbers_follow_standard_cron() {
        // 2026-11-23 is a Monday.
        for (field, want) in [
            ("0", Weekday::Sun),
            ("7", Weekday::Sun),
            ("1", Weekday::Mon),
            ("6", Weekday::Sat),
            ("MON", Weekday::Mon),
        ] {
            let s = Schedule::parse(&format!("30 4 * * {field}"), chrono_tz::UTC).unwrap();
            let next = s.next_after(at(2026, 11, 23, 12, 0)).unwrap();
            assert_eq!(next.weekday(), want, "field {field}");
            assert_eq!((next.hour(), next.minute()), (4, 30));
        }
        let s = Schedule::parse("0 0 * * 5-7", chrono_tz::UTC).unwrap();
        let days: Vec<Weekday> = s
            .next_runs(at(2026, 11, 23, 12, 0), 3)
            .iter()
            .map(Datelike::weekday)
            .collect();
        assert_eq!(days, vec![Weekday::Fri, Weekday::Sat, Weekday::Sun]);
        let s = Schedule::parse("0 0 * * 1-5", chrono_tz::UTC).unwrap();
        assert_eq!(
            s.next_runs(at(2026, 11, 27, 12, 0), 1)[0].weekday(),
            Weekday::Mon
        );
    }

    #[test]
    fn six_fields_and_time_zone() {
        let s = Schedule::parse("*/30 * * * * *", chrono_tz::UTC).unwrap();
        assert_eq!(
            s.next_after(at(2026, 1, 1, 0, 0)).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 30).unwrap()
        );
        let berlin = Schedule::parse("0 2 * * *", chrono_tz::Europe::Berlin).unwrap();
        assert_eq!(
            berlin.next_after(at(2026, 11, 23, 12, 0)).unwrap(),
            at(2026, 11, 24, 1, 0)
        );
    }

    #[test]
    fn bad_expressions() {
        assert!(
            Schedule::parse("0 2 * *", chrono_tz::UTC)
                .unwrap_err()
                .contains("4 fields")
        );
        assert!(Schedule::parse("0 25 * * *", chrono_tz::UTC).is_err());
        assert!(
            Schedule::parse("0 2 * * 8", chrono_tz::UTC)
                .unwrap_err()
                .contains("out of range")
        );
    }
}
