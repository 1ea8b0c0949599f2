//! Write-back cache benchmarks of issue 3, each against a baseline measured in the same run:
//!
//! 1. **write-heavy over a WAN** (paper: SPECseis phase 1): create a `GRIDVFS_BENCH_MIB`
//!    (512) MiB file with pipelined 1 MiB WRITE UNSTABLE (16 in flight, like the kernel
//!    client with wsize=1M) + COMMIT, then read it back (1 MiB READs, 16 in flight) —
//!    through a write-back gridvfs whose next hop is the WAN emulator in front of Ganesha,
//!    vs directly to Ganesha through the same emulator. The write-back (`gridvfs flush`)
//!    is timed separately afterwards, then the file on Ganesha's disk is compared byte for
//!    byte with what was written.
//! 2. **warm re-read** of a `GRIDVFS_BENCH_WS_MIB` (1024) MiB working set: through the proxy
//!    from its cache vs a `read(2)` loop over the same bytes in a local file, both with the
//!    page cache dropped before the pass (root) and both with it warm; beside them the same
//!    client straight to Ganesha on loopback (LAN-NFS, no WAN, no proxy), the NFS path alone,
//!    and the floor of any server reached over a socket: the same bytes through a loopback
//!    TCP connection between two threads.
//! 3. **build-like tree**: `GRIDVFS_BENCH_TREE_FILES` (2000) files of 1–64 KiB in
//!    `GRIDVFS_BENCH_TREE_DIRS` (40) directories: CREATE, WRITE, COMMIT each, then LOOKUP,
//!    GETATTR, READ each, by `GRIDVFS_BENCH_TREE_JOBS` (8) workers over one connection
//!    (like `make -j8` on one mount); run twice (the second run finds the tree and the
//!    cache warm, and truncates each file with SETATTR(size 0) on the handle it knows, as
//!    the Linux client does for `open(O_TRUNC)`; `GRIDVFS_BENCH_TREE_TRUNC=create` sends
//!    CREATE UNCHECKED with size 0 instead) — through the write-back proxy over the WAN vs the same operations with
//!    std::fs on a local directory (create + write + fdatasync, then stat + read). The NFS
//!    calls the proxy forwards over the WAN are counted per procedure, and run 2's CPU
//!    (proxy, bench client, the machine). Floors: the same number of calls, on one
//!    connection with the same workers, as portmapper NULLs that the proxy answers
//!    itself (what the round trips alone cost); as many fdatasyncs as the cache made; and
//!    the chain floor, run 2's serial waits as any NFS server leaves them (six replies
//!    per file in turn, two after a durable point done inline; see `chain_floor`).
//! 4. **proxy RSS**: VmHWM of the proxy after each scenario (one proxy for all of them,
//!    cache of `GRIDVFS_BENCH_CACHE_GIB` (4) GiB).
//!
//! WAN: 20 ms each way (40 ms RTT), `GRIDVFS_BENCH_WAN_MBIT` (100) Mbit/s shared by all
//! connections. Every figure is a median of `GRIDVFS_BENCH_ROUNDS` (3) rounds. Every byte
//! read back, and every byte on Ganesha's disk after a flush, is checked: a wrong byte
//! fails the benchmark. Other knobs: `GRIDVFS_BENCH_BLOCK_KIB` (256, cache block),
//! `GRIDVFS_BENCH_DROP_CACHES=0` (scenario 2 without the dropped-page-cache passes),
//! `GRIDVFS_BENCH_WRITE_POLICY` (`write-back`; empty = leave the key out),
//! `GRIDVFS_BENCH_METADATA` (`session`, or `forward`: every LOOKUP/GETATTR asks the next hop),
//! `GRIDVFS_BENCH_TREE_DIRECT_ROUNDS` (1: rounds of scenario 3 directly over the WAN, for
//! reference), `GRIDVFS_BENCH_SCENARIOS` (`1,2,3`). Needs the lab and root:
//! `scripts/bench.sh writeback`.

#[path = "common/nfs.rs"]
mod nfs;
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/util.rs"]
mod util;
#[path = "common/wan.rs"]
mod wan;

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nfs::{Client, seq_read};
use proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use util::{env_addr, env_u64, median};

const IO: u32 = 1 << 20;
const WINDOW: usize = 16;
const MIB: u64 = 1 << 20;
/// Largest file of the build-like tree; also the READ count used for it.
const TREE_MAX: usize = 64 << 10;

// ---------------------------------------------------------------------------------------
// Deterministic, incompressible, position-dependent content: the 8-byte word at file offset
// 8k of the file with seed s is mix(s, k). A block written to or read from the wrong
// offset, or another file's block, never compares equal.

