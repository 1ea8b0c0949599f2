//! The sidecar file format (docs/sidecar-format.md), version 1.
//!
//! ```text
//! magic "GVFSMETA" | version u32 | section* | crc32 u32
//! section = tag u32 | length u32 | body (length bytes) | zero padding to 4
//! ```
//! Big-endian throughout (XDR). Sections FILE (1), ACTIONS (2) and ZEROMAP (3) must be
//! there exactly once; WORKSET (4) is optional; unknown tags are skipped (so a later
//! minor addition does not break this reader). The CRC32 covers every byte before it.
//! Every length and count is checked against the bytes left and against its own bound
//! before anything is allocated; anything out of shape is a typed error, never a panic.

use std::ops::Range;

use bytes::BufMut;

use crate::xdr::{Reader, XdrError};

/// "GVFSMETA".
pub const MAGIC: &[u8; 8] = b"GVFSMETA";
pub const VERSION: u32 = 1;
/// The largest sidecar read or written: a bitmap for a 64 TiB file at 512-byte blocks
/// would not fit; 4 KiB blocks of a 500 GiB disk do (16 MiB).
pub const MAX_SIDECAR: usize = 16 << 20;
/// Block sizes allowed for the zero map: powers of two in this range.
pub const MIN_BLOCK: u32 = 512;
pub const MAX_BLOCK: u32 = 1 << 20;
/// Zero runs a sidecar may hold (64 MiB in memory): a map more fragmented than this
/// should use a larger block size.
pub const MAX_RUNS: usize = 4 << 20;
/// Working-set ranges kept at most.
pub const MAX_WORKSET: usize = 1 << 16;

const TAG_FILE: u32 = 1;
const TAG_ACTIONS: u32 = 2;
const TAG_ZEROMAP: u32 = 3;
const TAG_WORKSET: u32 = 4;

const ENC_RUNS: u32 = 1;
const ENC_BITMAP: u32 = 2;

/// Why a sidecar was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SidecarError {
    #[error("not a gridvfs sidecar (bad magic)")]
    Magic,
    #[error("sidecar format version {0} is not supported (this gridvfs reads version 1)")]
    Version(u32),
    #[error("sidecar is {0} bytes, over the {MAX_SIDECAR}-byte limit")]
    TooBig(usize),
    #[error("sidecar checksum mismatch (file damaged or truncated)")]
    Checksum,
    #[error("sidecar is malformed: {0}")]
    Xdr(#[from] XdrError),
    #[error("sidecar is malformed: {0}")]
    Bad(String),
}

fn bad<T>(why: impl Into<String>) -> Result<T, SidecarError> {
    Err(SidecarError::Bad(why.into()))
}

/// A modification time as the file system reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileTime {
    pub secs: i64,
    pub nsecs: u32,
}

/// `SECS.NNNNNNNNN`, seconds since the epoch and nanoseconds.
impl std::fmt::Display for FileTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:09}", self.secs, self.nsecs)
    }
}

/// How the client proxy fetches the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Block by block, as the client reads (zero blocks answered locally).
    Blocks,
    /// The whole file, compressed, over the file channel on first read.
    WholeFile,
}

/// Compression on the file channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Zstd,
    /// gzip (deflate), the codec of the GVFS paper.
    Gzip,
}

/// How dirty data of the file goes back at a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writeback {
    /// NFS WRITEs of the dirty blocks.
    Blocks,
    /// The dirty ranges, compressed, over the file channel (the server proxy writes
    /// and commits them).
    WholeFile,
}

/// The actions a sidecar asks of the proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    pub fetch: Fetch,
    pub codec: Codec,
    /// Compression level (zstd 1..=19, gzip 1..=9); 0 means the codec's default.
    pub level: i32,
    pub writeback: Writeback,
}

impl Default for Actions {
    fn default() -> Self {
        Actions {
            fetch: Fetch::Blocks,
            codec: Codec::Zstd,
            level: 0,
            writeback: Writeback::Blocks,
        }
    }
}

