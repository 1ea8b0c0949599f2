//! What to do with one call: answer it here (portmapper, RPC errors) or forward it, and
//! what to change in the reply on its way back (FSINFO transfer sizes).
//!
//! Arguments of every NFSv3 and MOUNT v3 call are decoded (bounded, zero-copy) before they
//! are forwarded, so a malformed call is answered GARBAGE_ARGS here and never reaches the
//! server. Unknown programs get PROG_UNAVAIL, other versions PROG_MISMATCH, unknown
//! procedures PROC_UNAVAIL. File handles and credentials are forwarded unchanged.

use bytes::BytesMut;
use tracing::debug;

use std::net::IpAddr;

use super::{drc, portmap};
use crate::metrics::Metrics;
use crate::nfs3::{self, Args, Proc, Res, mount};
use crate::rpc::msg::{
    AcceptStat, CallError, CallHeader, accepted_reply, prog_mismatch, rpc_mismatch,
};
use crate::rpc::{ReplyKind, parse_reply};
use crate::xdr::Reader;

/// Which next-hop endpoint a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Nfs,
    Mount,
}

/// The routing decision for one call record.
#[derive(Debug)]
pub enum Route {
    /// Answer with this reply (no upstream traffic).
    Reply(BytesMut),
    /// Forward the record as is; `proc_` tells `fix_reply` what the reply holds;
    /// `key` identifies an NFS call in the duplicate request cache.
    Forward {
        to: Target,
        proc_: Proc,
        key: Option<drc::Key>,
        /// Bytes this call will hold in memory: its record, or its expected reply if
        /// larger (READ, READDIR, READDIRPLUS, READLINK). Charged against
        /// `listen.max_buffered` while the call is in progress.
        cost: usize,
    },
    /// Nothing to answer (not a call, or no xid to answer to).
    Drop,
}

/// Decides what to do with one call record from a client at `peer`.
pub fn route(rec: &[u8], port: u16, peer: IpAddr, m: &Metrics) -> Route {
    let h = match CallHeader::parse(rec) {
        Ok(h) => h,
        Err(CallError::NoXid) | Err(CallError::NotACall { .. }) => {
            Metrics::inc(&m.garbage_args);
            return Route::Drop;
        }
        Err(CallError::RpcMismatch { xid }) => {
            Metrics::inc(&m.rpc_mismatch);
            return Route::Reply(rpc_mismatch(xid));
        }
        Err(CallError::Garbage { xid, err }) => {
            debug!(xid, error = %err, "malformed call header");
            Metrics::inc(&m.garbage_args);
            return Route::Reply(accepted_reply(xid, AcceptStat::GARBAGE_ARGS));
        }
    };
    let args = &rec[h.args_at..];
    match h.prog {
        nfs3::PROGRAM if h.vers == nfs3::VERSION => {
            let p = Proc(h.proc_);
            if !p.is_known() {
                Metrics::inc(&m.proc_unavail);
                return Route::Reply(accepted_reply(h.xid, AcceptStat::PROC_UNAVAIL));
            }
            m.count_nfs(p);
            let reply_bytes = match Args::decode(p, args) {
                Ok(a) => expected_reply(&a),
                Err(e) => {
                    debug!(xid = h.xid, proc_ = p.name(), error = %e, "undecodable NFS arguments");
                    Metrics::inc(&m.garbage_args);
                    return Route::Reply(accepted_reply(h.xid, AcceptStat::GARBAGE_ARGS));
                }
            };
            Route::Forward {
                to: Target::Nfs,
                proc_: p,
                key: Some(drc::Key::new(peer, &h, rec)),
                cost: rec.len().max(reply_bytes),
            }
        }
        nfs3::PROGRAM => {
            Metrics::inc(&m.prog_unavail);
            Route::Reply(prog_mismatch(h.xid, nfs3::VERSION, nfs3::VERSION))
        }
        mount::PROGRAM if h.vers == mount::VERSION => {
            let p = mount::MountProc(h.proc_);
            Metrics::inc(&m.mount);
            match mount::MountArgs::decode(p, args) {
                Ok(_) => Route::Forward {
                    to: Target::Mount,
                    proc_: Proc(h.proc_),
                    key: None,
                    cost: rec.len(),
                },
                Err(nfs3::DecodeError::UnknownProc { .. }) => {
                    Metrics::inc(&m.proc_unavail);
                    Route::Reply(accepted_reply(h.xid, AcceptStat::PROC_UNAVAIL))
                }
                Err(e) => {
                    debug!(xid = h.xid, error = %e, "undecodable MOUNT arguments");
                    Metrics::inc(&m.garbage_args);
                    Route::Reply(accepted_reply(h.xid, AcceptStat::GARBAGE_ARGS))
                }
            }
        }
        mount::PROGRAM => {
            Metrics::inc(&m.prog_unavail);
            Route::Reply(prog_mismatch(h.xid, mount::VERSION, mount::VERSION))
        }
        portmap::PROGRAM => {
            Metrics::inc(&m.portmap);
            Route::Reply(portmap::answer(h.xid, h.vers, h.proc_, args, port))
        }
        _ => {
            Metrics::inc(&m.prog_unavail);
            Route::Reply(accepted_reply(h.xid, AcceptStat::PROG_UNAVAIL))
        }
    }
}

