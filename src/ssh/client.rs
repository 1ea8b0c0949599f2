//! The client end of the tunnel: one long-lived, authenticated SSH session per next hop;
//! `open` adds a channel to it (making the session first if there is none or it died).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::ChannelMsg;
use russh::client::{self, Handle};
use russh::keys::known_hosts::{
    check_known_hosts_path, known_host_keys_path, learn_known_hosts_path,
};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tracing::{debug, info, warn};

use super::SshError;
use super::keys::{fingerprint, load_private};
use super::{Closing, Holding};
use crate::transport::{BoxStream, Duplex, OwnedSink};

/// What a channel asks the far end for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelTarget {
    /// A session channel with this subsystem (`gridvfs`): a gridvfs server proxy.
    Subsystem(String),
    /// A direct-tcpip channel to this address as the SSH server sees it: through a stock
    /// OpenSSH sshd to a server proxy listening on its loopback.
    DirectTcpip { host: String, port: u16 },
}

#[derive(Debug, Clone)]
pub struct SshClientOptions {
    pub user: String,
    pub host: String,
    pub port: u16,
    /// Our private key (OpenSSH format, unencrypted).
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    /// Learn (append) an unknown host key instead of refusing it. A changed key is
    /// refused regardless.
    pub accept_new: bool,
    pub target: ChannelTarget,
    /// Channel window we advertise, bytes.
    pub window: u32,
    pub connect_timeout: Duration,
    /// Keepalive interval; the session is dropped after 3 unanswered.
    pub keepalive: Duration,
    /// Ask for zlib compression of the session (for slow WAN links).
    pub compression: bool,
}

/// Bytes of a file channel not yet read by the transfer before the channel fails (a
/// transfer reads as fast as it decompresses; this only bounds a stuck one).
const FILE_MAX_UNREAD: usize = 64 << 20;

/// One remote: its session, shared by every channel (link) to it.
pub struct SshConnector {
    opts: SshClientOptions,
    /// The session of the RPC channels.
    session: tokio::sync::Mutex<Option<Live>>,
    /// The session of the file channels: a TCP connection of its own, so that a bulk
    /// transfer queued in one connection's buffers does not delay the RPC replies (a
    /// LOOKUP behind a second of compressed image would wait that second).
    file_session: tokio::sync::Mutex<Option<Live>>,
    /// When making the file session ahead last failed, and whether one is under way.
    file_warm_failed: Mutex<Option<std::time::Instant>>,
    file_warming: std::sync::atomic::AtomicBool,
}

/// After a failed attempt to make the file session ahead, none for this long.
const WARM_BACKOFF: Duration = Duration::from_secs(10);

/// The live session and its life (see `Life`).
type Live = (Arc<Handle<Checker>>, Arc<Life>);

/// Whether a session is alive, for its channels' writers: russh does not wake a writer
/// waiting for window when the session dies. A monitor task polls the session handle
/// (every `LIFE_POLL`) and wakes every such writer when it has closed. A waiter is
/// registered only while it waits (`ended` is a `Notify` future, unregistered when
/// dropped), so a long session does not pile up the wakers of finished calls.
#[derive(Default)]
struct Life {
    dead: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

const LIFE_POLL: Duration = Duration::from_millis(500);

impl Life {
    fn is_dead(&self) -> bool {
        self.dead.load(std::sync::atomic::Ordering::Acquire)
    }

    fn kill(&self) {
        self.dead.store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Ready once the life has ended.
    async fn ended(&self) {
        loop {
            let n = self.notify.notified();
            tokio::pin!(n);
            // Registered before the check: a kill in between still wakes it.
            n.as_mut().enable();
            if self.is_dead() {
                return;
            }
            n.await;
        }
    }

    /// Watches `h` until it closes (or is dropped everywhere else).
    fn watch(self: &Arc<Self>, h: &Arc<Handle<Checker>>) {
        let (life, h) = (self.clone(), Arc::downgrade(h));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LIFE_POLL).await;
                match h.upgrade() {
                    Some(h) if !h.is_closed() => {}
                    _ => {
                        life.kill();
                        return;
                    }
                }
            }
        });
    }
}

