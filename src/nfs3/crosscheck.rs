//! Cross-checks against an independent implementation: messages packed by the
//! `nfs3_types` crate must decode with this codec and re-encode to the very same bytes.

use bytes::BytesMut;
use nfs3_types::mount as m;
use nfs3_types::nfs3 as t;
use nfs3_types::xdr_codec::{self as tx, List, Opaque, Pack};

use super::mount::{MountArgs, MountProc, MountRes, Mountres3, Mountstat3};
use super::*;

fn packed<T: Pack>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let n = v.pack(&mut out).expect("nfs3_types packs into a Vec");
    assert_eq!(n, out.len());
    out
}

/// Decodes a call body packed by nfs3_types and checks that ours re-encodes it exactly.
fn same_args(proc: Proc, body: &[u8]) -> Args<'_> {
    let args = Args::decode(proc, body).unwrap_or_else(|e| panic!("{proc}: {e}"));
    let mut out = BytesMut::new();
    args.encode(&mut out);
    assert_eq!(out, body, "{proc} call re-encoded differently");
    args
}

/// The same for a reply body.
fn same_res(proc: Proc, body: &[u8]) -> Res<'_> {
    let res = Res::decode(proc, body).unwrap_or_else(|e| panic!("{proc}: {e}"));
    let mut out = BytesMut::new();
    res.encode(&mut out);
    assert_eq!(out, body, "{proc} reply re-encoded differently");
    res
}

fn fh(bytes: &[u8]) -> t::nfs_fh3 {
    t::nfs_fh3 {
        data: Opaque::owned(bytes.to_vec()),
    }
}

fn time(s: u32) -> t::nfstime3 {
    t::nfstime3 {
        seconds: s,
        nseconds: 999_999_999,
    }
}

fn fattr(ftype: t::ftype3, size: u64) -> t::fattr3 {
    t::fattr3 {
        type_: ftype,
        mode: 0o4755,
        nlink: 3,
        uid: 0,
        gid: 65534,
        size,
        used: size * 2,
        rdev: t::specdata3 {
            specdata1: 4,
            specdata2: 64,
        },
        fsid: u64::MAX - 1,
        fileid: 1234567,
        atime: time(1),
        mtime: time(2),
        ctime: time(3),
    }
}

fn sattr() -> t::sattr3 {
    t::sattr3 {
        mode: t::Nfs3Option::Some(0o600),
        uid: t::Nfs3Option::Some(1000),
        gid: t::Nfs3Option::None,
        size: t::Nfs3Option::Some(1 << 35),
        atime: t::set_atime::SET_TO_CLIENT_TIME(time(5)),
        mtime: t::set_mtime::SET_TO_SERVER_TIME,
    }
}

fn wcc() -> t::wcc_data {
    t::wcc_data {
        before: t::Nfs3Option::Some(t::wcc_attr {
            size: 1,
            mtime: time(6),
            ctime: time(7),
        }),
        after: t::Nfs3Option::Some(fattr(t::ftype3::NF3DIR, 4096)),
    }
}

fn dirop<'a>(dir: &[u8], name: &'a [u8]) -> t::diropargs3<'a> {
    t::diropargs3 {
        dir: fh(dir),
        name: name.into(),
    }
}