/// Upper bound of the reply's size for calls whose reply can be large.
fn expected_reply(a: &Args<'_>) -> usize {
    // Room for the RPC header and attributes around the data.
    const OVERHEAD: usize = 512;
    match a {
        Args::Read(r) => r.count as usize + OVERHEAD,
        Args::Readdir(r) => r.count as usize + OVERHEAD,
        Args::Readdirplus(r) => r.maxcount as usize + OVERHEAD,
        Args::Readlink(_) => nfs3::MAX_PATH_LEN + OVERHEAD,
        _ => 0,
    }
}

/// Caps the count of a READ, or the size of a READDIR/READDIRPLUS reply, at `max_io`,
/// in the call record itself. The kernel client never asks for more than FSINFO
/// advertised, but other clients may, and the server may honour it: the reply would then
/// exceed `max_record` at this proxy or the next. A shorter reply is legal NFS (short
/// read, fewer entries), so clients cope.
pub fn clamp_counts(rec: &mut [u8], proc_: Proc, max_io: u32) {
    let Some(at) = count_offset(rec, proc_) else {
        return;
    };
    let v = u32::from_be_bytes(rec[at..at + 4].try_into().expect("4 bytes"));
    if v > max_io {
        rec[at..at + 4].copy_from_slice(&max_io.to_be_bytes());
    }
}

/// Where the count that bounds the reply sits in a READ/READDIR/READDIRPLUS call.
fn count_offset(rec: &[u8], proc_: Proc) -> Option<usize> {
    let h = CallHeader::parse(rec).ok()?;
    let mut r = Reader::new(&rec[h.args_at..]);
    r.opaque(nfs3::NFS3_FHSIZE).ok()?; // file or directory handle
    r.u64().ok()?; // offset or cookie
    match proc_ {
        Proc::READ => {}
        Proc::READDIR => {
            r.fixed(8).ok()?; // cookieverf
        }
        Proc::READDIRPLUS => {
            r.fixed(8).ok()?; // cookieverf
            r.u32().ok()?; // dircount: names only; maxcount bounds the reply
        }
        _ => return None,
    }
    let at = h.args_at + r.pos();
    (rec.len() >= at + 4).then_some(at)
}

/// Adjusts a forwarded call's reply in place. Today: FSINFO's transfer sizes are clamped
/// to `max_io` so clients never send a READ or WRITE the proxy would refuse.
pub fn fix_reply(to: Target, proc_: Proc, reply: &mut BytesMut, max_io: u32) {
    if to != Target::Nfs || proc_ != Proc::FSINFO {
        return;
    }
    let Ok((_, ReplyKind::Accepted { stat, results_at })) = parse_reply(reply) else {
        return;
    };
    if stat != AcceptStat::SUCCESS {
        return;
    }
    let mut res = match Res::decode(proc_, &reply[results_at..]) {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "FSINFO reply not decodable; forwarded unchanged");
            return;
        }
    };
    let Res::Fsinfo(nfs3::NfsResult::Ok(ok)) = &mut res else {
        return;
    };
    if ok.rtmax <= max_io && ok.wtmax <= max_io && ok.rtpref <= max_io && ok.wtpref <= max_io {
        return;
    }
    ok.rtmax = ok.rtmax.min(max_io);
    ok.rtpref = ok.rtpref.min(max_io);
    ok.wtmax = ok.wtmax.min(max_io);
    ok.wtpref = ok.wtpref.min(max_io);
    let mut out = BytesMut::with_capacity(results_at + 128);
    out.extend_from_slice(&reply[..results_at]);
    res.encode(&mut out);
    *reply = out;
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;
    use crate::rpc::msg::call_message;
    use crate::xdr::XdrWrite;

    fn call(proc_: Proc, tail: &[u32], count: u32) -> BytesMut {
        let mut a = BytesMut::new();
        a.put_xdr_opaque(&[9u8; 30]);
        a.put_u64(0);
        for &w in tail {
            a.put_u32(w);
        }
        a.put_u32(count);
        call_message(1, nfs3::PROGRAM, nfs3::VERSION, proc_.0, &a)
    }

    fn last_word(b: &[u8]) -> u32 {
        u32::from_be_bytes(b[b.len() - 4..].try_into().unwrap())
    }

    /// Regression: a READ asking for more than max_io drew a reply over max_record,
    /// which tore down the upstream link again and again.
    #[test]
    fn read_and_readdir_counts_are_capped_at_max_io() {
        for (p, tail) in [
            (Proc::READ, &[][..]),
            (Proc::READDIR, &[0, 0][..]),
            (Proc::READDIRPLUS, &[0, 0, 4096][..]),
        ] {
            let mut big = call(p, tail, 8 << 20);
            clamp_counts(&mut big, p, 1 << 20);
            assert_eq!(last_word(&big), 1 << 20, "{}", p.name());
            let args = &big[CallHeader::parse(&big).unwrap().args_at..];
            Args::decode(p, args).expect("still a valid call");
            let mut small = call(p, tail, 4096);
            clamp_counts(&mut small, p, 1 << 20);
            assert_eq!(last_word(&small), 4096);
        }
        let mut other = call(Proc::WRITE, &[], 8 << 20);
        let before = other.clone();
        clamp_counts(&mut other, Proc::WRITE, 1 << 20);
        assert_eq!(other, before, "only READ/READDIR/READDIRPLUS are touched");
    }
}
