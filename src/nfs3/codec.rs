//! Codec plumbing shared by the NFSv3 and MOUNT v3 messages (private to `nfs3`).
//!
//! Every wire type here implements [`Wire`]: `get` reads it from a bounded
//! [`Reader`] (borrowing variable-length data from the input), `put` appends it to a
//! `BytesMut`. `Wire` is crate-private so its impls for `u32`, `Option<T>` and `[u8; N]`
//! cannot collide with impls of the public [`Encode`](crate::xdr::Encode) /
//! [`Decode`](crate::xdr::Decode) traits elsewhere in the crate; public message types
//! get those two traits too, through [`xdr_struct!`] or [`xdr_traits!`].
//!
//! Strings and opaques are never read with `Wire`: their bound depends on the field, so
//! a struct field names its codec module (`filename`, `nfspath`, ...) explicitly.

use bytes::BytesMut;

use crate::xdr::{self, Reader, XdrError, XdrWrite};

/// One XDR type: decoded by borrowing from the message, encoded by appending.
pub(crate) trait Wire<'a>: Sized {
    /// Reads one value, checking every length against the bytes left and its bound.
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self>;
    /// Appends the value's XDR encoding.
    fn put(&self, out: &mut BytesMut);
}

impl<'a> Wire<'a> for u32 {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        r.u32()
    }
    fn put(&self, out: &mut BytesMut) {
        out.put_xdr_u32(*self);
    }
}

impl<'a> Wire<'a> for u64 {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        r.u64()
    }
    fn put(&self, out: &mut BytesMut) {
        out.put_xdr_u64(*self);
    }
}

impl<'a> Wire<'a> for bool {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        r.bool()
    }
    fn put(&self, out: &mut BytesMut) {
        out.put_xdr_bool(*self);
    }
}

/// Fixed-length opaque (verifiers): `opaque x[N]`.
impl<'a, const N: usize> Wire<'a> for [u8; N] {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        let mut a = [0u8; N];
        a.copy_from_slice(r.fixed(N)?);
        Ok(a)
    }
    fn put(&self, out: &mut BytesMut) {
        out.put_xdr_fixed(self);
    }
}

/// XDR optional data and every `union switch (bool)` with a void FALSE arm
/// (post_op_attr, pre_op_attr, post_op_fh3, set_mode3, sattrguard3, ...).
impl<'a, T: Wire<'a>> Wire<'a> for Option<T> {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        r.optional(T::get)
    }
    fn put(&self, out: &mut BytesMut) {
        match self {
            Some(v) => {
                out.put_xdr_bool(true);
                v.put(out);
            }
            None => out.put_xdr_bool(false),
        }
    }
}

/// Reads an XDR linked list (`entry *next` chains: READDIR entries, DUMP, EXPORT):
/// a `true` before each item and a `false` after the last. The vector grows one push
/// per item actually decoded, and refuses to grow past `max`.
pub(crate) fn get_list<'a, T>(
    r: &mut Reader<'a>,
    max: usize,
    mut item: impl FnMut(&mut Reader<'a>) -> xdr::Result<T>,
) -> xdr::Result<Vec<T>> {
    let mut items = Vec::new();
    loop {
        let at = r.pos();
        if !r.bool()? {
            return Ok(items);
        }
        if items.len() == max {
            return Err(XdrError::TooLong {
                at,
                len: max + 1,
                max,
            });
        }
        items.push(item(r)?);
    }
}

/// Writes an XDR linked list; see [`get_list`].
pub(crate) fn put_list<T>(
    items: &[T],
    out: &mut BytesMut,
    mut item: impl FnMut(&T, &mut BytesMut),
) {
    for v in items {
        out.put_xdr_bool(true);
        item(v, out);
    }
    out.put_xdr_bool(false);
}

