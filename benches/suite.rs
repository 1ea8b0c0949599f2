//! The VM-cloning benchmark suite (issue 6, paper §4.3): clone VMs from golden images
//! over an emulated WAN and compare with local disk, plain NFS and full copies.
//!
//! ```text
//! scripts/bench.sh suite                              # full profile, writes docs/
//! GRIDVFS_SUITE_PROFILE=quick scripts/bench.sh suite  # small images (the CI smoke run)
//! ```
//!
//! Scenarios (40 ms RTT, 100 Mbit/s by default; `GRIDVFS_BENCH_RTT_MS`, `GRIDVFS_BENCH_MBIT`):
//! - Local: images on local disk, cloned with file-system calls.
//! - WAN-NFS: the bench's NFSv3 client straight to Ganesha through the WAN emulator.
//! - LAN-NFS: the same client straight to Ganesha on loopback, no WAN, no proxy: what the
//!   NFS path alone costs on this machine against Local (a reference, no target).
//! - scp / rsync: the whole image copied through the WAN emulator (OpenSSH sshd), then
//!   a local clone.
//! - WAN-S1: gridvfs (client proxy → SSH → server proxy), one image cloned N times in a
//!   row: the first cold, the rest warm.
//! - WAN-S2: N different images, once each.
//! - WAN-S3: N images pre-cached on a LAN proxy, cloned through a fresh client proxy.
//! - WAN-P: N client proxies cloning one image at once through one LAN proxy.
//! - Local-P: N clones of one image at once from local disk (N threads), no gridvfs: what
//!   WAN-P's clones cost this machine's cores before any NFS or proxy work (a reference).
//! - Runtime: a write-heavy phase and a build-like tree (cold, warm) on Local, WAN-NFS,
//!   LAN-NFS and gridvfs; the warm build runs `GRIDVFS_SUITE_BUILD_ROUNDS` times (full 5, quick 3)
//!   and its median is reported.
//! - WAN-persistent: a persistent VM (the user's own copy of img0, which its sessions write
//!   into instead of a redo log) resumed twice through one client proxy (cold, then warm),
//!   each session ended by the middleware's write-back (`gridvfs flush`, the last with
//!   `--drop`); its Local baseline runs the same sessions on a local copy (`fsync`).
//!
//! Every clone's bytes (all it read and wrote) are checked against the golden files, and
//! after each write-back the persistent VM's disk file on the server's disk is compared
//! with the golden disk plus every write; a wrong byte fails the run. The full profile
//! (or `GRIDVFS_SUITE_DOCS=DIR`; `0` never) writes its tables into docs/benchmarks.md
//! (between the suite markers) and a plot of the clone times to docs/clone-times.svg.

#[path = "common/image.rs"]
mod image;
#[path = "common/nfs.rs"]
mod nfs;
#[path = "common/persistent.rs"]
mod persistent;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/site.rs"]
mod site;
#[path = "common/sshd.rs"]
mod sshd;
#[path = "common/util.rs"]
mod util;
#[path = "common/vm.rs"]
mod vm;
#[path = "common/wan.rs"]
mod wan;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nfs::Client;
use proxy::Proxy;
use util::{CpuMeter, cores, env_addr, env_u64, median};

/// Where the suite keeps its images below the export.
const BASE: &str = "suite";

struct Env {
    export: String,
    export_dir: PathBuf,
    spec: vm::Spec,
    site: site::Site,
    link: wan::WanConfig,
    /// `[upstream.ssh] compression` of the proxies that cross the WAN.
    compression: bool,
    /// Scenarios to run; empty: all.
    only: Vec<String>,
    /// Each image's `vm::expected` digest, computed once before the scenarios (hashing
    /// 350 MiB per check inside a scenario would take CPU from clones still running).
    golden_digests: std::collections::HashMap<String, [u8; 32]>,
}

impl Env {
    fn t(&self) -> &Path {
        self.site.t()
    }

    fn golden_dir(&self, image: &str) -> PathBuf {
        self.export_dir.join(BASE).join("golden").join(image)
    }

    /// A client proxy whose next hop is `upstream` (`ssh://...` or `tcp://...`).
    fn client(&self, upstream: &str, cache: &Path) -> Proxy {
        self.client_with(upstream, cache, "")
    }

    /// A client proxy with `extra` TOML sections appended (e.g. `[control]`).
    fn client_with(&self, upstream: &str, cache: &Path, extra: &str) -> Proxy {
        Proxy::start_config(&format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n\
             [upstream]\nnfs = \"{upstream}\"\n{}\
             [cache]\ndir = \"{}\"\nsize = \"4GiB\"\nblock_size = \"64KiB\"\nmetadata = \"session\"\n\
             [log]\nlevel = \"warn\"\n{extra}",
            self.site.ssh_section(self.compression),
            cache.display(),
        ))
    }

    /// A client proxy over SSH with a fresh cache and a control socket: the directories
    /// to keep while it runs (first, so that they outlive it), the proxy, the socket.
    fn client_with_control(&self) -> ([tempfile::TempDir; 2], Proxy, PathBuf) {
        let cache = tempfile::tempdir_in(self.t()).unwrap();
        let ctl = tempfile::tempdir_in(self.t()).unwrap();
        let sock = ctl.path().join("control.sock");
        let p = self.client_with(
            &self.ssh_upstream(),
            cache.path(),
            &format!("[control]\nsocket = \"{}\"\n", sock.display()),
        );
        ([cache, ctl], p, sock)
    }

    /// Whether scenario `name` is to run (`GRIDVFS_SUITE_SCENARIOS`, default all).
    fn runs(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s.eq_ignore_ascii_case(name))
    }

    fn ssh_upstream(&self) -> String {
        self.site.ssh_upstream()
    }
}

