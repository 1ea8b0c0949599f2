//! Keeps an SSH channel's incoming data drained.
//!
//! russh adjusts a channel's window as soon as data arrives (not when the application
//! reads it) and hands the data to a bounded per-channel queue; when that queue is full,
//! the session's one task waits, and with it every channel of the session and its
//! outgoing data, including the replies that would let a busy reader make progress. A
//! server connection that pauses reading for backpressure (its request slots or the
//! proxy's byte budget are taken until replies go out) would therefore deadlock its own
//! session. So every channel the server accepts is read at once into this pump, and the
//! connection reads from the pump at its own pace.
//!
//! What the pump may hold is bounded by the peer, not by the window: a gridvfs client
//! has at most `upstream.max_in_flight` calls out (each at most `max_record` bytes).
//! Beyond `cap` unread bytes the peer is not behaving like one, and the channel fails
//! (the client reconnects and re-sends).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use russh::{ChannelMsg, ChannelReadHalf};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

/// A channel's incoming data, drained: read at once from russh's messages into the pump
/// (the bytes of each packet handed on as russh made them, not copied into a buffer of
/// ours first), and read from the pump at the connection's own pace. Ends at the
/// channel's EOF or close, or once over `cap`; then runs `on_end`.
pub(super) fn drained_channel(
    mut rh: ChannelReadHalf,
    cap: usize,
    on_end: impl FnOnce() + Send + 'static,
) -> PumpReader {
    let (tx, reader) = pump(cap);
    tokio::spawn(async move {
        loop {
            match rh.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    if !data.is_empty() && !tx.send(data) {
                        break;
                    }
                }
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => break,
                Some(_) => {} // requests, extended data: not the RPC stream
            }
        }
        on_end();
    });
    reader
}

/// The pump's sending end: counts what is queued against `cap`.
struct PumpTx {
    tx: mpsc::UnboundedSender<std::io::Result<Bytes>>,
    queued: Arc<AtomicUsize>,
    cap: usize,
}

impl PumpTx {
    /// Queues `b`; false once the pump must stop (over `cap`, or nobody reads).
    fn send(&self, b: Bytes) -> bool {
        let n = b.len();
        if self.queued.fetch_add(n, Ordering::Relaxed) + n > self.cap {
            self.fail(std::io::Error::other(format!(
                "peer sent more than {} bytes that were not read yet",
                self.cap
            )));
            return false;
        }
        self.tx.send(Ok(b)).is_ok() // else the connection is gone
    }

    fn fail(&self, e: std::io::Error) {
        let _ = self.tx.send(Err(e));
    }
}

fn pump(cap: usize) -> (PumpTx, PumpReader) {
    let (tx, rx) = mpsc::unbounded_channel::<std::io::Result<Bytes>>();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        PumpTx {
            tx,
            queued: queued.clone(),
            cap,
        },
        PumpReader {
            rx,
            cur: Bytes::new(),
            queued,
        },
    )
}

pub(super) struct PumpReader {
    rx: mpsc::UnboundedReceiver<std::io::Result<Bytes>>,
    cur: Bytes,
    queued: Arc<AtomicUsize>,
}

impl AsyncRead for PumpReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.cur.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())), // EOF
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(b))) => self.cur = b,
            }
        }
        let n = self.cur.len().min(out.remaining());
        out.put_slice(&self.cur[..n]);
        self.cur.advance(n);
        self.queued.fetch_sub(n, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}
