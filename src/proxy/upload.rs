//! Whole-file write-back (`writeback = "whole-file"` in a file's sidecar): a batch of the
//! file's dirty ranges goes compressed over the file channel as one STORE, and the server
//! proxy writes and commits it (`server::filechan`). The batch is marked clean only after
//! the server proxy said OK, which it says only after its COMMIT matched its WRITEs'
//! verifier: an acknowledged write is never lost on the way.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use super::cached::CacheLayer;
use super::wholefile::timed;
use crate::cache::store::DirtyBlock;
use crate::meta::channel::{self, ChannelError, Op, Request};
use crate::meta::{Codec, Writeback, ZeroMap};
use crate::nfs3::Fattr3;
use crate::ssh::client::SshConnector;
use crate::upstream::Upstream;
use crate::upstream::calls::Cred;
use crate::xdr::Decode;

/// How a file's dirty data goes back when its sidecar asks for whole-file write-back.
pub struct Plan {
    connector: Arc<SshConnector>,
    codec: Codec,
    level: i32,
}

/// The plan for `fh`, if its (fresh) sidecar says whole-file and a file channel exists.
pub async fn plan(cache: &Arc<CacheLayer>, up: &Upstream, fh: &[u8], cred: &Cred) -> Option<Plan> {
    let m = cache.meta.get()?;
    let connector = m.connector()?.clone();
    let attr = cache.upstream_attr(fh)?;
    let sc = m.sidecar(up, fh, &attr, cred).await?;
    (sc.actions.writeback == Writeback::WholeFile).then_some(Plan {
        connector,
        codec: sc.actions.codec,
        level: sc.actions.level,
    })
}

/// File bytes one STORE carries at most.
pub const STORE_MAX: u64 = 64 << 20;

/// (block, version, bytes) of each block sent.
pub type Sent = Vec<(u64, u64, u64)>;

/// Sends the dirty ranges of `blocks` as one STORE; returns what was sent and the
/// file's attributes after the server proxy's COMMIT.
pub async fn upload(
    cache: &Arc<CacheLayer>,
    plan: &Plan,
    fh: &[u8],
    cred: &Cred,
    blocks: &[DirtyBlock],
) -> Result<(Sent, Option<Fattr3>), ChannelError> {
    let req = Request {
        op: Op::Store,
        fh: fh.to_vec(),
        cred: cred.clone(),
        size: 0,
        mtime: (0, 0),
        codec: plan.codec,
        level: plan.level,
        zeros: ZeroMap::from_runs(4096, 0, Vec::new()),
    };
    let stream = plan
        .connector
        .open_file_channel(&req.encode())
        .await
        .map_err(|e| ChannelError::Io(std::io::Error::other(e)))?;
    let (rd, mut wr) = tokio::io::split(stream);
    let mut sent: Sent = Vec::new();
    // Contiguous dirty ranges are joined into frames of up to `channel::FRAME` bytes.
    let mut frame: Vec<u8> = Vec::new();
    let mut frame_at = 0u64;
    let bs = cache.bs;
    for d in blocks {
        let (c, f, b) = (cache.clone(), fh.to_vec(), d.block);
        let got = tokio::task::spawn_blocking(move || c.store.get(&f, b))
            .await
            .map_err(|e| ChannelError::Malformed(e.to_string()))?
            .map_err(|e| ChannelError::Io(std::io::Error::other(e.to_string())))?;
        let Some(got) = got else { continue };
        let Some(dirty) = got.dirty.clone() else {
            continue;
        };
        let off = d.block * bs + dirty.start as u64;
        let bytes = got.bytes(dirty.clone());
        if !frame.is_empty()
            && (frame_at + frame.len() as u64 != off
                || frame.len() + bytes.len() > channel::FRAME as usize)
        {
            send_frame(&mut wr, plan, frame_at, std::mem::take(&mut frame)).await?;
        }
        if frame.is_empty() {
            frame_at = off;
        }
        frame.extend_from_slice(bytes);
        sent.push((d.block, got.seq, bytes.len() as u64));
    }
    if !frame.is_empty() {
        send_frame(&mut wr, plan, frame_at, frame).await?;
    }
    channel::write_end(&mut wr, channel::OK).await?;
    let mut rd = BufReader::new(rd);
    let status = timed(rd.read_u32()).await?;
    if status != channel::OK {
        return Err(ChannelError::Status(status));
    }
    let after = match timed(rd.read_u32()).await? {
        1 => {
            let mut b = vec![0u8; 84];
            timed(rd.read_exact(&mut b)).await?;
            let mut r = crate::xdr::Reader::new(&b);
            Some(Fattr3::decode(&mut r)?)
        }
        _ => None,
    };
    let _ = wr.shutdown().await;
    if let Some(m) = cache.meta.get() {
        use std::sync::atomic::Ordering::Relaxed;
        m.stats.uploads.fetch_add(1, Relaxed);
        m.stats
            .upload_bytes
            .fetch_add(sent.iter().map(|s| s.2).sum(), Relaxed);
    }
    Ok((sent, after))
}

async fn send_frame(
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
    plan: &Plan,
    at: u64,
    raw: Vec<u8>,
) -> Result<(), ChannelError> {
    let (codec, level) = (plan.codec, plan.level);
    let n = raw.len() as u32;
    let comp = tokio::task::spawn_blocking(move || channel::compress(codec, level, &raw))
        .await
        .map_err(|e| ChannelError::Malformed(e.to_string()))??;
    channel::write_frame(wr, at, n, &comp).await?;
    Ok(())
}
