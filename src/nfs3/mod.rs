//! NFSv3 (RFC 1813) and MOUNT v3 wire types: bounded, zero-copy decode and encode.
//!
//! # How data enters and leaves
//!
//! The RPC layer hands this module the procedure number and the *body* of a call or
//! reply (everything after the RPC header and verifier). [`Args::decode`] /
//! [`Res::decode`] turn that body into typed structs that borrow every variable-length
//! piece (file handles, names, paths, READ/WRITE payloads) from the body, so decoding a
//! 1 MiB WRITE allocates nothing; only directory listings and MOUNT lists allocate, one
//! `Vec` slot per entry actually present, under a cap. Every length read off the wire is
//! checked against its RFC or documented bound *and* against the bytes left before it is
//! used, and trailing bytes are rejected. A body that fails to decode is the sender's
//! fault: answer GARBAGE_ARGS (calls) or drop the connection (replies).
//!
//! [`Args::encode`] / [`Res::encode`] append the body back to a `BytesMut`. Every field
//! the RFC defines is kept, so decode → encode reproduces the input byte for byte (XDR
//! padding is written as zeros, as RFC 4506 requires of it). The proxy can therefore
//! rewrite a few fields, e.g. FSINFO transfer sizes or attributes (see
//! [`Res::for_each_attr_mut`]), and forward everything else unchanged.
//!
//! Wire enums ([`Proc`], [`Nfsstat3`], [`Ftype3`], [`StableHow`], ...) are `u32`
//! newtypes with named constants: an unknown status or file type passes through. Only
//! discriminants that select a union arm (createmode3, time_how, mknoddata3's type)
//! must be known, since the bytes after them cannot be parsed otherwise.
//!
//! # Layout
//!
//! - `types.rs`: shared RFC types (`fattr3`, `sattr3`, `wcc_data`, `nfs_fh3`, statuses,
//!   [`NfsResult`]).
//! - `args.rs`, `res.rs`: one struct per procedure argument / `resok` / `resfail`.
//! - `attrs.rs`: where the attributes are in each reply, for rewriting them.
//! - `mount.rs`: the MOUNT v3 protocol (program 100005).
//! - `codec.rs`: private plumbing (the `Wire` trait and the struct/enum macros).

mod args;
mod attrs;
mod codec;
pub mod mount;
mod res;
mod types;

#[cfg(test)]
mod crosscheck;
#[cfg(test)]
pub(crate) mod samples;
#[cfg(test)]
mod tests;

use bytes::BytesMut;

pub use self::args::*;
pub use self::attrs::AttrMut;
use self::codec::{Wire, wire_enum};
pub use self::res::*;
pub use self::types::*;
use crate::xdr::{Reader, XdrError};

/// ONC RPC program number of NFS.
pub const PROGRAM: u32 = 100_003;
/// The NFS version this module speaks.
pub const VERSION: u32 = 3;

wire_enum! {
    /// An NFSv3 procedure number. Numbers past COMMIT pass through as unknown.
    Proc {
        NULL = 0 => "NULL",
        GETATTR = 1 => "GETATTR",
        SETATTR = 2 => "SETATTR",
        LOOKUP = 3 => "LOOKUP",
        ACCESS = 4 => "ACCESS",
        READLINK = 5 => "READLINK",
        READ = 6 => "READ",
        WRITE = 7 => "WRITE",
        CREATE = 8 => "CREATE",
        MKDIR = 9 => "MKDIR",
        SYMLINK = 10 => "SYMLINK",
        MKNOD = 11 => "MKNOD",
        REMOVE = 12 => "REMOVE",
        RMDIR = 13 => "RMDIR",
        RENAME = 14 => "RENAME",
        LINK = 15 => "LINK",
        READDIR = 16 => "READDIR",
        READDIRPLUS = 17 => "READDIRPLUS",
        FSSTAT = 18 => "FSSTAT",
        FSINFO = 19 => "FSINFO",
        PATHCONF = 20 => "PATHCONF",
        COMMIT = 21 => "COMMIT",
    }
}

