//! Results of the 21 NFSv3 procedures that return any (RFC 1813 `*3res`, `*3resok`,
//! `*3resfail`).
//!
//! Each `*Res` alias is an [`NfsResult`] of its `resok` and `resfail` structs. READ data,
//! READLINK paths, handles and directory entry names are borrowed from the reply, and
//! every field the RFC defines is kept, so a decoded reply re-encodes to the same bytes
//! (with zero XDR padding) and a proxy can rewrite a few fields and pass on the rest.

use bytes::BytesMut;

use super::codec::{Wire, filename, get_list, nfspath, put_list, xdr_struct, xdr_traits};
use super::types::{
    Cookieverf3, Fattr3, Fh, MAX_DIR_ENTRIES, NfsResult, Nfstime3, StableHow, Void, WccData,
    Writeverf3,
};
use crate::xdr::{self, Reader, XdrError, XdrWrite};

/// GETATTR3resok.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetattrResOk {
    pub obj_attributes: Fattr3,
}
xdr_struct!('a, GetattrResOk { obj_attributes });
/// GETATTR3res: the fail arm is void.
pub type GetattrRes = NfsResult<GetattrResOk, Void>;

/// SETATTR3resok.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetattrResOk {
    pub obj_wcc: WccData,
}
xdr_struct!('a, SetattrResOk { obj_wcc });
/// SETATTR3resfail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetattrResFail {
    pub obj_wcc: WccData,
}
xdr_struct!('a, SetattrResFail { obj_wcc });
/// SETATTR3res.
pub type SetattrRes = NfsResult<SetattrResOk, SetattrResFail>;

/// LOOKUP3resok.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupResOk<'a> {
    pub object: Fh<'a>,
    pub obj_attributes: Option<Fattr3>,
    pub dir_attributes: Option<Fattr3>,
}
xdr_struct!('a, LookupResOk<'a> { object, obj_attributes, dir_attributes });
/// LOOKUP3resfail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupResFail {
    pub dir_attributes: Option<Fattr3>,
}
xdr_struct!('a, LookupResFail { dir_attributes });
/// LOOKUP3res.
pub type LookupRes<'a> = NfsResult<LookupResOk<'a>, LookupResFail>;

/// ACCESS3resok. `access` is the subset of the asked `ACCESS3_*` bits that are granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessResOk {
    pub obj_attributes: Option<Fattr3>,
    pub access: u32,
}
xdr_struct!('a, AccessResOk { obj_attributes, access });
/// ACCESS3resfail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessResFail {
    pub obj_attributes: Option<Fattr3>,
}
xdr_struct!('a, AccessResFail { obj_attributes });
/// ACCESS3res.
pub type AccessRes = NfsResult<AccessResOk, AccessResFail>;

/// READLINK3resok. `data` is the link target, borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadlinkResOk<'a> {
    pub symlink_attributes: Option<Fattr3>,
    pub data: &'a [u8],
}
xdr_struct!('a, ReadlinkResOk<'a> { symlink_attributes, data: nfspath });
/// READLINK3resfail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadlinkResFail {
    pub symlink_attributes: Option<Fattr3>,
}
xdr_struct!('a, ReadlinkResFail { symlink_attributes });
/// READLINK3res.
pub type ReadlinkRes<'a> = NfsResult<ReadlinkResOk<'a>, ReadlinkResFail>;

/// READ3resok. `data` is borrowed from the reply. Decoding requires `count` to equal the
/// length of `data` (RFC 1813 3.3.6: `count` is "the number of bytes of data returned").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResOk<'a> {
    pub file_attributes: Option<Fattr3>,
    pub count: u32,
    pub eof: bool,
    pub data: &'a [u8],
}