#[test]
fn calls_packed_by_nfs3_types_reencode_identically() {
    let b = packed(&t::GETATTR3args { object: fh(b"abc") });
    assert!(matches!(same_args(Proc::GETATTR, &b), Args::Getattr(a) if a.object.0 == b"abc"));

    let b = packed(&t::SETATTR3args {
        object: fh(&[7; 64]),
        new_attributes: sattr(),
        guard: t::Nfs3Option::Some(time(8)),
    });
    let Args::Setattr(a) = same_args(Proc::SETATTR, &b) else {
        panic!()
    };
    assert_eq!(a.new_attributes.size, Some(1 << 35));
    assert_eq!(
        a.new_attributes.atime,
        SetTime::SetToClientTime(Nfstime3 {
            seconds: 5,
            nseconds: 999_999_999
        })
    );

    let b = packed(&t::LOOKUP3args {
        what: dirop(b"dir", b"name.txt"),
    });
    assert!(matches!(same_args(Proc::LOOKUP, &b), Args::Lookup(a) if a.what.name == b"name.txt"));

    let b = packed(&t::READ3args {
        file: fh(b"f"),
        offset: 1 << 40,
        count: 65536,
    });
    assert!(matches!(same_args(Proc::READ, &b), Args::Read(a) if a.offset == 1 << 40));

    let data = b"seven b".to_vec();
    let b = packed(&t::WRITE3args {
        file: fh(b"file"),
        offset: 12,
        count: data.len() as u32,
        stable: t::stable_how::DATA_SYNC,
        data: Opaque::borrowed(&data),
    });
    let Args::Write(a) = same_args(Proc::WRITE, &b) else {
        panic!()
    };
    assert_eq!((a.data, a.stable), (&data[..], StableHow::DATA_SYNC));

    let b = packed(&t::CREATE3args {
        where_: dirop(b"d", b"new"),
        how: t::createhow3::GUARDED(sattr()),
    });
    assert!(matches!(
        same_args(Proc::CREATE, &b),
        Args::Create(CreateArgs {
            how: CreateHow3::Guarded(_),
            ..
        })
    ));
    let b = packed(&t::CREATE3args {
        where_: dirop(b"d", b"new"),
        how: t::createhow3::EXCLUSIVE(t::createverf3(*b"12345678")),
    });
    assert!(
        matches!(same_args(Proc::CREATE, &b), Args::Create(CreateArgs { how: CreateHow3::Exclusive(v), .. }) if &v == b"12345678")
    );

    let b = packed(&t::MKNOD3args {
        where_: dirop(b"d", b"fifo"),
        what: t::mknoddata3::NF3FIFO(sattr()),
    });
    assert!(matches!(
        same_args(Proc::MKNOD, &b),
        Args::Mknod(MknodArgs {
            what: Mknoddata3::Fifo(_),
            ..
        })
    ));
    let b = packed(&t::MKNOD3args {
        where_: dirop(b"d", b"tty"),
        what: t::mknoddata3::NF3CHR(t::devicedata3 {
            dev_attributes: sattr(),
            spec: t::specdata3 {
                specdata1: 4,
                specdata2: 1,
            },
        }),
    });
    let Args::Mknod(a) = same_args(Proc::MKNOD, &b) else {
        panic!()
    };
    assert!(
        matches!(a.what, Mknoddata3::Chr(d) if d.spec == Specdata3 { specdata1: 4, specdata2: 1 })
    );

    let b = packed(&t::RENAME3args {
        from: dirop(b"d1", b"a"),
        to: dirop(b"d2-longer", b"bcdef"),
    });
    let Args::Rename(a) = same_args(Proc::RENAME, &b) else {
        panic!()
    };
    assert_eq!((a.to.dir.0, a.to.name), (&b"d2-longer"[..], &b"bcdef"[..]));

    let b = packed(&t::READDIR3args {
        dir: fh(b"d"),
        cookie: 9,
        cookieverf: t::cookieverf3(*b"verfverf"),
        count: 4096,
    });
    assert!(matches!(same_args(Proc::READDIR, &b), Args::Readdir(a) if a.cookie == 9));
    let b = packed(&t::READDIRPLUS3args {
        dir: fh(b"d"),
        cookie: 10,
        cookieverf: t::cookieverf3([1; 8]),
        dircount: 1024,
        maxcount: 8192,
    });
    assert!(matches!(same_args(Proc::READDIRPLUS, &b), Args::Readdirplus(a) if a.maxcount == 8192));

    let b = packed(&t::COMMIT3args {
        file: fh(b"c"),
        offset: 0,
        count: 0,
    });
    same_args(Proc::COMMIT, &b);
    let b = packed(&t::SYMLINK3args {
        where_: dirop(b"d", b"ln"),
        symlink: t::symlinkdata3 {
            symlink_attributes: sattr(),
            symlink_data: (&b"/tmp/x"[..]).into(),
        },
    });
    same_args(Proc::SYMLINK, &b);
}