/// Which blocks of a file hold only zero bytes. The last block may be partial (the
/// file's size is not a multiple of the block size): it counts as zero when its bytes up
/// to the end of file are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZeroMap {
    pub block_size: u32,
    /// Blocks in the file: ceil(size / block_size).
    pub blocks: u64,
    /// Runs of zero blocks, `start..end` in block numbers: sorted, non-empty, neither
    /// overlapping nor touching, inside `0..blocks`.
    runs: Vec<Range<u64>>,
}

impl ZeroMap {
    /// A map from zero runs in any order (they are sorted and merged).
    pub fn from_runs(block_size: u32, blocks: u64, mut runs: Vec<Range<u64>>) -> ZeroMap {
        runs.retain(|r| r.start < r.end.min(blocks));
        runs.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(runs.len());
        for r in runs {
            let r = r.start..r.end.min(blocks);
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        ZeroMap {
            block_size,
            blocks,
            runs: merged,
        }
    }

    /// Runs of zero blocks (block numbers).
    pub fn runs(&self) -> &[Range<u64>] {
        &self.runs
    }

    /// Number of zero blocks.
    pub fn zero_blocks(&self) -> u64 {
        self.runs.iter().map(|r| r.end - r.start).sum()
    }

    /// Whether block `b` is a zero block.
    pub fn is_zero_block(&self, b: u64) -> bool {
        let i = self.runs.partition_point(|r| r.end <= b);
        self.runs.get(i).is_some_and(|r| r.start <= b)
    }

    /// Whether every byte of `off..end` lies in zero blocks (an empty range does).
    pub fn is_zero(&self, off: u64, end: u64) -> bool {
        if off >= end {
            return true;
        }
        let bs = self.block_size as u64;
        let (first, last) = (off / bs, (end - 1) / bs);
        let i = self.runs.partition_point(|r| r.end <= first);
        self.runs
            .get(i)
            .is_some_and(|r| r.start <= first && last < r.end)
    }

    /// The first part of `off..end` that is not in zero blocks (what `data_ranges` would
    /// list first), without listing the rest.
    pub fn next_data(&self, off: u64, end: u64) -> Option<Range<u64>> {
        let bs = self.block_size as u64;
        let mut pos = off;
        let mut i = self.runs.partition_point(|r| r.end <= off / bs);
        while pos < end {
            match self.runs.get(i) {
                Some(r) if r.start.saturating_mul(bs) <= pos => {
                    pos = r.end.saturating_mul(bs).max(pos);
                    i += 1;
                }
                Some(r) => return Some(pos..r.start.saturating_mul(bs).min(end)),
                None => return Some(pos..end),
            }
        }
        None
    }

    /// The parts of `off..end` that are not in zero blocks, in order.
    pub fn data_ranges(&self, off: u64, end: u64) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut pos = off;
        while let Some(r) = self.next_data(pos, end) {
            pos = r.end;
            out.push(r);
        }
        out
    }

    /// Bytes of a file of `size` bytes in this map's blocks (the last block may be
    /// partial).
    pub fn zero_bytes(&self, size: u64) -> u64 {
        let bs = self.block_size as u64;
        self.runs
            .iter()
            .map(|r| r.end.saturating_mul(bs).min(size) - r.start.saturating_mul(bs).min(size))
            .sum()
    }
}

/// A parsed sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    /// The data file's size when the sidecar was made.
    pub size: u64,
    /// Its modification time then.
    pub mtime: FileTime,
    /// BLAKE3 of its content, when the generator computed one.
    pub digest: Option<[u8; 32]>,
    pub actions: Actions,
    pub zeros: ZeroMap,
    /// Byte ranges read first when a VM resumes (kept for the working-set prefetch of
    /// later versions; read, bounded and written back unchanged today).
    pub working_set: Vec<Range<u64>>,
}

