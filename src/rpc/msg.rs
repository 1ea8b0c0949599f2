//! RPC call and reply headers (RFC 5531 §9). A call is parsed just far enough to route it
//! (xid, program, version, procedure, credential) and to find where its arguments start;
//! the credential is kept as raw bytes so it is carried to the next hop unchanged.
//! Replies the proxy makes itself (errors, portmapper, local answers) are built here.

use bytes::{BufMut, BytesMut};

use crate::xdr::{Reader, Result, XdrError, XdrWrite};

/// RPC protocol version (always 2).
pub const RPC_VERSION: u32 = 2;
/// Largest opaque_auth body (RFC 5531 §8.2).
pub const MAX_AUTH_BYTES: usize = 400;

const CALL: u32 = 0;
const REPLY: u32 = 1;
const MSG_ACCEPTED: u32 = 0;
const MSG_DENIED: u32 = 1;

/// Authentication flavors, as a newtype so unknown flavors pass through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFlavor(pub u32);

impl AuthFlavor {
    pub const NONE: AuthFlavor = AuthFlavor(0);
    pub const SYS: AuthFlavor = AuthFlavor(1);
}

/// A credential or verifier, borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpaqueAuth<'a> {
    pub flavor: AuthFlavor,
    pub body: &'a [u8],
}

impl<'a> OpaqueAuth<'a> {
    fn decode(r: &mut Reader<'a>) -> Result<Self> {
        let flavor = AuthFlavor(r.u32()?);
        let body = r.opaque(MAX_AUTH_BYTES)?;
        Ok(OpaqueAuth { flavor, body })
    }
}

/// `accept_stat` of an accepted reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptStat(pub u32);

impl AcceptStat {
    pub const SUCCESS: AcceptStat = AcceptStat(0);
    pub const PROG_UNAVAIL: AcceptStat = AcceptStat(1);
    pub const PROG_MISMATCH: AcceptStat = AcceptStat(2);
    pub const PROC_UNAVAIL: AcceptStat = AcceptStat(3);
    pub const GARBAGE_ARGS: AcceptStat = AcceptStat(4);
    pub const SYSTEM_ERR: AcceptStat = AcceptStat(5);
}

/// The parsed header of a call. `args_at` is the offset of the procedure's arguments.
#[derive(Debug, Clone, Copy)]
pub struct CallHeader<'a> {
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    pub cred: OpaqueAuth<'a>,
    pub verf: OpaqueAuth<'a>,
    pub args_at: usize,
}

/// Why a record is not a call we can answer at all.
#[derive(Debug, PartialEq, Eq)]
pub enum CallError {
    /// Too short or malformed to even have an xid: drop it (nothing to reply to).
    NoXid,
    /// Not a CALL message (a stray reply): ignore it.
    NotACall { xid: u32 },
    /// rpcvers != 2: answer RPC_MISMATCH.
    RpcMismatch { xid: u32 },
    /// The header is damaged after the xid: answer GARBAGE_ARGS.
    Garbage { xid: u32, err: XdrError },
}

impl<'a> CallHeader<'a> {
    pub fn parse(msg: &'a [u8]) -> std::result::Result<Self, CallError> {
        let mut r = Reader::new(msg);
        let xid = r.u32().map_err(|_| CallError::NoXid)?;
        let garbage = |err| CallError::Garbage { xid, err };
        let mtype = r.u32().map_err(garbage)?;
        if mtype != CALL {
            return Err(CallError::NotACall { xid });
        }
        if r.u32().map_err(garbage)? != RPC_VERSION {
            return Err(CallError::RpcMismatch { xid });
        }
        let prog = r.u32().map_err(garbage)?;
        let vers = r.u32().map_err(garbage)?;
        let proc_ = r.u32().map_err(garbage)?;
        let cred = OpaqueAuth::decode(&mut r).map_err(garbage)?;
        let verf = OpaqueAuth::decode(&mut r).map_err(garbage)?;
        Ok(CallHeader {
            xid,
            prog,
            vers,
            proc_,
            cred,
            verf,
            args_at: r.pos(),
        })
    }
}

/// What an upstream reply says, as far as the proxy needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// Accepted; `results_at` is where the procedure's results start.
    Accepted { stat: AcceptStat, results_at: usize },
    /// MSG_DENIED (RPC_MISMATCH or AUTH_ERROR).
    Denied,
}

