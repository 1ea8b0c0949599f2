//! The server proxy's built-in SSH server.
//!
//! Public-key authentication only, against an OpenSSH `authorized_keys` file that is
//! re-read at every login (so adding or removing a key needs no restart). A session may
//! open session channels, and a channel is served only once it asks for the `gridvfs`
//! subsystem; shell, exec, pty, env, X11 and agent requests, direct-tcpip and
//! tcpip-forward are refused. Each served channel's bytes go through a pump (see `pump`)
//! to `on_channel`, with who authenticated.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::PublicKey;
use russh::server::{self, Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use super::SshError;
use super::keys::{fingerprint, load_private, parse_authorized_line};
use super::{Closing, Holding, pump};
use crate::transport::{BoxStream, Duplex, OwnedSink};

#[derive(Debug, Clone)]
pub struct SshServerOptions {
    pub host_key: PathBuf,
    pub authorized_keys: PathBuf,
    /// Channel window we advertise, bytes.
    pub window: u32,
    /// The subsystems served: `gridvfs` (RPC) and `gridvfs-file` (the file channel).
    pub subsystems: Vec<String>,
    /// Bytes a channel may have sent that the proxy has not read yet (see `pump`).
    pub max_unread: usize,
    /// A connection must have logged in within this time, or it is closed (so idle
    /// connections cannot hold every slot). `LOGIN_GRACE` by default.
    pub login_grace: Duration,
}

/// Who is on a served channel.
#[derive(Debug, Clone)]
pub struct ChannelPeer {
    pub addr: SocketAddr,
    pub user: String,
    /// SHA256 fingerprint of the key that authenticated.
    pub key_fingerprint: String,
    /// The key's comment in authorized_keys.
    pub key_comment: String,
    /// The subsystem the channel asked for.
    pub subsystem: String,
}

/// Called with each served channel.
pub type OnChannel = Arc<dyn Fn(Duplex, ChannelPeer) + Send + Sync>;

/// A served channel's outgoing side as an `OwnedSink` (`Closing::send`), sharing the
/// channel's `Closing` with the stream's writer.
struct ChannelSink(Arc<Closing<Msg>>);

impl OwnedSink for ChannelSink {
    fn send(
        &self,
        data: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send + '_>> {
        Box::pin(self.0.send(data))
    }
}

/// SSH connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// Channels one session may have open at once (a gridvfs client opens one per upstream
/// link, and one per whole-file transfer).
const MAX_CHANNELS: usize = 32;

/// The default `login_grace` (OpenSSH's LoginGraceTime is 120 s).
pub const LOGIN_GRACE: Duration = Duration::from_secs(30);

/// The key in `path` that equals `key`, with its comment. Re-read at each call.
fn authorized(path: &Path, key: &PublicKey) -> Result<Option<String>, std::io::Error> {
    let text = std::fs::read_to_string(path)?;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        // Options (from=, expiry-time=, restrict, ...) are not enforced here, so a key
        // that carries any is not let in at all rather than let in unrestricted.
        let has_options = !trimmed.starts_with("ssh-") && !trimmed.starts_with("ecdsa-");
        match parse_authorized_line(trimmed) {
            Some((k, _)) if k.key_data() == key.key_data() && has_options => {
                warn!(file = %path.display(), line = i + 1,
                    "authorized_keys line with options: refused (options are not supported; list the key without them)");
                return Ok(None);
            }
            Some((k, comment)) if k.key_data() == key.key_data() => return Ok(Some(comment)),
            Some(_) => {}
            None => {
                warn!(file = %path.display(), line = i + 1, "authorized_keys line not understood; skipped")
            }
        }
    }
    Ok(None)
}

/// Serves SSH on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    opts: SshServerOptions,
    on_channel: OnChannel,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SshError> {
    let key = load_private(&opts.host_key)?;
    info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        host_key = %fingerprint(key.public_key()), "ssh server listening");
    let config = Arc::new(server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        keys: vec![key],
        window_size: opts.window,
        maximum_packet_size: super::MAX_PACKET,
        channel_buffer_size: 1024,
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 6,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        nodelay: true,
        preferred: super::preferred(false),
        ..Default::default()
    });
    let opts = Arc::new(opts);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (socket, addr) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "ssh accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = socket.set_nodelay(true);
        let authed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handler = Conn {
            addr,
            opts: opts.clone(),
            on_channel: on_channel.clone(),
            opened: HashMap::new(),
            who: None,
            authed: authed.clone(),
            channels: Default::default(),
        };
        let config = config.clone();
        let login_grace = opts.login_grace;
        tokio::spawn(async move {
            debug!(%addr, "ssh connection");
            let t0 = tokio::time::Instant::now();
            let stream = super::decouple::decoupled(socket, super::MAX_UNSENT);
            let started =
                tokio::time::timeout(login_grace, server::run_stream(config, stream, handler))
                    .await;
            let session = match started {
                Ok(Ok(session)) => session,
                Ok(Err(e)) => {
                    debug!(%addr, error = %e, "ssh handshake failed");
                    return;
                }
                Err(_) => {
                    warn!(side = "client", peer = %addr, "ssh connection closed: no SSH handshake within the login grace time");
                    return;
                }
            };
            let handle = session.handle();
            let session = tokio::spawn(session);
            tokio::pin!(session);
            let grace = tokio::time::sleep_until(t0 + login_grace);
            tokio::select! {
                r = &mut session => {
                    if let Ok(Err(e)) = r {
                        debug!(%addr, error = %e, "ssh session ended");
                    }
                    drop(permit);
                    return;
                }
                _ = grace => {}
            }
            if !authed.load(std::sync::atomic::Ordering::Acquire) {
                warn!(side = "client", peer = %addr, "ssh connection closed: not logged in within the login grace time");
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "login grace time exceeded".into(),
                        String::new(),
                    )
                    .await;
                // A peer that ignores the disconnect loses its session anyway.
                if tokio::time::timeout(Duration::from_secs(5), &mut session)
                    .await
                    .is_err()
                {
                    session.abort();
                }
            } else if let Ok(Err(e)) = (&mut session).await {
                debug!(%addr, error = %e, "ssh session ended");
            }
            drop(permit);
        });
    }
    Ok(())
}

