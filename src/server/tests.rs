use std::collections::BTreeMap;

use bytes::{BufMut, BytesMut};

use super::*;
use crate::config::Mapping;
use crate::rpc::msg::AuthFlavor;
use crate::xdr::XdrWrite;

fn account(mapping: Mapping) -> Account {
    Account {
        name: "grid".into(),
        keys: vec!["*".into()],
        mapping,
        squash_uid: 65534,
        squash_gid: 65534,
        allow_root: false,
        map_auth_none: false,
    }
}

fn fixed() -> Account {
    account(Mapping::Fixed {
        uid: 1000,
        gid: 100,
        gids: vec![100, 27],
    })
}

fn sys_call(proc_: u32, prog: u32, uid: u32, gid: u32, gids: &[u32], args: &[u8]) -> BytesMut {
    let mut cred = BytesMut::new();
    cred.put_u32(77); // stamp
    cred.put_xdr_opaque(b"compute-7");
    cred.put_u32(uid);
    cred.put_u32(gid);
    cred.put_u32(gids.len() as u32);
    for g in gids {
        cred.put_u32(*g);
    }
    let mut b = BytesMut::new();
    b.put_u32(0x1234); // xid
    b.put_u32(0); // CALL
    b.put_u32(2);
    b.put_u32(prog);
    b.put_u32(3); // NFS v3 and MOUNT v3 alike
    b.put_u32(proc_);
    b.put_u32(AuthFlavor::SYS.0);
    b.put_xdr_opaque(&cred);
    b.put_u32(0);
    b.put_xdr_opaque(&[]);
    b.put_slice(args);
    b
}

fn ids_of(rec: &[u8]) -> (u32, u32, Vec<u32>, Vec<u8>) {
    let h = CallHeader::parse(rec).unwrap();
    assert_eq!(h.cred.flavor, AuthFlavor::SYS);
    let c = identity_parse(h.cred.body);
    (c.0, c.1, c.2, rec[h.args_at..].to_vec())
}

fn identity_parse(body: &[u8]) -> (u32, u32, Vec<u32>) {
    let mut r = crate::xdr::Reader::new(body);
    r.u32().unwrap();
    r.opaque(255).unwrap();
    let uid = r.u32().unwrap();
    let gid = r.u32().unwrap();
    let n = r.u32().unwrap();
    let gids = (0..n).map(|_| r.u32().unwrap()).collect();
    (uid, gid, gids)
}

fn fh_args(fh: &[u8]) -> BytesMut {
    let mut a = BytesMut::new();
    a.put_xdr_opaque(fh);
    a
}

fn policy(dir: &Path) -> Policy {
    Policy::open(&ServerConfig {
        exports: vec!["/export".into()],
        state_dir: dir.to_path_buf(),
        tcp_account: None,
        ssh: None,
        accounts: vec![fixed()],
    })
    .unwrap()
}

#[test]
fn fixed_account_rewrites_every_uid_including_root() {
    let a = fixed();
    for uid in [0, 4242] {
        let rec = sys_call(1, nfs3::PROGRAM, uid, 0, &[0, 4], &fh_args(b"h"));
        let h = CallHeader::parse(&rec).unwrap();
        let out = rewrite_credential(&a, &rec, &h).unwrap();
        let (u, g, gs, args) = ids_of(&out);
        assert_eq!((u, g, gs), (1000, 100, vec![100, 27]));
        assert_eq!(args, fh_args(b"h").to_vec(), "arguments unchanged");
    }
}

