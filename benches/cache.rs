//! The read cache over a WAN (issue 3's "warm re-read" target), measured in one run:
//!
//! - **local disk**: reading the file straight from the export directory on this machine
//!   (page cache warm, like the cache's bank files after the first pass);
//! - **direct over WAN**: a pipelined NFS client to Ganesha through the WAN emulator;
//! - **gridvfs cold**: through a caching proxy whose next hop is the WAN, first pass;
//! - **gridvfs warm**: the same proxy, second pass (every READ a cache hit).
//!
//! 1 MiB READs, 16 in flight. WAN: 20 ms each way (40 ms RTT), 100 Mbit/s by default.
//! Knobs: GRIDVFS_BENCH_CACHE_MIB (256), GRIDVFS_BENCH_ROUNDS (3 warm rounds),
//! GRIDVFS_BENCH_WAN_MBIT (100), GRIDVFS_BENCH_DROP_CACHES=1 (root: read local file and
//! cache banks from the disk, not the page cache). Needs the lab: `scripts/bench.sh cache`.

#[path = "common/nfs.rs"]
mod nfs;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/util.rs"]
mod util;
#[path = "common/wan.rs"]
mod wan;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use nfs::{Client, seq_read};
use proxy::Proxy;
use util::{env_addr, env_u64, median};

const IO: u32 = 1 << 20;
const WINDOW: usize = 16;

/// Seconds to read the whole file through `nfs`/`mount`.
async fn nfs_read(
    nfs: SocketAddr,
    mount: SocketAddr,
    export: &str,
    path: &[&str],
    len: u64,
) -> f64 {
    let m = Client::connect(mount).await.unwrap();
    let mut fh = m.mnt(export).await;
    let c = Client::connect(nfs).await.unwrap();
    for p in path {
        fh = c.lookup(&fh, p).await.expect("lookup");
    }
    let t = Instant::now();
    assert_eq!(seq_read(&c, &fh, len, IO, WINDOW).await, len);
    t.elapsed().as_secs_f64()
}

fn local_read(p: &std::path::Path) -> f64 {
    use std::io::Read;
    let t = Instant::now();
    let mut f = std::fs::File::open(p).unwrap();
    let mut buf = vec![0u8; IO as usize];
    while f.read(&mut buf).unwrap() > 0 {}
    t.elapsed().as_secs_f64()
}

/// With GRIDVFS_BENCH_DROP_CACHES=1 (root): empty the page cache before a timed pass, so
/// both the local read and the cache's bank files come from the disk.
fn maybe_drop_caches() {
    if std::env::var("GRIDVFS_BENCH_DROP_CACHES").as_deref() == Ok("1") {
        let _ = Command::new("sync").status();
        std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches (needs root)");
    }
}

#[tokio::main]
async fn main() {
    let nfs_addr = env_addr("GRIDVFS_LAB_NFS");
    let mount_addr = env_addr("GRIDVFS_LAB_MOUNT");
    let export = std::env::var("GRIDVFS_LAB_EXPORT").unwrap_or("/export".into());
    let export_dir = std::path::PathBuf::from(
        std::env::var("GRIDVFS_LAB_EXPORT_DIR").expect("GRIDVFS_LAB_EXPORT_DIR"),
    );
    let mib = env_u64("GRIDVFS_BENCH_CACHE_MIB", 256);
    let rounds = env_u64("GRIDVFS_BENCH_ROUNDS", 3) as usize;
    let mbit = env_u64("GRIDVFS_BENCH_WAN_MBIT", 100);
    let len = mib << 20;

    let name = format!("bench-cache-{}", std::process::id());
    let dir = export_dir.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("image.bin");
    {
        // Incompressible, deterministic content.
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..len / 8 {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            f.write_all(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes())
                .unwrap();
        }
    }
    let path = [name.as_str(), "image.bin"];

    let cfg = wan::WanConfig {
        one_way_delay: Duration::from_millis(20),
        rate_bits_per_sec: Some(mbit * 1_000_000),
    };
    let (wan_nfs, wan_mount) = wan::start_pair(nfs_addr, mount_addr, cfg).await.unwrap();

    let local: Vec<f64> = (0..rounds)
        .map(|_| {
            maybe_drop_caches();
            local_read(&file)
        })
        .collect();
    eprintln!("direct over WAN (one pass, {mib} MiB at {mbit} Mbit/s)...");
    let direct = nfs_read(
        wan_nfs.local_addr(),
        wan_mount.local_addr(),
        &export,
        &path,
        len,
    )
    .await;

    let cache_dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        wan_nfs.local_addr(),
        wan_mount.local_addr(),
        &format!(
            "[cache]\ndir = \"{}\"\nsize = \"{}MiB\"\nblock_size = \"256KiB\"\nways = 16\nbanks = 16\n",
            cache_dir.path().display(),
            (mib * 2).max(64)
        ),
    );
    eprintln!("gridvfs cold...");
    let cold = nfs_read(proxy.addr, proxy.addr, &export, &path, len).await;
    let mut warm = Vec::new();
    for i in 0..rounds {
        eprintln!("gridvfs warm {}/{rounds}...", i + 1);
        maybe_drop_caches();
        warm.push(nfs_read(proxy.addr, proxy.addr, &export, &path, len).await);
    }
    let (l, w) = (median(local), median(warm));
    let mibs = |s: f64| mib as f64 / s;
    let out = [
        format!(
            "{mib} MiB file, 1 MiB READs with {WINDOW} in flight; WAN {mbit} Mbit/s, 40 ms RTT; medians of {rounds} local/warm rounds; page cache {}.",
            if std::env::var("GRIDVFS_BENCH_DROP_CACHES").as_deref() == Ok("1") { "dropped before each local/warm pass" } else { "warm" }
        ),
        String::new(),
        "| path | time | throughput | vs local disk | vs direct over WAN |".into(),
        "|---|---|---|---|---|".into(),
        format!("| local disk | {l:.3} s | {:.0} MiB/s | 1.00× | |", mibs(l)),
        format!("| direct NFS over WAN | {direct:.2} s | {:.1} MiB/s | {:.1}× | 1.00× |", mibs(direct), direct / l),
        format!("| gridvfs cold (fills the cache) | {cold:.2} s | {:.1} MiB/s | {:.1}× | {:.2}× |", mibs(cold), cold / l, cold / direct),
        format!("| **gridvfs warm (all hits)** | {w:.3} s | {:.0} MiB/s | **{:.2}×** (target ≤ 1.1×) | {:.3}× |", mibs(w), w / l, w / direct),
        format!("| proxy peak RSS | {:.1} MiB | | | (target < 128 MiB) |", proxy.rss_peak_kib() as f64 / 1024.0),
    ]
    .join("\n");
    println!("{out}");
    let rdir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&rdir).unwrap();
    std::fs::write(rdir.join("cache.md"), format!("{out}\n")).unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