impl Proc {
    /// Whether the procedure adds, removes or renames directory entries.
    pub fn changes_namespace(self) -> bool {
        matches!(
            self,
            Proc::CREATE
                | Proc::MKDIR
                | Proc::SYMLINK
                | Proc::MKNOD
                | Proc::REMOVE
                | Proc::RMDIR
                | Proc::RENAME
                | Proc::LINK
        )
    }

    /// Every NFSv3 procedure, in number order.
    pub const ALL: [Proc; 22] = {
        let mut all = [Proc(0); 22];
        let mut i = 0;
        while i < 22 {
            all[i] = Proc(i as u32);
            i += 1;
        }
        all
    };
}

/// Why a call or reply body could not be decoded. Never worth retrying as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The procedure number is not one the program (NFS or MOUNT) defines: answer
    /// PROC_UNAVAIL.
    #[error("unknown procedure {proc} of program {program}")]
    UnknownProc { program: u32, proc: u32 },
    /// The body is malformed for its procedure (GARBAGE_ARGS at the caller).
    #[error(transparent)]
    Xdr(#[from] XdrError),
}

/// Generates [`Args`] and [`Res`] and their dispatch from one table:
/// procedure constant, variant name, argument type, result type.
macro_rules! nfs_procs {
    ($($konst:ident => $variant:ident($args:ty, $res:ty),)*) => {
        /// The decoded arguments of one NFSv3 call.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Args<'a> {
            /// NULL takes no arguments.
            Null,
            $(
                #[doc = concat!("NFSPROC3_", stringify!($konst), " arguments.")]
                $variant($args),
            )*
        }

        /// The decoded body of one NFSv3 reply.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Res<'a> {
            /// NULL returns nothing.
            Null,
            $(
                #[doc = concat!("NFSPROC3_", stringify!($konst), " result.")]
                $variant($res),
            )*
        }

        impl<'a> Args<'a> {
            /// Decodes the body of a call to `proc`, borrowing from it. Rejects unknown
            /// procedures, malformed bodies and trailing bytes.
            pub fn decode(proc: Proc, body: &'a [u8]) -> Result<Self, DecodeError> {
                let mut r = Reader::new(body);
                let args = match proc {
                    Proc::NULL => Args::Null,
                    $(Proc::$konst => Args::$variant(Wire::get(&mut r)?),)*
                    Proc(proc) => return Err(DecodeError::UnknownProc { program: PROGRAM, proc }),
                };
                r.finish()?;
                Ok(args)
            }

            /// Appends the call body.
            pub fn encode(&self, out: &mut BytesMut) {
                match self {
                    Args::Null => {}
                    $(Args::$variant(a) => a.put(out),)*
                }
            }

            /// The procedure these arguments belong to.
            pub fn proc(&self) -> Proc {
                match self {
                    Args::Null => Proc::NULL,
                    $(Args::$variant(_) => Proc::$konst,)*
                }
            }
        }

        impl<'a> Res<'a> {
            /// Decodes the body of a reply to `proc`, borrowing from it. Rejects unknown
            /// procedures, malformed bodies and trailing bytes.
            pub fn decode(proc: Proc, body: &'a [u8]) -> Result<Self, DecodeError> {
                let mut r = Reader::new(body);
                let res = match proc {
                    Proc::NULL => Res::Null,
                    $(Proc::$konst => Res::$variant(Wire::get(&mut r)?),)*
                    Proc(proc) => return Err(DecodeError::UnknownProc { program: PROGRAM, proc }),
                };
                r.finish()?;
                Ok(res)
            }

            /// Appends the reply body.
            pub fn encode(&self, out: &mut BytesMut) {
                match self {
                    Res::Null => {}
                    $(Res::$variant(a) => a.put(out),)*
                }
            }

            /// The procedure this result belongs to.
            pub fn proc(&self) -> Proc {
                match self {
                    Res::Null => Proc::NULL,
                    $(Res::$variant(_) => Proc::$konst,)*
                }
            }

            /// The reply's status; `None` for NULL, which has none.
            pub fn status(&self) -> Option<Nfsstat3> {
                match self {
                    Res::Null => None,
                    $(Res::$variant(r) => Some(r.status()),)*
                }
            }
        }
    };
}

