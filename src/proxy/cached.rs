//! The read cache in front of the next hop (write-through): READs whose bytes are all in
//! the block store, for a file whose size is known, are answered here; READ replies from
//! upstream fill the store; WRITEs and truncations invalidate what they change.
//!
//! Consistency rules (docs/cache-design.md, "Wiring"):
//! - a hit needs the file's size (latest `fattr3` seen in any reply), so EOF is exact;
//! - each file has a generation, bumped when a WRITE or a SETATTR(size) is forwarded; a
//!   fill carries the generation seen when its READ was forwarded and is dropped if it
//!   moved (a READ answered before the WRITE must not resurrect old bytes);
//! - a WRITE clears the blocks it touches before it is forwarded and again when its reply
//!   comes (with another generation move), so no fill captured while it was in flight
//!   survives; a SETATTR(size) clears the blocks between the old and the new size when its
//!   reply comes; any reply showing a file smaller than before clears its tail.
//!
//! Known limit (session consistency): changes made by *other* clients of the server are
//! not seen until the middleware flushes the cache; and a file truncated through this
//! proxy while its attributes were not remembered (65,536 files are) keeps stale blocks
//! past its end, which a later extension with a hole could expose.
//!
//! Every method here does blocking file I/O: call it from `spawn_blocking`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, BytesMut};
use tracing::warn;

use crate::cache::layout::Geometry;
use crate::cache::store::{CacheError, Put, Store};
use crate::config::{CacheConfig, Consistency};
use crate::nfs3::{self, Args, AttrMut, Fattr3, Ftype3, NfsResult, Proc, Res};
use crate::rpc::msg::accepted_reply;
use crate::rpc::{AcceptStat, CallHeader, ReplyKind, parse_reply};
use crate::xdr::{Encode, XdrWrite};

/// What the proxy remembers of a file.
#[derive(Debug, Clone, Default)]
struct FileState {
    attr: Option<Fattr3>,
    generation: u64,
    /// For eviction of the least recently used entries.
    used: u64,
}

/// Files remembered at most (a few hundred bytes each).
const MAX_FILES: usize = 65_536;

pub struct CacheLayer {
    store: Store,
    consistency: Consistency,
    /// Moves when the whole cache is dropped: part of every file's generation, so fills
    /// in flight at that moment are discarded.
    epoch: AtomicU64,
    bs: u64,
    files: Mutex<(HashMap<Vec<u8>, FileState>, u64)>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub fills: AtomicU64,
}

impl CacheLayer {
    pub fn open(cfg: &CacheConfig) -> Result<CacheLayer, CacheError> {
        let geo = Geometry::new(cfg.size, cfg.block_size, cfg.ways, cfg.banks)?;
        Ok(CacheLayer {
            store: Store::open(&cfg.dir, geo)?,
            consistency: cfg.consistency,
            epoch: AtomicU64::new(0),
            bs: cfg.block_size as u64,
            files: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            fills: AtomicU64::new(0),
        })
    }

