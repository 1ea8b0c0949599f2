//! RFC 1813 building blocks shared by many procedures: status and type enums, file
//! handles, times, `fattr3`, `sattr3`, weak cache consistency data, and the generic
//! `NfsResult` that every reply body is.
//!
//! Everything here decodes from a [`Reader`] by borrowing (a handle or a name is a slice
//! of the received message) and encodes by appending to a `BytesMut`.

use bytes::BytesMut;

use super::codec::{Wire, filename, wire_enum, xdr_struct, xdr_traits};
use crate::xdr::{self, Decode, Encode, Reader, XdrError, XdrWrite};

/// Largest NFSv3 file handle, in bytes (RFC 1813 `NFS3_FHSIZE`).
pub const NFS3_FHSIZE: usize = 64;
/// Size of a READDIR cookie verifier (`NFS3_COOKIEVERFSIZE`).
pub const NFS3_COOKIEVERFSIZE: usize = 8;
/// Size of an exclusive-CREATE verifier (`NFS3_CREATEVERFSIZE`).
pub const NFS3_CREATEVERFSIZE: usize = 8;
/// Size of a WRITE/COMMIT verifier (`NFS3_WRITEVERFSIZE`).
pub const NFS3_WRITEVERFSIZE: usize = 8;
/// Longest `filename3` accepted. The RFC sets no bound; 1024 is four times Linux's
/// NAME_MAX, so a real name always fits and a hostile length is refused early.
pub const MAX_NAME_LEN: usize = 1024;
/// Longest `nfspath3` (symlink target) accepted: Linux's PATH_MAX.
pub const MAX_PATH_LEN: usize = 4096;
/// Most directory entries accepted in one READDIR/READDIRPLUS reply. Each entry costs at
/// least 24 bytes on the wire, so this admits replies up to ~6 MiB of tiny entries.
pub const MAX_DIR_ENTRIES: usize = 262_144;

/// ACCESS3 bits (`access` in ACCESS3args / ACCESS3resok).
pub const ACCESS3_READ: u32 = 0x0001;
/// Look up a name in a directory.
pub const ACCESS3_LOOKUP: u32 = 0x0002;
/// Rewrite existing file data or directory entries.
pub const ACCESS3_MODIFY: u32 = 0x0004;
/// Write new data or add directory entries.
pub const ACCESS3_EXTEND: u32 = 0x0008;
/// Delete a directory entry.
pub const ACCESS3_DELETE: u32 = 0x0010;
/// Execute a file or search a directory.
pub const ACCESS3_EXECUTE: u32 = 0x0020;

/// FSINFO3resok `properties` bit: the file system supports hard links.
pub const FSF3_LINK: u32 = 0x0001;
/// The file system supports symbolic links.
pub const FSF3_SYMLINK: u32 = 0x0002;
/// PATHCONF answers are the same for every file.
pub const FSF3_HOMOGENEOUS: u32 = 0x0008;
/// SETATTR can set times.
pub const FSF3_CANSETTIME: u32 = 0x0010;

/// READDIR cookie verifier (`cookieverf3`).
pub type Cookieverf3 = [u8; NFS3_COOKIEVERFSIZE];
/// Exclusive-CREATE verifier (`createverf3`).
pub type Createverf3 = [u8; NFS3_CREATEVERFSIZE];
/// WRITE/COMMIT verifier (`writeverf3`): changes when the server loses unstable data.
pub type Writeverf3 = [u8; NFS3_WRITEVERFSIZE];