/// Reads a counted array of `u32` (`int x<>`). The count is checked against `max` and
/// against the bytes present before anything is allocated.
pub(crate) fn get_u32_array(r: &mut Reader<'_>, max: usize) -> xdr::Result<Vec<u32>> {
    let at = r.pos();
    let len = r.u32()? as usize;
    if len > max {
        return Err(XdrError::TooLong { at, len, max });
    }
    if len > r.left() / 4 {
        return Err(XdrError::Short {
            at: r.pos(),
            needed: len.saturating_mul(4) - r.left(),
        });
    }
    let mut v = Vec::with_capacity(len);
    for _ in 0..len {
        v.push(r.u32()?);
    }
    Ok(v)
}

/// Writes a counted array of `u32`; see [`get_u32_array`].
pub(crate) fn put_u32_array(v: &[u32], out: &mut BytesMut) {
    out.put_xdr_u32(v.len() as u32);
    for x in v {
        out.put_xdr_u32(*x);
    }
}

/// Declares a codec module for a bounded variable-length string or opaque field.
macro_rules! bounded_bytes {
    ($(#[$m:meta])* $name:ident, $max:expr) => {
        $(#[$m])*
        pub(crate) mod $name {
            use bytes::BytesMut;

            use crate::xdr::{self, Reader, XdrWrite};

            /// Reads the field, borrowed; rejects it if longer than the bound.
            pub(crate) fn get<'a>(r: &mut Reader<'a>) -> xdr::Result<&'a [u8]> {
                r.opaque($max)
            }

            /// Writes the field (length, bytes, zero padding).
            pub(crate) fn put(v: &[u8], out: &mut BytesMut) {
                out.put_xdr_opaque(v);
            }
        }
    };
}

bounded_bytes!(
    /// `filename3`, at most [`MAX_NAME_LEN`](crate::nfs3::MAX_NAME_LEN) bytes.
    filename,
    crate::nfs3::MAX_NAME_LEN
);
bounded_bytes!(
    /// `nfspath3`, at most [`MAX_PATH_LEN`](crate::nfs3::MAX_PATH_LEN) bytes.
    nfspath,
    crate::nfs3::MAX_PATH_LEN
);
bounded_bytes!(
    /// MOUNT `dirpath`, at most [`MNTPATHLEN`](crate::nfs3::mount::MNTPATHLEN) bytes.
    mntpath,
    crate::nfs3::mount::MNTPATHLEN
);
bounded_bytes!(
    /// MOUNT `name`, at most [`MNTNAMLEN`](crate::nfs3::mount::MNTNAMLEN) bytes.
    mntname,
    crate::nfs3::mount::MNTNAMLEN
);

/// Reads one field, with its type's [`Wire`] impl or with a named codec module.
macro_rules! xdr_get {
    ($r:ident) => {
        $crate::nfs3::codec::Wire::get($r)?
    };
    ($r:ident, $codec:ident) => {
        $codec::get($r)?
    };
}

/// Writes one field; see [`xdr_get!`].
macro_rules! xdr_put {
    ($v:expr, $out:ident) => {
        $crate::nfs3::codec::Wire::put($v, $out)
    };
    ($v:expr, $out:ident, $codec:ident) => {
        $codec::put($v, $out)
    };
}

/// Implements the public `Encode` and `Decode` traits by delegating to [`Wire`].
macro_rules! xdr_traits {
    ($lt:lifetime, $ty:ty) => {
        impl<$lt> $crate::xdr::Decode<$lt> for $ty {
            fn decode(r: &mut $crate::xdr::Reader<$lt>) -> $crate::xdr::Result<Self> {
                <Self as $crate::nfs3::codec::Wire<$lt>>::get(r)
            }
        }

        impl<$lt> $crate::xdr::Encode for $ty {
            fn encode(&self, out: &mut bytes::BytesMut) {
                <Self as $crate::nfs3::codec::Wire<$lt>>::put(self, out)
            }
        }
    };
}

