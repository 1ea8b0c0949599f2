//! Cache geometry (paper §3.2.1): `banks` files hold `sets`, each set `ways` frames of
//! `block_size` bytes. A (file handle, block number) pair maps to a set by hashing the
//! handle and *adding* the block number, so consecutive blocks of a file land in
//! consecutive sets (and, within a bank, in neighbouring places on disk): sequential
//! reads stay sequential on the cache disk too.
//!
//! Data frames are laid out way-major inside a bank (all sets' way 0, then way 1, ...), so
//! those consecutive sets are also consecutive on disk.
//!
//! The hash is FNV-1a, fixed here, so a cache written by one build is read by the next
//! (std's hasher may change between Rust releases).

/// Why a geometry is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    #[error("block size {0} is not a power of two between 4 KiB and 1 MiB")]
    BlockSize(u32),
    #[error("associativity {0} is outside 1..=64")]
    Ways(u32),
    #[error("banks {0} is outside 1..=4096")]
    Banks(u32),
    #[error(
        "cache size {size} bytes holds fewer than one set per bank ({banks} banks x {ways} ways x {block} bytes)"
    )]
    TooSmall {
        size: u64,
        banks: u32,
        ways: u32,
        block: u32,
    },
}

/// Where frames live. Derived once from the configuration; all fields are fixed for the
/// life of a cache directory (the superblock records them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub block_size: u32,
    pub ways: u32,
    pub banks: u32,
    pub sets_per_bank: u64,
}

/// A frame's address: bank file, set within it, way within the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Frame {
    pub bank: u32,
    pub set_in_bank: u64,
    pub way: u32,
}

impl Geometry {
    /// The largest geometry that fits in `size` bytes of data frames.
    pub fn new(size: u64, block_size: u32, ways: u32, banks: u32) -> Result<Self, GeometryError> {
        if !block_size.is_power_of_two() || !(4096..=1 << 20).contains(&block_size) {
            return Err(GeometryError::BlockSize(block_size));
        }
        if !(1..=64).contains(&ways) {
            return Err(GeometryError::Ways(ways));
        }
        if !(1..=4096).contains(&banks) {
            return Err(GeometryError::Banks(banks));
        }
        let per_set = ways as u64 * block_size as u64;
        let sets_per_bank = size / per_set / banks as u64;
        if sets_per_bank == 0 {
            return Err(GeometryError::TooSmall {
                size,
                banks,
                ways,
                block: block_size,
            });
        }
        Ok(Geometry {
            block_size,
            ways,
            banks,
            sets_per_bank,
        })
    }

    pub fn sets(&self) -> u64 {
        self.sets_per_bank * self.banks as u64
    }

    pub fn frames(&self) -> u64 {
        self.sets() * self.ways as u64
    }

    /// Bytes of data frames in one bank file.
    pub fn bank_bytes(&self) -> u64 {
        self.sets_per_bank * self.ways as u64 * self.block_size as u64
    }

    /// The set of block `block` of the file with handle hash `fh_hash`.
    pub fn set_of(&self, fh_hash: u64, block: u64) -> u64 {
        fh_hash.wrapping_add(block) % self.sets()
    }

    /// Address of `way` in global set `set`: sets are laid out bank by bank, so
    /// consecutive sets are neighbours in one bank file.
    pub fn frame(&self, set: u64, way: u32) -> Frame {
        Frame {
            bank: (set / self.sets_per_bank) as u32,
            set_in_bank: set % self.sets_per_bank,
            way,
        }
    }

    /// Index of a frame among all frames (for in-memory per-frame arrays).
    pub fn index(&self, f: Frame) -> usize {
        ((f.bank as u64 * self.sets_per_bank + f.set_in_bank) * self.ways as u64 + f.way as u64)
            as usize
    }

    /// Byte offset of a frame's data in its bank file. Way-major: way `w` of consecutive
    /// sets are neighbours, so a file whose consecutive blocks went into the same way of
    /// consecutive sets (the first free way, in a fresh cache) is sequential on disk and
    /// the kernel's readahead works for it.
    pub fn data_offset(&self, f: Frame) -> u64 {
        (f.way as u64 * self.sets_per_bank + f.set_in_bank) * self.block_size as u64
    }
}

/// FNV-1a, 64-bit: stable across builds and platforms.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        Geometry::new(64 << 20, 64 << 10, 16, 8).unwrap()
    }

    #[test]
    fn consecutive_blocks_map_to_consecutive_sets() {
        let g = geo();
        let h = fnv1a(b"some file handle");
        for b in 0..1000u64 {
            assert_eq!(g.set_of(h, b + 1), (g.set_of(h, b) + 1) % g.sets());
        }
        // ...and within a bank, the same way of consecutive sets is adjacent on disk.
        let f0 = g.frame(3, 2);
        let f1 = g.frame(4, 2);
        assert_eq!(f0.bank, f1.bank);
        assert_eq!(g.data_offset(f1) - g.data_offset(f0), g.block_size as u64);
    }

    #[test]
    fn handles_spread_over_sets() {
        let g = geo();
        let mut hits = vec![0u32; g.sets() as usize];
        for i in 0..(g.sets() * 8) {
            let fh = format!("handle-{i}");
            hits[g.set_of(fnv1a(fh.as_bytes()), 0) as usize] += 1;
        }
        // 8 handles per set on average; no set should be empty or hold 4x the mean.
        assert!(hits.iter().all(|&n| n > 0 && n < 32), "{hits:?}");
    }

    #[test]
    fn frames_are_distinct_and_inside_their_bank() {
        let g = geo();
        let mut seen = std::collections::HashSet::new();
        for set in 0..g.sets() {
            for way in 0..g.ways {
                let f = g.frame(set, way);
                assert!(f.bank < g.banks);
                assert!(g.data_offset(f) + g.block_size as u64 <= g.bank_bytes());
                assert!(seen.insert(g.index(f)));
            }
        }
        assert_eq!(seen.len() as u64, g.frames());
    }

    #[test]
    fn bad_geometries_are_refused() {
        assert!(matches!(
            Geometry::new(1 << 30, 3000, 4, 1),
            Err(GeometryError::BlockSize(_))
        ));
        assert!(matches!(
            Geometry::new(1 << 30, 2 << 20, 4, 1),
            Err(GeometryError::BlockSize(_))
        ));
        assert!(matches!(
            Geometry::new(1 << 30, 4096, 0, 1),
            Err(GeometryError::Ways(_))
        ));
        assert!(matches!(
            Geometry::new(4096, 4096, 4, 1),
            Err(GeometryError::TooSmall { .. })
        ));
    }

    #[test]
    fn fnv_is_stable() {
        // Pinned: a cache written by one build must be found by the next.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
