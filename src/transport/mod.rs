//! Byte streams to the next hop. Knows nothing of RPC or NFS: a `Dialer` (plain TCP, or
//! a channel of an SSH session, see `crate::ssh`) gives connected bidirectional streams.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::Endpoint;

/// Any connected, bidirectional byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

pub type BoxStream = Pin<Box<dyn Stream>>;

/// Takes whole buffers for a stream without copying them: an SSH channel, whose
/// `AsyncWrite` copies every write into a buffer of its own before russh's packet writer
/// copies it again (`crate::ssh::server` gives one with each channel). Each buffer goes
/// out whole and in order, behind everything sent before.
pub trait OwnedSink: Send + Sync {
    fn send(
        &self,
        data: bytes::Bytes,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<()>> + Send + '_>>;
}

/// A connected stream, and the sink that takes its outgoing data as whole buffers when
/// it has one (then whole records should go there, not through `stream`'s writes).
pub struct Duplex {
    pub stream: BoxStream,
    pub sink: Option<Box<dyn OwnedSink>>,
}

impl From<BoxStream> for Duplex {
    fn from(stream: BoxStream) -> Duplex {
        Duplex { stream, sink: None }
    }
}

/// How to reach one next-hop endpoint.
#[derive(Clone)]
pub enum Dialer {
    Tcp(Endpoint),
    /// A channel on the (shared) SSH session to the next hop.
    Ssh {
        endpoint: Endpoint,
        connector: std::sync::Arc<crate::ssh::client::SshConnector>,
    },
}

impl std::fmt::Display for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dialer::Tcp(e) => e.fmt(f),
            Dialer::Ssh {
                endpoint,
                connector,
            } => match &connector.options().target {
                crate::ssh::client::ChannelTarget::Subsystem(s) => write!(f, "{endpoint} ({s})"),
                crate::ssh::client::ChannelTarget::DirectTcpip { host, port } => {
                    write!(f, "{endpoint} (direct-tcpip to {host}:{port})")
                }
            },
        }
    }
}

/// The dialers of a proxy's NFS and MOUNT upstreams. Two `ssh://` endpoints that are
/// the same share one SSH session.
pub fn dialers(cfg: &crate::config::UpstreamConfig) -> (Dialer, Dialer) {
    use crate::ssh::client::{ChannelTarget, SshClientOptions, SshConnector};
    let mut made: Vec<(Endpoint, std::sync::Arc<SshConnector>)> = Vec::new();
    let mut dial = |ep: &Endpoint| -> Dialer {
        let Endpoint::Ssh { user, host, port } = ep else {
            return Dialer::Tcp(ep.clone());
        };
        if let Some((_, c)) = made.iter().find(|(e, _)| e == ep) {
            return Dialer::Ssh {
                endpoint: ep.clone(),
                connector: c.clone(),
            };
        }
        let s = cfg
            .ssh
            .as_ref()
            .expect("config validation requires [upstream.ssh] for ssh:// endpoints");
        let c = std::sync::Arc::new(SshConnector::new(SshClientOptions {
            user: user.clone(),
            host: host.clone(),
            port: *port,
            key: s.key.clone(),
            known_hosts: s.known_hosts.clone(),
            accept_new: s.accept_new,
            target: match &s.forward_to {
                None => ChannelTarget::Subsystem(crate::ssh::SUBSYSTEM.into()),
                Some((h, p)) => ChannelTarget::DirectTcpip {
                    host: h.clone(),
                    port: *p,
                },
            },
            window: s.window,
            connect_timeout: cfg.connect_timeout,
            keepalive: s.keepalive,
            compression: s.compression,
        }));
        made.push((ep.clone(), c.clone()));
        Dialer::Ssh {
            endpoint: ep.clone(),
            connector: c,
        }
    };
    let nfs = dial(&cfg.nfs);
    let mount = dial(&cfg.mount);
    (nfs, mount)
}

impl Dialer {
    /// A new stream within `timeout`. TCP: from local port `reuse_port` if it is free
    /// (see `connect`). SSH: a new channel, on the live session or a new one.
    pub async fn connect(
        &self,
        timeout: Duration,
        reuse_port: Option<u16>,
    ) -> std::io::Result<Connected> {
        match self {
            Dialer::Tcp(ep) => connect(ep, timeout, reuse_port).await,
            Dialer::Ssh { connector, .. } => {
                let duplex = tokio::time::timeout(timeout * 2, connector.open_duplex())
                    .await
                    .map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no SSH channel within {:?}", timeout * 2),
                        )
                    })?
                    .map_err(std::io::Error::other)?;
                Ok(Connected {
                    stream: duplex.stream,
                    sink: duplex.sink,
                    local_port: None,
                })
            }
        }
    }
}

/// A connected stream, its owned-buffer sink if it has one (an SSH channel), and, for
/// TCP, the local port it was made from.
pub struct Connected {
    pub stream: BoxStream,
    pub sink: Option<Box<dyn OwnedSink>>,
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
                sink: None,
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
