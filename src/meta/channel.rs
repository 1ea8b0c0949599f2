//! The file channel: whole files moved compressed between a client proxy and the server
//! proxy, on a channel of their own (the `gridvfs-file` SSH subsystem), beside the RPC
//! channels of the same SSH session.
//!
//! ```text
//! client → server   request:  length u32 | magic "GVFSFCH1" | op u32 | fh opaque<64>
//!                             | cred flavor u32 | cred body opaque<400>
//!                             | size u64 | mtime secs u32 | mtime nsecs u32
//!                             | codec u32 | level i32 | block_size u32
//!                             | zero runs: count u32, (start u64, len u64)*
//! FETCH  server → client      status u32 [| size u64] then frames
//! STORE  client → server      frames; then server → client: status u32 | post-op fattr3?
//! frame                       offset u64 | raw_len u32 | comp_len u32 | comp_len bytes
//! end of frames               offset = 2^64-1 | status u32 | 0
//! ```
//! A frame is one independent compressed unit (a zstd frame with its checksum, or a
//! gzip member) of `raw_len` bytes of the file at `offset`, so frames can be made on
//! several threads and each decompressed straight into place as it arrives. FETCH sends
//! the file's bytes outside the zero runs, in file order.
//!
//! Everything read off the channel is bounded before it is allocated: the request by
//! `MAX_REQUEST`, a frame by `MAX_FRAME` raw bytes and `max_compressed` of them, and a
//! decompressed frame must be exactly `raw_len` bytes.

use std::io::{Read, Write};
use std::ops::Range;

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::format::{Codec, ZeroMap};
use crate::upstream::calls::Cred;
use crate::xdr::{Reader, XdrError, XdrWrite};

/// The SSH subsystem of the file channel.
pub const SUBSYSTEM: &str = "gridvfs-file";
pub const MAGIC: &[u8; 8] = b"GVFSFCH1";
/// A request is at most this long: a header and the most zero runs a sidecar may hold
/// (16 bytes each). Its buffer grows only as its bytes arrive.
pub const MAX_REQUEST: usize = 16 * super::format::MAX_RUNS + 4096;
/// Raw bytes in one frame at most.
pub const MAX_FRAME: u32 = 4 << 20;
/// Bytes of the file per frame that the sender makes.
pub const FRAME: u32 = 1 << 20;

/// Status codes: 0, an NFS status (nfsstat3) from the server, or one of these.
pub const OK: u32 = 0;
/// The file's size or mtime is not what the request says (the sidecar is stale).
pub const STALE_META: u32 = 0x1_0001;
/// The request is malformed.
pub const BAD_REQUEST: u32 = 0x1_0002;
/// The handle was not issued to this client, or its credential is refused.
pub const DENIED: u32 = 0x1_0003;
/// The server proxy failed on its own (its next hop, a codec).
pub const FAILED: u32 = 0x1_0004;