fn mix(seed: u64, k: u64) -> u64 {
    let mut z = seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Bytes `[off, off + len)` of the file with this seed (`off` a multiple of 8).
fn content(seed: u64, off: u64, len: usize) -> Vec<u8> {
    assert_eq!(off % 8, 0);
    let mut v = Vec::with_capacity(len.div_ceil(8) * 8);
    for k in 0..len.div_ceil(8) as u64 {
        v.extend_from_slice(&mix(seed, off / 8 + k).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A whole file's content in 1 MiB pieces.
fn chunks(seed: u64, len: u64) -> Arc<Vec<Bytes>> {
    Arc::new(
        (0..len.div_ceil(MIB))
            .map(|i| Bytes::from(content(seed, i * MIB, MIB.min(len - i * MIB) as usize)))
            .collect(),
    )
}

/// Panics unless the file at `p` holds exactly `data`.
fn check_file(p: &Path, data: &[Bytes]) {
    let want: u64 = data.iter().map(|c| c.len() as u64).sum();
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let got = f.metadata().unwrap().len();
    assert_eq!(got, want, "{}: size on the server", p.display());
    let mut buf = vec![0u8; MIB as usize];
    for (i, c) in data.iter().enumerate() {
        f.read_exact(&mut buf[..c.len()]).unwrap();
        assert!(
            buf[..c.len()] == c[..],
            "{}: bytes on the server differ from what was written in MiB {i}",
            p.display()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Environment and helpers.

/// `sync` + drop the page cache (root). False if not permitted.
fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Removes the benchmark's files on every exit path, panics included.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Runs `f(0..n)` with `jobs` workers pulling the next index; results in index order.
async fn par<T, F, Fut>(n: usize, jobs: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..jobs.clamp(1, n.max(1)) {
        let (f, next) = (f.clone(), next.clone());
        set.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return out;
                }
                out.push((i, f(i).await));
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        all.extend(r.unwrap());
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, t)| t).collect()
}

async fn connect(nfs: SocketAddr, mount: SocketAddr, export: &str) -> (Client, Vec<u8>) {
    let m = Client::connect(mount).await.unwrap();
    let root = m.mnt(export).await;
    (Client::connect(nfs).await.unwrap(), root)
}

/// `gridvfs flush --socket S` (waits until everything is written back): seconds and the
/// final JSON line.
async fn flush(socket: &Path) -> (f64, serde_json::Value) {
    let t = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gridvfs"))
        .args(["flush", "--socket"])
        .arg(socket)
        .output()
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gridvfs flush failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or("{}");
    (secs, serde_json::from_str(last).unwrap_or_default())
}

async fn status(socket: &Path) -> serde_json::Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gridvfs"))
        .args(["status", "--socket"])
        .arg(socket)
        .output()
        .await
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// A relay between the proxy and the WAN emulator that counts the NFS calls going over the
// WAN, by procedure (it reads the RPC call header of every record; records are forwarded
// whole). Adds a loopback hop (~0.1 ms) to the proxy's path, noise next to a 40 ms RTT.

const NFS_PROCS: [&str; 22] = [
    "NULL",
    "GETATTR",
    "SETATTR",
    "LOOKUP",
    "ACCESS",
    "READLINK",
    "READ",
    "WRITE",
    "CREATE",
    "MKDIR",
    "SYMLINK",
    "MKNOD",
    "REMOVE",
    "RMDIR",
    "RENAME",
    "LINK",
    "READDIR",
    "READDIRPLUS",
    "FSSTAT",
    "FSINFO",
    "PATHCONF",
    "COMMIT",
];

type Counts = [u64; 22];

struct RpcCounter {
    addr: SocketAddr,
    counts: Arc<[AtomicU64; 22]>,
    task: tokio::task::JoinHandle<()>,
}

impl RpcCounter {
    async fn start(upstream: SocketAddr) -> RpcCounter {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let counts: Arc<[AtomicU64; 22]> = Arc::new(Default::default());
        let c = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut crd, mut cwr) = client.into_split();
                    let (mut srd, mut swr) = server.into_split();
                    let up = async move {
                        let mut first = true;
                        loop {
                            let mut hdr = [0u8; 4];
                            crd.read_exact(&mut hdr).await?;
                            let mark = u32::from_be_bytes(hdr);
                            let mut body = vec![0u8; (mark & 0x7fff_ffff) as usize];
                            crd.read_exact(&mut body).await?;
                            if first && body.len() >= 24 {
                                let w = |i: usize| {
                                    u32::from_be_bytes(body[i..i + 4].try_into().unwrap())
                                };
                                if w(12) == nfs::NFS && (w(20) as usize) < 22 {
                                    c[w(20) as usize].fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            first = mark & 0x8000_0000 != 0;
                            swr.write_all(&hdr).await?;
                            swr.write_all(&body).await?;
                        }
                        #[allow(unreachable_code)]
                        Ok::<(), std::io::Error>(())
                    };
                    let down = async move {
                        tokio::io::copy(&mut srd, &mut cwr).await?;
                        cwr.shutdown().await
                    };
                    let _ = tokio::try_join!(up, down);
                });
            }
        });
        RpcCounter { addr, counts, task }
    }

    fn snapshot(&self) -> Counts {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

impl Drop for RpcCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// "LOOKUP 1.00, CREATE 1.00, ..." per file, for the procedures that moved.
fn per_file(before: &Counts, after: &Counts, files: usize) -> (f64, String) {
    let mut total = 0u64;
    let mut parts = Vec::new();
    for i in 0..22 {
        let d = after[i] - before[i];
        if d > 0 {
            total += d;
            parts.push(format!("{} {:.2}", NFS_PROCS[i], d as f64 / files as f64));
        }
    }
    (total as f64 / files as f64, parts.join(", "))
}

// ---------------------------------------------------------------------------------------
// Scenario 1: create a big file with pipelined UNSTABLE WRITEs + COMMIT, read it back.

/// Returns (seconds to create+write+commit, seconds to read back). Every reply checked.
async fn write_then_read(c: &Client, dir: &[u8], name: &str, data: Arc<Vec<Bytes>>) -> (f64, f64) {
    let t0 = Instant::now();
    let fh = Arc::new(c.create(dir, name).await);
    let mut set = JoinSet::new();
    let mut verfs = Vec::new();
    let mut i = 0;
    loop {
        while set.len() < WINDOW && i < data.len() {
            let (c, fh, data) = (c.clone(), fh.clone(), data.clone());
            set.spawn(async move { c.write(&fh, i as u64 * MIB, &data[i]).await });
            i += 1;
        }
        match set.join_next().await {
            Some(v) => verfs.push(v.unwrap()),
            None => break,
        }
    }
    let cv = c.commit_verf(&fh).await;
    // A client re-sends every WRITE whose verifier differs from COMMIT's: a change here
    // would mean the proxy lost data.
    assert!(
        verfs.iter().all(|v| *v == cv),
        "{name}: write verifier changed"
    );
    let tw = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut i = 0;
    loop {
        while set.len() < WINDOW && i < data.len() {
            let (c, fh, data) = (c.clone(), fh.clone(), data.clone());
            set.spawn(async move {
                let (got, _) = c.read_data(&fh, i as u64 * MIB, IO).await;
                assert!(
                    got == data[i],
                    "{i}: READ returned other bytes than written"
                );
                cv
            });
            i += 1;
        }
        if set.join_next().await.is_none() {
            break;
        }
    }
    let tr = t1.elapsed().as_secs_f64();
    let len: u64 = data.iter().map(|c| c.len() as u64).sum();
    let (n, eof) = c.read_data(&fh, len, IO).await;
    assert!(
        n.is_empty() && eof,
        "{name}: no EOF at the end of what was written"
    );
    (tw, tr)
}

// ---------------------------------------------------------------------------------------
// Scenario 3: the build-like tree.

#[derive(Clone)]
struct Tree {
    name: String,
    dirs: usize,
    files: usize,
    seed: u64,
}

impl Tree {
    fn dir(&self, i: usize) -> String {
        format!("d{:02}", i % self.dirs)
    }
    fn file(&self, i: usize) -> String {
        format!("f{i:05}.o")
    }
    /// Size (1 byte .. 64 KiB, different each run so truncation shows) and content seed.
    fn spec(&self, run: u64, i: usize) -> (usize, u64) {
        let s = mix(
            self.seed ^ run.wrapping_mul(0x1234_5678_9abc_def1),
            i as u64,
        );
        (1 + (s % TREE_MAX as u64) as usize, s)
    }
    fn data(&self, run: u64, i: usize) -> Vec<u8> {
        let (len, seed) = self.spec(run, i);
        content(seed, 0, len)
    }
}

/// One run of the tree over NFS; seconds and the files' handles. With `known` (the
/// handles of an earlier run, like a client's dentry cache) and `trunc_by_create` false,
/// an existing file is truncated with SETATTR(size 0) — what the Linux client sends for
/// `open(O_TRUNC)` on a file it knows — instead of CREATE UNCHECKED with size 0.
async fn tree_nfs(
    c: &Client,
    parent: &[u8],
    tree: &Tree,
    run: u64,
    jobs: usize,
    known: Option<Arc<Vec<Vec<u8>>>>,
    trunc_by_create: bool,
) -> (f64, Arc<Vec<Vec<u8>>>) {
    let t = Instant::now();
    let root = Arc::new(c.mkdir(parent, &tree.name).await);
    let (cc, tr) = (c.clone(), tree.clone());
    let dirs = Arc::new(
        par(tree.dirs, jobs, move |d| {
            let (c, root, tr) = (cc.clone(), root.clone(), tr.clone());
            async move { c.mkdir(&root, &tr.dir(d)).await }
        })
        .await,
    );
    let t_dirs = t.elapsed().as_secs_f64();
    let (cc, tr, dd) = (c.clone(), tree.clone(), dirs.clone());
    let known = known.filter(|_| !trunc_by_create);
    let handles = Arc::new(
        par(tree.files, jobs, move |i| {
            let (c, tr, dirs, known) = (cc.clone(), tr.clone(), dd.clone(), known.clone());
            async move {
                let data = tr.data(run, i);
                let fh = match &known {
                    Some(k) => {
                        c.set_size(&k[i], 0).await;
                        k[i].clone()
                    }
                    None => c.create(&dirs[i % tr.dirs], &tr.file(i)).await,
                };
                let v = c.write(&fh, 0, &data).await;
                assert_eq!(c.commit_verf(&fh).await, v, "write verifier changed");
                fh
            }
        })
        .await,
    );
    let t_write = t.elapsed().as_secs_f64();
    let (cc, tr) = (c.clone(), tree.clone());
    par(tree.files, jobs, move |i| {
        let (c, tr, dirs) = (cc.clone(), tr.clone(), dirs.clone());
        async move {
            let want = tr.data(run, i);
            let name = tr.file(i);
            let fh = c.lookup(&dirs[i % tr.dirs], &name).await.expect("LOOKUP");
            let size = c.getattr(&fh).await;
            assert_eq!(
                size,
                want.len() as u64,
                "{name}: size in GETATTR (run {run})"
            );
            let (got, eof) = c.read_data(&fh, 0, TREE_MAX as u32).await;
            assert!(
                eof && got[..] == want[..],
                "{name}: READ returned other bytes (run {run})"
            );
        }
    })
    .await;
    let total = t.elapsed().as_secs_f64();
    eprintln!(
        "    {} run {run}: directories {t_dirs:.2} s, create/write/commit {:.2} s, lookup/getattr/read {:.2} s",
        tree.name,
        t_write - t_dirs,
        total - t_write
    );
    (total, handles)
}

/// The same run on a local directory with std::fs (COMMIT = fdatasync); seconds.
fn tree_local(base: &Path, tree: &Tree, run: u64, jobs: usize) -> f64 {
    let t = Instant::now();
    let root = base.join(&tree.name);
    for d in 0..tree.dirs {
        std::fs::create_dir_all(root.join(tree.dir(d))).unwrap();
    }
    let path = |i: usize| root.join(tree.dir(i)).join(tree.file(i));
    let phase = |f: &(dyn Fn(usize) + Sync)| {
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..jobs.max(1) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= tree.files {
                            return;
                        }
                        f(i);
                    }
                });
            }
        });
    };
    phase(&|i| {
        let mut f = std::fs::File::create(path(i)).unwrap();
        f.write_all(&tree.data(run, i)).unwrap();
        f.sync_data().unwrap();
    });
    phase(&|i| {
        let want = tree.data(run, i);
        assert_eq!(std::fs::metadata(path(i)).unwrap().len(), want.len() as u64);
        assert!(
            std::fs::read(path(i)).unwrap() == want,
            "local read differs"
        );
    });
    t.elapsed().as_secs_f64()
}

