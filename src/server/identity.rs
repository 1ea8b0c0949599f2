//! Credential rewriting: the client's AUTH_SYS credential becomes the account's.
//!
//! The call record is rebuilt with a new credential (the header before it and the
//! verifier and arguments after it are copied unchanged). The client's stamp and machine
//! name are kept (servers log them); uid, gid and groups come from the account.

use bytes::{BufMut, BytesMut};

use crate::config::{Account, Mapping};
use crate::rpc::CallHeader;
use crate::rpc::msg::AuthFlavor;
use crate::xdr::{Reader, XdrWrite, pad};

/// Most supplementary groups AUTH_SYS carries (RFC 5531 appendix A).
const MAX_GIDS: usize = 16;
/// Longest machine name in AUTH_SYS.
const MAX_MACHINE_NAME: usize = 255;

/// Why a call was refused before reaching the server (an RPC AUTH_ERROR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// AUTH_NONE where the account says refuse, or a flavor we cannot map (GSS, DH):
    /// AUTH_TOOWEAK.
    TooWeak,
    /// An AUTH_SYS body that does not decode: AUTH_BADCRED.
    BadCred,
}

impl Denied {
    /// The MSG_DENIED / AUTH_ERROR reply.
    pub fn reply(self, xid: u32) -> BytesMut {
        let mut b = BytesMut::with_capacity(20);
        b.put_u32(xid);
        b.put_u32(1); // REPLY
        b.put_u32(1); // MSG_DENIED
        b.put_u32(1); // AUTH_ERROR
        b.put_u32(match self {
            Denied::BadCred => 1, // AUTH_BADCRED
            Denied::TooWeak => 5, // AUTH_TOOWEAK
        });
        b
    }
}

/// The AUTH_SYS fields we keep from the client.
struct SysCred<'a> {
    stamp: u32,
    machine: &'a [u8],
    uid: u32,
    gid: u32,
    gids: Vec<u32>,
}

fn parse_sys(body: &[u8]) -> Option<SysCred<'_>> {
    let mut r = Reader::new(body);
    let stamp = r.u32().ok()?;
    let machine = r.opaque(MAX_MACHINE_NAME).ok()?;
    let uid = r.u32().ok()?;
    let gid = r.u32().ok()?;
    let n = r.u32().ok()? as usize;
    if n > MAX_GIDS {
        return None;
    }
    let mut gids = Vec::with_capacity(n);
    for _ in 0..n {
        gids.push(r.u32().ok()?);
    }
    r.finish().ok()?;
    Some(SysCred {
        stamp,
        machine,
        uid,
        gid,
        gids,
    })
}

/// (uid, gid, groups) the account gives a client claiming `uid`, `gid`, `gids`.
pub fn map_ids(a: &Account, uid: u32, gid: u32, gids: &[u32]) -> (u32, u32, Vec<u32>) {
    let (mut u, mut g, mut gs) = match &a.mapping {
        Mapping::Fixed { uid, gid, gids } => (*uid, *gid, gids.clone()),
        Mapping::Table { uids, gids: gmap } => (
            uids.get(&uid).copied().unwrap_or(a.squash_uid),
            gmap.get(&gid).copied().unwrap_or(a.squash_gid),
            gids.iter().filter_map(|g| gmap.get(g).copied()).collect(),
        ),
    };
    // Belt and braces: validation refuses mappings to 0 without allow_root.
    if u == 0 && !a.allow_root {
        u = a.squash_uid;
        g = a.squash_gid;
        gs.clear();
    }
    gs.truncate(MAX_GIDS);
    (u, g, gs)
}

/// The account's AUTH_SYS credential body for a client credential (`flavor`, `body`).
/// The client's stamp and machine name are kept.
pub fn mapped_sys_body(a: &Account, flavor: u32, body: &[u8]) -> Result<BytesMut, Denied> {
    let (stamp, machine, ids) = match AuthFlavor(flavor) {
        AuthFlavor::SYS => {
            let c = parse_sys(body).ok_or(Denied::BadCred)?;
            (c.stamp, c.machine, map_ids(a, c.uid, c.gid, &c.gids))
        }
        AuthFlavor::NONE if a.map_auth_none => (
            0,
            &b"gridvfs"[..],
            map_ids(a, a.squash_uid, a.squash_gid, &[]),
        ),
        _ => return Err(Denied::TooWeak),
    };
    let (uid, gid, gids) = ids;
    let mut cred = BytesMut::with_capacity(32 + machine.len() + 4 * gids.len());
    cred.put_u32(stamp);
    cred.put_xdr_opaque(machine);
    cred.put_u32(uid);
    cred.put_u32(gid);
    cred.put_u32(gids.len() as u32);
    for g in &gids {
        cred.put_u32(*g);
    }
    Ok(cred)
}

/// How an account's credential goes into a call record: the record's first `keep_from`
/// bytes (the call header and the client's credential) give way to `head` (the same
/// header and the account's credential); the verifier and arguments stay where they are.
#[derive(Debug)]
pub struct Rewrite {
    head: BytesMut,
    keep_from: usize,
}

impl Rewrite {
    /// Leaves the record as it is.
    pub fn none() -> Rewrite {
        Rewrite {
            head: BytesMut::new(),
            keep_from: 0,
        }
    }

    /// The record with the new credential. When the new head is no longer than the old
    /// one (the usual case) it is written in place and the record's start advances: the
    /// arguments — a WRITE's data — are not copied. Otherwise one copy.
    pub fn apply(self, mut rec: BytesMut) -> BytesMut {
        let n = self.head.len();
        if n <= self.keep_from {
            let start = self.keep_from - n;
            rec[start..self.keep_from].copy_from_slice(&self.head);
            bytes::Buf::advance(&mut rec, start);
            rec
        } else {
            let mut out = BytesMut::with_capacity(rec.len() - self.keep_from + n);
            out.extend_from_slice(&self.head);
            out.extend_from_slice(&rec[self.keep_from..]);
            out
        }
    }
}

/// The rewrite that replaces a call's credential by the account's.
pub fn credential_rewrite(a: &Account, rec: &[u8], h: &CallHeader<'_>) -> Result<Rewrite, Denied> {
    let cred = mapped_sys_body(a, h.cred.flavor.0, h.cred.body)?;
    // The header before the credential is 6 words; the verifier sits right before
    // the arguments.
    const HEAD: usize = 24;
    let verf_at = h.args_at - 8 - h.verf.body.len() - pad(h.verf.body.len());
    let mut head = BytesMut::with_capacity(HEAD + 8 + cred.len());
    head.extend_from_slice(&rec[..HEAD]);
    head.put_u32(AuthFlavor::SYS.0);
    head.put_xdr_opaque(&cred);
    Ok(Rewrite {
        head,
        keep_from: verf_at,
    })
}

/// The call record with its credential replaced by the account's (a copy).
pub fn rewrite_credential(a: &Account, rec: &[u8], h: &CallHeader<'_>) -> Result<BytesMut, Denied> {
    Ok(credential_rewrite(a, rec, h)?.apply(BytesMut::from(rec)))
}