/// The name of a status, for logs.
pub fn status_name(s: u32) -> String {
    match s {
        OK => "OK".into(),
        STALE_META => "STALE_META (file changed since the sidecar)".into(),
        BAD_REQUEST => "BAD_REQUEST".into(),
        DENIED => "DENIED (handle not issued or credential refused)".into(),
        FAILED => "FAILED (server proxy error)".into(),
        n => format!("NFS {}", crate::nfs3::Nfsstat3(n).name()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Server → client: the file's non-zero bytes.
    Fetch,
    /// Client → server: ranges to write (and commit) into the file.
    Store,
}

/// Why the file channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("file channel I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("file channel message malformed: {0}")]
    Malformed(String),
    #[error("file channel: the other end says {}", status_name(*.0))]
    Status(u32),
}

impl From<XdrError> for ChannelError {
    fn from(e: XdrError) -> Self {
        ChannelError::Malformed(e.to_string())
    }
}

fn malformed<T>(why: impl Into<String>) -> Result<T, ChannelError> {
    Err(ChannelError::Malformed(why.into()))
}

/// A file channel request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub fh: Vec<u8>,
    /// The credential of the client call it serves (mapped by the server's account).
    pub cred: Cred,
    /// FETCH: the size and mtime the sidecar was made for (the server refuses with
    /// STALE_META if the file differs). STORE: unused (0).
    pub size: u64,
    pub mtime: (u32, u32),
    pub codec: Codec,
    pub level: i32,
    /// FETCH: the zero blocks to skip.
    pub zeros: ZeroMap,
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = bytes::BytesMut::new();
        b.put_u32(0); // length, set below
        b.put_slice(MAGIC);
        b.put_u32(match self.op {
            Op::Fetch => 1,
            Op::Store => 2,
        });
        b.put_xdr_opaque(&self.fh);
        b.put_u32(self.cred.flavor);
        b.put_xdr_opaque(&self.cred.body);
        b.put_u64(self.size);
        b.put_u32(self.mtime.0);
        b.put_u32(self.mtime.1);
        b.put_u32(codec_code(self.codec));
        b.put_i32(self.level);
        b.put_u32(self.zeros.block_size);
        let runs = self.zeros.runs();
        b.put_u32(runs.len() as u32);
        for r in runs {
            b.put_u64(r.start);
            b.put_u64(r.end - r.start);
        }
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        b.to_vec()
    }

    /// Reads one request (bounded by `MAX_REQUEST`).
    pub async fn read_from(r: &mut (impl AsyncRead + Unpin)) -> Result<Request, ChannelError> {
        let len = r.read_u32().await? as usize;
        if len > MAX_REQUEST {
            return malformed(format!("request of {len} bytes (limit {MAX_REQUEST})"));
        }
        let mut buf = Vec::with_capacity(len.min(1 << 20));
        let got = r.take(len as u64).read_to_end(&mut buf).await?;
        if got != len {
            return malformed(format!("request ends after {got} of {len} bytes"));
        }
        Request::decode(&buf)
    }

    pub fn decode(buf: &[u8]) -> Result<Request, ChannelError> {
        let mut r = Reader::new(buf);
        if r.take(8)? != MAGIC {
            return malformed("bad magic");
        }
        let op = match r.u32()? {
            1 => Op::Fetch,
            2 => Op::Store,
            n => return malformed(format!("unknown operation {n}")),
        };
        let fh = r.opaque(crate::nfs3::NFS3_FHSIZE)?.to_vec();
        let flavor = r.u32()?;
        let body = r.opaque(400)?.to_vec();
        let size = r.u64()?;
        let mtime = (r.u32()?, r.u32()?);
        let codec = match r.u32()? {
            1 => Codec::Zstd,
            2 => Codec::Gzip,
            n => return malformed(format!("unknown codec {n}")),
        };
        let level = r.i32()?;
        if !(0..=19).contains(&level) {
            return malformed(format!("compression level {level}"));
        }
        let block_size = r.u32()?;
        if !block_size.is_power_of_two()
            || !(super::format::MIN_BLOCK..=super::format::MAX_BLOCK).contains(&block_size)
        {
            return malformed(format!("block size {block_size}"));
        }
        let n = r.u32()? as usize;
        if n > r.left() / 16 {
            return malformed(format!("{n} zero runs announced"));
        }
        let blocks = size.div_ceil(block_size as u64);
        let mut runs: Vec<Range<u64>> = Vec::with_capacity(n);
        for _ in 0..n {
            let start = r.u64()?;
            let len = r.u64()?;
            match start.checked_add(len) {
                Some(end) if end <= blocks && len > 0 => runs.push(start..end),
                _ => return malformed(format!("zero run {start}+{len} past the file")),
            }
        }
        r.finish()?;
        Ok(Request {
            op,
            fh,
            cred: Cred { flavor, body },
            size,
            mtime,
            codec,
            level,
            zeros: ZeroMap::from_runs(block_size, blocks, runs),
        })
    }
}

fn codec_code(c: Codec) -> u32 {
    match c {
        Codec::Zstd => 1,
        Codec::Gzip => 2,
    }
}

