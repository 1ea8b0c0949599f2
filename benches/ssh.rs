//! Cost of the SSH tunnel between proxies (issue 4), measured in one run on loopback.
//! Every chain ends in the same server-role gridvfs in front of NFS-Ganesha and starts at
//! a client gridvfs; only the hop between them differs:
//!
//! - `tcp`: plain TCP to the server proxy's `[listen]` port (the baseline);
//! - `ssh`: gridvfs's russh tunnel to the server proxy's built-in SSH server;
//! - `ssh -L`: OpenSSH's `ssh -N -L` port forward through Debian's sshd to the server
//!   proxy's TCP port (the client proxy dials the forward's local port);
//! - `sshd direct-tcpip`: gridvfs's russh client through the same sshd (`forward_to`).
//!
//! Per chain: sequential WRITE (UNSTABLE + COMMIT) and READ of `GRIDVFS_BENCH_MIB`
//! (default 1024) MiB in 1 MiB calls with 16 in flight, and sequential GETATTR latency.
//! Medians of `GRIDVFS_BENCH_ROUNDS` (default 5) rounds, chains alternating within a
//! round. Targets: ssh ≥ 0.8× tcp throughput and ≥ ssh -L; GETATTR latency ≤ 1.2× tcp.
//! Needs the lab (`scripts/bench.sh ssh`) and openssh-server / openssh-client.
//! `GRIDVFS_BENCH_CHAINS=tcp,ssh` measures only the chains named (for profiling one).

#[path = "common/nfs.rs"]
mod nfs;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/sshd.rs"]
mod sshd;
#[path = "common/util.rs"]
mod util;

use std::process::{Command, Stdio};
use std::time::Instant;

use nfs::{Client, seq_read, seq_write};
use proxy::Proxy;
use sshd::{Proc, free_port, keygen, sshd, wait_port};
use util::{cores, env_addr, env_u64, machine_busy_secs, median};

const IO: u32 = 1 << 20;
const WINDOW: usize = 16;

/// One chain's client proxy, mounted, with the bench directory's handle.
struct Side {
    name: &'static str,
    c: Client,
    dir: Vec<u8>,
    _proxy: Proxy,
}

async fn side(name: &'static str, proxy: Proxy, export: &str, dir: &str) -> Side {
    let m = Client::connect(proxy.addr).await.unwrap();
    let root = m.mnt(export).await;
    let c = Client::connect(proxy.addr).await.unwrap();
    let dir = match c.lookup(&root, dir).await {
        Some(d) => d,
        None => c.mkdir(&root, dir).await,
    };
    Side {
        name,
        c,
        dir,
        _proxy: proxy,
    }
}

