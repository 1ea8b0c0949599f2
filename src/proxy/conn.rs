//! One client connection: a reader that parses records, routes calls and sends forwarded
//! ones upstream itself, and a writer task that sends replies in the order they complete
//! (RPC matches them by xid).
//!
//! A forwarded call's reply is handled by a completion that runs on the upstream link's
//! reader: fix the reply up, record it in the duplicate request cache, queue it for the
//! writer. So the path of a call is: this reader → upstream socket → link reader → this
//! writer, with no task in between.
//!
//! Every call in progress holds a slot (`max_requests_per_conn`) and a share of the byte
//! budget (`max_buffered`) until the writer has written its reply; when either runs out,
//! the reader stops reading this client (backpressure). Because the reply channel has as
//! many places as there are slots, queueing a reply never waits.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::dispatch::{self, Route, Target};
use super::drc::{self, Key, Lookup};
use super::{Proxy, cached};
use crate::metrics::Metrics;
use crate::nfs3::Proc;
use crate::rpc::{RecordError, RecordReader, write_record};
use crate::upstream::Completion;

/// A reply on its way out, with what the call held until it is written.
struct Outgoing {
    reply: Bytes,
    _slot: OwnedSemaphorePermit,
    _budget: Option<OwnedSemaphorePermit>,
}

pub(super) async fn serve(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let limit = proxy.cfg.listen.max_requests_per_conn;
    let (reply_tx, reply_rx) = mpsc::channel::<Outgoing>(limit);
    let (closing_tx, closing_rx) = oneshot::channel();
    let writer = tokio::spawn(write_replies(wr, reply_rx, closing_rx));

    let slots = Arc::new(Semaphore::new(limit));
    let mut rd = rd;
    let mut records = RecordReader::new(proxy.cfg.listen.max_record);
    let mut stopping = false;
    let reason = loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break "internal: slots closed".to_string();
        };
        let rec = tokio::select! {
            r = records.next(&mut rd) => r,
            _ = shutdown.changed() => { stopping = true; break "proxy shutting down".into() }
            _ = reply_tx.closed() => break "client write side failed".into(),
        };
        let rec = match rec {
            Ok(Some(r)) => r,
            Ok(None) => break "closed by client".into(),
            Err(e @ RecordError::TooLarge { .. }) => {
                Metrics::inc(&proxy.metrics.bad_records);
                warn!(side = "client", %peer, error = %e, "record over listen.max_record; closing the connection");
                break e.to_string();
            }
            Err(e) => break e.to_string(),
        };
        match dispatch::route(&rec, proxy.port, peer.ip(), &proxy.metrics) {
            Route::Drop => debug!(%peer, "dropped a record that is not a call"),
            Route::Reply(reply) => {
                let o = Outgoing {
                    reply: reply.freeze(),
                    _slot: slot,
                    _budget: None,
                };
                if reply_tx.send(o).await.is_err() {
                    break "client write side failed".into();
                }
            }
            Route::Forward {
                to,
                proc_,
                key,
                cost,
            } => {
                // Memory budget: wait (and so stop reading this client) until the bytes
                // this call will hold are available.
                let mut rec = rec;
                if to == Target::Nfs {
                    dispatch::clamp_counts(&mut rec, proc_, proxy.cfg.listen.max_io);
                }
                let Ok(budget) = proxy.buffers.charge(cost).await else {
                    break "internal: buffer budget closed".into();
                };
                let held = Outgoing {
                    reply: Bytes::new(),
                    _slot: slot,
                    _budget: Some(budget),
                };
                match key.map(|k| proxy.drc.begin(k)) {
                    Some(Lookup::Replay(r)) => {
                        let o = Outgoing { reply: r, ..held };
                        if reply_tx.send(o).await.is_err() {
                            break "client write side failed".into();
                        }
                    }
                    Some(Lookup::Wait(rx)) => {
                        // A retransmission of a call in flight: answer when it is.
                        let tx = reply_tx.clone();
                        tokio::spawn(async move {
                            if let Ok(r) = rx.await {
                                let o = Outgoing { reply: r, ..held };
                                let _ = tx.send(o).await;
                            }
                        });
                    }
                    Some(Lookup::New) | None => {
                        let rec = rec.freeze();
                        let mut observe = None;
                        if let (Some(cache), Target::Nfs) = (&proxy.cache, to) {
                            match cached::before_forward(cache, proc_, &rec).await {
                                cached::Before::Hit(reply) => {
                                    if let Some(k) = key {
                                        proxy.drc.finish(k, &reply, false);
                                    }
                                    let o = Outgoing {
                                        reply: reply.freeze(),
                                        ..held
                                    };
                                    if reply_tx.send(o).await.is_err() {
                                        break "client write side failed".into();
                                    }
                                    continue;
                                }
                                cached::Before::Forward { stamp } => {
                                    observe = Some((cache.clone(), rec.clone(), stamp));
                                }
                            }
                        }
                        let upstream = match to {
                            Target::Nfs => &proxy.nfs,
                            Target::Mount => &proxy.mount,
                        };
                        let done =
                            completion(&proxy, to, proc_, key, reply_tx.clone(), held, observe);
                        if let Err(e) = upstream.send(rec, done).await {
                            warn!(side = "upstream", error = %e, "call dropped");
                            if let Some(k) = key {
                                proxy.drc.abandon(k);
                            }
                        }
                    }
                }
            }
        }
    };
    debug!(%peer, %reason, "client connection reader done");
    drop(reply_tx);
    // A client that closed or broke its connection gets what is already queued, and the
    // connection closes. Calls still in flight complete in the background: their replies
    // land in the duplicate request cache, where the client's retransmission on a new
    // connection finds them. When the proxy is stopping, replies to calls in flight are
    // still sent (the writer ends when the last one is).
    if !stopping {
        let _ = closing_tx.send(());
    }
    if let Ok(Err(e)) = writer.await {
        debug!(%peer, error = %e, "client connection write failed");
    }
    info!(%peer, %reason, "client disconnected");
}

