//! Byte streams to the next hop. Knows nothing of RPC or NFS: an `Endpoint` goes in, a
//! connected bidirectional stream comes out. TCP today; the SSH tunnel plugs in here.

use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::Endpoint;

/// Any connected, bidirectional byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

pub type BoxStream = Pin<Box<dyn Stream>>;

/// Connects to `ep` within `timeout`.
pub async fn connect(ep: &Endpoint, timeout: Duration) -> std::io::Result<BoxStream> {
    match ep {
        Endpoint::Tcp(addr) => {
            let s = tokio::time::timeout(timeout, TcpStream::connect(addr.as_str()))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connect timed out after {timeout:?}"),
                    )
                })??;
            // Small RPCs (GETATTR, LOOKUP) must not wait for Nagle.
            s.set_nodelay(true)?;
            detect_dead_peer(&s)?;
            Ok(Box::pin(s))
        }
    }
}

/// Unacknowledged data older than this fails the connection (and the link reconnects
/// and re-sends), so a silent path (a cut WAN, a NAT that forgot us) cannot hold calls
/// for ever.
const USER_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes a dead next hop visible on an idle or a stalled connection: TCP keepalive
/// probes after 30 s of silence (every 10 s, 3 tries) and `TCP_USER_TIMEOUT`.
fn detect_dead_peer(s: &TcpStream) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(s);
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10))
            .with_retries(3),
    )?;
    sock.set_tcp_user_timeout(Some(USER_TIMEOUT))
}