#[test]
fn a_rewrite_moves_no_argument_bytes_unless_the_credential_grows() {
    // The account has two supplementary groups: a client credential with as many or
    // more is rewritten in place, one with fewer needs a longer head and one copy.
    let a = fixed();
    let data: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
    for (gids, in_place) in [
        (&[1, 2, 3, 4, 5][..], true),
        (&[0, 4][..], true),
        (&[][..], false),
    ] {
        let rec = sys_call(7, nfs3::PROGRAM, 4242, 0, gids, &data);
        let header = rec[..24].to_vec();
        let h = CallHeader::parse(&rec).unwrap();
        let rewrite = credential_rewrite(&a, &rec, &h).unwrap();
        let args_were_at = rec[rec.len() - data.len()..].as_ptr();
        let out = rewrite.apply(rec);
        assert_eq!(&out[..24], &header[..], "call header kept ({gids:?})");
        let (u, g, gs, args) = ids_of(&out);
        assert_eq!((u, g, gs), (1000, 100, vec![100, 27]), "{gids:?}");
        assert!(args == data, "arguments unchanged ({gids:?})");
        let args_now_at = out[out.len() - data.len()..].as_ptr();
        assert_eq!(args_now_at == args_were_at, in_place, "{gids:?}");
    }
    // NULL and other calls that keep their credential: the record as it was.
    let rec = sys_call(0, nfs3::PROGRAM, 0, 0, &[], b"");
    assert_eq!(Rewrite::none().apply(rec.clone()), rec);
}

#[test]
fn uid_table_maps_listed_ids_and_squashes_the_rest_and_root() {
    let a = account(Mapping::Table {
        uids: BTreeMap::from([(4242, 1001)]),
        gids: BTreeMap::from([(4242, 1001), (7, 70)]),
    });
    let rec = sys_call(1, nfs3::PROGRAM, 4242, 4242, &[7, 8], &fh_args(b"h"));
    let h = CallHeader::parse(&rec).unwrap();
    let (u, g, gs, _) = ids_of(&rewrite_credential(&a, &rec, &h).unwrap());
    assert_eq!((u, g, gs), (1001, 1001, vec![70]));
    let rec = sys_call(1, nfs3::PROGRAM, 0, 0, &[], &fh_args(b"h"));
    let h = CallHeader::parse(&rec).unwrap();
    let (u, g, _, _) = ids_of(&rewrite_credential(&a, &rec, &h).unwrap());
    assert_eq!((u, g), (65534, 65534), "root squashed");
}

#[test]
fn auth_none_refused_or_mapped() {
    let mut a = fixed();
    let rec = crate::rpc::msg::call_message(5, nfs3::PROGRAM, 3, 0, &[]);
    let h = CallHeader::parse(&rec).unwrap();
    assert_eq!(
        rewrite_credential(&a, &rec, &h).unwrap_err(),
        Denied::TooWeak
    );
    let denied = Denied::TooWeak.reply(5);
    assert_eq!(parse_reply(&denied).unwrap(), (5, ReplyKind::Denied));
    a.map_auth_none = true;
    let (u, _, _, _) = ids_of(&rewrite_credential(&a, &rec, &h).unwrap());
    assert_eq!(u, 1000);
}

#[test]
fn unissued_handles_are_stale_and_issued_ones_pass_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(dir.path());
    let a = fixed();
    // GETATTR of a handle nobody issued.
    let call = sys_call(
        1,
        nfs3::PROGRAM,
        4242,
        4242,
        &[],
        &fh_args(b"forged-handle"),
    );
    let Admit::Reply(r) = p.admit(&a, &call) else {
        panic!("forged handle forwarded")
    };
    let (_, ReplyKind::Accepted { results_at, .. }) = parse_reply(&r).unwrap() else {
        panic!()
    };
    let res = Res::decode(Proc::GETATTR, &r[results_at..]).unwrap();
    assert_eq!(res.status(), Some(Nfsstat3::STALE));
    // A MNT of the export issues its root handle.
    let mut mnt = sys_call(1, mount::PROGRAM, 0, 0, &[], &[]);
    mnt.put_xdr_opaque(b"/export/");
    assert!(matches!(p.admit(&a, &mnt), Admit::Forward(_)));
    let mut reply = accepted_reply(0x1234, AcceptStat::SUCCESS);
    MountRes::Mnt(Mountres3::Ok(mount::Mountres3Ok {
        fhandle: nfs3::Fh(b"root-handle"),
        auth_flavors: vec![1],
    }))
    .encode(&mut reply);
    assert!(p.observe(&mnt, &reply).is_none());
    let call = sys_call(1, nfs3::PROGRAM, 4242, 4242, &[], &fh_args(b"root-handle"));
    assert!(matches!(p.admit(&a, &call), Admit::Forward(_)));
    drop(p);
    let p = policy(dir.path());
    assert_eq!(p.issued(), 1);
    assert!(
        matches!(p.admit(&a, &call), Admit::Forward(_)),
        "survives a restart"
    );
}

