//! One long-lived connection to the next hop, reconnected for ever.
//!
//! A call is written to the socket by the task that sends it (no hand-off to a writer
//! task: one less wake-up per RPC), under the `writer` lock, and waits in `table`
//! (xid → record and completion) until the link's reader task sees its reply and runs
//! the completion. After a reconnect the link first re-sends every call in `table` that
//! was not sent on the new connection; `sent_gen` records which connection a call went
//! out on, so nothing is sent twice on one connection. A lost connection is charged to
//! a call only when that call was the one unanswered call on it; calls that were
//! unanswered on two lost connections (suspects) are re-sent first in probing batches
//! of 1, 2, 4, ... calls, each batch answered before the next goes out, so a call that
//! breaks the next hop ends up alone and the others are answered. A call charged
//! `resend_limit` times is answered SYSTEM_ERR instead of being sent again.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{Completion, UpstreamStats};
use crate::config::UpstreamConfig;
use crate::rpc::msg::{AcceptStat, accepted_reply};
use crate::rpc::record::{Gather, RecordOut};
use crate::rpc::{RecordError, RecordReader};
use crate::transport::{BoxStream, Dialer};

/// A call waiting for its reply.
pub(super) struct Pending {
    /// The call record as the client sent it (our xid, the table's key, replaces the
    /// client's on the wire).
    pub msg: Bytes,
    /// The xid the client chose, restored in the reply.
    pub client_xid: [u8; 4],
    pub done: Completion,
    /// Generation of the connection it was last sent on (0 = never sent).
    pub sent_gen: u64,
    /// Lost connections it was sent on and had no reply when they broke.
    pub lost: u32,
    /// Of those, the ones where it was the only call without a reply.
    pub charged: u32,
    /// Probing batches it was in that got no reply within `PROBE_WAIT`: suspects are
    /// probed least-slow first, so slow calls cannot keep a poisonous one from being alone.
    pub slow: u32,
    /// Order in which the link took the call (set by `Link::send`): re-sends go oldest
    /// first by this, not by xid, which wraps.
    pub seq: u64,
    /// Held until the reply arrives: bounds calls in flight per endpoint.
    pub _permit: OwnedSemaphorePermit,
}

/// The connection's write side, if connected, and its generation.
struct Slot {
    generation: u64,
    half: Option<CallWriter>,
    /// Suspects are being probed on this connection: new calls wait in the table (the
    /// probe's batch must be alone) and go out with the rest once probing ends.
    probing: bool,
    /// `seq` of the next call `Link::send` takes.
    next_seq: u64,
}

/// Where a connection's calls go: the stream, or its owned-buffer sink when it has one
/// (an SSH channel, which then takes a large call's arguments as they are, no copy).
type CallWriter = RecordOut<WriteHalf<BoxStream>, WriteHalf<BoxStream>>;

/// Writes `msg` (a call record body) as one record with `xid` in place of its own, and
/// sends it on.
async fn send_call(w: &mut CallWriter, xid: u32, msg: &Bytes) -> std::io::Result<()> {
    w.record_with_xid(xid, msg).await?;
    w.flush().await
}

/// How long a probing batch may wait for its replies. A re-sent call may never be
/// answered (a server's duplicate request cache drops a copy of a call it is still
/// executing); past this the link stops probing and sends everything.
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

struct Shared {
    table: Mutex<HashMap<u32, Pending>>,
    writer: tokio::sync::Mutex<Slot>,
    /// The generation of the last connection known dead. A writer that failed publishes
    /// it, so the reader of that connection stops and the link reconnects; `run`
    /// publishes it when the connection ends, so `Link::send` writes nothing more on it.
    broken: watch::Sender<u64>,
}

pub(super) struct Link {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Marks the connection broken if a write is abandoned half way (its future dropped),
/// because the stream would then carry a partial record.
struct WriteGuard<'a> {
    slot: &'a mut Slot,
    broken: &'a watch::Sender<u64>,
    done: bool,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.slot.half = None;
            self.broken.send_replace(self.slot.generation);
        }
    }
}

impl Link {
    pub fn start(
        name: &'static str,
        index: usize,
        endpoint: Dialer,
        cfg: UpstreamConfig,
        max_record: usize,
        stats: Arc<UpstreamStats>,
    ) -> Link {
        let shared = Arc::new(Shared {
            table: Mutex::default(),
            writer: tokio::sync::Mutex::new(Slot {
                generation: 0,
                half: None,
                probing: false,
                next_seq: 0,
            }),
            broken: watch::channel(0).0,
        });
        let task = tokio::spawn(run(LinkCtx {
            name,
            index,
            endpoint,
            cfg,
            max_record,
            stats,
            shared: shared.clone(),
        }));
        Link { shared, task }
    }

