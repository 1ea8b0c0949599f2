//! One long-lived connection to the next hop, reconnected for ever.
//!
//! Calls wait in `table` (xid → record and reply slot) until their reply arrives. The
//! writer sends a call when its xid comes through `queue`; after a reconnect it first
//! re-sends everything in `table` that was not sent on the new connection. `sent_gen`
//! records which connection a call went out on, so nothing is sent twice on one connection.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWriteExt, BufWriter, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::UpstreamStats;
use crate::config::{Endpoint, UpstreamConfig};
use crate::rpc::{read_record, write_record};
use crate::transport::{self, BoxStream};

/// A call waiting for its reply.
pub(super) struct Pending {
    /// The call record, with our xid.
    pub msg: Bytes,
    pub tx: oneshot::Sender<BytesMut>,
    /// Generation of the connection it was last sent on (0 = never sent).
    pub sent_gen: u64,
}

type Table = Arc<Mutex<HashMap<u32, Pending>>>;

pub(super) struct Link {
    table: Table,
    /// xids of newly registered calls, for the writer. Its capacity equals the in-flight
    /// limit, so a send only waits while the link is down.
    pub queue: mpsc::Sender<u32>,
    task: JoinHandle<()>,
}

/// Removes a call from the table if its caller goes away before the reply.
pub(super) struct Registration {
    table: Table,
    xid: u32,
    armed: bool,
}

impl Registration {
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.armed {
            self.table.lock().expect("table lock").remove(&self.xid);
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Link {
    pub fn start(
        name: &'static str,
        index: usize,
        endpoint: Endpoint,
        cfg: UpstreamConfig,
        max_record: usize,
        stats: Arc<UpstreamStats>,
    ) -> Link {
        let table: Table = Arc::default();
        let (queue, rx) = mpsc::channel(cfg.max_in_flight.max(1));
        let task = tokio::spawn(run(
            LinkCtx {
                name,
                index,
                endpoint,
                cfg,
                max_record,
                stats,
                table: table.clone(),
            },
            rx,
        ));
        Link { table, queue, task }
    }

    pub fn register(&self, xid: u32, p: Pending) -> Registration {
        self.table.lock().expect("table lock").insert(xid, p);
        Registration {
            table: self.table.clone(),
            xid,
            armed: true,
        }
    }
}

struct LinkCtx {
    name: &'static str,
    index: usize,
    endpoint: Endpoint,
    cfg: UpstreamConfig,
    max_record: usize,
    stats: Arc<UpstreamStats>,
    table: Table,
}

async fn run(ctx: LinkCtx, mut queue: mpsc::Receiver<u32>) {
    let mut generation = 0u64;
    let mut backoff = ctx.cfg.backoff_min;
    let mut failures = 0u32;
    loop {
        let stream = match transport::connect(&ctx.endpoint, ctx.cfg.connect_timeout).await {
            Ok(s) => s,
            Err(e) => {
                failures += 1;
                let waiting = ctx.table.lock().expect("table lock").len();
                // First failure and then every 10th, so a long outage does not flood the log.
                if failures == 1 || failures.is_multiple_of(10) {
                    warn!(side = "upstream", upstream = ctx.name, endpoint = %ctx.endpoint,
                        link = ctx.index, error = %e, waiting, retry_in = ?backoff,
                        "cannot connect to the next hop; will retry");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ctx.cfg.backoff_max);
                continue;
            }
        };
        generation += 1;
        ctx.stats.connects.fetch_add(1, Ordering::Relaxed);
        if generation > 1 || failures > 0 {
            info!(upstream = ctx.name, endpoint = %ctx.endpoint, link = ctx.index,
                after_failures = failures, "connected to the next hop");
        } else {
            debug!(upstream = ctx.name, endpoint = %ctx.endpoint, link = ctx.index, "connected");
        }
        failures = 0;
        backoff = ctx.cfg.backoff_min;
        let (rd, wr) = tokio::io::split(stream);
        let why = tokio::select! {
            r = read_replies(&ctx, rd) => r,
            r = write_calls(&ctx, wr, &mut queue, generation) => r,
        };
        let waiting = ctx.table.lock().expect("table lock").len();
        warn!(side = "upstream", upstream = ctx.name, endpoint = %ctx.endpoint,
            link = ctx.index, reason = %why, waiting,
            "connection to the next hop lost; reconnecting, calls in flight will be re-sent");
    }
}

/// Reads replies and hands each to its waiting call. Returns why the connection ended.
async fn read_replies(ctx: &LinkCtx, mut rd: ReadHalf<BoxStream>) -> String {
    let mut rd = tokio::io::BufReader::with_capacity(256 << 10, &mut rd);
    loop {
        let rec = match read_record(&mut rd, ctx.max_record).await {
            Ok(Some(r)) => r,
            Ok(None) => return "closed by the next hop".into(),
            Err(e) => return e.to_string(),
        };
        if rec.len() < 4 {
            return "reply too short to carry an xid".into();
        }
        let xid = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]);
        let pending = ctx.table.lock().expect("table lock").remove(&xid);
        match pending {
            // The caller may have gone away meanwhile; then the reply is dropped.
            Some(p) => drop(p.tx.send(rec)),
            None => debug!(
                upstream = ctx.name,
                xid, "reply for a call nobody waits for"
            ),
        }
    }
}

/// Sends calls: first those not yet sent on this connection, then each newly queued one.
async fn write_calls(
    ctx: &LinkCtx,
    wr: WriteHalf<BoxStream>,
    queue: &mut mpsc::Receiver<u32>,
    generation: u64,
) -> String {
    let mut wr = BufWriter::with_capacity(256 << 10, wr);
    let mut resend: Vec<(u32, Bytes)> = {
        let mut t = ctx.table.lock().expect("table lock");
        t.iter_mut()
            .filter(|(_, p)| p.sent_gen != generation)
            .map(|(x, p)| {
                p.sent_gen = generation;
                (*x, p.msg.clone())
            })
            .collect()
    };
    resend.sort_by_key(|(x, _)| *x);
    if !resend.is_empty() {
        ctx.stats
            .resent
            .fetch_add(resend.len() as u64, Ordering::Relaxed);
        info!(
            upstream = ctx.name,
            link = ctx.index,
            calls = resend.len(),
            "re-sending calls"
        );
    }
    for (_, msg) in resend {
        if let Err(e) = write_record(&mut wr, &msg).await {
            return e.to_string();
        }
    }
    if let Err(e) = wr.flush().await {
        return e.to_string();
    }
    loop {
        let Some(xid) = queue.recv().await else {
            // All senders gone: the Upstream was dropped. Park until aborted.
            std::future::pending::<()>().await;
            unreachable!()
        };
        let msg = {
            let mut t = ctx.table.lock().expect("table lock");
            match t.get_mut(&xid) {
                Some(p) if p.sent_gen != generation => {
                    p.sent_gen = generation;
                    Some(p.msg.clone())
                }
                _ => None, // already sent by the re-send pass, or cancelled
            }
        };
        if let Some(msg) = msg
            && let Err(e) = write_record(&mut wr, &msg).await
        {
            return e.to_string();
        }
        if queue.is_empty()
            && let Err(e) = wr.flush().await
        {
            return e.to_string();
        }
    }
}
