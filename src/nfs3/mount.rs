//! MOUNT v3 (RFC 1813 appendix I, program 100005): how a client gets the root file
//! handle of an export, plus the bookkeeping calls around it.
//!
//! Like the NFS codec, [`MountArgs::decode`] / [`MountRes::decode`] take the procedure
//! number and the call or reply body, borrow paths, names and handles from it, check
//! every length against its bound (`MNTPATHLEN`, `MNTNAMLEN`, `FHSIZE3`) and reject
//! trailing bytes; `encode` appends the same bytes back. Lists (DUMP, EXPORT, groups,
//! auth flavors) grow one entry per entry present, under [`MAX_LIST_ENTRIES`] /
//! [`MAX_AUTH_FLAVORS`].

use bytes::BytesMut;

use super::DecodeError;
use super::codec::{
    Wire, get_list, get_u32_array, mntname, mntpath, put_list, put_u32_array, wire_enum,
    xdr_struct, xdr_traits,
};
use super::types::Fh;
use crate::xdr::{self, Reader, XdrWrite};

/// ONC RPC program number of MOUNT.
pub const PROGRAM: u32 = 100_005;
/// The MOUNT version that goes with NFSv3.
pub const VERSION: u32 = 3;
/// Longest `dirpath` (export path).
pub const MNTPATHLEN: usize = 1024;
/// Longest `name` (host or group name).
pub const MNTNAMLEN: usize = 255;
/// Largest `fhandle3`, the same as [`NFS3_FHSIZE`](super::NFS3_FHSIZE).
pub const FHSIZE3: usize = 64;
/// Most auth flavors accepted in a MNT reply (real servers send a handful).
pub const MAX_AUTH_FLAVORS: usize = 64;
/// Most entries accepted in a DUMP or EXPORT list, and groups per export.
pub const MAX_LIST_ENTRIES: usize = 65_536;

wire_enum! {
    /// A MOUNT v3 procedure number. Numbers past EXPORT pass through as unknown.
    MountProc {
        NULL = 0 => "NULL",
        MNT = 1 => "MNT",
        DUMP = 2 => "DUMP",
        UMNT = 3 => "UMNT",
        UMNTALL = 4 => "UMNTALL",
        EXPORT = 5 => "EXPORT",
    }
}

wire_enum! {
    /// `mountstat3`: the status of a MNT reply.
    Mountstat3 {
        /// Success.
        OK = 0 => "MNT3_OK",
        PERM = 1 => "MNT3ERR_PERM",
        NOENT = 2 => "MNT3ERR_NOENT",
        IO = 5 => "MNT3ERR_IO",
        ACCES = 13 => "MNT3ERR_ACCES",
        NOTDIR = 20 => "MNT3ERR_NOTDIR",
        INVAL = 22 => "MNT3ERR_INVAL",
        NAMETOOLONG = 63 => "MNT3ERR_NAMETOOLONG",
        NOTSUPP = 10004 => "MNT3ERR_NOTSUPP",
        SERVERFAULT = 10006 => "MNT3ERR_SERVERFAULT",
    }
}

/// `mountres3_ok`: the export's root handle and the RPC auth flavors it accepts, in
/// the server's order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mountres3Ok<'a> {
    /// `fhandle3`, at most [`FHSIZE3`] bytes: the same bytes as an NFSv3 `nfs_fh3`.
    pub fhandle: Fh<'a>,
    pub auth_flavors: Vec<u32>,
}

impl<'a> Wire<'a> for Mountres3Ok<'a> {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        Ok(Mountres3Ok {
            fhandle: Fh(r.opaque(FHSIZE3)?),
            auth_flavors: get_u32_array(r, MAX_AUTH_FLAVORS)?,
        })
    }
    fn put(&self, out: &mut BytesMut) {
        out.put_xdr_opaque(self.fhandle.0);
        put_u32_array(&self.auth_flavors, out);
    }
}
xdr_traits!('a, Mountres3Ok<'a>);

