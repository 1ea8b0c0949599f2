//! Bounded XDR (RFC 4506) reading and writing.
//!
//! Every length read off the wire is checked against the bytes that are actually left
//! (and, where the protocol sets one, against its maximum) *before* anything is sliced or
//! allocated. Variable-length data is borrowed from the input, never copied, so decoding a
//! 1 MiB WRITE costs no allocation. `Reader::finish` rejects trailing bytes.

use bytes::{BufMut, BytesMut};

/// Why a message could not be decoded. Always the sender's fault: never retry as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XdrError {
    #[error("message ends early: needed {needed} more bytes at offset {at}")]
    Short { at: usize, needed: usize },
    #[error("length {len} at offset {at} exceeds the limit {max}")]
    TooLong { at: usize, len: usize, max: usize },
    #[error("{left} trailing bytes after the message")]
    Trailing { left: usize },
    #[error("invalid value {value} for {what} at offset {at}")]
    BadValue {
        at: usize,
        what: &'static str,
        value: u32,
    },
}

pub type Result<T> = std::result::Result<T, XdrError>;

/// A cursor over one received message. Cheap to copy; `pos` says how far it has read.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Padding needed to round `len` up to a multiple of four.
pub fn pad(len: usize) -> usize {
    (4 - (len & 3)) & 3
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Offset of the next byte to read.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    pub fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The unread rest of the message, without consuming it.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Takes exactly `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.left() < n {
            return Err(XdrError::Short {
                at: self.pos,
                needed: n - self.left(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn i32(&mut self) -> Result<i32> {
        Ok(self.u32()? as i32)
    }

    pub fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub fn bool(&mut self) -> Result<bool> {
        let at = self.pos;
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(XdrError::BadValue {
                at,
                what: "bool",
                value,
            }),
        }
    }

    /// Fixed-length opaque of `n` bytes plus its padding.
    pub fn fixed(&mut self, n: usize) -> Result<&'a [u8]> {
        let s = self.take(n)?;
        self.take(pad(n))?;
        Ok(s)
    }

    /// Variable-length opaque or string of at most `max` bytes, borrowed.
    pub fn opaque(&mut self, max: usize) -> Result<&'a [u8]> {
        let at = self.pos;
        let len = self.u32()? as usize;
        if len > max {
            return Err(XdrError::TooLong { at, len, max });
        }
        self.fixed(len)
    }

    /// Reads an XDR optional (`*T`): a bool followed by the value if true.
    pub fn optional<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<Option<T>> {
        if self.bool()? {
            Ok(Some(f(self)?))
        } else {
            Ok(None)
        }
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<()> {
        if self.left() != 0 {
            return Err(XdrError::Trailing { left: self.left() });
        }
        Ok(())
    }
}

/// Appends XDR to a growable buffer.
pub trait XdrWrite {
    fn put_xdr_u32(&mut self, v: u32);
    fn put_xdr_u64(&mut self, v: u64);
    fn put_xdr_bool(&mut self, v: bool);
    /// Fixed-length opaque plus padding.
    fn put_xdr_fixed(&mut self, b: &[u8]);
    /// Variable-length opaque: length, bytes, padding.
    fn put_xdr_opaque(&mut self, b: &[u8]);
}

impl XdrWrite for BytesMut {
    fn put_xdr_u32(&mut self, v: u32) {
        self.put_u32(v);
    }
    fn put_xdr_u64(&mut self, v: u64) {
        self.put_u64(v);
    }
    fn put_xdr_bool(&mut self, v: bool) {
        self.put_u32(v as u32);
    }
    fn put_xdr_fixed(&mut self, b: &[u8]) {
        self.put_slice(b);
        self.put_bytes(0, pad(b.len()));
    }
    fn put_xdr_opaque(&mut self, b: &[u8]) {
        self.put_u32(b.len() as u32);
        self.put_xdr_fixed(b);
    }
}

/// A type that has an XDR encoding.
pub trait Encode {
    fn encode(&self, out: &mut BytesMut);
}

/// A type that can be decoded from XDR, borrowing from the input.
pub trait Decode<'a>: Sized {
    fn decode(r: &mut Reader<'a>) -> Result<Self>;
}

/// Decodes a whole buffer as one `T`, rejecting trailing bytes.
pub fn decode_all<'a, T: Decode<'a>>(buf: &'a [u8]) -> Result<T> {
    let mut r = Reader::new(buf);
    let v = T::decode(&mut r)?;
    r.finish()?;
    Ok(v)
}

/// Encodes `v` into a fresh buffer.
pub fn encode_to_vec<T: Encode>(v: &T) -> Vec<u8> {
    let mut b = BytesMut::new();
    v.encode(&mut b);
    b.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_length_checked_before_slicing() {
        // Claims 0xffff_fff0 bytes but carries four: must fail without allocating.
        let buf = [0xff, 0xff, 0xff, 0xf0, 1, 2, 3, 4];
        let mut r = Reader::new(&buf);
        assert!(matches!(r.opaque(64), Err(XdrError::TooLong { .. })));
        let mut r = Reader::new(&buf);
        assert!(matches!(r.opaque(usize::MAX), Err(XdrError::Short { .. })));
    }

    #[test]
    fn opaque_round_trip_with_padding() {
        let mut b = BytesMut::new();
        b.put_xdr_opaque(b"hello");
        assert_eq!(b.len(), 4 + 8);
        let mut r = Reader::new(&b);
        assert_eq!(r.opaque(16).unwrap(), b"hello");
        r.finish().unwrap();
    }

    #[test]
    fn trailing_bytes_rejected() {
        let buf = [0, 0, 0, 1, 9];
        let mut r = Reader::new(&buf);
        assert_eq!(r.u32().unwrap(), 1);
        assert_eq!(r.finish(), Err(XdrError::Trailing { left: 1 }));
    }

    #[test]
    fn bool_rejects_other_values() {
        let buf = [0, 0, 0, 2];
        assert!(matches!(
            Reader::new(&buf).bool(),
            Err(XdrError::BadValue { .. })
        ));
    }
}
