//! Write-back (paper §3.2.1, §3.2.3; `docs/cache-design.md`): with
//! `write_policy = "write-back"`, a client's WRITE lands in the block cache as dirty data
//! and its COMMIT is answered once that data is durable on the local disk; nothing goes
//! to the next hop until a flush (SIGUSR1/SIGUSR2, `gridvfs flush`, exit).
//!
//! - **WRITE**: the bytes are merged into their blocks (`Store::put`). A write that
//!   leaves a gap in a block first fetches the gap from the next hop (bytes past the
//!   next hop's end of file are a hole: zeros), so a block is never filled with invented
//!   bytes. A set full of dirty blocks is made room in by writing those blocks back
//!   (FILE_SYNC). If the cache still cannot take the bytes (disk full, I/O error), the
//!   WRITE goes through to the next hop as FILE_SYNC, after the dirty bytes of the blocks
//!   it touches, and is logged.
//! - **COMMIT**: `Store::sync` (data, then tags), then the reply with the cache's write
//!   verifier, which changes only when dirty data was lost (see `Store::verifier`).
//! - **SETATTR(size)**: forwarded under the file's exclusive lock (so no write-back of
//!   the file is in flight), then the cached blocks are cut exactly (`truncated`).
//! - **Flush**: dirty blocks file by file in block order, UNSTABLE WRITEs pipelined
//!   (`writeback_in_flight`), then COMMIT; a changed next-hop verifier re-sends the
//!   file's blocks. A block is marked clean only if it was not rewritten meanwhile.
//!   Clients keep being served: a flush holds a file's shared lock, as WRITEs do.
//!
//! Calls made on a client's behalf carry the credential of the client call that caused
//! them (gap fills) or of the file's last writer (write-back; kept in the cache
//! directory across restarts).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::cached::{CacheLayer, Cred};
use crate::cache::store::{CacheError, DirtyBlock, Put};
use crate::nfs3::{
    self, Args, CommitArgs, CommitResOk, Fattr3, Fh, GetattrArgs, NfsResult, Nfsstat3, Proc, Res,
    StableHow, WccData, WriteResFail, WriteResOk,
};
use crate::rpc::msg::accepted_reply;
use crate::rpc::{AcceptStat, CallHeader, ReplyKind, parse_reply};
use crate::upstream::Upstream;
use crate::upstream::calls::{CallError, nfs_call, read_upstream, write_upstream};

/// Runs blocking cache I/O off the reactor.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("cache I/O task panicked")
}

/// Fetches the next hop's attributes of a file the cache knows nothing about yet.
async fn getattr(
    cache: &Arc<CacheLayer>,
    up: &Upstream,
    cred: &Cred,
    fh: &[u8],
) -> Result<Fattr3, CallError> {
    let stamp = cache.stamp();
    let args = Args::Getattr(GetattrArgs { object: Fh(fh) });
    let (reply, at) = nfs_call(up, cred, &args).await?;
    match Res::decode(Proc::GETATTR, &reply[at..]) {
        Ok(Res::Getattr(NfsResult::Ok(ok))) => {
            cache.learn_attr(fh, ok.obj_attributes.clone(), stamp);
            Ok(ok.obj_attributes)
        }
        _ => Err(CallError::Rpc("undecodable GETATTR reply".into())),
    }
}

/// The credential for calls about `fh` when the caller has none: AUTH_NONE as a last
/// resort (logged; the server may refuse it, and the data then stays dirty).
fn cred_or_none(cache: &CacheLayer, fh: &[u8]) -> Cred {
    cache.cred_for(fh).unwrap_or_else(|| {
        warn!(
            side = "cache",
            "no client credential known for a write-back; using AUTH_NONE"
        );
        Cred {
            flavor: 0,
            body: Vec::new(),
        }
    })
}

fn reply_with(xid: u32, res: &Res<'_>) -> BytesMut {
    let mut out = accepted_reply(xid, AcceptStat::SUCCESS);
    res.encode(&mut out);
    out
}

fn write_fail(xid: u32, status: Nfsstat3, cache: &CacheLayer, fh: &[u8]) -> BytesMut {
    let file_wcc = WccData {
        before: None,
        after: cache.effective_attr(fh),
    };
    reply_with(
        xid,
        &Res::Write(NfsResult::Fail(status, WriteResFail { file_wcc })),
    )
}

/// One block's share of a WRITE: block number, byte offset in the block, and the range
/// of the call record that holds its bytes.
type Piece = (u64, u32, Range<usize>);

/// Answers a client's WRITE from the cache (write-back). `call` is the whole call record.
pub async fn write(cache: &Arc<CacheLayer>, up: &Arc<Upstream>, call: Bytes) -> BytesMut {
    let Ok(h) = CallHeader::parse(&call) else {
        return accepted_reply(0, AcceptStat::GARBAGE_ARGS);
    };
    let xid = h.xid;
    let Ok(Args::Write(w)) = Args::decode(Proc::WRITE, &call[h.args_at..]) else {
        return accepted_reply(xid, AcceptStat::GARBAGE_ARGS);
    };
    let cred = Cred::of(&call).expect("parsed above");
    let fh = w.file.0.to_vec();
    let (off, count, stable) = (w.offset, w.count, w.stable);
    let Some(end) = off.checked_add(count as u64) else {
        return write_fail(xid, Nfsstat3::FBIG, cache, &fh);
    };
    let data_at = w.data.as_ptr() as usize - call.as_ptr() as usize;
    let lock = cache.file_lock(&fh).read().await;
    if cache.cut_at_risk(&fh) {
        warn!(
            side = "cache",
            "the file's truncation record may come back from a failed cache bank; WRITE answered NFS3ERR_IO"
        );
        return write_fail(xid, Nfsstat3::IO, cache, &fh);
    }
    let attr = match cache.upstream_attr(&fh) {
        Some(a) => a,
        None => match getattr(cache, up, &cred, &fh).await {
            Ok(a) => a,
            Err(e) => return write_fail(xid, e.status(), cache, &fh),
        },
    };
    if attr.ftype != nfs3::Ftype3::REG {
        // Not a regular file: the next hop gives the proper error.
        drop(lock);
        return write_through(cache, up, &call, xid, &cred).await;
    }
    let before = cache.pre_attr(&fh);
    let bs = cache.bs;
    let mut pieces: Vec<Piece> = Vec::new();
    let mut pos = off;
    while pos < end {
        let block = pos / bs;
        let lo = pos - block * bs;
        let n = (bs - lo).min(end - pos);
        let s = data_at + (pos - off) as usize;
        pieces.push((block, lo as u32, s..s + n as usize));
        pos += n;
    }
    // The verifier as it was before the bytes went in: if the cache loses unstable data
    // meanwhile (and so changes it), the client sees the change and re-sends this WRITE.
    let verf = cache.store.verifier();
    if let Err(why) = store_dirty(cache, up, &cred, &fh, &call, pieces).await {
        warn!(side = "cache", error = %why, "WRITE not taken by the cache; writing it through");
        drop(lock);
        return write_through(cache, up, &call, xid, &cred).await;
    }
    if count > 0 {
        // A zero-byte WRITE changes nothing, not even the size.
        cache.note_local_write(&fh, end, Some(cred));
    }
    let mut committed = StableHow::UNSTABLE;
    if stable != StableHow::UNSTABLE {
        let (c, f) = (cache.clone(), fh.clone());
        if let Err(e) = blocking(move || c.store.sync_file(&f)).await {
            warn!(side = "cache", error = %e, "cache sync failed");
            return write_fail(xid, Nfsstat3::IO, cache, &fh);
        }
        if cache.store.verifier() != verf {
            // Another task's sync failed (and consumed the error): not durable.
            return write_fail(xid, Nfsstat3::IO, cache, &fh);
        }
        committed = StableHow::FILE_SYNC;
    }
    drop(lock);
    cache.local_writes.fetch_add(1, Ordering::Relaxed);
    reply_with(
        xid,
        &Res::Write(NfsResult::Ok(WriteResOk {
            file_wcc: WccData {
                before,
                after: cache.effective_attr(&fh),
            },
            count,
            committed,
            verf,
        })),
    )
}

