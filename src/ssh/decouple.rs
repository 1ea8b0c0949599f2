//! Gives russh a TCP stream whose writes never wait for the network.
//!
//! russh runs a session in one task that, after handling each event, writes all its
//! pending output to the socket before it reads again. When both ends have more to send
//! than the two sockets' kernel buffers hold (bulk data both ways on several channels,
//! each allowed a WAN-sized window), both ends wait in that write and neither reads:
//! the session deadlocks. So the write side here only appends to a buffer that a task of
//! its own drains to the socket, and the session goes back to reading at once.
//!
//! The buffer is bounded by the peer: SSH flow control lets us send at most the peer's
//! open windows, and the peer opens them only as it reads. `cap` is a safety net beyond
//! that (writes wait above it).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    data: BytesMut,
    /// No more writes: the drainer shuts the socket down once `data` is out.
    closed: bool,
    /// The drainer failed (or finished): writes fail with this.
    failed: Option<(std::io::ErrorKind, String)>,
    /// A writer waiting for room (above `cap`).
    blocked: Option<Waker>,
}

struct Shared {
    state: Mutex<State>,
    more: Notify,
}

/// The socket's read half and a buffered, never-blocking write half.
pub(super) struct Decoupled {
    rd: OwnedReadHalf,
    shared: Arc<Shared>,
    cap: usize,
}

pub(super) fn decoupled(tcp: TcpStream, cap: usize) -> Decoupled {
    let (rd, mut wr) = tcp.into_split();
    let shared = Arc::new(Shared {
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
                (st.data.split(), st.closed)
            };
            if chunk.is_empty() {
                if closed {
                    let _ = wr.shutdown().await;
                    break;
                }
                s.more.notified().await;
                continue;
            }
            if let Err(e) = wr.write_all(&chunk).await {
                let mut st = s.state.lock().expect("decouple lock");
                st.failed = Some((e.kind(), e.to_string()));
                if let Some(w) = st.blocked.take() {
                    w.wake();
                }
                break;
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
        if st.data.len() >= self.cap {
            st.blocked = Some(cx.waker().clone());
            return Poll::Pending;
        }
        st.data.extend_from_slice(buf);
        drop(st);
        self.shared.more.notify_one();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Handed to the drainer; the session must not wait for the network here.
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
        // The session is gone: let the drainer finish what is buffered and close.
        self.shared.state.lock().expect("decouple lock").closed = true;
        self.shared.more.notify_one();
    }
}
