//! Record marking (RFC 5531 §11): each record is one or more fragments, each fragment a
//! 4-byte big-endian header (top bit = last fragment, low 31 bits = length) and its bytes.
//!
//! The total size of a record is checked against the caller's limit *before* any buffer is
//! grown for it, so a peer cannot make us allocate more than `max` bytes per record.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::transport::OwnedSink;

const LAST_FRAGMENT: u32 = 0x8000_0000;

/// Why a record could not be read. Either way the stream is no longer in sync: close it.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Over the size limit or the fragment limit. `xid` is the record's, when known
    /// (a next hop's oversized reply then fails only its own call).
    #[error(
        "record of at least {len} bytes (or more than 64 fragments) exceeds the limit of {max} bytes"
    )]
    TooLarge {
        len: usize,
        max: usize,
        xid: Option<u32>,
    },
    #[error("connection closed in the middle of a record")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one whole record. `Ok(None)` is a clean end of stream between records.
pub async fn read_record<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<BytesMut>, RecordError> {
    let mut buf = BytesMut::new();
    let mut first = true;
    loop {
        let mut hdr = [0u8; 4];
        match r.read_exact(&mut hdr).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return if first && buf.is_empty() {
                    Ok(None)
                } else {
                    Err(RecordError::Truncated)
                };
            }
            Err(e) => return Err(e.into()),
        }
        first = false;
        let word = u32::from_be_bytes(hdr);
        let len = (word & !LAST_FRAGMENT) as usize;
        let total = buf.len() + len;
        if total > max {
            return Err(RecordError::TooLarge {
                len: total,
                max,
                xid: None,
            });
        }
        // Read straight into spare capacity: no zero-fill of up to a megabyte per record.
        buf.reserve(len);
        let mut body = (&mut *r).take(len as u64);
        while buf.len() < total {
            if body.read_buf(&mut buf).await? == 0 {
                return Err(RecordError::Truncated);
            }
        }
        if word & LAST_FRAGMENT != 0 {
            return Ok(Some(buf));
        }
    }
}

/// Reads records from a stream through one growing buffer: each `read` syscall takes as
/// much as the socket has, and complete records are split off the buffer without being
/// copied again. Once a large record's bytes are actually arriving, room for the rest of
/// it is reserved at once (after the size check), so its body is read in place; a bare
/// header announcing a large record reserves no more than `READ_CHUNK`.
///
/// Bounded: a record's body bytes count against `max`, and a record may have at most
/// `MAX_FRAGMENTS` fragments, so headers alone cannot grow the buffer either. Parsing
/// resumes where it stopped (no rescans). `next` is cancel-safe: its state lives in the
/// reader, so it can sit in a `select!`.
pub struct RecordReader {
    buf: BytesMut,
    max: usize,
    /// Start of the next fragment header in `buf` (past the record's complete fragments).
    at: usize,
    /// Body bytes of the record's complete fragments so far.
    total: usize,
    /// Complete fragments of the record so far.
    frags: usize,
}

/// Bytes asked of the socket when no record size is known yet.
const READ_CHUNK: usize = 64 << 10;
/// Records up to this size are reserved whole at once (the common small call).
const STEP: usize = 256 << 10;
/// Fragments one record may have (clients send one; RFC 5531 sets no limit).
pub const MAX_FRAGMENTS: usize = 64;

impl RecordReader {
    pub fn new(max: usize) -> RecordReader {
        RecordReader {
            buf: BytesMut::with_capacity(READ_CHUNK),
            max,
            at: 0,
            total: 0,
            frags: 0,
        }
    }

