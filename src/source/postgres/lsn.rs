//! LSNs and WAL file names.
//!
//! A segment name is `TTTTTTTT` (timeline) `XXXXXXXX` `YYYYYYYY` in hex, where for a segment
//! size `s` the segment number `n = lsn / s` is split as `X = n / (2^32 / s)`,
//! `Y = n % (2^32 / s)`.

use std::fmt;

/// A log sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses `16/B374D848`.
    ///
    /// # Errors
    /// When `s` is not `HEX/HEX`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (hi, lo) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not an LSN (like 0/16B3748)"))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| format!("`{s}` is not an LSN"))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| format!("`{s}` is not an LSN"))?;
        Ok(Self((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// A WAL segment: timeline and segment number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: u32,
    /// Segment number (lsn / segment size).
    pub number: u64,
}

impl Segment {
    /// The segment holding `lsn`.
    pub fn of(timeline: u32, lsn: Lsn, seg_size: u64) -> Self {
        Self {
            timeline,
            number: lsn.0 / seg_size,
        }
    }

    /// Parses a 24-hex-digit segment file name.
    pub fn parse(name: &str, seg_size: u64) -> Option<Self> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let per = 0x1_0000_0000 / seg_size;
        let t = u32::from_str_radix(&name[..8], 16).ok()?;
        let x = u64::from_str_radix(&name[8..16], 16).ok()?;
        let y = u64::from_str_radix(&name[16..], 16).ok()?;
        (y < per).then_some(Self {
            timeline: t,
            number: x * per + y,
        })
    }

    /// The file name.
    pub fn name(&self, seg_size: u64) -> String {
        let per = 0x1_0000_0000 / seg_size;
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.number / per,
            self.number % per
        )
    }

    /// The next segment on the same timeline.
    pub fn next(&self) -> Self {
        Self {
            timeline: self.timeline,
            number: self.number + 1,
        }
    }
}

/// Bytes from the end of `seg` to `lsn` (zero when `lsn` is not past it).
pub fn bytes_after(seg: Segment, lsn: Lsn, seg_size: u64) -> u64 {
    lsn.0.saturating_sub((seg.number + 1) * seg_size)
}

/// Whether `name` is something `archive_command` may hand us: a segment, a timeline history
/// file, a `.partial` segment, or a backup history file.
pub fn is_wal_file_name(name: &str) -> bool {
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
    };
    match name.len() {
        24 => hex(name),
        16 => name.ends_with(".history") && hex(&name[..8]),
        32 => name.ends_with(".partial") && hex(&name[..24]),
        _ => name.ends_with(".backup") && name.len() > 24 && hex(&name[..24]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_and_segments() {
        let l = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(l.to_string(), "16/B374D848");
        let seg = 16 << 20;
        let s = Segment::of(1, l, seg);
        assert_eq!(s.name(seg), "0000000100000016000000B3");
        assert_eq!(Segment::parse("0000000100000016000000B3", seg), Some(s));
        assert_eq!(
            Segment::parse("0000000100000016000000FF", seg)
                .unwrap()
                .next()
                .name(seg),
            "000000010000001700000000"
        );
        assert!(Segment::parse("000000010000001600000100", seg).is_none());
        assert!(is_wal_file_name("00000002.history"));
        assert!(is_wal_file_name("000000010000000000000003"));
        assert!(is_wal_file_name("000000010000000000000003.00000028.backup"));
        assert!(!is_wal_file_name("../../etc/passwd"));
        assert!(!is_wal_file_name("00000001000000000000000g"));
    }

    #[test]
    fn bytes_after_a_segment() {
        let seg = 16 << 20;
        let s = Segment::parse("0000000100000016000000B3", seg).unwrap();
        let end = Lsn::parse("16/B4000000").unwrap();
        assert_eq!(bytes_after(s, end, seg), 0);
        assert_eq!(bytes_after(s, Lsn(end.0 + 4096), seg), 4096);
        assert_eq!(bytes_after(s, Lsn::parse("16/B374D848").unwrap(), seg), 0);
    }
}