wire_enum! {
    /// `nfsstat3`: the status that opens every NFSv3 reply body.
    Nfsstat3 {
        /// Success.
        OK = 0 => "NFS3_OK",
        PERM = 1 => "NFS3ERR_PERM",
        NOENT = 2 => "NFS3ERR_NOENT",
        IO = 5 => "NFS3ERR_IO",
        NXIO = 6 => "NFS3ERR_NXIO",
        ACCES = 13 => "NFS3ERR_ACCES",
        EXIST = 17 => "NFS3ERR_EXIST",
        XDEV = 18 => "NFS3ERR_XDEV",
        NODEV = 19 => "NFS3ERR_NODEV",
        NOTDIR = 20 => "NFS3ERR_NOTDIR",
        ISDIR = 21 => "NFS3ERR_ISDIR",
        INVAL = 22 => "NFS3ERR_INVAL",
        FBIG = 27 => "NFS3ERR_FBIG",
        NOSPC = 28 => "NFS3ERR_NOSPC",
        ROFS = 30 => "NFS3ERR_ROFS",
        MLINK = 31 => "NFS3ERR_MLINK",
        NAMETOOLONG = 63 => "NFS3ERR_NAMETOOLONG",
        NOTEMPTY = 66 => "NFS3ERR_NOTEMPTY",
        DQUOT = 69 => "NFS3ERR_DQUOT",
        STALE = 70 => "NFS3ERR_STALE",
        REMOTE = 71 => "NFS3ERR_REMOTE",
        BADHANDLE = 10001 => "NFS3ERR_BADHANDLE",
        NOT_SYNC = 10002 => "NFS3ERR_NOT_SYNC",
        BAD_COOKIE = 10003 => "NFS3ERR_BAD_COOKIE",
        NOTSUPP = 10004 => "NFS3ERR_NOTSUPP",
        TOOSMALL = 10005 => "NFS3ERR_TOOSMALL",
        SERVERFAULT = 10006 => "NFS3ERR_SERVERFAULT",
        BADTYPE = 10007 => "NFS3ERR_BADTYPE",
        /// The server is busy (e.g. recalling from tape): retry later.
        JUKEBOX = 10008 => "NFS3ERR_JUKEBOX",
    }
}

wire_enum! {
    /// `ftype3`: the type of a file system object.
    Ftype3 {
        /// Regular file.
        REG = 1 => "NF3REG",
        /// Directory.
        DIR = 2 => "NF3DIR",
        /// Block device.
        BLK = 3 => "NF3BLK",
        /// Character device.
        CHR = 4 => "NF3CHR",
        /// Symbolic link.
        LNK = 5 => "NF3LNK",
        /// Socket.
        SOCK = 6 => "NF3SOCK",
        /// Named pipe.
        FIFO = 7 => "NF3FIFO",
    }
}

wire_enum! {
    /// `stable_how`: how durable a WRITE must be before the reply.
    StableHow {
        /// The server may reply before the data is on stable storage (COMMIT later).
        UNSTABLE = 0 => "UNSTABLE",
        /// Data (and what is needed to read it back) is stable before the reply.
        DATA_SYNC = 1 => "DATA_SYNC",
        /// Data and all metadata are stable before the reply.
        FILE_SYNC = 2 => "FILE_SYNC",
    }
}

/// `nfs_fh3`: an opaque file handle of at most [`NFS3_FHSIZE`] bytes, borrowed from the
/// message it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fh<'a>(pub &'a [u8]);

impl<'a> Wire<'a> for Fh<'a> {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        Ok(Fh(r.opaque(NFS3_FHSIZE)?))
    }
    fn put(&self, out: &mut BytesMut) {
        out.put_xdr_opaque(self.0);
    }
}
xdr_traits!('a, Fh<'a>);

/// `nfstime3`: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Nfstime3 {
    pub seconds: u32,
    pub nseconds: u32,
}
xdr_struct!('a, Nfstime3 { seconds, nseconds });

/// `specdata3`: major and minor device numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Specdata3 {
    pub specdata1: u32,
    pub specdata2: u32,
}
xdr_struct!('a, Specdata3 { specdata1, specdata2 });

/// `fattr3`: the full attributes of a file. `ftype` is the RFC's `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fattr3 {
    pub ftype: Ftype3,
    /// Permission and set-id bits (no file type bits).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Bytes of disk space the file really uses.
    pub used: u64,
    /// Device numbers, for NF3BLK and NF3CHR.
    pub rdev: Specdata3,
    pub fsid: u64,
    pub fileid: u64,
    pub atime: Nfstime3,
    pub mtime: Nfstime3,
    pub ctime: Nfstime3,
}
xdr_struct!('a, Fattr3 {
    ftype, mode, nlink, uid, gid, size, used, rdev, fsid, fileid, atime, mtime, ctime,
});