/// Why a sidecar does not describe the file as it is now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    #[error("size changed: sidecar says {sidecar}, file is {file}")]
    Size { sidecar: u64, file: u64 },
    #[error("modification time changed: sidecar says {sidecar}, file is {file}")]
    Mtime { sidecar: FileTime, file: FileTime },
}

impl Sidecar {
    /// Whether the sidecar still describes a file of this size and modification time.
    pub fn check_fresh(&self, size: u64, mtime: FileTime) -> Result<(), Stale> {
        if size != self.size {
            return Err(Stale::Size {
                sidecar: self.size,
                file: size,
            });
        }
        if mtime != self.mtime {
            return Err(Stale::Mtime {
                sidecar: self.mtime,
                file: mtime,
            });
        }
        Ok(())
    }

    /// Bytes of the file in zero blocks.
    pub fn zero_bytes(&self) -> u64 {
        self.zeros.zero_bytes(self.size)
    }

    /// The encoded sidecar.
    pub fn encode(&self) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        out.put_slice(MAGIC);
        out.put_u32(VERSION);

        let mut file = Vec::new();
        file.put_u64(self.size);
        file.put_i64(self.mtime.secs);
        file.put_u32(self.mtime.nsecs);
        match &self.digest {
            Some(d) => {
                file.put_u32(1);
                file.put_slice(d);
            }
            None => file.put_u32(0),
        }
        section(&mut out, TAG_FILE, &file);

        let a = &self.actions;
        let mut act = Vec::new();
        act.put_u32(match a.fetch {
            Fetch::Blocks => 0,
            Fetch::WholeFile => 1,
        });
        act.put_u32(match a.codec {
            Codec::Zstd => 1,
            Codec::Gzip => 2,
        });
        act.put_i32(a.level);
        act.put_u32(match a.writeback {
            Writeback::Blocks => 0,
            Writeback::WholeFile => 1,
        });
        section(&mut out, TAG_ACTIONS, &act);

        let z = &self.zeros;
        let mut map = Vec::new();
        map.put_u32(z.block_size);
        map.put_u64(z.blocks);
        map.put_u64(z.zero_blocks());
        // Whichever encoding is smaller.
        let runs_len = 4 + 16 * z.runs.len() as u64;
        let bitmap_len = z.blocks.div_ceil(8);
        if runs_len <= bitmap_len {
            map.put_u32(ENC_RUNS);
            map.put_u32(z.runs.len() as u32);
            for r in &z.runs {
                map.put_u64(r.start);
                map.put_u64(r.end - r.start);
            }
        } else {
            map.put_u32(ENC_BITMAP);
            let mut bits = vec![0u8; bitmap_len as usize];
            for r in &z.runs {
                for b in r.clone() {
                    bits[(b / 8) as usize] |= 1 << (b % 8);
                }
            }
            map.put_slice(&bits);
        }
        section(&mut out, TAG_ZEROMAP, &map);

