//! Round trips of every NFSv3 call and reply body, and the ways a hostile or broken peer
//! can try to make the decoder panic, over-allocate or accept garbage.

use bytes::{BufMut, BytesMut};

use super::samples::{self, FH};
use super::*;
use crate::xdr::{Encode, XdrWrite};

fn encode_args(a: &Args<'_>) -> BytesMut {
    let mut b = BytesMut::new();
    a.encode(&mut b);
    b
}

fn encode_res(r: &Res<'_>) -> BytesMut {
    let mut b = BytesMut::new();
    r.encode(&mut b);
    b
}

/// Checks that `decode` fails on every strict prefix of `body` and on `body` plus four
/// trailing bytes.
fn assert_rejects_truncated_and_trailing(
    body: &[u8],
    decode: impl Fn(&[u8]) -> Result<(), DecodeError>,
) {
    for n in 0..body.len() {
        let r = decode(&body[..n]);
        assert!(
            matches!(r, Err(DecodeError::Xdr(XdrError::Short { .. }))),
            "prefix of {n}/{} bytes gave {r:?}",
            body.len()
        );
    }
    let mut long = body.to_vec();
    long.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(
        decode(&long).unwrap_err(),
        DecodeError::Xdr(XdrError::Trailing { left: 4 })
    );
}

#[test]
fn every_call_round_trips_byte_exactly() {
    for args in samples::all_args() {
        let proc = args.proc();
        let body = encode_args(&args);
        assert_eq!(body.len() % 4, 0, "{proc}");
        let decoded = Args::decode(proc, &body).unwrap_or_else(|e| panic!("{proc}: {e}"));
        assert_eq!(decoded, args, "{proc}");
        assert_eq!(encode_args(&decoded), body, "{proc}");
        assert_rejects_truncated_and_trailing(&body, |b| Args::decode(proc, b).map(drop));
    }
}

#[test]
fn every_reply_round_trips_byte_exactly() {
    for res in samples::all_res() {
        let proc = res.proc();
        let body = encode_res(&res);
        assert_eq!(body.len() % 4, 0, "{proc}");
        let decoded = Res::decode(proc, &body).unwrap_or_else(|e| panic!("{proc}: {e}"));
        assert_eq!(decoded, res, "{proc}");
        assert_eq!(encode_res(&decoded), body, "{proc}");
        assert_rejects_truncated_and_trailing(&body, |b| Res::decode(proc, b).map(drop));
    }
}

#[test]
fn samples_cover_every_procedure_and_both_result_arms() {
    let args: Vec<Proc> = samples::all_args().iter().map(Args::proc).collect();
    let res = samples::all_res();
    for proc in Proc::ALL {
        assert!(proc.is_known());
        assert!(args.contains(&proc), "no sample call for {proc}");
        if proc == Proc::NULL {
            continue;
        }
        let ok = res
            .iter()
            .any(|r| r.proc() == proc && r.status() == Some(Nfsstat3::OK));
        let fail = res
            .iter()
            .any(|r| r.proc() == proc && r.status() != Some(Nfsstat3::OK));
        assert!(ok && fail, "{proc}: ok arm {ok}, fail arm {fail}");
    }
}

#[test]
fn unknown_procedure_is_reported_as_such() {
    let err = DecodeError::UnknownProc {
        program: PROGRAM,
        proc: 22,
    };
    assert_eq!(Args::decode(Proc(22), &[]).unwrap_err(), err);
    assert_eq!(Res::decode(Proc(22), &[]).unwrap_err(), err);
    assert!(!Proc(22).is_known());
    assert_eq!(Proc(22).name(), "UNKNOWN");
    assert_eq!(Proc::READDIRPLUS.to_string(), "READDIRPLUS");
    assert_eq!(Proc::ALL[21], Proc::COMMIT);
}