    /// Is `xid` taken by a call still waiting? (Only after 2^32 calls, by one that has
    /// waited all that time; `Upstream::send` then picks another.)
    pub fn holds(&self, xid: u32) -> bool {
        self.shared
            .table
            .lock()
            .expect("table lock")
            .contains_key(&xid)
    }

    /// Registers the call and writes it if connected and not probing; otherwise it goes
    /// out with the re-sends (after probing, or on the next connection).
    pub async fn send(&self, xid: u32, mut p: Pending) {
        let mut slot = self.shared.writer.lock().await;
        let msg = p.msg.clone();
        p.seq = slot.next_seq;
        slot.next_seq += 1;
        let now =
            slot.half.is_some() && !slot.probing && *self.shared.broken.borrow() != slot.generation;
        if now {
            p.sent_gen = slot.generation;
        }
        self.shared.table.lock().expect("table lock").insert(xid, p);
        if !now {
            return;
        }
        let mut g = WriteGuard {
            slot: &mut slot,
            broken: &self.shared.broken,
            done: false,
        };
        let half = g.slot.half.as_mut().expect("checked above");
        match send_call(half, xid, &msg).await {
            Ok(()) => g.done = true,
            Err(e) => debug!(xid, error = %e, "write to the next hop failed; will re-send"),
        }
    }
}

struct LinkCtx {
    name: &'static str,
    index: usize,
    endpoint: Dialer,
    cfg: UpstreamConfig,
    max_record: usize,
    stats: Arc<UpstreamStats>,
    shared: Arc<Shared>,
}

impl LinkCtx {
    fn waiting(&self) -> usize {
        self.shared.table.lock().expect("table lock").len()
    }
}

async fn run(ctx: LinkCtx) {
    let mut backoff = ctx.cfg.backoff_min;
    let mut failures = 0u32;
    let mut connected_before = false;
    // The local port of the last connection, reused so the server can match re-sends.
    let mut last_port = None;
    loop {
        let (stream, sink) = match ctx
            .endpoint
            .connect(ctx.cfg.connect_timeout, last_port)
            .await
        {
            Ok(c) => {
                last_port = c.local_port;
                (c.stream, c.sink)
            }
            Err(e) => {
                failures += 1;
                // First failure and then every 10th, so a long outage does not flood the log.
                if failures == 1 || failures.is_multiple_of(10) {
                    warn!(side = "upstream", upstream = ctx.name, endpoint = %ctx.endpoint,
                        link = ctx.index, error = %e, waiting = ctx.waiting(), retry_in = ?backoff,
                        "cannot connect to the next hop; will retry");
                }
                back_off(&mut backoff, ctx.cfg.backoff_max).await;
                continue;
            }
        };
        ctx.stats.connects.fetch_add(1, Ordering::Relaxed);
        if connected_before || failures > 0 {
            info!(upstream = ctx.name, endpoint = %ctx.endpoint, link = ctx.index,
                after_failures = failures, "connected to the next hop");
        } else {
            debug!(upstream = ctx.name, endpoint = %ctx.endpoint, link = ctx.index, "connected");
        }
        connected_before = true;
        failures = 0;
        let (rd, wr) = tokio::io::split(stream);
        let generation = {
            let mut slot = ctx.shared.writer.lock().await;
            slot.generation += 1;
            slot.half = Some(match sink {
                Some(sink) => RecordOut::Owned(Gather::new(sink), wr),
                None => RecordOut::Stream(wr),
            });
            // New calls wait until `resend` has sent what is owed (it ends probing).
            slot.probing = true;
            slot.generation
        };
        let mut broken = ctx.shared.broken.subscribe();
        let mut replies = 0u64;
        ctx.stats.links_up.fetch_add(1, Ordering::Relaxed);
        let why = {
            // Replies are read while the re-sends go out: a probing batch waits for its
            // replies before the next is written.
            let reader = read_replies(&ctx, rd, &mut replies);
            let resend = resend(&ctx, generation);
            tokio::pin!(reader, resend);
            let mut resent = false;
            loop {
                tokio::select! {
                    r = &mut reader => break r,
                    r = &mut resend, if !resent => match r {
                        Ok(()) => resent = true,
                        Err(e) => break e,
                    },
                    _ = broken.wait_for(|g| *g == generation) => {
                        break "a write to the next hop failed".into()
                    }
                }
            }
        };
        ctx.stats.links_up.fetch_sub(1, Ordering::Relaxed);
        // Before waiting for the writer lock: a call queued on it meanwhile must not be
        // written on the dead connection (it would be counted lost with it).
        ctx.shared.broken.send_replace(generation);
        ctx.shared.writer.lock().await.half = None;
        give_up_on(&ctx, generation);
        warn!(side = "upstream", upstream = ctx.name, endpoint = %ctx.endpoint,
            link = ctx.index, reason = %why, waiting = ctx.waiting(), replies,
            "connection to the next hop lost; reconnecting, calls in flight will be re-sent");
        if replies > 0 {
            backoff = ctx.cfg.backoff_min;
        } else {
            // Connected but never answered (a hop that accepts and drops us, or one
            // that chokes on a call we re-send): do not spin.
            back_off(&mut backoff, ctx.cfg.backoff_max).await;
        }
    }
}

