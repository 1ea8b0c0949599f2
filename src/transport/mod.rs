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

/// A connected stream and, for TCP, the local port it was made from.
pub struct Connected {
    pub stream: BoxStream,
    pub local_port: Option<u16>,
}

/// Connects to `ep` within `timeout`, from local port `reuse_port` if it is free.
///
/// Reconnecting from the port of the lost connection lets the server's duplicate request
/// cache recognise re-sent calls (Linux nfsd keys it on the client's address *and*
/// port; the Linux NFS client reuses its port for the same reason). If that port cannot
/// be had (still in TIME_WAIT, taken), any port is used.
pub async fn connect(
    ep: &Endpoint,
    timeout: Duration,
    reuse_port: Option<u16>,
) -> std::io::Result<Connected> {
    match ep {
        Endpoint::Tcp(addr) => {
            let attempt = async {
                let mut last = None;
                for target in tokio::net::lookup_host(addr.as_str()).await? {
                    if let Some(port) = reuse_port
                        && let Ok(s) = connect_from(target, Some(port)).await
                    {
                        return Ok(s);
                    }
                    match connect_from(target, None).await {
                        Ok(s) => return Ok(s),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
                }))
            };
            let s = tokio::time::timeout(timeout, attempt).await.map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect timed out after {timeout:?}"),
                )
            })??;
            // Small RPCs (GETATTR, LOOKUP) must not wait for Nagle.
            s.set_nodelay(true)?;
            detect_dead_peer(&s)?;
            let local_port = s.local_addr().ok().map(|a| a.port());
            Ok(Connected {
                stream: Box::pin(s),
                local_port,
            })
        }
        Endpoint::Ssh { .. } => Err(std::io::Error::other(
            "ssh endpoints are dialled through transport::Dialer",
        )),
    }
}

async fn connect_from(
    target: std::net::SocketAddr,
    port: Option<u16>,
) -> std::io::Result<TcpStream> {
    let sock = if target.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(p) = port {
        sock.set_reuseaddr(true)?;
        let any: std::net::IpAddr = if target.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        sock.bind((any, p).into())?;
    }
    sock.connect(target).await
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