    fn with_file<T>(&self, fh: &[u8], f: impl FnOnce(&mut FileState) -> T) -> T {
        let mut g = self.files.lock().expect("files lock");
        let (map, clock) = &mut *g;
        *clock += 1;
        let now = *clock;
        if map.len() >= MAX_FILES && !map.contains_key(fh) {
            // Forget the oldest eighth; a forgotten file only loses hits until its
            // attributes are seen again.
            let mut ages: Vec<u64> = map.values().map(|s| s.used).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 8];
            map.retain(|_, s| s.used > cut);
        }
        let st = map.entry(fh.to_vec()).or_default();
        st.used = now;
        f(st)
    }

    /// The generation to pass to `fill` for a READ about to be forwarded.
    pub fn generation(&self, fh: &[u8]) -> u64 {
        let epoch = self.epoch.load(Ordering::Relaxed);
        self.with_file(fh, |s| s.generation) ^ (epoch << 40)
    }

    /// Forgets every cached block (SIGUSR2, `flush --drop`). With the write-through cache
    /// there is nothing to write back first. Returns the number of blocks dropped.
    pub fn drop_all(&self) -> Result<u64, CacheError> {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        self.store.drop_clean()
    }

    /// Answers a READ from the store: the whole reply record (with `xid`), or None (a
    /// miss). The data is read from the bank files straight into the reply.
    pub fn read(&self, xid: u32, fh: &[u8], off: u64, count: u32) -> Option<BytesMut> {
        let attr = self.with_file(fh, |s| s.attr.clone())?;
        if attr.ftype != Ftype3::REG {
            return None;
        }
        let end = off.saturating_add(count as u64).min(attr.size);
        let n = end.saturating_sub(off) as usize;
        let mut out = accepted_reply(xid, AcceptStat::SUCCESS);
        out.reserve(n + 128);
        out.put_u32(nfs3::Nfsstat3::OK.0);
        out.put_xdr_bool(true);
        attr.encode(&mut out);
        out.put_u32(n as u32);
        out.put_xdr_bool(end >= attr.size);
        out.put_u32(n as u32);
        let mut pos = off;
        while pos < end {
            let block = pos / self.bs;
            let lo = (pos % self.bs) as u32;
            let hi = (end - block * self.bs).min(self.bs) as u32;
            match self.store.read_into(fh, block, lo..hi, &mut out) {
                Ok(true) => {}
                Ok(false) => return self.miss(),
                Err(e) => {
                    warn!(side = "cache", error = %e, "cache read failed; forwarding");
                    return self.miss();
                }
            }
            pos = block * self.bs + hi as u64;
        }
        out.put_bytes(0, crate::xdr::pad(n));
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(out)
    }

    fn miss(&self) -> Option<BytesMut> {
        self.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Before a WRITE or SETATTR(size) is forwarded: move the file's generation, and
    /// clear the blocks a WRITE will change.
    pub fn before_change(&self, call: &[u8]) {
        let Some((p, args_at)) = nfs_call(call) else {
            return;
        };
        let Ok(args) = Args::decode(p, &call[args_at..]) else {
            return;
        };
        match args {
            Args::Write(w) => {
                self.with_file(w.file.0, |s| s.generation += 1);
                let last = w.offset.saturating_add(w.count.max(1) as u64 - 1) / self.bs;
                self.invalidate(w.file.0, w.offset / self.bs, last);
            }
            Args::Setattr(a) if a.new_attributes.size.is_some() => {
                self.with_file(a.object.0, |s| s.generation += 1);
            }
            _ => {}
        }
    }

    /// Learns from a forwarded call's reply: attributes of every file it mentions, READ
    /// data (if the file's generation is still `generation`), truncations.
    pub fn observe(&self, call: &[u8], reply: &[u8], generation: u64) {
        let Some((p, args_at)) = nfs_call(call) else {
            return;
        };
        let Ok((_, ReplyKind::Accepted { stat, results_at })) = parse_reply(reply) else {
            return;
        };
        if stat != AcceptStat::SUCCESS {
            return;
        }
        let (Ok(args), Ok(mut res)) = (
            Args::decode(p, &call[args_at..]),
            Res::decode(p, &reply[results_at..]),
        ) else {
            return;
        };
        // The size before a truncation, from the SETATTR reply's wcc or what we knew.
        let mut old_size = None;
        if let (Args::Setattr(a), Res::Setattr(NfsResult::Ok(ok))) = (&args, &res) {
            old_size = ok
                .obj_wcc
                .before
                .as_ref()
                .map(|b| b.size)
                .or_else(|| self.with_file(a.object.0, |s| s.attr.as_ref().map(|a| a.size)));
        }
        // Files seen to shrink (a truncating CREATE, another SETATTR, a REMOVE and
        // re-create with the same handle): their cached bytes past the new end go. With
        // `consistency = "attributes"`, a file changed behind our back (size or mtime
        // differ, in the reply to anything but our own WRITE/SETATTR) loses all of them.
        let own_change = matches!(p, Proc::WRITE | Proc::SETATTR | Proc::COMMIT);
        let revalidate = self.consistency == Consistency::Attributes && !own_change;
        let mut stale = Vec::new();
        res.for_each_attr_mut(&args, |fh, a| {
            if let (Some(fh), AttrMut::Post(f)) = (fh, a) {
                let f = f.clone();
                let before = self.with_file(fh.0, |s| s.attr.replace(f.clone()));
                if let Some(b) = before {
                    if revalidate && (f.mtime != b.mtime || f.size != b.size) {
                        stale.push((fh.0.to_vec(), 0, b.size.max(f.size)));
                    } else if f.size < b.size {
                        stale.push((fh.0.to_vec(), f.size, b.size));
                    }
                }
            }
        });
        for (fh, from, to) in stale {
            self.with_file(&fh, |s| s.generation += 1);
            self.invalidate(&fh, from / self.bs, to / self.bs);
        }
        match (&args, &res) {
            (Args::Write(_), _) => {
                // A READ of these bytes answered by the server before this WRITE may have
                // filled them meanwhile: clear again, and drop fills still in flight.
                self.before_change(call);
            }
            (Args::Read(r), Res::Read(NfsResult::Ok(ok)))
                if self.generation(r.file.0) == generation =>
            {
                self.fill(r.file.0, r.offset, ok.data);
            }
            (Args::Setattr(a), Res::Setattr(NfsResult::Ok(_))) => {
                // Either way: shrinking drops the tail; growing must read zeros where
                // stale bytes of an earlier, longer life of the file may be cached.
                if let (Some(new), Some(old)) = (a.new_attributes.size, old_size) {
                    self.invalidate(a.object.0, new.min(old) / self.bs, new.max(old) / self.bs);
                }
            }
            _ => {}
        }
    }

    fn fill(&self, fh: &[u8], off: u64, data: &[u8]) {
        let mut pos = off;
        let Some(end) = off.checked_add(data.len() as u64) else {
            return; // past 2^64: nothing a real file holds
        };
        while pos < end {
            let block = pos / self.bs;
            let lo = pos - block * self.bs;
            let n = (self.bs - lo).min(end - pos);
            let bytes = &data[(pos - off) as usize..(pos - off + n) as usize];
            match self.store.put(fh, block, lo as u32, bytes, false) {
                Ok(Put::Stored { .. }) => {
                    self.fills.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) | Err(CacheError::SetFull) => {}
                Err(e) => warn!(side = "cache", error = %e, "cache fill failed"),
            }
            pos += n;
        }
    }

    fn invalidate(&self, fh: &[u8], from: u64, to: u64) {
        if let Err(e) = self.store.invalidate_range(fh, from, to) {
            warn!(side = "cache", error = %e, "cache invalidation failed");
        }
    }
}