/// Waits `backoff`, then doubles it up to `max`.
async fn back_off(backoff: &mut std::time::Duration, max: std::time::Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(max);
}

/// Re-sends, on the new connection `generation`, every call not yet sent on it. First the
/// suspects (calls unanswered on two lost connections), oldest first, in probing
/// batches of 1, 2, 4, ... calls: a batch goes out alone (`Slot::probing` holds new
/// calls back) and the next only once all its replies are in, so a call that breaks the
/// next hop is soon alone when it does (and charged, `give_up_on`), while a mere double
/// hiccup costs a few round trips, not one per call. A batch not answered within
/// `PROBE_WAIT` ends probing, and its calls are probed after the never-slow ones next
/// time. Then everything else, in the order the link took them, and probing ends. A
/// call is marked as sent on the connection just before its own write, so a write that
/// fails leaves the later ones unmarked. Err says why the connection is given up.
async fn resend(ctx: &LinkCtx, generation: u64) -> Result<(), String> {
    let mut batch = 1usize;
    loop {
        let (calls, answered) = {
            let mut t = ctx.shared.table.lock().expect("table lock");
            let mut order: Vec<(u32, u64, u32)> = t
                .iter()
                .filter(|(_, p)| p.lost >= 2 && p.sent_gen != generation)
                .map(|(x, p)| (p.slow, p.seq, *x))
                .collect();
            if order.is_empty() {
                break;
            }
            order.sort_unstable();
            order.truncate(batch);
            let xids: Vec<u32> = order.into_iter().map(|(_, _, x)| x).collect();
            let mut calls = Vec::with_capacity(xids.len());
            let mut answered = Vec::with_capacity(xids.len());
            for xid in xids {
                let p = t.get_mut(&xid).expect("found above");
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let done = std::mem::replace(&mut p.done, Box::new(|_| {}));
                p.done = Box::new(move |r| {
                    done(r);
                    let _ = tx.send(());
                });
                calls.push(xid);
                answered.push(rx);
            }
            (calls, answered)
        };
        debug!(
            upstream = ctx.name,
            link = ctx.index,
            calls = calls.len(),
            "probing suspects"
        );
        {
            let mut slot = ctx.shared.writer.lock().await;
            for &xid in &calls {
                if write_resend(ctx, &mut slot, generation, xid).await? {
                    ctx.stats.probed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Answered (or failed), or the connection is lost and this future dropped.
        let all = async {
            for rx in answered {
                let _ = rx.await;
            }
        };
        if tokio::time::timeout(PROBE_WAIT, all).await.is_err() {
            // Slow, not breaking the connection: probed after the suspects that were
            // never slow, so they cannot keep the call that breaks it from being alone.
            let mut t = ctx.shared.table.lock().expect("table lock");
            for xid in &calls {
                if let Some(p) = t.get_mut(xid) {
                    p.slow += 1;
                }
            }
            info!(
                upstream = ctx.name,
                link = ctx.index,
                calls = calls.len(),
                "suspects re-sent on a new connection not answered in time; sending the rest"
            );
            break;
        }
        batch = batch.saturating_mul(2);
    }
    let mut slot = ctx.shared.writer.lock().await;
    let mut order: Vec<(u64, u32)> = {
        let t = ctx.shared.table.lock().expect("table lock");
        t.iter()
            .filter(|(_, p)| p.sent_gen != generation)
            .map(|(x, p)| (p.seq, *x))
            .collect()
    };
    order.sort_unstable();
    let mut again = 0u64;
    for (_, xid) in order {
        again += write_resend(ctx, &mut slot, generation, xid).await? as u64;
    }
    slot.probing = false;
    if again > 0 {
        info!(
            upstream = ctx.name,
            link = ctx.index,
            calls = again,
            "re-sent calls"
        );
    }
    Ok(())
}

/// Writes call `xid` (if still waiting) on connection `generation`, marked as sent on it
/// first; Ok(true) if it was a re-send (counted). A failed write drops the connection's
/// writer.
async fn write_resend(
    ctx: &LinkCtx,
    slot: &mut Slot,
    generation: u64,
    xid: u32,
) -> Result<bool, String> {
    let (msg, before) = {
        let mut t = ctx.shared.table.lock().expect("table lock");
        let Some(p) = t.get_mut(&xid) else {
            return Ok(false); // answered (on the old connection) or failed meanwhile
        };
        let before = std::mem::replace(&mut p.sent_gen, generation);
        (p.msg.clone(), before)
    };
    let half = slot.half.as_mut().ok_or("the connection was dropped")?;
    if let Err(e) = send_call(half, xid, &msg).await {
        warn!(side = "upstream", upstream = ctx.name, error = %e, "re-send failed; reconnecting");
        slot.half = None;
        return Err(format!("re-send failed: {e}"));
    }
    let again = before != 0;
    if again {
        ctx.stats.resent.fetch_add(1, Ordering::Relaxed);
    }
    Ok(again)
}

/// Reads replies and runs each call's completion; counts them in `replies`. Returns
/// why the connection ended.
async fn read_replies(ctx: &LinkCtx, mut rd: ReadHalf<BoxStream>, replies: &mut u64) -> String {
    let mut records = RecordReader::new(ctx.max_record);
    loop {
        let mut rec = match records.next(&mut rd).await {
            Ok(Some(r)) => r,
            Ok(None) => return "closed by the next hop".into(),
            Err(e @ RecordError::TooLarge { xid: Some(xid), .. }) => {
                // Fail just that call, so the re-send after reconnecting does not draw
                // the same oversized reply for ever.
                fail_call(ctx, xid, &e);
                return e.to_string();
            }
            Err(e) => return e.to_string(),
        };
        if rec.len() < 4 {
            return "reply too short to carry an xid".into();
        }
        *replies += 1;
        let xid = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]);
        let pending = ctx.shared.table.lock().expect("table lock").remove(&xid);
        match pending {
            Some(p) => {
                rec[..4].copy_from_slice(&p.client_xid);
                (p.done)(rec);
            }
            None => debug!(
                upstream = ctx.name,
                xid, "reply for a call nobody waits for"
            ),
        }
    }
}

/// Counts the loss of connection `generation` against the calls sent on it that have no
/// reply yet. Only a call that was the one such call is charged, and it fails
/// (SYSTEM_ERR) once charged `resend_limit` times: a call that breaks the next hop
/// whenever it arrives (over the next hop's record limit, or one that kills an SSH
/// session) would otherwise be re-sent for ever, and the client that made it would wait
/// for ever. When several were unanswered, none is charged; those unanswered on two lost
/// connections are re-sent in probing batches (`resend`), which single out the one that
/// breaks the next hop, while the others are answered.
fn give_up_on(ctx: &LinkCtx, generation: u64) {
    let limit = ctx.cfg.resend_limit;
    let failed: Option<Pending> = {
        let mut t = ctx.shared.table.lock().expect("table lock");
        let unanswered: Vec<u32> = t
            .iter_mut()
            .filter(|(_, p)| p.sent_gen == generation)
            .map(|(x, p)| {
                p.lost += 1;
                *x
            })
            .collect();
        let alone = match unanswered[..] {
            [x] => Some(x),
            _ => None,
        };
        alone.and_then(|x| {
            let p = t.get_mut(&x).expect("found above");
            p.charged += 1;
            if p.charged >= limit {
                t.remove(&x)
            } else {
                None
            }
        })
    };
    if let Some(p) = failed {
        let (prog, vers, proc_) = call_of(&p.msg);
        ctx.stats.abandoned.fetch_add(1, Ordering::Relaxed);
        warn!(side = "upstream", upstream = ctx.name, endpoint = %ctx.endpoint, prog, vers,
            proc_, lost = p.lost, charged = p.charged, bytes = p.msg.len(),
            "the connection to the next hop was lost each time this call was the only one \
             unanswered on it (upstream.resend_limit); answering it with SYSTEM_ERR");
        (p.done)(accepted_reply(
            u32::from_be_bytes(p.client_xid),
            AcceptStat::SYSTEM_ERR,
        ));
    }
}

/// Program, version and procedure of a call record (zeros where it is too short).
fn call_of(msg: &[u8]) -> (u32, u32, u32) {
    let word = |i: usize| {
        msg.get(i * 4..i * 4 + 4)
            .map_or(0, |w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
    };
    (word(3), word(4), word(5))
}

/// Completes call `xid` with SYSTEM_ERR because its reply could not be taken.
fn fail_call(ctx: &LinkCtx, xid: u32, why: &RecordError) {
    let Some(p) = ctx.shared.table.lock().expect("table lock").remove(&xid) else {
        return;
    };
    warn!(side = "upstream", upstream = ctx.name, error = %why,
        "reply over listen.max_record; answering the call with SYSTEM_ERR");
    (p.done)(accepted_reply(
        u32::from_be_bytes(p.client_xid),
        AcceptStat::SYSTEM_ERR,
    ));
}
