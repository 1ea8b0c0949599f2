//! Self-check of the WAN emulator (`benches/common/wan.rs`) on loopback, no lab needed:
//!
//! - RTT of a 4-byte ping-pong through the relay at 20 ms one-way (expect ~40 ms);
//! - throughput of 64 MiB at 100 Mbit/s with 20 ms one-way (expect ~100 Mbit/s: the
//!   bandwidth-delay product is in flight, the pipe is full);
//! - throughput of 64 MiB with 20 ms and no cap (must be far above the 26 Mbit/s that a
//!   relay sleeping 20 ms per 64 KiB chunk would give: proves the delay is pipelined).
//!
//! `cargo bench --bench wan_relay`; exits non-zero if a figure is out of range.

#[path = "common/wan.rs"]
mod wan;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use wan::{WanConfig, WanRelay};

const DELAY: Duration = Duration::from_millis(20);
const PAYLOAD: usize = 64 << 20;

/// Echo server: returns every byte it gets.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sink: reads one connection to EOF, reports (bytes, time of the last byte), then
/// answers with one byte so the client knows it is done.
async fn sink_server() -> (SocketAddr, oneshot::Receiver<(usize, Instant)>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let (mut total, mut last) = (0usize, Instant::now());
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n;
            last = Instant::now();
        }
        let _ = tx.send((total, last));
        let _ = s.write_all(b"k").await;
    });
    (addr, rx)
}

/// Median, min and max of ping-pong RTTs in ms.
async fn rtt(target: SocketAddr, rounds: usize) -> (f64, f64, f64) {
    let mut s = TcpStream::connect(target).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut b = [0u8; 4];
    let mut v = Vec::with_capacity(rounds);
    for i in 0..rounds + 1 {
        let t = Instant::now();
        s.write_all(b"ping").await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        if i > 0 {
            // round 0 may include the relay's connect to the upstream
            v.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Sends PAYLOAD bytes through `relay_to(sink)`; returns (Mbit/s from first write to the
/// sink's last byte, seconds).
async fn throughput(cfg: WanConfig) -> (f64, f64) {
    let (sink, done) = sink_server().await;
    let relay = WanRelay::start("127.0.0.1:0".parse().unwrap(), sink, cfg)
        .await
        .unwrap();
    let mut s = TcpStream::connect(relay.local_addr()).await.unwrap();
    s.set_nodelay(true).unwrap();
    let chunk = vec![0x5a_u8; 1 << 20];
    let t0 = Instant::now();
    for _ in 0..PAYLOAD / chunk.len() {
        s.write_all(&chunk).await.unwrap();
    }
    s.shutdown().await.unwrap(); // FIN must come through the relay
    let (total, last) = done.await.unwrap();
    let mut k = [0u8; 1];
    s.read_exact(&mut k).await.unwrap();
    relay.shutdown().await;
    assert_eq!(total, PAYLOAD, "bytes lost in the relay");
    let secs = (last - t0).as_secs_f64();
    (total as f64 * 8.0 / secs / 1e6, secs)
}

fn check(ok: &mut bool, what: &str, value: f64, lo: f64, hi: f64) {
    let pass = (lo..=hi).contains(&value);
    *ok &= pass;
    println!(
        "  {:<4} {what}: {value:.1} (expected {lo}..{hi})",
        if pass { "ok" } else { "FAIL" }
    );
}

async fn run() -> bool {
    let mut ok = true;
    println!("WAN relay self-check (loopback, one-way delay {DELAY:?})");

    let echo = echo_server().await;
    let (base, _, _) = rtt(echo, 20).await;
    println!("  direct RTT, 4-byte ping-pong: median {base:.3} ms");
    let relay = WanRelay::start(
        "127.0.0.1:0".parse().unwrap(),
        echo,
        WanConfig {
            one_way_delay: DELAY,
            rate_bits_per_sec: None,
        },
    )
    .await
    .unwrap();
    let (med, min, max) = rtt(relay.local_addr(), 20).await;
    println!(
        "  RTT through relay, 4-byte ping-pong x20: median {med:.2} ms (min {min:.2}, max {max:.2})"
    );
    check(&mut ok, "RTT median, ms", med, 40.0, 46.0);

    // shutdown() closes the listener and the connections it relays.
    let addr = relay.local_addr();
    let mut open = TcpStream::connect(addr).await.unwrap();
    open.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    open.read_exact(&mut b).await.unwrap();
    relay.shutdown().await;
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(2), open.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    );
    let refused = TcpStream::connect(addr).await.is_err();
    println!(
        "  {:<4} after shutdown(): relayed connection closed: {closed}, new connections refused: {refused}",
        if closed && refused { "ok" } else { "FAIL" }
    );
    ok &= closed && refused;

    let (mbit, secs) = throughput(WanConfig {
        one_way_delay: DELAY,
        rate_bits_per_sec: Some(100_000_000),
    })
    .await;
    println!("  64 MiB at 100 Mbit/s, 20 ms one-way: {secs:.2} s = {mbit:.1} Mbit/s");
    check(&mut ok, "capped throughput, Mbit/s", mbit, 95.0, 100.5);

    let (mbit, secs) = throughput(WanConfig {
        one_way_delay: DELAY,
        rate_bits_per_sec: None,
    })
    .await;
    println!("  64 MiB uncapped, 20 ms one-way: {secs:.2} s = {mbit:.0} Mbit/s");
    check(
        &mut ok,
        "uncapped throughput, Mbit/s (serial per-chunk sleep would give 26)",
        mbit,
        500.0,
        f64::INFINITY,
    );

    println!("WAN relay self-check: {}", if ok { "OK" } else { "FAILED" });
    ok
}

fn main() {
    // `cargo bench` passes --bench (and maybe a filter); there is nothing to select.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if !rt.block_on(run()) {
        std::process::exit(1);
    }
}