/// Panics unless the tree on disk under `base` holds run `run`'s content (naming the
/// first few files that differ, and how many do).
fn check_tree(base: &Path, tree: &Tree, run: u64) {
    let mut bad = Vec::new();
    for i in 0..tree.files {
        let p = base.join(&tree.name).join(tree.dir(i)).join(tree.file(i));
        let got = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let want = tree.data(run, i);
        if got != want {
            bad.push(format!(
                "{}: {} bytes, written {} (the written bytes are {}a prefix)",
                p.display(),
                got.len(),
                want.len(),
                if got.starts_with(&want) { "" } else { "not " }
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} files on the server differ from what was written, e.g.\n{}",
        bad.len(),
        tree.files,
        bad[..bad.len().min(5)].join("\n")
    );
}

// ---------------------------------------------------------------------------------------

/// Seconds to read `len` bytes of `fh` sequentially (1 MiB calls, `WINDOW` in flight).
async fn timed_seq_read(c: &Client, fh: &[u8], len: u64) -> f64 {
    let t = Instant::now();
    assert_eq!(seq_read(c, fh, len, IO, WINDOW).await, len);
    t.elapsed().as_secs_f64()
}

/// The floor of scenario 3 through any user-space NFS server on this machine: the calls
/// of one tree run (MKDIR of the root and each directory, then per file three calls,
/// then three more), with the same workers on the same connection, made as portmapper
/// NULLs that the proxy answers itself — no upstream, no cache, no file system. Seconds.
async fn rpc_floor(c: &Client, tree: &Tree, jobs: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..=tree.dirs {
        c.pmap_null().await;
    }
    for _phase in 0..2 {
        let cc = c.clone();
        par(tree.files, jobs, move |_| {
            let c = cc.clone();
            async move {
                for _ in 0..3 {
                    c.pmap_null().await;
                }
            }
        })
        .await;
    }
    t.elapsed().as_secs_f64()
}

/// The floor of the cache's durable points in scenario 3 on this disk: `n` fdatasyncs,
/// each after rewriting 4 KiB in place in one of 16 preallocated 1 MiB files (like the
/// cache's bank files), by `jobs` threads at once. Seconds.
fn sync_floor(base: &Path, n: usize, jobs: usize) -> f64 {
    use std::os::unix::fs::FileExt;
    let dir = base.join("sync-floor");
    let files = util::written_files(&dir, 16, MIB);
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                let block = [7u8; 4096];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let f = &files[i % files.len()];
                    f.write_all_at(&block, (i as u64 * 4096) % MIB).unwrap();
                    f.sync_data().unwrap();
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    secs
}

/// The chain floor of run 2 (see `util::chain_floor`): per file SETATTR(size 0) after a
/// durable record (a client does not replay a truncation after a server restart, so one
/// lost in a crash would leave the old bytes past the new data), WRITE, COMMIT after the
/// file's bytes are durable, then LOOKUP, GETATTR, READ. Seconds.
fn chain_floor(proxy: SocketAddr, base: &Path, tree: &Tree, run: u64, jobs: usize) -> f64 {
    use util::Step::{Data, Record, Reply};
    let sizes: Vec<usize> = (0..tree.files).map(|i| tree.spec(run, i).0).collect();
    util::chain_floor(
        proxy,
        &base.join("chain-floor"),
        &sizes,
        jobs,
        &[Record, Reply, Reply, Data, Reply, Reply, Reply, Reply],
    )
}

/// The floor of scenario 2 through any NFS server reached over a socket: `mib` MiB sent
/// in 1 MiB writes over a loopback TCP connection between two threads and read into a
/// 1 MiB buffer (one copy into the kernel, one out; no RPC, no file). Seconds.
fn loopback_floor(mib: u64) -> f64 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let sender = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let buf = vec![0x5au8; IO as usize];
        for _ in 0..mib {
            s.write_all(&buf).unwrap();
        }
    });
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut buf = vec![0u8; IO as usize];
    let t = Instant::now();
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    sender.join().unwrap();
    assert_eq!(got, mib * MIB);
    secs
}