    /// The next whole record; `Ok(None)` at a clean end of stream between records.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<BytesMut>, RecordError> {
        loop {
            let need = match self.parse()? {
                Parsed::Record(rec) => return Ok(Some(rec)),
                Parsed::Need(n) => n,
            };
            // Once a first chunk of the record is here, the rest is reserved in one go,
            // so growing copies at most READ_CHUNK bytes per record (was STEP: a 1 MiB
            // record read from an SSH channel in small pieces copied 256 KiB, 10% of
            // the client proxy's CPU).
            let arriving = self.buf.len() >= READ_CHUNK;
            self.buf.reserve(if need <= STEP || arriving {
                need.max(READ_CHUNK)
            } else {
                READ_CHUNK
            });
            if r.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(RecordError::Truncated)
                };
            }
        }
    }

    /// The xid of the record being read, if its first four body bytes are here.
    fn xid(&self) -> Option<u32> {
        let b = self.buf.get(4..8)?;
        Some(u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    /// Splits off a complete record if the buffer holds one, else says how many more
    /// bytes are needed at least. Sizes are checked against `max` before anything grows.
    fn parse(&mut self) -> Result<Parsed, RecordError> {
        loop {
            let at = self.at;
            if self.buf.len() < at + 4 {
                return Ok(Parsed::Need(at + 4 - self.buf.len()));
            }
            let word = u32::from_be_bytes(self.buf[at..at + 4].try_into().expect("4 bytes"));
            let len = (word & !LAST_FRAGMENT) as usize;
            let total = self.total + len;
            if total > self.max || self.frags >= MAX_FRAGMENTS {
                return Err(RecordError::TooLarge {
                    len: total,
                    max: self.max,
                    xid: self.xid(),
                });
            }
            let end = at + 4 + len;
            if self.buf.len() < end {
                return Ok(Parsed::Need(end - self.buf.len()));
            }
            self.frags += 1;
            self.total = total;
            if word & LAST_FRAGMENT == 0 {
                self.at = end;
                continue;
            }
            let frags = self.frags;
            (self.at, self.total, self.frags) = (0, 0, 0);
            if frags == 1 {
                // One fragment (the usual case): hand out the bytes in place.
                let mut rec = self.buf.split_to(end);
                rec.advance(4);
                return Ok(Parsed::Record(rec));
            }
            // Several fragments: join their bodies.
            let mut raw = self.buf.split_to(end);
            let mut rec = BytesMut::with_capacity(total);
            while !raw.is_empty() {
                let len = (u32::from_be_bytes(raw[..4].try_into().expect("4 bytes"))
                    & !LAST_FRAGMENT) as usize;
                rec.extend_from_slice(&raw[4..4 + len]);
                raw.advance(4 + len);
            }
            return Ok(Parsed::Record(rec));
        }
    }
}

enum Parsed {
    Record(BytesMut),
    Need(usize),
}

/// The record mark of a single-fragment record of `len` bytes.
pub fn mark(len: usize) -> std::io::Result<[u8; 4]> {
    let len = u32::try_from(len)
        .ok()
        .filter(|l| *l < LAST_FRAGMENT)
        .ok_or_else(|| std::io::Error::other("record too large to frame"))?;
    Ok((len | LAST_FRAGMENT).to_be_bytes())
}

/// Writes `body` as a single-fragment record (not flushed). Header and body go out in
/// one vectored write where the stream supports it.
pub async fn write_record<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    let hdr = mark(body.len())?;
    let mut both = Buf::chain(&hdr[..], body);
    w.write_all_buf(&mut both).await
}

/// Writes a call record whose xid is replaced by `xid` on the wire, without copying or
/// changing `body` (which keeps the client's xid): header, xid and the rest of the body
/// go out in one vectored write.
pub async fn write_record_with_xid<W: AsyncWrite + Unpin>(
    w: &mut W,
    xid: u32,
    body: &[u8],
) -> std::io::Result<()> {
    if body.len() < 4 {
        return Err(std::io::Error::other("record too short to hold an xid"));
    }
    let hdr = mark(body.len())?;
    let x = xid.to_be_bytes();
    let mut all = Buf::chain(Buf::chain(&hdr[..], &x[..]), &body[4..]);
    w.write_all_buf(&mut all).await
}

/// Records for an `OwnedSink` (an SSH channel): a large body is handed to it as it is (no
/// copy); small records (and a large one's mark) are gathered into one buffer until
/// `flush` or until it holds `GATHER` bytes, so a burst of small records is one SSH
/// packet, not many. The server role's replies and the upstream link's calls both go
/// through it.
pub struct Gather {
    sink: Box<dyn OwnedSink>,
    small: BytesMut,
}