#[test]
fn replies_packed_by_nfs3_types_reencode_identically() {
    let b = packed(&t::GETATTR3res::Ok(t::GETATTR3resok {
        obj_attributes: fattr(t::ftype3::NF3LNK, 9),
    }));
    assert!(
        matches!(same_res(Proc::GETATTR, &b), Res::Getattr(NfsResult::Ok(r)) if r.obj_attributes.ftype == Ftype3::LNK)
    );
    let b = packed(&t::GETATTR3res::Err((t::nfsstat3::NFS3ERR_STALE, tx::Void)));
    assert_eq!(
        same_res(Proc::GETATTR, &b),
        Res::Getattr(NfsResult::Fail(Nfsstat3::STALE, Void))
    );

    let b = packed(&t::SETATTR3res::Ok(t::SETATTR3resok { obj_wcc: wcc() }));
    same_res(Proc::SETATTR, &b);
    let b = packed(&t::SETATTR3res::Err((
        t::nfsstat3::NFS3ERR_NOT_SYNC,
        t::SETATTR3resfail { obj_wcc: wcc() },
    )));
    same_res(Proc::SETATTR, &b);

    let b = packed(&t::LOOKUP3res::Ok(t::LOOKUP3resok {
        object: fh(b"found"),
        obj_attributes: t::Nfs3Option::Some(fattr(t::ftype3::NF3REG, 1)),
        dir_attributes: t::Nfs3Option::None,
    }));
    assert!(
        matches!(same_res(Proc::LOOKUP, &b), Res::Lookup(NfsResult::Ok(r)) if r.object.0 == b"found")
    );
    let b = packed(&t::LOOKUP3res::Err((
        t::nfsstat3::NFS3ERR_NOENT,
        t::LOOKUP3resfail {
            dir_attributes: t::Nfs3Option::Some(fattr(t::ftype3::NF3DIR, 2)),
        },
    )));
    assert_eq!(same_res(Proc::LOOKUP, &b).status(), Some(Nfsstat3::NOENT));

    let data = b"file contents".to_vec();
    let b = packed(&t::READ3res::Ok(t::READ3resok {
        file_attributes: t::Nfs3Option::Some(fattr(t::ftype3::NF3REG, 13)),
        count: data.len() as u32,
        eof: true,
        data: Opaque::borrowed(&data),
    }));
    assert!(
        matches!(same_res(Proc::READ, &b), Res::Read(NfsResult::Ok(r)) if r.data == &data[..] && r.eof)
    );
    let b = packed(&t::READ3res::Err((
        t::nfsstat3::NFS3ERR_IO,
        t::READ3resfail::default(),
    )));
    same_res(Proc::READ, &b);

    let b = packed(&t::WRITE3res::Ok(t::WRITE3resok {
        file_wcc: wcc(),
        count: 7,
        committed: t::stable_how::FILE_SYNC,
        verf: t::writeverf3(*b"writever"),
    }));
    same_res(Proc::WRITE, &b);
    let b = packed(&t::WRITE3res::Err((
        t::nfsstat3::NFS3ERR_DQUOT,
        t::WRITE3resfail { file_wcc: wcc() },
    )));
    same_res(Proc::WRITE, &b);

    let b = packed(&t::CREATE3res::Ok(t::CREATE3resok {
        obj: t::Nfs3Option::Some(fh(b"new-file")),
        obj_attributes: t::Nfs3Option::Some(fattr(t::ftype3::NF3REG, 0)),
        dir_wcc: wcc(),
    }));
    same_res(Proc::CREATE, &b);
    let b = packed(&t::CREATE3res::Err((
        t::nfsstat3::NFS3ERR_EXIST,
        t::CREATE3resfail { dir_wcc: wcc() },
    )));
    same_res(Proc::CREATE, &b);
    let b = packed(&t::MKNOD3res::Ok(t::MKNOD3resok {
        obj: t::Nfs3Option::None,
        obj_attributes: t::Nfs3Option::None,
        dir_wcc: t::wcc_data::default(),
    }));
    same_res(Proc::MKNOD, &b);

    let b = packed(&t::RENAME3res::Ok(t::RENAME3resok {
        fromdir_wcc: wcc(),
        todir_wcc: t::wcc_data::default(),
    }));
    same_res(Proc::RENAME, &b);
    let b = packed(&t::RENAME3res::Err((
        t::nfsstat3::NFS3ERR_XDEV,
        t::RENAME3resfail::default(),
    )));
    same_res(Proc::RENAME, &b);
}

