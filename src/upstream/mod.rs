//! Pipelined RPC client to the next hop.
//!
//! An `Upstream` owns a few long-lived connections ("links") to one endpoint (the next
//! hop's NFS or MOUNT port). `call` takes a client's call record, gives it a fresh xid of
//! ours (so calls from many clients can share a link without xid clashes), queues it on a
//! link and waits for the reply, which gets the client's xid back. Many calls are in flight
//! on every link at once: a WAN hop costs one round trip per *batch*, not per RPC.
//!
//! A link that drops reconnects with exponential backoff and re-sends every call still
//! waiting for a reply, so the caller sees a delay, not an error — unless the same call
//! was the only unanswered one on `resend_limit` lost connections (a call that breaks
//! the next hop each time; calls unanswered on two lost connections are re-sent in small
//! probing batches to single it out), which is then answered with SYSTEM_ERR. A semaphore bounds the
//! calls in flight per endpoint: beyond it `call` waits, and so does the client connection
//! that issued it (backpressure all the way to the client's socket).

pub mod calls;
mod link;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::sync::{Semaphore, oneshot};

use crate::config::UpstreamConfig;
use crate::transport::Dialer;
use link::{Link, Pending};

/// What to do with a reply. Runs on the link's reader task, so it must be quick and must
/// not wait (hand the reply to a channel that has room, record it, and return).
pub type Completion = Box<dyn FnOnce(BytesMut) + Send>;

/// Why a call got no reply. The upstream side failed, or we are shutting down.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The link task is gone (shutdown). Not retryable here.
    #[error("upstream {name} ({endpoint}) is shut down")]
    Closed {
        name: &'static str,
        endpoint: String,
    },
    /// The record is too short to carry an xid.
    #[error("call record too short to carry an xid")]
    NoXid,
}

/// Counters a caller (status, tests, benchmarks) can read.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Calls sent (first sends only, not re-sends).
    pub calls: std::sync::atomic::AtomicU64,
    /// Calls re-sent after a reconnect.
    pub resent: std::sync::atomic::AtomicU64,
    /// Of those, re-sent in probing batches (suspects: unanswered on two lost
    /// connections).
    pub probed: std::sync::atomic::AtomicU64,
    /// Calls failed with SYSTEM_ERR after losing `resend_limit` connections.
    pub abandoned: std::sync::atomic::AtomicU64,
    /// Successful (re)connections.
    pub connects: std::sync::atomic::AtomicU64,
    /// Links connected now.
    pub links_up: AtomicUsize,
}

/// One endpoint of the next hop, with its pool of links.
pub struct Upstream {
    /// "nfs" or "mount": names the side in logs and errors.
    name: &'static str,
    endpoint: Dialer,
    links: Vec<Link>,
    /// Round-robin cursor over `links`.
    next_link: AtomicUsize,
    /// Our xids; starts from the clock so a restarted proxy does not reuse recent xids
    /// that the server's duplicate request cache may still remember.
    next_xid: AtomicU32,
    /// Bounds calls in flight (backpressure): a permit travels with each call until its
    /// reply arrives.
    permits: Arc<Semaphore>,
    pub stats: Arc<UpstreamStats>,
}

