//! The SSH tunnel between proxies, against the real parts: the lab's Ganesha behind a
//! server-role gridvfs (its built-in russh server, or Debian's OpenSSH sshd forwarding
//! to it), a client gridvfs dialling `ssh://`, and libnfs's nfs-cp / nfs-cat on top.
//! Keys are made with `gridvfs keygen`; host keys are checked against known_hosts.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ssh::*;
use common::{Endpoints, Gridvfs, Lab, nfs_url, random_file, sha256_file};

/// Up and down through `ep`: the file lands byte-equal on Ganesha's disk, owned by the
/// mapped account, and reads back byte-equal.
fn round_trip(ep: Endpoints, lab: &Lab, test: &str, mib: usize) {
    round_trip_as(ep, lab, test, mib, (UID, GID));
}

/// `round_trip`, the file owned on Ganesha's disk by `owner` (uid, gid).
fn round_trip_as(ep: Endpoints, lab: &Lab, test: &str, mib: usize, owner: (u32, u32)) {
    let (dir, name) = open_scratch(lab, test);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.bin");
    random_file(&src, mib << 20, 11);
    let want = sha256_file(&src);
    nfs_cp(
        src.to_str().unwrap(),
        &nfs_url(ep, &lab.export, &format!("{name}/in.bin")),
    )
    .unwrap();
    let on_disk = dir.join("in.bin");
    assert_eq!(sha256_file(&on_disk), want, "upload differs on the server");
    let md = std::fs::metadata(&on_disk).unwrap();
    assert_eq!((md.uid(), md.gid()), owner, "owner on Ganesha's disk");
    let back = tmp.path().join("back.bin");
    nfs_cp(
        &nfs_url(ep, &lab.export, &format!("{name}/in.bin")),
        back.to_str().unwrap(),
    )
    .unwrap();
    assert_eq!(sha256_file(&back), want, "download differs");
}

#[test]
fn libnfs_through_the_builtin_ssh_server_byte_equal_and_mapped() {
    let lab = Lab::get();
    let keys = Keys::new();
    let state = tempfile::tempdir().unwrap();
    let server = server_proxy(&lab, &keys, state.path());
    keys.trust(ssh_addr(&server), &keys.host_pub);
    let client = client_proxy(&keys, ssh_addr(&server), "client_key", "");
    round_trip(client.endpoints(), &lab, "ssh-builtin", 48);
    assert!(client.log_text().contains("ssh"), "{}", client.log_text());
}