impl<'a> Wire<'a> for ReadResOk<'a> {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        let file_attributes = Wire::get(r)?;
        let count = r.u32()?;
        let eof = r.bool()?;
        let at = r.pos();
        let data = r.opaque(count as usize)?;
        if data.len() != count as usize {
            return Err(XdrError::BadValue {
                at,
                what: "READ3resok data length (differs from count)",
                value: data.len() as u32,
            });
        }
        Ok(ReadResOk {
            file_attributes,
            count,
            eof,
            data,
        })
    }
    fn put(&self, out: &mut BytesMut) {
        self.file_attributes.put(out);
        out.put_xdr_u32(self.count);
        out.put_xdr_bool(self.eof);
        out.put_xdr_opaque(self.data);
    }
}
xdr_traits!('a, ReadResOk<'a>);
/// READ3resfail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResFail {
    pub file_attributes: Option<Fattr3>,
}
xdr_struct!('a, ReadResFail { file_attributes });
/// READ3res.
pub type ReadRes<'a> = NfsResult<ReadResOk<'a>, ReadResFail>;

/// WRITE3resok. `count` is how many bytes were written; `committed` how durably.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResOk {
    pub file_wcc: WccData,
    pub count: u32,
    pub committed: StableHow,
    pub verf: Writeverf3,
}
xdr_struct!('a, WriteResOk { file_wcc, count, committed, verf });
/// WRITE3resfail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResFail {
    pub file_wcc: WccData,
}
xdr_struct!('a, WriteResFail { file_wcc });
/// WRITE3res.
pub type WriteRes = NfsResult<WriteResOk, WriteResFail>;

/// CREATE3resok; MKDIR, SYMLINK and MKNOD use the same shape. `obj` and
/// `obj_attributes` describe the new object, `dir_wcc` its parent directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateResOk<'a> {
    pub obj: Option<Fh<'a>>,
    pub obj_attributes: Option<Fattr3>,
    pub dir_wcc: WccData,
}
xdr_struct!('a, CreateResOk<'a> { obj, obj_attributes, dir_wcc });
/// CREATE3resfail; MKDIR, SYMLINK and MKNOD use the same shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateResFail {
    pub dir_wcc: WccData,
}
xdr_struct!('a, CreateResFail { dir_wcc });
/// CREATE3res.
pub type CreateRes<'a> = NfsResult<CreateResOk<'a>, CreateResFail>;
/// MKDIR3resok (same fields as CREATE3resok).
pub type MkdirResOk<'a> = CreateResOk<'a>;
/// MKDIR3resfail (same fields as CREATE3resfail).
pub type MkdirResFail = CreateResFail;
/// MKDIR3res.
pub type MkdirRes<'a> = NfsResult<MkdirResOk<'a>, MkdirResFail>;
/// SYMLINK3resok (same fields as CREATE3resok).
pub type SymlinkResOk<'a> = CreateResOk<'a>;
/// SYMLINK3resfail (same fields as CREATE3resfail).
pub type SymlinkResFail = CreateResFail;
/// SYMLINK3res.
pub type SymlinkRes<'a> = NfsResult<SymlinkResOk<'a>, SymlinkResFail>;
/// MKNOD3resok (same fields as CREATE3resok).
pub type MknodResOk<'a> = CreateResOk<'a>;
/// MKNOD3resfail (same fields as CREATE3resfail).
pub type MknodResFail = CreateResFail;
/// MKNOD3res.
pub type MknodRes<'a> = NfsResult<MknodResOk<'a>, MknodResFail>;

/// REMOVE3resok; RMDIR uses the same shape, and so do both fail arms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveResOk {
    pub dir_wcc: WccData,
}
xdr_struct!('a, RemoveResOk { dir_wcc });
/// REMOVE3resfail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveResFail {
    pub dir_wcc: WccData,
}
xdr_struct!('a, RemoveResFail { dir_wcc });
/// REMOVE3res.
pub type RemoveRes = NfsResult<RemoveResOk, RemoveResFail>;
/// RMDIR3resok (same fields as REMOVE3resok).
pub type RmdirResOk = RemoveResOk;
/// RMDIR3resfail (same fields as REMOVE3resfail).
pub type RmdirResFail = RemoveResFail;
/// RMDIR3res.
pub type RmdirRes = NfsResult<RmdirResOk, RmdirResFail>;

/// RENAME3resok.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenameResOk {
    pub fromdir_wcc: WccData,
    pub todir_wcc: WccData,
}
xdr_struct!('a, RenameResOk { fromdir_wcc, todir_wcc });
/// RENAME3resfail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenameResFail {
    pub fromdir_wcc: WccData,
    pub todir_wcc: WccData,
}
xdr_struct!('a, RenameResFail { fromdir_wcc, todir_wcc });
/// RENAME3res.
pub type RenameRes = NfsResult<RenameResOk, RenameResFail>;

/// LINK3resok. `file_attributes` are the linked file's, `linkdir_wcc` the directory's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkResOk {
    pub file_attributes: Option<Fattr3>,
    pub linkdir_wcc: WccData,
}
xdr_struct!('a, LinkResOk { file_attributes, linkdir_wcc });
/// LINK3resfail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkResFail {
    pub file_attributes: Option<Fattr3>,
    pub linkdir_wcc: WccData,
}
xdr_struct!('a, LinkResFail { file_attributes, linkdir_wcc });
/// LINK3res.
pub type LinkRes = NfsResult<LinkResOk, LinkResFail>;

/// `entry3`: one READDIR entry; `name` is borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry3<'a> {
    pub fileid: u64,
    pub name: &'a [u8],
    pub cookie: u64,
}
xdr_struct!('a, Entry3<'a> { fileid, name: filename, cookie });

