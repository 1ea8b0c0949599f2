//! Test fixtures: one or more sample values of every NFSv3 call and reply body,
//! covering every union arm (both result arms, every createhow3 and mknoddata3 arm,
//! present and absent optional attributes and handles).
//!
//! Every `fattr3` in these samples has `fileid == FILEID` and nothing else carries those
//! eight bytes, so a test can count attribute sets in an encoded body.

use super::*;

/// The fileid of every `fattr3` in the samples.
pub const FILEID: u64 = 0x5a5a_1234_5678_9abc;
/// A 28-byte handle (a multiple of four) for the object being operated on.
pub const FH: Fh<'static> = Fh(b"\x01\x00\x07\x00handle-of-the-object");
/// A 13-byte handle (needs padding) for a second directory.
pub const FH2: Fh<'static> = Fh(b"other-dir-fh!");
/// The largest handle allowed.
pub const FH_MAX: Fh<'static> = Fh(&[0xee; NFS3_FHSIZE]);

pub fn time(s: u32) -> Nfstime3 {
    Nfstime3 {
        seconds: s,
        nseconds: (s % 1_000_000) * 1000 + 1,
    }
}

pub fn attr(size: u64) -> Fattr3 {
    Fattr3 {
        ftype: Ftype3::REG,
        mode: 0o644,
        nlink: 2,
        uid: 1000,
        gid: 1001,
        size,
        used: size.next_multiple_of(4096),
        rdev: Specdata3 {
            specdata1: 8,
            specdata2: 1,
        },
        fsid: 0x0102_0304_0506_0708,
        fileid: FILEID,
        atime: time(1_700_000_001),
        mtime: time(1_700_000_002),
        ctime: time(1_700_000_003),
    }
}

pub fn sattr() -> Sattr3 {
    Sattr3 {
        mode: Some(0o640),
        uid: None,
        gid: Some(50),
        size: Some(4096),
        atime: SetTime::SetToServerTime,
        mtime: SetTime::SetToClientTime(time(12)),
    }
}

pub fn dirop(name: &'static [u8]) -> Diropargs3<'static> {
    Diropargs3 { dir: FH, name }
}

pub fn wcc_full() -> WccData {
    WccData {
        before: Some(WccAttr {
            size: 10,
            mtime: time(3),
            ctime: time(4),
        }),
        after: Some(attr(20)),
    }
}

pub fn wcc_after_only() -> WccData {
    WccData {
        before: None,
        after: Some(attr(30)),
    }
}

/// Sample calls of every procedure; several per procedure where unions have arms.
pub fn all_args() -> Vec<Args<'static>> {
    let create = |how| {
        Args::Create(CreateArgs {
            where_: dirop(b"new.txt"),
            how,
        })
    };
    let mknod = |what| {
        Args::Mknod(MknodArgs {
            where_: dirop(b"node"),
            what,
        })
    };
    let dev = Devicedata3 {
        dev_attributes: sattr(),
        spec: Specdata3 {
            specdata1: 1,
            specdata2: 3,
        },
    };
    vec![
        Args::Null,
        Args::Getattr(GetattrArgs { object: FH }),
        Args::Getattr(GetattrArgs { object: FH_MAX }),
        Args::Setattr(SetattrArgs {
            object: FH,
            new_attributes: sattr(),
            guard: Some(time(99)),
        }),
        Args::Setattr(SetattrArgs {
            object: FH,
            new_attributes: Sattr3::default(),
            guard: None,
        }),
        Args::Lookup(LookupArgs { what: dirop(b"a") }),
        Args::Access(AccessArgs {
            object: FH,
            access: ACCESS3_READ | ACCESS3_LOOKUP | ACCESS3_EXECUTE,
        }),
        Args::Readlink(ReadlinkArgs { symlink: FH }),
        Args::Read(ReadArgs {
            file: FH,
            offset: 1 << 33,
            count: 131_072,
        }),
        Args::Write(WriteArgs {
            file: FH,
            offset: 4096,
            count: 13,
            stable: StableHow::FILE_SYNC,
            data: b"hello, world!",
        }),
        Args::Write(WriteArgs {
            file: FH,
            offset: 0,
            count: 0,
            stable: StableHow::UNSTABLE,
            data: b"",
        }),
        create(CreateHow3::Unchecked(Sattr3::default())),
        create(CreateHow3::Guarded(sattr())),
        create(CreateHow3::Exclusive(*b"verifier")),
        Args::Mkdir(MkdirArgs {
            where_: dirop(b"subdir"),
            attributes: sattr(),
        }),
        Args::Symlink(SymlinkArgs {
            where_: dirop(b"link"),
            symlink: Symlinkdata3 {
                symlink_attributes: Sattr3::default(),
                symlink_data: b"../target/file",
            },
        }),
        mknod(Mknoddata3::Chr(dev.clone())),
        mknod(Mknoddata3::Blk(dev)),
        mknod(Mknoddata3::Sock(sattr())),
        mknod(Mknoddata3::Fifo(Sattr3::default())),
        mknod(Mknoddata3::NoData(Ftype3::REG)),
        Args::Remove(RemoveArgs {
            object: dirop(b"gone"),
        }),
        Args::Rmdir(RmdirArgs {
            object: dirop(b"gone-dir"),
        }),
        Args::Rename(RenameArgs {
            from: dirop(b"old"),
            to: Diropargs3 {
                dir: FH2,
                name: b"new-name",
            },
        }),
        Args::Link(LinkArgs {
            file: FH,
            link: Diropargs3 {
                dir: FH2,
                name: b"hard",
            },
        }),
        Args::Readdir(ReaddirArgs {
            dir: FH,
            cookie: 0,
            cookieverf: [0; 8],
            count: 4096,
        }),
        Args::Readdirplus(ReaddirplusArgs {
            dir: FH,
            cookie: 17,
            cookieverf: *b"cookieV!",
            dircount: 8192,
            maxcount: 32768,
        }),
        Args::Fsstat(FsstatArgs { fsroot: FH }),
        Args::Fsinfo(FsinfoArgs { fsroot: FH }),
        Args::Pathconf(PathconfArgs { object: FH }),
        Args::Commit(CommitArgs {
            file: FH,
            offset: 0,
            count: 0,
        }),
    ]
}