#[test]
fn directory_replies_packed_by_nfs3_types_reencode_identically() {
    let entry = |fileid, name: &'static [u8], cookie| t::entry3 {
        fileid,
        name: name.into(),
        cookie,
    };
    let b = packed(&t::READDIR3res::Ok(t::READDIR3resok {
        dir_attributes: t::Nfs3Option::Some(fattr(t::ftype3::NF3DIR, 4096)),
        cookieverf: t::cookieverf3(*b"cookieve"),
        reply: t::dirlist3 {
            entries: List(vec![
                entry(1, b".", 1),
                entry(2, b"..", 2),
                entry(3, b"12345", 3),
            ]),
            eof: true,
        },
    }));
    let Res::Readdir(NfsResult::Ok(r)) = same_res(Proc::READDIR, &b) else {
        panic!()
    };
    let names: Vec<&[u8]> = r.reply.entries.iter().map(|e| e.name).collect();
    assert_eq!(names, [&b"."[..], b"..", b"12345"]);
    let b = packed(&t::READDIR3res::Err((
        t::nfsstat3::NFS3ERR_BAD_COOKIE,
        t::READDIR3resfail::default(),
    )));
    same_res(Proc::READDIR, &b);

    let plus = |fileid, name: &'static [u8], handle: Option<&[u8]>| t::entryplus3 {
        fileid,
        name: name.into(),
        cookie: fileid + 100,
        name_attributes: match handle {
            Some(_) => t::Nfs3Option::Some(fattr(t::ftype3::NF3REG, fileid)),
            None => t::Nfs3Option::None,
        },
        name_handle: match handle {
            Some(h) => t::Nfs3Option::Some(fh(h)),
            None => t::Nfs3Option::None,
        },
    };
    let b = packed(&t::READDIRPLUS3res::Ok(t::READDIRPLUS3resok {
        dir_attributes: t::Nfs3Option::None,
        cookieverf: t::cookieverf3([0; 8]),
        reply: t::dirlistplus3 {
            entries: List(vec![
                plus(5, b"with", Some(b"handle-5")),
                plus(6, b"without", None),
            ]),
            eof: false,
        },
    }));
    let Res::Readdirplus(NfsResult::Ok(r)) = same_res(Proc::READDIRPLUS, &b) else {
        panic!()
    };
    assert_eq!(r.reply.entries[0].name_handle, Some(Fh(b"handle-5")));
    assert_eq!(r.reply.entries[1].cookie, 106);
    let b = packed(&t::READDIRPLUS3res::Err((
        t::nfsstat3::NFS3ERR_TOOSMALL,
        t::READDIRPLUS3resfail::default(),
    )));
    same_res(Proc::READDIRPLUS, &b);
}

