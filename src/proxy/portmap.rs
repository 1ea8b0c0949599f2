//! A minimal portmapper (program 100000, version 2; RFC 1833 §3) answering on the proxy's
//! own port: GETPORT says that NFS v3 and MOUNT v3 over TCP live on this very port, DUMP
//! lists those mappings. Registrations (SET/UNSET) from others are refused.
//!
//! Also the client side of registration with a real local rpcbind (`listen.register_rpcbind`):
//! rpcbind v4 SET/UNSET over its Unix socket, since rpcbind refuses SET over TCP from
//! unprivileged ports.

use std::net::SocketAddr;
use std::path::Path;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::nfs3;
use crate::rpc::msg::{AcceptStat, accepted_reply, call_message, prog_mismatch};
use crate::rpc::{ReplyKind, parse_reply, read_record, write_record};
use crate::xdr::{Reader, XdrWrite};

pub const PROGRAM: u32 = 100000;
const VERSION: u32 = 2;
const IPPROTO_TCP: u32 = 6;

/// Programs and versions we serve, for GETPORT and DUMP.
const SERVED: [(u32, u32); 2] = [
    (nfs3::PROGRAM, nfs3::VERSION),
    (nfs3::mount::PROGRAM, nfs3::mount::VERSION),
];

/// Answers one portmapper call. `args` are the procedure's arguments.
pub fn answer(xid: u32, vers: u32, proc_: u32, args: &[u8], port: u16) -> BytesMut {
    if vers != VERSION {
        return prog_mismatch(xid, VERSION, VERSION);
    }
    match proc_ {
        0 => accepted_reply(xid, AcceptStat::SUCCESS),
        // SET, UNSET: we own this port's table; refuse.
        1 | 2 => {
            if args.len() != 16 {
                return accepted_reply(xid, AcceptStat::GARBAGE_ARGS);
            }
            let mut b = accepted_reply(xid, AcceptStat::SUCCESS);
            b.put_xdr_bool(false);
            b
        }
        3 => {
            let mut r = Reader::new(args);
            let parsed =
                (|| Ok::<_, crate::xdr::XdrError>((r.u32()?, r.u32()?, r.u32()?, r.u32()?)))();
            let Ok((prog, vers, prot, _)) = parsed.and_then(|v| r.finish().map(|_| v)) else {
                return accepted_reply(xid, AcceptStat::GARBAGE_ARGS);
            };
            let found = prot == IPPROTO_TCP && SERVED.contains(&(prog, vers));
            let mut b = accepted_reply(xid, AcceptStat::SUCCESS);
            b.put_u32(if found { port as u32 } else { 0 });
            b
        }
        4 => {
            let mut b = accepted_reply(xid, AcceptStat::SUCCESS);
            for (prog, vers) in SERVED {
                b.put_xdr_bool(true);
                b.put_u32(prog);
                b.put_u32(vers);
                b.put_u32(IPPROTO_TCP);
                b.put_u32(port as u32);
            }
            b.put_xdr_bool(false);
            b
        }
        _ => accepted_reply(xid, AcceptStat::PROC_UNAVAIL),
    }
}

/// rpcbind protocol, version 4 (RFC 1833 §2).
const RPCB_VERSION: u32 = 4;
const RPCBPROC_SET: u32 = 1;
const RPCBPROC_UNSET: u32 = 2;

/// Why registration with the local rpcbind failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("cannot talk to rpcbind at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("rpcbind at {path} refused to register program {prog} version {vers}")]
    Refused { path: String, prog: u32, vers: u32 },
    #[error("rpcbind at {path} sent a malformed reply")]
    BadReply { path: String },
}

const RPCBPROC_DUMP: u32 = 4;

/// A registration held by rpcbind (RFC 1833 `rpcb`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rpcb {
    pub prog: u32,
    pub vers: u32,
    pub netid: String,
    pub addr: String,
    pub owner: String,
}

