//! The tunnel in process, on loopback: our client against our server (and OpenSSH's
//! tools where they are the reference: key formats and fingerprints).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::client::{ChannelTarget, SshClientOptions, SshConnector};
use super::keys::{fingerprint, keygen, load_private, parse_authorized_line};
use super::server::{ChannelPeer, OnChannel, SshServerOptions, serve};
use super::*;

struct Setup {
    dir: tempfile::TempDir,
    host_pub: String,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let host_pub = keygen(&dir.path().join("host"), "host").unwrap();
        let client_pub = keygen(&dir.path().join("client"), "client").unwrap();
        keygen(&dir.path().join("stranger"), "stranger").unwrap();
        std::fs::write(
            dir.path().join("authorized_keys"),
            format!("# comment line\n{client_pub}\n"),
        )
        .unwrap();
        Setup { dir, host_pub }
    }

    fn p(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn trust(&self, port: u16, line: &str) {
        let key: Vec<&str> = line.split_whitespace().take(2).collect();
        std::fs::write(
            self.p("known_hosts"),
            format!("[127.0.0.1]:{port} {}\n", key.join(" ")),
        )
        .unwrap();
    }

    fn client(&self, port: u16, key: &str, accept_new: bool) -> SshConnector {
        self.client_with(port, key, accept_new, false)
    }

    fn client_with(
        &self,
        port: u16,
        key: &str,
        accept_new: bool,
        compression: bool,
    ) -> SshConnector {
        SshConnector::new(SshClientOptions {
            user: "grid".into(),
            host: "127.0.0.1".into(),
            port,
            key: self.p(key),
            known_hosts: self.p("known_hosts"),
            accept_new,
            target: ChannelTarget::Subsystem(SUBSYSTEM.into()),
            window: 16 << 20,
            connect_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(5),
            compression,
        })
    }
}

/// Options of our server for a test: 16 MiB windows, the gridvfs subsystem.
fn server_opts(s: &Setup, max_unread: usize, login_grace_secs: u64) -> SshServerOptions {
    SshServerOptions {
        host_key: s.p("host"),
        authorized_keys: s.p("authorized_keys"),
        window: 16 << 20,
        subsystems: vec![SUBSYSTEM.into()],
        max_unread,
        login_grace: Duration::from_secs(login_grace_secs),
    }
}

/// Our server on a loopback port with `on` behind the subsystem; returns the port and
/// the sender that stops it (dropping it stops the server too).
async fn start_server(opts: SshServerOptions, on: OnChannel) -> (u16, watch::Sender<bool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move { serve(l, opts, on, rx).await.unwrap() });
    (port, tx)
}

/// Our server with an echo service behind the subsystem; returns its port and the
/// sender that stops it.
async fn echo_server(
    s: &Setup,
    peers: Arc<std::sync::Mutex<Vec<ChannelPeer>>>,
) -> (u16, watch::Sender<bool>) {
    let on: OnChannel = Arc::new(move |d: crate::transport::Duplex, peer| {
        peers.lock().unwrap().push(peer);
        tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(d.stream);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    });
    start_server(server_opts(s, 64 << 20, 1), on).await
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// `compression = true`: the session is zlib-compressed (the server accepts what the
/// client asks for) and carries bytes unchanged both ways, compressible or not.
#[tokio::test]
async fn a_compressed_session_carries_bytes_unchanged() {
    let s = Setup::new();
    let (port, _stop) = echo_server(&s, Arc::default()).await;
    s.trust(port, &s.host_pub);
    let c = s.client_with(port, "client", false, true);
    let mut data = pattern(4 << 20, 3);
    data.extend(std::iter::repeat_n(0u8, 4 << 20));
    let back = echo(c.open().await.unwrap(), &data).await;
    assert!(back == data, "echo through a compressed session differs");
}

/// A channel the server gives up at once (here: its consumer drops it, as the daemon
/// does for a key no account lists) is closed: the client sees the end of the stream
/// instead of waiting for ever for replies. (Regression: after the served channel was
/// split into a pump and an owned-buffer sink, nothing sent CHANNEL_CLOSE any more.)
#[tokio::test]
async fn a_channel_the_server_drops_is_closed() {
    let s = Setup::new();
    let on: OnChannel = Arc::new(|d, _| drop(d));
    let (port, _stop) = start_server(server_opts(&s, 64 << 20, 30), on).await;
    s.trust(port, &s.host_pub);
    let c = s.client(port, "client", false);
    let (mut r, mut w) = tokio::io::split(c.open().await.unwrap());
    let _ = w.write_all(b"a call nobody will answer").await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), r.read(&mut buf))
        .await
        .expect("the dropped channel was never closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "end of stream, no data");
}