/// Implements [`Wire`], `Encode` and `Decode` for a struct whose fields are coded one
/// after the other in the order listed (which must be the RFC order). A field written
/// `name: codec` is coded by the module `codec` (`get`/`put`) instead of by its type.
macro_rules! xdr_struct {
    ($lt:lifetime, $ty:ty { $($field:ident $(: $codec:ident)?),* $(,)? }) => {
        impl<$lt> $crate::nfs3::codec::Wire<$lt> for $ty {
            fn get(r: &mut $crate::xdr::Reader<$lt>) -> $crate::xdr::Result<Self> {
                Ok(Self {
                    $($field: $crate::nfs3::codec::xdr_get!(r $(, $codec)?),)*
                })
            }

            fn put(&self, out: &mut bytes::BytesMut) {
                $($crate::nfs3::codec::xdr_put!(&self.$field, out $(, $codec)?);)*
            }
        }

        $crate::nfs3::codec::xdr_traits!($lt, $ty);
    };
}

/// Declares a wire enum as a `u32` newtype with named constants, so values this code
/// does not know still decode and re-encode unchanged.
macro_rules! wire_enum {
    (
        $(#[$m:meta])*
        $name:ident {
            $($(#[$cm:meta])* $konst:ident = $val:literal => $label:literal,)+
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub u32);

        impl $name {
            $($(#[$cm])* pub const $konst: $name = $name($val);)+

            /// The name the RFC gives this value, or `"UNKNOWN"`.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($val => $label,)+
                    _ => "UNKNOWN",
                }
            }

            /// Whether the value is one the RFC defines.
            // The pattern is generated; for dense enums clippy would prefer a range.
            #[allow(clippy::manual_range_patterns)]
            pub fn is_known(self) -> bool {
                matches!(self.0, $($val)|+)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                if self.is_known() {
                    f.write_str(self.name())
                } else {
                    write!(f, "{}({})", stringify!($name), self.0)
                }
            }
        }

        impl<'a> $crate::nfs3::codec::Wire<'a> for $name {
            fn get(r: &mut $crate::xdr::Reader<'a>) -> $crate::xdr::Result<Self> {
                Ok($name(r.u32()?))
            }
            fn put(&self, out: &mut bytes::BytesMut) {
                $crate::xdr::XdrWrite::put_xdr_u32(out, self.0);
            }
        }

        $crate::nfs3::codec::xdr_traits!('a, $name);
    };
}

pub(crate) use {wire_enum, xdr_get, xdr_put, xdr_struct, xdr_traits};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_refuses_to_grow_past_its_cap() {
        let mut b = BytesMut::new();
        put_list(&[1u32, 2, 3], &mut b, |v, o| v.put(o));
        let mut r = Reader::new(&b);
        assert_eq!(get_list(&mut r, 3, u32::get).unwrap(), vec![1, 2, 3]);
        r.finish().unwrap();
        let mut r = Reader::new(&b);
        assert!(matches!(
            get_list(&mut r, 2, u32::get),
            Err(XdrError::TooLong { max: 2, .. })
        ));
    }

    #[test]
    fn u32_array_count_checked_before_allocating() {
        // Claims 0xffff_ffff items but carries one.
        let buf = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1];
        let mut r = Reader::new(&buf);
        assert!(matches!(
            get_u32_array(&mut r, usize::MAX / 8),
            Err(XdrError::Short { .. })
        ));
        let mut r = Reader::new(&buf);
        assert!(matches!(
            get_u32_array(&mut r, 64),
            Err(XdrError::TooLong { .. })
        ));
    }

    #[test]
    fn option_rejects_a_discriminant_other_than_0_or_1() {
        let buf = [0, 0, 0, 2, 0, 0, 0, 7];
        assert!(matches!(
            Option::<u32>::get(&mut Reader::new(&buf)),
            Err(XdrError::BadValue { what: "bool", .. })
        ));
    }
}
