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

/// Registers (or with `set == false` unregisters) NFS v3 and MOUNT v3 over TCP at `addr`.
/// Existing registrations of those programs are replaced: the proxy owns them now.
pub async fn register(socket: &Path, addr: SocketAddr, set: bool) -> Result<(), RegisterError> {
    let path = socket.display().to_string();
    let io = |source| RegisterError::Io {
        path: path.clone(),
        source,
    };
    let mut s = UnixStream::connect(socket).await.map_err(io)?;
    let uaddr = format!("{}.{}.{}", addr.ip(), addr.port() >> 8, addr.port() & 0xff);
    let mut xid = 1u32;
    for (prog, vers) in SERVED {
        let procs: &[u32] = if set {
            &[RPCBPROC_UNSET, RPCBPROC_SET]
        } else {
            &[RPCBPROC_UNSET]
        };
        for &p in procs {
            let mut args = BytesMut::new();
            args.put_u32(prog);
            args.put_u32(vers);
            // UNSET with an empty netid removes every transport's registration.
            args.put_xdr_opaque(if p == RPCBPROC_SET { b"tcp" } else { b"" });
            args.put_xdr_opaque(if p == RPCBPROC_SET {
                uaddr.as_bytes()
            } else {
                b""
            });
            args.put_xdr_opaque(b"gridvfs");
            let msg = call_message(xid, PROGRAM, RPCB_VERSION, p, &args);
            xid += 1;
            write_record(&mut s, &msg).await.map_err(io)?;
            s.flush().await.map_err(io)?;
            let reply = read_record(&mut s, 4096)
                .await
                .map_err(|e| io(std::io::Error::other(e)))?
                .ok_or_else(|| RegisterError::BadReply { path: path.clone() })?;
            let ok = match parse_reply(&reply) {
                Ok((_, ReplyKind::Accepted { stat, results_at }))
                    if stat == AcceptStat::SUCCESS =>
                {
                    Reader::new(&reply[results_at..]).bool().unwrap_or(false)
                }
                _ => return Err(RegisterError::BadReply { path: path.clone() }),
            };
            if p == RPCBPROC_SET && !ok {
                return Err(RegisterError::Refused {
                    path: path.clone(),
                    prog,
                    vers,
                });
            }
        }
    }
    Ok(())
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