/// Writes `data` to an echoing channel while reading the same amount back.
async fn echo(stream: crate::transport::BoxStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(stream);
    let sent = data.to_vec();
    let writer = tokio::spawn(async move { w.write_all(&sent).await.unwrap() });
    let mut back = vec![0u8; data.len()];
    r.read_exact(&mut back).await.unwrap();
    writer.await.unwrap();
    back
}

/// Regression: 4 channels echoing 6 MiB each deadlocked the session (both ends blocked
/// writing to full sockets, neither reading) until writes were decoupled (`decouple`).
#[tokio::test]
async fn several_channels_on_one_session_carry_bytes_both_ways() {
    let s = Setup::new();
    let peers = Arc::default();
    let (port, _stop) = echo_server(&s, Arc::clone(&peers)).await;
    s.trust(port, &s.host_pub);
    let c = Arc::new(s.client(port, "client", false));
    let mut tasks = Vec::new();
    for i in 0..4u8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(12 << 20, i);
            let back = echo(c.open().await.unwrap(), &data).await;
            assert!(back == data, "channel {i}: echo differs");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let peers = peers.lock().unwrap();
    assert_eq!(peers.len(), 4);
    let client_pub = std::fs::read_to_string(s.p("client.pub")).unwrap();
    let (k, _) = parse_authorized_line(&client_pub).unwrap();
    assert!(
        peers
            .iter()
            .all(|p| p.key_fingerprint == fingerprint(&k) && p.user == "grid")
    );
    assert!(peers.iter().all(|p| p.key_comment == "client"));
}