/// Bodies up to this are copied into the gathered buffer; larger ones go whole.
pub const COPY_UP_TO: usize = 64 << 10;
/// The gathered buffer is sent once it holds this much: with the record that reaches
/// it (at most `COPY_UP_TO` and its mark), still one SSH packet (`crate::ssh::MAX_PACKET`).
pub const GATHER: usize = 160 << 10;

impl Gather {
    pub fn new(sink: Box<dyn OwnedSink>) -> Gather {
        Gather {
            sink,
            small: BytesMut::new(),
        }
    }

    /// `body` as a single-fragment record (not flushed).
    pub async fn record(&mut self, body: &Bytes) -> std::io::Result<()> {
        let mark = mark(body.len())?;
        self.put(&[&mark[..]], body.clone(), body.len() <= COPY_UP_TO)
            .await
    }

    /// A call record whose xid is replaced by `xid` on the wire, `body` unchanged (it
    /// keeps the client's xid), as `write_record_with_xid` (not flushed).
    pub async fn record_with_xid(&mut self, xid: u32, body: &Bytes) -> std::io::Result<()> {
        if body.len() < 4 {
            return Err(std::io::Error::other("record too short to carry an xid"));
        }
        let mark = mark(body.len())?;
        let copy = body.len() <= COPY_UP_TO;
        self.put(&[&mark[..], &xid.to_be_bytes()[..]], body.slice(4..), copy)
            .await
    }

    /// `head` gathered, then `rest` copied behind it (`copy`) or handed on whole.
    async fn put(&mut self, head: &[&[u8]], rest: Bytes, copy: bool) -> std::io::Result<()> {
        for h in head {
            self.small.extend_from_slice(h);
        }
        if copy {
            self.small.extend_from_slice(&rest);
            if self.small.len() >= GATHER {
                self.flush().await?;
            }
            return Ok(());
        }
        self.flush().await?;
        self.sink.send(rest).await
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if self.small.is_empty() {
            return Ok(());
        }
        self.sink.send(self.small.split().freeze()).await
    }
}

/// Where a connection's records go: a byte stream `S` (framed and written through it),
/// or an SSH channel's owned-buffer sink (`Gather`: records handed over whole), whose
/// stream's writer `W` is kept only for the end. The proxy's replies to a client and the
/// upstream link's calls both go through it.
pub enum RecordOut<S, W> {
    Stream(S),
    Owned(Gather, W),
}

impl<S: AsyncWrite + Unpin, W: AsyncWrite + Unpin> RecordOut<S, W> {
    /// `body` as a single-fragment record (not flushed).
    pub async fn record(&mut self, body: &Bytes) -> std::io::Result<()> {
        match self {
            RecordOut::Stream(w) => write_record(w, body).await,
            RecordOut::Owned(g, _) => g.record(body).await,
        }
    }