#[tokio::main]
async fn main() {
    let nfs_addr = env_addr("GRIDVFS_LAB_NFS");
    let mount_addr = env_addr("GRIDVFS_LAB_MOUNT");
    let export = std::env::var("GRIDVFS_LAB_EXPORT").unwrap_or("/export".into());
    let mib = env_u64("GRIDVFS_BENCH_MIB", 1024);
    let rounds = env_u64("GRIDVFS_BENCH_ROUNDS", 5) as usize;
    let small_n = env_u64("GRIDVFS_BENCH_SMALL_N", 2000) as u32;
    let chains: Option<Vec<String>> = std::env::var("GRIDVFS_BENCH_CHAINS")
        .ok()
        .map(|v| v.split(',').map(|n| n.trim().to_string()).collect());
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let host_pub = keygen(&t.join("host_key"));
    let client_pub = keygen(&t.join("client_key"));
    std::fs::write(t.join("authorized_keys"), &client_pub).unwrap();

    // The server proxy: built-in SSH server and a loopback TCP port, one account.
    let server = Proxy::start_config(&format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n\
         [upstream]\nnfs = \"tcp://{nfs_addr}\"\nmount = \"tcp://{mount_addr}\"\n\
         [server]\nexports = [\"{export}\"]\nstate_dir = \"{}\"\ntcp_account = \"bench\"\n\
         [server.ssh]\nlisten = \"127.0.0.1:0\"\nhost_key = \"{}\"\nauthorized_keys = \"{}\"\n\
         [[server.account]]\nname = \"bench\"\nkeys = [\"*\"]\nuid = 0\ngid = 0\nallow_root = true\n\
         [log]\nlevel = \"warn\"\n",
        t.join("state").display(),
        t.join("host_key").display(),
        t.join("authorized_keys").display(),
    ));
    let ssh_addr = server.ssh.expect("ssh= line in the ready file");
    let (_sshd, sshd_port) = sshd(t, &client_pub);
    let sshd_pub = std::fs::read_to_string(t.join("sshd_host.pub")).unwrap();
    let key2 = |l: &str| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    std::fs::write(
        t.join("known_hosts"),
        format!(
            "[127.0.0.1]:{} {}\n[127.0.0.1]:{sshd_port} {}\n",
            ssh_addr.port(),
            key2(&host_pub),
            key2(&sshd_pub)
        ),
    )
    .unwrap();
    // OpenSSH's own port forward to the server proxy's TCP port.
    let fwd_port = free_port();
    let _ssh_l = Proc(
        Command::new("ssh")
            .args([
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "BatchMode=yes",
            ])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                t.join("known_hosts").display()
            ))
            .arg("-i")
            .arg(t.join("client_key"))
            .arg("-L")
            .arg(format!("127.0.0.1:{fwd_port}:{}", server.addr))
            .args(["-p", &sshd_port.to_string(), "root@127.0.0.1"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(fwd_port, "ssh -L");
    let ssh_section = |extra: &str| {
        format!(
            "[upstream.ssh]\nkey = \"{}\"\nknown_hosts = \"{}\"\n{extra}\n",
            t.join("client_key").display(),
            t.join("known_hosts").display()
        )
    };
    let client = |upstream: String, extra: String| {
        Proxy::start_config(&format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nnfs = \"{upstream}\"\n{extra}\n\
             [log]\nlevel = \"warn\"\n"
        ))
    };
    let dir = format!("bench-ssh-{}", std::process::id());
    let sides = [
        side(
            "tcp",
            client(format!("tcp://{}", server.addr), String::new()),
            &export,
            &dir,
        )
        .await,
        side(
            "ssh",
            client(format!("ssh://bench@{ssh_addr}"), ssh_section("")),
            &export,
            &dir,
        )
        .await,
        side(
            "ssh -L",
            client(format!("tcp://127.0.0.1:{fwd_port}"), String::new()),
            &export,
            &dir,
        )
        .await,
        side(
            "sshd direct-tcpip",
            client(
                format!("ssh://root@127.0.0.1:{sshd_port}"),
                ssh_section(&format!("forward_to = \"{}\"", server.addr)),
            ),
            &export,
            &dir,
        )
        .await,
    ];
    let n = sides.len();
    let (mut w, mut r, mut g) = (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
    // Machine-wide busy CPU seconds per GiB read, and the share of all cores busy then.
    let (mut rc, mut ru) = (vec![vec![]; n], vec![vec![]; n]);
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        for (k, s) in sides.iter().enumerate() {
            if !chains
                .as_ref()
                .is_none_or(|c| c.iter().any(|n| n == s.name))
            {
                continue;
            }
            let fh = s.c.create(&s.dir, &format!("f{k}")).await;
            let len = mib << 20;
            let t0 = Instant::now();
            seq_write(&s.c, &fh, len, IO, WINDOW).await;
            w[k].push(mib as f64 / t0.elapsed().as_secs_f64());
            let (t0, b0) = (Instant::now(), machine_busy_secs());
            assert_eq!(seq_read(&s.c, &fh, len, IO, WINDOW).await, len);
            let (secs, busy) = (t0.elapsed().as_secs_f64(), machine_busy_secs() - b0);
            r[k].push(mib as f64 / secs);
            rc[k].push(busy * 1024.0 / mib as f64);
            ru[k].push(busy / (secs * cores() as f64));
            let t0 = Instant::now();
            for _ in 0..small_n {
                s.c.getattr(&fh).await;
            }
            g[k].push(t0.elapsed().as_secs_f64() * 1e6 / small_n as f64);
            s.c.set_size(&fh, 0).await;
        }
    }
    let med = |v: &Vec<Vec<f64>>| v.iter().map(|x| median(x.clone())).collect::<Vec<_>>();
    let (w, r, g, rc, ru) = (med(&w), med(&r), med(&g), med(&rc), med(&ru));
    println!(
        "\n### SSH tunnel, loopback: {mib} MiB sequential, 1 MiB calls, {WINDOW} in flight; \
         GETATTR x{small_n}; median of {rounds} rounds\n"
    );
    println!(
        "| chain (client proxy → ? → server proxy → Ganesha) | write MiB/s | read MiB/s | GETATTR µs | write vs tcp | read vs tcp | GETATTR vs tcp | read: CPU-s per GiB, cores busy |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for k in (0..n).filter(|&k| !r[k].is_nan()) {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.2}× | {:.2}× | {:.2}× | {:.2}, {:.0}% |",
            sides[k].name,
            w[k],
            r[k],
            g[k],
            w[k] / w[0],
            r[k] / r[0],
            g[k] / g[0],
            rc[k],
            ru[k] * 100.0
        );
    }
    println!(
        "\nTargets: ssh ≥ 0.8× tcp → write {:.2}×, read {:.2}×; ssh ≥ ssh -L → write {:.2}×, read {:.2}×; \
         GETATTR ssh ≤ 1.2× tcp → {:.2}×",
        w[1] / w[0],
        r[1] / r[0],
        w[1] / w[2],
        r[1] / r[2],
        g[1] / g[0]
    );
    let aead = aead_secs_per_gib();
    // russh alone, in this process: its cost per GiB over plain TCP's (3 tries, median).
    let mut alone = Vec::new();
    for _ in 0..3 {
        alone.push(russh_alone(mib).await);
    }
    let per_gib = |x: f64| x * 1024.0 / mib as f64;
    let extra = median(
        alone
            .iter()
            .map(|(s, t)| per_gib(s.1) - per_gib(t.1))
            .collect(),
    );
    let (ssh_mibs, tcp_mibs) = (
        median(alone.iter().map(|(s, _)| mib as f64 / s.0).collect()),
        median(alone.iter().map(|(_, t)| mib as f64 / t.0).collect()),
    );
    println!(
        "\nCipher alone: AES-128-GCM (ring, the AEAD russh uses; negotiated first) seals and opens \
         1 GiB in 32 KiB packets in {aead:.3} CPU-s here. The tcp chain's reads cost {:.2} CPU-s \
         per GiB with {:.0}% of the cores busy; a tunnel whose only extra work were the cipher \
         (sealed by one proxy, opened by the other) would need {:.2} CPU-s per GiB: at most \
         {:.2}× tcp on these saturated cores. The ssh chain used {:.2} CPU-s per GiB ({:.2}×).",
        rc[0],
        ru[0] * 100.0,
        rc[0] + aead,
        rc[0] / (rc[0] + aead),
        rc[1],
        r[1] / r[0]
    );
    println!(
        "\nrussh alone (no gridvfs: a russh server sends {mib} MiB to a russh client on one channel, \
         whole 1 MiB `Bytes` in, russh's own buffers out, AES-128-GCM, 255 KiB packets; in this \
         process, 3 tries): {ssh_mibs:.0} MiB/s, against {tcp_mibs:.0} MiB/s for the same bytes over \
         plain loopback TCP; it costs {extra:.2} CPU-s per GiB more than TCP. A tunnel that added \
         only that to the tcp chain's {:.2} CPU-s per GiB would need {:.2}: at most **{:.2}× tcp** \
         on these saturated cores. The ssh chain used {:.2} ({:.2}×): gridvfs's own share of the \
         tunnel's cost is {:.2} CPU-s per GiB.",
        rc[0],
        rc[0] + extra,
        rc[0] / (rc[0] + extra),
        rc[1],
        r[1] / r[0],
        rc[1] - rc[0] - extra
    );
}