/// `dirlist3`: the entries (an XDR linked list, at most [`MAX_DIR_ENTRIES`]) and `eof`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirlist3<'a> {
    pub entries: Vec<Entry3<'a>>,
    pub eof: bool,
}

impl<'a> Wire<'a> for Dirlist3<'a> {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        Ok(Dirlist3 {
            entries: get_list(r, MAX_DIR_ENTRIES, Entry3::get)?,
            eof: r.bool()?,
        })
    }
    fn put(&self, out: &mut BytesMut) {
        put_list(&self.entries, out, Entry3::put);
        out.put_xdr_bool(self.eof);
    }
}
xdr_traits!('a, Dirlist3<'a>);

/// READDIR3resok.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaddirResOk<'a> {
    pub dir_attributes: Option<Fattr3>,
    pub cookieverf: Cookieverf3,
    pub reply: Dirlist3<'a>,
}
xdr_struct!('a, ReaddirResOk<'a> { dir_attributes, cookieverf, reply });
/// READDIR3resfail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaddirResFail {
    pub dir_attributes: Option<Fattr3>,
}
xdr_struct!('a, ReaddirResFail { dir_attributes });
/// READDIR3res.
pub type ReaddirRes<'a> = NfsResult<ReaddirResOk<'a>, ReaddirResFail>;

/// `entryplus3`: one READDIRPLUS entry, with the named object's attributes and handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entryplus3<'a> {
    pub fileid: u64,
    pub name: &'a [u8],
    pub cookie: u64,
    pub name_attributes: Option<Fattr3>,
    pub name_handle: Option<Fh<'a>>,
}
xdr_struct!('a, Entryplus3<'a> { fileid, name: filename, cookie, name_attributes, name_handle });

/// `dirlistplus3`: the entries (at most [`MAX_DIR_ENTRIES`]) and `eof`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirlistplus3<'a> {
    pub entries: Vec<Entryplus3<'a>>,
    pub eof: bool,
}

impl<'a> Wire<'a> for Dirlistplus3<'a> {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        Ok(Dirlistplus3 {
            entries: get_list(r, MAX_DIR_ENTRIES, Entryplus3::get)?,
            eof: r.bool()?,
        })
    }
    fn put(&self, out: &mut BytesMut) {
        put_list(&self.entries, out, Entryplus3::put);
        out.put_xdr_bool(self.eof);
    }
}
xdr_traits!('a, Dirlistplus3<'a>);