/// Puts a WRITE's pieces into the cache as dirty data, filling gaps and making room as
/// needed. An error means the cache cannot take them (the caller writes through).
async fn store_dirty(
    cache: &Arc<CacheLayer>,
    up: &Arc<Upstream>,
    cred: &Cred,
    fh: &[u8],
    call: &Bytes,
    mut todo: Vec<Piece>,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    let mut attempt = 0;
    // A few tries; while a write-back runs (it frees frames batch by batch), up to
    // `ROOM_WAIT` before the WRITE is written through instead.
    while attempt < 6
        || (cache.flush.running.load(Ordering::Relaxed) && started.elapsed() < ROOM_WAIT)
    {
        attempt += 1;
        let (c, call2, fh2) = (cache.clone(), call.clone(), fh.to_vec());
        let outcomes = blocking(move || {
            todo.into_iter()
                .map(|(block, lo, r)| {
                    let o = c.store.put(&fh2, block, lo, &call2[r.clone()], true);
                    ((block, lo, r), o)
                })
                .filter(|(_, o)| !matches!(o, Ok(Put::Stored { .. })))
                .collect::<Vec<_>>()
        })
        .await;
        if outcomes.is_empty() {
            return Ok(());
        }
        todo = Vec::new();
        for (piece, outcome) in outcomes {
            match outcome {
                Ok(Put::NeedsFill { gap }) => {
                    fill_gap(cache, up, cred, fh, piece.0, gap).await?;
                }
                Err(CacheError::SetFull) => make_room(cache, up, fh, piece.0).await,
                Ok(other) => return Err(format!("unexpected cache answer {other:?}")),
                Err(e) => return Err(e.to_string()),
            }
            todo.push(piece);
        }
    }
    Err("the cache set stays full of dirty blocks".into())
}