/// What happens when a forwarded call's reply arrives (on the upstream link's reader).
fn completion(
    proxy: &Arc<Proxy>,
    to: Target,
    proc_: Proc,
    key: Option<Key>,
    tx: mpsc::Sender<Outgoing>,
    held: Outgoing,
    observe: Option<cached::Observe>,
) -> Completion {
    let proxy = proxy.clone();
    Box::new(move |mut reply| {
        dispatch::fix_reply(to, proc_, &mut reply, proxy.cfg.listen.max_io);
        if let Some(k) = key {
            proxy.drc.finish(k, &reply, drc::worth_caching(proc_));
        }
        let reply = reply.freeze();
        match observe {
            // Off the link reader (the cache does file I/O), and the reply goes out
            // only once observed: a client must never see a WRITE acknowledged while
            // the bytes it replaced can still be served from the cache.
            Some((cache, call, stamp)) => {
                tokio::task::spawn_blocking(move || {
                    cache.observe(&call, &reply, stamp);
                    let _ = tx.try_send(Outgoing { reply, ..held });
                });
            }
            // Never full: the channel has a place per slot, and `held` holds a slot.
            // An error means the client is gone; the reply is dropped.
            None => {
                let _ = tx.try_send(Outgoing { reply, ..held });
            }
        }
    })
}

/// A client that takes no reply bytes for this long is dropped: its queued replies hold
/// slots and a share of the proxy-wide byte budget that other clients need.
const CLIENT_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes replies until every sender is gone, or, once `closing` fires, until the
/// queue is empty. Fails if the client stops taking replies for `CLIENT_WRITE_TIMEOUT`.
async fn write_replies(
    wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outgoing>,
    mut closing: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let mut wr = BufWriter::with_capacity(256 << 10, wr);
    let mut draining = false;
    loop {
        let next = if draining {
            rx.try_recv().ok()
        } else {
            tokio::select! {
                biased;
                o = rx.recv() => o,
                _ = &mut closing => { draining = true; continue; }
            }
        };
        let Some(o) = next else { break };
        let flush = rx.is_empty();
        let write = async {
            write_record(&mut wr, &o.reply).await?;
            if flush {
                wr.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        tokio::time::timeout(CLIENT_WRITE_TIMEOUT, write)
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "client took no reply bytes for 60 s",
                )
            })??;
    }
    wr.flush().await?;
    wr.shutdown().await
}