nfs_procs! {
    GETATTR => Getattr(GetattrArgs<'a>, GetattrRes),
    SETATTR => Setattr(SetattrArgs<'a>, SetattrRes),
    LOOKUP => Lookup(LookupArgs<'a>, LookupRes<'a>),
    ACCESS => Access(AccessArgs<'a>, AccessRes),
    READLINK => Readlink(ReadlinkArgs<'a>, ReadlinkRes<'a>),
    READ => Read(ReadArgs<'a>, ReadRes<'a>),
    WRITE => Write(WriteArgs<'a>, WriteRes),
    CREATE => Create(CreateArgs<'a>, CreateRes<'a>),
    MKDIR => Mkdir(MkdirArgs<'a>, MkdirRes<'a>),
    SYMLINK => Symlink(SymlinkArgs<'a>, SymlinkRes<'a>),
    MKNOD => Mknod(MknodArgs<'a>, MknodRes<'a>),
    REMOVE => Remove(RemoveArgs<'a>, RemoveRes),
    RMDIR => Rmdir(RmdirArgs<'a>, RmdirRes),
    RENAME => Rename(RenameArgs<'a>, RenameRes),
    LINK => Link(LinkArgs<'a>, LinkRes),
    READDIR => Readdir(ReaddirArgs<'a>, ReaddirRes<'a>),
    READDIRPLUS => Readdirplus(ReaddirplusArgs<'a>, ReaddirplusRes<'a>),
    FSSTAT => Fsstat(FsstatArgs<'a>, FsstatRes),
    FSINFO => Fsinfo(FsinfoArgs<'a>, FsinfoRes),
    PATHCONF => Pathconf(PathconfArgs<'a>, PathconfRes),
    COMMIT => Commit(CommitArgs<'a>, CommitRes),
}

impl<'a> Args<'a> {
    /// The handle the call is about: the object itself, or for calls that name an entry
    /// (LOOKUP, CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME) the directory;
    /// the source file for LINK. `None` for NULL.
    pub fn fh(&self) -> Option<Fh<'a>> {
        Some(match self {
            Args::Null => return None,
            Args::Getattr(a) => a.object,
            Args::Setattr(a) => a.object,
            Args::Lookup(a) => a.what.dir,
            Args::Access(a) => a.object,
            Args::Readlink(a) => a.symlink,
            Args::Read(a) => a.file,
            Args::Write(a) => a.file,
            Args::Create(a) => a.where_.dir,
            Args::Mkdir(a) => a.where_.dir,
            Args::Symlink(a) => a.where_.dir,
            Args::Mknod(a) => a.where_.dir,
            Args::Remove(a) => a.object.dir,
            Args::Rmdir(a) => a.object.dir,
            Args::Rename(a) => a.from.dir,
            Args::Link(a) => a.file,
            Args::Readdir(a) => a.dir,
            Args::Readdirplus(a) => a.dir,
            Args::Fsstat(a) => a.fsroot,
            Args::Fsinfo(a) => a.fsroot,
            Args::Pathconf(a) => a.object,
            Args::Commit(a) => a.file,
        })
    }

    /// The second handle of the two calls that carry one: RENAME's target directory
    /// (`to.dir`) and LINK's directory (`link.dir`).
    pub fn fh2(&self) -> Option<Fh<'a>> {
        match self {
            Args::Rename(a) => Some(a.to.dir),
            Args::Link(a) => Some(a.link.dir),
            _ => None,
        }
    }

    /// The `diropargs3` of calls that name a directory entry (for RENAME, the source).
    pub fn dirop(&self) -> Option<Diropargs3<'a>> {
        match self {
            Args::Lookup(a) => Some(a.what),
            Args::Create(a) => Some(a.where_),
            Args::Mkdir(a) => Some(a.where_),
            Args::Symlink(a) => Some(a.where_),
            Args::Mknod(a) => Some(a.where_),
            Args::Remove(a) => Some(a.object),
            Args::Rmdir(a) => Some(a.object),
            Args::Rename(a) => Some(a.from),
            Args::Link(a) => Some(a.link),
            _ => None,
        }
    }
}
