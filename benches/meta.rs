//! Reading a VM memory-state file over a WAN (issue 5): how much the sidecars save.
//!
//! A `GRIDVFS_BENCH_MEM_MIB` (default 256) MiB memory image, `GRIDVFS_BENCH_ZERO`
//! (default 90) percent zero pages, sits in Ganesha's export four times with different
//! sidecars (made by `gridvfs meta generate`). Every path crosses the same WAN emulator
//! (`GRIDVFS_BENCH_RTT_MS`, default 40 ms RTT; `GRIDVFS_BENCH_MBIT`, default 100 Mbit/s,
//! one shared link per direction):
//!
//! - `direct NFS`: the bench's NFSv3 client straight to Ganesha through the emulator;
//! - `scp`: OpenSSH scp of the file from a local sshd through the emulator;
//! - `blocks`: a cold client gridvfs → SSH → server gridvfs → Ganesha, no sidecar;
//! - `zero map`: the same with a sidecar (fetch = blocks): zero pages answered locally;
//! - `whole-file zstd` / `whole-file gzip`: sidecar fetch = whole-file.
//!
//! Each reads the whole file sequentially, 1 MiB READs with 16 in flight (like the
//! kernel client's read-ahead), timed from the first READ to the last byte; every gridvfs
//! run starts a fresh client proxy with an empty cache. The physical floor is the
//! compressed non-zero bytes (frames as the file channel sends them) over the link rate,
//! plus 3 RTT (channel open, subsystem, request). Medians of `GRIDVFS_BENCH_ROUNDS`
//! (default 3). Targets: whole-file ≤ 1.3× floor and ≥ 20× faster than direct NFS.

#[path = "common/image.rs"]
mod image;
#[path = "common/nfs.rs"]
mod nfs;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/site.rs"]
mod site;
#[path = "common/sshd.rs"]
mod sshd;
#[path = "common/util.rs"]
mod util;
#[path = "common/wan.rs"]
mod wan;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nfs::{Client, seq_read};
use proxy::Proxy;
use util::{env_addr, env_u64, median};

const IO: u32 = 1 << 20;
const WINDOW: usize = 16;

/// Bytes the file channel sends for `file` (its frames, compressed) with `codec`.
fn channel_bytes(file: &Path, codec: gridvfs::meta::Codec) -> u64 {
    let name = file.file_name().unwrap().to_str().unwrap();
    let sc = std::fs::read(file.with_file_name(format!(".{name}.gvfsmeta"))).unwrap();
    let sc = gridvfs::meta::Sidecar::parse(&sc).unwrap();
    let data = std::fs::read(file).unwrap();
    let mut total = 0;
    for p in gridvfs::meta::channel::fetch_pieces(&sc.zeros, sc.size) {
        let raw = &data[p.start as usize..p.end as usize];
        total += gridvfs::meta::channel::compress(codec, 0, raw)
            .unwrap()
            .len() as u64
            + 16;
    }
    total
}

/// Mounts through `addr`, finds `dir/name`, then times a sequential read of it.
async fn timed_read(
    nfs: std::net::SocketAddr,
    mount: std::net::SocketAddr,
    export: &str,
    dir: &str,
    name: &str,
    size: u64,
) -> f64 {
    let m = Client::connect(mount).await.unwrap();
    let root = m.mnt(export).await;
    let c = Client::connect(nfs).await.unwrap();
    let d = c.lookup(&root, dir).await.expect("bench dir");
    let fh = c.lookup(&d, name).await.expect("bench file");
    let t0 = Instant::now();
    let n = seq_read(&c, &fh, size, IO, WINDOW).await;
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(n, size, "short read of {name}");
    secs
}