#[tokio::test]
async fn wrong_client_key_and_unknown_or_changed_host_keys_are_refused() {
    let s = Setup::new();
    let (port, _stop) = echo_server(&s, Arc::default()).await;
    // Unknown host (empty known_hosts): refused, and the error says how to fix it.
    std::fs::write(s.p("known_hosts"), "").unwrap();
    match s.client(port, "client", false).open().await {
        Err(SshError::HostKeyUnknown { .. }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("unknown host key accepted"),
    }
    // A different key on file for this host: refused even with accept-new.
    let other = keygen(&s.p("other"), "other").unwrap();
    s.trust(port, &other);
    match s.client(port, "client", true).open().await {
        Err(SshError::HostKeyChanged { .. }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("changed host key accepted"),
    }
    // A key of another type on file (an ECDSA key where the server offers ed25519): the
    // host is known, so this is a changed key too, refused even with accept-new (and
    // not appended to known_hosts).
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBD5kaYzOKWB/v1pOeLMR7DWuxLomcnrAI/VTQGq0ejnqIWYx1qi0ICbZLymB8HCGsrO/gLy5zmlKDjWW1Wrei1g=";
    s.trust(port, ECDSA);
    for accept_new in [true, false] {
        match s.client(port, "client", accept_new).open().await {
            Err(SshError::HostKeyChanged { line: 1, .. }) => {}
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a host key of another type accepted (accept_new {accept_new})"),
        }
    }
    assert_eq!(
        std::fs::read_to_string(s.p("known_hosts"))
            .unwrap()
            .lines()
            .count(),
        1,
        "nothing learnt"
    );
    // accept-new learns an unknown key; strict then accepts it.
    std::fs::write(s.p("known_hosts"), "").unwrap();
    s.client(port, "client", true).open().await.unwrap();
    s.client(port, "client", false).open().await.unwrap();
    // A key that is not in authorized_keys.
    match s.client(port, "stranger", false).open().await {
        Err(SshError::AuthRefused { .. }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("stranger's key accepted"),
    }
    // Listed with options (not enforced here): refused rather than let in unrestricted.
    let stranger = std::fs::read_to_string(s.p("stranger.pub")).unwrap();
    let plain = std::fs::read_to_string(s.p("authorized_keys")).unwrap();
    std::fs::write(
        s.p("authorized_keys"),
        format!("{plain}from=\"10.0.0.1\",no-pty {stranger}"),
    )
    .unwrap();
    assert!(matches!(
        s.client(port, "stranger", false).open().await,
        Err(SshError::AuthRefused { .. })
    ));
    // authorized_keys is re-read at each login: adding the key lets it in.
    std::fs::write(s.p("authorized_keys"), format!("{plain}{stranger}")).unwrap();
    s.client(port, "stranger", false).open().await.unwrap();
}

/// Only the gridvfs subsystem: a shell, a command, another subsystem or a port forward
/// are refused (checked with russh's client directly).
#[tokio::test]
async fn only_the_gridvfs_subsystem_is_served() {
    let s = Setup::new();
    let (port, _stop) = echo_server(&s, Arc::default()).await;
    struct Any;
    impl russh::client::Handler for Any {
        type Error = russh::Error;
        async fn check_server_key(
            &mut self,
            _: &russh::keys::PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }
    let cfg = Arc::new(russh::client::Config::default());
    let mut h = russh::client::connect(cfg, ("127.0.0.1", port), Any)
        .await
        .unwrap();
    let key = load_private(&s.p("client")).unwrap();
    let ok = h
        .authenticate_publickey(
            "grid",
            russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None),
        )
        .await
        .unwrap();
    assert!(ok.success());
    async fn answer(ch: &mut russh::Channel<russh::client::Msg>) -> bool {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ch.wait())
                .await
                .unwrap()
            {
                Some(russh::ChannelMsg::Success) => return true,
                Some(russh::ChannelMsg::Failure) | None => return false,
                Some(_) => {}
            }
        }
    }
    let mut ch = h.channel_open_session().await.unwrap();
    ch.exec(true, "id").await.unwrap();
    assert!(!answer(&mut ch).await, "exec served");
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_shell(true).await.unwrap();
    assert!(!answer(&mut ch).await, "shell served");
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "sftp").await.unwrap();
    assert!(!answer(&mut ch).await, "sftp served");
    assert!(
        h.channel_open_direct_tcpip("127.0.0.1", 22, "127.0.0.1", 0)
            .await
            .is_err(),
        "direct-tcpip served"
    );
    // The session still serves what it is for.
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_subsystem(true, SUBSYSTEM).await.unwrap();
    assert!(answer(&mut ch).await);
}

/// A loopback relay whose connections can be cut (the path of the tunnel).
async fn relay(to: u16) -> (u16, Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
    let c2 = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut a, _)) = l.accept().await {
            let t = tokio::spawn(async move {
                let mut b = tokio::net::TcpStream::connect(("127.0.0.1", to))
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            });
            c2.lock().unwrap().push(t.abort_handle());
        }
    });
    (port, conns)
}

#[tokio::test]
async fn a_dead_session_ends_its_streams_and_the_next_open_makes_a_new_one() {
    let s = Setup::new();
    let (port, _stop) = echo_server(&s, Arc::default()).await;
    let (via, conns) = relay(port).await;
    s.trust(via, &s.host_pub);
    let c = s.client(via, "client", false);
    let mut stream = c.open().await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    stream.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    for t in conns.lock().unwrap().drain(..) {
        t.abort();
    }
    // The stream ends (EOF or error), promptly.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the stream of a dead session did not end");
    // The next open makes a new session (a new TCP connection through the relay).
    let mut again = c.open().await.unwrap();
    again.write_all(b"pong").await.unwrap();
    again.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"pong");
    assert_eq!(conns.lock().unwrap().len(), 1, "a new connection was made");
}