/// The most compressed bytes a frame of `raw` bytes may take on the wire: more than
/// any codec here produces, even for random data.
pub fn max_compressed(raw: u32) -> u32 {
    raw + raw / 8 + 4096
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameHead {
    Data {
        offset: u64,
        raw: u32,
        comp: u32,
    },
    /// The end of the frames, with the sender's status.
    End(u32),
}

pub fn encode_frame_head(h: FrameHead) -> [u8; 16] {
    let mut b = [0u8; 16];
    let (o, x, y) = match h {
        FrameHead::Data { offset, raw, comp } => (offset, raw, comp),
        FrameHead::End(status) => (u64::MAX, status, 0),
    };
    b[..8].copy_from_slice(&o.to_be_bytes());
    b[8..12].copy_from_slice(&x.to_be_bytes());
    b[12..].copy_from_slice(&y.to_be_bytes());
    b
}

/// Reads a frame header and checks its bounds.
pub async fn read_frame_head(r: &mut (impl AsyncRead + Unpin)) -> Result<FrameHead, ChannelError> {
    let mut b = [0u8; 16];
    r.read_exact(&mut b).await?;
    let offset = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
    let x = u32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
    let y = u32::from_be_bytes(b[12..].try_into().expect("4 bytes"));
    if offset == u64::MAX {
        return Ok(FrameHead::End(x));
    }
    if x == 0 || x > MAX_FRAME || y > max_compressed(x) || offset.checked_add(x as u64).is_none() {
        return malformed(format!("frame at {offset}: {x} raw bytes in {y}"));
    }
    Ok(FrameHead::Data {
        offset,
        raw: x,
        comp: y,
    })
}

/// Writes one data frame.
pub async fn write_frame(
    w: &mut (impl AsyncWrite + Unpin),
    offset: u64,
    raw: u32,
    comp: &[u8],
) -> std::io::Result<()> {
    let head = encode_frame_head(FrameHead::Data {
        offset,
        raw,
        comp: comp.len() as u32,
    });
    w.write_all(&head).await?;
    w.write_all(comp).await
}

pub async fn write_end(w: &mut (impl AsyncWrite + Unpin), status: u32) -> std::io::Result<()> {
    w.write_all(&encode_frame_head(FrameHead::End(status)))
        .await?;
    w.flush().await
}

/// Compresses one frame. Level 0: the codec's default (zstd 3, gzip 6).
pub fn compress(codec: Codec, level: i32, raw: &[u8]) -> std::io::Result<Vec<u8>> {
    match codec {
        Codec::Zstd => {
            let level = if level == 0 { 3 } else { level };
            thread_local! {
                static ZSTD: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
                    const { std::cell::RefCell::new(None) };
            }
            ZSTD.with(|z| {
                let mut z = z.borrow_mut();
                if z.as_ref().is_none_or(|(l, _)| *l != level) {
                    let mut c = zstd::bulk::Compressor::new(level)?;
                    c.include_checksum(true)?;
                    *z = Some((level, c));
                }
                z.as_mut().expect("just set").1.compress(raw)
            })
        }
        Codec::Gzip => {
            let level = if level == 0 { 6 } else { level.clamp(1, 9) } as u32;
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(raw.len() / 2),
                flate2::Compression::new(level),
            );
            e.write_all(raw)?;
            e.finish()
        }
    }
}

/// Decompresses one frame that must hold exactly `raw` bytes.
pub fn decompress(codec: Codec, comp: &[u8], raw: u32) -> Result<Vec<u8>, ChannelError> {
    let out = match codec {
        Codec::Zstd => {
            thread_local! {
                static ZSTD: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    const { std::cell::RefCell::new(None) };
            }
            ZSTD.with(|z| {
                let mut z = z.borrow_mut();
                if z.is_none() {
                    *z = Some(zstd::bulk::Decompressor::new()?);
                }
                z.as_mut().expect("just set").decompress(comp, raw as usize)
            })
            .map_err(|e| ChannelError::Malformed(format!("zstd frame: {e}")))?
        }
        Codec::Gzip => {
            let mut out = Vec::with_capacity(raw as usize);
            flate2::read::GzDecoder::new(comp)
                .take(raw as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| ChannelError::Malformed(format!("gzip member: {e}")))?;
            out
        }
    };
    if out.len() != raw as usize {
        return malformed(format!(
            "frame holds {} bytes, {} announced",
            out.len(),
            raw
        ));
    }
    Ok(out)
}