/// One rpcbind v4 call on `s` and its accepted results.
async fn rpcb_call(
    s: &mut UnixStream,
    path: &str,
    xid: &mut u32,
    proc_: u32,
    args: &[u8],
) -> Result<Vec<u8>, RegisterError> {
    let io = |source| RegisterError::Io {
        path: path.to_string(),
        source,
    };
    let msg = call_message(*xid, PROGRAM, RPCB_VERSION, proc_, args);
    *xid += 1;
    write_record(s, &msg).await.map_err(io)?;
    s.flush().await.map_err(io)?;
    let reply = read_record(s, 1 << 20)
        .await
        .map_err(|e| io(std::io::Error::other(e)))?
        .ok_or_else(|| RegisterError::BadReply {
            path: path.to_string(),
        })?;
    match parse_reply(&reply) {
        Ok((_, ReplyKind::Accepted { stat, results_at })) if stat == AcceptStat::SUCCESS => {
            Ok(reply[results_at..].to_vec())
        }
        _ => Err(RegisterError::BadReply {
            path: path.to_string(),
        }),
    }
}

/// SET or UNSET of one `rpcb`; rpcbind's boolean answer.
async fn rpcb_set(
    s: &mut UnixStream,
    path: &str,
    xid: &mut u32,
    proc_: u32,
    r: &Rpcb,
) -> Result<bool, RegisterError> {
    let mut args = BytesMut::new();
    args.put_u32(r.prog);
    args.put_u32(r.vers);
    args.put_xdr_opaque(r.netid.as_bytes());
    args.put_xdr_opaque(r.addr.as_bytes());
    args.put_xdr_opaque(r.owner.as_bytes());
    let res = rpcb_call(s, path, xid, proc_, &args).await?;
    Ok(Reader::new(&res).bool().unwrap_or(false))
}

/// rpcbind's registrations of the programs and versions we serve (DUMP).
async fn served_registrations(
    s: &mut UnixStream,
    path: &str,
    xid: &mut u32,
) -> Result<Vec<Rpcb>, RegisterError> {
    let res = rpcb_call(s, path, xid, RPCBPROC_DUMP, &[]).await?;
    let bad = || RegisterError::BadReply {
        path: path.to_string(),
    };
    let mut r = Reader::new(&res);
    let mut out = Vec::new();
    let text = |r: &mut Reader<'_>| -> Result<String, RegisterError> {
        Ok(String::from_utf8_lossy(r.opaque(1024).map_err(|_| bad())?).into_owned())
    };
    while r.bool().map_err(|_| bad())? {
        let prog = r.u32().map_err(|_| bad())?;
        let vers = r.u32().map_err(|_| bad())?;
        let (netid, addr, owner) = (text(&mut r)?, text(&mut r)?, text(&mut r)?);
        if SERVED.contains(&(prog, vers)) {
            out.push(Rpcb {
                prog,
                vers,
                netid,
                addr,
                owner,
            });
        }
        if out.len() > 64 {
            break;
        }
    }
    Ok(out)
}

/// Registers NFS v3 and MOUNT v3 over TCP at `addr` with the local rpcbind at `socket`,
/// replacing what was registered for them (the proxy owns them now). Returns those
/// earlier registrations, for [`unregister`] to put back; if registering fails half
/// way, they are put back before the error is returned.
pub async fn register(socket: &Path, addr: SocketAddr) -> Result<Vec<Rpcb>, RegisterError> {
    let path = socket.display().to_string();
    let mut s = connect(socket, &path).await?;
    let mut xid = 1u32;
    let before = served_registrations(&mut s, &path, &mut xid).await?;
    let uaddr = format!("{}.{}.{}", addr.ip(), addr.port() >> 8, addr.port() & 0xff);
    let mut set = async || {
        for (prog, vers) in SERVED {
            unset_all(&mut s, &path, &mut xid, prog, vers).await?;
            let ours = Rpcb {
                prog,
                vers,
                netid: "tcp".into(),
                addr: uaddr.clone(),
                owner: "gridvfs".into(),
            };
            if !rpcb_set(&mut s, &path, &mut xid, RPCBPROC_SET, &ours).await? {
                return Err(RegisterError::Refused {
                    path: path.clone(),
                    prog,
                    vers,
                });
            }
        }
        Ok(())
    };
    match set().await {
        Ok(()) => Ok(before),
        Err(e) => {
            let _ = unregister(socket, &before).await;
            Err(e)
        }
    }
}