#[test]
fn keys_interoperate_with_openssh_tools() {
    let dir = tempfile::tempdir().unwrap();
    let line = keygen(&dir.path().join("k"), "gridvfs@test").unwrap();
    let (key, comment) = parse_authorized_line(&line).unwrap();
    assert_eq!(comment, "gridvfs@test");
    let mode = std::fs::metadata(dir.path().join("k"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    assert!(
        keygen(&dir.path().join("k"), "again").is_err(),
        "overwrote a key"
    );
    if !Path::new("/usr/bin/ssh-keygen").exists() {
        eprintln!("SKIP: ssh-keygen missing (apt: openssh-client)");
        return;
    }
    let out = std::process::Command::new("ssh-keygen")
        .args(["-l", "-f"])
        .arg(dir.path().join("k.pub"))
        .output()
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains(&fingerprint(&key)), "{printed}");
    // OpenSSH reads our private key and derives the same public key.
    let out = std::process::Command::new("ssh-keygen")
        .args(["-y", "-f"])
        .arg(dir.path().join("k"))
        .output()
        .unwrap();
    let derived = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        derived.split_whitespace().nth(1),
        line.split_whitespace().nth(1)
    );
    // And we read OpenSSH's.
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(dir.path().join("o"))
        .status()
        .unwrap();
    assert!(st.success());
    load_private(&dir.path().join("o")).unwrap();
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "secret", "-f"])
        .arg(dir.path().join("enc"))
        .status()
        .unwrap();
    assert!(st.success());
    let e = load_private(&dir.path().join("enc"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("passphrase"), "{e}");
}

/// Regression: when a session died while a writer waited for window, russh never woke
/// the writer, so the upstream link (which holds its writer lock while writing) could
/// not reconnect. The write must fail promptly instead.
#[tokio::test]
async fn a_writer_waiting_for_window_fails_when_the_session_dies() {
    blocked_writer_case(true, false).await;
}

/// Review finding: the link re-sends its calls before its reader starts; with nobody
/// reading, only the session monitor can wake the writer.
#[tokio::test]
async fn a_writer_waiting_for_window_fails_even_with_no_reader() {
    blocked_writer_case(false, false).await;
}

/// The same for the owned-buffer sink the link writes its calls through (russh's
/// `data_bytes` waits for window as its writer does, and is not woken either).
#[tokio::test]
async fn an_owned_buffer_send_waiting_for_window_fails_when_the_session_dies() {
    blocked_writer_case(true, true).await;
    blocked_writer_case(false, true).await;
}

async fn blocked_writer_case(read: bool, owned: bool) {
    let s = Setup::new();
    // The server side never reads: nothing it gets is ever answered.
    let held: Arc<std::sync::Mutex<Vec<crate::transport::Duplex>>> = Arc::default();
    let h2 = held.clone();
    let on: OnChannel = Arc::new(move |d, _| h2.lock().unwrap().push(d));
    let (port, _stop) = start_server(server_opts(&s, 1 << 30, 30), on).await;
    // A relay that can stop forwarding (so no window comes back) and then cut.
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let via = relay.local_addr().unwrap().port();
    let (pause_tx, pause_rx) = watch::channel(false);
    let (cut_tx, cut_rx) = watch::channel(false);
    tokio::spawn(async move {
        let (a, _) = relay.accept().await.unwrap();
        let b = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (ar, aw) = a.into_split();
        let (br, bw) = b.into_split();
        async fn pipe(
            mut r: tokio::net::tcp::OwnedReadHalf,
            mut w: tokio::net::tcp::OwnedWriteHalf,
            mut pause: watch::Receiver<bool>,
        ) {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                if *pause.borrow() {
                    let _ = pause.changed().await;
                    continue;
                }
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
        let mut cut = cut_rx;
        tokio::select! {
            _ = pipe(ar, bw, pause_rx.clone()) => {}
            _ = pipe(br, aw, pause_rx) => {}
            _ = cut.changed() => {}
        }
    });
    s.trust(via, &s.host_pub);
    let c = s.client(via, "client", false);
    let duplex = c.open_duplex().await.unwrap();
    let sink = duplex
        .sink
        .expect("an SSH channel has an owned-buffer sink");
    let (mut r, mut w) = tokio::io::split(duplex.stream);
    if read {
        tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink).await;
        });
    } else {
        // Held, never read.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(r);
        });
    }
    pause_tx.send(true).unwrap();
    let writer = tokio::spawn(async move {
        let chunk = bytes::Bytes::from(vec![7u8; 1 << 20]);
        loop {
            let sent = if owned {
                sink.send(chunk.clone()).await
            } else {
                w.write_all(&chunk).await
            };
            if let Err(e) = sent {
                return e;
            }
        }
    });
    // Long enough to send a whole window and block.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !writer.is_finished(),
        "the writer should be waiting for window"
    );
    cut_tx.send(true).unwrap();
    let e = tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("the blocked writer was never woken after the session died")
        .unwrap();
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::BrokenPipe
        ),
        "{e}"
    );
}