#[tokio::main]
async fn main() {
    let nfs_addr = env_addr("GRIDVFS_LAB_NFS");
    let mount_addr = env_addr("GRIDVFS_LAB_MOUNT");
    let export = std::env::var("GRIDVFS_LAB_EXPORT").unwrap_or("/export".into());
    let export_dir = std::path::PathBuf::from(
        std::env::var("GRIDVFS_LAB_EXPORT_DIR").expect("GRIDVFS_LAB_EXPORT_DIR"),
    );
    let mib = env_u64("GRIDVFS_BENCH_MEM_MIB", 256);
    let zero_pct = env_u64("GRIDVFS_BENCH_ZERO", 90);
    let rounds = env_u64("GRIDVFS_BENCH_ROUNDS", 3) as usize;
    let rtt = Duration::from_millis(env_u64("GRIDVFS_BENCH_RTT_MS", 40));
    let mbit = env_u64("GRIDVFS_BENCH_MBIT", 100);
    let link = wan::WanConfig {
        one_way_delay: rtt / 2,
        rate_bits_per_sec: Some(mbit * 1_000_000),
    };

    // The files: one image, four names, three sidecars.
    let dir = "bench-meta";
    let d = export_dir.join(dir);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let (img, zero) = image::memory_image(mib, zero_pct, 42);
    let size = img.len() as u64;
    for f in ["plain.vmss", "zmap.vmss", "zstd.vmss", "gzip.vmss"] {
        std::fs::write(d.join(f), &img).unwrap();
    }
    drop(img);
    image::meta_generate(&d.join("zmap.vmss"), &["--fetch", "blocks"]);
    image::meta_generate(
        &d.join("zstd.vmss"),
        &["--fetch", "whole-file", "--codec", "zstd"],
    );
    image::meta_generate(
        &d.join("gzip.vmss"),
        &["--fetch", "whole-file", "--codec", "gzip"],
    );
    let bytes_per_s = (mbit * 1_000_000 / 8) as f64;
    let floor = |bytes: u64| bytes as f64 / bytes_per_s + 3.0 * rtt.as_secs_f64();
    let zstd_bytes = channel_bytes(&d.join("zstd.vmss"), gridvfs::meta::Codec::Zstd);
    let gzip_bytes = channel_bytes(&d.join("gzip.vmss"), gridvfs::meta::Codec::Gzip);

    // The server proxy (SSH), sshd for scp, and the emulated links in front of each.
    let site = site::Site::start(nfs_addr, mount_addr, &export, &link).await;
    let t = site.t();
    let (wan_nfs, wan_mount) = (&site.wan_nfs.0, &site.wan_nfs.1);

    let client = |cache: &Path| {
        Proxy::start_config(&format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n\
             [upstream]\nnfs = \"{}\"\n{}\
             [cache]\ndir = \"{}\"\nsize = \"{}MiB\"\nblock_size = \"64KiB\"\n\
             [log]\nlevel = \"warn\"\n",
            site.ssh_upstream(),
            site.ssh_section(false),
            cache.display(),
            (2 * mib).max(64),
        ))
    };

    let names = [
        "direct NFS",
        "scp",
        "blocks",
        "zero map",
        "whole-file zstd",
        "whole-file gzip",
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..rounds {
        times[0].push(
            timed_read(
                wan_nfs.local_addr(),
                wan_mount.local_addr(),
                &export,
                dir,
                "plain.vmss",
                size,
            )
            .await,
        );
        let dest = t.join("scp.out");
        let t0 = Instant::now();
        let st = Command::new("scp")
            .args(["-q", "-P"])
            .arg(site.wan_sshd.local_addr().port().to_string())
            .args(site.ssh_args())
            .arg(format!("root@127.0.0.1:{}", d.join("plain.vmss").display()))
            .arg(&dest)
            .status()
            .unwrap();
        times[1].push(t0.elapsed().as_secs_f64());
        assert!(st.success(), "scp failed");
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), size);
        let _ = std::fs::remove_file(&dest);
        for (i, f) in ["plain.vmss", "zmap.vmss", "zstd.vmss", "gzip.vmss"]
            .iter()
            .enumerate()
        {
            let cache = tempfile::tempdir_in(t).unwrap();
            let p = client(cache.path());
            let s = timed_read(p.addr, p.addr, &export, dir, f, size).await;
            times[2 + i].push(s);
        }
        let row: Vec<String> = names
            .iter()
            .zip(&times)
            .map(|(n, v)| format!("{n} {:.2}s", v[round]))
            .collect();
        println!("round {}: {}", round + 1, row.join(", "));
    }
    let med: Vec<f64> = times.into_iter().map(median).collect();
    let (direct, scp) = (med[0], med[1]);
    println!();
    println!(
        "memory image {mib} MiB, {:.1}% zero ({} MiB non-zero); link {} ms RTT, {mbit} Mbit/s; medians of {rounds}",
        zero as f64 * 100.0 / size as f64,
        (size - zero) >> 20,
        rtt.as_millis()
    );
    println!(
        "file channel sends {:.1} MiB (zstd), {:.1} MiB (gzip); floor {:.2} s (zstd), {:.2} s (gzip)",
        zstd_bytes as f64 / 1048576.0,
        gzip_bytes as f64 / 1048576.0,
        floor(zstd_bytes),
        floor(gzip_bytes)
    );
    println!("| path | median s | vs direct NFS | vs scp | vs floor |");
    println!("|---|---|---|---|---|");
    for (i, n) in names.iter().enumerate() {
        let f = match i {
            4 => format!("{:.2}x", med[i] / floor(zstd_bytes)),
            5 => format!("{:.2}x", med[i] / floor(gzip_bytes)),
            _ => "-".into(),
        };
        println!(
            "| {n} | {:.2} | {:.1}x faster | {:.1}x faster | {f} |",
            med[i],
            direct / med[i],
            scp / med[i]
        );
    }
    println!(
        "targets: whole-file zstd <= 1.3x floor: {} ({:.2}x); >= 20x faster than direct NFS: {} ({:.1}x)",
        if med[4] <= 1.3 * floor(zstd_bytes) {
            "MET"
        } else {
            "MISSED"
        },
        med[4] / floor(zstd_bytes),
        if direct / med[4] >= 20.0 {
            "MET"
        } else {
            "MISSED"
        },
        direct / med[4]
    );
    let _ = std::fs::remove_dir_all(&d);
    drop(site);
}