/// READDIRPLUS3resok.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaddirplusResOk<'a> {
    pub dir_attributes: Option<Fattr3>,
    pub cookieverf: Cookieverf3,
    pub reply: Dirlistplus3<'a>,
}
xdr_struct!('a, ReaddirplusResOk<'a> { dir_attributes, cookieverf, reply });
/// READDIRPLUS3resfail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaddirplusResFail {
    pub dir_attributes: Option<Fattr3>,
}
xdr_struct!('a, ReaddirplusResFail { dir_attributes });
/// READDIRPLUS3res.
pub type ReaddirplusRes<'a> = NfsResult<ReaddirplusResOk<'a>, ReaddirplusResFail>;

/// FSSTAT3resok: total / free / available-to-caller bytes and file slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsstatResOk {
    pub obj_attributes: Option<Fattr3>,
    pub tbytes: u64,
    pub fbytes: u64,
    pub abytes: u64,
    pub tfiles: u64,
    pub ffiles: u64,
    pub afiles: u64,
    /// Seconds for which these numbers will not change.
    pub invarsec: u32,
}
xdr_struct!('a, FsstatResOk {
    obj_attributes, tbytes, fbytes, abytes, tfiles, ffiles, afiles, invarsec,
});
/// FSSTAT3resfail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsstatResFail {
    pub obj_attributes: Option<Fattr3>,
}
xdr_struct!('a, FsstatResFail { obj_attributes });
/// FSSTAT3res.
pub type FsstatRes = NfsResult<FsstatResOk, FsstatResFail>;

/// FSINFO3resok: the server's transfer sizes (`rt*` for READ, `wt*` for WRITE, `dtpref`
/// for READDIR) and capabilities (`FSF3_*` bits in `properties`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsinfoResOk {
    pub obj_attributes: Option<Fattr3>,
    pub rtmax: u32,
    pub rtpref: u32,
    pub rtmult: u32,
    pub wtmax: u32,
    pub wtpref: u32,
    pub wtmult: u32,
    pub dtpref: u32,
    pub maxfilesize: u64,
    pub time_delta: Nfstime3,
    pub properties: u32,
}
xdr_struct!('a, FsinfoResOk {
    obj_attributes, rtmax, rtpref, rtmult, wtmax, wtpref, wtmult, dtpref, maxfilesize,
    time_delta, properties,
});
/// FSINFO3resfail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsinfoResFail {
    pub obj_attributes: Option<Fattr3>,
}
xdr_struct!('a, FsinfoResFail { obj_attributes });
/// FSINFO3res.
pub type FsinfoRes = NfsResult<FsinfoResOk, FsinfoResFail>;

/// PATHCONF3resok.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathconfResOk {
    pub obj_attributes: Option<Fattr3>,
    pub linkmax: u32,
    pub name_max: u32,
    pub no_trunc: bool,
    pub chown_restricted: bool,
    pub case_insensitive: bool,
    pub case_preserving: bool,
}
xdr_struct!('a, PathconfResOk {
    obj_attributes, linkmax, name_max, no_trunc, chown_restricted, case_insensitive,
    case_preserving,
});
/// PATHCONF3resfail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathconfResFail {
    pub obj_attributes: Option<Fattr3>,
}
xdr_struct!('a, PathconfResFail { obj_attributes });
/// PATHCONF3res.
pub type PathconfRes = NfsResult<PathconfResOk, PathconfResFail>;

/// COMMIT3resok.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitResOk {
    pub file_wcc: WccData,
    pub verf: Writeverf3,
}
xdr_struct!('a, CommitResOk { file_wcc, verf });
/// COMMIT3resfail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitResFail {
    pub file_wcc: WccData,
}
xdr_struct!('a, CommitResFail { file_wcc });
/// COMMIT3res.
pub type CommitRes = NfsResult<CommitResOk, CommitResFail>;