        if !self.working_set.is_empty() {
            let mut ws = Vec::new();
            ws.put_u32(self.working_set.len() as u32);
            for r in &self.working_set {
                ws.put_u64(r.start);
                ws.put_u64(r.end - r.start);
            }
            section(&mut out, TAG_WORKSET, &ws);
        }
        let crc = crc32fast::hash(&out);
        out.put_u32(crc);
        out
    }

    /// Parses and checks a sidecar: every field is bounds-checked, the whole must be
    /// consistent (block count matches the size, runs inside the file, counts add up).
    pub fn parse(buf: &[u8]) -> Result<Sidecar, SidecarError> {
        if buf.len() > MAX_SIDECAR {
            return Err(SidecarError::TooBig(buf.len()));
        }
        if buf.len() < 16 || &buf[..8] != MAGIC {
            return Err(SidecarError::Magic);
        }
        let version = u32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(SidecarError::Version(version));
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        if crc32fast::hash(body) != u32::from_be_bytes(crc.try_into().expect("4 bytes")) {
            return Err(SidecarError::Checksum);
        }
        let mut r = Reader::new(&body[12..]);
        let (mut file, mut actions, mut zeros, mut ws) = (None, None, None, None);
        while r.left() > 0 {
            let tag = r.u32()?;
            let len = r.u32()? as usize;
            let sec = r.take(len)?;
            r.take(crate::xdr::pad(len))?;
            let mut s = Reader::new(sec);
            let dup = match tag {
                TAG_FILE => file.replace(parse_file(&mut s)?).is_some(),
                TAG_ACTIONS => actions.replace(parse_actions(&mut s)?).is_some(),
                TAG_ZEROMAP => zeros.replace(parse_zeromap(&mut s)?).is_some(),
                TAG_WORKSET => ws.replace(parse_workset(&mut s)?).is_some(),
                _ => continue, // a section this version does not know
            };
            if dup {
                return bad(format!("section {tag} appears twice"));
            }
            s.finish()?;
        }
        let Some((size, mtime, digest)) = file else {
            return bad("no FILE section");
        };
        let Some(actions) = actions else {
            return bad("no ACTIONS section");
        };
        let Some(zeros) = zeros else {
            return bad("no ZEROMAP section");
        };
        if zeros.blocks != size.div_ceil(zeros.block_size as u64) {
            return bad(format!(
                "zero map has {} blocks; a {size}-byte file has {}",
                zeros.blocks,
                size.div_ceil(zeros.block_size as u64)
            ));
        }
        let working_set = ws.unwrap_or_default();
        if let Some(r) = working_set.iter().find(|r| r.end > size) {
            return bad(format!("working-set range {r:?} ends past the file"));
        }
        Ok(Sidecar {
            size,
            mtime,
            digest,
            actions,
            zeros,
            working_set,
        })
    }
}

fn section(out: &mut Vec<u8>, tag: u32, body: &[u8]) {
    out.put_u32(tag);
    out.put_u32(body.len() as u32);
    out.put_slice(body);
    out.put_bytes(0, crate::xdr::pad(body.len()));
}

type FileSection = (u64, FileTime, Option<[u8; 32]>);

fn parse_file(s: &mut Reader<'_>) -> Result<FileSection, SidecarError> {
    let size = s.u64()?;
    let secs = s.u64()? as i64;
    let nsecs = s.u32()?;
    if nsecs >= 1_000_000_000 {
        return bad(format!("mtime nanoseconds {nsecs} out of range"));
    }
    let digest = match s.u32()? {
        0 => None,
        1 => Some(s.fixed(32)?.try_into().expect("32 bytes")),
        other => return bad(format!("unknown digest kind {other}")),
    };
    Ok((size, FileTime { secs, nsecs }, digest))
}

fn parse_actions(s: &mut Reader<'_>) -> Result<Actions, SidecarError> {
    let fetch = match s.u32()? {
        0 => Fetch::Blocks,
        1 => Fetch::WholeFile,
        v => return bad(format!("unknown fetch action {v}")),
    };
    let codec = match s.u32()? {
        1 => Codec::Zstd,
        2 => Codec::Gzip,
        v => return bad(format!("unknown codec {v}")),
    };
    let level = s.i32()?;
    let max = match codec {
        Codec::Zstd => 19,
        Codec::Gzip => 9,
    };
    if !(0..=max).contains(&level) {
        return bad(format!("compression level {level} out of range 0..={max}"));
    }
    let writeback = match s.u32()? {
        0 => Writeback::Blocks,
        1 => Writeback::WholeFile,
        v => return bad(format!("unknown write-back action {v}")),
    };
    Ok(Actions {
        fetch,
        codec,
        level,
        writeback,
    })
}

