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
use tokio::io::{BufWriter, WriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::dispatch::{self, Route, Target};
use super::drc::{self, Key, Lookup};
use super::{Proxy, cached};
use crate::config::Account;
use crate::metrics::Metrics;
use crate::nfs3::Proc;
use crate::rpc::record::{Gather, RecordOut};
use crate::rpc::{RecordError, RecordReader};
use crate::server::Admit;
use crate::transport::{BoxStream, Duplex};
use crate::upstream::Completion;

/// A reply on its way out, with what the call held until it is written.
struct Outgoing {
    reply: Bytes,
    _slot: OwnedSemaphorePermit,
    _budget: Option<OwnedSemaphorePermit>,
}

impl Outgoing {
    /// A reply made by the proxy itself (nothing charged to the byte budget).
    fn local(reply: bytes::BytesMut, slot: OwnedSemaphorePermit) -> Outgoing {
        Outgoing {
            reply: reply.freeze(),
            _slot: slot,
            _budget: None,
        }
    }
}

/// Serves one client connection (a TCP socket or an SSH channel). In the server role
/// `account` is who the client's calls run as; every call passes `server::Policy::admit`.
pub(super) async fn serve(
    proxy: Arc<Proxy>,
    duplex: Duplex,
    peer: SocketAddr,
    account: Option<Arc<Account>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Duplex { stream, sink } = duplex;
    let (rd, wr) = tokio::io::split(stream);
    let limit = proxy.cfg.listen.max_requests_per_conn;
    let (reply_tx, reply_rx) = mpsc::channel::<Outgoing>(limit);
    let (closing_tx, closing_rx) = oneshot::channel();
    let out = match sink {
        Some(sink) => RecordOut::Owned(Gather::new(sink), wr),
        None => RecordOut::Stream(BufWriter::with_capacity(256 << 10, wr)),
    };
    let writer = tokio::spawn(write_replies(out, reply_rx, closing_rx));

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
                if reply_tx.send(Outgoing::local(reply, slot)).await.is_err() {
                    break "client write side failed".into();
                }
            }
            Route::Forward {
                to,
                proc_,
                key,
                cost,
            } => {
                // Server role: the account's credential, and only issued handles.
                let key = match &account {
                    Some(a) => key.map(|k| k.salted(&a.name)),
                    None => key,
                };
                let mut rec = rec;
                if let (Some(policy), Some(account)) = (&proxy.policy, &account) {
                    match policy.admit(account, &rec) {
                        Admit::Forward(rewrite) => rec = rewrite.apply(rec),
                        Admit::Reply(reply) => {
                            Metrics::inc(&proxy.metrics.refused);
                            if reply_tx.send(Outgoing::local(reply, slot)).await.is_err() {
                                break "client write side failed".into();
                            }
                            continue;
                        }
                        Admit::MountBelow {
                            call,
                            export,
                            components,
                        } => {
                            // A few calls of our own upstream: beside the reader.
                            let (p, tx, pol) = (proxy.clone(), reply_tx.clone(), policy.clone());
                            tokio::spawn(async move {
                                let reply = crate::server::mount_below(
                                    &pol, &p.mount, &p.nfs, call, export, components,
                                )
                                .await;
                                let _ = tx.send(Outgoing::local(reply, slot)).await;
                            });
                            continue;
                        }
                    }
                }
                // Memory budget: wait (and so stop reading this client) until the bytes
                // this call will hold are available.
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
                        let call = Call {
                            to,
                            proc_,
                            key,
                            held,
                        };
                        match (&proxy.cache, to) {
                            (Some(cache), Target::Nfs)
                                if cached::touches_store(proc_)
                                    || (proc_ == Proc::GETATTR
                                        && cache.answers_getattr_offline(&proxy.nfs)) =>
                            {
                                // Cache work (disk I/O, maybe calls of its own) runs beside
                                // the reader, so one slow WRITE does not stall the others.
                                let (p, tx, cache) =
                                    (proxy.clone(), reply_tx.clone(), cache.clone());
                                tokio::spawn(async move {
                                    via_cache(&p, &cache, call, rec, tx).await;
                                });
                            }
                            (Some(cache), Target::Nfs) => {
                                if let Some(reply) = cache.answer_metadata(proc_, &rec) {
                                    if let Some(k) = call.key {
                                        proxy.drc.finish(k, &reply, drc::worth_caching(proc_));
                                    }
                                    let o = Outgoing {
                                        reply: reply.freeze(),
                                        ..call.held
                                    };
                                    if reply_tx.send(o).await.is_err() {
                                        break "client write side failed".into();
                                    }
                                    continue;
                                }
                                cache.names_before(proc_, &rec);
                                let stamp = cache.stamp();
                                let observe = Some((cache.clone(), rec.clone(), stamp));
                                forward(&proxy, call, rec, reply_tx.clone(), observe).await;
                            }
                            _ => forward(&proxy, call, rec, reply_tx.clone(), None).await,
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

/// A call on its way: where it goes, its duplicate-cache key, and what it holds.
struct Call {
    to: Target,
    proc_: Proc,
    key: Option<Key>,
    held: Outgoing,
}

/// A call the cache may answer (READ hit; WRITE/COMMIT/SETATTR(size) in write-back
/// mode), else forwarded with its reply observed.
async fn via_cache(
    proxy: &Arc<Proxy>,
    cache: &Arc<cached::CacheLayer>,
    call: Call,
    rec: Bytes,
    tx: mpsc::Sender<Outgoing>,
) {
    let before = match cached::answer_here(cache, call.proc_, &rec).await {
        Some(reply) => cached::Before::Hit(reply),
        None => {
            cache.names_before(call.proc_, &rec);
            cached::before_forward(cache, &proxy.nfs, call.proc_, &rec).await
        }
    };
    match before {
        cached::Before::Hit(reply) => {
            if let Some(k) = call.key {
                proxy.drc.finish(k, &reply, drc::worth_caching(call.proc_));
            }
            let o = Outgoing {
                reply: reply.freeze(),
                ..call.held
            };
            let _ = tx.send(o).await;
        }
        cached::Before::Forward { stamp } => {
            let observe = Some((cache.clone(), rec.clone(), stamp));
            forward(proxy, call, rec, tx, observe).await;
        }
    }
}

/// Sends a call to the next hop; its completion queues the reply.
async fn forward(
    proxy: &Arc<Proxy>,
    call: Call,
    rec: Bytes,
    tx: mpsc::Sender<Outgoing>,
    observe: Option<cached::Observe>,
) {
    let upstream = match call.to {
        Target::Nfs => &proxy.nfs,
        Target::Mount => &proxy.mount,
    };
    let key = call.key;
    // A MNT's reply names the export's root handle (for `gridvfs flush --file`); the
    // server role records the handles replies issue.
    let mnt = (call.to == Target::Mount && call.proc_.0 == MNT_PROC).then(|| rec.clone());
    let issues = proxy.policy.is_some() && issues_handles(call.to, call.proc_);
    let issued = issues.then(|| rec.clone());
    let done = completion(proxy, call, tx, observe, mnt, issued);
    if let Err(e) = upstream.send(rec, done).await {
        warn!(side = "upstream", error = %e, "call dropped");
        if let Some(k) = key {
            proxy.drc.abandon(k);
        }
    }
}

/// What happens when a forwarded call's reply arrives (on the upstream link's reader).
fn completion(
    proxy: &Arc<Proxy>,
    call: Call,
    tx: mpsc::Sender<Outgoing>,
    observe: Option<cached::Observe>,
    mnt: Option<Bytes>,
    issued: Option<Bytes>,
) -> Completion {
    let proxy = proxy.clone();
    let Call {
        to,
        proc_,
        key,
        held,
    } = call;
    Box::new(move |mut reply| {
        dispatch::fix_reply(to, proc_, &mut reply, proxy.cfg.listen.max_io);
        if let Some(call) = mnt {
            remember_mount(&proxy, &call, &reply);
        }
        if let (Some(call), Some(policy)) = (issued, &proxy.policy)
            && let Some(changed) = policy.observe(&call, &reply)
        {
            reply = changed;
        }
        match observe {
            // Off the link reader (the cache does file I/O), and the reply goes out
            // only once observed: a client must never see a WRITE acknowledged while
            // the bytes it replaced can still be served from the cache. The cache may
            // rewrite the reply (local writes' size, times and bytes).
            Some((cache, call, stamp)) => {
                tokio::task::spawn_blocking(move || {
                    cache.observe_names(&call, &reply, stamp);
                    let reply = cache.observe(&call, &reply, stamp).unwrap_or(reply);
                    if let Some(k) = key {
                        proxy.drc.finish(k, &reply, drc::worth_caching(proc_));
                    }
                    let _ = tx.try_send(Outgoing {
                        reply: reply.freeze(),
                        ..held
                    });
                });
            }
            // Never full: the channel has a place per slot, and `held` holds a slot.
            // An error means the client is gone; the reply is dropped.
            None => {
                if let Some(k) = key {
                    proxy.drc.finish(k, &reply, drc::worth_caching(proc_));
                }
                let _ = tx.try_send(Outgoing {
                    reply: reply.freeze(),
                    ..held
                });
            }
        }
    })
}

/// MOUNT v3 procedure MNT.
const MNT_PROC: u32 = 1;
/// MOUNT v3 procedure EXPORT.
const EXPORT_PROC: u32 = 5;

/// Replies the server role must see: those that issue handles, and EXPORT lists.
fn issues_handles(to: Target, p: Proc) -> bool {
    match to {
        Target::Mount => p.0 == MNT_PROC || p.0 == EXPORT_PROC,
        Target::Nfs => crate::server::issues_handles(p),
    }
}

fn remember_mount(proxy: &Proxy, call: &[u8], reply: &[u8]) {
    use crate::nfs3::mount::{MountArgs, MountProc, MountRes, Mountres3};
    use crate::rpc::{CallHeader, ReplyKind, parse_reply};
    let (Ok(h), Ok((_, ReplyKind::Accepted { results_at, .. }))) =
        (CallHeader::parse(call), parse_reply(reply))
    else {
        return;
    };
    if let (Ok(MountArgs::Mnt(path)), Ok(MountRes::Mnt(Mountres3::Ok(ok)))) = (
        MountArgs::decode(MountProc::MNT, &call[h.args_at..]),
        MountRes::decode(MountProc::MNT, &reply[results_at..]),
    ) {
        proxy.mounted(&String::from_utf8_lossy(path), ok.fhandle.0);
    }
}

/// A client that takes no reply bytes for this long is dropped: its queued replies hold
/// slots and a share of the proxy-wide byte budget that other clients need.
const CLIENT_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes replies until every sender is gone, or, once `closing` fires, until the
/// queue is empty. Fails if the client stops taking replies for `CLIENT_WRITE_TIMEOUT`.
async fn write_replies(
    mut wr: Replies,
    mut rx: mpsc::Receiver<Outgoing>,
    mut closing: oneshot::Receiver<()>,
) -> std::io::Result<()> {
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
            wr.record(&o.reply).await?;
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

/// Where a connection's replies go: the client's byte stream through a buffer, or its SSH
/// channel's owned-buffer sink.
type Replies = RecordOut<BufWriter<WriteHalf<BoxStream>>, WriteHalf<BoxStream>>;