/// The frames FETCH sends for a file of `size` bytes: its bytes outside the zero runs,
/// cut into pieces of at most `FRAME` bytes, in file order. Made lazily: a huge sparse
/// file costs no list of every MiB up front.
pub fn fetch_pieces(zeros: &ZeroMap, size: u64) -> impl Iterator<Item = Range<u64>> + use<> {
    zeros.data_ranges(0, size).into_iter().flat_map(|r| {
        (r.start..r.end)
            .step_by(FRAME as usize)
            .map(move |s| s..(s + FRAME as u64).min(r.end))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Request {
        Request {
            op: Op::Fetch,
            fh: vec![1, 2, 3, 4, 5],
            cred: Cred {
                flavor: 1,
                body: vec![0; 20],
            },
            size: 10 * 4096 + 5,
            mtime: (7, 8),
            codec: Codec::Gzip,
            level: 4,
            zeros: ZeroMap::from_runs(4096, 11, vec![1..3, 5..11]),
        }
    }

    #[test]
    fn request_round_trips_and_rejects_every_truncation() {
        let r = req();
        let enc = r.encode();
        assert_eq!(Request::decode(&enc[4..]).unwrap(), r);
        for n in 4..enc.len() {
            assert!(Request::decode(&enc[4..n]).is_err(), "truncated at {n}");
        }
        let mut bad = enc.clone();
        bad[4] = b'X';
        assert!(Request::decode(&bad[4..]).is_err());
    }

    #[test]
    fn codecs_round_trip_and_refuse_a_wrong_length() {
        let raw: Vec<u8> = (0..300_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 11) as u8)
            .collect();
        for codec in [Codec::Zstd, Codec::Gzip] {
            let c = compress(codec, 0, &raw).unwrap();
            assert!(c.len() < raw.len());
            assert_eq!(decompress(codec, &c, raw.len() as u32).unwrap(), raw);
            assert!(decompress(codec, &c, raw.len() as u32 - 1).is_err());
            assert!(decompress(codec, &c, raw.len() as u32 + 1).is_err());
            let mut broken = c.clone();
            let mid = broken.len() / 2;
            broken[mid] ^= 0xff;
            assert!(decompress(codec, &broken, raw.len() as u32).is_err());
        }
    }

    #[test]
    fn fetch_pieces_skip_zero_runs_and_split_large_ranges() {
        let bs = 4096u64;
        let size = 600 * bs;
        let z = ZeroMap::from_runs(4096, 600, std::iter::once(10..300).collect());
        let p: Vec<_> = fetch_pieces(&z, size).collect();
        assert_eq!(p[0], 0..10 * bs);
        assert_eq!(p[1].start, 300 * bs);
        assert!(p.iter().all(|r| r.end - r.start <= FRAME as u64));
        assert_eq!(p.last().unwrap().end, size);
        let total: u64 = p.iter().map(|r| r.end - r.start).sum();
        assert_eq!(total, size - 290 * bs);
    }

    /// Found in review: a sidecar may hold `MAX_RUNS` zero runs (as a bitmap it is far
    /// smaller than its run list); the FETCH request carrying them must be accepted.
    #[test]
    fn a_request_with_a_very_fragmented_zero_map_is_accepted() {
        let blocks: u64 = 3 << 20;
        let runs: Vec<_> = (0..blocks).step_by(2).map(|b| b..b + 1).collect();
        let mut r = req();
        r.size = blocks * 4096;
        r.zeros = ZeroMap::from_runs(4096, blocks, runs);
        let wire = r.encode();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = rt.block_on(Request::read_from(&mut &wire[..])).unwrap();
        assert_eq!(got.zeros.runs().len(), 3 << 19);
    }

    /// The pieces of a huge sparse file are made lazily (found in review: a list of
    /// every MiB of a file a client made 2^62 bytes long would not fit in memory).
    #[test]
    fn fetch_pieces_are_lazy() {
        let size: u64 = 1 << 62;
        let z = ZeroMap::from_runs(1 << 20, size >> 20, Vec::new());
        let first: Vec<_> = fetch_pieces(&z, size).take(2).collect();
        assert_eq!(first, vec![0..FRAME as u64, FRAME as u64..2 * FRAME as u64]);
    }

    #[tokio::test]
    async fn frame_heads_are_bounded() {
        let mut ok = &encode_frame_head(FrameHead::Data {
            offset: 5,
            raw: 100,
            comp: 50,
        })[..];
        assert!(read_frame_head(&mut ok).await.is_ok());
        let mut big = &encode_frame_head(FrameHead::Data {
            offset: 5,
            raw: MAX_FRAME + 1,
            comp: 50,
        })[..];
        assert!(read_frame_head(&mut big).await.is_err());
        let mut bloated = &encode_frame_head(FrameHead::Data {
            offset: 5,
            raw: 100,
            comp: 10_000,
        })[..];
        assert!(read_frame_head(&mut bloated).await.is_err());
        let mut end = &encode_frame_head(FrameHead::End(DENIED))[..];
        assert_eq!(
            read_frame_head(&mut end).await.unwrap(),
            FrameHead::End(DENIED)
        );
    }
}