pub fn fsinfo_ok() -> FsinfoResOk {
    FsinfoResOk {
        obj_attributes: Some(attr(4096)),
        rtmax: 1 << 20,
        rtpref: 1 << 20,
        rtmult: 4096,
        wtmax: 1 << 20,
        wtpref: 1 << 20,
        wtmult: 4096,
        dtpref: 65536,
        maxfilesize: u64::MAX,
        time_delta: Nfstime3 {
            seconds: 0,
            nseconds: 1,
        },
        properties: FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME,
    }
}

fn created(obj: Option<Fh<'static>>) -> CreateResOk<'static> {
    CreateResOk {
        obj,
        obj_attributes: obj.map(|_| attr(0)),
        dir_wcc: wcc_full(),
    }
}

fn entries() -> Vec<Entry3<'static>> {
    vec![
        Entry3 {
            fileid: 2,
            name: b".",
            cookie: 1,
        },
        Entry3 {
            fileid: 1,
            name: b"..",
            cookie: 2,
        },
        Entry3 {
            fileid: 77,
            name: b"a-longer-name.txt",
            cookie: 3,
        },
    ]
}

fn entries_plus() -> Vec<Entryplus3<'static>> {
    vec![
        Entryplus3 {
            fileid: 77,
            name: b"file",
            cookie: 1,
            name_attributes: Some(attr(5)),
            name_handle: Some(FH2),
        },
        Entryplus3 {
            fileid: 78,
            name: b"no-attrs",
            cookie: 2,
            name_attributes: None,
            name_handle: None,
        },
    ]
}