/// Writes every dirty page of the machine out (sync(2)), so a scenario does not pay for
/// the background writeback of what ran before it.
fn write_out() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Mounts through `addr` and returns a client and the suite's base directory handle.
async fn base_at(nfs: SocketAddr, mount: SocketAddr, export: &str) -> (Client, Vec<u8>) {
    let m = Client::connect(mount).await.unwrap();
    let root = m.mnt(export).await;
    let c = Client::connect(nfs).await.unwrap();
    let base = c.lookup(&root, BASE).await.expect("suite directory");
    (c, base)
}

/// One clone over NFS at `addr`, checked.
async fn clone_at(e: &Env, nfs: SocketAddr, mount: SocketAddr, image: &str, clone: &str) -> f64 {
    clone_metered(e, nfs, mount, image, clone, &[], None)
        .await
        .0
}

/// One clone, checked: its seconds, and the CPU-seconds that the bench process, Ganesha
/// and `pids` used while it ran (not while it was checked). With `control` (the client
/// proxy's control socket) the clone begins as middleware begins a session: it runs
/// `gridvfs prefetch` for the image's memory state and disk, in the background, timed
/// with the clone.
async fn clone_metered(
    e: &Env,
    nfs: SocketAddr,
    mount: SocketAddr,
    image: &str,
    clone: &str,
    pids: &[u32],
    control: Option<&Path>,
) -> (f64, f64) {
    let (c, base) = base_at(nfs, mount, &e.export).await;
    let cpu = CpuMeter::start(pids);
    let t0 = Instant::now();
    // GRIDVFS_SUITE_PREFETCH=0: clones begin without `gridvfs prefetch` (for an A/B).
    let control = control.filter(|_| env_u64("GRIDVFS_SUITE_PREFETCH", 1) == 1);
    let prefetch = control.map(|sock| {
        let dir = format!("{}/{BASE}/golden/{image}", e.export.trim_end_matches('/'));
        let args = [
            "prefetch".to_string(),
            format!("{dir}/{}", vm::MEM),
            format!("{dir}/{}", vm::DISK),
        ];
        let sock = sock.to_path_buf();
        std::thread::spawn(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_gridvfs"))
                .args(&args)
                .arg("--socket")
                .arg(&sock)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "gridvfs {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    });
    let mut r = vm::clone_nfs(&c, &base, image, clone, &e.spec, seed(image)).await;
    r.secs = t0.elapsed().as_secs_f64();
    let used = cpu.used();
    if let Some(p) = prefetch {
        // The memory state's whole-file transfer and the disk's working set (when one
        // was recorded) were queued: each file has a fresh sidecar and the next hop a
        // file channel. `gridvfs prefetch` exits non-zero on any error.
        let said = p.join().expect("prefetch thread");
        let disk = if env_u64("GRIDVFS_SUITE_WORKSET", 1) == 1 {
            "\"fetch\":\"working-set\""
        } else {
            "\"fetch\":\"none\""
        };
        assert!(
            said.contains("\"fetch\":\"whole-file\"") && said.contains(disk),
            "gridvfs prefetch did not queue what the sidecars ask for: {said}"
        );
    }
    check(e, image, clone, &r);
    println!(
        "  clone {clone} of {image}: {:.2} s (copy steps {:.2} s, resume {:.2} s)",
        r.secs,
        r.copy_secs,
        r.secs - r.copy_secs
    );
    (r.secs, used)
}

/// Records each image's disk working set (one clone through a recording proxy straight
/// to Ganesha) and writes it into the disk's sidecar with the product's tools:
/// `gridvfs workset` on the proxy, `gridvfs meta workset` where the files are. Returns
/// the bytes of working set written.
async fn profile_working_sets(
    e: &Env,
    images: &[String],
    nfs: SocketAddr,
    mount: SocketAddr,
) -> u64 {
    let cache = tempfile::tempdir_in(e.t()).unwrap();
    let ctl = tempfile::tempdir_in(e.t()).unwrap();
    let sock = ctl.path().join("control.sock");
    let p = Proxy::start_config(&format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n\
         [upstream]\nnfs = \"tcp://{nfs}\"\nmount = \"tcp://{mount}\"\n\
         [cache]\ndir = \"{}\"\nsize = \"4GiB\"\nblock_size = \"64KiB\"\n\
         [meta]\nrecord_working_set = true\n\
         [control]\nsocket = \"{}\"\n[log]\nlevel = \"warn\"\n",
        cache.path().display(),
        sock.display()
    ));
    let mut total = 0;
    for im in images {
        clone_at(e, p.addr, p.addr, im, &format!("profile-{im}")).await;
        let path = format!("{}/{BASE}/golden/{im}/{}", e.export, vm::DISK);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gridvfs"))
            .args(["workset", "--socket"])
            .arg(&sock)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gridvfs workset {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        total += text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
        let ws = ctl.path().join(format!("{im}.ws"));
        std::fs::write(&ws, &text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gridvfs"))
            .args(["meta", "workset", "--from"])
            .arg(&ws)
            .arg(e.golden_dir(im).join(vm::DISK))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gridvfs meta workset {im}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    total
}

fn seed(image: &str) -> u64 {
    image
        .bytes()
        .fold(17u64, |h, b| h.wrapping_mul(131) ^ b as u64)
}

fn check(e: &Env, image: &str, clone: &str, r: &vm::Report) {
    assert!(
        r.digest == e.golden_digests[image],
        "clone {clone} of {image}: the bytes read differ from the golden image's"
    );
    assert!(
        r.own == vm::expected_own(&e.spec, clone),
        "clone {clone} of {image}: its configuration or redo log read back differs"
    );
}

/// Copies the golden image with scp or rsync through the WAN, then clones it locally.
fn full_copy(e: &Env, tool: &str, image: &str, clone: &str) -> f64 {
    let dest = e.t().join(format!("copy-{tool}"));
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir_all(&dest).unwrap();
    let port = e.site.wan_sshd.local_addr().port().to_string();
    let src = format!("root@127.0.0.1:{}", e.golden_dir(image).display());
    let t0 = Instant::now();
    let st = match tool {
        "scp" => Command::new("scp")
            .args(["-q", "-r", "-P", &port])
            .args(e.site.ssh_args())
            .arg(&src)
            .arg(&dest)
            .status(),
        _ => Command::new("rsync")
            .args(["-a", "-e"])
            .arg(format!("ssh -p {port} {}", e.site.ssh_args().join(" ")))
            .arg(&src)
            .arg(&dest)
            .status(),
    }
    .unwrap();
    assert!(st.success(), "{tool} failed");
    let golden = dest.join(image);
    let r = vm::clone_local(
        &golden,
        &e.t().join("clones-copy"),
        clone,
        &e.spec,
        seed(image),
    );
    check(e, image, clone, &r);
    t0.elapsed().as_secs_f64()
}

/// Sessions of the persistent VM in each of its scenarios: the first cold, the second
/// warm (its blocks kept in the client proxy's cache by the first write-back).
const SESSIONS: u32 = 2;

fn check_persistent(e: &Env, name: &str, session: u32, r: &persistent::Session) {
    let want = persistent::expected(&e.golden_dir("img0"), &e.spec, name, session, seed("img0"));
    assert!(
        r.digest == want,
        "persistent VM {name}, session {session}: the bytes read and written differ from \
         the golden image's with the earlier sessions' writes"
    );
}

/// The persistent VM (the user's own copy of img0, prepared untimed): `SESSIONS` sessions
/// on a local copy (the baseline), then through one client proxy over the WAN, each
/// ended by the middleware's write-back; after every session the disk file is checked on
/// the disk it lives on. Returns (Local, WAN-persistent).
async fn persistent_vm(e: &Env) -> (Vec<persistent::Times>, Vec<persistent::Times>) {
    let golden = e.golden_dir("img0");
    let gdisk = golden.join(vm::DISK);
    let sd = seed("img0");
    let name = "pvm-local";
    let vdir = e.t().join("persistent-local").join(name);
    persistent::prepare(&golden, &vdir);
    let mut local = Vec::new();
    for k in 1..=SESSIONS {
        let r = persistent::session_local(&vdir, &e.spec, name, k, sd);
        check_persistent(e, name, k, &r);
        persistent::check_disk(&vdir.join(vm::DISK), &gdisk, &e.spec, name, k, sd);
        local.push(persistent::Times {
            secs: r.secs,
            resume_secs: r.resume_secs,
            flush: None,
            dirty: 0,
            zero: 0,
            stale: 0,
            on_zero: persistent::bytes_on_zero_pages(&gdisk, &e.spec, name, k, sd),
        });
    }
    // In the export, beside the golden images: the server's local disk.
    let name = "pvm-wan";
    let vdir = e.export_dir.join(BASE).join(persistent::DIR).join(name);
    persistent::prepare(&golden, &vdir);
    let (_dirs, p, sock) = e.client_with_control();
    let mut wan = Vec::new();
    for k in 1..=SESSIONS {
        let (c, base) = base_at(p.addr, p.addr, &e.export).await;
        let r = persistent::session_nfs(&c, &base, name, &e.spec, sd, k).await;
        check_persistent(e, name, k, &r);
        let st = proxy::control(&sock, &["status"]);
        // The session's end: write back; the last one also drops the cache (SIGUSR2's work).
        let t0 = Instant::now();
        let args: &[&str] = if k == SESSIONS {
            &["flush", "--drop"]
        } else {
            &["flush"]
        };
        let fl = proxy::control(&sock, args);
        let flush_secs = t0.elapsed().as_secs_f64();
        persistent::check_disk(&vdir.join(vm::DISK), &gdisk, &e.spec, name, k, sd);
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        wan.push(persistent::Times {
            secs: r.secs,
            resume_secs: r.resume_secs,
            flush: Some((flush_secs, n(&fl["written"]))),
            dirty: n(&st["cache"]["dirty_bytes"]),
            zero: n(&st["meta"]["zero_bytes"]),
            stale: n(&st["meta"]["sidecars_stale"]),
            on_zero: persistent::bytes_on_zero_pages(&gdisk, &e.spec, name, k, sd),
        });
    }
    (local, wan)
}

/// Results of one scenario: a label and the clone times in order.
struct Scenario {
    name: &'static str,
    times: Vec<f64>,
    note: String,
}

fn main() {
    // The bench client stands in for VMs' kernel NFS clients, which read into page-cache
    // pages they keep. With glibc's defaults its 1–2 MiB reply buffers are fresh mmaps the
    // kernel zero-fills page by page; the proxy's own allocator settings keep them in the
    // heap for reuse (WAN-P alone, session 11: 15.1 → 14.2 CPU-s; most of the bench
    // process's `clear_page_erms` went with `vm::for_each_extent`). Set before the
    // runtime's threads start.
    gridvfs::daemon::tune_allocator();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(suite());
}

async fn suite() {
    let profile = std::env::var("GRIDVFS_SUITE_PROFILE").unwrap_or("full".into());
    let mut spec = match profile.as_str() {
        "quick" => vm::Spec::quick(),
        _ => vm::Spec::full(),
    };
    spec.build_rounds = env_u64("GRIDVFS_SUITE_BUILD_ROUNDS", spec.build_rounds as u64) as usize;
    let n = env_u64("GRIDVFS_SUITE_CLONES", 8) as usize;
    let rtt = Duration::from_millis(env_u64("GRIDVFS_BENCH_RTT_MS", 40));
    let mbit = env_u64("GRIDVFS_BENCH_MBIT", 100);
    let nfs_addr = env_addr("GRIDVFS_LAB_NFS");
    let mount_addr = env_addr("GRIDVFS_LAB_MOUNT");
    let export = std::env::var("GRIDVFS_LAB_EXPORT").unwrap_or("/export".into());
    let export_dir =
        PathBuf::from(std::env::var("GRIDVFS_LAB_EXPORT_DIR").expect("GRIDVFS_LAB_EXPORT_DIR"));
    let link = wan::WanConfig {
        one_way_delay: rtt / 2,
        rate_bits_per_sec: Some(mbit * 1_000_000),
    };
    let started = Instant::now();

    // Golden images.
    let base_dir = export_dir.join(BASE);
    let _ = std::fs::remove_dir_all(&base_dir);
    let images: Vec<String> = (0..n).map(|i| format!("img{i}")).collect();
    let t0 = Instant::now();
    for im in &images {
        vm::make_golden(&base_dir.join("golden"), im, &spec, seed(im));
    }
    std::fs::create_dir_all(base_dir.join("clones")).unwrap();
    std::process::Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(&base_dir)
        .status()
        .unwrap();
    println!(
        "{n} golden images ({} MiB memory state, {} MiB disk) made in {:.1} s",
        spec.mem_mib,
        spec.disk_mib,
        t0.elapsed().as_secs_f64()
    );

    // Server proxy, sshd, and the WAN in front of each.
    let site = site::Site::start(nfs_addr, mount_addr, &export, &link).await;
    let golden_digests = images
        .iter()
        .map(|im| {
            let dir = export_dir.join(BASE).join("golden").join(im);
            (im.clone(), vm::expected(&dir, &spec, seed(im)))
        })
        .collect();
    let e = Env {
        export,
        export_dir,
        spec: spec.clone(),
        site,
        link,
        compression: env_u64("GRIDVFS_SUITE_SSH_COMPRESSION", 1) == 1,
        only: std::env::var("GRIDVFS_SUITE_SCENARIOS")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default(),
        golden_digests,
    };
    let mut out: Vec<Scenario> = Vec::new();

    // Working-set profiles (untimed, like `meta generate`): each golden image is cloned
    // once on the LAN through a proxy that records what is read, and the disk's working
    // set goes into its sidecar, which the client proxies then prefetch in one stream.
    if env_u64("GRIDVFS_SUITE_WORKSET", 1) == 1 {
        let t0 = Instant::now();
        let bytes = profile_working_sets(&e, &images, nfs_addr, mount_addr).await;
        println!(
            "working sets recorded and written into the disks' sidecars in {:.1} s ({:.1} MiB each)",
            t0.elapsed().as_secs_f64(),
            bytes as f64 / n as f64 / (1 << 20) as f64
        );
    }
    // The images are gigabytes of dirty page cache: written out now, not by the kernel's
    // background writeback in the middle of the first scenarios (where it stalled the
    // fdatasyncs of Local clones and gridvfs COMMITs alike by seconds).
    let t0 = Instant::now();
    write_out();
    println!(
        "dirty pages written out before the scenarios in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // Local.
    let mut times = Vec::new();
    for k in 0..if e.runs("Local") { n } else { 0 } {
        let clone = format!("local{k}");
        let r = vm::clone_local(
            &e.golden_dir("img0"),
            &e.t().join("clones-local"),
            &clone,
            &spec,
            seed("img0"),
        );
        check(&e, "img0", &clone, &r);
        times.push(r.secs);
    }
    out.push(Scenario {
        name: "Local",
        times,
        note: "img0 from local disk (page cache warm), N times".into(),
    });
    println!("Local done ({:.0} s)", started.elapsed().as_secs_f64());

    // Local-P: N clones of img0 at once from local disk, no gridvfs and no network — what
    // WAN-P's N clones cost this machine's cores before any NFS or proxy work.
    if e.runs("Local-P") {
        write_out();
        let cpu = CpuMeter::start(&[]);
        let t0 = Instant::now();
        let (golden, dir) = (e.golden_dir("img0"), e.t().join("clones-local"));
        let reports: Vec<(String, vm::Report)> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..n)
                .map(|k| {
                    let (golden, dir, spec) = (&golden, &dir, &spec);
                    sc.spawn(move || {
                        let clone = format!("localp{k}");
                        let r = vm::clone_local(golden, dir, &clone, spec, seed("img0"));
                        (clone, r)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let (all, used) = (t0.elapsed().as_secs_f64(), cpu.used());
        let mut times = Vec::new();
        for (clone, r) in &reports {
            check(&e, "img0", clone, r);
            times.push(r.secs);
        }
        out.push(Scenario {
            name: "Local-P",
            times,
            note: format!(
                "N clones of img0 at once from local disk (N threads, page cache warm), no \
                 gridvfs; all done in {all:.2} s with {used:.1} CPU-s"
            ),
        });
        println!("Local-P done ({:.0} s)", started.elapsed().as_secs_f64());
    }

    write_out(); // each scenario starts without the last one's dirty pages
    // WAN-NFS: straight to Ganesha through the WAN.
    if e.runs("WAN-NFS") {
        let s = clone_at(
            &e,
            e.site.wan_nfs.0.local_addr(),
            e.site.wan_nfs.1.local_addr(),
            "img0",
            "wannfs0",
        )
        .await;
        out.push(Scenario {
            name: "WAN-NFS",
            times: vec![s],
            note: "one clone of img0, NFSv3 client straight to Ganesha".into(),
        });
        println!("WAN-NFS done ({:.0} s)", started.elapsed().as_secs_f64());
    }

    write_out(); // each scenario starts without the last one's dirty pages
    // LAN-NFS: straight to Ganesha on loopback (no WAN, no proxy), N times.
    if e.runs("LAN-NFS") {
        let mut times = Vec::new();
        for k in 0..n {
            times.push(clone_at(&e, nfs_addr, mount_addr, "img0", &format!("lannfs{k}")).await);
        }
        out.push(Scenario {
            name: "LAN-NFS",
            times,
            note: "img0 N times, NFSv3 client straight to Ganesha on loopback (no WAN, no \
                   proxy): the NFS path's own cost against Local"
                .into(),
        });
        println!("LAN-NFS done ({:.0} s)", started.elapsed().as_secs_f64());
    }

    write_out(); // each scenario starts without the last one's dirty pages
    // Full copies.
    for tool in ["scp", "rsync"].into_iter().filter(|_| e.runs("copy")) {
        let s = full_copy(&e, tool, "img0", &format!("{tool}0"));
        out.push(Scenario {
            name: if tool == "scp" {
                "scp + local"
            } else {
                "rsync + local"
            },
            times: vec![s],
            note: format!("{tool} of img0's directory through the WAN, then a local clone"),
        });
    }
    println!(
        "full copies done ({:.0} s)",
        started.elapsed().as_secs_f64()
    );

    write_out(); // each scenario starts without the last one's dirty pages
    // WAN-S1: one image, N times, one client proxy.
    let mut cold_cpu = None;
    if e.runs("WAN-S1") {
        let (_dirs, p, sock) = e.client_with_control();
        let (mut times, mut warm_cpu) = (Vec::new(), Vec::new());
        let pids = [p.pid(), e.site.server.pid()];
        for k in 0..n {
            let s1 = format!("s1-{k}");
            let (secs, cpu) =
                clone_metered(&e, p.addr, p.addr, "img0", &s1, &pids, Some(&sock)).await;
            times.push(secs);
            if k == 0 {
                cold_cpu = Some(cpu);
            } else {
                warm_cpu.push(cpu);
            }
        }
        let mut cpu = cold_cpu.map_or(String::new(), |c| {
            format!("; the cold clone used {c:.1} CPU-s (bench client, proxies, Ganesha)")
        });
        if !warm_cpu.is_empty() {
            cpu += &format!(", a warm one {:.1} (median)", median(warm_cpu));
        }
        out.push(Scenario {
            name: "WAN-S1",
            times,
            note: format!("img0 cloned N times through one client proxy (first cold){cpu}"),
        });
    }
    println!("WAN-S1 done ({:.0} s)", started.elapsed().as_secs_f64());

    write_out(); // each scenario starts without the last one's dirty pages
    // WAN-S2: N images once each.
    if e.runs("WAN-S2") {
        let (_dirs, p, sock) = e.client_with_control();
        let (mut times, mut cpus) = (Vec::new(), Vec::new());
        let pids = [p.pid(), e.site.server.pid()];
        for (k, im) in images.iter().enumerate() {
            let s2 = format!("s2-{k}");
            let (secs, cpu) = clone_metered(&e, p.addr, p.addr, im, &s2, &pids, Some(&sock)).await;
            times.push(secs);
            cpus.push(cpu);
        }
        out.push(Scenario {
            name: "WAN-S2",
            times,
            note: format!(
                "N different images once each, one client proxy; a clone used {:.1} CPU-s \
                 (median; bench client, proxies, Ganesha)",
                median(cpus)
            ),
        });
    }
    println!("WAN-S2 done ({:.0} s)", started.elapsed().as_secs_f64());

    write_out(); // each scenario starts without the last one's dirty pages
    // WAN-S3: N images pre-cached on a LAN proxy.
    if e.runs("WAN-S3") {
        let lan_cache = tempfile::tempdir_in(e.t()).unwrap();
        let lan = e.client(&e.ssh_upstream(), lan_cache.path());
        let lan_up = format!("tcp://{}", lan.addr);
        {
            let warm = tempfile::tempdir_in(e.t()).unwrap();
            let p = e.client(&lan_up, warm.path());
            for (k, im) in images.iter().enumerate() {
                clone_at(&e, p.addr, p.addr, im, &format!("s3warm-{k}")).await;
            }
        }
        let cache = tempfile::tempdir_in(e.t()).unwrap();
        let p = e.client(&lan_up, cache.path());
        let mut times = Vec::new();
        for (k, im) in images.iter().enumerate() {
            times.push(clone_at(&e, p.addr, p.addr, im, &format!("s3-{k}")).await);
        }
        out.push(Scenario {
            name: "WAN-S3",
            times,
            note: "N images pre-cached on a LAN proxy, fresh client proxy".into(),
        });
    }
    println!("WAN-S3 done ({:.0} s)", started.elapsed().as_secs_f64());

    write_out(); // each scenario starts without the last one's dirty pages
    // Runtime after cloning: write-heavy and build-like, Local vs WAN-NFS vs gridvfs.
    let mut runtime = None;
    let mut chain_floor = None;
    if e.runs("Runtime") {
        let shape = (spec.runtime_mib, spec.build_files, spec.build_rounds);
        let (mib, files, rounds) = shape;
        let local = vm::runtime_local(&e.t().join("runtime-local"), mib, files, rounds);
        let (c, base) = base_at(
            e.site.wan_nfs.0.local_addr(),
            e.site.wan_nfs.1.local_addr(),
            &e.export,
        )
        .await;
        let wannfs = vm::runtime_nfs(&c, &base, "wannfs", shape, None).await;
        let (c, base) = base_at(nfs_addr, mount_addr, &e.export).await;
        let lannfs = vm::runtime_nfs(&c, &base, "lannfs", shape, None).await;
        let (_dirs, p, sock) = e.client_with_control();
        let (c, base) = base_at(p.addr, p.addr, &e.export).await;
        let counts = || {
            let v = proxy::control(&sock, &["status"]);
            let n = |x: &serde_json::Value| x.as_u64().expect("status counter");
            (n(&v["cache"]["syncs"]), n(&v["upstream"]["nfs"]["calls"]))
        };
        let gvfs = vm::runtime_nfs(&c, &base, "gridvfs", shape, Some(&counts)).await;
        // The warm build's chain of waits through any NFS server, against this proxy's
        // portmapper: per object LOOKUP and READ of its source, CREATE (durable before
        // its reply) of the object, WRITE, COMMIT (after the bytes are durable).
        let (addr, dir) = (p.addr, e.t().join("chain-floor"));
        let chains: Vec<f64> = (0..rounds.max(1))
            .map(|_| {
                use util::Step::{Data, Record, Reply};
                util::chain_floor(
                    addr,
                    &dir,
                    &vm::object_sizes(files),
                    8,
                    &[Reply, Reply, Record, Reply, Reply, Data, Reply],
                )
            })
            .collect();
        chain_floor = Some(median(chains));
        runtime = Some([local, wannfs, lannfs, gvfs]);
        println!("Runtime done ({:.0} s)", started.elapsed().as_secs_f64());
    }

    write_out(); // each scenario starts without the last one's dirty pages
    // A persistent VM: Local, then through a client proxy over the WAN.
    let mut persist = None;
    if e.runs("WAN-persistent") {
        persist = Some(persistent_vm(&e).await);
        println!(
            "WAN-persistent done ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }

    write_out(); // each scenario starts without the last one's dirty pages
    // WAN-P: N client proxies clone img0 at once through one LAN proxy.
    let e = if e.runs("WAN-P") {
        let lan_cache = tempfile::tempdir_in(e.t()).unwrap();
        let lan = e.client(&e.ssh_upstream(), lan_cache.path());
        let lan_up = format!("tcp://{}", lan.addr);
        let caches: Vec<_> = (0..n)
            .map(|_| tempfile::tempdir_in(e.t()).unwrap())
            .collect();
        let proxies: Vec<Proxy> = caches.iter().map(|c| e.client(&lan_up, c.path())).collect();
        let mut pids: Vec<u32> = proxies.iter().map(|p| p.pid()).collect();
        pids.extend([lan.pid(), e.site.server.pid()]);
        let cpu = CpuMeter::start(&pids);
        let t0 = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        let e2 = std::sync::Arc::new(e);
        for (k, p) in proxies.iter().enumerate() {
            let (e3, addr) = (e2.clone(), p.addr);
            set.spawn(async move {
                let (c, base) = base_at(addr, addr, &e3.export).await;
                let clone = format!("p-{k}");
                let (r, own) =
                    vm::clone_nfs_timed(&c, &base, "img0", &clone, &e3.spec, seed("img0")).await;
                (c, clone, r, own)
            });
        }
        let mut done = Vec::new();
        while let Some(r) = set.join_next().await {
            done.push(r.unwrap());
        }
        let all = t0.elapsed().as_secs_f64();
        let used = cpu.used();
        // Checked once all are done, so no clone's read-back runs in another's window.
        let mut times = Vec::new();
        for (c, clone, mut r, own) in done {
            r.own = vm::read_own(&c, &own).await;
            check(&e2, "img0", &clone, &r);
            println!("  clone {clone} of img0: {:.2} s", r.secs);
            times.push(r.secs);
        }
        drop(proxies);
        drop(lan);
        let e = std::sync::Arc::try_unwrap(e2).ok().expect("no other users");
        out.push(Scenario {
            name: "WAN-P",
            times,
            note: format!(
                "N client proxies at once via one LAN proxy; all done in {all:.2} s; they used \
                 {used:.1} CPU-s (bench client, proxies, Ganesha{}), so on this machine's {} \
                 cores they need at least {:.1} s",
                cold_cpu.map_or(String::new(), |c| format!("; one cold clone: {c:.1} CPU-s")),
                cores(),
                used / cores() as f64
            ),
        });
        e
    } else {
        e
    };
    let persist_md = persist.map(|(l, w)| persistent::report_md(&e.spec, &l, &w));
    if e.only.is_empty() {
        let total = started.elapsed().as_secs_f64();
        report(
            &e,
            &out,
            (runtime, chain_floor),
            persist_md,
            &profile,
            total,
        );
    } else {
        if let Some(r) = runtime {
            println!("Runtime (Local, WAN-NFS, LAN-NFS, gridvfs): {r:?}");
        }
        if let Some(c) = chain_floor {
            println!("Runtime warm build's chain floor: {c:.3} s");
        }
        for s in &out {
            let ts: Vec<String> = s.times.iter().map(|t| format!("{t:.2}")).collect();
            println!("{}: {} — {}", s.name, ts.join(", "), s.note);
        }
        if let Some(md) = persist_md {
            println!("\n{md}");
        }
    }
}

/// The physical floor of a cold clone of `image`: the bytes it needs from the server (the
/// memory state's non-zero pages and the working set's non-zero pages, 4 KiB grain) as
/// they are, and compressed (zstd level 3 in 1 MiB frames, as the file channel sends).
fn floor_bytes(e: &Env, image: &str) -> (u64, u64) {
    let dir = e.golden_dir(image);
    let mut need: Vec<u8> = Vec::new();
    let keep = |buf: &[u8], need: &mut Vec<u8>| {
        for page in buf.chunks(4096) {
            if page.iter().any(|&b| b != 0) {
                need.extend_from_slice(page);
            }
        }
    };
    keep(&std::fs::read(dir.join(vm::MEM)).unwrap(), &mut need);
    let disk = std::fs::File::open(dir.join(vm::DISK)).unwrap();
    let size = disk.metadata().unwrap().len();
    for (off, len) in vm::working_set(size, e.spec.ws_pct, seed(image)) {
        let mut b = vec![0u8; len as usize];
        std::os::unix::fs::FileExt::read_exact_at(&disk, &mut b, off).unwrap();
        keep(&b, &mut need);
    }
    let comp: u64 = need
        .chunks(1 << 20)
        .map(|c| zstd::bulk::compress(c, 3).unwrap().len() as u64)
        .sum();
    (need.len() as u64, comp)
}

/// Prints the tables and, for the full profile, writes them into docs/.
fn report(
    e: &Env,
    out: &[Scenario],
    (runtime, chain_floor): (Option<[vm::Runtime; 4]>, Option<f64>),
    persist: Option<String>,
    profile: &str,
    total: f64,
) {
    let get = |name: &str| out.iter().find(|s| s.name == name).expect("scenario");
    let local = median(get("Local").times.clone());
    let wannfs = get("WAN-NFS").times[0];
    let scp = get("scp + local").times[0];
    let s1 = &get("WAN-S1").times;
    let cold = s1[0];
    let warm = median(s1[1..].to_vec());
    let mut md = String::new();
    md.push_str(&format!(
        "Profile `{profile}`: {} MiB memory state ({}% zero), {} MiB disk ({}% data), working set {}%, \
         redo log {} MiB; link {} ms RTT, {} Mbit/s; SSH compression {}. Whole suite: {:.0} s.\n\n",
        e.spec.mem_mib,
        e.spec.mem_zero_pct,
        e.spec.disk_mib,
        e.spec.disk_data_pct,
        e.spec.ws_pct,
        e.spec.redo_mib,
        e.link.one_way_delay.as_millis() * 2,
        e.link.rate_bits_per_sec.unwrap_or(0) / 1_000_000,
        if e.compression { "on" } else { "off" },
        total
    ));
    md.push_str(
        "| scenario | clones | first s | median s | max s | vs Local | vs WAN-NFS | vs scp |\n",
    );
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    for s in out {
        let m = median(s.times.clone());
        let max = s.times.iter().cloned().fold(0.0, f64::max);
        md.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2}× | {:.2}× | {:.2}× |\n",
            s.name,
            s.times.len(),
            s.times[0],
            m,
            max,
            m / local,
            m / wannfs,
            m / scp
        ));
    }
    md.push('\n');
    for s in out {
        let ts: Vec<String> = s.times.iter().map(|t| format!("{t:.2}")).collect();
        md.push_str(&format!("- {}: {} — {}\n", s.name, ts.join(", "), s.note));
    }
    let p_max = get("WAN-P").times.iter().cloned().fold(0.0, f64::max);
    let local_p = out
        .iter()
        .find(|s| s.name == "Local-P")
        .map(|s| s.times.iter().cloned().fold(0.0, f64::max));
    let s3 = median(get("WAN-S3").times.clone());
    let (raw, comp) = floor_bytes(e, "img0");
    let rate = e.link.rate_bits_per_sec.unwrap_or(1) as f64 / 8.0;
    let rtt = e.link.one_way_delay.as_secs_f64() * 2.0;
    let (floor_raw, floor_comp) = (
        raw as f64 / rate + 3.0 * rtt,
        comp as f64 / rate + 3.0 * rtt,
    );
    md.push_str(&format!(
        "\nPhysical floor of a cold clone of img0: it needs {:.1} MiB from the server (non-zero \
         pages of the memory state and of the disk's working set), {:.1} MiB compressed; over \
         the link plus 3 round trips that is {floor_raw:.2} s ({floor_comp:.2} s compressed). \
         The cold clone took {:.2}× the compressed floor ({:.2}× the raw one). The \
         target is judged against the compressed floor: gridvfs sends compressed frames, so \
         the raw one is not a floor for it.\n",
        raw as f64 / 1048576.0,
        comp as f64 / 1048576.0,
        cold / floor_comp,
        cold / floor_raw,
    ));
    md.push_str(&format!(
        "\nTargets: cold clone (S1 first) ≥ 20× faster than scp: {:.1}× ({}); \
         cold clone ≤ 1.3× the physical floor (compressed bytes): {:.2}× ({}); \
         warm clone (S1 median of the rest) ≤ 1.1× Local: {:.2}× ({}); \
         S3 ≤ 1.5× warm: {:.2}× ({}); WAN-P slowest ≤ 1.3× one cold clone: {:.2}× ({}).\n",
        scp / cold,
        verdict(scp / cold >= 20.0),
        cold / floor_comp,
        verdict(cold <= 1.3 * floor_comp),
        warm / local,
        verdict(warm / local <= 1.1),
        s3 / warm,
        verdict(s3 / warm <= 1.5),
        p_max / cold,
        verdict(p_max / cold <= 1.3),
    ));
    if let Some(lp) = local_p {
        md.push_str(&format!(
            "\nThe same N clones at once from local disk, with no gridvfs and no network \
             (Local-P), took {lp:.2} s for the slowest: {:.2}× one cold gridvfs clone, {:.2}× \
             the WAN-P target on this machine's {} cores (the paper ran its 8 clients on 8 \
             machines).\n",
            lp / cold,
            lp / (1.3 * cold),
            cores()
        ));
    }
    let lan = median(get("LAN-NFS").times.clone());
    md.push_str(&format!(
        "\nFor reference, the NFS path alone (LAN-NFS: the same clones straight to Ganesha on \
         loopback, no WAN, no proxy) took {:.2}× Local; the warm gridvfs clone took {:.2}× \
         LAN-NFS.\n",
        lan / local,
        warm / lan
    ));
    if let Some([l, w, n, g]) = runtime {
        let chain = chain_floor.map_or(String::new(), |c| {
            format!(
                " The warm build's chain floor — per object the five replies its client waits \
                 for in turn (LOOKUP and READ of the source, CREATE, WRITE, COMMIT), the \
                 CREATE's and the COMMIT's after a durable point, as NFSv3 requires of both, \
                 made by 8 threads with blocking connections of their own to the proxy's \
                 portmapper (NULLs it answers itself) and the durable points inline: \
                 {c:.3} s = **{:.2}×** Local's warm build.",
                c / l.build_warm
            )
        });
        md.push_str(&format!(
            "\nRuntime after cloning ({} MiB write-heavy file written, committed, read back; a \
             build-like tree of {} files of 4–16 KiB: sources written and read, an object \
             written for each, 8 at a time (8 threads locally, 8 NFS calls in flight over \
             NFS); the warm build reads the sources again and rewrites the objects, {} \
             times, median shown; LAN-NFS is the bench's client straight to Ganesha on \
             loopback, the NFS path's own cost):\n\n\
             | phase | Local s | WAN-NFS s | LAN-NFS s | gridvfs s | gridvfs vs Local | gridvfs vs WAN-NFS | LAN-NFS vs Local |\n\
             |---|---|---|---|---|---|---|---|\n",
            e.spec.runtime_mib, e.spec.build_files, e.spec.build_rounds
        ));
        for (name, a, b, d, c) in [
            (
                "write-heavy",
                l.write_heavy,
                w.write_heavy,
                n.write_heavy,
                g.write_heavy,
            ),
            (
                "build-like, cold",
                l.build_cold,
                w.build_cold,
                n.build_cold,
                g.build_cold,
            ),
            (
                "build-like, warm",
                l.build_warm,
                w.build_warm,
                n.build_warm,
                g.build_warm,
            ),
        ] {
            md.push_str(&format!(
                "| {name} | {a:.3} | {b:.3} | {d:.3} | {c:.3} | {:.2}× | {:.1}× faster | {:.2}× |\n",
                c / a,
                b / c,
                d / a
            ));
        }
        let rounds = |r: &vm::Runtime| {
            r.warm_rounds
                .iter()
                .map(|t| format!("{t:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        md.push_str(&format!(
            "\n- warm builds, s: Local {}; WAN-NFS {}; LAN-NFS {}; gridvfs {}{}\n",
            rounds(&l),
            rounds(&w),
            rounds(&n),
            rounds(&g),
            g.warm_syncs_per_file.zip(g.warm_wan_calls_per_file).map_or(
                String::new(),
                |(s, w)| format!(
                    " — per file, gridvfs's cache made {s:.1} fsync/fdatasync calls (Local: \
                     one fdatasync per object) and the client proxy sent {w:.2} calls over \
                     the WAN"
                )
            )
        ));
        md.push_str(&format!(
            "\nRuntime targets: write-heavy ≥ 5× faster than WAN-NFS: {:.1}× ({}); warm \
             build-like ≤ 1.05× Local: {:.2}× ({}).{chain}\n",
            w.write_heavy / g.write_heavy,
            verdict(w.write_heavy / g.write_heavy >= 5.0),
            g.build_warm / l.build_warm,
            verdict(g.build_warm / l.build_warm <= 1.05),
        ));
    }
    if let Some(p) = persist {
        md.push('\n');
        md.push_str(&p);
    }
    println!("\n{md}");
    // The full profile writes the report; GRIDVFS_SUITE_DOCS=DIR writes it elsewhere, and
    // GRIDVFS_SUITE_DOCS=0 (or empty) nowhere.
    match std::env::var("GRIDVFS_SUITE_DOCS") {
        Ok(dir) if dir.is_empty() || dir == "0" => {}
        Ok(dir) => write_docs(out, &md, Path::new(&dir)),
        Err(_) if profile == "full" => write_docs(
            out,
            &md,
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"),
        ),
        Err(_) => {}
    }
}

/// The command that reproduces this run: `scripts/bench.sh suite` with every
/// `GRIDVFS_SUITE_*` / `GRIDVFS_BENCH_*` knob that was set (not the lab's addresses).
fn command_line() -> String {
    let mut knobs: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("GRIDVFS_SUITE_") || k.starts_with("GRIDVFS_BENCH_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    knobs.sort();
    knobs.push("scripts/bench.sh suite".into());
    knobs.join(" ")
}

const BEGIN: &str = "<!-- suite:begin (written by benches/suite.rs) -->";
const END: &str = "<!-- suite:end -->";

/// Puts the tables between the suite markers of docs/benchmarks.md (appending the section
/// the first time) and draws docs/clone-times.svg.
fn write_docs(out: &[Scenario], md: &str, docs: &Path) {
    std::fs::create_dir_all(docs).unwrap();
    let path = docs.join("benchmarks.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let date = Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let section = format!(
        "{BEGIN}\nRun on {date}, commit `{commit}`, with `{}`.\n\n{md}\n\
         ![clone times per scenario](clone-times.svg)\n{END}",
        command_line()
    );
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if a < b => format!("{}{section}{}", &old[..a], &old[b + END.len()..]),
        _ => format!("{old}\n## VM cloning suite (issue 6)\n\n{section}\n"),
    };
    std::fs::write(&path, new).unwrap();
    plot(out, &docs.join("clone-times.svg"));
    println!("wrote {} and docs/clone-times.svg", path.display());
}

/// Clone times per scenario, one line each (like the paper's Figure 6).
fn plot(out: &[Scenario], path: &Path) {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let n = out.iter().map(|s| s.times.len()).max().unwrap_or(1);
    let top = out
        .iter()
        .flat_map(|s| s.times.iter().cloned())
        .fold(0.1f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("VM clone time per clone (log scale)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..(n as f64 + 0.5), (0.01f64..top * 1.5).log_scale())
        .unwrap();
    chart
        .configure_mesh()
        .x_desc("clone")
        .y_desc("seconds")
        .draw()
        .unwrap();
    for (i, s) in out.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = s
            .times
            .iter()
            .enumerate()
            .map(|(k, t)| (k as f64 + 1.0, t.max(0.01)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .unwrap()
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .unwrap();
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .unwrap();
    root.present().unwrap();
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}