#[test]
fn write_payload_is_borrowed_not_copied() {
    let data = vec![0xabu8; 65536];
    let body = encode_args(&Args::Write(WriteArgs {
        file: FH,
        offset: 0,
        count: data.len() as u32,
        stable: StableHow::UNSTABLE,
        data: &data,
    }));
    let Args::Write(w) = Args::decode(Proc::WRITE, &body).unwrap() else {
        panic!("not WRITE");
    };
    assert!(body.as_ptr_range().contains(&w.data.as_ptr()));
    assert_eq!(w.data.len(), data.len());
}

#[test]
fn fhandle_of_65_bytes_rejected() {
    let mut b = BytesMut::new();
    b.put_xdr_opaque(&[1u8; 65]);
    assert_eq!(
        Args::decode(Proc::GETATTR, &b).unwrap_err(),
        DecodeError::Xdr(XdrError::TooLong {
            at: 0,
            len: 65,
            max: NFS3_FHSIZE
        })
    );
    // The same in a reply: LOOKUP's object handle.
    let mut b = BytesMut::new();
    b.put_xdr_u32(0);
    b.put_xdr_opaque(&[1u8; 65]);
    b.put_bytes(0, 8);
    assert!(matches!(
        Res::decode(Proc::LOOKUP, &b),
        Err(DecodeError::Xdr(XdrError::TooLong { len: 65, .. }))
    ));
}

/// A body whose only length field says 0xffff_ffff, followed by `tail`.
fn huge_len_after(prefix: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut b = prefix.to_vec();
    b.extend_from_slice(&[0xff; 4]);
    b.extend_from_slice(tail);
    b
}

#[test]
fn length_of_0xffffffff_rejected_without_allocating() {
    let mut fh = BytesMut::new();
    FH.encode(&mut fh);
    // LOOKUP name: over the name bound.
    let b = huge_len_after(&fh, b"abcd");
    assert!(matches!(
        Args::decode(Proc::LOOKUP, &b),
        Err(DecodeError::Xdr(XdrError::TooLong {
            max: MAX_NAME_LEN,
            ..
        }))
    ));
    // WRITE whose count and data length both claim 4 GiB: more than the message holds.
    let mut w = fh.to_vec();
    w.extend_from_slice(&[0; 8]); // offset
    w.extend_from_slice(&[0xff; 4]); // count
    w.extend_from_slice(&[0, 0, 0, 0]); // stable
    let b = huge_len_after(&w, b"abcd");
    assert!(matches!(
        Args::decode(Proc::WRITE, &b),
        Err(DecodeError::Xdr(XdrError::Short { .. }))
    ));
    // READ reply claiming 4 GiB of data.
    let b = huge_len_after(
        &[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1],
        b"x",
    );
    assert!(matches!(
        Res::decode(Proc::READ, &b),
        Err(DecodeError::Xdr(XdrError::Short { .. }))
    ));
    // SYMLINK target: over the path bound.
    let mut s = fh.clone();
    s.put_xdr_opaque(b"l");
    s.extend_from_slice(&[0; 24]); // sattr3: nothing set
    let b = huge_len_after(&s, b"");
    assert!(matches!(
        Args::decode(Proc::SYMLINK, &b),
        Err(DecodeError::Xdr(XdrError::TooLong {
            max: MAX_PATH_LEN,
            ..
        }))
    ));
    // GETATTR handle.
    assert!(matches!(
        Args::decode(Proc::GETATTR, &huge_len_after(&[], b"")),
        Err(DecodeError::Xdr(XdrError::TooLong {
            max: NFS3_FHSIZE,
            ..
        }))
    ));
}

