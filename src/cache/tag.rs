//! The on-disk tag of one frame: which block of which file it holds, which bytes of the
//! block are valid and which are dirty, a checksum of those bytes, and a sequence number.
//! 128 bytes, fixed layout, with magic, version and a checksum of its own, so a torn or
//! stale tag is recognised and treated as an empty frame, never as data.
//!
//! ```text
//!   0  magic "GT" (u16)   2 version (u8)   3 flags (bit 0 valid, bit 1 dirty)
//!   4  fh length (u8)     5..8 zero        8..72 file handle (zero padded)
//!  72  block number (u64)                 80  sequence (u64): higher wins on reopen
//!  88  valid range lo, hi (u32, u32)      96  dirty range lo, hi (u32, u32)
//! 104  crc32 of the valid bytes (u32)     108..124 zero
//! 124  crc32 of bytes 0..124 (u32)
//! ```

use std::ops::Range;

pub const TAG_SIZE: usize = 128;
const MAGIC: u16 = 0x4754;
const VERSION: u8 = 1;
const VALID: u8 = 1;
const DIRTY: u8 = 2;
/// NFSv3 file handles are at most 64 bytes (RFC 1813 NFS3_FHSIZE).
pub const MAX_FH: usize = 64;

/// A frame's tag. `dirty` is a sub-range of `valid` (written locally, not yet written back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub fh: Vec<u8>,
    pub block: u64,
    pub seq: u64,
    pub valid: Range<u32>,
    pub dirty: Option<Range<u32>>,
    pub data_crc: u32,
}

/// What a tag slot on disk holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Slot {
    /// Never written, or invalidated.
    Empty,
    Tag(Tag),
    /// Magic present but the checksum, version or fields are wrong (a torn write, or
    /// damage): the frame is unusable.
    Corrupt(&'static str),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Tag {
    pub fn encode(&self) -> [u8; TAG_SIZE] {
        assert!(self.fh.len() <= MAX_FH, "file handle over 64 bytes");
        let mut b = [0u8; TAG_SIZE];
        b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        b[2] = VERSION;
        b[3] = VALID | if self.dirty.is_some() { DIRTY } else { 0 };
        b[4] = self.fh.len() as u8;
        b[8..8 + self.fh.len()].copy_from_slice(&self.fh);
        b[72..80].copy_from_slice(&self.block.to_le_bytes());
        b[80..88].copy_from_slice(&self.seq.to_le_bytes());
        b[88..92].copy_from_slice(&self.valid.start.to_le_bytes());
        b[92..96].copy_from_slice(&self.valid.end.to_le_bytes());
        let d = self.dirty.clone().unwrap_or(0..0);
        b[96..100].copy_from_slice(&d.start.to_le_bytes());
        b[100..104].copy_from_slice(&d.end.to_le_bytes());
        b[104..108].copy_from_slice(&self.data_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads a slot; `block_size` bounds the ranges.
    pub fn decode(b: &[u8; TAG_SIZE], block_size: u32) -> Slot {
        if u16::from_le_bytes([b[0], b[1]]) != MAGIC {
            return Slot::Empty;
        }
        if crc32fast::hash(&b[..124]) != u32_at(b, 124) {
            return Slot::Corrupt("tag checksum mismatch");
        }
        if b[2] != VERSION {
            return Slot::Corrupt("unknown tag version");
        }
        if b[3] & VALID == 0 {
            return Slot::Empty;
        }
        let fh_len = b[4] as usize;
        if fh_len > MAX_FH {
            return Slot::Corrupt("file handle length over 64");
        }
        let valid = u32_at(b, 88)..u32_at(b, 92);
        let dirty = u32_at(b, 96)..u32_at(b, 100);
        if valid.start > valid.end || valid.end > block_size {
            return Slot::Corrupt("valid range outside the block");
        }
        let dirty = if b[3] & DIRTY != 0 {
            if dirty.start >= dirty.end || dirty.start < valid.start || dirty.end > valid.end {
                return Slot::Corrupt("dirty range outside the valid range");
            }
            Some(dirty)
        } else {
            None
        };
        Slot::Tag(Tag {
            fh: b[8..8 + fh_len].to_vec(),
            block: u64_at(b, 72),
            seq: u64_at(b, 80),
            valid,
            dirty,
            data_crc: u32_at(b, 104),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> Tag {
        Tag {
            fh: vec![7; 28],
            block: 12345,
            seq: 99,
            valid: 100..5000,
            dirty: Some(200..300),
            data_crc: 0xdead_beef,
        }
    }

    #[test]
    fn round_trip() {
        let t = tag();
        assert_eq!(Tag::decode(&t.encode(), 65536), Slot::Tag(t));
        let clean = Tag {
            dirty: None,
            ..tag()
        };
        assert_eq!(Tag::decode(&clean.encode(), 65536), Slot::Tag(clean));
    }

    #[test]
    fn zeroes_are_an_empty_slot() {
        assert_eq!(Tag::decode(&[0u8; TAG_SIZE], 65536), Slot::Empty);
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let good = tag().encode();
        for i in 2..TAG_SIZE {
            let mut b = good;
            b[i] ^= 0x40;
            assert!(
                matches!(Tag::decode(&b, 65536), Slot::Corrupt(_)),
                "byte {i} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn ranges_are_checked_against_the_block() {
        let t = Tag {
            valid: 0..70000,
            dirty: None,
            ..tag()
        };
        assert!(matches!(Tag::decode(&t.encode(), 65536), Slot::Corrupt(_)));
        let t = Tag {
            dirty: Some(50..300),
            ..tag()
        };
        assert!(matches!(Tag::decode(&t.encode(), 65536), Slot::Corrupt(_)));
    }
}
