//! Arguments of the 21 NFSv3 procedures that take any (RFC 1813 `*3args`).
//!
//! Each struct decodes by borrowing handles, names, paths and WRITE data from the call
//! body and re-encodes to the same bytes. Field names are the RFC's, except `where_`
//! for the keyword `where`.

use bytes::BytesMut;

use super::codec::{Wire, nfspath, xdr_struct, xdr_traits};
use super::types::{
    Cookieverf3, Createverf3, Diropargs3, Fh, Ftype3, Nfstime3, Sattr3, Specdata3, StableHow,
};
use crate::xdr::{self, Reader, XdrError, XdrWrite};

/// GETATTR3args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetattrArgs<'a> {
    pub object: Fh<'a>,
}
xdr_struct!('a, GetattrArgs<'a> { object });

/// SETATTR3args. `guard` is `sattrguard3`: if set, the server applies the change only
/// if the object's ctime still equals it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetattrArgs<'a> {
    pub object: Fh<'a>,
    pub new_attributes: Sattr3,
    pub guard: Option<Nfstime3>,
}
xdr_struct!('a, SetattrArgs<'a> { object, new_attributes, guard });

/// LOOKUP3args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupArgs<'a> {
    pub what: Diropargs3<'a>,
}
xdr_struct!('a, LookupArgs<'a> { what });

/// ACCESS3args. `access` is a mask of `ACCESS3_*` bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessArgs<'a> {
    pub object: Fh<'a>,
    pub access: u32,
}
xdr_struct!('a, AccessArgs<'a> { object, access });

/// READLINK3args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadlinkArgs<'a> {
    pub symlink: Fh<'a>,
}
xdr_struct!('a, ReadlinkArgs<'a> { symlink });

/// READ3args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadArgs<'a> {
    pub file: Fh<'a>,
    pub offset: u64,
    pub count: u32,
}
xdr_struct!('a, ReadArgs<'a> { file, offset, count });

/// WRITE3args. `data` is borrowed from the call. Decoding requires `count` to equal the
/// length of `data` (RFC 1813 3.3.7: `count` is "the number of bytes of data to be
/// written"; Linux nfsd refuses a mismatch the same way), so `data` is never longer than
/// `count` nor than the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteArgs<'a> {
    pub file: Fh<'a>,
    pub offset: u64,
    pub count: u32,
    pub stable: StableHow,
    pub data: &'a [u8],
}

impl<'a> Wire<'a> for WriteArgs<'a> {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        let file = Fh::get(r)?;
        let offset = r.u64()?;
        let count = r.u32()?;
        let stable = StableHow::get(r)?;
        let at = r.pos();
        let data = r.opaque(count as usize)?;
        if data.len() != count as usize {
            return Err(XdrError::BadValue {
                at,
                what: "WRITE3args data length (differs from count)",
                value: data.len() as u32,
            });
        }
        Ok(WriteArgs {
            file,
            offset,
            count,
            stable,
            data,
        })
    }
    fn put(&self, out: &mut BytesMut) {
        self.file.put(out);
        out.put_xdr_u64(self.offset);
        out.put_xdr_u32(self.count);
        self.stable.put(out);
        out.put_xdr_opaque(self.data);
    }
}
xdr_traits!('a, WriteArgs<'a>);

/// `createhow3`: the union on `createmode3`. Any other mode is a decode error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateHow3 {
    /// `UNCHECKED` (0): create, or open an existing file.
    Unchecked(Sattr3),
    /// `GUARDED` (1): fail with NFS3ERR_EXIST if the name exists.
    Guarded(Sattr3),
    /// `EXCLUSIVE` (2): idempotent create keyed by the verifier.
    Exclusive(Createverf3),
}

impl<'a> Wire<'a> for CreateHow3 {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        let at = r.pos();
        match r.u32()? {
            0 => Ok(CreateHow3::Unchecked(Sattr3::get(r)?)),
            1 => Ok(CreateHow3::Guarded(Sattr3::get(r)?)),
            2 => Ok(CreateHow3::Exclusive(Createverf3::get(r)?)),
            value => Err(XdrError::BadValue {
                at,
                what: "createmode3",
                value,
            }),
        }
    }
    fn put(&self, out: &mut BytesMut) {
        match self {
            CreateHow3::Unchecked(s) => {
                out.put_xdr_u32(0);
                s.put(out);
            }
            CreateHow3::Guarded(s) => {
                out.put_xdr_u32(1);
                s.put(out);
            }
            CreateHow3::Exclusive(v) => {
                out.put_xdr_u32(2);
                v.put(out);
            }
        }
    }
}
xdr_traits!('a, CreateHow3);

/// CREATE3args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateArgs<'a> {
    pub where_: Diropargs3<'a>,
    pub how: CreateHow3,
}
xdr_struct!('a, CreateArgs<'a> { where_, how });

/// MKDIR3args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MkdirArgs<'a> {
    pub where_: Diropargs3<'a>,
    pub attributes: Sattr3,
}
xdr_struct!('a, MkdirArgs<'a> { where_, attributes });

/// `symlinkdata3`: the new link's attributes and target path (borrowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symlinkdata3<'a> {
    pub symlink_attributes: Sattr3,
    /// `nfspath3`, at most [`MAX_PATH_LEN`](super::MAX_PATH_LEN) bytes.
    pub symlink_data: &'a [u8],
}
xdr_struct!('a, Symlinkdata3<'a> { symlink_attributes, symlink_data: nfspath });

