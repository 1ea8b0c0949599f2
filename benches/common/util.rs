//! Small helpers shared by the bench targets: knobs from the environment, medians.
#![allow(dead_code)]

use std::net::SocketAddr;

/// A numeric knob (`GRIDVFS_BENCH_*`), or its default.
pub fn env_u64(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An address from the lab's environment (`GRIDVFS_LAB_NFS`, ...).
pub fn env_addr(k: &str) -> SocketAddr {
    std::env::var(k)
        .unwrap_or_else(|_| panic!("{k} not set: run via scripts/bench.sh"))
        .parse()
        .unwrap()
}

/// Median of the samples; NaN for none (a measurement skipped with size 0).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let k = v.len() / 2;
    if v.len() % 2 == 1 {
        v[k]
    } else {
        (v[k - 1] + v[k]) / 2.0
    }
}

/// CPU time (user + system, seconds) used by processes while a scenario runs: the
/// bench itself (its NFS clients, WAN relays and digests), the proxies and Ganesha.
pub struct CpuMeter {
    start: Vec<(u32, f64)>,
}

impl CpuMeter {
    /// Starts counting for `pids` (the bench's own process is always counted).
    pub fn start(pids: &[u32]) -> CpuMeter {
        let mut all = vec![std::process::id()];
        all.extend_from_slice(pids);
        if let Ok(dir) = std::env::var("GRIDVFS_LAB_DIR")
            && let Ok(p) = std::fs::read_to_string(format!("{dir}/ganesha.pid"))
            && let Ok(p) = p.trim().parse()
        {
            all.push(p);
        }
        CpuMeter {
            start: all.into_iter().map(|p| (p, cpu_secs(p))).collect(),
        }
    }

    /// CPU seconds used since `start`.
    pub fn used(&self) -> f64 {
        self.start.iter().map(|&(p, t0)| cpu_secs(p) - t0).sum()
    }
}

/// CPU seconds (user + system) process `pid` has used so far (/proc/PID/stat); 0 if gone.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3, utime 14 and stime 15.
    let rest = s.rfind(')').map_or("", |i| &s[i + 2..]);
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(14 - 3) + ticks(15 - 3)) as f64 / hz
}

/// Busy CPU seconds of the whole machine so far, all cores (/proc/stat's `cpu` line:
/// user, nice, system, irq and softirq; guest time is already in user, and steal is
/// time the host gave to others).
pub fn machine_busy_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(7)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq
    let busy: u64 = f
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != 3 && i != 4)
        .map(|(_, v)| v)
        .sum();
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    busy as f64 / hz
}

/// Cores this machine has.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A step of a file's chain in `chain_floor`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// One RPC round trip: a portmapper NULL the proxy answers itself.
    Reply,
    /// A durable point of a 128-byte record (a truncation, a created name): rewritten in
    /// place, then fdatasync.
    Record,
    /// A durable point of the file's bytes (a COMMIT): rewritten in place, then fdatasync.
    Data,
}

/// The floor of a build's chain of waits through any NFS server: `sizes.len()` files, by
/// `jobs` threads taking the next file each, every file a chain of `steps` in turn (a
/// client waits for each reply before its next call; a server makes a durable point
/// before the reply that needs it). Each thread makes the round trips as portmapper NULLs
/// that the proxy at `proxy` answers itself, over a blocking connection of its own, and
/// the durable points itself, inline, in 16 files in `dir` written in full first (no
/// allocation later): no server work, no queue, no hand-off between threads. Seconds.
pub fn chain_floor(
    proxy: SocketAddr,
    dir: &std::path::Path,
    sizes: &[usize],
    jobs: usize,
    steps: &[Step],
) -> f64 {
    use std::io::{Read, Write};
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let slot = sizes.iter().copied().max().unwrap_or(0).max(128) as u64;
    let per_file = sizes.len().div_ceil(16) as u64;
    // The records' slot (128 bytes a file), then a slot per file.
    let data_at = (per_file * 128).div_ceil(slot) * slot;
    let files = written_files(dir, 16, data_at + per_file * slot);
    // A portmapper NULL (program 100000, version 2, procedure 0), as one record.
    let msg = gridvfs::rpc::msg::call_message(1, 100_000, 2, 0, &[]);
    let mut null = gridvfs::rpc::record::mark(msg.len()).unwrap().to_vec();
    null.extend_from_slice(&msg);
    let next = AtomicUsize::new(0);
    let t = std::time::Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..jobs.max(1) {
            sc.spawn(|| {
                let mut s = std::net::TcpStream::connect(proxy).unwrap();
                s.set_nodelay(true).unwrap();
                let (record, data) = ([2u8; 128], vec![3u8; slot as usize]);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= sizes.len() {
                        return;
                    }
                    let (f, at) = (&files[i % 16], (i / 16) as u64);
                    for step in steps {
                        match step {
                            Step::Reply => {
                                s.write_all(&null).unwrap();
                                let mut mark = [0u8; 4];
                                s.read_exact(&mut mark).unwrap();
                                let n = u32::from_be_bytes(mark) & 0x7fff_ffff;
                                let mut body = vec![0u8; n as usize];
                                s.read_exact(&mut body).unwrap();
                            }
                            Step::Record => {
                                f.write_all_at(&record, at * 128).unwrap();
                                f.sync_data().unwrap();
                            }
                            Step::Data => {
                                f.write_all_at(&data[..sizes[i]], data_at + at * slot)
                                    .unwrap();
                                f.sync_data().unwrap();
                            }
                        }
                    }
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(dir);
    secs
}

/// `n` files `bank0`.. in `dir`, each `len` bytes written in full and synced (so that later
/// rewrites in place allocate nothing), open for reading and writing.
pub fn written_files(dir: &std::path::Path, n: usize, len: u64) -> Vec<std::fs::File> {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(dir.join(format!("bank{i}")))
                .unwrap();
            f.write_all_at(&vec![1u8; len as usize], 0).unwrap();
            f.sync_all().unwrap();
            f
        })
        .collect()
}