/// Sample replies of every procedure: the ok arm and the fail arm of each.
pub fn all_res() -> Vec<Res<'static>> {
    use NfsResult::{Fail, Ok};
    let post = Some(attr(1));
    vec![
        Res::Null,
        Res::Getattr(Ok(GetattrResOk {
            obj_attributes: attr(123),
        })),
        Res::Getattr(Fail(Nfsstat3::STALE, Void)),
        Res::Setattr(Ok(SetattrResOk {
            obj_wcc: wcc_full(),
        })),
        Res::Setattr(Fail(
            Nfsstat3::NOT_SYNC,
            SetattrResFail {
                obj_wcc: WccData::default(),
            },
        )),
        Res::Lookup(Ok(LookupResOk {
            object: FH2,
            obj_attributes: Some(attr(7)),
            dir_attributes: Some(attr(4096)),
        })),
        Res::Lookup(Fail(
            Nfsstat3::NOENT,
            LookupResFail {
                dir_attributes: post.clone(),
            },
        )),
        Res::Lookup(Fail(
            Nfsstat3(54321),
            LookupResFail {
                dir_attributes: None,
            },
        )),
        Res::Access(Ok(AccessResOk {
            obj_attributes: post.clone(),
            access: ACCESS3_READ,
        })),
        Res::Access(Fail(
            Nfsstat3::STALE,
            AccessResFail {
                obj_attributes: None,
            },
        )),
        Res::Readlink(Ok(ReadlinkResOk {
            symlink_attributes: None,
            data: b"/some/where",
        })),
        Res::Readlink(Fail(
            Nfsstat3::INVAL,
            ReadlinkResFail {
                symlink_attributes: post.clone(),
            },
        )),
        Res::Read(Ok(ReadResOk {
            file_attributes: Some(attr(1 << 20)),
            count: 5,
            eof: true,
            data: b"bytes",
        })),
        Res::Read(Fail(
            Nfsstat3::IO,
            ReadResFail {
                file_attributes: None,
            },
        )),
        Res::Write(Ok(WriteResOk {
            file_wcc: wcc_full(),
            count: 13,
            committed: StableHow::DATA_SYNC,
            verf: *b"wverf123",
        })),
        Res::Write(Fail(
            Nfsstat3::NOSPC,
            WriteResFail {
                file_wcc: wcc_after_only(),
            },
        )),
        Res::Create(Ok(created(Some(FH2)))),
        Res::Create(Fail(
            Nfsstat3::EXIST,
            CreateResFail {
                dir_wcc: wcc_full(),
            },
        )),
        Res::Mkdir(Ok(created(Some(FH2)))),
        Res::Mkdir(Fail(
            Nfsstat3::ROFS,
            CreateResFail {
                dir_wcc: WccData::default(),
            },
        )),
        Res::Symlink(Ok(created(None))),
        Res::Symlink(Fail(
            Nfsstat3::NOTSUPP,
            CreateResFail {
                dir_wcc: wcc_after_only(),
            },
        )),
        Res::Mknod(Ok(created(Some(FH_MAX)))),
        Res::Mknod(Fail(
            Nfsstat3::BADTYPE,
            CreateResFail {
                dir_wcc: wcc_full(),
            },
        )),
        Res::Remove(Ok(RemoveResOk {
            dir_wcc: wcc_full(),
        })),
        Res::Remove(Fail(
            Nfsstat3::ACCES,
            RemoveResFail {
                dir_wcc: WccData::default(),
            },
        )),
        Res::Rmdir(Ok(RemoveResOk {
            dir_wcc: wcc_after_only(),
        })),
        Res::Rmdir(Fail(
            Nfsstat3::NOTEMPTY,
            RemoveResFail {
                dir_wcc: wcc_full(),
            },
        )),
        Res::Rename(Ok(RenameResOk {
            fromdir_wcc: wcc_full(),
            todir_wcc: wcc_after_only(),
        })),
        Res::Rename(Fail(
            Nfsstat3::XDEV,
            RenameResFail {
                fromdir_wcc: WccData::default(),
                todir_wcc: wcc_full(),
            },
        )),
        Res::Link(Ok(LinkResOk {
            file_attributes: post.clone(),
            linkdir_wcc: wcc_full(),
        })),
        Res::Link(Fail(
            Nfsstat3::MLINK,
            LinkResFail {
                file_attributes: None,
                linkdir_wcc: WccData::default(),
            },
        )),
        Res::Readdir(Ok(ReaddirResOk {
            dir_attributes: post.clone(),
            cookieverf: *b"cverf!!!",
            reply: Dirlist3 {
                entries: entries(),
                eof: true,
            },
        })),
        Res::Readdir(Ok(ReaddirResOk {
            dir_attributes: None,
            cookieverf: [0; 8],
            reply: Dirlist3 {
                entries: vec![],
                eof: false,
            },
        })),
        Res::Readdir(Fail(
            Nfsstat3::BAD_COOKIE,
            ReaddirResFail {
                dir_attributes: None,
            },
        )),
        Res::Readdirplus(Ok(ReaddirplusResOk {
            dir_attributes: post.clone(),
            cookieverf: *b"cverf+++",
            reply: Dirlistplus3 {
                entries: entries_plus(),
                eof: false,
            },
        })),
        Res::Readdirplus(Fail(
            Nfsstat3::TOOSMALL,
            ReaddirplusResFail {
                dir_attributes: post.clone(),
            },
        )),
        Res::Fsstat(Ok(FsstatResOk {
            obj_attributes: post.clone(),
            tbytes: 1 << 40,
            fbytes: 1 << 39,
            abytes: 1 << 38,
            tfiles: 1 << 20,
            ffiles: 1 << 19,
            afiles: 1 << 18,
            invarsec: 0,
        })),
        Res::Fsstat(Fail(
            Nfsstat3::IO,
            FsstatResFail {
                obj_attributes: None,
            },
        )),
        Res::Fsinfo(Ok(fsinfo_ok())),
        Res::Fsinfo(Fail(
            Nfsstat3::SERVERFAULT,
            FsinfoResFail {
                obj_attributes: post.clone(),
            },
        )),
        Res::Pathconf(Ok(PathconfResOk {
            obj_attributes: None,
            linkmax: 32000,
            name_max: 255,
            no_trunc: true,
            chown_restricted: true,
            case_insensitive: false,
            case_preserving: true,
        })),
        Res::Pathconf(Fail(
            Nfsstat3::BADHANDLE,
            PathconfResFail {
                obj_attributes: post,
            },
        )),
        Res::Commit(Ok(CommitResOk {
            file_wcc: wcc_full(),
            verf: *b"wverf123",
        })),
        Res::Commit(Fail(
            Nfsstat3::JUKEBOX,
            CommitResFail {
                file_wcc: wcc_after_only(),
            },
        )),
    ]
}
