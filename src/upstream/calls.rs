//! NFS calls a proxy makes on its own (cache gap fills, write-back, sidecar lookups, the
//! server side of the file channel): build the call with a credential, send it on an
//! `Upstream`, check the RPC and NFS status, retry NFS3ERR_JUKEBOX like a client would.

use bytes::{BufMut, BytesMut};

use super::Upstream;
use crate::nfs3::{
    self, Args, Fh, NfsResult, Nfsstat3, Proc, ReadArgs, Res, StableHow, WccData, WriteArgs,
};
use crate::rpc::{AcceptStat, CallHeader, ReplyKind, parse_reply};
use crate::xdr::XdrWrite;

/// An RPC credential (flavor and body) taken from a client's call, used again for the
/// calls the cache makes on the client's behalf (gap fills, write-back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cred {
    pub flavor: u32,
    pub body: Vec<u8>,
}

impl Cred {
    pub fn of(call: &[u8]) -> Option<Cred> {
        let h = CallHeader::parse(call).ok()?;
        Some(Cred {
            flavor: h.cred.flavor.0,
            body: h.cred.body.to_vec(),
        })
    }

    /// AUTH_SYS for `uid`, `gid` and supplementary `gids` (at most 16, as RFC 5531
    /// allows; more are dropped), machine name "gridvfs": the credential of a local
    /// requester (`gridvfs prefetch`).
    pub fn sys(uid: u32, gid: u32, gids: &[u32]) -> Cred {
        let gids = &gids[..gids.len().min(16)];
        let mut body = BytesMut::with_capacity(32 + 4 * gids.len());
        body.put_u32(0); // stamp
        body.put_xdr_opaque(b"gridvfs");
        body.put_u32(uid);
        body.put_u32(gid);
        body.put_u32(gids.len() as u32);
        for g in gids {
            body.put_u32(*g);
        }
        Cred {
            flavor: crate::rpc::msg::AuthFlavor::SYS.0,
            body: body.to_vec(),
        }
    }

    /// As stored in the cache directory: flavor, then the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = self.flavor.to_be_bytes().to_vec();
        v.extend_from_slice(&self.body);
        v
    }

    pub fn from_bytes(b: &[u8]) -> Option<Cred> {
        let (f, body) = b.split_first_chunk::<4>()?;
        (body.len() <= 400).then(|| Cred {
            flavor: u32::from_be_bytes(*f),
            body: body.to_vec(),
        })
    }
}

/// Why a call the cache made on its own did not succeed.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The next hop answered with this NFS status.
    Status(Nfsstat3),
    /// The reply was not a successful RPC, or did not decode.
    Rpc(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Status(s) => f.write_str(s.name()),
            CallError::Rpc(e) => f.write_str(e),
        }
    }
}

impl CallError {
    /// The status to give a client for it.
    pub fn status(&self) -> Nfsstat3 {
        match self {
            CallError::Status(s) => *s,
            CallError::Rpc(_) => Nfsstat3::IO,
        }
    }

    /// The file no longer exists at the next hop.
    pub fn gone(&self) -> bool {
        matches!(self, CallError::Status(s) if *s == Nfsstat3::STALE || *s == Nfsstat3::BADHANDLE)
    }
}

/// Builds an NFSv3 call with `cred` (the xid is the link's business).
pub fn call_msg(cred: &Cred, args: &Args<'_>) -> BytesMut {
    let mut b = BytesMut::with_capacity(128 + cred.body.len());
    b.put_u32(0);
    b.put_u32(0); // CALL
    b.put_u32(crate::rpc::msg::RPC_VERSION);
    b.put_u32(nfs3::PROGRAM);
    b.put_u32(nfs3::VERSION);
    b.put_u32(args.proc().0);
    b.put_u32(cred.flavor);
    b.put_xdr_opaque(&cred.body);
    b.put_u32(0); // verifier: AUTH_NONE
    b.put_xdr_opaque(&[]);
    args.encode(&mut b);
    b
}