/// Checks the server's host key against known_hosts; keeps why it refused, since russh
/// only reports "unknown key".
pub struct Checker {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    accept_new: bool,
    refused: Arc<Mutex<Option<SshError>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.refused.lock().expect("refused lock") = Some(SshError::Session {
                host: self.host.clone(),
                why: "the server offered a host certificate; only plain host keys are checked"
                    .into(),
            });
            return Ok(false);
        };
        let fp = fingerprint(key);
        let host = format!("[{}]:{}", self.host, self.port);
        let verdict = match check_known_hosts_path(&self.host, self.port, key, &self.known_hosts) {
            Ok(true) => return Ok(true),
            // russh says "not found" for a key of an algorithm that has no line for this
            // host, even when the host has lines of other algorithms. A host with any
            // key on file is known: another key is a changed key, refused even with
            // accept-new (a server that really switched key types needs its old line
            // removed, as for any changed key).
            Ok(false) => match known_host_keys_path(&self.host, self.port, &self.known_hosts) {
                Ok(known) if !known.is_empty() => SshError::HostKeyChanged {
                    host,
                    fingerprint: fp,
                    known_hosts: self.known_hosts.clone(),
                    line: known[0].0,
                },
                Ok(_) if self.accept_new => {
                    match learn_known_hosts_path(&self.host, self.port, key, &self.known_hosts) {
                        Ok(()) => {
                            info!(host = %self.host, port = self.port, fingerprint = %fp,
                                known_hosts = %self.known_hosts.display(), "new host key learnt (accept-new)");
                            return Ok(true);
                        }
                        Err(e) => SshError::KnownHosts {
                            path: self.known_hosts.clone(),
                            why: format!("cannot record the new host key: {e}"),
                        },
                    }
                }
                Ok(_) => SshError::HostKeyUnknown {
                    host,
                    fingerprint: fp,
                    known_hosts: self.known_hosts.clone(),
                },
                Err(e) => SshError::KnownHosts {
                    path: self.known_hosts.clone(),
                    why: e.to_string(),
                },
            },
            Err(russh::keys::Error::KeyChanged { line }) => SshError::HostKeyChanged {
                host,
                fingerprint: fp,
                known_hosts: self.known_hosts.clone(),
                line,
            },
            Err(e) => SshError::KnownHosts {
                path: self.known_hosts.clone(),
                why: e.to_string(),
            },
        };
        *self.refused.lock().expect("refused lock") = Some(verdict);
        Ok(false)
    }
}

/// `p` with the host-key algorithms of the host's known_hosts lines first, as OpenSSH
/// orders them: a server with several host keys then shows the one on file (an ECDSA
/// line stays valid when the server also has an ed25519 key, which would otherwise be
/// negotiated and refused as a changed key).
fn known_first(
    mut p: russh::Preferred,
    known: &[(usize, russh::keys::PublicKey)],
) -> russh::Preferred {
    use russh::keys::Algorithm;
    if known.is_empty() {
        return p;
    }
    // RSA is not moved up: russh is built without RSA signature checks here, so a
    // server's RSA key could not be verified (an RSA-only line is refused as changed
    // when the server shows another type).
    let same = |a: &Algorithm, k: &Algorithm| !matches!(a, Algorithm::Rsa { .. }) && a == k;
    let mut keys = p.key.to_vec();
    // Stable: known algorithms first, each group in the default order.
    keys.sort_by_key(|a| !known.iter().any(|(_, k)| same(a, &k.algorithm())));
    p.key = std::borrow::Cow::Owned(keys);
    p
}