/// A served channel whose consumer stops reading must not stall the session: russh
/// re-opens windows on arrival and waits on a full per-channel queue inside the
/// session task, so without the pump (`ssh::pump`) the other channel below would freeze.
#[tokio::test]
async fn a_stalled_channel_does_not_stall_the_others() {
    let s = Setup::new();
    let held: Arc<std::sync::Mutex<Vec<crate::transport::Duplex>>> = Arc::default();
    let h2 = held.clone();
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let on: OnChannel = Arc::new(move |d: crate::transport::Duplex, _| {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            // The first channel's consumer never reads (a connection paused for
            // backpressure, for ever).
            h2.lock().unwrap().push(d);
        } else {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(d.stream);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let (port, _stop) = start_server(server_opts(&s, 1 << 30, 30), on).await;
    s.trust(port, &s.host_pub);
    let c = s.client(port, "client", false);
    let mut stalled = c.open().await.unwrap();
    // Far more packets than russh's per-channel queue holds (1024): small writes are
    // small packets.
    tokio::spawn(async move {
        let chunk = vec![1u8; 4 << 10];
        for _ in 0..4096 {
            if stalled.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // Keep the channel open.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut other = c.open().await.unwrap();
    let data = pattern(2 << 20, 9);
    let echo = async {
        let (mut r, mut w) = tokio::io::split(&mut other);
        let sent = data.clone();
        let wr = async move { w.write_all(&sent).await.unwrap() };
        let mut back = vec![0u8; data.len()];
        let rd = async { r.read_exact(&mut back).await.unwrap() };
        tokio::join!(wr, rd);
        back
    };
    let back = tokio::time::timeout(Duration::from_secs(20), echo)
        .await
        .expect("the session stalled behind a channel nobody reads");
    assert!(back == data);
}

/// Review finding: connections that never log in held every slot for ever.
#[tokio::test]
async fn connections_that_do_not_log_in_are_closed_after_the_grace_time() {
    let s = Setup::new();
    let (port, _stop) = echo_server(&s, Arc::default()).await;
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // the server's version line
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle pre-login connection was kept open");
    // Logging in still works.
    s.trust(port, &s.host_pub);
    s.client(port, "client", false).open().await.unwrap();
}

/// A file channel to a server that does not serve `gridvfs-file` (an older release: it
/// refuses the subsystem and leaves the channel open) is an error at once, not a
/// channel that never answers (a fetch, or a write-back holding its locks, would wait
/// for ever).
#[tokio::test]
async fn a_file_channel_to_a_server_without_the_subsystem_is_refused() {
    let s = Setup::new();
    let (port, _stop) = echo_server(&s, Arc::default()).await;
    s.trust(port, &s.host_pub);
    let c = s.client(port, "client", false);
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        c.open_file_channel(b"\0\0\0\x08GVFSFCH1"),
    )
    .await
    .expect("an answer within 5 s");
    let Err(e) = r else {
        panic!("the refused subsystem was taken for a channel")
    };
    assert!(e.to_string().contains("gridvfs-file"), "{e}");
    // The session still serves its own subsystem.
    c.open().await.unwrap();
}
