//! Durations and sizes written with units (`"15m"`, `"30d"`, `"64MiB"`), parsed by one shared
//! function each so every key accepts the same forms and every error lists them.

use std::time::Duration;

/// The forms [`parse_duration`] accepts, quoted in its errors.
pub const DURATION_FORMS: &str = "a number with a unit s, m, h, d or w, optionally combined (\"90s\", \"15m\", \"1h30m\", \"30d\", \"2w\")";
/// The forms [`parse_size`] accepts, quoted in its errors.
pub const SIZE_FORMS: &str =
    "a number with a unit B, KiB, MiB, GiB, TiB, KB, MB, GB or TB (\"512KiB\", \"64MiB\", \"1GB\")";

/// Parses `"1h30m"`-style durations.
///
/// # Errors
/// A message naming the accepted forms when `s` is not one of them.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err(format!("empty duration; expected {DURATION_FORMS}"));
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "`{s}` is not a duration; expected {DURATION_FORMS}"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{s}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            "" => return Err(format!("`{s}` has no unit; expected {DURATION_FORMS}")),
            other => {
                return Err(format!(
                    "`{s}`: unknown unit `{other}`; expected {DURATION_FORMS}"
                ));
            }
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("`{s}`: duration too large"))?;
    }
    Ok(Duration::from_secs(total))
}

/// Parses `"64MiB"`-style sizes into bytes.
///
/// # Errors
/// A message naming the accepted forms when `s` is not one of them.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return Err(format!("`{s}` is not a size; expected {SIZE_FORMS}"));
    }
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| format!("`{s}`: number too large"))?;
    let mult: u64 = match t[digits..].trim() {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "" => return Err(format!("`{s}` has no unit; expected {SIZE_FORMS}")),
        other => {
            return Err(format!(
                "`{s}`: unknown unit `{other}`; expected {SIZE_FORMS}"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}`: size too large"))
}

/// Formats a byte count for people: `1.50 GiB`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

/// Formats a duration for people: `3d 4h`, `12m 5s`, `1.25s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 {
        format!("{}d {}h", s / 86_400, (s % 86_400) / 3600)
    } else if s >= 3600 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {}s", s / 60, s % 60)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in ["", "15", "m", "15x", "1.5h", "-3m"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.contains("expected") || err.contains("unit"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert!(parse_size("64mb").unwrap_err().contains("MiB"));
        assert!(parse_size("12").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 << 29), "1.50 GiB");
        assert_eq!(format_duration(Duration::from_secs(3725)), "1h 2m");
    }
}