fn local_read(p: &Path) -> f64 {
    let t = Instant::now();
    let mut f = std::fs::File::open(p).unwrap();
    let mut buf = vec![0u8; IO as usize];
    while f.read(&mut buf).unwrap() > 0 {}
    t.elapsed().as_secs_f64()
}

fn kib_to_mib(k: u64) -> f64 {
    k as f64 / 1024.0
}

#[tokio::main]
async fn main() {
    let nfs_addr = env_addr("GRIDVFS_LAB_NFS");
    let mount_addr = env_addr("GRIDVFS_LAB_MOUNT");
    let export = std::env::var("GRIDVFS_LAB_EXPORT").unwrap_or("/export".into());
    let export_dir =
        PathBuf::from(std::env::var("GRIDVFS_LAB_EXPORT_DIR").expect("GRIDVFS_LAB_EXPORT_DIR"));
    let mib = env_u64("GRIDVFS_BENCH_MIB", 512);
    let ws_mib = env_u64("GRIDVFS_BENCH_WS_MIB", 1024);
    let files = env_u64("GRIDVFS_BENCH_TREE_FILES", 2000) as usize;
    let ndirs = env_u64("GRIDVFS_BENCH_TREE_DIRS", 40) as usize;
    let jobs = env_u64("GRIDVFS_BENCH_TREE_JOBS", 8) as usize;
    let direct_tree_rounds = env_u64("GRIDVFS_BENCH_TREE_DIRECT_ROUNDS", 1) as usize;
    let rounds = env_u64("GRIDVFS_BENCH_ROUNDS", 3).max(1) as usize;
    let mbit = env_u64("GRIDVFS_BENCH_WAN_MBIT", 100);
    let cache_gib = env_u64("GRIDVFS_BENCH_CACHE_GIB", 4);
    let block_kib = env_u64("GRIDVFS_BENCH_BLOCK_KIB", 256);
    let policy = std::env::var("GRIDVFS_BENCH_WRITE_POLICY").unwrap_or("write-back".into());
    let by_create = std::env::var("GRIDVFS_BENCH_TREE_TRUNC").as_deref() == Ok("create");
    let metadata = std::env::var("GRIDVFS_BENCH_METADATA").unwrap_or("session".into());
    let scenarios = std::env::var("GRIDVFS_BENCH_SCENARIOS").unwrap_or("1,2,3".into());
    let on = |n: &str| scenarios.split(',').any(|s| s.trim() == n);

    let name = format!("bench-wb-{}", std::process::id());
    let dir = export_dir.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let local_base = tempfile::tempdir_in("/tmp").unwrap();
    let _cleanup = Cleanup(vec![dir.clone()]);

    let cfg = wan::WanConfig {
        one_way_delay: Duration::from_millis(20),
        rate_bits_per_sec: Some(mbit * 1_000_000),
    };
    let (wan_nfs, wan_mount) = wan::start_pair(nfs_addr, mount_addr, cfg).await.unwrap();
    let (wn, wm) = (wan_nfs.local_addr(), wan_mount.local_addr());
    let counter = RpcCounter::start(wn).await;

    // One write-back proxy for every scenario (cache and socket dirs dropped after it).
    let cache_dir = tempfile::tempdir_in("/tmp").unwrap();
    let sock_dir = tempfile::tempdir().unwrap();
    let socket = sock_dir.path().join("control.sock");
    let policy_line = if policy.is_empty() {
        String::new()
    } else {
        format!("write_policy = \"{policy}\"\n")
    };
    let proxy = Proxy::start(
        counter.addr,
        wm,
        &format!(
            "[cache]\ndir = \"{}\"\nsize = \"{cache_gib}GiB\"\nblock_size = \"{block_kib}KiB\"\n\
             ways = 16\nbanks = 16\nmetadata = \"{metadata}\"\n{policy_line}[control]\nsocket = \"{}\"\n",
            cache_dir.path().display(),
            socket.display()
        ),
    );
    eprintln!(
        "gridvfs pid {} (cache {cache_gib} GiB, {block_kib} KiB blocks, write_policy {:?}), WAN {mbit} Mbit/s 40 ms RTT, {rounds} rounds",
        proxy.pid(),
        policy
    );
    let mut out = vec![
        format!(
            "WAN emulator: 40 ms RTT, {mbit} Mbit/s shared link. gridvfs: cache {cache_gib} GiB on local disk, \
             {block_kib} KiB blocks, 16-way, 16 banks, metadata = {metadata}, write_policy = {}. Medians of {rounds} rounds.",
            if policy.is_empty() {
                "(default)"
            } else {
                &policy
            }
        ),
        String::new(),
    ];
    let mut rss = Vec::new();

    let (pc, proot) = connect(proxy.addr, proxy.addr, &export).await;
    let pdir = pc.lookup(&proot, &name).await.expect("bench dir via proxy");

    // ---- 1. write-heavy over the WAN ----
    if on("1") && mib > 0 {
        let len = mib * MIB;
        let (mut dw, mut dr, mut pw, mut pr, mut fl) = (vec![], vec![], vec![], vec![], vec![]);
        let mut before_flush = Vec::new();
        for r in 0..rounds as u64 {
            let data = chunks(0x5eed_0000 + r, len);
            eprintln!(
                "[1] round {}/{rounds}: direct over WAN ({mib} MiB)...",
                r + 1
            );
            // A fresh connection each time: Ganesha closes connections idle for minutes.
            let (dc, droot) = connect(wn, wm, &export).await;
            let ddir = dc.lookup(&droot, &name).await.expect("bench dir direct");
            let f = format!("direct-{r}.bin");
            let (w, rd) = write_then_read(&dc, &ddir, &f, data.clone()).await;
            check_file(&dir.join(&f), &data);
            eprintln!("    write {w:.2} s, read {rd:.2} s");
            dw.push(w);
            dr.push(rd);

            let data = chunks(0x0b5e_0000 + r, len);
            let f = format!("wb-{r}.bin");
            eprintln!("[1] round {}/{rounds}: gridvfs write-back...", r + 1);
            let (w, rd) = write_then_read(&pc, &pdir, &f, data.clone()).await;
            let on_server = std::fs::metadata(dir.join(&f)).map_or(0, |m| m.len());
            let dirty = status(&socket).await["cache"]["dirty_bytes"]
                .as_u64()
                .unwrap_or(0);
            let (secs, reply) = flush(&socket).await;
            check_file(&dir.join(&f), &data);
            eprintln!(
                "    write {w:.2} s, read {rd:.2} s; before flush: {:.1} MiB on the server, {:.1} MiB dirty; \
                 flush {secs:.2} s ({reply}); server file byte-equal",
                on_server as f64 / MIB as f64,
                dirty as f64 / MIB as f64
            );
            pw.push(w);
            pr.push(rd);
            fl.push(secs);
            before_flush.push(on_server);
        }
        let (dw, dr, pw, pr, fl) = (median(dw), median(dr), median(pw), median(pr), median(fl));
        let (ds, ps) = (dw + dr, pw + pr);
        let tput = |s: f64| mib as f64 / s;
        out.extend([
            format!("### 1. Write-heavy: create a {mib} MiB file (1 MiB WRITE UNSTABLE, {WINDOW} in flight, + COMMIT), read it back"),
            String::new(),
            "| phase | direct NFS over WAN | gridvfs write-back over WAN | speed-up (direct / gridvfs) | target |".into(),
            "|---|---|---|---|---|".into(),
            format!("| create + write + COMMIT | {dw:.2} s ({:.1} MiB/s) | {pw:.2} s ({:.0} MiB/s) | {:.1}× | |", tput(dw), tput(pw), dw / pw),
            format!("| read back | {dr:.2} s ({:.1} MiB/s) | {pr:.2} s ({:.0} MiB/s) | {:.1}× | |", tput(dr), tput(pr), dr / pr),
            format!("| **session (write + read)** | {ds:.2} s | {ps:.2} s | **{:.1}×** | ≥ 5× |", ds / ps),
            format!("| write-back afterwards (`gridvfs flush`) | – | {fl:.2} s ({:.1} MiB/s) | | not in the session |", tput(fl)),
            format!("| session + write-back | {ds:.2} s | {:.2} s | {:.2}× | |", ps + fl, ds / (ps + fl)),
            String::new(),
            format!(
                "On Ganesha before the flush: {} MiB of {mib} (per round); after it, the file on Ganesha's disk is byte-equal to what was written (checked every round).",
                before_flush.iter().map(|b| format!("{:.0}", *b as f64 / MIB as f64)).collect::<Vec<_>>().join(", ")
            ),
            String::new(),
        ]);
        rss.push(("1 write-heavy", proxy.rss_peak_kib()));
    }

    // ---- 2. warm re-read of a working set vs local disk ----
    if on("2") && ws_mib > 0 {
        let len = ws_mib * MIB;
        let seed = 0x3e7_0000;
        let f = dir.join("ws.bin");
        {
            let mut w =
                std::io::BufWriter::with_capacity(IO as usize, std::fs::File::create(&f).unwrap());
            for i in 0..ws_mib {
                w.write_all(&content(seed, i * MIB, MIB as usize)).unwrap();
            }
            w.into_inner().unwrap().sync_all().unwrap();
        }
        let fh = Arc::new(pc.lookup(&pdir, "ws.bin").await.expect("ws.bin"));
        eprintln!("[2] filling the cache: {ws_mib} MiB over the WAN through gridvfs...");
        let t = Instant::now();
        let (c, fh2) = (pc.clone(), fh.clone());
        par(ws_mib as usize, WINDOW, move |i| {
            let (c, fh) = (c.clone(), fh2.clone());
            async move {
                let (got, _) = c.read_data(&fh, i as u64 * MIB, IO).await;
                assert!(
                    got[..] == content(seed, i as u64 * MIB, MIB as usize)[..],
                    "cold READ {i} differs"
                );
            }
        })
        .await;
        let cold = t.elapsed().as_secs_f64();
        eprintln!("    cold {cold:.2} s");
        let can_drop =
            std::env::var("GRIDVFS_BENCH_DROP_CACHES").as_deref() != Ok("0") && drop_caches();
        if !can_drop {
            eprintln!(
                "    page cache not dropped (GRIDVFS_BENCH_DROP_CACHES=0, or not root): only the warm comparison"
            );
        }
        // The NFS path alone: the same client straight to Ganesha on loopback (no WAN, no
        // proxy), reading the same file from Ganesha's page cache or disk.
        let (nc, nroot) = connect(nfs_addr, mount_addr, &export).await;
        let ndir = nc
            .lookup(&nroot, &name)
            .await
            .expect("bench dir on Ganesha");
        let nfh = nc.lookup(&ndir, "ws.bin").await.expect("ws.bin on Ganesha");
        eprintln!("[2] timed passes...");
        let (mut ld, mut pd, mut lw, mut pw) = (vec![], vec![], vec![], vec![]);
        let (mut nd, mut nw, mut fw) = (vec![], vec![], vec![]);
        for r in 0..rounds {
            fw.push(loopback_floor(ws_mib));
            if can_drop {
                drop_caches();
                ld.push(local_read(&f));
            }
            lw.push(local_read(&f));
            // Through the proxy, then straight to Ganesha: page cache dropped, then warm.
            for (c, fh, dropped, warm) in
                [(&pc, &*fh, &mut pd, &mut pw), (&nc, &nfh, &mut nd, &mut nw)]
            {
                if can_drop {
                    drop_caches();
                    dropped.push(timed_seq_read(c, fh, len).await);
                }
                warm.push(timed_seq_read(c, fh, len).await);
            }
            eprintln!(
                "[2] round {}/{rounds}: dropped local {:.3} s proxy {:.3} s LAN-NFS {:.3} s; warm local {:.3} s proxy {:.3} s LAN-NFS {:.3} s; loopback TCP floor {:.3} s",
                r + 1,
                ld.last().unwrap_or(&f64::NAN),
                pd.last().unwrap_or(&f64::NAN),
                nd.last().unwrap_or(&f64::NAN),
                lw.last().unwrap(),
                pw.last().unwrap(),
                nw.last().unwrap(),
                fw.last().unwrap()
            );
        }
        // One more pass through the proxy, untimed, checking every byte of the hits.
        let (c, fh2) = (pc.clone(), fh.clone());
        par(ws_mib as usize, WINDOW, move |i| {
            let (c, fh) = (c.clone(), fh2.clone());
            async move {
                let (got, _) = c.read_data(&fh, i as u64 * MIB, IO).await;
                assert!(
                    got[..] == content(seed, i as u64 * MIB, MIB as usize)[..],
                    "warm READ {i} differs"
                );
            }
        })
        .await;
        let tput = |s: f64| ws_mib as f64 / s;
        let (ld, pd, lw, pw) = (median(ld), median(pd), median(lw), median(pw));
        let (nd, nw, fw) = (median(nd), median(nw), median(fw));
        out.extend([
            format!("### 2. Warm re-read of a {ws_mib} MiB working set (1 MiB READs, {WINDOW} in flight) vs a local `read(2)` loop"),
            String::new(),
            "| page cache before each pass | local disk | gridvfs, all hits | gridvfs / local | target | LAN-NFS (Ganesha on loopback, no proxy) | LAN-NFS / local |".into(),
            "|---|---|---|---|---|---|---|".into(),
            format!("| dropped (`echo 3 > drop_caches`) | {ld:.3} s ({:.0} MiB/s) | {pd:.3} s ({:.0} MiB/s) | **{:.2}×** | ≤ 1.1× | {nd:.3} s ({:.0} MiB/s) | {:.2}× |", tput(ld), tput(pd), pd / ld, tput(nd), nd / ld),
            format!("| warm | {lw:.3} s ({:.0} MiB/s) | {pw:.3} s ({:.0} MiB/s) | **{:.2}×** | ≤ 1.1× | {nw:.3} s ({:.0} MiB/s) | {:.2}× |", tput(lw), tput(pw), pw / lw, tput(nw), nw / lw),
            String::new(),
            format!("Floor: the same {ws_mib} MiB in 1 MiB writes over a loopback TCP connection between two threads (no RPC, no file; any NFS server reached over a socket moves at least this) took {fw:.3} s ({:.0} MiB/s) = **{:.2}×** the warm local read, {:.2}× the dropped one.", tput(fw), fw / lw, fw / ld),
            String::new(),
            format!("Filling the cache (first read over the WAN, every byte checked): {cold:.1} s ({:.1} MiB/s). A last pass through the proxy checked every byte of the hits.", tput(cold)),
            String::new(),
        ]);
        rss.push(("2 warm re-read", proxy.rss_peak_kib()));
    }

    // ---- 3. build-like tree ----
    if on("3") && files > 0 {
        let (mut l1, mut l2, mut p1, mut p2, mut fl) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut lan1, mut lan2, mut floor) = (vec![], vec![], vec![]);
        let mut wan_calls = (String::new(), String::new(), 0.0, 0.0);
        let mut cache_syncs = (0.0, 0.0);
        let mut sync_floors: Vec<(f64, f64)> = Vec::new();
        // Run 2's CPU: the proxy's, the bench's (the NFS client), and the share of both
        // cores the machine was busy, in CPU-seconds.
        let mut run2_cpu: Vec<(f64, f64, f64)> = Vec::new();
        let mut chain_floors = Vec::new();
        let tree_bytes: u64 = {
            let t = Tree {
                name: String::new(),
                dirs: ndirs,
                files,
                seed: 0,
            };
            (0..files).map(|i| t.spec(1, i).0 as u64).sum()
        };
        for r in 0..rounds as u64 {
            let tree = |who: &str| Tree {
                name: format!("tree-{who}-{r}"),
                dirs: ndirs,
                files,
                seed: 0x7ee0_0000 + r,
            };
            let lt = tree("local");
            let a = tree_local(local_base.path(), &lt, 1, jobs);
            let b = tree_local(local_base.path(), &lt, 2, jobs);
            let _ = std::fs::remove_dir_all(local_base.path().join(&lt.name));
            let pt = tree("wb");
            let syncs = async || {
                status(&socket).await["cache"]["syncs"]
                    .as_u64()
                    .unwrap_or(0)
            };
            let (c0, f0) = (counter.snapshot(), syncs().await);
            let (x, fhs) = tree_nfs(&pc, &pdir, &pt, 1, jobs, None, by_create).await;
            let (c1, f1) = (counter.snapshot(), syncs().await);
            let me = std::process::id();
            let cpu0 = (
                util::cpu_secs(proxy.pid()),
                util::cpu_secs(me),
                util::machine_busy_secs(),
            );
            let (y, _) = tree_nfs(&pc, &pdir, &pt, 2, jobs, Some(fhs), by_create).await;
            run2_cpu.push((
                util::cpu_secs(proxy.pid()) - cpu0.0,
                util::cpu_secs(me) - cpu0.1,
                util::machine_busy_secs() - cpu0.2,
            ));
            let (c2, f2) = (counter.snapshot(), syncs().await);
            cache_syncs = (
                (f1 - f0) as f64 / files as f64,
                (f2 - f1) as f64 / files as f64,
            );
            let (secs, reply) = flush(&socket).await;
            check_tree(&dir, &pt, 2);
            // The NFS path alone: the same client straight to Ganesha on loopback.
            let nt = tree("lan");
            let (nc, nroot) = connect(nfs_addr, mount_addr, &export).await;
            let ndir = nc
                .lookup(&nroot, &name)
                .await
                .expect("bench dir on Ganesha");
            let (u, fhs) = tree_nfs(&nc, &ndir, &nt, 1, jobs, None, by_create).await;
            let (v, _) = tree_nfs(&nc, &ndir, &nt, 2, jobs, Some(fhs), by_create).await;
            check_tree(&dir, &nt, 2);
            lan1.push(u);
            lan2.push(v);
            let f = rpc_floor(&pc, &nt, jobs).await;
            floor.push(f);
            let (paddr, lbase, ltree) = (proxy.addr, local_base.path().to_path_buf(), lt.clone());
            let cf =
                tokio::task::spawn_blocking(move || chain_floor(paddr, &lbase, &ltree, 2, jobs))
                    .await
                    .unwrap();
            chain_floors.push(cf);
            // As many durable points as the cache made in run 2, and as local run 2 made.
            let n2_syncs = (cache_syncs.1 * files as f64).round() as usize;
            let (sf, sl) = (
                sync_floor(local_base.path(), n2_syncs, jobs),
                sync_floor(local_base.path(), files, jobs),
            );
            sync_floors.push((sf, sl));
            let (n1, s1) = per_file(&c0, &c1, files);
            let (n2, s2) = per_file(&c1, &c2, files);
            let (cp, cb, cm) = run2_cpu.last().copied().unwrap_or_default();
            eprintln!(
                "[3] round {}/{rounds}: local {a:.2} s / {b:.2} s; gridvfs {x:.2} s / {y:.2} s; LAN-NFS {u:.2} s / {v:.2} s; RPC floor {f:.3} s; sync floor {sf:.3} s (local's count {sl:.3} s); chain floor {cf:.3} s; \
                 flush {secs:.2} s ({reply}); server tree byte-equal\n    WAN calls per file: run 1 {n1:.2} ({s1}); run 2 {n2:.2} ({s2})\n    \
                 run 2 CPU: proxy {cp:.2} s, bench client {cb:.2} s, machine busy {cm:.2} of {:.2} CPU-s ({} cores)",
                r + 1,
                y * util::cores() as f64,
                util::cores()
            );
            wan_calls = (s1, s2, n1, n2);
            l1.push(a);
            l2.push(b);
            p1.push(x);
            p2.push(y);
            fl.push(secs);
        }
        let (mut d1, mut d2) = (vec![], vec![]);
        for r in 0..direct_tree_rounds as u64 {
            // A fresh connection: Ganesha closes connections idle for minutes.
            let (dc, droot) = connect(wn, wm, &export).await;
            let ddir = dc.lookup(&droot, &name).await.expect("bench dir direct");
            let t = Tree {
                name: format!("tree-direct-{r}"),
                dirs: ndirs,
                files,
                seed: 0xd1e0_0000 + r,
            };
            eprintln!("[3] direct over WAN {}/{direct_tree_rounds}...", r + 1);
            let (a, fhs) = tree_nfs(&dc, &ddir, &t, 1, jobs, None, by_create).await;
            let (b, _) = tree_nfs(&dc, &ddir, &t, 2, jobs, Some(fhs), by_create).await;
            d1.push(a);
            d2.push(b);
            check_tree(&dir, &t, 2);
            eprintln!(
                "    {:.2} s / {:.2} s",
                d1.last().unwrap(),
                d2.last().unwrap()
            );
        }
        let (l1, l2, p1, p2, fl, d1, d2) = (
            median(l1),
            median(l2),
            median(p1),
            median(p2),
            median(fl),
            median(d1),
            median(d2),
        );
        let (lan1, lan2, floor) = (median(lan1), median(lan2), median(floor));
        let chain = median(chain_floors);
        let (sfl, sll) = (
            median(sync_floors.iter().map(|s| s.0).collect()),
            median(sync_floors.iter().map(|s| s.1).collect()),
        );
        let rtt = 0.040;
        let (cpu_proxy, cpu_bench, cpu_busy) = (
            median(run2_cpu.iter().map(|c| c.0).collect()),
            median(run2_cpu.iter().map(|c| c.1).collect()),
            median(run2_cpu.iter().map(|c| c.2).collect()),
        );
        let cores = util::cores();
        out.extend([
            format!(
                "### 3. Build-like tree: {files} files of 1 B–64 KiB ({:.1} MiB) in {ndirs} directories, {jobs} workers on one connection",
                tree_bytes as f64 / MIB as f64
            ),
            String::new(),
            "Each run: MKDIR (or LOOKUP) the directories; CREATE + WRITE + COMMIT every file; then LOOKUP + GETATTR + READ every file (contents and sizes checked). Run 2 rewrites the same files with new sizes and contents, truncating each with SETATTR(size 0) on the handle from run 1 (what the Linux client sends for `open(O_TRUNC)` of a file it knows) instead of CREATE. Local: `File::create` + `write_all` + `sync_data`, then `metadata` + `read`.".into(),
            String::new(),
            format!("| run | local dir (std::fs) | gridvfs write-back over WAN | gridvfs / local | target | direct NFS over WAN ({direct_tree_rounds} round) | direct / local | LAN-NFS (Ganesha on loopback, no proxy) | LAN-NFS / local |"),
            "|---|---|---|---|---|---|---|---|---|".into(),
            format!("| 1 (new tree) | {l1:.3} s | {p1:.2} s | **{:.1}×** | | {d1:.2} s | {:.1}× | {lan1:.3} s | {:.1}× |", p1 / l1, d1 / l1, lan1 / l1),
            format!("| 2 (warm) | {l2:.3} s | {p2:.2} s | **{:.1}×** | ≤ 1.05× | {d2:.2} s | {:.1}× | {lan2:.3} s | {:.1}× |", p2 / l2, d2 / l2, lan2 / l2),
            format!("| write-back afterwards (`gridvfs flush`) | | {fl:.2} s | | | | | | |"),
            String::new(),
            format!(
                "Floor: the calls of one run ({} MKDIRs, then 3 + 3 per file, {jobs} workers, one connection) as portmapper NULLs that gridvfs answers itself \
                 (no upstream, no cache, no file) took {floor:.3} s = **{:.2}×** local run 2: what the round trips alone cost through a user-space server here.",
                ndirs + 1,
                floor / l2
            ),
            String::new(),
            format!(
                "Disk floor: as many fdatasyncs as the cache made in run 2 ({:.2} per file: the truncation made durable before SETATTR's reply, as NFS requires, and the COMMIT), \
                 each after a 4 KiB in-place rewrite in one of 16 preallocated files, {jobs} threads: {sfl:.3} s = **{:.2}×** local run 2; \
                 local's own count (one per file) the same way: {sll:.3} s = {:.2}×. RPC floor plus disk floor: {:.2}× local run 2.",
                cache_syncs.1,
                sfl / l2,
                sll / l2,
                (floor + sfl) / l2
            ),
            String::new(),
            format!(
                "Chain floor: run 2 as its client must wait for it through any NFS server — per file six replies in turn, two of them after a durable point \
                 (the truncation, which a client does not replay after a server restart, and COMMIT's data) — made by {jobs} threads, each with a blocking connection \
                 of its own to gridvfs's portmapper (NULLs it answers itself) and the two durable points done inline (a 128-byte record, then the file's bytes, \
                 rewritten in place in preallocated files, then fdatasync): {chain:.3} s = **{:.2}×** local run 2.",
                chain / l2
            ),
            String::new(),
            format!(
                "NFS calls the proxy sent over the WAN per file (last round): run 1 {:.2} ({}); run 2 {:.2} ({}). \
                 At 40 ms RTT and {jobs} calls in flight that is ≥ {:.1} s / {:.1} s per run from round trips alone. \
                 fdatasyncs of the cache's bank files per file (last round): run 1 {:.2}, run 2 {:.2} (local: one `sync_data` per file).",
                wan_calls.2, wan_calls.0, wan_calls.3, wan_calls.1,
                wan_calls.2 * files as f64 * rtt / jobs as f64,
                wan_calls.3 * files as f64 * rtt / jobs as f64,
                cache_syncs.0,
                cache_syncs.1
            ),
            String::new(),
            format!(
                "CPU in run 2 (medians): the proxy {cpu_proxy:.2} CPU-s, the bench's NFS client {cpu_bench:.2} CPU-s; the machine was busy {cpu_busy:.2} CPU-s, \
                 {:.0}% of its {cores} cores over run 2's {p2:.2} s.",
                100.0 * cpu_busy / (p2 * cores as f64)
            ),
            String::new(),
        ]);
        rss.push(("3 build tree", proxy.rss_peak_kib()));
    }

    // ---- 4. RSS ----
    let peak = rss.iter().map(|(_, k)| *k).max().unwrap_or(0);
    out.push(format!(
        "### 4. Proxy peak RSS (VmHWM), cache of {cache_gib} GiB"
    ));
    out.push(String::new());
    out.push("| after scenario | VmHWM | target |".into());
    out.push("|---|---|---|".into());
    for (s, k) in &rss {
        out.push(format!("| {s} | {:.1} MiB | < 128 MiB |", kib_to_mib(*k)));
    }
    out.push(format!(
        "| **peak** | **{:.1} MiB** | < 128 MiB |",
        kib_to_mib(peak)
    ));
    let out = out.join("\n");
    println!("{out}");
    let rdir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&rdir).unwrap();
    std::fs::write(rdir.join("writeback.md"), format!("{out}\n")).unwrap();
    drop(proxy);
}
