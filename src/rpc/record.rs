//! Record marking (RFC 5531 §11): each record is one or more fragments, each fragment a
//! 4-byte big-endian header (top bit = last fragment, low 31 bits = length) and its bytes.
//!
//! The total size of a record is checked against the caller's limit *before* any buffer is
//! grown for it, so a peer cannot make us allocate more than `max` bytes per record.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const LAST_FRAGMENT: u32 = 0x8000_0000;

/// Why a record could not be read. Either way the stream is no longer in sync: close it.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record of at least {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
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
            return Err(RecordError::TooLarge { len: total, max });
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

/// Writes `body` as a single-fragment record (not flushed). Header and body go out in
/// one vectored write where the stream supports it.
pub async fn write_record<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l < LAST_FRAGMENT)
        .ok_or_else(|| std::io::Error::other("record too large to frame"))?;
    let hdr = (len | LAST_FRAGMENT).to_be_bytes();
    let mut both = Buf::chain(&hdr[..], body);
    w.write_all_buf(&mut both).await
}

#[cfg(test)]
mod tests {
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
            Err(RecordError::TooLarge { len, max }) => {
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
}