/// `mountres3`: the MNT reply. Unknown statuses decode as `Fail` and pass through; the
/// fail arm carries nothing but the status. Build `Fail` only with a status other
/// than `OK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mountres3<'a> {
    Ok(Mountres3Ok<'a>),
    Fail(Mountstat3),
}

impl<'a> Wire<'a> for Mountres3<'a> {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        match Mountstat3::get(r)? {
            Mountstat3::OK => Ok(Mountres3::Ok(Mountres3Ok::get(r)?)),
            status => Ok(Mountres3::Fail(status)),
        }
    }
    fn put(&self, out: &mut BytesMut) {
        match self {
            Mountres3::Ok(ok) => {
                Mountstat3::OK.put(out);
                ok.put(out);
            }
            Mountres3::Fail(status) => status.put(out),
        }
    }
}
xdr_traits!('a, Mountres3<'a>);

/// `mountbody`: one DUMP entry, a client host and the path it mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mountbody<'a> {
    /// `name`, at most [`MNTNAMLEN`] bytes.
    pub ml_hostname: &'a [u8],
    /// `dirpath`, at most [`MNTPATHLEN`] bytes.
    pub ml_directory: &'a [u8],
}
xdr_struct!('a, Mountbody<'a> { ml_hostname: mntname, ml_directory: mntpath });

/// `exportnode`: one EXPORT entry, a path and the groups (hosts, netgroups) allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportNode<'a> {
    /// `dirpath`, at most [`MNTPATHLEN`] bytes.
    pub ex_dir: &'a [u8],
    /// `groups`: names of at most [`MNTNAMLEN`] bytes each.
    pub ex_groups: Vec<&'a [u8]>,
}

impl<'a> Wire<'a> for ExportNode<'a> {
    fn get(r: &mut Reader<'a>) -> xdr::Result<Self> {
        Ok(ExportNode {
            ex_dir: mntpath::get(r)?,
            ex_groups: get_list(r, MAX_LIST_ENTRIES, mntname::get)?,
        })
    }
    fn put(&self, out: &mut BytesMut) {
        mntpath::put(self.ex_dir, out);
        put_list(&self.ex_groups, out, |g, o| mntname::put(g, o));
    }
}
xdr_traits!('a, ExportNode<'a>);

/// The decoded arguments of one MOUNT v3 call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountArgs<'a> {
    Null,
    /// MNT: the export path (`dirpath`) to mount.
    Mnt(&'a [u8]),
    Dump,
    /// UMNT: the export path to forget.
    Umnt(&'a [u8]),
    Umntall,
    Export,
}

impl<'a> MountArgs<'a> {
    /// Decodes the body of a call to `proc`, borrowing from it.
    pub fn decode(proc: MountProc, body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let args = match proc {
            MountProc::NULL => MountArgs::Null,
            MountProc::MNT => MountArgs::Mnt(mntpath::get(&mut r)?),
            MountProc::DUMP => MountArgs::Dump,
            MountProc::UMNT => MountArgs::Umnt(mntpath::get(&mut r)?),
            MountProc::UMNTALL => MountArgs::Umntall,
            MountProc::EXPORT => MountArgs::Export,
            _ => {
                return Err(DecodeError::UnknownProc {
                    program: PROGRAM,
                    proc: proc.0,
                });
            }
        };
        r.finish()?;
        Ok(args)
    }

    /// Appends the call body.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            MountArgs::Mnt(path) | MountArgs::Umnt(path) => mntpath::put(path, out),
            MountArgs::Null | MountArgs::Dump | MountArgs::Umntall | MountArgs::Export => {}
        }
    }

    /// The procedure these arguments belong to.
    pub fn proc(&self) -> MountProc {
        match self {
            MountArgs::Null => MountProc::NULL,
            MountArgs::Mnt(_) => MountProc::MNT,
            MountArgs::Dump => MountProc::DUMP,
            MountArgs::Umnt(_) => MountProc::UMNT,
            MountArgs::Umntall => MountProc::UMNTALL,
            MountArgs::Export => MountProc::EXPORT,
        }
    }
}