fn parse_zeromap(s: &mut Reader<'_>) -> Result<ZeroMap, SidecarError> {
    let block_size = s.u32()?;
    if !block_size.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&block_size) {
        return bad(format!(
            "block size {block_size} is not a power of two in 512..=1MiB"
        ));
    }
    let blocks = s.u64()?;
    let zero_blocks = s.u64()?;
    if zero_blocks > blocks {
        return bad(format!("{zero_blocks} zero blocks of {blocks}"));
    }
    let mut runs: Vec<Range<u64>> = Vec::new();
    match s.u32()? {
        ENC_RUNS => {
            let n = s.u32()? as usize;
            if n > s.left() / 16 || n > MAX_RUNS {
                return bad(format!("{n} runs announced, room for {}", s.left() / 16));
            }
            runs.reserve(n);
            let mut next = 0u64;
            for _ in 0..n {
                let start = s.u64()?;
                let len = s.u64()?;
                let end = start.checked_add(len).filter(|&e| e <= blocks);
                let Some(end) = end.filter(|_| len > 0 && start >= next) else {
                    return bad(format!(
                        "zero run {start}+{len} out of order or out of range"
                    ));
                };
                // Touching runs are allowed on input (merged below), overlapping not.
                runs.push(start..end);
                next = end;
            }
        }
        ENC_BITMAP => {
            let bytes = blocks.div_ceil(8);
            if bytes > s.left() as u64 {
                return bad(format!("bitmap of {bytes} bytes, {} left", s.left()));
            }
            let bits = s.take(bytes as usize)?;
            let mut b = 0u64;
            while b < blocks {
                if bits[(b / 8) as usize] & (1 << (b % 8)) != 0 {
                    let n = runs.len();
                    match runs.last_mut() {
                        Some(r) if r.end == b => r.end += 1,
                        _ if n >= MAX_RUNS => {
                            return bad(format!("more than {MAX_RUNS} zero runs"));
                        }
                        _ => runs.push(b..b + 1),
                    }
                }
                b += 1;
            }
            if blocks % 8 != 0 && bits[bits.len() - 1] >> (blocks % 8) != 0 {
                return bad("bits set past the last block");
            }
        }
        e => return bad(format!("unknown zero-map encoding {e}")),
    }
    let map = ZeroMap::from_runs(block_size, blocks, runs);
    if map.zero_blocks() != zero_blocks {
        return bad(format!(
            "zero map says {zero_blocks} zero blocks but holds {}",
            map.zero_blocks()
        ));
    }
    Ok(map)
}

fn parse_workset(s: &mut Reader<'_>) -> Result<Vec<Range<u64>>, SidecarError> {
    let n = s.u32()? as usize;
    if n > MAX_WORKSET || n > s.left() / 16 {
        return bad(format!("{n} working-set ranges"));
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let start = s.u64()?;
        let len = s.u64()?;
        let Some(end) = start.checked_add(len).filter(|_| len > 0) else {
            return bad(format!("working-set range {start}+{len}"));
        };
        v.push(start..end);
    }
    Ok(v)
}

/// The sidecar's name for a data file named `name`: `.NAME.gvfsmeta`. None when that
/// would pass NFS's 255-byte name limit, or when `name` is a sidecar itself.
pub fn sidecar_name(name: &[u8]) -> Option<Vec<u8>> {
    if name.is_empty() || name == b"." || name == b".." || is_sidecar_name(name) {
        return None;
    }
    let mut v = Vec::with_capacity(name.len() + 10);
    v.push(b'.');
    v.extend_from_slice(name);
    v.extend_from_slice(SUFFIX.as_bytes());
    (v.len() <= 255).then_some(v)
}

/// The sidecar name's suffix.
pub const SUFFIX: &str = ".gvfsmeta";

/// Whether `name` is a sidecar's name.
pub fn is_sidecar_name(name: &[u8]) -> bool {
    name.len() > 1 + SUFFIX.len() && name[0] == b'.' && name.ends_with(SUFFIX.as_bytes())
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
