//! WAN emulator for benchmarks: a TCP relay on loopback that adds a one-way delay and,
//! optionally, a bandwidth cap to every connection, in both directions.
//!
//! Include it from a bench target with
//! `#[path = "common/wan.rs"] mod wan;` and, inside a Tokio runtime:
//!
//! ```ignore
//! let relay = wan::WanRelay::start(
//!     "127.0.0.1:0".parse()?,
//!     upstream,
//!     wan::WanConfig { one_way_delay: Duration::from_millis(20), rate_bits_per_sec: Some(100_000_000) },
//! )
//! .await?;
//! // connect to relay.local_addr() instead of `upstream`; the relay stops on drop.
//! ```
//!
//! The model is a long pipe, not a per-chunk sleep: every chunk read from one side is
//! stamped with the time it is due at the other side and put in a queue; a writer task
//! delivers each chunk at its due time. So many bytes are in flight at once and throughput
//! is limited by the bandwidth cap (or by the receiver), not by `chunk / delay` - a relay
//! that sleeps the full delay per chunk serially caps 64 KiB chunks at 20 ms to 26 Mbit/s.
//!
//! With a cap, each direction is one serialising link of that rate, shared by all the
//! relay's connections (like a dedicated line shaped by tbf): a chunk of `n` bytes
//! occupies the link for `8n / rate` seconds after the previous one (of any connection),
//! then needs `one_way_delay` to arrive. When the link is more than
//! [`MAX_QUEUE_DELAY`] behind, the relay stops reading, so TCP flow control pushes back on the
//! sender as a router's full queue would. Without a cap, at most [`MAX_IN_FLIGHT`] bytes per
//! direction are held in the pipe. FIN is relayed (half-close) after the last byte; a reset
//! or error on either side closes both. TCP_NODELAY is set on both sockets.
#![allow(dead_code)] // each bench uses a different part of this module

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, sleep_until};

/// Largest single read from a socket.
const CHUNK: usize = 64 * 1024;
/// Bytes per direction that may sit in the emulated pipe (bounds memory when uncapped:
/// 64 MiB at 20 ms allows ~25 Gbit/s).
pub const MAX_IN_FLIGHT: usize = 64 << 20;
/// With a bandwidth cap: how far the link may lag behind before the relay stops reading
/// (the queue of a shaping router; tbf's "latency" parameter).
pub const MAX_QUEUE_DELAY: Duration = Duration::from_millis(50);

/// Properties of the emulated link, the same in both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WanConfig {
    /// Added to every byte, each way (RTT grows by twice this).
    pub one_way_delay: Duration,
    /// Bandwidth cap per direction and per connection; `None` = unlimited.
    pub rate_bits_per_sec: Option<u64>,
}

/// A running relay; accepts connections until dropped or [`WanRelay::shutdown`].
#[derive(Debug)]
pub struct WanRelay {
    local: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl WanRelay {
    /// Binds `listen` (port 0 = any free port) and relays every accepted connection to
    /// `upstream` through the emulated link. Must run inside a Tokio runtime.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        cfg: WanConfig,
    ) -> io::Result<WanRelay> {
        if cfg.rate_bits_per_sec == Some(0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "rate_bits_per_sec must be > 0 (None = unlimited)",
            ));
        }
        let listener = TcpListener::bind(listen).await?;
        let local = listener.local_addr()?;
        let links = Arc::new(Links::default());
        let task = tokio::spawn(accept_loop(listener, upstream, Arc::new(cfg), links));
        Ok(WanRelay {
            local,
            task: Some(task),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops accepting and closes every relayed connection; returns once the listener is
    /// closed.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for WanRelay {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection task.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The emulated link's two directions, shared by every connection through the relay:
/// when each is free to send the next byte. A real WAN link is one pipe whatever the
/// number of TCP connections over it, so several connections share the cap.
#[derive(Default)]
struct Links {
    up: std::sync::Mutex<Option<Instant>>,
    down: std::sync::Mutex<Option<Instant>>,
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    cfg: Arc<WanConfig>,
    links: Arc<Links>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    conns.spawn(relay(client, upstream, cfg.clone(), links.clone()));
                }
                // EMFILE and friends: back off instead of spinning.
                Err(_) => sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, cfg: Arc<WanConfig>, links: Arc<Links>) {
    // The connection to the far side is made at once (the SYN is not delayed): a refused
    // upstream shows up as an immediate close of the client connection.
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    // First error (reset, broken pipe) in either direction ends both: both sockets close.
    let _ = tokio::try_join!(
        pipe(client_rd, server_wr, &cfg, &links.up),
        pipe(server_rd, client_wr, &cfg, &links.down)
    );
}

/// One chunk in the pipe; an empty `data` is the FIN.
struct InFlight {
    due: Instant,
    data: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

/// One direction: a reader stamps chunks with their due time, a writer delivers them.
async fn pipe(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    cfg: &WanConfig,
    link: &std::sync::Mutex<Option<Instant>>,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<InFlight>();
    let budget = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let delay = cfg.one_way_delay;
    let rate = cfg.rate_bits_per_sec;

    let reader = async move {
        // When the emulated link (shared with the relay's other connections) finishes
        // sending what has been queued so far.
        let mut link_free;
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            buf.reserve(CHUNK);
            let n = rd.read_buf(&mut buf).await?;
            let now = Instant::now();
            if n == 0 {
                // FIN travels behind the last byte (the writer handles chunks in order).
                let _ = tx.send(InFlight {
                    due: now + delay,
                    data: Bytes::new(),
                    _budget: None,
                });
                return Ok::<(), io::Error>(());
            }
            let data = buf.split().freeze();
            let permit = budget
                .clone()
                .acquire_many_owned(data.len() as u32)
                .await
                .expect("semaphore never closed");
            let due = match rate {
                Some(bps) => {
                    let mut l = link.lock().expect("link lock");
                    let start = l.map_or(now, |t| t.max(now));
                    link_free =
                        start + Duration::from_secs_f64(data.len() as f64 * 8.0 / bps as f64);
                    *l = Some(link_free);
                    link_free + delay
                }
                None => {
                    link_free = now;
                    now + delay
                }
            };
            let item = InFlight {
                due,
                data,
                _budget: Some(permit),
            };
            if tx.send(item).is_err() {
                // Writer is gone (its side failed); its error is what try_join reports.
                return Ok(());
            }
            if rate.is_some() {
                let backlog = link_free.saturating_duration_since(Instant::now());
                if backlog > MAX_QUEUE_DELAY {
                    sleep_until(link_free - MAX_QUEUE_DELAY).await;
                }
            }
        }
    };

    let writer = async move {
        while let Some(item) = rx.recv().await {
            sleep_until(item.due).await;
            if item.data.is_empty() {
                // Relay the half-close; the peer may still be sending the other way.
                let _ = wr.shutdown().await;
                return Ok::<(), io::Error>(());
            }
            wr.write_all(&item.data).await?;
            // The chunk's budget is released here, when `item` is dropped.
        }
        Ok(())
    };

    tokio::try_join!(reader, writer).map(|_| ())
}

/// Two relays with the same link model on free loopback ports: one in front of a
/// server's NFS port, one in front of its MOUNT port.
pub async fn start_pair(
    nfs: SocketAddr,
    mount: SocketAddr,
    cfg: WanConfig,
) -> io::Result<(WanRelay, WanRelay)> {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    let n = WanRelay::start(any, nfs, cfg.clone()).await?;
    let m = WanRelay::start(any, mount, cfg).await?;
    Ok((n, m))
}
