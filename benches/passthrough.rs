//! Pass-through overhead of gridvfs (no cache) against NFS-Ganesha, measured in one run:
//!
//! - sequential READ and WRITE (UNSTABLE + COMMIT) of `GRIDVFS_BENCH_MIB` (default 1024)
//!   MiB in 1 MiB requests with 16 in flight, direct vs through the proxy;
//! - small-op latency: sequential GETATTR and LOOKUP, direct vs proxy;
//! - the same LAN measurements through two byte-copying relays that parse nothing, as
//!   references for the cost of any user-space hop: one on tokio (gridvfs's I/O model)
//!   and one with two blocking threads per connection;
//! - the same sequential READ/WRITE over the WAN emulator (20 ms each way = 40 ms RTT),
//!   direct (client → WAN → Ganesha) vs proxy (client → proxy → WAN → Ganesha);
//! - the proxy's peak RSS (VmHWM).
//!
//! Every figure is the median of `GRIDVFS_BENCH_ROUNDS` (default 5) rounds, direct and
//! proxy alternating. Needs the lab: `scripts/bench.sh passthrough` sets it up.

#[path = "common/nfs.rs"]
mod nfs;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/util.rs"]
mod util;
#[path = "common/wan.rs"]
mod wan;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nfs::{Client, seq_read, seq_write};
use proxy::Proxy;
use util::{env_addr, env_u64, median};

const IO: u32 = 1 << 20;
const WINDOW: usize = 16;

/// What any user-space hop costs: a TCP relay that copies bytes and parses nothing, run
/// as its own process like the proxy (this bench binary re-executed with `MODE
/// UPSTREAM`). `--plain-relay`: tokio, `copy_bidirectional` per connection (the readiness
/// model gridvfs uses: a message costs an epoll_wait and a wake-up besides its recv and
/// send); `--thread-relay`: two blocking threads per connection (recv and send only).
struct PlainRelay {
    child: Child,
    addr: SocketAddr,
}

impl PlainRelay {
    fn start(mode: &str, upstream: SocketAddr) -> PlainRelay {
        use std::io::BufRead;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg(mode)
            .arg(upstream.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        PlainRelay {
            child,
            addr: line.trim().parse().expect("relay address"),
        }
    }
}

impl Drop for PlainRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn plain_relay_main(upstream: SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", l.local_addr().unwrap());
    while let Ok((mut c, _)) = l.accept().await {
        tokio::spawn(async move {
            let Ok(mut u) = tokio::net::TcpStream::connect(upstream).await else {
                return;
            };
            let _ = c.set_nodelay(true);
            let _ = u.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
        });
    }
}

fn thread_relay_main(upstream: SocketAddr) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    println!("{}", l.local_addr().unwrap());
    for c in l.incoming() {
        let Ok(c) = c else { continue };
        let Ok(u) = std::net::TcpStream::connect(upstream) else {
            continue;
        };
        let _ = c.set_nodelay(true);
        let _ = u.set_nodelay(true);
        let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
            std::thread::spawn(move || {
                let mut b = vec![0u8; 1 << 20];
                while let Ok(n @ 1..) = from.read(&mut b) {
                    if to.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(std::net::Shutdown::Write);
            });
        };
        pipe(c.try_clone().unwrap(), u.try_clone().unwrap());
        pipe(u, c);
    }
}

/// One mounted endpoint with the bench directory's handle.
struct Side {
    c: Client,
    dir: Vec<u8>,
}

async fn side(nfs: SocketAddr, mount: SocketAddr, export: &str, name: &str) -> Side {
    let m = Client::connect(mount).await.unwrap();
    let root = m.mnt(export).await;
    let c = Client::connect(nfs).await.unwrap();
    let dir = c.mkdir(&root, name).await;
    Side { c, dir }
}

/// MiB/s of a sequential write then read of `mib` MiB of file `name`.
async fn rw(s: &Side, name: &str, mib: u64) -> (f64, f64) {
    let fh = s.c.create(&s.dir, name).await;
    let len = mib << 20;
    let t = Instant::now();
    seq_write(&s.c, &fh, len, IO, WINDOW).await;
    let w = mib as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    assert_eq!(seq_read(&s.c, &fh, len, IO, WINDOW).await, len);
    let r = mib as f64 / t.elapsed().as_secs_f64();
    (w, r)
}

/// Mean microseconds per sequential GETATTR and per LOOKUP.
async fn small_ops(s: &Side, n: u32) -> (f64, f64) {
    let fh = s.c.create(&s.dir, "small").await;
    let t = Instant::now();
    for _ in 0..n {
        s.c.getattr(&fh).await;
    }
    let g = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        s.c.lookup(&s.dir, "small").await.unwrap();
    }
    let l = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    (g, l)
}

/// Samples of one measurement by side: direct, through the tokio relay (LAN only),
/// through gridvfs, through the thread relay (LAN only).
#[derive(Default)]
struct Series([Vec<f64>; 4]);

impl Series {
    fn push(&mut self, side: usize, v: f64) {
        self.0[side].push(v);
    }