impl SshConnector {
    pub fn new(opts: SshClientOptions) -> SshConnector {
        SshConnector {
            opts,
            session: tokio::sync::Mutex::new(None),
            file_session: tokio::sync::Mutex::new(None),
            file_warm_failed: Mutex::new(None),
            file_warming: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn options(&self) -> &SshClientOptions {
        &self.opts
    }

    /// A new channel as a byte stream. Reuses the session; makes a new one (with its
    /// host key check and authentication) if there is none or it has died.
    pub async fn open(&self) -> Result<BoxStream, SshError> {
        Ok(self.open_duplex().await?.stream)
    }

    /// A new channel with its owned-buffer sink (see `duplex`).
    pub async fn open_duplex(&self) -> Result<Duplex, SshError> {
        self.open_target(&self.opts.target).await
    }

    /// Whether the far end is a gridvfs server proxy (not a stock sshd forwarding to
    /// one), which also serves the file channel.
    pub fn has_file_channel(&self) -> bool {
        matches!(self.opts.target, ChannelTarget::Subsystem(_))
    }

    /// A channel of the file-channel subsystem (`crate::meta::channel`) on the file
    /// session (its own connection), with `first` (the request) already sent: it goes right behind the
    /// subsystem request, so the round trip of the subsystem reply is not waited for
    /// before it; the reply is still checked (a server without the subsystem refuses it,
    /// and that is an error here, not a channel that never answers). The channel is
    /// drained by a pump (`FILE_MAX_UNREAD`), so a slow consumer of a transfer never
    /// stalls the session's other channels.
    pub async fn open_file_channel(&self, first: &[u8]) -> Result<BoxStream, SshError> {
        let (handle, life) = self.live(&self.file_session).await?;
        let ch = match self
            .subsystem_channel(&handle, crate::meta::channel::SUBSYSTEM, first)
            .await
        {
            Ok(ch) => ch,
            Err(e) => {
                self.forget(&self.file_session, &handle).await;
                return Err(e);
            }
        };
        let (rh, wh) = ch.split();
        let ended = Arc::new(Life::default());
        let (writer, _closing) = guarded_writer(wh.make_writer(), wh, life, ended.clone());
        let reader = super::pump::drained_channel(rh, FILE_MAX_UNREAD, move || ended.kill());
        Ok(Box::pin(tokio::io::join(reader, writer)))
    }

    /// Makes the file session now if there is none (it takes a few round trips), so
    /// that the first transfer does not wait for it; a failure is left for that
    /// transfer to meet again and report.
    pub async fn warm_file_session(&self) {
        // One attempt at a time (a LOOKUP of every large file asks), and none for a while
        // after one failed: the transfer that needs the session will try, and report.
        use std::sync::atomic::Ordering;
        if self.file_warming.swap(true, Ordering::AcqRel) {
            return; // another warm-up is under way
        }
        let failed = *self.file_warm_failed.lock().expect("file_warm_failed lock");
        if failed.is_none_or(|t| t.elapsed() >= WARM_BACKOFF)
            && let Err(e) = self.live(&self.file_session).await
        {
            debug!(side = "upstream", error = %e, "file session not made ahead");
            *self.file_warm_failed.lock().expect("file_warm_failed lock") =
                Some(std::time::Instant::now());
        }
        self.file_warming.store(false, Ordering::Release);
    }

    /// The live RPC session, made if there is none or it died.
    async fn session(&self) -> Result<Live, SshError> {
        self.live(&self.session).await
    }

    /// Forgets `slot`'s session if it is still `handle` (the next use makes a new one).
    async fn forget(&self, slot: &tokio::sync::Mutex<Option<Live>>, handle: &Arc<Handle<Checker>>) {
        let mut s = slot.lock().await;
        if s.as_ref().is_some_and(|(h, _)| Arc::ptr_eq(h, handle)) {
            *s = None;
        }
    }

    /// The live session in `slot`, made if there is none or it died.
    async fn live(&self, slot: &tokio::sync::Mutex<Option<Live>>) -> Result<Live, SshError> {
        let mut s = slot.lock().await;
        match s.as_ref() {
            Some((h, l)) if !h.is_closed() => Ok((h.clone(), l.clone())),
            _ => {
                let h = Arc::new(self.connect().await?);
                let l = Arc::new(Life::default());
                l.watch(&h);
                *s = Some((h.clone(), l.clone()));
                Ok((h, l))
            }
        }
    }

    async fn open_target(&self, target: &ChannelTarget) -> Result<Duplex, SshError> {
        let (handle, life) = self.session().await?;
        match self.channel(&handle, &life, target).await {
            Ok(c) => Ok(c),
            Err(e) => {
                // A dead session shows up here first: forget it, so the next try
                // (the link's backoff) makes a new one.
                self.forget(&self.session, &handle).await;
                Err(e)
            }
        }
    }

    fn host(&self) -> String {
        format!("{}:{}", self.opts.host, self.opts.port)
    }

    async fn connect(&self) -> Result<Handle<Checker>, SshError> {
        let o = &self.opts;
        let key = load_private(&o.key)?;
        let key_fp = fingerprint(key.public_key());
        let config = Arc::new(client::Config {
            window_size: o.window,
            maximum_packet_size: super::MAX_PACKET,
            channel_buffer_size: 1024,
            keepalive_interval: Some(o.keepalive),
            keepalive_max: 3,
            inactivity_timeout: None,
            nodelay: true,
            preferred: known_first(
                super::preferred(o.compression),
                &known_host_keys_path(&o.host, o.port, &o.known_hosts).unwrap_or_default(),
            ),
            ..Default::default()
        });
        let refused = Arc::new(Mutex::new(None));
        let checker = Checker {
            host: o.host.clone(),
            port: o.port,
            known_hosts: o.known_hosts.clone(),
            accept_new: o.accept_new,
            refused: refused.clone(),
        };
        let connecting = async {
            let tcp = tokio::net::TcpStream::connect((o.host.as_str(), o.port))
                .await
                .map_err(russh::Error::IO)?;
            tcp.set_nodelay(true).map_err(russh::Error::IO)?;
            let stream = super::decouple::decoupled(tcp, super::MAX_UNSENT);
            client::connect_stream(config, stream, checker).await
        };
        let mut handle = match tokio::time::timeout(o.connect_timeout, connecting).await {
            Err(_) => {
                return Err(SshError::Connect {
                    addr: self.host(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no SSH session within {:?}", o.connect_timeout),
                    ),
                });
            }
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                if let Some(why) = refused.lock().expect("refused lock").take() {
                    return Err(why);
                }
                return Err(match e {
                    russh::Error::IO(source) => SshError::Connect {
                        addr: self.host(),
                        source,
                    },
                    other => SshError::Session {
                        host: self.host(),
                        why: other.to_string(),
                    },
                });
            }
        };
        let session_err = |e: russh::Error| SshError::Session {
            host: self.host(),
            why: e.to_string(),
        };
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .map_err(session_err)?
            .flatten();
        let auth = handle
            .authenticate_publickey(
                o.user.clone(),
                PrivateKeyWithHashAlg::new(Arc::new(key), hash),
            )
            .await
            .map_err(session_err)?;
        if !auth.success() {
            return Err(SshError::AuthRefused {
                user: o.user.clone(),
                host: self.host(),
                fingerprint: key_fp,
            });
        }
        info!(host = %self.host(), user = %o.user, key = %key_fp, "ssh session established");
        Ok(handle)
    }

    /// A session channel with subsystem `name` started; `first` (if not empty) is sent
    /// right behind the request, before its reply is awaited. A refusal is an error.
    async fn subsystem_channel(
        &self,
        h: &Handle<Checker>,
        name: &str,
        first: &[u8],
    ) -> Result<russh::Channel<client::Msg>, SshError> {
        let refused = |what: String| SshError::ChannelRefused {
            what,
            host: self.host(),
        };
        let mut ch = h
            .channel_open_session()
            .await
            .map_err(|e| refused(format!("session channel ({e})")))?;
        ch.request_subsystem(true, name)
            .await
            .map_err(|e| refused(format!("subsystem {name} ({e})")))?;
        if !first.is_empty() {
            ch.data(first)
                .await
                .map_err(|e| refused(format!("subsystem {name} ({e})")))?;
        }
        // The reply to our request comes before any data.
        loop {
            match ch.wait().await {
                Some(ChannelMsg::Success) => return Ok(ch),
                Some(ChannelMsg::Failure) | None => {
                    return Err(refused(format!("subsystem {name}")));
                }
                Some(ChannelMsg::Close) | Some(ChannelMsg::Eof) => {
                    return Err(refused(format!("subsystem {name} (channel closed)")));
                }
                Some(other) => {
                    warn!(msg = ?other, "unexpected SSH message before the subsystem started");
                }
            }
        }
    }

    async fn channel(
        &self,
        h: &Handle<Checker>,
        life: &Arc<Life>,
        target: &ChannelTarget,
    ) -> Result<Duplex, SshError> {
        let refused = |what: String| SshError::ChannelRefused {
            what,
            host: self.host(),
        };
        match target {
            ChannelTarget::Subsystem(name) => {
                let ch = self.subsystem_channel(h, name, &[]).await?;
                Ok(duplex(ch, life.clone()))
            }
            ChannelTarget::DirectTcpip { host, port } => {
                let ch = h
                    .channel_open_direct_tcpip(host.as_str(), *port as u32, "127.0.0.1", 0)
                    .await
                    .map_err(|e| refused(format!("direct-tcpip to {host}:{port} ({e})")))?;
                Ok(duplex(ch, life.clone()))
            }
        }
    }
}

/// An RPC channel as a `Duplex`: reads are russh's buffers handed on (`ChannelReader`);
/// whole records go to russh as they are (`ChannelSink`: `data_bytes`, no copy), other
/// writes through its writer. Both writing sides fail once the session died or the reads
/// ended (russh wakes neither when a session dies: a writer waiting for window would
/// wait for ever, holding the link's writer lock, so the reconnect would never come),
/// and the channel is closed when both are dropped (`Closing`).
fn duplex(ch: russh::Channel<client::Msg>, life: Arc<Life>) -> Duplex {
    let (rh, wh) = ch.split();
    let ended = Arc::new(Life::default());
    let (writer, closing) = guarded_writer(wh.make_writer(), wh, life.clone(), ended.clone());
    let stream: BoxStream = Box::pin(tokio::io::join(
        ChannelReader {
            half: Some(rh),
            next: None,
            cur: bytes::Bytes::new(),
            done: false,
            ended: ended.clone(),
        },
        writer,
    ));
    Duplex {
        stream,
        sink: Some(Box::new(ChannelSink {
            closing,
            life,
            ended,
        })),
    }
}

/// A channel's stream writer, failing once `life` (the session's) or `ended` (the
/// channel's reads) is over, and the channel's close-on-drop, which the writer keeps
/// alive (an owned-buffer sink may share it).
/// `inner`: `wh`'s writer (`make_writer`, made by the caller: its type borrows `wh`).
fn guarded_writer<W>(
    inner: W,
    wh: russh::ChannelWriteHalf<client::Msg>,
    life: Arc<Life>,
    ended: Arc<Life>,
) -> (Holding<GuardedWriter<W>>, Arc<Closing<client::Msg>>) {
    let closing = Closing::new(wh);
    let writer = Holding {
        inner: GuardedWriter {
            inner,
            life,
            ended,
            watch: None,
        },
        _keep: closing.clone(),
    };
    (writer, closing)
}

type NextMsg = std::pin::Pin<
    Box<dyn std::future::Future<Output = (russh::ChannelReadHalf, Option<ChannelMsg>)> + Send>,
>;

/// A channel's incoming data as a byte stream, over the read half alone (russh's own
/// reader, `ChannelRx`, is not public and borrows the half). Each of russh's buffers is
/// copied once into the caller's, as `ChannelRx` does. At the channel's EOF or close it
/// ends, and marks `ended` (which fails the writers: see `duplex`).
struct ChannelReader {
    half: Option<russh::ChannelReadHalf>,
    next: Option<NextMsg>,
    cur: bytes::Bytes,
    done: bool,
    ended: Arc<Life>,
}

impl tokio::io::AsyncRead for ChannelReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use bytes::Buf;
        loop {
            if !self.cur.is_empty() {
                let n = self.cur.len().min(buf.remaining());
                buf.put_slice(&self.cur[..n]);
                self.cur.advance(n);
                return std::task::Poll::Ready(Ok(()));
            }
            if self.done {
                return std::task::Poll::Ready(Ok(()));
            }
            if self.next.is_none() {
                let mut half = self.half.take().expect("a half or a wait in progress");
                self.next = Some(Box::pin(async move {
                    let m = half.wait().await;
                    (half, m)
                }));
            }
            let next = self.next.as_mut().expect("set above");
            let (half, m) = std::task::ready!(next.as_mut().poll(cx));
            self.next = None;
            self.half = Some(half);
            match m {
                Some(ChannelMsg::Data { data }) => self.cur = data,
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                    self.done = true;
                    self.ended.kill();
                }
                Some(_) => {}
            }
        }
    }
}

