//! PostgreSQL data page checksums, checked while a base backup reads the pages (as
//! pgBackRest's `checksum-page`), when the cluster was initialised with data checksums.
//!
//! The algorithm is PostgreSQL's `pg_checksum_page` (`src/include/storage/checksum_impl.h`):
//! 32 parallel FNV-1a-like sums over the page as 32-bit words with `pd_checksum` zeroed, two
//! rounds of zeros, xor-folded, xored with the block number, reduced to 16 bits plus one.
//!
//! A page is judged only when it can be: an all-zero page (new, never written) has no
//! checksum, and a page whose LSN is at or after the backup's start LSN may be being written
//! while it is read (a torn read) and will be replaced from WAL on recovery anyway. A page that
//! fails is read once more from the file before it is reported, so that a page written
//! between the two reads (its LSN then moves past the start) is not a false positive.

use serde::Serialize;

/// Bytes per page.
pub const PAGE: usize = 8192;
/// Pages per relation segment file (1 GiB of 8 KiB pages, PostgreSQL's default build).
pub const SEGMENT_PAGES: u64 = 131_072;

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F_36E9,
    0xB852_5960,
    0x02AB_50AA,
    0x1DE6_6D2A,
    0x79FF_467A,
    0x9BB9_F8A3,
    0x217E_7CD2,
    0x83E1_3D2C,
    0xF8D4_474F,
    0xE39E_B970,
    0x42C6_AE16,
    0x9932_16FA,
    0x7B09_3B5D,
    0x98DA_FF3C,
    0xF718_902A,
    0x0B1C_9CDB,
    0xE58F_764B,
    0x1876_36BC,
    0x5D7B_3BB1,
    0xE73D_E7DE,
    0x92BE_C979,
    0xCCA6_C0B2,
    0x304A_0979,
    0x85AA_43D4,
    0x7831_25BB,
    0x6CA8_EAA2,
    0xE407_EAC6,
    0x4B5C_FC3E,
    0x9FBF_8C76,
    0x15CA_20BE,
    0xF2CA_9FD3,
    0x959B_D756,
];

fn comp(sum: &mut u32, value: u32) {
    let t = *sum ^ value;
    *sum = t.wrapping_mul(FNV_PRIME) ^ (t >> 17);
}

/// `pg_checksum_page` of an 8 KiB page at block `blkno` of its relation.
pub fn page_checksum(page: &[u8], blkno: u32) -> u16 {
    debug_assert_eq!(page.len(), PAGE);
    let mut sums = BASE_OFFSETS;
    for (row, words) in page.chunks_exact(4 * N_SUMS).enumerate() {
        for (j, w) in words.chunks_exact(4).enumerate() {
            let mut v = u32::from_le_bytes(w.try_into().expect("4 bytes"));
            // pd_checksum (bytes 8..10, the low half of word 2) counts as zero.
            if row == 0 && j == 2 {
                v &= 0xFFFF_0000;
            }
            comp(&mut sums[j], v);
        }
    }
    for _ in 0..2 {
        for s in &mut sums {
            comp(s, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |a, s| a ^ s) ^ blkno;
    u16::try_from(folded % 65_535 + 1).expect("at most 65535")
}

/// The page's LSN (`pd_lsn`: high and low 32-bit halves).
pub fn page_lsn(page: &[u8]) -> u64 {
    let hi = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes"));
    let lo = u32::from_le_bytes(page[4..8].try_into().expect("4 bytes"));
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The checksum stored in the page (`pd_checksum`).
pub fn stored_checksum(page: &[u8]) -> u16 {
    u16::from_le_bytes([page[8], page[9]])
}

/// What a page read during a backup says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// Its checksum matches.
    Good,
    /// Not judged: never written (all zeros), or changed since the backup started.
    Skipped,
    /// Its checksum does not match: `stored` in the page, `computed` from its bytes.
    Bad { stored: u16, computed: u16 },
}

/// Judges one page read by a backup that started at `start_lsn`.
pub fn check(page: &[u8], blkno: u32, start_lsn: u64) -> Page {
    if page.len() != PAGE || page.iter().all(|&b| b == 0) || page_lsn(page) >= start_lsn {
        return Page::Skipped;
    }
    let (stored, computed) = (stored_checksum(page), page_checksum(page, blkno));
    if stored == computed {
        Page::Good
    } else {
        Page::Bad { stored, computed }
    }
}

/// A page that failed its checksum twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BadPage {
    /// The relation file, relative to the data directory (`base/5/16384.1`).
    pub file: String,
    /// The page's number in that file (what `dd bs=8192 skip=N` reads).
    pub block: u64,
    /// Checksum in the page.
    pub stored: u16,
    /// Checksum of its bytes.
    pub computed: u16,
}

impl std::fmt::Display for BadPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} block {} (checksum {:#06x}, its bytes give {:#06x})",
            self.file, self.block, self.stored, self.computed
        )
    }
}

/// The first block number of a relation segment file: `16384.2` holds blocks from
/// 2 × [`SEGMENT_PAGES`] on.
pub fn first_block(file_name: &str) -> u64 {
    file_name
        .rsplit_once('.')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .map_or(0, |seg| seg * SEGMENT_PAGES)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page as PostgreSQL lays it out, with its checksum set.
    fn page(lsn: u64, blkno: u32, fill: u8) -> Vec<u8> {
        let mut p = vec![0u8; PAGE];
        p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        p[12..14].copy_from_slice(&24u16.to_le_bytes());
        p[14..16].copy_from_slice(&8000u16.to_le_bytes());
        for (i, b) in p[8000..].iter_mut().enumerate() {
            *b = fill.wrapping_add(i as u8);
        }
        let c = page_checksum(&p, blkno);
        p[8..10].copy_from_slice(&c.to_le_bytes());
        p
    }

    #[test]
    fn a_page_checks_at_its_block_only_and_a_flipped_bit_fails() {
        let p = page(0x1_0000_0100, 7, 3);
        assert_eq!(check(&p, 7, 0x2_0000_0000), Page::Good);
        // The stored checksum does not count in its own computation.
        assert_eq!(page_checksum(&p, 7), stored_checksum(&p));
        assert!(
            matches!(check(&p, 8, 0x2_0000_0000), Page::Bad { .. }),
            "a moved page"
        );
        let mut bad = p.clone();
        bad[5000] ^= 0x10;
        assert!(matches!(check(&bad, 7, 0x2_0000_0000), Page::Bad { .. }));
        // Written since the backup started: not judged (WAL replaces it).
        assert_eq!(check(&bad, 7, 0x1_0000_0000), Page::Skipped);
        assert_eq!(check(&vec![0u8; PAGE], 7, 0x2_0000_0000), Page::Skipped);
    }

    #[test]
    fn segment_files_start_at_their_segment_s_first_block() {
        assert_eq!(first_block("16384"), 0);
        assert_eq!(first_block("16384.2"), 2 * SEGMENT_PAGES);
        assert_eq!(first_block("16384_fsm"), 0);
    }
}