/// `wcc_attr`: the subset of attributes sent as "before" in weak cache consistency data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WccAttr {
    pub size: u64,
    pub mtime: Nfstime3,
    pub ctime: Nfstime3,
}
xdr_struct!('a, WccAttr { size, mtime, ctime });

/// `wcc_data`: attributes before (`pre_op_attr`) and after (`post_op_attr`) a change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WccData {
    pub before: Option<WccAttr>,
    pub after: Option<Fattr3>,
}
xdr_struct!('a, WccData { before, after });

/// `set_atime` / `set_mtime`: the union on `time_how`. Any other discriminant is a
/// decode error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetTime {
    /// `DONT_CHANGE` (0).
    #[default]
    DontChange,
    /// `SET_TO_SERVER_TIME` (1).
    SetToServerTime,
    /// `SET_TO_CLIENT_TIME` (2), with the time to set.
    SetToClientTime(Nfstime3),
}

impl<'a> Wire<'a> for SetTime {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        let at = r.pos();
        match r.u32()? {
            0 => Ok(SetTime::DontChange),
            1 => Ok(SetTime::SetToServerTime),
            2 => Ok(SetTime::SetToClientTime(Nfstime3::get(r)?)),
            value => Err(XdrError::BadValue {
                at,
                what: "time_how",
                value,
            }),
        }
    }
    fn put(&self, out: &mut BytesMut) {
        match self {
            SetTime::DontChange => out.put_xdr_u32(0),
            SetTime::SetToServerTime => out.put_xdr_u32(1),
            SetTime::SetToClientTime(t) => {
                out.put_xdr_u32(2);
                t.put(out);
            }
        }
    }
}
xdr_traits!('a, SetTime);

/// `sattr3`: attributes to set; `None` / `DontChange` leaves one alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sattr3 {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// A new size truncates or extends the file.
    pub size: Option<u64>,
    pub atime: SetTime,
    pub mtime: SetTime,
}
xdr_struct!('a, Sattr3 { mode, uid, gid, size, atime, mtime });

/// `diropargs3`: a name in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diropargs3<'a> {
    pub dir: Fh<'a>,
    /// `filename3`, at most [`MAX_NAME_LEN`] bytes; not necessarily UTF-8.
    pub name: &'a [u8],
}
xdr_struct!('a, Diropargs3<'a> { dir, name: filename });

/// XDR `void`: the fail arm of GETATTR, which carries nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Void;

impl<'a> Wire<'a> for Void {
    fn get(_: &mut Reader<'a>) -> xdr::Result<Self> {
        Ok(Void)
    }
    fn put(&self, _: &mut BytesMut) {}
}
xdr_traits!('a, Void);

/// Every NFSv3 reply body: a status, then the `resok` arm if it is [`Nfsstat3::OK`] and
/// the `resfail` arm otherwise. Unknown statuses decode as `Fail` and pass through.
///
/// Build `Fail` only with a status other than `OK`: `Fail(Nfsstat3::OK, _)` would encode
/// a status that promises the `resok` arm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NfsResult<T, F> {
    Ok(T),
    Fail(Nfsstat3, F),
}

impl<T, F> NfsResult<T, F> {
    /// The status the reply carries.
    pub fn status(&self) -> Nfsstat3 {
        match self {
            NfsResult::Ok(_) => Nfsstat3::OK,
            NfsResult::Fail(s, _) => *s,
        }
    }

    /// The `resok` arm, if the call succeeded.
    pub fn ok(&self) -> Option<&T> {
        match self {
            NfsResult::Ok(v) => Some(v),
            NfsResult::Fail(..) => None,
        }
    }

    /// The `resok` arm, mutably, to rewrite a successful reply.
    pub fn ok_mut(&mut self) -> Option<&mut T> {
        match self {
            NfsResult::Ok(v) => Some(v),
            NfsResult::Fail(..) => None,
        }
    }
}

impl<'a, T: Wire<'a>, F: Wire<'a>> Wire<'a> for NfsResult<T, F> {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        match Nfsstat3::get(r)? {
            Nfsstat3::OK => Ok(NfsResult::Ok(T::get(r)?)),
            status => Ok(NfsResult::Fail(status, F::get(r)?)),
        }
    }
    fn put(&self, out: &mut BytesMut) {
        self.status().put(out);
        match self {
            NfsResult::Ok(v) => v.put(out),
            NfsResult::Fail(_, f) => f.put(out),
        }
    }
}

