//! The server proxy's end of the file channel (`crate::meta::channel`).
//!
//! FETCH: the file is read from the real NFS server with pipelined READs (the server
//! proxy does not assume access to the server's disk), skipping the zero runs the client
//! sent, each piece compressed on the blocking pool and sent in file order.
//! STORE: frames are decompressed and written with pipelined UNSTABLE WRITEs, committed
//! every `COMMIT_EVERY` bytes and at the end; the data since the last COMMIT is kept until
//! that COMMIT shows the verifier the WRITEs saw (else it is written again), and only then
//! does the client hear OK.
//!
//! Both obey the RPC path's rules: the handle must have been issued to a client (export
//! confinement), and the client's credential is mapped by the account.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BufMut;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{Semaphore, mpsc};
use tracing::{info, warn};

use crate::config::Account;
use crate::meta::channel::{self, ChannelError, FrameHead, Op, Request};
use crate::nfs3::{
    self, Args, CommitArgs, Fattr3, Fh, Ftype3, GetattrArgs, NfsResult, Proc, Res, StableHow,
};
use crate::proxy::Proxy;
use crate::transport::BoxStream;
use crate::upstream::calls::{CallError, Cred, nfs_call, read_upstream, write_upstream};
use crate::xdr::Encode;

/// A request must arrive this soon after the channel opens.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// READs or WRITEs in flight per transfer.
const IN_FLIGHT: usize = 16;
/// STORE commits (and forgets what it keeps for a re-send) after this many bytes.
const COMMIT_EVERY: u64 = 64 << 20;
/// Times STORE writes a span again when the server's verifier changed before COMMIT.
const VERIFIER_RETRIES: usize = 5;

/// Compressions running at once, over all transfers: one per core.
fn compressors() -> Arc<Semaphore> {
    static SEM: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    SEM.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Semaphore::new(cpus))
    })
    .clone()
}

/// Serves one file-channel stream for `account`.
pub async fn serve(proxy: Arc<Proxy>, stream: BoxStream, account: Arc<Account>, peer: SocketAddr) {
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let mut wr = BufWriter::with_capacity(256 << 10, wr);
    let req = match tokio::time::timeout(REQUEST_TIMEOUT, Request::read_from(&mut rd)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            warn!(side = "client", %peer, error = %e, "file channel: bad request");
            let _ = reply_status(&mut wr, channel::BAD_REQUEST).await;
            return;
        }
        Err(_) => {
            warn!(side = "client", %peer, "file channel: no request within 30 s");
            return;
        }
    };
    let Some(policy) = &proxy.policy else { return };
    let cred =
        match crate::server::identity::mapped_sys_body(&account, req.cred.flavor, &req.cred.body) {
            Ok(body) if policy.was_issued(&req.fh) => Cred {
                flavor: crate::rpc::msg::AuthFlavor::SYS.0,
                body: body.to_vec(),
            },
            _ => {
                crate::metrics::Metrics::inc(&proxy.metrics.refused);
                warn!(side = "client", %peer, account = %account.name,
                "file channel refused: handle not issued to a client, or credential refused");
                let _ = reply_status(&mut wr, channel::DENIED).await;
                return;
            }
        };
    let r = match req.op {
        Op::Fetch => fetch(&proxy, &req, &cred, &mut wr).await,
        Op::Store => store(&proxy, &req, &cred, &mut rd, &mut wr).await,
    };
    match r {
        Ok(()) => {}
        Err(e) => {
            warn!(side = "upstream", %peer, op = ?req.op, error = %e, "file channel transfer failed")
        }
    }
    let _ = wr.shutdown().await;
}

async fn reply_status(
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    status: u32,
) -> std::io::Result<()> {
    w.write_u32(status).await?;
    w.flush().await
}

/// The status a failed NFS call becomes on the channel.
fn call_status(e: &CallError) -> u32 {
    match e {
        CallError::Status(s) => s.0,
        CallError::Rpc(_) => channel::FAILED,
    }
}

async fn getattr(proxy: &Proxy, cred: &Cred, fh: &[u8]) -> Result<Fattr3, CallError> {
    let args = Args::Getattr(GetattrArgs { object: Fh(fh) });
    let (reply, at) = nfs_call(&proxy.nfs, cred, &args).await?;
    match Res::decode(Proc::GETATTR, &reply[at..]) {
        Ok(Res::Getattr(NfsResult::Ok(ok))) => Ok(ok.obj_attributes),
        _ => Err(CallError::Rpc("undecodable GETATTR reply".into())),
    }
}