#[test]
fn readdir_entry_name_over_the_bound_rejected() {
    let mut b = BytesMut::new();
    b.put_xdr_u32(0); // NFS3_OK
    b.put_xdr_bool(false); // dir_attributes
    b.put_xdr_fixed(&[0; 8]); // cookieverf
    b.put_xdr_bool(true); // an entry follows
    b.put_xdr_u64(5);
    b.put_xdr_opaque(&vec![b'n'; MAX_NAME_LEN + 1]);
    b.put_xdr_u64(1);
    b.put_xdr_bool(false);
    b.put_xdr_bool(true);
    assert!(matches!(
        Res::decode(Proc::READDIR, &b),
        Err(DecodeError::Xdr(XdrError::TooLong { len: 1025, .. }))
    ));
}

fn create_body(mode: u32) -> BytesMut {
    let mut b = encode_args(&Args::Lookup(LookupArgs {
        what: samples::dirop(b"f"),
    }));
    b.put_xdr_u32(mode);
    b.put_bytes(0, 24);
    b
}

#[test]
fn unknown_createmode_rejected() {
    assert!(Args::decode(Proc::CREATE, &create_body(1)).is_ok());
    let b = create_body(3);
    assert!(matches!(
        Args::decode(Proc::CREATE, &b),
        Err(DecodeError::Xdr(XdrError::BadValue {
            what: "createmode3",
            value: 3,
            ..
        }))
    ));
}

#[test]
fn mknod_with_unknown_ftype_rejected() {
    for ftype in [0, 8, 0xffff_ffff] {
        let b = create_body(ftype);
        assert!(
            matches!(
                Args::decode(Proc::MKNOD, &b),
                Err(DecodeError::Xdr(XdrError::BadValue { what: "ftype3", .. }))
            ),
            "ftype {ftype}"
        );
    }
    // NF3DIR is a real ftype3 that takes the void arm; the 24 bytes left over are trailing.
    let mut b = create_body(Ftype3::DIR.0);
    b.truncate(b.len() - 24);
    let Args::Mknod(m) = Args::decode(Proc::MKNOD, &b).unwrap() else {
        panic!("not MKNOD");
    };
    assert_eq!(m.what, Mknoddata3::NoData(Ftype3::DIR));
}

#[test]
fn setattr_with_unknown_time_how_rejected() {
    let mut b = encode_args(&Args::Getattr(GetattrArgs { object: FH }));
    b.put_bytes(0, 16); // mode, uid, gid, size: not set
    b.put_xdr_u32(7); // atime: no such time_how
    b.put_bytes(0, 8);
    assert!(matches!(
        Args::decode(Proc::SETATTR, &b),
        Err(DecodeError::Xdr(XdrError::BadValue {
            what: "time_how",
            value: 7,
            ..
        }))
    ));
}

#[test]
fn write_count_must_match_data_length() {
    let body = |count: u32, data: &[u8]| {
        encode_args(&Args::Write(WriteArgs {
            file: FH,
            offset: 0,
            count,
            stable: StableHow::FILE_SYNC,
            data,
        }))
    };
    assert!(matches!(
        Args::decode(Proc::WRITE, &body(4, b"12345678")),
        Err(DecodeError::Xdr(XdrError::TooLong { len: 8, max: 4, .. }))
    ));
    assert!(matches!(
        Args::decode(Proc::WRITE, &body(9, b"12345678")),
        Err(DecodeError::Xdr(XdrError::BadValue { value: 8, .. }))
    ));
    assert!(Args::decode(Proc::WRITE, &body(8, b"12345678")).is_ok());
}

#[test]
fn read_reply_count_must_match_data_length() {
    let body = |count: u32| {
        encode_res(&Res::Read(NfsResult::Ok(ReadResOk {
            file_attributes: None,
            count,
            eof: false,
            data: b"abc",
        })))
    };
    assert!(Res::decode(Proc::READ, &body(3)).is_ok());
    assert!(Res::decode(Proc::READ, &body(2)).is_err());
    assert!(Res::decode(Proc::READ, &body(4)).is_err());
}