    fn row(&self, what: &str, unit: &str, target: &str) -> String {
        let d = median(self.0[0].clone());
        let p = median(self.0[2].clone());
        let relay = |k: usize| {
            if self.0[k].is_empty() {
                ("–".to_string(), "–".to_string())
            } else {
                let r = median(self.0[k].clone());
                (format!("{r:.1} {unit}"), format!("{:.3}×", r / d))
            }
        };
        let (tokio, thread) = (relay(1), relay(3));
        format!(
            "| {what} | {d:.1} {unit} | {} | {} | {p:.1} {unit} | **{:.3}×** | {} | {} | {target} |",
            tokio.0,
            thread.0,
            p / d,
            tokio.1,
            thread.1
        )
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--plain-relay") => return plain_relay_main(args[2].parse().unwrap()).await,
        Some("--thread-relay") => return thread_relay_main(args[2].parse().unwrap()),
        _ => {}
    }
    let nfs_addr = env_addr("GRIDVFS_LAB_NFS");
    let mount_addr = env_addr("GRIDVFS_LAB_MOUNT");
    let export = std::env::var("GRIDVFS_LAB_EXPORT").unwrap_or("/export".into());
    let mib = env_u64("GRIDVFS_BENCH_MIB", 1024);
    let wan_mib = env_u64("GRIDVFS_BENCH_WAN_MIB", 256);
    let rounds = env_u64("GRIDVFS_BENCH_ROUNDS", 5) as usize;
    let small_n = env_u64("GRIDVFS_BENCH_SMALL_N", 2000) as u32;
    let name = format!("bench-passthrough-{}", std::process::id());

    // LAN: direct, tokio relay, proxy, thread relay.
    let proxy = Proxy::start(nfs_addr, mount_addr, "");
    let relay = |mode| {
        (
            PlainRelay::start(mode, nfs_addr),
            PlainRelay::start(mode, mount_addr),
        )
    };
    let ((rn, rm), (tn, tm)) = (relay("--plain-relay"), relay("--thread-relay"));
    let sides = [
        side(nfs_addr, mount_addr, &export, &name).await,
        side(rn.addr, rm.addr, &export, &name).await,
        side(proxy.addr, proxy.addr, &export, &name).await,
        side(tn.addr, tm.addr, &export, &name).await,
    ];
    let (mut w, mut r, mut g, mut l) = <(Series, Series, Series, Series)>::default();
    for i in 0..rounds {
        eprintln!("LAN round {}/{rounds}", i + 1);
        for (k, s) in sides.iter().enumerate() {
            if mib > 0 {
                let (wr, rd) = rw(s, &format!("lan{k}.bin"), mib).await;
                w.push(k, wr);
                r.push(k, rd);
            }
            let (ga, lo) = small_ops(s, small_n).await;
            g.push(k, ga);
            l.push(k, lo);
        }
    }
    let rss_lan = proxy.rss_peak_kib();

    // WAN: 20 ms each way in front of Ganesha.
    let cfg = wan::WanConfig {
        one_way_delay: Duration::from_millis(20),
        rate_bits_per_sec: None,
    };
    let (wan_nfs, wan_mount) = wan::start_pair(nfs_addr, mount_addr, cfg).await.unwrap();
    let wproxy = Proxy::start(wan_nfs.local_addr(), wan_mount.local_addr(), "");
    let wdirect = side(wan_nfs.local_addr(), wan_mount.local_addr(), &export, &name).await;
    let wvia = side(wproxy.addr, wproxy.addr, &export, &name).await;
    let (mut ww, mut wr_) = <(Series, Series)>::default();
    for i in 0..if wan_mib > 0 { rounds } else { 0 } {
        eprintln!("WAN round {}/{rounds}", i + 1);
        // Alternate which side goes first: the link's state after the other side's
        // transfer (and Ganesha's) must not favour one of them.
        let mut order = [(0, &wdirect), (2, &wvia)];
        if i % 2 == 1 {
            order.reverse();
        }
        for (k, s) in order {
            let (a, b) = rw(s, &format!("wan{k}.bin"), wan_mib).await;
            eprintln!(
                "  {}: write {a:.1} MiB/s, read {b:.1} MiB/s",
                ["direct", "", "gridvfs"][k]
            );
            ww.push(k, a);
            wr_.push(k, b);
        }
    }
    let rss = rss_lan.max(proxy.rss_peak_kib()).max(wproxy.rss_peak_kib());

    let out = [
        format!("Medians of {rounds} rounds (LAN and WAN), 1 MiB requests, {WINDOW} in flight, one TCP connection per client."),
        String::new(),
        "| measurement | direct to Ganesha | tokio relay | thread relay | through gridvfs | gridvfs / direct | tokio relay / direct | thread relay / direct | target |".into(),
        "|---|---|---|---|---|---|---|---|---|".into(),
        w.row(&format!("sequential WRITE {mib} MiB (UNSTABLE+COMMIT)"), "MiB/s", "≥ 0.9×"),
        r.row(&format!("sequential READ {mib} MiB"), "MiB/s", "≥ 0.9×"),
        g.row("GETATTR latency (one at a time)", "µs", "≤ 1.2×"),
        l.row("LOOKUP latency (one at a time)", "µs", "≤ 1.2×"),
        ww.row(&format!("WAN 40 ms RTT: sequential WRITE {wan_mib} MiB"), "MiB/s", "≥ 0.95×"),
        wr_.row(&format!("WAN 40 ms RTT: sequential READ {wan_mib} MiB"), "MiB/s", "≥ 0.95×"),
        format!("| proxy peak RSS (VmHWM) | | | | {:.1} MiB | | | | < 64 MiB |", rss as f64 / 1024.0),
    ]
    .join("\n");
    println!("{out}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("passthrough.md"), format!("{out}\n")).unwrap();
    if let Ok(d) = std::env::var("GRIDVFS_LAB_EXPORT_DIR") {
        let _ = std::fs::remove_dir_all(std::path::Path::new(&d).join(&name));
    }
}