/// A channel writer that fails once the session died or the channel's reads ended:
/// russh does not wake a writer waiting for window when its session dies.
struct GuardedWriter<W> {
    inner: W,
    life: Arc<Life>,
    ended: Arc<Life>,
    /// Made the first time a write waits, kept while the writer lives (one
    /// registration per writer, not per write).
    watch: Option<OverFuture>,
}

type OverFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Ready once either life has ended.
fn over(a: Arc<Life>, b: Arc<Life>) -> OverFuture {
    Box::pin(async move {
        tokio::select! {
            _ = a.ended() => {}
            _ = b.ended() => {}
        }
    })
}

impl<W> GuardedWriter<W> {
    fn over(&self) -> bool {
        self.life.is_dead() || self.ended.is_dead()
    }

    /// Whether the writer's lives are over, registering the task to be woken when they
    /// end.
    fn watch_over(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        let (a, b) = (self.life.clone(), self.ended.clone());
        self.watch
            .get_or_insert_with(|| over(a, b))
            .as_mut()
            .poll(cx)
            .is_ready()
    }
}

fn aborted() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the SSH channel's session ended",
    )
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for GuardedWriter<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.over() {
            return std::task::Poll::Ready(Err(aborted()));
        }
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if r.is_pending() && self.watch_over(cx) {
            return std::task::Poll::Ready(Err(aborted()));
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.over() {
            return std::task::Poll::Ready(Ok(()));
        }
        let r = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        if r.is_pending() && self.watch_over(cx) {
            return std::task::Poll::Ready(Ok(()));
        }
        r
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.ended.is_dead() {
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A client channel's owned-buffer sink, failing like `GuardedWriter`.
struct ChannelSink {
    closing: Arc<Closing<client::Msg>>,
    life: Arc<Life>,
    ended: Arc<Life>,
}

impl OwnedSink for ChannelSink {
    fn send(
        &self,
        data: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send + '_>> {
        Box::pin(async move {
            if self.life.is_dead() || self.ended.is_dead() {
                return Err(aborted());
            }
            // The sends come from many tasks: the waits on the lives are futures that
            // unregister when dropped. The send is polled first, so one that goes
            // through at once (the usual case, on every call) registers no wait at all.
            tokio::select! {
                biased;
                r = self.closing.send(data) => r,
                _ = self.life.ended() => Err(aborted()),
                _ = self.ended.ended() => Err(aborted()),
            }
        })
    }
}