#[test]
fn null_bodies_are_empty() {
    assert_eq!(Args::decode(Proc::NULL, &[]).unwrap(), Args::Null);
    assert_eq!(Res::decode(Proc::NULL, &[]).unwrap(), Res::Null);
    assert!(Args::decode(Proc::NULL, &[0, 0, 0, 0]).is_err());
    assert_eq!(Res::Null.status(), None);
}

#[test]
fn fsinfo_transfer_sizes_can_be_rewritten() {
    let body = encode_res(&Res::Fsinfo(NfsResult::Ok(samples::fsinfo_ok())));
    let mut res = Res::decode(Proc::FSINFO, &body).unwrap();
    if let Res::Fsinfo(NfsResult::Ok(ok)) = &mut res {
        ok.rtmax = ok.rtmax.min(65536);
        ok.rtpref = ok.rtpref.min(65536);
        ok.wtmax = ok.wtmax.min(32768);
        ok.wtpref = ok.wtpref.min(32768);
    }
    let out = encode_res(&res);
    assert_eq!(out.len(), body.len());
    // status 4 + post_op_attr 4 + 84, then rtmax, rtpref, rtmult, wtmax, wtpref.
    let word = |i: usize| u32::from_be_bytes(out[92 + 4 * i..96 + 4 * i].try_into().unwrap());
    assert_eq!(
        [word(0), word(1), word(2), word(3), word(4)],
        [65536, 65536, 4096, 32768, 32768]
    );
    // Everything else is untouched.
    assert_eq!(out[..92], body[..92]);
    assert_eq!(out[112..], body[112..]);
}

#[test]
fn args_name_their_handles() {
    for args in samples::all_args() {
        match args.proc() {
            Proc::NULL => assert_eq!(args.fh(), None),
            Proc::GETATTR => assert!(args.fh().is_some()),
            Proc::RENAME | Proc::LINK => {
                assert_eq!(args.fh(), Some(FH));
                assert_eq!(args.fh2(), Some(samples::FH2));
            }
            p => {
                assert_eq!(args.fh(), Some(FH), "{p}");
                assert_eq!(args.fh2(), None, "{p}");
            }
        }
    }
    let lookup = Args::Lookup(LookupArgs {
        what: samples::dirop(b"x"),
    });
    assert_eq!(lookup.dirop().unwrap().name, b"x");
}

/// Corrupts every sample body word by word (and byte by byte) with values that tend to
/// break decoders: huge lengths, bad discriminants, zero. Nothing may panic, and a
/// corrupted body that still decodes must re-encode to a body that decodes to the same
/// value (padding aside, it is the same bytes).
#[test]
fn corrupted_bodies_never_panic() {
    let bodies = samples::all_args()
        .iter()
        .map(|a| (a.proc(), true, encode_args(a)))
        .chain(
            samples::all_res()
                .iter()
                .map(|r| (r.proc(), false, encode_res(r))),
        )
        .collect::<Vec<_>>();
    let check = |proc: Proc, call: bool, body: &[u8]| {
        if call {
            if let Ok(a) = Args::decode(proc, body) {
                let again = encode_args(&a);
                assert_eq!(again.len(), body.len(), "{proc}");
                assert_eq!(Args::decode(proc, &again).unwrap(), a, "{proc}");
            }
        } else if let Ok(r) = Res::decode(proc, body) {
            let again = encode_res(&r);
            assert_eq!(again.len(), body.len(), "{proc}");
            assert_eq!(Res::decode(proc, &again).unwrap(), r, "{proc}");
        }
    };
    for (proc, call, body) in &bodies {
        for word in (0..body.len()).step_by(4) {
            for v in [0u32, 1, 2, 3, 8, 0x7fff_ffff, 0xffff_ffff] {
                let mut b = body.to_vec();
                b[word..word + 4].copy_from_slice(&v.to_be_bytes());
                check(*proc, *call, &b);
            }
        }
        for byte in 0..body.len() {
            let mut b = body.to_vec();
            b[byte] ^= 0x80;
            check(*proc, *call, &b);
        }
    }
}