/// Removes the proxy's registrations and puts back those [`register`] replaced (another
/// NFS server's), so that rpcbind points where it did before the proxy started. A TCP
/// registration whose address no longer accepts connections is not put back (a gridvfs
/// killed before it could unregister leaves one). Goes on past a failure; returns the
/// first.
pub async fn unregister(socket: &Path, previous: &[Rpcb]) -> Result<(), RegisterError> {
    let path = socket.display().to_string();
    let mut s = connect(socket, &path).await?;
    let mut xid = 1u32;
    let mut first = None;
    for (prog, vers) in SERVED {
        if let Err(e) = unset_all(&mut s, &path, &mut xid, prog, vers).await {
            first.get_or_insert(e);
        }
    }
    for r in previous {
        if !alive(r).await {
            continue;
        }
        match rpcb_set(&mut s, &path, &mut xid, RPCBPROC_SET, r).await {
            Ok(true) => {}
            Ok(false) => {
                first.get_or_insert(RegisterError::Refused {
                    path: path.clone(),
                    prog: r.prog,
                    vers: r.vers,
                });
            }
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

async fn connect(socket: &Path, path: &str) -> Result<UnixStream, RegisterError> {
    UnixStream::connect(socket)
        .await
        .map_err(|source| RegisterError::Io {
            path: path.to_string(),
            source,
        })
}

/// UNSET with an empty netid: removes every transport's registration of (prog, vers).
async fn unset_all(
    s: &mut UnixStream,
    path: &str,
    xid: &mut u32,
    prog: u32,
    vers: u32,
) -> Result<bool, RegisterError> {
    let all = Rpcb {
        prog,
        vers,
        netid: String::new(),
        addr: String::new(),
        owner: "gridvfs".into(),
    };
    rpcb_set(s, path, xid, RPCBPROC_UNSET, &all).await
}

/// Whether a registration is worth putting back: a TCP one whose address accepts a
/// connection within a second; any other kind as it is.
async fn alive(r: &Rpcb) -> bool {
    if r.netid != "tcp" && r.netid != "tcp6" {
        return true;
    }
    // uaddr: the host, then the port's high and low bytes, dot-separated.
    let mut parts: Vec<&str> = r.addr.rsplitn(3, '.').collect();
    parts.reverse();
    let port = match parts.as_slice() {
        [host, hi, lo] => hi
            .parse::<u16>()
            .ok()
            .zip(lo.parse::<u16>().ok())
            .filter(|(h, l)| *h < 256 && *l < 256)
            .map(|(h, l)| (host.to_string(), h << 8 | l)),
        _ => None,
    };
    let Some((host, port)) = port else {
        return true;
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let connect = tokio::net::TcpStream::connect(format!("{host}:{port}"));
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(1), connect).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn getport(prog: u32, vers: u32, prot: u32) -> u32 {
        let mut a = BytesMut::new();
        for v in [prog, vers, prot, 0] {
            a.put_u32(v);
        }
        let r = answer(1, 2, 3, &a, 2049);
        let (_, kind) = parse_reply(&r).unwrap();
        let ReplyKind::Accepted { results_at, .. } = kind else {
            panic!()
        };
        Reader::new(&r[results_at..]).u32().unwrap()
    }

    #[test]
    fn getport_answers_for_nfs_and_mount_over_tcp_only() {
        assert_eq!(getport(100003, 3, 6), 2049);
        assert_eq!(getport(100005, 3, 6), 2049);
        assert_eq!(getport(100003, 3, 17), 0);
        assert_eq!(getport(100003, 4, 6), 0);
        assert_eq!(getport(100021, 4, 6), 0);
    }

    #[test]
    fn other_versions_get_prog_mismatch() {
        let r = answer(1, 4, 3, &[], 2049);
        let (_, kind) = parse_reply(&r).unwrap();
        assert!(matches!(
            kind,
            ReplyKind::Accepted {
                stat: AcceptStat::PROG_MISMATCH,
                ..
            }
        ));
    }
}