#[test]
fn fs_replies_packed_by_nfs3_types_reencode_identically() {
    let b = packed(&t::FSINFO3res::Ok(t::FSINFO3resok {
        obj_attributes: t::Nfs3Option::Some(fattr(t::ftype3::NF3DIR, 1)),
        rtmax: 1048576,
        rtpref: 524288,
        rtmult: 4096,
        wtmax: 1048576,
        wtpref: 262144,
        wtmult: 512,
        dtpref: 8192,
        maxfilesize: 1 << 50,
        time_delta: t::nfstime3 {
            seconds: 0,
            nseconds: 1000,
        },
        properties: t::FSF3_LINK | t::FSF3_CANSETTIME,
    }));
    let Res::Fsinfo(NfsResult::Ok(r)) = same_res(Proc::FSINFO, &b) else {
        panic!()
    };
    assert_eq!(
        (r.rtmax, r.rtpref, r.wtmax, r.wtpref, r.wtmult),
        (1048576, 524288, 1048576, 262144, 512)
    );
    let b = packed(&t::FSINFO3res::Err((
        t::nfsstat3::NFS3ERR_STALE,
        t::FSINFO3resfail::default(),
    )));
    same_res(Proc::FSINFO, &b);

    let b = packed(&t::FSSTAT3res::Ok(t::FSSTAT3resok {
        obj_attributes: t::Nfs3Option::None,
        tbytes: 1,
        fbytes: 2,
        abytes: 3,
        tfiles: 4,
        ffiles: 5,
        afiles: 6,
        invarsec: 7,
    }));
    assert!(matches!(same_res(Proc::FSSTAT, &b), Res::Fsstat(NfsResult::Ok(r)) if r.afiles == 6));
    let b = packed(&t::FSSTAT3res::Err((
        t::nfsstat3::NFS3ERR_IO,
        t::FSSTAT3resfail::default(),
    )));
    same_res(Proc::FSSTAT, &b);

    let b = packed(&t::PATHCONF3res::Ok(t::PATHCONF3resok {
        obj_attributes: t::Nfs3Option::Some(fattr(t::ftype3::NF3DIR, 1)),
        linkmax: 65000,
        name_max: 255,
        no_trunc: true,
        chown_restricted: false,
        case_insensitive: true,
        case_preserving: false,
    }));
    assert!(
        matches!(same_res(Proc::PATHCONF, &b), Res::Pathconf(NfsResult::Ok(r)) if r.case_insensitive && !r.case_preserving)
    );
    let b = packed(&t::PATHCONF3res::Err((
        t::nfsstat3::NFS3ERR_BADHANDLE,
        t::PATHCONF3resfail::default(),
    )));
    same_res(Proc::PATHCONF, &b);
}

#[test]
fn mount_messages_packed_by_nfs3_types_reencode_identically() {
    let b = packed(&m::dirpath(Opaque::borrowed(b"/export/data")));
    let args = MountArgs::decode(MountProc::MNT, &b).unwrap();
    assert_eq!(args, MountArgs::Mnt(b"/export/data"));
    let mut out = BytesMut::new();
    args.encode(&mut out);
    assert_eq!(out, b);

    let check_res = |proc: MountProc, b: &[u8]| {
        let res = MountRes::decode(proc, b).unwrap_or_else(|e| panic!("{proc}: {e}"));
        let mut out = BytesMut::new();
        res.encode(&mut out);
        assert_eq!(out, b, "{proc}");
        format!("{res:?}")
    };
    let b = packed(&m::mountres3::Ok(m::mountres3_ok {
        fhandle: m::fhandle3(Opaque::borrowed(b"root-fh-of-export")),
        auth_flavors: vec![1, 390003, 390004],
    }));
    let Ok(MountRes::Mnt(Mountres3::Ok(ok))) = MountRes::decode(MountProc::MNT, &b) else {
        panic!()
    };
    assert_eq!(
        (ok.fhandle, &ok.auth_flavors[..]),
        (Fh(b"root-fh-of-export"), &[1, 390003, 390004][..])
    );
    check_res(MountProc::MNT, &b);
    let b = packed(&m::mountres3::Err(m::mountstat3::MNT3ERR_ACCES));
    assert_eq!(
        MountRes::decode(MountProc::MNT, &b).unwrap(),
        MountRes::Mnt(Mountres3::Fail(Mountstat3::ACCES))
    );
    check_res(MountProc::MNT, &b);

    let node = |dir: &'static [u8], groups: Vec<&'static [u8]>| m::export_node {
        ex_dir: m::dirpath(Opaque::borrowed(dir)),
        ex_groups: List(
            groups
                .into_iter()
                .map(|g| m::name(Opaque::borrowed(g)))
                .collect(),
        ),
    };
    let b = packed(&List(vec![
        node(b"/a", vec![b"host1", b"*.lan"]),
        node(b"/bb", vec![]),
    ]));
    let dbg = check_res(MountProc::EXPORT, &b);
    assert!(dbg.contains("Export"), "{dbg}");

    let b = packed(&List(vec![m::mountbody {
        ml_hostname: m::name(Opaque::borrowed(b"client")),
        ml_directory: m::dirpath(Opaque::borrowed(b"/a")),
    }]));
    check_res(MountProc::DUMP, &b);
}