/// How long a WRITE waits for room while a write-back is running.
const ROOM_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Fetches bytes `gap` of a block from the next hop (zeros past its end of file) and
/// puts them into the cache as clean data, so a partial write lands next to real bytes.
async fn fill_gap(
    cache: &Arc<CacheLayer>,
    up: &Arc<Upstream>,
    cred: &Cred,
    fh: &[u8],
    block: u64,
    gap: Range<u32>,
) -> Result<(), String> {
    let base = block * cache.bs;
    let (start, end) = (base + gap.start as u64, base + gap.end as u64);
    let stamp = cache.stamp();
    // Always asked (the size the cache knows may be old): past the server's end of file
    // the READ comes back short, and those bytes are a hole, zeros.
    let mut bytes = vec![0u8; (end - start) as usize];
    let got = read_upstream(up, cred, fh, start, (end - start) as u32)
        .await
        .map_err(|e| format!("gap fill READ: {e}"))?;
    let n = got.len().min(bytes.len());
    bytes[..n].copy_from_slice(&got[..n]);
    let (c, fh2) = (cache.clone(), fh.to_vec());
    match blocking(move || c.fill_checked(&fh2, start, &bytes, stamp)).await {
        Ok(()) => Ok(()),
        Err(CacheError::SetFull) => {
            make_room(cache, up, fh, block).await;
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Writes back the dirty blocks of the set that (fh, block) maps to, so it has room (all
/// at once, FILE_SYNC), and starts a background write-back of everything if none is
/// running: a cache full of dirty data is cleaned at the pipelined rate of a flush, not
/// a set at a time.
async fn make_room(cache: &Arc<CacheLayer>, up: &Arc<Upstream>, fh: &[u8], block: u64) {
    if cache.flush.lock.try_lock().is_ok() && !cache.flush.bg_pending.swap(true, Ordering::Relaxed)
    {
        let (c, u) = (cache.clone(), up.clone());
        info!(
            side = "cache",
            "a cache set is full of dirty blocks: writing back in the background"
        );
        tokio::spawn(async move {
            if let Err(e) = flush(&c, &u, None).await {
                warn!(side = "cache", error = %e, "background write-back failed");
            }
        });
    }
    let (c, fh2) = (cache.clone(), fh.to_vec());
    let victims = match blocking(move || c.store.dirty_in_set(&fh2, block)).await {
        Ok(v) => v,
        Err(e) => {
            warn!(side = "cache", error = %e, "cannot list a full set");
            return;
        }
    };
    debug!(
        blocks = victims.len(),
        "set full of dirty blocks: writing them back"
    );
    let mut tasks = tokio::task::JoinSet::new();
    for v in victims {
        let (c, u) = (cache.clone(), up.clone());
        tasks.spawn(async move {
            // A file being truncated is left alone (its lock is held exclusively), and
            // so is one being written back (that write-back frees its blocks).
            let Ok(_g) = c.file_lock(&v.fh).try_read() else {
                return false;
            };
            let Ok(_wb) = c.wb_lock(&v.fh).try_lock() else {
                return false;
            };
            // A truncation still to be applied goes first, or it would cut this block.
            let cred = cred_or_none(&c, &v.fh);
            match apply_cut(&c, &u, &v.fh, &cred).await {
                Ok(Some(_)) => {}
                Ok(None) => return true, // the file is gone: its data was dropped
                Err(e) => {
                    warn!(side = "upstream", error = %e, "write-back of a truncation to make room failed");
                    return true;
                }
            }
            if let Err(e) = writeback_block(&c, &u, &v).await {
                warn!(side = "upstream", error = %e, "write-back of a block to make room failed");
            }
            true
        });
    }
    let mut skipped = false;
    while let Some(r) = tasks.join_next().await {
        skipped |= !r.unwrap_or(true);
    }
    if skipped {
        // Let the write-back that holds those blocks make progress.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    cache.evictions.fetch_add(1, Ordering::Relaxed);
}

/// Writes one dirty block back as FILE_SYNC and marks it clean.
async fn writeback_block(
    cache: &Arc<CacheLayer>,
    up: &Upstream,
    d: &DirtyBlock,
) -> Result<(), String> {
    let (c, fh2, block) = (cache.clone(), d.fh.clone(), d.block);
    let Some(got) = blocking(move || c.store.get(&fh2, block))
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    let Some(dirty) = got.dirty.clone() else {
        return Ok(());
    };
    let cred = cred_or_none(cache, &d.fh);
    let bytes = got.bytes(dirty.clone());
    let off = d.block * cache.bs + dirty.start as u64;
    // The file changes at the next hop: a fill with older bytes (a READ reply or a
    // working-set frame fetched before) must not land on this block once it is clean
    // (found in review: a working-set stream is seconds wide).
    cache.change(&d.fh);
    match write_upstream(up, &cred, &d.fh, off, bytes, StableHow::FILE_SYNC).await {
        Ok(_) => {
            // Durably: the frame is reused at once (room-making), and the older versions
            // `mark_clean` cleared must not come back after a crash as dirty data.
            let (c, fh2, seq) = (cache.clone(), d.fh.clone(), got.seq);
            blocking(move || {
                c.store
                    .mark_clean(&fh2, block, seq)
                    .and_then(|_| c.store.sync_tags())
            })
            .await
            .map_err(|e| e.to_string())?;
            Ok(())
        }
        Err(e) if e.gone() => {
            info!(
                side = "upstream",
                "file removed at the next hop; its dirty data is dropped"
            );
            cache.forget_file(&d.fh);
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The WRITE goes to the next hop (FILE_SYNC) after the dirty bytes of the blocks it
/// touches, under the file's exclusive lock; the reply carries the cache's verifier
/// (the data is durable at the next hop, so the client needs no COMMIT for it).
async fn write_through(
    cache: &Arc<CacheLayer>,
    up: &Arc<Upstream>,
    call: &Bytes,
    xid: u32,
    cred: &Cred,
) -> BytesMut {
    let h = CallHeader::parse(call).expect("parsed by the caller");
    let Ok(Args::Write(w)) = Args::decode(Proc::WRITE, &call[h.args_at..]) else {
        return accepted_reply(xid, AcceptStat::GARBAGE_ARGS);
    };
    let fh = w.file.0;
    let _x = cache.file_lock(fh).write().await;
    let _wb = cache.wb_lock(fh).lock().await;
    // Bytes that reach the next hop must not be cut by a truncation applied later.
    match apply_cut(cache, up, fh, cred).await {
        Ok(Some(_)) => {}
        Ok(None) => return write_fail(xid, Nfsstat3::STALE, cache, fh),
        Err(e) => return write_fail(xid, Nfsstat3::IO, cache, fh).tap_warn(&e),
    }
    let bs = cache.bs;
    let (first, last) = (
        w.offset / bs,
        w.offset.saturating_add(w.count.max(1) as u64 - 1) / bs,
    );
    // The blocks whose dirty bytes go first (a WRITE spans at most wtmax / block size).
    let top = last.min(first + 1024);
    if any_at_risk(cache, fh, first, top).await {
        return write_fail(xid, Nfsstat3::IO, cache, fh)
            .tap_warn("a block it touches has a dirty version in a failed cache bank");
    }
    for block in first..=top {
        let (c, fh2) = (cache.clone(), fh.to_vec());
        if let Ok(Some(got)) = blocking(move || c.store.get(&fh2, block)).await
            && got.dirty.is_some()
        {
            let d = DirtyBlock {
                fh: fh.to_vec(),
                block,
                seq: got.seq,
                dirty: got.dirty.clone().unwrap_or_default(),
            };
            if let Err(e) = writeback_block(cache, up, &d).await {
                return write_fail(xid, Nfsstat3::IO, cache, fh).tap_warn(&e);
            }
        }
    }
    // Again: a bank's fdatasync may have failed while the blocks above were written
    // back (another task's), putting one of them at risk after the check above.
    if any_at_risk(cache, fh, first, top).await {
        return write_fail(xid, Nfsstat3::IO, cache, fh)
            .tap_warn("a block it touches has a dirty version in a failed cache bank");
    }
    cache.change(fh);
    let before = cache.pre_attr(fh);
    let r = write_upstream(up, cred, fh, w.offset, w.data, StableHow::FILE_SYNC).await;
    cache.change(fh);
    let (c, fh2) = (cache.clone(), fh.to_vec());
    let _ = blocking(move || c.store.invalidate_range(&fh2, first, last)).await;
    cache.write_throughs.fetch_add(1, Ordering::Relaxed);
    match r {
        Ok((_, wcc)) => {
            if let Some(a) = wcc.after.clone() {
                cache.learn_attr(fh, a, cache.stamp());
            }
            cache.extend_local(fh, w.offset + w.count as u64);
            reply_with(
                xid,
                &Res::Write(NfsResult::Ok(WriteResOk {
                    file_wcc: WccData {
                        before,
                        after: cache.effective_attr(fh).or(wcc.after),
                    },
                    count: w.count,
                    committed: StableHow::FILE_SYNC,
                    verf: cache.store.verifier(),
                })),
            )
        }
        Err(e) => write_fail(xid, e.status(), cache, fh),
    }
}

/// Whether a failed cache bank may hold a dirty version of one of blocks `first..=last`
/// that this run cannot clear durably: after a power failure it would be written back
/// over a WRITE sent through now, so such a WRITE is refused until the bank is renewed
/// (`Store::renew_failed_banks`, after a flush) or the proxy restarts.
/// No blocking-pool hop while no bank has failed (`Store::any_failed`).
async fn any_at_risk(cache: &Arc<CacheLayer>, fh: &[u8], first: u64, last: u64) -> bool {
    if !cache.store.any_failed() {
        return false;
    }
    let (c, fh) = (cache.clone(), fh.to_vec());
    blocking(move || (first..=last).any(|b| c.store.at_risk(&fh, b))).await
}

/// Whether a truncation of the file to below block `first` must be refused: a failed
/// cache bank may hold a dirty version of a block from there on that would be written
/// back past the cut after a power failure (`Store::at_risk_from`). Logs the refusal.
async fn truncation_at_risk(cache: &Arc<CacheLayer>, fh: &[u8], first: u64, what: &str) -> bool {
    if !cache.store.any_failed() {
        return false;
    }
    let (c, fh2) = (cache.clone(), fh.to_vec());
    let refused = blocking(move || c.store.at_risk_from(&fh2, first)).await;
    if refused {
        warn!(
            side = "cache",
            "a block past the new size has a dirty version in a failed cache bank; {what} answered NFS3ERR_IO"
        );
    }
    refused
}

trait TapWarn {
    fn tap_warn(self, why: &str) -> Self;
}

impl TapWarn for BytesMut {
    fn tap_warn(self, why: &str) -> Self {
        warn!(side = "upstream", error = why, "write-through failed");
        self
    }
}

/// Answers a COMMIT from the cache: everything written to the file so far is made
/// durable on the local disk first.
pub async fn commit(cache: &Arc<CacheLayer>, call: Bytes) -> BytesMut {
    let Ok(h) = CallHeader::parse(&call) else {
        return accepted_reply(0, AcceptStat::GARBAGE_ARGS);
    };
    let xid = h.xid;
    let Ok(Args::Commit(a)) = Args::decode(Proc::COMMIT, &call[h.args_at..]) else {
        return accepted_reply(xid, AcceptStat::GARBAGE_ARGS);
    };
    let (c, f) = (cache.clone(), a.file.0.to_vec());
    let synced = blocking(move || c.store.sync_file(&f)).await;
    let file_wcc = WccData {
        before: None,
        after: cache.effective_attr(a.file.0),
    };
    match synced {
        Ok(()) => reply_with(
            xid,
            &Res::Commit(NfsResult::Ok(CommitResOk {
                file_wcc,
                verf: cache.store.verifier(),
            })),
        ),
        Err(e) => {
            warn!(side = "cache", error = %e, "cache sync failed; COMMIT answered NFS3ERR_IO");
            reply_with(
                xid,
                &Res::Commit(NfsResult::Fail(
                    Nfsstat3::IO,
                    nfs3::CommitResFail { file_wcc },
                )),
            )
        }
    }
}

/// SETATTR with a new size (write-back): forwarded under the file's exclusive lock, then
/// the cache cuts (or zero-extends) the file exactly like a local disk would.
pub async fn setattr_size(cache: &Arc<CacheLayer>, up: &Arc<Upstream>, call: Bytes) -> BytesMut {
    let Ok(h) = CallHeader::parse(&call) else {
        return accepted_reply(0, AcceptStat::GARBAGE_ARGS);
    };
    let xid = h.xid;
    let Ok(Args::Setattr(a)) = Args::decode(Proc::SETATTR, &call[h.args_at..]) else {
        return accepted_reply(xid, AcceptStat::GARBAGE_ARGS);
    };
    let Some(new) = a.new_attributes.size else {
        return accepted_reply(xid, AcceptStat::GARBAGE_ARGS);
    };
    let fh = a.object.0.to_vec();
    let _x = cache.file_lock(&fh).write().await;
    let cred = Cred::of(&call).expect("parsed above");
    // From the lower of the new size and the size known: growing over a region cut
    // earlier must not be acknowledged either.
    let known = cache.effective_attr(&fh).map_or(new, |a| a.size);
    if truncation_at_risk(cache, &fh, new.min(known) / cache.bs, "SETATTR").await {
        return setattr_fail(xid, Nfsstat3::IO);
    }
    if let Err(e) = apply_cut_locked(cache, up, &fh, &cred).await {
        warn!(side = "upstream", error = %e, "a truncation kept in the cache could not be applied; SETATTR answered NFS3ERR_IO");
        return setattr_fail(xid, Nfsstat3::IO);
    }
    cache.change(&fh);
    let reply = match up.call(BytesMut::from(&call[..])).await {
        Ok(r) => r,
        Err(e) => {
            warn!(side = "upstream", error = %e, "SETATTR not forwarded");
            return accepted_reply(xid, AcceptStat::SYSTEM_ERR);
        }
    };
    let old = match parse_reply(&reply) {
        Ok((_, ReplyKind::Accepted { stat, results_at })) if stat == AcceptStat::SUCCESS => {
            match Res::decode(Proc::SETATTR, &reply[results_at..]) {
                Ok(Res::Setattr(NfsResult::Ok(ok))) => Some(ok.obj_wcc.before.map(|b| b.size)),
                _ => None,
            }
        }
        _ => None,
    };
    if let Some(old) = old {
        let (c, fh2) = (cache.clone(), fh.clone());
        let fail = |why: String| {
            warn!(side = "cache", error = %why, "truncation in the cache failed; SETATTR answered NFS3ERR_IO (the client retries)");
            setattr_fail(xid, Nfsstat3::IO)
        };
        match blocking(move || c.truncated(&fh2, old, new)).await {
            Ok(None) => {}
            Ok(Some(u)) => {
                if let Err(e) = write_cut_through(cache, up, &fh, &u).await {
                    return fail(format!("writing the cut block through: {e}"));
                }
                let (c, fh2, block) = (cache.clone(), fh.clone(), u.block);
                if let Err(e) = blocking(move || c.drop_block(&fh2, block)).await {
                    return fail(e.to_string());
                }
            }
            Err(e) => return fail(e.to_string()),
        }
    }
    let (c, call2, stamp) = (cache.clone(), call.clone(), cache.stamp());
    let reply = reply.freeze();
    let r2 = reply.clone();
    match blocking(move || c.observe(&call2, &r2, stamp)).await {
        Some(out) => out,
        None => BytesMut::from(&reply[..]),
    }
}

fn setattr_fail(xid: u32, status: Nfsstat3) -> BytesMut {
    reply_with(
        xid,
        &Res::Setattr(NfsResult::Fail(
            status,
            nfs3::SetattrResFail {
                obj_wcc: WccData::default(),
            },
        )),
    )
}

/// A truncation answered here: SETATTR of the size alone (no guard), or CREATE
/// UNCHECKED of a name the session knows to be an existing regular file with one link,
/// asking nothing but the size of it (a mode, owner or group it already has may be
/// given; the mtime may be set to "now"). The cache cuts the file and records the truncation for the write-back
/// (`CacheLayer::truncate_locally`); nothing crosses to the next hop. None: forward.
pub async fn truncate_here(cache: &Arc<CacheLayer>, p: Proc, call: &Bytes) -> Option<BytesMut> {
    let h = CallHeader::parse(call).ok()?;
    let args = Args::decode(p, &call[h.args_at..]).ok()?;
    let plain = |a: &nfs3::Sattr3, have: Option<&Fattr3>| {
        let same = |want: Option<u32>, is: Option<u32>| want.is_none() || want == is;
        // A truncation sets the mtime anyway: "to the server's time" is what it does here.
        a.size.is_some()
            && a.atime == nfs3::SetTime::DontChange
            && matches!(
                a.mtime,
                nfs3::SetTime::DontChange | nfs3::SetTime::SetToServerTime
            )
            && same(a.mode, have.map(|f| f.mode & 0o7777))
            && same(a.uid, have.map(|f| f.uid))
            && same(a.gid, have.map(|f| f.gid))
    };
    let (fh, new, dir) = match &args {
        Args::Setattr(a) if a.guard.is_none() && plain(&a.new_attributes, None) => {
            (a.object.0.to_vec(), a.new_attributes.size?, None)
        }
        Args::Create(c) => {
            let nfs3::CreateHow3::Unchecked(sa) = &c.how else {
                return None;
            };
            let names = cache.names.as_ref()?;
            let fh = names.known(c.where_.dir.0, c.where_.name)?;
            let have = cache.effective_attr(&fh)?;
            if have.ftype != nfs3::Ftype3::REG || have.nlink > 1 || !plain(sa, Some(&have)) {
                return None;
            }
            (fh, sa.size?, Some(c.where_.dir.0.to_vec()))
        }
        _ => return None,
    };
    let _x = cache.file_lock(&fh).write().await;
    let (c, fh2, cred) = (cache.clone(), fh.clone(), Cred::of(call));
    let (before, after) = match blocking(move || c.truncate_locally(&fh2, new, cred)).await {
        Ok(Some(r)) => r,
        Ok(None) => return None,
        Err(e) => {
            warn!(side = "cache", error = %e, "truncation in the cache failed; answered NFS3ERR_IO (the client retries)");
            return Some(match p {
                Proc::CREATE => reply_with(
                    h.xid,
                    &Res::Create(NfsResult::Fail(
                        Nfsstat3::IO,
                        nfs3::CreateResFail {
                            dir_wcc: WccData::default(),
                        },
                    )),
                ),
                _ => setattr_fail(h.xid, Nfsstat3::IO),
            });
        }
    };
    let res = match dir {
        None => Res::Setattr(NfsResult::Ok(nfs3::SetattrResOk {
            obj_wcc: WccData {
                before: Some(before),
                after: Some(after),
            },
        })),
        Some(dir) => Res::Create(NfsResult::Ok(nfs3::CreateResOk {
            obj: Some(Fh(&fh)),
            obj_attributes: Some(after),
            // The directory does not change: a name that exists is truncated.
            dir_wcc: WccData {
                before: None,
                after: cache.effective_attr(&dir),
            },
        })),
    };
    Some(reply_with(h.xid, &res))
}

/// Applies a truncation kept in the cache (`truncate_here`) at the next hop: SETATTR of
/// the size to the cut, then to the file's local size, before any of the file's bytes
/// written since go there; then its record goes. Call with the file's write-back lock
/// held (or its exclusive lock), so the cut is applied once and before any WRITE of the
/// file. Ok(Some(attributes after)), Ok(None) when the file is gone at the next hop
/// (its local data dropped), Err when it could not be applied (it stays recorded).
async fn apply_cut(
    cache: &Arc<CacheLayer>,
    up: &Upstream,
    fh: &[u8],
    cred: &Cred,
) -> Result<Option<Option<Fattr3>>, String> {
    let Some(cut) = cache.cut(fh) else {
        return Ok(Some(None));
    };
    // Its record sits in a failed cache bank: removed or not, it may come back after a
    // power failure and be applied at the restart, after anything sent now (data marked
    // clean, a WRITE through). So nothing is sent: the file's write-back waits, with
    // its data dirty, for a restart to replay record and data in order.
    if cache.cut_at_risk(fh) {
        return Err(
            "its truncation record is in a failed cache bank; restart the proxy (on a \
             healthy disk) to write this file back"
                .into(),
        );
    }
    let size = cache.local(fh).map_or(cut, |l| l.size);
    let mut after = None;
    let sizes = if size == cut {
        vec![cut]
    } else {
        vec![cut, size]
    };
    for s in sizes {
        let args = Args::Setattr(nfs3::SetattrArgs {
            object: Fh(fh),
            new_attributes: nfs3::Sattr3 {
                size: Some(s),
                ..Default::default()
            },
            guard: None,
        });
        match nfs_call(up, cred, &args).await {
            Ok((reply, at)) => {
                if let Ok(Res::Setattr(NfsResult::Ok(ok))) =
                    Res::decode(Proc::SETATTR, &reply[at..])
                {
                    after = ok.obj_wcc.after.clone();
                }
            }
            Err(e) if e.gone() => {
                info!(
                    side = "upstream",
                    "file removed at the next hop; its truncation and dirty data are dropped"
                );
                cache.forget_file(fh);
                return Ok(None);
            }
            Err(e) => return Err(format!("write-back SETATTR (size {s}): {e}")),
        }
    }
    let (c, fh2, a) = (cache.clone(), fh.to_vec(), after.clone());
    blocking(move || c.cut_applied(&fh2, cut, a))
        .await
        .map_err(|e| format!("clearing a truncation record: {e}"))?;
    debug!(cut, size, "truncation applied at the next hop");
    Ok(Some(after))
}

/// `apply_cut` under the file's write-back lock (for callers that do not hold it).
async fn apply_cut_locked(
    cache: &Arc<CacheLayer>,
    up: &Upstream,
    fh: &[u8],
    cred: &Cred,
) -> Result<Option<Option<Fattr3>>, String> {
    let _wb = cache.wb_lock(fh).lock().await;
    apply_cut(cache, up, fh, cred).await
}

/// Walks `rel` (`a/b/c`) from a directory handle with LOOKUPs, as `cred` (default: the
/// last writer's).
pub async fn lookup_path(
    cache: &CacheLayer,
    up: &Upstream,
    root: &[u8],
    rel: &str,
    cred: Option<Cred>,
) -> Result<Vec<u8>, String> {
    let cred = cred.unwrap_or_else(|| cred_or_none(cache, root));
    let mut fh = root.to_vec();
    for name in rel.split('/').filter(|n| !n.is_empty() && *n != ".") {
        fh = lookup_name(cache, up, &fh, name, &cred).await?.0;
    }
    Ok(fh)
}

/// `name` in directory `dir`: its handle, and its attributes when a LOOKUP brought them.
/// A name the session's metadata knows needs no call (`metadata = "session"`; no
/// attributes then).
pub async fn lookup_name(
    cache: &CacheLayer,
    up: &Upstream,
    dir: &[u8],
    name: &str,
    cred: &Cred,
) -> Result<(Vec<u8>, Option<Fattr3>), String> {
    if let Some(known) = cache
        .names
        .as_ref()
        .and_then(|n| n.known(dir, name.as_bytes()))
    {
        return Ok((known, None));
    }
    let args = Args::Lookup(nfs3::LookupArgs {
        what: nfs3::Diropargs3 {
            dir: Fh(dir),
            name: name.as_bytes(),
        },
    });
    let (reply, at) = nfs_call(up, cred, &args)
        .await
        .map_err(|e| format!("LOOKUP {name}: {e}"))?;
    let Ok(Res::Lookup(NfsResult::Ok(ok))) = Res::decode(Proc::LOOKUP, &reply[at..]) else {
        return Err(format!("LOOKUP {name}: undecodable reply"));
    };
    Ok((ok.object.0.to_vec(), ok.obj_attributes.clone()))
}

/// A file's attributes as its clients see them: what the cache knows (the local size
/// while it has dirty data), else a GETATTR of the next hop as `cred` (default: the last
/// writer's).
pub async fn attributes(
    cache: &Arc<CacheLayer>,
    up: &Upstream,
    fh: &[u8],
    cred: Option<Cred>,
) -> Result<Fattr3, String> {
    let (c, f) = (cache.clone(), fh.to_vec());
    if let Some(a) = blocking(move || c.effective_attr(&f)).await {
        return Ok(a);
    }
    let cred = cred.unwrap_or_else(|| cred_or_none(cache, fh));
    getattr(cache, up, &cred, fh)
        .await
        .map_err(|e| format!("GETATTR: {e}"))
}

/// A block a truncation could not cut in the cache: its dirty bytes below the cut go to
/// the next hop as FILE_SYNC (inside the new size, so they cannot extend the file); the
/// caller then drops the block.
async fn write_cut_through(
    cache: &Arc<CacheLayer>,
    up: &Upstream,
    fh: &[u8],
    u: &super::cached::Uncut,
) -> Result<(), CallError> {
    let d = u.c.dirty.clone().unwrap_or_default();
    let (from, to) = (d.start, d.end.min(u.keep));
    if from >= to {
        return Ok(());
    }
    let cred = cred_or_none(cache, fh);
    let off = u.block * cache.bs + from as u64;
    write_upstream(
        up,
        &cred,
        fh,
        off,
        u.c.bytes(from..to),
        StableHow::FILE_SYNC,
    )
    .await
    .map(|_| ())
}

/// CREATE with a size (write-back): on an existing file it truncates, like SETATTR. The
/// handle is known only from the reply, so the CREATE is forwarded first; then, under
/// the file's exclusive lock, the cache cuts the file, and if the file had local writes
/// the size is set again at the server (a write-back of the file may have landed
/// between the CREATE and the lock).
pub async fn create_sized(cache: &Arc<CacheLayer>, up: &Arc<Upstream>, call: Bytes) -> BytesMut {
    let Ok(h) = CallHeader::parse(&call) else {
        return accepted_reply(0, AcceptStat::GARBAGE_ARGS);
    };
    let xid = h.xid;
    let Some(new) = super::cached::create_size(&call) else {
        return accepted_reply(xid, AcceptStat::GARBAGE_ARGS);
    };
    let stamp = cache.stamp();
    let reply = match up.call(BytesMut::from(&call[..])).await {
        Ok(r) => r,
        Err(e) => {
            warn!(side = "upstream", error = %e, "CREATE not forwarded");
            return accepted_reply(xid, AcceptStat::SYSTEM_ERR);
        }
    };
    cache.observe_names(&call, &reply, stamp);
    let fh = match parse_reply(&reply) {
        Ok((_, ReplyKind::Accepted { stat, results_at })) if stat == AcceptStat::SUCCESS => {
            match Res::decode(Proc::CREATE, &reply[results_at..]) {
                Ok(Res::Create(NfsResult::Ok(ok))) => ok.obj.map(|f| f.0.to_vec()),
                _ => None,
            }
        }
        _ => None,
    };
    let mut stamp = stamp;
    if let Some(fh) = fh {
        let _x = cache.file_lock(&fh).write().await;
        // The handle is known only now: the server has cut the file already, but the
        // CREATE is not acknowledged.
        if truncation_at_risk(cache, &fh, new / cache.bs, "CREATE").await {
            return reply_with(
                xid,
                &Res::Create(NfsResult::Fail(
                    Nfsstat3::IO,
                    nfs3::CreateResFail {
                        dir_wcc: WccData::default(),
                    },
                )),
            );
        }
        let had_local = cache.local(&fh).is_some();
        let cred = Cred::of(&call).expect("parsed above");
        if let Err(e) = apply_cut_locked(cache, up, &fh, &cred).await {
            warn!(side = "upstream", error = %e, "a truncation kept in the cache could not be applied before a CREATE's");
        }
        let (c, fh2) = (cache.clone(), fh.clone());
        match blocking(move || c.truncated(&fh2, None, new)).await {
            Ok(None) => {}
            Ok(Some(u)) => {
                if let Err(e) = write_cut_through(cache, up, &fh, &u).await {
                    warn!(side = "upstream", error = %e, "writing a cut block through failed");
                }
                let (c, fh2, block) = (cache.clone(), fh.clone(), u.block);
                let _ = blocking(move || c.drop_block(&fh2, block)).await;
            }
            Err(e) => warn!(side = "cache", error = %e, "cache truncation after CREATE failed"),
        }
        if had_local {
            let args = Args::Setattr(nfs3::SetattrArgs {
                object: Fh(&fh),
                new_attributes: nfs3::Sattr3 {
                    size: Some(new),
                    ..Default::default()
                },
                guard: None,
            });
            if let Err(e) = nfs_call(up, &cred, &args).await {
                warn!(side = "upstream", error = %e, "re-applying a CREATE's truncation failed");
            }
        }
        stamp = cache.stamp();
    }
    let (c, call2) = (cache.clone(), call.clone());
    let reply = reply.freeze();
    let r2 = reply.clone();
    match blocking(move || c.observe(&call2, &r2, stamp)).await {
        Some(out) => out,
        None => BytesMut::from(&reply[..]),
    }
}

/// What a flush did.
#[derive(Debug, Default, Clone)]
pub struct FlushReport {
    /// Dirty bytes written back and committed.
    pub written: u64,
    pub files: u64,
    /// Files whose dirty data was dropped because the next hop no longer has them.
    pub dropped_files: u64,
    /// Files that could not be written back (their data stays dirty), with why.
    pub failed: Vec<String>,
}

/// Files written back at once (small files cost a WRITE and a COMMIT round trip each;
/// `writeback_in_flight` still bounds the WRITEs in flight).
const FILES_IN_PARALLEL: usize = 64;

/// Writes back every dirty block (or those of one file). Waits while the next hop is
/// down (calls are re-sent after reconnects). One flush at a time; clients keep being
/// served meanwhile.
pub async fn flush(
    cache: &Arc<CacheLayer>,
    up: &Arc<Upstream>,
    only: Option<Vec<u8>>,
) -> Result<FlushReport, String> {
    let _one = cache.flush.lock.lock().await;
    cache.flush.bg_pending.store(false, Ordering::Relaxed);
    // Files with local writes and their write counts, taken *before* the list of dirty
    // blocks: a file written after this point keeps its local view (a WRITE counts only
    // after its bytes are stored).
    let wgens: std::collections::HashMap<Vec<u8>, u64> = cache.local_files().into_iter().collect();
    let c = cache.clone();
    let mut blocks = blocking(move || c.store.dirty_blocks())
        .await
        .map_err(|e| e.to_string())?;
    if let Some(f) = &only {
        blocks.retain(|d| &d.fh == f);
    }
    let total: u64 = blocks.iter().map(|d| d.dirty.len() as u64).sum();
    let p = &cache.flush;
    p.total.store(total, Ordering::Relaxed);
    p.sent.store(0, Ordering::Relaxed);
    p.done.store(0, Ordering::Relaxed);
    p.started_ms.store(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64,
        Ordering::Relaxed,
    );
    p.running.store(true, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let mut by_file: Vec<(Vec<u8>, Vec<DirtyBlock>)> = Vec::new();
    for d in blocks {
        match by_file.last_mut() {
            Some((fh, v)) if *fh == d.fh => v.push(d),
            _ => by_file.push((d.fh.clone(), vec![d])),
        }
    }
    let mut with_dirty: std::collections::HashSet<Vec<u8>> =
        by_file.iter().map(|(f, _)| f.clone()).collect();
    // Files with only a truncation to apply (truncated, not written since).
    for fh in cache.cut_files() {
        if only.as_ref().is_none_or(|f| *f == fh) && with_dirty.insert(fh.clone()) {
            by_file.push((fh, Vec::new()));
        }
    }
    let wgens = Arc::new(wgens);
    let window = Arc::new(Semaphore::new(cache.cfg.writeback_in_flight));
    let files = Arc::new(Semaphore::new(FILES_IN_PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    for (fh, blocks) in by_file {
        let permit = files.clone().acquire_owned().await.expect("never closed");
        let (c, up, w) = (cache.clone(), up.clone(), window.clone());
        let wgen = wgens.get(&fh).copied();
        tasks.spawn(async move {
            let r = flush_file(&c, &up, &w, &fh, blocks, wgen).await;
            drop(permit);
            r
        });
    }
    let mut report = FlushReport::default();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(FileOutcome::Written(n))) => {
                report.written += n;
                report.files += 1;
            }
            Ok(Ok(FileOutcome::Gone)) => report.dropped_files += 1,
            Ok(Err(e)) => report.failed.push(e),
            Err(e) => report.failed.push(format!("write-back task failed: {e}")),
        }
    }
    // Files made local but left without dirty blocks (e.g. truncated to 0): clean now.
    let clean: Vec<(Vec<u8>, u64)> = wgens
        .iter()
        .filter(|(fh, _)| only.as_ref().is_none_or(|f| f == *fh) && !with_dirty.contains(*fh))
        .map(|(fh, w)| (fh.clone(), *w))
        .collect();
    let c = cache.clone();
    blocking(move || {
        for (fh, wgen) in clean {
            c.written_back(&fh, wgen, None);
        }
    })
    .await;
    if cache.store.any_failed() {
        // A failed bank whose dirty data is all at the next hop now is retired, so its
        // at-risk blocks take WRITEs again (`Store::renew_failed_banks`).
        let c = cache.clone();
        match blocking(move || c.store.renew_failed_banks()).await {
            Ok(b) if !b.is_empty() => info!(side = "cache", banks = ?b,
                "failed cache bank(s) renewed: their dirty data is at the next hop; they start over empty in new files"),
            Ok(_) => {}
            Err(e) => warn!(side = "cache", error = %e,
                "a failed cache bank could not be renewed; writes to its at-risk blocks keep being refused"),
        }
    }
    p.running.store(false, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    info!(
        written = report.written,
        files = report.files,
        dropped_files = report.dropped_files,
        failed = report.failed.len(),
        secs = format!("{secs:.2}"),
        "write-back done"
    );
    Ok(report)
}

enum FileOutcome {
    Written(u64),
    /// The file no longer exists at the next hop: its dirty data was dropped.
    Gone,
}

/// Times a file's write-back is retried when the next hop's verifier changes under it.
const VERIFIER_RETRIES: usize = 5;

async fn flush_file(
    cache: &Arc<CacheLayer>,
    up: &Arc<Upstream>,
    window: &Arc<Semaphore>,
    fh: &[u8],
    blocks: Vec<DirtyBlock>,
    wgen: Option<u64>,
) -> Result<FileOutcome, String> {
    let _shared = cache.file_lock(fh).read().await;
    // The write-back changes the file at the next hop: replies to calls forwarded
    // before it (old size, mtime, bytes) must not teach the cache anything after it.
    cache.change(fh);
    let cred = cred_or_none(cache, fh);
    let mut bytes = 0;
    let mut all_clean = true;
    // Decided once per file: the first batch sent changes the file's mtime, after which
    // its sidecar no longer counts as fresh.
    let mut whole = super::upload::plan(cache, up, fh, &cred).await;
    // A truncation answered here goes first: the WRITEs below land on the cut file.
    let Some(mut after) = apply_cut_locked(cache, up, fh, &cred).await? else {
        return Ok(FileOutcome::Gone);
    };
    // In batches, each committed and marked clean before the next: a big file frees its
    // frames as the write-back goes, not only at its end.
    for batch in blocks.chunks(BATCH_BLOCKS) {
        // One write-back of a file's blocks at a time: two WRITEs of the same block
        // must not race to the server (the older could land last while the newer is
        // marked clean).
        let _wb = cache.wb_lock(fh).lock().await;
        if let Some(plan) = &whole {
            // One STORE carries at most `STORE_MAX` bytes, so the server proxy's unread
            // data stays well under its channel pump's bound while it commits.
            let per_store = (super::upload::STORE_MAX / cache.bs).max(1) as usize;
            let mut failed = false;
            for part in batch.chunks(per_store) {
                match super::upload::upload(cache, plan, fh, &cred, part).await {
                    Ok((sent, a)) => {
                        let moved: u64 = sent.iter().map(|(_, _, n)| n).sum();
                        cache.flush.sent.fetch_add(moved, Ordering::Relaxed);
                        let (n, clean) = mark_written(cache, fh, sent).await;
                        bytes += n;
                        all_clean &= clean;
                        after = a;
                    }
                    Err(e) => {
                        warn!(side = "upstream", error = %e,
                            "whole-file write-back failed; writing the file back by blocks");
                        failed = true;
                        break;
                    }
                }
            }
            if !failed {
                continue;
            }
            whole = None;
        }
        match flush_batch(cache, up, window, fh, &cred, batch).await? {
            None => return Ok(FileOutcome::Gone),
            Some((n, clean, a)) => {
                bytes += n;
                all_clean &= clean;
                after = a;
            }
        }
    }
    if let (true, Some(wgen)) = (all_clean, wgen) {
        let (c, fh2) = (cache.clone(), fh.to_vec());
        blocking(move || c.written_back(&fh2, wgen, after)).await;
    }
    Ok(FileOutcome::Written(bytes))
}

/// Blocks written back (and committed) per batch: 512 blocks, 32 MiB at 64 KiB.
const BATCH_BLOCKS: usize = 512;

/// Writes a batch of a file's dirty blocks (UNSTABLE, pipelined), COMMITs, re-sends the
/// batch if the verifier changed, and marks the blocks clean. None: the file is gone at
/// the next hop (its dirty data dropped). Otherwise (bytes, all marked clean, the
/// COMMIT's post-op attributes).
async fn flush_batch(
    cache: &Arc<CacheLayer>,
    up: &Arc<Upstream>,
    window: &Arc<Semaphore>,
    fh: &[u8],
    cred: &Cred,
    blocks: &[DirtyBlock],
) -> Result<Option<(u64, bool, Option<Fattr3>)>, String> {
    for attempt in 0..VERIFIER_RETRIES {
        let mut tasks = tokio::task::JoinSet::new();
        // Increasing offsets: a file grows on the server in order.
        for d in blocks {
            let permit = window.clone().acquire_owned().await.expect("never closed");
            let (c, up, cred, fh, block) = (
                cache.clone(),
                up.clone(),
                cred.clone(),
                fh.to_vec(),
                d.block,
            );
            tasks.spawn(async move {
                let (c2, fh2) = (c.clone(), fh.clone());
                let got = blocking(move || c2.store.get(&fh2, block))
                    .await
                    .map_err(|e| CallError::Rpc(e.to_string()))?;
                let Some(got) = got else { return Ok(None) };
                let Some(dirty) = got.dirty.clone() else {
                    return Ok(None);
                };
                let bytes = got.bytes(dirty.clone());
                let off = block * c.bs + dirty.start as u64;
                let (verf, _) =
                    write_upstream(&up, &cred, &fh, off, bytes, StableHow::UNSTABLE).await?;
                drop(permit);
                c.flush
                    .sent
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(Some((block, got.seq, bytes.len() as u64, verf)))
            });
        }
        let mut written = Vec::new();
        let mut failure: Option<CallError> = None;
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(Some(w))) => written.push(w),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => failure = Some(e),
                Err(e) => failure = Some(CallError::Rpc(format!("task failed: {e}"))),
            }
        }
        if let Some(e) = failure {
            if e.gone() {
                info!(
                    side = "upstream",
                    "file removed at the next hop; its dirty data is dropped"
                );
                cache.forget_file(fh);
                return Ok(None);
            }
            warn!(side = "upstream", error = %e, "write-back of a file failed; its data stays dirty");
            return Err(format!("write-back failed: {e}"));
        }
        let args = Args::Commit(CommitArgs {
            file: Fh(fh),
            offset: 0,
            count: 0,
        });
        let (reply, at) = match nfs_call(up, cred, &args).await {
            Ok(r) => r,
            Err(e) if e.gone() => {
                cache.forget_file(fh);
                return Ok(None);
            }
            Err(e) => return Err(format!("write-back COMMIT failed: {e}")),
        };
        let Ok(Res::Commit(NfsResult::Ok(ok))) = Res::decode(Proc::COMMIT, &reply[at..]) else {
            return Err("undecodable COMMIT reply".into());
        };
        if written.iter().any(|w| w.3 != ok.verf) {
            warn!(
                side = "upstream",
                attempt, "next hop's write verifier changed during write-back; re-sending the file"
            );
            // Those bytes are to be sent again: the progress counts them once.
            let again: u64 = written.iter().map(|w| w.2).sum();
            let _ = cache
                .flush
                .sent
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    Some(s.saturating_sub(again))
                });
            continue;
        }
        let sent = written
            .into_iter()
            .map(|(b, seq, n, _)| (b, seq, n))
            .collect();
        let (bytes, all_clean) = mark_written(cache, fh, sent).await;
        return Ok(Some((bytes, all_clean, ok.file_wcc.after.clone())));
    }
    Err("the next hop's write verifier kept changing".into())
}

/// Marks blocks written back (and committed) clean, unless they changed meanwhile
/// (another version). Returns (bytes, whether all were marked clean).
async fn mark_written(
    cache: &Arc<CacheLayer>,
    fh: &[u8],
    sent: super::upload::Sent,
) -> (u64, bool) {
    let mut bytes = 0;
    let mut all_clean = true;
    for (block, seq, n) in sent {
        let (c, fh2) = (cache.clone(), fh.to_vec());
        let clean = blocking(move || c.store.mark_clean(&fh2, block, seq))
            .await
            .unwrap_or(false);
        all_clean &= clean;
        bytes += n;
        cache.flush.done.fetch_add(n, Ordering::Relaxed);
    }
    // A call forwarded while these bytes were on their way may have been answered with
    // the old ones: its reply, seen after this, must not refill the blocks now clean.
    cache.change(fh);
    // The versions those blocks superseded were cleared: durably, before anything can
    // rewrite the clean blocks in place.
    let c = cache.clone();
    if let Err(e) = blocking(move || c.store.sync_tags()).await {
        warn!(side = "cache", error = %e, "cache tag sync after write-back failed");
    }
    (bytes, all_clean)
}

/// Progress of the running flush as JSON: bytes left and the rate so far.
pub fn progress_json(cache: &CacheLayer) -> String {
    let p = &cache.flush;
    let (total, sent, done) = (
        p.total.load(Ordering::Relaxed),
        p.sent.load(Ordering::Relaxed),
        p.done.load(Ordering::Relaxed),
    );
    let moved = sent.min(total);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let secs =
        (now_ms.saturating_sub(p.started_ms.load(Ordering::Relaxed)) as f64 / 1000.0).max(0.001);
    format!(
        "{{\"running\":{},\"bytes_total\":{total},\"bytes_sent\":{moved},\"bytes_done\":{done},\"bytes_left\":{},\"rate_bytes_per_s\":{:.0}}}",
        p.running.load(Ordering::Relaxed),
        total - moved,
        moved as f64 / secs
    )
}