/// SYMLINK3args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymlinkArgs<'a> {
    pub where_: Diropargs3<'a>,
    pub symlink: Symlinkdata3<'a>,
}
xdr_struct!('a, SymlinkArgs<'a> { where_, symlink });

/// `devicedata3`: attributes and device numbers of a new device node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devicedata3 {
    pub dev_attributes: Sattr3,
    pub spec: Specdata3,
}
xdr_struct!('a, Devicedata3 { dev_attributes, spec });

/// `mknoddata3`: the union on `ftype3`.
///
/// NF3REG, NF3DIR and NF3LNK take the RFC's `default: void` arm (the server answers
/// NFS3ERR_BADTYPE) and decode as `NoData`; a value that is not an `ftype3` at all is a
/// decode error. Build `NoData` only with one of those three types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mknoddata3 {
    /// NF3CHR: character device.
    Chr(Devicedata3),
    /// NF3BLK: block device.
    Blk(Devicedata3),
    /// NF3SOCK: socket.
    Sock(Sattr3),
    /// NF3FIFO: named pipe.
    Fifo(Sattr3),
    /// NF3REG, NF3DIR or NF3LNK: nothing follows the type.
    NoData(Ftype3),
}

impl Mknoddata3 {
    /// The `ftype3` discriminant.
    pub fn ftype(&self) -> Ftype3 {
        match self {
            Mknoddata3::Chr(_) => Ftype3::CHR,
            Mknoddata3::Blk(_) => Ftype3::BLK,
            Mknoddata3::Sock(_) => Ftype3::SOCK,
            Mknoddata3::Fifo(_) => Ftype3::FIFO,
            Mknoddata3::NoData(t) => *t,
        }
    }
}

impl<'a> Wire<'a> for Mknoddata3 {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        let at = r.pos();
        match Ftype3::get(r)? {
            Ftype3::CHR => Ok(Mknoddata3::Chr(Devicedata3::get(r)?)),
            Ftype3::BLK => Ok(Mknoddata3::Blk(Devicedata3::get(r)?)),
            Ftype3::SOCK => Ok(Mknoddata3::Sock(Sattr3::get(r)?)),
            Ftype3::FIFO => Ok(Mknoddata3::Fifo(Sattr3::get(r)?)),
            t @ (Ftype3::REG | Ftype3::DIR | Ftype3::LNK) => Ok(Mknoddata3::NoData(t)),
            Ftype3(value) => Err(XdrError::BadValue {
                at,
                what: "ftype3",
                value,
            }),
        }
    }
    fn put(&self, out: &mut BytesMut) {
        self.ftype().put(out);
        match self {
            Mknoddata3::Chr(d) | Mknoddata3::Blk(d) => d.put(out),
            Mknoddata3::Sock(s) | Mknoddata3::Fifo(s) => s.put(out),
            Mknoddata3::NoData(_) => {}
        }
    }
}
xdr_traits!('a, Mknoddata3);

/// MKNOD3args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MknodArgs<'a> {
    pub where_: Diropargs3<'a>,
    pub what: Mknoddata3,
}
xdr_struct!('a, MknodArgs<'a> { where_, what });

/// REMOVE3args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveArgs<'a> {
    pub object: Diropargs3<'a>,
}
xdr_struct!('a, RemoveArgs<'a> { object });

/// RMDIR3args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RmdirArgs<'a> {
    pub object: Diropargs3<'a>,
}
xdr_struct!('a, RmdirArgs<'a> { object });

/// RENAME3args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenameArgs<'a> {
    pub from: Diropargs3<'a>,
    pub to: Diropargs3<'a>,
}
xdr_struct!('a, RenameArgs<'a> { from, to });

/// LINK3args: make `link` a new name for `file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkArgs<'a> {
    pub file: Fh<'a>,
    pub link: Diropargs3<'a>,
}
xdr_struct!('a, LinkArgs<'a> { file, link });

/// READDIR3args. `count` bounds the whole reply's size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaddirArgs<'a> {
    pub dir: Fh<'a>,
    pub cookie: u64,
    pub cookieverf: Cookieverf3,
    pub count: u32,
}
xdr_struct!('a, ReaddirArgs<'a> { dir, cookie, cookieverf, count });

/// READDIRPLUS3args. `dircount` bounds the names and cookies, `maxcount` the whole reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaddirplusArgs<'a> {
    pub dir: Fh<'a>,
    pub cookie: u64,
    pub cookieverf: Cookieverf3,
    pub dircount: u32,
    pub maxcount: u32,
}
xdr_struct!('a, ReaddirplusArgs<'a> { dir, cookie, cookieverf, dircount, maxcount });

/// FSSTAT3args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsstatArgs<'a> {
    pub fsroot: Fh<'a>,
}
xdr_struct!('a, FsstatArgs<'a> { fsroot });

/// FSINFO3args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsinfoArgs<'a> {
    pub fsroot: Fh<'a>,
}
xdr_struct!('a, FsinfoArgs<'a> { fsroot });

/// PATHCONF3args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathconfArgs<'a> {
    pub object: Fh<'a>,
}
xdr_struct!('a, PathconfArgs<'a> { object });

/// COMMIT3args: make `count` bytes at `offset` stable (`count` 0 means to end of file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitArgs<'a> {
    pub file: Fh<'a>,
    pub offset: u64,
    pub count: u32,
}
xdr_struct!('a, CommitArgs<'a> { file, offset, count });
