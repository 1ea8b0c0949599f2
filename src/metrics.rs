//! Counters: per-procedure call counts and the errors the front door answered itself.
//! Plain relaxed atomics (cheap on every RPC); read by logs, `status`, tests and benches.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::nfs3::Proc;

/// NFSv3 has procedures 0..=21.
const NFS_PROCS: usize = 22;

#[derive(Debug, Default)]
pub struct Metrics {
    /// NFSv3 calls received, by procedure number.
    pub nfs: [AtomicU64; NFS_PROCS],
    /// MOUNT calls received (all procedures).
    pub mount: AtomicU64,
    /// Portmapper calls answered locally.
    pub portmap: AtomicU64,
    /// Calls answered GARBAGE_ARGS, PROC_UNAVAIL, PROG_UNAVAIL/MISMATCH, RPC_MISMATCH.
    pub garbage_args: AtomicU64,
    /// Calls the server role refused (unissued handle, export not allowed, credential).
    pub refused: AtomicU64,
    pub proc_unavail: AtomicU64,
    pub prog_unavail: AtomicU64,
    pub rpc_mismatch: AtomicU64,
    /// Connections closed because a record was over `listen.max_record` or malformed.
    pub bad_records: AtomicU64,
    /// Client connections accepted.
    pub connections: AtomicU64,
    /// File channel (server role): fetches and stores served, file bytes sent and the
    /// bytes they took on the channel.
    pub file_fetches: AtomicU64,
    pub file_stores: AtomicU64,
    pub file_raw_bytes: AtomicU64,
    pub file_wire_bytes: AtomicU64,
}

impl Metrics {
    pub fn count_nfs(&self, p: Proc) {
        if let Some(c) = self.nfs.get(p.0 as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// `name=count` for every NFS procedure called at least once, for logs.
    pub fn nfs_summary(&self) -> String {
        let mut out = Vec::new();
        for (i, c) in self.nfs.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                out.push(format!("{}={n}", Proc(i as u32).name()));
            }
        }
        out.join(" ")
    }
}