/// What a forwarded call's completion hands to `observe`: the cache, the call, and the
/// file's generation when the call was forwarded.
pub type Observe = (std::sync::Arc<CacheLayer>, bytes::Bytes, u64);

/// What to do with an NFS call before forwarding it.
pub enum Before {
    /// Answered from the cache: the whole reply record.
    Hit(BytesMut),
    /// Forward it; `generation` goes to `observe` with the reply.
    Forward { generation: u64 },
}

/// Tries a READ on the cache; prepares WRITE/SETATTR (invalidation). Runs the file I/O
/// on the blocking pool.
pub async fn before_forward(
    cache: &std::sync::Arc<CacheLayer>,
    p: Proc,
    call: &bytes::Bytes,
) -> Before {
    let c = cache.clone();
    let call = call.clone();
    let r = tokio::task::spawn_blocking(move || {
        let (_, args_at) = nfs_call(&call)?;
        match p {
            Proc::READ => {
                let Ok(Args::Read(a)) = Args::decode(p, &call[args_at..]) else {
                    return None;
                };
                let generation = c.generation(a.file.0);
                let xid = u32::from_be_bytes(call[..4].try_into().expect("xid"));
                match c.read(xid, a.file.0, a.offset, a.count) {
                    Some(reply) => Some(Before::Hit(reply)),
                    None => Some(Before::Forward { generation }),
                }
            }
            Proc::WRITE | Proc::SETATTR => {
                c.before_change(&call);
                None
            }
            _ => None,
        }
    })
    .await;
    r.ok()
        .flatten()
        .unwrap_or(Before::Forward { generation: 0 })
}

/// (procedure, offset of the arguments) of an NFSv3 call record.
fn nfs_call(call: &[u8]) -> Option<(Proc, usize)> {
    let h = CallHeader::parse(call).ok()?;
    (h.prog == nfs3::PROGRAM && h.vers == nfs3::VERSION).then_some((Proc(h.proc_), h.args_at))
}