    /// A call record with `xid` in place of its own, `body` unchanged (not flushed).
    pub async fn record_with_xid(&mut self, xid: u32, body: &Bytes) -> std::io::Result<()> {
        match self {
            RecordOut::Stream(w) => write_record_with_xid(w, xid, body).await,
            RecordOut::Owned(g, _) => g.record_with_xid(xid, body).await,
        }
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            RecordOut::Stream(w) => w.flush().await,
            RecordOut::Owned(g, _) => g.flush().await,
        }
    }

    /// Flushes, then shuts the stream's write side down.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            RecordOut::Stream(w) => w.shutdown().await,
            RecordOut::Owned(g, w) => {
                g.flush().await?;
                w.shutdown().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn multi_fragment_record_is_joined() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&3u32.to_be_bytes());
        wire.extend_from_slice(b"abc");
        wire.extend_from_slice(&(2u32 | LAST_FRAGMENT).to_be_bytes());
        wire.extend_from_slice(b"de");
        let mut r = &wire[..];
        let rec = read_record(&mut r, 100).await.unwrap().unwrap();
        assert_eq!(&rec[..], b"abcde");
        assert!(read_record(&mut r, 100).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_record_rejected_before_reading_body() {
        // Header claims 2 GiB; only the header is present. Must fail on the size, not
        // allocate 2 GiB and then fail on the short read.
        let wire = (0x7fff_ffffu32 | LAST_FRAGMENT).to_be_bytes();
        let mut r = &wire[..];
        match read_record(&mut r, 1 << 20).await {
            Err(RecordError::TooLarge { len, max, .. }) => {
                assert_eq!(len, 0x7fff_ffff);
                assert_eq!(max, 1 << 20);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn fragments_count_toward_the_limit_together() {
        let mut wire = Vec::new();
        for _ in 0..3 {
            wire.extend_from_slice(&40u32.to_be_bytes());
            wire.extend_from_slice(&[0u8; 40]);
        }
        let mut r = &wire[..];
        assert!(matches!(
            read_record(&mut r, 100).await,
            Err(RecordError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn truncated_record_is_an_error() {
        let mut wire = (10u32 | LAST_FRAGMENT).to_be_bytes().to_vec();
        wire.extend_from_slice(b"abc");
        let mut r = &wire[..];
        assert!(matches!(
            read_record(&mut r, 100).await,
            Err(RecordError::Truncated)
        ));
    }

    async fn all_records(
        wire: &[u8],
        max: usize,
        chunk: usize,
    ) -> Result<Vec<Vec<u8>>, RecordError> {
        // Feed the reader `chunk` bytes at a time, as a slow socket would.
        let (mut tx, mut rx) = tokio::io::duplex(chunk.max(1));
        let wire = wire.to_vec();
        let feeder = tokio::spawn(async move {
            for c in wire.chunks(chunk) {
                if tx.write_all(c).await.is_err() {
                    return;
                }
            }
        });
        let mut rr = RecordReader::new(max);
        let mut out = Vec::new();
        let res = loop {
            match rr.next(&mut rx).await {
                Ok(Some(r)) => out.push(r.to_vec()),
                Ok(None) => break Ok(out),
                Err(e) => break Err(e),
            }
        };
        feeder.abort();
        res
    }

    #[tokio::test]
    async fn record_reader_splits_joins_and_bounds() {
        let mut wire = Vec::new();
        write_record(&mut wire, b"first").await.unwrap();
        wire.extend_from_slice(&3u32.to_be_bytes());
        wire.extend_from_slice(b"abc");
        wire.extend_from_slice(&(2u32 | LAST_FRAGMENT).to_be_bytes());
        wire.extend_from_slice(b"de");
        write_record(&mut wire, &vec![7u8; 200_000]).await.unwrap();
        for chunk in [1, 3, 7, 4096, 1 << 20] {
            let recs = all_records(&wire, 300_000, chunk).await.unwrap();
            assert_eq!(recs.len(), 3, "chunk {chunk}");
            assert_eq!(recs[0], b"first");
            assert_eq!(recs[1], b"abcde");
            assert_eq!(recs[2], vec![7u8; 200_000]);
        }
        assert!(matches!(
            all_records(&wire, 100_000, 4096).await,
            Err(RecordError::TooLarge { len: 200_000, .. })
        ));
        // Header claiming 2 GiB: refused from the header alone.
        let huge = (0x7fff_ffffu32 | LAST_FRAGMENT).to_be_bytes();
        assert!(matches!(
            all_records(&huge, 1 << 20, 4).await,
            Err(RecordError::TooLarge { .. })
        ));
        assert!(matches!(
            all_records(&wire[..wire.len() - 1], 300_000, 4096).await,
            Err(RecordError::Truncated)
        ));
    }

    /// Regression: zero-length non-last fragments were not counted, so a stream of bare
    /// headers grew the buffer without bound (and was rescanned on every read).
    #[tokio::test]
    async fn flood_of_empty_fragments_is_refused() {
        let wire = vec![0u8; 64 << 10];
        assert!(matches!(
            all_records(&wire, 1 << 20, 4096).await,
            Err(RecordError::TooLarge { .. })
        ));
        let mut ok = Vec::new();
        for _ in 0..MAX_FRAGMENTS - 1 {
            ok.extend_from_slice(&1u32.to_be_bytes());
            ok.push(b'x');
        }
        ok.extend_from_slice(&(1u32 | LAST_FRAGMENT).to_be_bytes());
        ok.push(b'y');
        let recs = all_records(&ok, 1 << 20, 7).await.unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].len(), MAX_FRAGMENTS);
    }

    #[tokio::test]
    async fn oversized_record_reports_its_xid() {
        let mut wire = (100u32 | LAST_FRAGMENT).to_be_bytes().to_vec();
        wire.extend_from_slice(&0xabcd_0123u32.to_be_bytes());
        wire.extend_from_slice(&[0u8; 96]);
        match all_records(&wire, 50, 4096).await {
            Err(RecordError::TooLarge { xid, .. }) => assert_eq!(xid, Some(0xabcd_0123)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn xid_is_replaced_on_the_wire_only() {
        let body = [0, 0, 0, 1, 9, 9];
        let mut wire = Vec::new();
        write_record_with_xid(&mut wire, 0xaabb_ccdd, &body)
            .await
            .unwrap();
        let mut r = &wire[..];
        let rec = read_record(&mut r, 100).await.unwrap().unwrap();
        assert_eq!(&rec[..], &[0xaa, 0xbb, 0xcc, 0xdd, 9, 9]);
        assert_eq!(body, [0, 0, 0, 1, 9, 9]);
    }

    #[tokio::test]
    async fn write_then_read_round_trip() {
        let mut wire = Vec::new();
        write_record(&mut wire, b"hello").await.unwrap();
        let mut r = &wire[..];
        assert_eq!(
            &read_record(&mut r, 10).await.unwrap().unwrap()[..],
            b"hello"
        );
    }

    #[test]
    fn a_gathered_buffer_fits_one_ssh_packet() {
        assert!(GATHER + COPY_UP_TO + 4 <= crate::ssh::MAX_PACKET as usize);
    }

    /// Keeps what it is sent, buffer by buffer.
    #[derive(Default)]
    struct Kept(std::sync::Mutex<Vec<Bytes>>);

    impl OwnedSink for Arc<Kept> {
        fn send(
            &self,
            data: Bytes,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send + '_>>
        {
            self.0.lock().unwrap().push(data);
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn gathered_records_are_framed_in_order_and_large_bodies_are_not_copied() {
        let kept = Arc::new(Kept::default());
        let mut g = Gather::new(Box::new(kept.clone()));
        let small = Bytes::from_static(b"getattr reply");
        let large = Bytes::from(vec![7u8; COPY_UP_TO + 1]);
        g.record(&small).await.unwrap();
        g.record(&small).await.unwrap();
        assert!(
            kept.0.lock().unwrap().is_empty(),
            "small ones wait for a flush"
        );
        g.record(&large).await.unwrap();
        g.record(&small).await.unwrap();
        g.flush().await.unwrap();
        let sent = kept.0.lock().unwrap().clone();
        // Two small records and the large one's mark; the large body itself; the last.
        assert_eq!(sent.len(), 3);
        assert_eq!(
            sent[1].as_ptr(),
            large.as_ptr(),
            "the large body is handed on, not copied"
        );
        let wire: Vec<u8> = sent.iter().flat_map(|b| b.iter().copied()).collect();
        let mut expect = Vec::new();
        for body in [&small, &small, &large, &small] {
            expect.extend_from_slice(&mark(body.len()).unwrap());
            expect.extend_from_slice(body);
        }
        assert_eq!(wire, expect);
        // Many small records go out once they fill a gathered buffer, without a flush.
        let kept = Arc::new(Kept::default());
        let mut g = Gather::new(Box::new(kept.clone()));
        let mid = Bytes::from(vec![1u8; 60 << 10]);
        for _ in 0..4 {
            g.record(&mid).await.unwrap();
        }
        let sent = kept.0.lock().unwrap().clone();
        assert_eq!(sent.len(), 1, "sent once {GATHER} bytes were gathered");
        assert!(sent[0].len() >= GATHER);
    }
}