/// One SSH connection.
struct Conn {
    addr: SocketAddr,
    opts: Arc<SshServerOptions>,
    on_channel: OnChannel,
    /// Session channels opened but not yet started as the subsystem.
    opened: HashMap<ChannelId, Channel<Msg>>,
    /// (user, fingerprint, comment) once authenticated.
    who: Option<(String, String, String)>,
    /// Set at login, for the login grace timer.
    authed: Arc<std::sync::atomic::AtomicBool>,
    /// Channels open in this session (bounded: each may hold a pump's worth).
    channels: std::collections::HashSet<ChannelId>,
}

impl Conn {
    fn check(&self, key: &PublicKey) -> Option<String> {
        match authorized(&self.opts.authorized_keys, key) {
            Ok(c) => c,
            Err(e) => {
                warn!(file = %self.opts.authorized_keys.display(), error = %e,
                    "cannot read authorized_keys: every login refused");
                None
            }
        }
    }
}

impl server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.check(offer.public_key) {
            Some(_) => Auth::Accept,
            None => Auth::reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = fingerprint(key.public_key);
        match self.check(key.public_key) {
            Some(comment) => {
                info!(peer = %self.addr, user, key = %fp, comment = %comment, "ssh login");
                self.who = Some((user.to_string(), fp, comment));
                self.authed
                    .store(true, std::sync::atomic::Ordering::Release);
                Ok(Auth::Accept)
            }
            None => {
                warn!(side = "client", peer = %self.addr, user, key = %fp,
                    "ssh login refused: key not in authorized_keys");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.channels.len() >= MAX_CHANNELS {
            warn!(side = "client", peer = %self.addr, max = MAX_CHANNELS, "ssh channel refused: too many in one session");
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.channels.insert(channel.id());
        self.opened.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(channel), Some((user, fp, comment))) = (
            self.opts
                .subsystems
                .iter()
                .any(|s| s == name)
                .then(|| self.opened.remove(&id))
                .flatten(),
            self.who.clone(),
        ) else {
            warn!(side = "client", peer = %self.addr, subsystem = name, "ssh subsystem refused");
            session.channel_failure(id)?;
            return Ok(());
        };
        session.channel_success(id)?;
        // Incoming data drained as russh hands it over; outgoing records handed to
        // russh whole (`ChannelSink`), other writes through the channel's writer.
        let (rh, wh) = channel.split();
        let writer = wh.make_writer();
        let closing = Closing::new(wh);
        let stream: BoxStream = Box::pin(tokio::io::join(
            pump::drained_channel(rh, self.opts.max_unread, || {}),
            Holding {
                inner: writer,
                _keep: closing.clone(),
            },
        ));
        let sink: Box<dyn OwnedSink> = Box::new(ChannelSink(closing));
        (self.on_channel)(
            Duplex {
                stream,
                sink: Some(sink),
            },
            ChannelPeer {
                addr: self.addr,
                user,
                key_fingerprint: fp,
                key_comment: comment,
                subsystem: name.to_string(),
            },
        );
        Ok(())
    }

    async fn channel_close(
        &mut self,
        id: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&id);
        self.opened.remove(&id);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(id, "exec", session)
    }

    async fn shell_request(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(id, "shell", session)
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        id: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(id, "pty", session)
    }

    async fn env_request(
        &mut self,
        id: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(id, "env", session)
    }

    async fn x11_request(
        &mut self,
        id: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(id, "x11", session)
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        warn!(side = "client", peer = %self.addr, to = %format!("{host_to_connect}:{port_to_connect}"),
            "ssh direct-tcpip refused (only the gridvfs subsystem is served)");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }
}

impl Conn {
    fn refuse(
        &mut self,
        id: ChannelId,
        what: &str,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        warn!(side = "client", peer = %self.addr, request = what,
            "ssh request refused (only the gridvfs subsystem is served)");
        session.channel_failure(id)
    }
}