/// Parses the header of a reply: its xid and kind.
pub fn parse_reply(msg: &[u8]) -> Result<(u32, ReplyKind)> {
    let mut r = Reader::new(msg);
    let xid = r.u32()?;
    let at = r.pos();
    let mtype = r.u32()?;
    if mtype != REPLY {
        return Err(XdrError::BadValue {
            at,
            what: "msg_type (expected REPLY)",
            value: mtype,
        });
    }
    let at = r.pos();
    match r.u32()? {
        MSG_ACCEPTED => {
            OpaqueAuth::decode(&mut r)?;
            let stat = AcceptStat(r.u32()?);
            Ok((
                xid,
                ReplyKind::Accepted {
                    stat,
                    results_at: r.pos(),
                },
            ))
        }
        MSG_DENIED => Ok((xid, ReplyKind::Denied)),
        value => Err(XdrError::BadValue {
            at,
            what: "reply_stat",
            value,
        }),
    }
}

/// Starts an accepted reply with an AUTH_NONE verifier; the caller appends results.
pub fn accepted_reply(xid: u32, stat: AcceptStat) -> BytesMut {
    let mut b = BytesMut::with_capacity(128);
    b.put_u32(xid);
    b.put_u32(REPLY);
    b.put_u32(MSG_ACCEPTED);
    b.put_u32(AuthFlavor::NONE.0);
    b.put_xdr_opaque(&[]);
    b.put_u32(stat.0);
    b
}

/// A PROG_MISMATCH reply naming the versions we do support.
pub fn prog_mismatch(xid: u32, low: u32, high: u32) -> BytesMut {
    let mut b = accepted_reply(xid, AcceptStat::PROG_MISMATCH);
    b.put_u32(low);
    b.put_u32(high);
    b
}

/// An RPC_MISMATCH denial (we speak RPC version 2 only).
pub fn rpc_mismatch(xid: u32) -> BytesMut {
    let mut b = BytesMut::with_capacity(24);
    b.put_u32(xid);
    b.put_u32(REPLY);
    b.put_u32(MSG_DENIED);
    b.put_u32(0); // RPC_MISMATCH
    b.put_u32(RPC_VERSION);
    b.put_u32(RPC_VERSION);
    b
}

/// Builds a call message (used by the proxy as a client: rpcbind registration, tests).
pub fn call_message(xid: u32, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> BytesMut {
    let mut b = BytesMut::with_capacity(40 + args.len());
    b.put_u32(xid);
    b.put_u32(CALL);
    b.put_u32(RPC_VERSION);
    b.put_u32(prog);
    b.put_u32(vers);
    b.put_u32(proc_);
    b.put_u32(AuthFlavor::NONE.0);
    b.put_xdr_opaque(&[]);
    b.put_u32(AuthFlavor::NONE.0);
    b.put_xdr_opaque(&[]);
    b.put_slice(args);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_header_round_trip() {
        let msg = call_message(7, 100003, 3, 1, &[0, 0, 0, 4, 1, 2, 3, 4]);
        let h = CallHeader::parse(&msg).unwrap();
        assert_eq!((h.xid, h.prog, h.vers, h.proc_), (7, 100003, 3, 1));
        assert_eq!(h.cred.flavor, AuthFlavor::NONE);
        assert_eq!(&msg[h.args_at..], &[0, 0, 0, 4, 1, 2, 3, 4]);
    }

    #[test]
    fn bad_calls_classified() {
        assert_eq!(CallHeader::parse(&[1, 2]).unwrap_err(), CallError::NoXid);
        let mut m = call_message(9, 1, 1, 1, &[]);
        m[7] = 1; // msg_type = REPLY
        assert_eq!(
            CallHeader::parse(&m).unwrap_err(),
            CallError::NotACall { xid: 9 }
        );
        let mut m = call_message(9, 1, 1, 1, &[]);
        m[11] = 3; // rpcvers = 3
        assert_eq!(
            CallHeader::parse(&m).unwrap_err(),
            CallError::RpcMismatch { xid: 9 }
        );
        let m = call_message(9, 1, 1, 1, &[]);
        assert!(matches!(
            CallHeader::parse(&m[..30]).unwrap_err(),
            CallError::Garbage { xid: 9, .. }
        ));
    }

    #[test]
    fn reply_parse() {
        let mut r = accepted_reply(5, AcceptStat::SUCCESS);
        r.put_u32(42);
        let (xid, kind) = parse_reply(&r).unwrap();
        assert_eq!(xid, 5);
        let ReplyKind::Accepted { stat, results_at } = kind else {
            panic!()
        };
        assert_eq!(stat, AcceptStat::SUCCESS);
        assert_eq!(&r[results_at..], &42u32.to_be_bytes());
        assert_eq!(
            parse_reply(&rpc_mismatch(6)).unwrap(),
            (6, ReplyKind::Denied)
        );
    }
}