/// NFS3ERR_JUKEBOX ("busy, try later") is retried this often, this far apart.
const JUKEBOX_RETRIES: u32 = 120;
const JUKEBOX_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Sends a call and returns the reply with the offset of its results, or the failure.
/// A server that answers NFS3ERR_JUKEBOX is asked again a little later, as a client would.
pub async fn nfs_call(
    up: &Upstream,
    cred: &Cred,
    args: &Args<'_>,
) -> Result<(BytesMut, usize), CallError> {
    let mut tries = 0;
    loop {
        match nfs_call_once(up, cred, args).await {
            Err(CallError::Status(s)) if s == Nfsstat3::JUKEBOX && tries < JUKEBOX_RETRIES => {
                tries += 1;
                tokio::time::sleep(JUKEBOX_WAIT).await;
            }
            r => return r,
        }
    }
}

async fn nfs_call_once(
    up: &Upstream,
    cred: &Cred,
    args: &Args<'_>,
) -> Result<(BytesMut, usize), CallError> {
    let reply = up
        .call(call_msg(cred, args))
        .await
        .map_err(|e| CallError::Rpc(e.to_string()))?;
    match parse_reply(&reply) {
        Ok((_, ReplyKind::Accepted { stat, results_at })) if stat == AcceptStat::SUCCESS => {
            let status = reply
                .get(results_at..results_at + 4)
                .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
                .ok_or_else(|| CallError::Rpc("empty NFS reply".into()))?;
            if status != Nfsstat3::OK.0 {
                return Err(CallError::Status(Nfsstat3(status)));
            }
            Ok((reply, results_at))
        }
        Ok((_, ReplyKind::Accepted { stat, .. })) => {
            Err(CallError::Rpc(format!("RPC accept status {}", stat.0)))
        }
        Ok((_, ReplyKind::Denied)) => Err(CallError::Rpc("RPC call denied".into())),
        Err(e) => Err(CallError::Rpc(format!("bad reply: {e}"))),
    }
}

/// Reads `len` bytes at `off` from the next hop (short at its end of file).
pub async fn read_upstream(
    up: &Upstream,
    cred: &Cred,
    fh: &[u8],
    off: u64,
    len: u32,
) -> Result<Vec<u8>, CallError> {
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u32) < len {
        let args = Args::Read(ReadArgs {
            file: Fh(fh),
            offset: off + out.len() as u64,
            count: len - out.len() as u32,
        });
        let (reply, at) = nfs_call(up, cred, &args).await?;
        let Ok(Res::Read(NfsResult::Ok(ok))) = Res::decode(Proc::READ, &reply[at..]) else {
            return Err(CallError::Rpc("undecodable READ reply".into()));
        };
        out.extend_from_slice(ok.data);
        if ok.eof || ok.data.is_empty() {
            break;
        }
    }
    Ok(out)
}

/// Writes `data` at `off`; returns the next hop's verifier and post-op attributes.
pub async fn write_upstream(
    up: &Upstream,
    cred: &Cred,
    fh: &[u8],
    off: u64,
    data: &[u8],
    stable: StableHow,
) -> Result<([u8; 8], WccData), CallError> {
    let mut done = 0usize;
    let mut verf = [0; 8];
    let mut wcc = WccData::default();
    while done < data.len() {
        let args = Args::Write(WriteArgs {
            file: Fh(fh),
            offset: off + done as u64,
            count: (data.len() - done) as u32,
            stable,
            data: &data[done..],
        });
        let (reply, at) = nfs_call(up, cred, &args).await?;
        let Ok(Res::Write(NfsResult::Ok(ok))) = Res::decode(Proc::WRITE, &reply[at..]) else {
            return Err(CallError::Rpc("undecodable WRITE reply".into()));
        };
        if ok.count == 0 {
            return Err(CallError::Rpc("next hop wrote 0 bytes".into()));
        }
        if done > 0 && ok.verf != verf {
            return Err(CallError::Rpc("next hop's verifier changed".into()));
        }
        verf = ok.verf;
        wcc = ok.file_wcc;
        done += ok.count as usize;
    }
    Ok((verf, wcc))
}
