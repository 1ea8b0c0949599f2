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