/// The decoded body of one MOUNT v3 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountRes<'a> {
    Null,
    Mnt(Mountres3<'a>),
    /// DUMP: the `mountlist`.
    Dump(Vec<Mountbody<'a>>),
    Umnt,
    Umntall,
    /// EXPORT: the `exports` list.
    Export(Vec<ExportNode<'a>>),
}

impl<'a> MountRes<'a> {
    /// Decodes the body of a reply to `proc`, borrowing from it.
    pub fn decode(proc: MountProc, body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let res = match proc {
            MountProc::NULL => MountRes::Null,
            MountProc::MNT => MountRes::Mnt(Mountres3::get(&mut r)?),
            MountProc::DUMP => MountRes::Dump(get_list(&mut r, MAX_LIST_ENTRIES, Mountbody::get)?),
            MountProc::UMNT => MountRes::Umnt,
            MountProc::UMNTALL => MountRes::Umntall,
            MountProc::EXPORT => {
                MountRes::Export(get_list(&mut r, MAX_LIST_ENTRIES, ExportNode::get)?)
            }
            _ => {
                return Err(DecodeError::UnknownProc {
                    program: PROGRAM,
                    proc: proc.0,
                });
            }
        };
        r.finish()?;
        Ok(res)
    }

    /// Appends the reply body.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            MountRes::Mnt(m) => m.put(out),
            MountRes::Dump(list) => put_list(list, out, Mountbody::put),
            MountRes::Export(list) => put_list(list, out, ExportNode::put),
            MountRes::Null | MountRes::Umnt | MountRes::Umntall => {}
        }
    }

    /// The procedure this result belongs to.
    pub fn proc(&self) -> MountProc {
        match self {
            MountRes::Null => MountProc::NULL,
            MountRes::Mnt(_) => MountProc::MNT,
            MountRes::Dump(_) => MountProc::DUMP,
            MountRes::Umnt => MountProc::UMNT,
            MountRes::Umntall => MountProc::UMNTALL,
            MountRes::Export(_) => MountProc::EXPORT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdr::XdrError;

    fn all_args() -> Vec<MountArgs<'static>> {
        vec![
            MountArgs::Null,
            MountArgs::Mnt(b"/export/home"),
            MountArgs::Dump,
            MountArgs::Umnt(b"/x"),
            MountArgs::Umntall,
            MountArgs::Export,
        ]
    }

    fn all_res() -> Vec<MountRes<'static>> {
        vec![
            MountRes::Null,
            MountRes::Mnt(Mountres3::Ok(Mountres3Ok {
                fhandle: Fh(b"root-handle-bytes"),
                auth_flavors: vec![1, 390003],
            })),
            MountRes::Mnt(Mountres3::Ok(Mountres3Ok {
                fhandle: Fh(&[9; FHSIZE3]),
                auth_flavors: vec![],
            })),
            MountRes::Mnt(Mountres3::Fail(Mountstat3::ACCES)),
            MountRes::Mnt(Mountres3::Fail(Mountstat3(4242))),
            MountRes::Dump(vec![
                Mountbody {
                    ml_hostname: b"client1",
                    ml_directory: b"/export",
                },
                Mountbody {
                    ml_hostname: b"c2",
                    ml_directory: b"/",
                },
            ]),
            MountRes::Dump(vec![]),
            MountRes::Umnt,
            MountRes::Umntall,
            MountRes::Export(vec![
                ExportNode {
                    ex_dir: b"/export",
                    ex_groups: vec![b"*.example.com", b"@netgroup"],
                },
                ExportNode {
                    ex_dir: b"/public",
                    ex_groups: vec![],
                },
            ]),
            MountRes::Export(vec![]),
        ]
    }

    fn check_prefixes_and_trailing(body: &[u8], decode: impl Fn(&[u8]) -> Result<(), DecodeError>) {
        for n in 0..body.len() {
            assert!(decode(&body[..n]).is_err(), "prefix {n} of {}", body.len());
        }
        let mut long = body.to_vec();
        long.extend_from_slice(&[0; 4]);
        assert_eq!(
            decode(&long).unwrap_err(),
            DecodeError::Xdr(XdrError::Trailing { left: 4 })
        );
    }

    #[test]
    fn every_mount_call_round_trips() {
        for args in all_args() {
            let mut body = BytesMut::new();
            args.encode(&mut body);
            let decoded = MountArgs::decode(args.proc(), &body).unwrap();
            assert_eq!(decoded, args);
            let mut again = BytesMut::new();
            decoded.encode(&mut again);
            assert_eq!(again, body);
            check_prefixes_and_trailing(&body, |b| MountArgs::decode(args.proc(), b).map(drop));
        }
    }

    #[test]
    fn every_mount_reply_round_trips() {
        for res in all_res() {
            let mut body = BytesMut::new();
            res.encode(&mut body);
            let decoded = MountRes::decode(res.proc(), &body).unwrap();
            assert_eq!(decoded, res);
            let mut again = BytesMut::new();
            decoded.encode(&mut again);
            assert_eq!(again, body);
            check_prefixes_and_trailing(&body, |b| MountRes::decode(res.proc(), b).map(drop));
        }
    }

    #[test]
    fn unknown_mount_procedure_rejected() {
        let err = DecodeError::UnknownProc {
            program: PROGRAM,
            proc: 6,
        };
        assert_eq!(MountArgs::decode(MountProc(6), &[]).unwrap_err(), err);
        assert_eq!(MountRes::decode(MountProc(6), &[]).unwrap_err(), err);
        assert_eq!(MountProc::UMNTALL.name(), "UMNTALL");
        assert_eq!(Mountstat3(4242).to_string(), "Mountstat3(4242)");
    }

    #[test]
    fn oversized_mount_fields_rejected() {
        let mut b = BytesMut::new();
        b.put_xdr_opaque(&[b'/'; MNTPATHLEN + 1]);
        assert!(matches!(
            MountArgs::decode(MountProc::MNT, &b),
            Err(DecodeError::Xdr(XdrError::TooLong {
                max: MNTPATHLEN,
                ..
            }))
        ));
        // A 65-byte root handle.
        let mut b = BytesMut::new();
        b.put_xdr_u32(0);
        b.put_xdr_opaque(&[1; FHSIZE3 + 1]);
        b.put_xdr_u32(0);
        assert!(matches!(
            MountRes::decode(MountProc::MNT, &b),
            Err(DecodeError::Xdr(XdrError::TooLong {
                len: 65,
                max: FHSIZE3,
                ..
            }))
        ));
        // 0xffff_ffff auth flavors: refused before any allocation.
        let mut b = BytesMut::new();
        b.put_xdr_u32(0);
        b.put_xdr_opaque(b"fh");
        b.put_xdr_u32(0xffff_ffff);
        assert!(matches!(
            MountRes::decode(MountProc::MNT, &b),
            Err(DecodeError::Xdr(XdrError::TooLong {
                max: MAX_AUTH_FLAVORS,
                ..
            }))
        ));
        // A group name longer than MNTNAMLEN.
        let mut b = BytesMut::new();
        b.put_xdr_bool(true);
        b.put_xdr_opaque(b"/e");
        b.put_xdr_bool(true);
        b.put_xdr_opaque(&[b'g'; MNTNAMLEN + 1]);
        assert!(matches!(
            MountRes::decode(MountProc::EXPORT, &b),
            Err(DecodeError::Xdr(XdrError::TooLong { max: MNTNAMLEN, .. }))
        ));
    }
}
