//! The SSH tunnel between proxies (paper §3.1, Fig. 2), on russh.
//!
//! - `keys`: `gridvfs keygen` (ed25519, OpenSSH format), loading keys, fingerprints.
//! - `client`: one long-lived, authenticated session per next hop, host key checked
//!   against an OpenSSH known_hosts file; `open` gives a new channel as a byte stream
//!   (the `gridvfs` subsystem of a gridvfs server, or direct-tcpip through a stock sshd).
//!   The upstream links each hold one channel, so RPCs are multiplexed by xid over a few
//!   long-lived channels of one session.
//! - `server`: the server proxy's built-in SSH server: public keys from an OpenSSH
//!   authorized_keys file, only the `gridvfs` subsystem served.
//! - `pump`: keeps an incoming channel drained (see there: russh stalls the whole
//!   session while any one channel's buffer is full).

pub mod client;
mod decouple;
pub mod keys;
mod pump;
pub mod server;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

/// The SSH subsystem a gridvfs server proxy serves.
pub const SUBSYSTEM: &str = "gridvfs";

/// The most data bytes in one channel packet that gridvfs asks its peer to send: 1 KiB
/// under russh's 256 KiB, because with `compression` on, a packet of incompressible
/// bytes (zstd frames, random file data) *grows* a little in zlib, and russh refuses a
/// packet longer than 256 KiB plus 33 bytes of framing by closing the whole session —
/// every channel of it. A 1 MiB READ reply of random data was enough, and the re-sent
/// call failed the same way forever. Deflate's worst case for 255 KiB is well under
/// 100 bytes (5 per stored block of up to 64 KiB, plus the flush).
pub const MAX_PACKET: u32 = (256 << 10) - 1024;

/// Most outgoing bytes buffered for the socket (see `decouple`); above what SSH flow
/// control lets a session have in flight with the default windows (a few channels of
/// 32 MiB), below what a misbehaving peer could make us hold.
pub(crate) const MAX_UNSENT: usize = 256 << 20;

/// Ciphers in our order of preference: AES-GCM first (hardware AES on the x86 servers
/// this runs on), ChaCha20-Poly1305 (russh's default first choice) for peers without
/// it. Measured only together with the write decoupling: reads through the tunnel went
/// from 0.41x to 0.58x plain TCP (`scripts/bench.sh ssh`, docs/benchmarks.md).
///
/// Compression (`compress`, the client's `[upstream.ssh] compression`): zlib@openssh.com
/// (after authentication) or zlib, else none. The server lists none first and accepts
/// either: the client's order decides.
pub(crate) fn preferred(compress: bool) -> russh::Preferred {
    use russh::{cipher, compression};
    const COMPRESS: &[compression::Name] = &[
        compression::ZLIB_LEGACY,
        compression::ZLIB,
        compression::NONE,
    ];
    const PLAIN: &[compression::Name] = &[
        compression::NONE,
        compression::ZLIB_LEGACY,
        compression::ZLIB,
    ];
    const CIPHERS: &[cipher::Name] = &[
        cipher::AES_128_GCM,
        cipher::AES_256_GCM,
        cipher::CHACHA20_POLY1305,
        cipher::AES_256_CTR,
        cipher::AES_128_CTR,
    ];
    russh::Preferred {
        cipher: std::borrow::Cow::Borrowed(CIPHERS),
        compression: std::borrow::Cow::Borrowed(if compress { COMPRESS } else { PLAIN }),
        ..Default::default()
    }
}

/// A channel's write half, shared by its stream's writer and its owned-buffer sink
/// (`transport::OwnedSink`). When the last holder is dropped, the channel is closed
/// (CHANNEL_CLOSE), as russh's own channel stream does when dropped: a peer whose
/// channel was given up (an account refused, a connection ended, a writer that failed)
/// sees the end, rather than waiting for data that never comes.
pub(crate) struct Closing<S>(Option<russh::ChannelWriteHalf<S>>)
where
    S: From<(russh::ChannelId, russh::ChannelMsg)> + Send + Sync + 'static;

impl<S> Closing<S>
where
    S: From<(russh::ChannelId, russh::ChannelMsg)> + Send + Sync + 'static,
{
    pub(crate) fn new(half: russh::ChannelWriteHalf<S>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Closing(Some(half)))
    }

    pub(crate) fn half(&self) -> &russh::ChannelWriteHalf<S> {
        self.0.as_ref().expect("taken only when dropped")
    }

    /// Hands `data` to russh whole (`data_bytes`: no copy, unlike its `AsyncWrite`),
    /// waiting for the peer's window as that does.
    pub(crate) async fn send(&self, data: bytes::Bytes) -> std::io::Result<()> {
        self.half().data_bytes(data).await.map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, format!("ssh channel: {e}"))
        })
    }
}

impl<S> Drop for Closing<S>
where
    S: From<(russh::ChannelId, russh::ChannelMsg)> + Send + Sync + 'static,
{
    fn drop(&mut self) {
        if let (Some(half), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = half.close().await;
            });
        }
    }
}

/// A writer that keeps something alive (a channel's `Closing`) as long as it lives.
pub(crate) struct Holding<W> {
    pub(crate) inner: W,
    pub(crate) _keep: std::sync::Arc<dyn std::any::Any + Send + Sync>,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Holding<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why an SSH step failed. Each names the step, so logs say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("key file {path}: {why}")]
    KeyFile { path: PathBuf, why: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "unknown host key for {host} ({fingerprint}), not in {known_hosts}; add it there, or set host_key_policy = \"accept-new\""
    )]
    HostKeyUnknown {
        host: String,
        fingerprint: String,
        known_hosts: PathBuf,
    },
    #[error(
        "host key for {host} CHANGED ({fingerprint}; {known_hosts} line {line} has another): refused; if the server's key really changed, remove that line"
    )]
    HostKeyChanged {
        host: String,
        fingerprint: String,
        known_hosts: PathBuf,
        line: usize,
    },
    #[error("known_hosts {path}: {why}")]
    KnownHosts { path: PathBuf, why: String },
    #[error("authentication as {user} with key {fingerprint} refused by {host}")]
    AuthRefused {
        user: String,
        host: String,
        fingerprint: String,
    },
    #[error("{what} refused by {host}")]
    ChannelRefused { what: String, host: String },
    #[error("ssh session with {host}: {why}")]
    Session { host: String, why: String },
    #[error("ssh server: {0}")]
    Server(String),
}