impl Upstream {
    /// Starts the links' tasks (they connect in the background) and returns at once.
    pub fn start(
        name: &'static str,
        endpoint: Dialer,
        cfg: &UpstreamConfig,
        max_record: usize,
    ) -> Arc<Upstream> {
        let stats = Arc::new(UpstreamStats::default());
        let links = (0..cfg.connections)
            .map(|i| {
                Link::start(
                    name,
                    i,
                    endpoint.clone(),
                    cfg.clone(),
                    max_record,
                    stats.clone(),
                )
            })
            .collect();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| (d.as_secs() as u32) << 12 ^ d.subsec_nanos())
            .unwrap_or(1);
        Arc::new(Upstream {
            name,
            endpoint,
            links,
            next_link: AtomicUsize::new(0),
            next_xid: AtomicU32::new(seed),
            permits: Arc::new(Semaphore::new(cfg.max_in_flight)),
            stats,
        })
    }

    /// No link is connected: the next hop is down or unreachable (or not yet reached).
    pub fn is_down(&self) -> bool {
        self.stats.links_up.load(Ordering::Relaxed) == 0
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn endpoint(&self) -> &Dialer {
        &self.endpoint
    }

    fn closed(&self) -> UpstreamError {
        UpstreamError::Closed {
            name: self.name,
            endpoint: self.endpoint.to_string(),
        }
    }

    /// Sends one call record; `done` later runs with the reply, whose xid is the
    /// caller's again. The record itself is not changed (our xid replaces the client's
    /// on the wire only), so the caller may keep a clone of it. Returns once the call is on the wire (or queued for the next
    /// connection if the link is down); waits first if `max_in_flight` calls are out.
    /// After a reconnect the call is re-sent until answered, unless it was the only
    /// unanswered call on `resend_limit` lost connections (then SYSTEM_ERR, `link`).
    pub async fn send(&self, msg: Bytes, done: Completion) -> Result<(), UpstreamError> {
        if msg.len() < 4 {
            return Err(UpstreamError::NoXid);
        }
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.closed())?;
        let i = self.next_link.fetch_add(1, Ordering::Relaxed) % self.links.len();
        // Two calls must never share an xid on a link, or one completion is lost.
        let mut xid = self.next_xid.fetch_add(1, Ordering::Relaxed);
        while self.links[i].holds(xid) {
            xid = self.next_xid.fetch_add(1, Ordering::Relaxed);
        }
        let mut client_xid = [0u8; 4];
        client_xid.copy_from_slice(&msg[..4]);
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.links[i]
            .send(
                xid,
                Pending {
                    msg,
                    client_xid,
                    done,
                    sent_gen: 0,
                    lost: 0,
                    charged: 0,
                    slow: 0,
                    seq: 0,
                    _permit: permit,
                },
            )
            .await;
        Ok(())
    }

    /// Sends one call and waits for its reply (for callers that are not on a hot path).
    pub async fn call(&self, msg: BytesMut) -> Result<BytesMut, UpstreamError> {
        let (tx, rx) = oneshot::channel();
        self.send(
            msg.freeze(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .await?;
        rx.await.map_err(|_| self.closed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Endpoint;
    use crate::rpc::msg::{accepted_reply, call_message};
    use crate::rpc::{AcceptStat, ReplyKind, parse_reply, read_record, write_record};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    type Replies = tokio::sync::mpsc::UnboundedReceiver<BytesMut>;
    type ReplyTx = tokio::sync::mpsc::UnboundedSender<BytesMut>;

    /// Largest record the scripted next hop reads (the 64 MiB call below).
    const MAX: usize = 128 << 20;

    fn upstream_to(addr: &str) -> Arc<Upstream> {
        let cfg = UpstreamConfig {
            nfs: Endpoint::Tcp(addr.to_string()),
            mount: Endpoint::Tcp(addr.to_string()),
            ssh: None,
            connections: 1,
            max_in_flight: 64,
            connect_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            resend_limit: 3,
        };
        Upstream::start(
            "nfs",
            Dialer::Tcp(Endpoint::Tcp(addr.into())),
            &cfg,
            1 << 20,
        )
    }

    /// An NFS NULL call with client xid `client_xid`, `pad` bytes of arguments after it.
    fn null(client_xid: u32, pad: usize) -> Bytes {
        let mut m = call_message(client_xid, 100003, 3, 0, &[]);
        m.resize(m.len() + pad, 7);
        m.freeze()
    }

    /// Sends `call`; its reply (or failure) goes to `tx`.
    async fn send(up: &Upstream, call: Bytes, tx: &ReplyTx) {
        let tx = tx.clone();
        up.send(
            call,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .await
        .unwrap();
    }

    fn xid_of(m: &[u8]) -> u32 {
        u32::from_be_bytes(m[..4].try_into().unwrap())
    }

    /// The next record from the scripted next hop's side of a connection.
    async fn record(s: &mut TcpStream) -> BytesMut {
        read_record(s, MAX).await.unwrap().expect("a record")
    }

    /// Reads `n` call records; returns their xids.
    async fn read_calls(s: &mut TcpStream, n: usize) -> Vec<u32> {
        let mut xids = Vec::new();
        for _ in 0..n {
            xids.push(xid_of(&record(s).await));
        }
        xids
    }

    /// Answers call `xid` with an accepted, successful reply.
    async fn reply(s: &mut TcpStream, xid: u32) {
        write_record(s, &accepted_reply(xid, AcceptStat::SUCCESS))
            .await
            .unwrap();
    }

    /// The next reply a client gets (within 5 s): its xid, and whether it is a success
    /// (not a SYSTEM_ERR from a call given up on).
    async fn next_reply(rx: &mut Replies) -> (u32, bool) {
        let r = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a reply within 5 s")
            .expect("reply channel open");
        let ok = matches!(
            parse_reply(&r),
            Ok((
                _,
                ReplyKind::Accepted {
                    stat: AcceptStat::SUCCESS,
                    ..
                }
            ))
        );
        (xid_of(&r), ok)
    }

    /// Calls lost with a connection are re-sent in the order they were taken, even when
    /// our xids wrapped past u32::MAX between them (xid order would put the newest first).
    #[tokio::test]
    async fn re_sends_go_oldest_first_across_an_xid_wrap() {
        let hop = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = upstream_to(&hop.local_addr().unwrap().to_string());
        up.next_xid.store(u32::MAX - 2, Ordering::Relaxed);
        let (mut first, _) = hop.accept().await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for client_xid in 0u32..5 {
            send(&up, null(client_xid, 0), &tx).await;
        }
        let wrapped = [u32::MAX - 2, u32::MAX - 1, u32::MAX, 0, 1];
        assert_eq!(read_calls(&mut first, 5).await, wrapped, "sent as taken");
        drop(first); // lost with all five unanswered
        let (mut second, _) = hop.accept().await.unwrap();
        let resent = read_calls(&mut second, 5).await;
        assert_eq!(resent, wrapped, "re-sent oldest first");
        for xid in resent.iter().rev() {
            reply(&mut second, *xid).await;
        }
        let mut back = Vec::new();
        for _ in 0..5 {
            back.push(next_reply(&mut rx).await.0);
        }
        assert_eq!(
            back,
            [4, 3, 2, 1, 0],
            "each reply gets its client's xid back"
        );
    }

    /// A double hiccup with many calls in flight: two connections lost with all 20 calls
    /// unanswered make every call a suspect. The third connection probes them oldest first
    /// in batches of 1, 2, 4, 8 and the 5 left, each batch alone on the connection until
    /// it is answered; every call is answered and none fails.
    #[tokio::test]
    async fn a_double_hiccup_probes_in_growing_batches_and_fails_nothing() {
        let hop = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = upstream_to(&hop.local_addr().unwrap().to_string());
        let (mut first, _) = hop.accept().await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for client_xid in 0u32..20 {
            send(&up, null(client_xid, 0), &tx).await;
        }
        let taken = read_calls(&mut first, 20).await;
        drop(first);
        let (mut second, _) = hop.accept().await.unwrap();
        assert_eq!(
            read_calls(&mut second, 20).await,
            taken,
            "re-sent at once, in order"
        );
        drop(second);
        let (mut third, _) = hop.accept().await.unwrap();
        let mut probed = Vec::new();
        for batch in [1, 2, 4, 8, 5] {
            let xids = read_calls(&mut third, batch).await;
            // Nothing more until this batch is answered.
            let mut more = [0u8; 4];
            let quiet = tokio::time::timeout(Duration::from_millis(300), third.read(&mut more));
            match quiet.await {
                Err(_) => {} // nothing more: as it should be
                Ok(Ok(0)) => panic!("batch of {batch}: the link closed the connection"),
                Ok(r) => panic!("batch of {batch}: more calls sent before its replies ({r:?})"),
            }
            for xid in &xids {
                reply(&mut third, *xid).await;
            }
            probed.extend(xids);
        }
        assert_eq!(probed, taken, "probed oldest first");
        for _ in 0..20 {
            assert!(next_reply(&mut rx).await.1, "answered, not failed");
        }
        assert_eq!(up.stats.probed.load(Ordering::Relaxed), 20);
        // New calls flow again once probing is over.
        send(&up, null(99, 0), &tx).await;
        let x = read_calls(&mut third, 1).await[0];
        reply(&mut third, x).await;
        assert_eq!(next_reply(&mut rx).await.0, 99);
    }

    /// A call waiting for the writer lock when the connection's reader ends (the next hop
    /// closed its side) is not written on that dead connection, where it would be
    /// counted lost with it: it goes out on the next connection. The lock is held by a
    /// 64 MiB call the hop reads only after closing its side.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_queued_when_the_reader_ends_is_not_written_on_the_dead_connection() {
        let hop = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = upstream_to(&hop.local_addr().unwrap().to_string());
        let (mut first, _) = hop.accept().await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // A: a NULL call with 64 MiB of trailing bytes, more than the socket buffers hold,
        // so its write holds the writer lock until the hop reads.
        let big = null(0, 64 << 20);
        let big_len = big.len();
        let (u, t) = (up.clone(), tx.clone());
        tokio::spawn(async move { send(&u, big, &t).await });
        // A is being written (its record mark is here); the rest waits in the sockets.
        let mut mark = [0u8; 4];
        first.read_exact(&mut mark).await.unwrap();
        let a_len = (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize;
        assert_eq!(a_len, big_len, "A comes first");
        // B queues on the writer lock behind A.
        let (u, t) = (up.clone(), tx.clone());
        let (started, b_started) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = started.send(());
            send(&u, null(1, 0), &t).await
        });
        b_started.await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The hop closes its side: the link's reader ends while A is still being written.
        first.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut a = vec![0u8; a_len];
        first.read_exact(&mut a).await.unwrap();
        // Then the connection ends: B must not follow A on it.
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut rest))
            .await
            .expect("the link drops the dead connection")
            .unwrap_or(0);
        assert_eq!(
            n, 0,
            "B was written on the connection whose reader had ended"
        );
        let (mut second, _) = hop.accept().await.unwrap();
        let a2 = record(&mut second).await;
        let b = record(&mut second).await;
        assert_eq!(
            (a2.len(), b.len()),
            (big_len, 40),
            "A re-sent, then B, oldest first"
        );
        for rec in [&a2, &b] {
            reply(&mut second, xid_of(rec)).await;
        }
        let mut back = Vec::new();
        for _ in 0..2 {
            let (xid, ok) = next_reply(&mut rx).await;
            assert!(ok, "answered, not failed");
            back.push(xid);
        }
        back.sort();
        assert_eq!(back, [0, 1]);
    }
}
