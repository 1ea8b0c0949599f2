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
    v[v.len() / 2]
}