async fn fetch(
    proxy: &Arc<Proxy>,
    req: &Request,
    cred: &Cred,
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> Result<(), ChannelError> {
    let attr = match getattr(proxy, cred, &req.fh).await {
        Ok(a) => a,
        Err(e) => {
            reply_status(wr, call_status(&e)).await?;
            return Ok(());
        }
    };
    if attr.ftype != Ftype3::REG {
        reply_status(wr, nfs3::Nfsstat3::INVAL.0).await?;
        return Ok(());
    }
    if attr.size != req.size || (attr.mtime.seconds, attr.mtime.nseconds) != req.mtime {
        info!(
            size = attr.size,
            "file channel: file changed since its sidecar; client falls back to blocks"
        );
        reply_status(wr, channel::STALE_META).await?;
        return Ok(());
    }
    wr.write_u32(channel::OK).await?;
    wr.write_u64(attr.size).await?;
    let pieces = channel::fetch_pieces(&req.zeros, attr.size);
    let started = std::time::Instant::now();
    // Pieces are read and compressed concurrently and sent in order: a producer spawns
    // one task per piece (bounded by the queue) and the consumer awaits them in turn.
    let (tx, mut rx) = mpsc::channel(IN_FLIGHT);
    let compressors = compressors();
    let producer = {
        let (proxy, cred, fh) = (proxy.clone(), cred.clone(), req.fh.clone());
        let (codec, level) = (req.codec, req.level);
        tokio::spawn(async move {
            for p in pieces {
                let (proxy, cred, fh, compressors) =
                    (proxy.clone(), cred.clone(), fh.clone(), compressors.clone());
                let task = tokio::spawn(async move {
                    let len = (p.end - p.start) as u32;
                    let data = read_upstream(&proxy.nfs, &cred, &fh, p.start, len)
                        .await
                        .map_err(|e| call_status(&e))?;
                    if data.len() != len as usize {
                        // The file shrank under us.
                        return Err(channel::STALE_META);
                    }
                    let _c = compressors.acquire_owned().await.expect("never closed");
                    let comp =
                        tokio::task::spawn_blocking(move || channel::compress(codec, level, &data))
                            .await
                            .map_err(|_| channel::FAILED)?
                            .map_err(|_| channel::FAILED)?;
                    Ok((p.start, len, comp))
                });
                if tx.send(task).await.is_err() {
                    return; // the consumer stopped (error or client gone)
                }
            }
        })
    };
    let (mut raw, mut wire) = (0u64, 0u64);
    let mut status = channel::OK;
    while let Some(task) = rx.recv().await {
        match task.await {
            Ok(Ok((off, len, comp))) => {
                channel::write_frame(wr, off, len, &comp).await?;
                raw += len as u64;
                wire += comp.len() as u64 + 16;
            }
            Ok(Err(s)) => {
                status = s;
                break;
            }
            Err(_) => {
                status = channel::FAILED;
                break;
            }
        }
    }
    drop(rx);
    producer.abort();
    if status == channel::OK {
        // A file written while it was read would arrive torn: check it did not change.
        match getattr(proxy, cred, &req.fh).await {
            Ok(a) if a.size == attr.size && a.mtime == attr.mtime => {}
            Ok(_) => status = channel::STALE_META,
            Err(e) => status = call_status(&e),
        }
    }
    channel::write_end(wr, status).await?;
    let m = &proxy.metrics;
    m.file_fetches.fetch_add(1, Ordering::Relaxed);
    m.file_raw_bytes.fetch_add(raw, Ordering::Relaxed);
    m.file_wire_bytes.fetch_add(wire, Ordering::Relaxed);
    info!(
        size = attr.size,
        sent_raw = raw,
        sent_wire = wire,
        status = %channel::status_name(status),
        secs = format!("{:.2}", started.elapsed().as_secs_f64()),
        "file channel: fetch served"
    );
    Ok(())
}

/// A span written since the last COMMIT: kept to write again if the verifier changes.
struct Written {
    offset: u64,
    data: Arc<Vec<u8>>,
    verf: [u8; 8],
}

async fn store(
    proxy: &Arc<Proxy>,
    req: &Request,
    cred: &Cred,
    rd: &mut (impl tokio::io::AsyncRead + Unpin),
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> Result<(), ChannelError> {
    let started = std::time::Instant::now();
    let window = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut writes = tokio::task::JoinSet::new();
    let mut kept: Vec<Written> = Vec::new();
    let (mut since_commit, mut total, mut wire) = (0u64, 0u64, 0u64);
    let mut failed: Option<u32> = None;
    let mut after: Option<Fattr3> = None;
    loop {
        let head = channel::read_frame_head(rd).await?;
        let (offset, raw, comp) = match head {
            FrameHead::End(s) if s == channel::OK => break,
            FrameHead::End(s) => return Err(ChannelError::Status(s)),
            FrameHead::Data { offset, raw, comp } => (offset, raw, comp),
        };
        let mut buf = vec![0; comp as usize];
        tokio::io::AsyncReadExt::read_exact(rd, &mut buf).await?;
        wire += comp as u64 + 16;
        if failed.is_some() {
            continue; // read the rest so the client hears the status
        }
        let codec = req.codec;
        let data = tokio::task::spawn_blocking(move || channel::decompress(codec, &buf, raw))
            .await
            .map_err(|e| ChannelError::Malformed(e.to_string()))??;
        let data = Arc::new(data);
        let permit = window.clone().acquire_owned().await.expect("never closed");
        let (p, c, fh, d) = (proxy.clone(), cred.clone(), req.fh.clone(), data.clone());
        writes.spawn(async move {
            let r = write_upstream(&p.nfs, &c, &fh, offset, &d, StableHow::UNSTABLE).await;
            drop(permit);
            r.map(|(verf, _)| Written {
                offset,
                data: d,
                verf,
            })
        });
        since_commit += raw as u64;
        total += raw as u64;
        if since_commit >= COMMIT_EVERY {
            match commit_kept(proxy, cred, &req.fh, &mut writes, &mut kept).await {
                Ok(a) => after = a,
                Err(s) => failed = Some(s),
            }
            since_commit = 0;
        }
    }
    if failed.is_none() {
        match commit_kept(proxy, cred, &req.fh, &mut writes, &mut kept).await {
            Ok(a) => after = a,
            Err(s) => failed = Some(s),
        }
    }
    let status = failed.unwrap_or(channel::OK);
    let mut out = bytes::BytesMut::new();
    out.put_u32(status);
    if status == channel::OK {
        match &after {
            Some(a) => {
                out.put_u32(1);
                a.encode(&mut out);
            }
            None => out.put_u32(0),
        }
    }
    wr.write_all(&out).await?;
    wr.flush().await?;
    let m = &proxy.metrics;
    m.file_stores.fetch_add(1, Ordering::Relaxed);
    info!(
        written = total,
        received_wire = wire,
        status = %channel::status_name(status),
        secs = format!("{:.2}", started.elapsed().as_secs_f64()),
        "file channel: store served"
    );
    Ok(())
}

/// Waits for the WRITEs in flight, COMMITs, and writes again what the server may have
/// lost (its verifier changed). Returns the COMMIT's post-op attributes.
async fn commit_kept(
    proxy: &Arc<Proxy>,
    cred: &Cred,
    fh: &[u8],
    writes: &mut tokio::task::JoinSet<Result<Written, CallError>>,
    kept: &mut Vec<Written>,
) -> Result<Option<Fattr3>, u32> {
    let mut failure = None;
    while let Some(r) = writes.join_next().await {
        match r {
            Ok(Ok(w)) => kept.push(w),
            Ok(Err(e)) => failure = Some(call_status(&e)),
            Err(_) => failure = Some(channel::FAILED),
        }
    }
    if let Some(s) = failure {
        return Err(s);
    }
    for _ in 0..VERIFIER_RETRIES {
        let args = Args::Commit(CommitArgs {
            file: Fh(fh),
            offset: 0,
            count: 0,
        });
        let (reply, at) = nfs_call(&proxy.nfs, cred, &args)
            .await
            .map_err(|e| call_status(&e))?;
        let Ok(Res::Commit(NfsResult::Ok(ok))) = Res::decode(Proc::COMMIT, &reply[at..]) else {
            return Err(channel::FAILED);
        };
        let lost: Vec<usize> = (0..kept.len())
            .filter(|&i| kept[i].verf != ok.verf)
            .collect();
        if lost.is_empty() {
            kept.clear();
            return Ok(ok.file_wcc.after.clone());
        }
        warn!(
            side = "upstream",
            spans = lost.len(),
            "NFS server's write verifier changed before COMMIT; writing again"
        );
        for i in lost {
            let w = &mut kept[i];
            let (verf, _) =
                write_upstream(&proxy.nfs, cred, fh, w.offset, &w.data, StableHow::UNSTABLE)
                    .await
                    .map_err(|e| call_status(&e))?;
            w.verf = verf;
        }
    }
    Err(channel::FAILED)
}