#[test]
fn mnt_of_another_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(dir.path());
    let mut m = sys_call(1, mount::PROGRAM, 0, 0, &[], &[]);
    m.put_xdr_opaque(b"/etc");
    let Admit::Reply(r) = p.admit(&fixed(), &m) else {
        panic!("forwarded")
    };
    let (_, ReplyKind::Accepted { results_at, .. }) = parse_reply(&r).unwrap() else {
        panic!()
    };
    assert_eq!(
        MountRes::decode(MountProc::MNT, &r[results_at..]).unwrap(),
        MountRes::Mnt(Mountres3::Fail(Mountstat3::ACCES))
    );
}

#[test]
fn torn_handle_file_tail_is_cut_at_the_last_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handles");
    {
        let s = HandleSet::open(&path).unwrap();
        assert!(s.insert(b"one").unwrap());
        assert!(s.insert(b"two").unwrap());
        assert!(!s.insert(b"two").unwrap());
    }
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.set_len(len - 2).unwrap();
    drop(f);
    let s = HandleSet::open(&path).unwrap();
    assert!(s.contains(b"one") && !s.contains(b"two"));
    assert!(s.insert(b"three").unwrap());
    drop(s);
    let s = HandleSet::open(&path).unwrap();
    assert!(s.contains(b"one") && s.contains(b"three") && s.len() == 2);
}

#[test]
fn error_replies_decode_for_every_procedure() {
    for p in Proc::ALL.into_iter().skip(1) {
        let r = nfs_error(9, p, Nfsstat3::STALE);
        let (_, ReplyKind::Accepted { results_at, .. }) = parse_reply(&r).unwrap() else {
            panic!()
        };
        let res = Res::decode(p, &r[results_at..]).unwrap_or_else(|e| panic!("{}: {e}", p.name()));
        assert_eq!(res.status(), Some(Nfsstat3::STALE), "{}", p.name());
    }
}

#[test]
fn directories_below_an_export_mount_but_never_through_dotdot() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(dir.path());
    for (path, ok) in [
        (&b"/export"[..], true),
        (b"/export/", true),
        (b"/export/vm/images", true),
        (b"/exported", false),
        (b"/export/../etc", false),
        (b"/export/vm/..", false),
        (b"/", false),
    ] {
        assert_eq!(
            p.export_allowed(path),
            ok,
            "{}",
            String::from_utf8_lossy(path)
        );
    }
}

#[test]
fn handles_of_a_removed_export_are_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("handles");
    let both = [b"/export".to_vec(), b"/secret".to_vec()];
    {
        let s = HandleSet::open_for(&path, &both).unwrap();
        s.insert(b"secret-root").unwrap();
    }
    assert!(
        HandleSet::open_for(&path, &both)
            .unwrap()
            .contains(b"secret-root")
    );
    let s = HandleSet::open_for(&path, &[b"/export".to_vec()]).unwrap();
    assert!(
        !s.contains(b"secret-root"),
        "a handle of a removed export survived"
    );
}

/// The credential `gridvfs prefetch` sends for its requester is an AUTH_SYS body the
/// server role parses and maps like a client's.
#[test]
fn a_local_requesters_credential_is_mapped_like_a_clients() {
    use crate::server::identity::mapped_sys_body;
    let c = crate::upstream::calls::Cred::sys(4242, 4243, &[7]);
    let a = account(Mapping::Table {
        uids: BTreeMap::from([(4242, 1001)]),
        gids: BTreeMap::from([(4243, 1002), (7, 70)]),
    });
    let body = mapped_sys_body(&a, c.flavor, &c.body).unwrap();
    // stamp, machine name "gridvfs" (7 bytes + 1 of padding), uid, gid, 1 group.
    assert_eq!(&body[..4], &[0, 0, 0, 0]);
    assert_eq!(&body[8..15], b"gridvfs");
    let ids: Vec<u32> = body[16..]
        .chunks(4)
        .map(|w| u32::from_be_bytes(w.try_into().unwrap()))
        .collect();
    assert_eq!(ids, vec![1001, 1002, 1, 70]);
}
