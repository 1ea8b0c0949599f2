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
            Ok(Box::pin(s))
        }
    }
}