// Written out rather than delegated to `Wire`, so the public impls need only public bounds.
impl<'a, T: Decode<'a>, F: Decode<'a>> Decode<'a> for NfsResult<T, F> {
    fn decode(r: &mut Reader<'a>) -> xdr::Result<Self> {
        match Nfsstat3::get(r)? {
            Nfsstat3::OK => Ok(NfsResult::Ok(T::decode(r)?)),
            status => Ok(NfsResult::Fail(status, F::decode(r)?)),
        }
    }
}

impl<T: Encode, F: Encode> Encode for NfsResult<T, F> {
    fn encode(&self, out: &mut BytesMut) {
        self.status().put(out);
        match self {
            NfsResult::Ok(v) => v.encode(out),
            NfsResult::Fail(_, f) => f.encode(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdr::{decode_all, encode_to_vec};

    fn attr() -> Fattr3 {
        Fattr3 {
            ftype: Ftype3::REG,
            mode: 0o644,
            nlink: 1,
            uid: 1000,
            gid: 100,
            size: 1 << 40,
            used: 4096,
            rdev: Specdata3::default(),
            fsid: 0x0102_0304_0506_0708,
            fileid: 42,
            atime: Nfstime3 {
                seconds: 1,
                nseconds: 2,
            },
            mtime: Nfstime3 {
                seconds: 3,
                nseconds: 4,
            },
            ctime: Nfstime3 {
                seconds: 5,
                nseconds: 6,
            },
        }
    }

    #[test]
    fn fattr3_is_84_bytes_in_rfc_order() {
        let b = encode_to_vec(&attr());
        assert_eq!(b.len(), 84);
        assert_eq!(&b[..8], &[0, 0, 0, 1, 0, 0, 0x01, 0xa4]);
        assert_eq!(decode_all::<Fattr3>(&b).unwrap(), attr());
    }

    #[test]
    fn unknown_ftype_in_fattr3_passes_through() {
        let mut a = attr();
        a.ftype = Ftype3(99);
        let b = encode_to_vec(&a);
        assert_eq!(decode_all::<Fattr3>(&b).unwrap().ftype, Ftype3(99));
        assert_eq!(Ftype3(99).to_string(), "Ftype3(99)");
        assert!(!Ftype3(99).is_known());
        assert_eq!(Ftype3::FIFO.name(), "NF3FIFO");
    }

    #[test]
    fn sattr3_round_trips_every_arm() {
        let s = Sattr3 {
            mode: Some(0o755),
            uid: None,
            gid: Some(7),
            size: Some(0),
            atime: SetTime::SetToServerTime,
            mtime: SetTime::SetToClientTime(Nfstime3 {
                seconds: 9,
                nseconds: 10,
            }),
        };
        let b = encode_to_vec(&s);
        assert_eq!(decode_all::<Sattr3>(&b).unwrap(), s);
        assert_eq!(encode_to_vec(&Sattr3::default()), vec![0; 24]);
    }

    #[test]
    fn unknown_time_how_is_an_error() {
        let mut b = vec![0u8; 16]; // mode, uid, gid, size: not set
        b.extend_from_slice(&[0, 0, 0, 3]);
        b.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            decode_all::<Sattr3>(&b),
            Err(XdrError::BadValue {
                at: 16,
                what: "time_how",
                value: 3
            })
        );
    }

    #[test]
    fn fh_longer_than_64_bytes_rejected() {
        let mut b = BytesMut::new();
        b.put_xdr_opaque(&[7u8; 65]);
        assert!(matches!(
            decode_all::<Fh>(&b),
            Err(XdrError::TooLong {
                len: 65,
                max: 64,
                ..
            })
        ));
        let mut b = BytesMut::new();
        b.put_xdr_opaque(&[7u8; 64]);
        assert_eq!(decode_all::<Fh>(&b).unwrap(), Fh(&[7u8; 64]));
    }

    #[test]
    fn unknown_status_decodes_as_fail_and_reencodes() {
        let b = [0, 0, 0x30, 0x39];
        let r = decode_all::<NfsResult<Fattr3, Void>>(&b).unwrap();
        assert_eq!(r, NfsResult::Fail(Nfsstat3(12345), Void));
        assert_eq!(encode_to_vec(&r), b);
        assert_eq!(Nfsstat3::JUKEBOX.to_string(), "NFS3ERR_JUKEBOX");
    }
}
