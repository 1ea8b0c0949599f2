//! Gives russh a TCP stream whose writes never wait for the network.
//!
//! russh runs a session in one task that, after handling each event, writes all its
//! pending output to the socket before it reads again. When both ends have more to send
//! than the two sockets' kernel buffers hold (bulk data both ways on several channels,
//! each allowed a WAN-sized window), both ends wait in that write and neither reads:
//! the session deadlocks. So a write here goes straight to the socket if it takes it
//! (non-blocking), and whatever it does not take is queued for a task of its own that
//! drains the queue; the session goes back to reading at once. While the network keeps
//! up, nothing is queued and nothing is copied.
//!
//! The queue is bounded by the peer: SSH flow control lets us send at most the peer's
//! open windows, and the peer opens them only as it reads. `cap` is a safety net beyond
//! that (writes wait above it).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    queue: BytesMut,
    /// The drainer holds bytes taken from the queue and not yet written: a direct write
    /// now would overtake them.
    draining: bool,
    /// No more writes: the drainer shuts the socket down once the queue is out.
    closed: bool,
    /// The socket failed: writes fail with this.
    failed: Option<(std::io::ErrorKind, String)>,
    /// A writer waiting for room (above `cap`).
    blocked: Option<Waker>,
}

struct Shared {
    wr: OwnedWriteHalf,
    state: Mutex<State>,
    more: Notify,
}

impl Shared {
    fn fail(&self, e: &std::io::Error) {
        let mut st = self.state.lock().expect("decouple lock");
        st.failed = Some((e.kind(), e.to_string()));
        if let Some(w) = st.blocked.take() {
            w.wake();
        }
    }
}

/// The socket's read half and a never-blocking write half.
pub(super) struct Decoupled {
    rd: OwnedReadHalf,
    shared: Arc<Shared>,
    cap: usize,
}

pub(super) fn decoupled(tcp: TcpStream, cap: usize) -> Decoupled {
    let (rd, wr) = tcp.into_split();
    let shared = Arc::new(Shared {
        wr,
        state: Mutex::new(State::default()),
        more: Notify::new(),
    });
    let s = shared.clone();
    tokio::spawn(async move {
        loop {
            let (chunk, closed) = {
                let mut st = s.state.lock().expect("decouple lock");
                if let Some(w) = st.blocked.take() {
                    w.wake();
                }
                let chunk = st.queue.split();
                st.draining = !chunk.is_empty();
                (chunk, st.closed)
            };
            if chunk.is_empty() {
                if closed {
                    // Half-close once everything is out.
                    let _ =
                        socket2::SockRef::from(s.wr.as_ref()).shutdown(std::net::Shutdown::Write);
                    break;
                }
                s.more.notified().await;
                continue;
            }
            let mut at = 0;
            while at < chunk.len() {
                if let Err(e) = s.wr.writable().await {
                    s.fail(&e);
                    return;
                }
                match s.wr.try_write(&chunk[at..]) {
                    Ok(n) => at += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        s.fail(&e);
                        return;
                    }
                }
            }
        }
    });
    Decoupled { rd, shared, cap }
}

impl AsyncRead for Decoupled {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.rd).poll_read(cx, buf)
    }
}

impl AsyncWrite for Decoupled {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut st = self.shared.state.lock().expect("decouple lock");
        if let Some((kind, msg)) = &st.failed {
            return Poll::Ready(Err(std::io::Error::new(*kind, msg.clone())));
        }
        let mut rest = buf;
        if st.queue.is_empty() && !st.draining {
            // Straight to the socket while it keeps up (the lock keeps the order with
            // the drainer).
            match self.shared.wr.try_write(buf) {
                Ok(n) => rest = &buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    st.failed = Some((e.kind(), e.to_string()));
                    return Poll::Ready(Err(e));
                }
            }
            if rest.is_empty() {
                return Poll::Ready(Ok(buf.len()));
            }
        } else if st.queue.len() >= self.cap {
            st.blocked = Some(cx.waker().clone());
            return Poll::Pending;
        }
        st.queue.extend_from_slice(rest);
        drop(st);
        self.shared.more.notify_one();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Queued bytes are the drainer's; the session must not wait for the network.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.shared.state.lock().expect("decouple lock").closed = true;
        self.shared.more.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for Decoupled {
    fn drop(&mut self) {
        // The session is gone: the drainer writes what is queued, then closes.
        self.shared.state.lock().expect("decouple lock").closed = true;
        self.shared.more.notify_one();
    }
}