/// CPU seconds to seal and then open 1 GiB with AES-128-GCM in 32 KiB packets (SSH's
/// usual packet size), one thread, with ring — the implementation russh's "ring"
/// feature (ours) uses for aes128-gcm@openssh.com.
fn aead_secs_per_gib() -> f64 {
    use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7; 16]).unwrap());
    let packets = (1usize << 30) / (32 << 10);
    let nonce = |i: usize| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&(i as u64).to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };
    // Each packet is sealed, then opened again in place (which checks its tag).
    let mut buf = vec![0x5a; 32 << 10];
    let t0 = Instant::now();
    for i in 0..packets {
        key.seal_in_place_append_tag(nonce(i), Aad::empty(), &mut buf)
            .unwrap();
        let n = key
            .open_in_place(nonce(i), Aad::empty(), &mut buf)
            .unwrap()
            .len();
        buf.truncate(n);
    }
    t0.elapsed().as_secs_f64()
}

/// russh with nothing of gridvfs around it: `mib` MiB sent by a russh server to a russh
/// client over one channel on loopback TCP, in this process, with the API that copies
/// least (the sender hands russh whole 1 MiB `Bytes`, `data_bytes`; the receiver takes
/// russh's own buffers, `wait`), the cipher and packet size gridvfs negotiates
/// (AES-128-GCM, 255 KiB packets, no compression) and a 32 MiB window. Beside it the same
/// bytes over a plain loopback TCP connection in this process. Returns (seconds, CPU
/// seconds) for russh and for TCP.
async fn russh_alone(mib: u64) -> ((f64, f64), (f64, f64)) {
    use russh::keys::ssh_key::PrivateKey;
    use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
    use russh::server::{Auth, Msg, Session, VerifiedPublicKey};
    use russh::{Channel, ChannelMsg, client, server};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const WIN: u32 = 32 << 20;
    const PACKET: u32 = gridvfs::ssh::MAX_PACKET;
    let chunk = bytes::Bytes::from(vec![0x5au8; 1 << 20]);

    struct Sender {
        chunk: bytes::Bytes,
        mib: u64,
    }
    impl server::Handler for Sender {
        type Error = russh::Error;
        async fn auth_publickey(
            &mut self,
            _: &str,
            _: VerifiedPublicKey<'_>,
        ) -> Result<Auth, Self::Error> {
            Ok(Auth::Accept)
        }
        async fn channel_open_session(
            &mut self,
            channel: Channel<Msg>,
            reply: server::ChannelOpenHandle,
            _: &mut Session,
        ) -> Result<(), Self::Error> {
            reply.accept().await;
            let (chunk, mib) = (self.chunk.clone(), self.mib);
            tokio::spawn(async move {
                for _ in 0..mib {
                    channel.data_bytes(chunk.clone()).await.unwrap();
                }
                channel.eof().await.unwrap();
            });
            Ok(())
        }
    }
    struct Trusting;
    impl client::Handler for Trusting {
        type Error = russh::Error;
        async fn check_server_key(
            &mut self,
            _: &russh::keys::PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }
    let key = |seed: u8| {
        PrivateKey::new(
            KeypairData::Ed25519(Ed25519Keypair::from_seed(&[seed; 32])),
            "bench",
        )
        .unwrap()
    };
    let preferred = russh::Preferred {
        cipher: std::borrow::Cow::Borrowed(&[russh::cipher::AES_128_GCM]),
        compression: std::borrow::Cow::Borrowed(&[russh::compression::NONE]),
        ..Default::default()
    };
    let scfg = Arc::new(server::Config {
        keys: vec![key(1)],
        window_size: WIN,
        maximum_packet_size: PACKET,
        channel_buffer_size: 1024,
        nodelay: true,
        preferred: preferred.clone(),
        ..Default::default()
    });
    let ccfg = Arc::new(client::Config {
        window_size: WIN,
        maximum_packet_size: PACKET,
        channel_buffer_size: 1024,
        nodelay: true,
        preferred,
        ..Default::default()
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let h = Sender { chunk, mib };
        let session = server::run_stream(scfg, s, h).await.unwrap();
        let _ = session.await;
    });
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut h = client::connect_stream(ccfg, s, Trusting).await.unwrap();
    let user_key = Arc::new(key(2));
    assert!(
        h.authenticate_publickey(
            "bench",
            russh::keys::PrivateKeyWithHashAlg::new(user_key, None)
        )
        .await
        .unwrap()
        .success()
    );
    let (t0, c0) = (Instant::now(), util::cpu_secs(std::process::id()));
    let mut ch = h.channel_open_session().await.unwrap();
    let mut got = 0u64;
    while let Some(m) = ch.wait().await {
        match m {
            ChannelMsg::Data { data } => got += data.len() as u64,
            ChannelMsg::Eof => break,
            _ => {}
        }
    }
    let ssh = (
        t0.elapsed().as_secs_f64(),
        util::cpu_secs(std::process::id()) - c0,
    );
    assert_eq!(got, mib << 20, "bytes through the russh channel");
    drop(ch);
    let _ = h.disconnect(russh::Disconnect::ByApplication, "", "").await;
    server.abort();

    // The same bytes over plain TCP.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let sender = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let buf = vec![0x5au8; 1 << 20];
        for _ in 0..mib {
            s.write_all(&buf).await.unwrap();
        }
    });
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (t0, c0) = (Instant::now(), util::cpu_secs(std::process::id()));
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let tcp = (
        t0.elapsed().as_secs_f64(),
        util::cpu_secs(std::process::id()) - c0,
    );
    assert_eq!(got, mib << 20, "bytes through TCP");
    sender.await.unwrap();
    (ssh, tcp)
}
