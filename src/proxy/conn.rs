//! One client connection: a reader that parses records and routes calls, a task per
//! forwarded call (at most `max_requests_per_conn` at once: reading pauses beyond that),
//! and a writer that sends replies in the order they complete (RPC matches them by xid).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::Proxy;
use super::dispatch::{self, Route, Target};
use super::drc::{self, Key, Lookup};
use crate::metrics::Metrics;
use crate::nfs3::Proc;
use crate::rpc::{RecordError, read_record, write_record};

pub(super) async fn serve(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let limit = proxy.cfg.listen.max_requests_per_conn;
    let (reply_tx, mut reply_rx) = mpsc::channel::<BytesMut>(limit);

    let writer = tokio::spawn(async move {
        let mut wr = BufWriter::with_capacity(256 << 10, wr);
        while let Some(reply) = reply_rx.recv().await {
            write_record(&mut wr, &reply).await?;
            if reply_rx.is_empty() {
                wr.flush().await?;
            }
        }
        wr.flush().await?;
        wr.shutdown().await
    });

    let slots = Arc::new(Semaphore::new(limit));
    let mut calls = JoinSet::new();
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let max_record = proxy.cfg.listen.max_record;
    let reason = loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break "internal: slots closed".to_string();
        };
        // Reap finished call tasks so the set does not grow with the connection's age.
        while calls.try_join_next().is_some() {}
        let rec = tokio::select! {
            r = read_record(&mut rd, max_record) => r,
            _ = shutdown.changed() => break "proxy shutting down".into(),
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
            Route::Drop => {
                debug!(%peer, "dropped a record that is not a call");
            }
            Route::Reply(reply) => {
                if reply_tx.send(reply).await.is_err() {
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
                let Ok(budget) = proxy.buffers.charge(cost).await else {
                    break "internal: buffer budget closed".into();
                };
                let lookup = key.map(|k| proxy.drc.begin(k));
                let proxy = proxy.clone();
                let reply_tx = reply_tx.clone();
                calls.spawn(async move {
                    let reply = match lookup {
                        Some(Lookup::Replay(r)) => Some(BytesMut::from(&r[..])),
                        Some(Lookup::Wait(rx)) => rx.await.ok().map(|r| BytesMut::from(&r[..])),
                        Some(Lookup::New) | None => forward(&proxy, to, proc_, key, rec).await,
                    };
                    if let Some(reply) = reply {
                        let _ = reply_tx.send(reply).await;
                    }
                    drop((slot, budget));
                });
            }
        }
    };
    debug!(%peer, %reason, "client connection reader done");
    drop(reply_tx);
    // Let calls in flight finish and their replies go out. If the client is gone (its
    // write side failed), calls still in flight are left to finish in the background:
    // their replies land in the duplicate request cache, where the client's
    // retransmission on a new connection finds them.
    let mut writer = writer;
    let written = tokio::select! {
        _ = async { while calls.join_next().await.is_some() {} } => None,
        w = &mut writer => Some(w),
        _ = shutdown.changed() => { calls.abort_all(); None }
    };
    calls.detach_all();
    let written = match written {
        Some(w) => w,
        None => writer.await,
    };
    if let Ok(Err(e)) = written {
        debug!(%peer, error = %e, "client connection write failed");
    }
    info!(%peer, %reason, "client disconnected");
}

/// Forwards one call and returns its (fixed-up) reply; records it in the duplicate
/// request cache. `None` if no reply will come (shutting down).
async fn forward(
    proxy: &Proxy,
    to: Target,
    proc_: Proc,
    key: Option<Key>,
    rec: BytesMut,
) -> Option<BytesMut> {
    // Abandons the cache entry if this future is dropped before the reply.
    let guard = key.map(|k| DrcGuard {
        drc: &proxy.drc,
        key: k,
        armed: true,
    });
    let upstream = match to {
        Target::Nfs => &proxy.nfs,
        Target::Mount => &proxy.mount,
    };
    match upstream.call(rec).await {
        Ok(mut reply) => {
            dispatch::fix_reply(to, proc_, &mut reply, proxy.cfg.listen.max_io);
            if let Some(mut g) = guard {
                g.armed = false;
                proxy.drc.finish(g.key, &reply, drc::worth_caching(proc_));
            }
            Some(reply)
        }
        Err(e) => {
            warn!(side = "upstream", error = %e, "call dropped");
            None
        }
    }
}

struct DrcGuard<'a> {
    drc: &'a drc::Drc,
    key: Key,
    armed: bool,
}

impl Drop for DrcGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.drc.abandon(self.key);
        }
    }
}