/// Accounts are chosen by key: two authorized keys listed by two accounts each land their
/// files on Ganesha's disk as their own account (nfs-cp runs as root here, so root is
/// mapped too), and a third authorized key that no account lists gets no channel.
#[test]
fn each_key_runs_as_the_account_that_lists_it() {
    let lab = Lab::get();
    let keys = Keys::new();
    let (first_pub, first_fp) = keygen_fp(&keys.path("first_key"));
    let (second_pub, second_fp) = keygen_fp(&keys.path("second_key"));
    let (unlisted_pub, _) = keygen_fp(&keys.path("unlisted_key"));
    std::fs::write(
        keys.path("authorized_keys"),
        format!("{first_pub}\n{second_pub}\n{unlisted_pub}\n"),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = server_proxy_accounts(
        &lab,
        &keys,
        state.path(),
        &format!(
            "[[server.account]]\nname = \"alice\"\nkeys = [\"{first_fp}\"]\nuid = 3201\ngid = 3202\n\
             [[server.account]]\nname = \"bob\"\nkeys = [\"{second_fp}\"]\nuid = 3301\ngid = 3302\n"
        ),
    );
    keys.trust(ssh_addr(&server), &keys.host_pub);
    let alice = client_proxy(&keys, ssh_addr(&server), "first_key", "");
    let bob = client_proxy(&keys, ssh_addr(&server), "second_key", "");
    round_trip_as(alice.endpoints(), &lab, "ssh-key-alice", 1, (3201, 3202));
    round_trip_as(bob.endpoints(), &lab, "ssh-key-bob", 1, (3301, 3302));
    server.wait_log("account=alice", 1);
    server.wait_log("account=bob", 1);

    let unlisted = client_proxy(&keys, ssh_addr(&server), "unlisted_key", "");
    let mut child = nfs_ls(&unlisted, &lab);
    server.wait_log("no [[server.account]] lists it", 1);
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
    }
    match child.try_wait().unwrap() {
        Some(st) => assert!(!st.success(), "nfs-ls succeeded with an unlisted key"),
        None => {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `nfs-ls` of the export's root through `client`, running (output dropped).
fn nfs_ls(client: &Gridvfs, lab: &Lab) -> std::process::Child {
    Command::new("nfs-ls")
        .arg(nfs_url(client.endpoints(), &lab.export, ""))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The call must fail; the client proxy says why (it keeps retrying in the background).
fn expect_refused(client: &Gridvfs, lab: &Lab, needle: &str) {
    let t0 = Instant::now();
    let mut child = nfs_ls(client, lab);
    let log = client.wait_log(needle, 1);
    // No data may come back while the tunnel is refused.
    std::thread::sleep(Duration::from_millis(300));
    match child.try_wait().unwrap() {
        Some(st) => assert!(!st.success(), "nfs-ls succeeded through a refused tunnel"),
        None => {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(30), "{log}");
}

#[test]
fn a_client_key_not_in_authorized_keys_is_refused() {
    let lab = Lab::get();
    let keys = Keys::new();
    let state = tempfile::tempdir().unwrap();
    let server = server_proxy(&lab, &keys, state.path());
    keys.trust(ssh_addr(&server), &keys.host_pub);
    let client = client_proxy(&keys, ssh_addr(&server), "stranger_key", "");
    expect_refused(&client, &lab, "authentication");
}

#[test]
fn an_unknown_host_key_is_refused_unless_accept_new() {
    let lab = Lab::get();
    let keys = Keys::new();
    let state = tempfile::tempdir().unwrap();
    let server = server_proxy(&lab, &keys, state.path());
    // known_hosts is empty: strict refuses.
    let client = client_proxy(&keys, ssh_addr(&server), "client_key", "");
    expect_refused(&client, &lab, "unknown host key for");
    drop(client);
    // A wrong key on file for this host is refused even with accept-new.
    let other = keygen(&keys.path("other_host_key"));
    keys.trust(ssh_addr(&server), &other);
    let client = client_proxy(
        &keys,
        ssh_addr(&server),
        "client_key",
        "host_key_policy = \"accept-new\"",
    );
    expect_refused(&client, &lab, "CHANGED");
    assert!(
        !client.log_text().contains("new host key learnt"),
        "a changed host key was learnt"
    );
    drop(client);
    // accept-new learns an unknown key and works.
    std::fs::write(keys.path("known_hosts"), "").unwrap();
    let client = client_proxy(
        &keys,
        ssh_addr(&server),
        "client_key",
        "host_key_policy = \"accept-new\"",
    );
    round_trip(client.endpoints(), &lab, "ssh-accept-new", 1);
    let kh = std::fs::read_to_string(keys.path("known_hosts")).unwrap();
    let host_key = keys.host_pub.split_whitespace().nth(1).unwrap();
    assert!(
        kh.contains(host_key),
        "learnt key missing from known_hosts:\n{kh}"
    );
}

/// A TCP relay whose connections can be cut at will (the tunnel's path).
struct CutRelay {
    addr: SocketAddr,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    cuts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl CutRelay {
    fn start(to: SocketAddr) -> CutRelay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (streams.clone(), stop.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(c) = c else { continue };
                let Ok(u) = TcpStream::connect(to) else {
                    continue;
                };
                s2.lock()
                    .unwrap()
                    .extend([c.try_clone().unwrap(), u.try_clone().unwrap()]);
                for (mut a, mut b) in [(c.try_clone().unwrap(), u.try_clone().unwrap()), (u, c)] {
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            match a.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if b.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = b.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        CutRelay {
            addr,
            streams,
            cuts: Arc::default(),
            stop,
        }
    }

    /// Severs every connection now passing through (both directions, at once).
    fn cut(&self) {
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.cuts.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for CutRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        self.cut();
    }
}

#[test]
fn the_tunnel_cut_mid_transfer_completes_correctly_after_reconnect() {
    let lab = Lab::get();
    let keys = Keys::new();
    let state = tempfile::tempdir().unwrap();
    let server = server_proxy(&lab, &keys, state.path());
    let relay = CutRelay::start(ssh_addr(&server));
    keys.trust(relay.addr, &keys.host_pub);
    let client = client_proxy(&keys, relay.addr, "client_key", "");
    let (dir, name) = open_scratch(&lab, "ssh-cut");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.bin");
    random_file(&src, 64 << 20, 5);
    let want = sha256_file(&src);
    let url = nfs_url(client.endpoints(), &lab.export, &format!("{name}/in.bin"));
    // Cut the tunnel when the transfer is well under way (bytes seen on the far side),
    // twice during the upload and once during the download.
    let cut_at = |path: &Path, at: u64, done: &std::thread::JoinHandle<Result<(), String>>| {
        let t0 = Instant::now();
        while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) < at {
            assert!(
                !done.is_finished(),
                "transfer ended before {at} bytes: too fast to cut"
            );
            assert!(t0.elapsed() < Duration::from_secs(60), "transfer stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
        relay.cut();
    };
    let up = {
        let (s, u) = (src.to_str().unwrap().to_string(), url.clone());
        std::thread::spawn(move || nfs_cp(&s, &u))
    };
    cut_at(&dir.join("in.bin"), 16 << 20, &up);
    cut_at(&dir.join("in.bin"), 40 << 20, &up);
    up.join().unwrap().expect("upload through a cut tunnel");
    assert_eq!(
        sha256_file(&dir.join("in.bin")),
        want,
        "upload differs on the server"
    );
    let back = tmp.path().join("back.bin");
    let down = {
        let (b, u) = (back.to_str().unwrap().to_string(), url.clone());
        std::thread::spawn(move || nfs_cp(&u, &b))
    };
    cut_at(&back, 16 << 20, &down);
    down.join().unwrap().expect("download through a cut tunnel");
    assert_eq!(sha256_file(&back), want, "download differs");
    assert_eq!(relay.cuts.load(Ordering::Relaxed), 3);
    let log = client.log_text();
    assert!(
        client.log_count("connection to the next hop lost") >= 3
            && client.log_count("ssh session established") >= 4,
        "every cut must be seen and the session re-made:\n{log}"
    );
}

/// Debian's OpenSSH sshd on a loopback port, killed (by PID) on drop.
struct Sshd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sshd {
    /// Panics when sshd is missing: the interop is part of the suite, and
    /// `scripts/install-deps.sh` installs openssh-server.
    fn start(authorized: &str) -> Sshd {
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "/usr/sbin/sshd is missing: run scripts/install-deps.sh (apt: openssh-server)"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Two host keys, as a stock sshd has: ed25519 (russh's first choice) and ECDSA.
        for (kind, file) in [("ed25519", "hostkey"), ("ecdsa", "hostkey_ecdsa")] {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", kind, "-N", "", "-f"])
                .arg(d.join(file))
                .status()
                .unwrap();
            assert!(st.success());
        }
        std::fs::write(d.join("authorized_keys"), format!("{authorized}\n")).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nAllowTcpForwarding yes\n\
                 PidFile {}\n",
                d.join("hostkey").display(),
                d.join("hostkey_ecdsa").display(),
                d.join("authorized_keys").display(),
                d.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(10), "sshd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd {
            child,
            port,
            _dir: dir,
        }
    }

    /// The ECDSA host key's public line.
    fn host_pub_ecdsa(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("hostkey_ecdsa.pub")).unwrap()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        common::signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}

#[test]
fn through_openssh_sshd_with_direct_tcpip() {
    let lab = Lab::get();
    let keys = Keys::new();
    let client_pub = std::fs::read_to_string(keys.path("client_key.pub")).unwrap();
    let sshd = Sshd::start(client_pub.trim());
    // The server proxy listens on loopback only; sshd authenticates and forwards to it.
    let state = tempfile::tempdir().unwrap();
    let server = Gridvfs::start_config(&format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n\
         [upstream]\nnfs = \"tcp://{}\"\nmount = \"tcp://{}\"\n\
         [server]\nexports = [\"{}\"]\nstate_dir = \"{}\"\ntcp_account = \"grid\"\n\
         [[server.account]]\nname = \"grid\"\nuid = {UID}\ngid = {GID}\n",
        lab.nfs,
        lab.mount,
        lab.export,
        state.path().display(),
    ));
    let sshd_addr: SocketAddr = ([127, 0, 0, 1], sshd.port).into();
    // Only the ECDSA key on file (as in a known_hosts written by an older OpenSSH): the
    // client must ask for it first, not negotiate ed25519 and refuse that as changed.
    keys.trust(sshd_addr, &sshd.host_pub_ecdsa());
    let client = Gridvfs::start_config(&format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n\
         [upstream]\nnfs = \"ssh://root@{sshd_addr}\"\nbackoff_max = \"500ms\"\n\
         [upstream.ssh]\nkey = \"{}\"\nknown_hosts = \"{}\"\nforward_to = \"{}\"\n",
        keys.path("client_key").display(),
        keys.path("known_hosts").display(),
        server.addr,
    ));
    // The tunnel comes up (bounded: a refused host key would make the copy below wait
    // for ever).
    let mut ls = nfs_ls(&client, &lab);
    let t0 = Instant::now();
    let done = loop {
        if let Some(st) = ls.try_wait().unwrap() {
            break st.success();
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = ls.kill();
            let _ = ls.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(done, "no tunnel through sshd:\n{}", client.log_text());
    round_trip(client.endpoints(), &lab, "ssh-openssh", 32);
}

/// The paper's deployment, three proxies deep: the kernel client in qemu → a client
/// proxy (write-back cache) → a LAN proxy (second-level cache, TCP) → over SSH → the
/// server proxy (identity mapping, confinement) → Ganesha. Handles pass unchanged at
/// every level; writes land byte-equal as the mapped owner after the flush at the end;
/// a second reader through the same LAN proxy is served from its cache.
#[test]
fn kernel_client_through_a_three_level_cascade() {
    let lab = Lab::get();
    let keys = Keys::new();
    let state = tempfile::tempdir().unwrap();
    let server = server_proxy(&lab, &keys, state.path());
    keys.trust(ssh_addr(&server), &keys.host_pub);
    let lan_cache = tempfile::tempdir().unwrap();
    let mut lan = Gridvfs::start_config(&format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n\
         [upstream]\nnfs = \"ssh://grid@{}\"\nbackoff_max = \"500ms\"\n\
         [upstream.ssh]\nkey = \"{}\"\nknown_hosts = \"{}\"\n\
         [cache]\ndir = \"{}\"\nsize = \"128MiB\"\nwrite_policy = \"write-through\"\n",
        ssh_addr(&server),
        keys.path("client_key").display(),
        keys.path("known_hosts").display(),
        lan_cache.path().display(),
    ));
    let client_cache = tempfile::tempdir().unwrap();
    let client = Gridvfs::start_config(&format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n\
         [upstream]\nnfs = \"tcp://{}\"\nbackoff_max = \"500ms\"\n\
         [cache]\ndir = \"{}\"\nsize = \"128MiB\"\nwrite_policy = \"write-back\"\n",
        lan.addr,
        client_cache.path().display(),
    ));
    let (dir, name) = open_scratch(&lab, "ssh-cascade");
    std::fs::write(
        dir.join("scenario.sh"),
        format!(
            r#"set -e
D=/mnt/{name}
mkdir $D/vm
dd if=/dev/urandom of=$D/vm/disk.img bs=64k count=64 2>/dev/null
sha256sum $D/vm/disk.img | cut -d' ' -f1 > $D/vm/disk.sum
echo appended >> $D/vm/disk.img
sha256sum $D/vm/disk.img | cut -d' ' -f1 > $D/vm/disk.sum2
ls -l $D/vm > $D/vm/listing
"#
        ),
    )
    .unwrap();
    let out = common::boot_vm(&[
        ("PORT", client.addr.port().to_string()),
        ("EXPORT", lab.export.clone()),
        ("MB", "8".into()),
        ("SCRIPT", format!("{name}/scenario.sh")),
    ]);
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kernel client run failed:\n{console}\n{}\nclient log:\n{}\nlan log:\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        client.log_text(),
        lan.log_text(),
        server.log_text()
    );
    assert!(console.contains("CHECKSUM OK"), "{console}");
    // Write-back at the client proxy: make it write everything down the chain.
    common::signal(client.pid(), "USR1");
    client.wait_log("write-back done", 1);
    let img = dir.join("vm/disk.img");
    let want = std::fs::read_to_string(dir.join("vm/disk.sum2")).unwrap();
    let t0 = Instant::now();
    while sha256_file(&img) != want.trim() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "disk.img on Ganesha's disk differs after the flush\n{}",
            client.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let md = std::fs::metadata(&img).unwrap();
    assert_eq!((md.uid(), md.gid()), (UID, GID), "owner on Ganesha's disk");
    assert_eq!(md.len(), (64 << 16) + "appended\n".len() as u64);
    // A second compute node behind the same LAN proxy reads the image from its cache.
    let second = Gridvfs::start_config(&format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nnfs = \"tcp://{}\"\n",
        lan.addr
    ));
    let got = common::nfs_cat(
        second.endpoints(),
        &lab.export,
        &format!("{name}/vm/disk.img"),
    );
    assert_eq!(sha256_bytes(&got), want.trim());
    lan.stop();
    assert!(
        common::logged(&lan.log_text(), "cache_hits=") > 0,
        "the LAN cache served nothing:\n{}",
        lan.log_text()
    );
}

fn sha256_bytes(b: &[u8]) -> String {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), b).unwrap();
    sha256_file(f.path())
}
