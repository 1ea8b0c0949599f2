//! The read cache in front of the next hop (write-through): READs whose bytes are all in
//! the block store, for a file whose size is known, are answered here; READ replies from
//! upstream fill the store; WRITEs and truncations invalidate what they change.
//!
//! Consistency rules (docs/cache-design.md, "Wiring"):
//! - a hit needs the file's size (latest `fattr3` seen), so EOF is exact;
//! - a global change clock ticks on every change to a file (WRITE or SETATTR(size)
//!   forwarded or answered, a file seen to shrink or to change behind our back, a drop
//!   of the cache); every forwarded call takes a stamp of the clock; what its reply
//!   teaches (attributes, READ data) is used only if the file has not changed since the
//!   stamp. Files the table forgot count as changed at the newest forgotten change;
//! - a WRITE clears the blocks it touches and the file's size before it is forwarded,
//!   and again when its reply comes; a SETATTR(size) clears the blocks between the old
//!   and new size (or everything past the new size when the old one is unknown);
//! - changes, fills and their clock checks run under one lock, so a fill cannot slip in
//!   between an invalidation and its clock tick;
//! - the reply to a forwarded call goes to the client only after its reply was observed
//!   (conn.rs), so a client never sees a WRITE acknowledged while stale bytes remain.
//!
//! Known limits: cache hits skip the server's permission check (the proxy serves one
//! user session, paper §3); changes made by other clients are seen only in
//! `consistency = "attributes"` mode, and only through attributes that pass the proxy.
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
    /// Clock value of the file's last change.
    changed_at: u64,
    /// For eviction of the least recently used entries.
    used: u64,
}

/// Files remembered at most (a few hundred bytes each).
const MAX_FILES: usize = 65_536;

#[derive(Default)]
struct Files {
    map: HashMap<Vec<u8>, FileState>,
    /// Use counter for eviction.
    tick: u64,
    /// The newest `changed_at` among forgotten files: a file not in `map` counts as
    /// changed then.
    forgotten: u64,
}

pub struct CacheLayer {
    store: Store,
    consistency: Consistency,
    bs: u64,
    /// The change clock; stamps are its values.
    clock: AtomicU64,
    files: Mutex<Files>,
    /// Held by changes and fills with their clock checks.
    mutate: Mutex<()>,
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
            bs: cfg.block_size as u64,
            clock: AtomicU64::new(1),
            files: Mutex::default(),
            mutate: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            fills: AtomicU64::new(0),
        })
    }

    /// Closes the store cleanly (at exit), so the next start finds it warm.
    pub fn close(&self) -> Result<(), CacheError> {
        self.store.close()
    }

    /// A stamp for a call about to be forwarded.
    pub fn stamp(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn with_file<T>(&self, fh: &[u8], f: impl FnOnce(&mut FileState) -> T) -> T {
        let mut g = self.files.lock().expect("files lock");
        let files = &mut *g;
        files.tick += 1;
        let now = files.tick;
        if files.map.len() >= MAX_FILES && !files.map.contains_key(fh) {
            // Forget the least recently used eighth; remember their newest change.
            let mut ages: Vec<u64> = files.map.values().map(|s| s.used).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 8];
            let mut forgotten = files.forgotten;
            files.map.retain(|_, s| {
                let keep = s.used > cut;
                if !keep {
                    forgotten = forgotten.max(s.changed_at);
                }
                keep
            });
            files.forgotten = forgotten;
        }
        let forgotten = files.forgotten;
        let st = files.map.entry(fh.to_vec()).or_insert_with(|| FileState {
            changed_at: forgotten,
            ..FileState::default()
        });
        st.used = now;
        f(st)
    }

    /// Records a change to a file: its attributes are no longer trusted (unless `attr`
    /// is given) and replies stamped before now teach nothing about it. Call with
    /// `mutate` held.
    fn changed(&self, fh: &[u8], attr: Option<Fattr3>) {
        let t = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        self.with_file(fh, |s| {
            s.changed_at = t;
            s.attr = attr;
        });
    }

    fn unchanged_since(&self, fh: &[u8], stamp: u64) -> bool {
        self.with_file(fh, |s| s.changed_at <= stamp)
    }

    /// Forgets every cached block and every remembered file (SIGUSR2). With the
    /// write-through cache there is nothing to write back first. Returns the number of
    /// blocks dropped.
    pub fn drop_all(&self) -> Result<u64, CacheError> {
        let _m = self.mutate.lock().expect("mutate lock");
        let t = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut f = self.files.lock().expect("files lock");
            f.map.clear();
            f.forgotten = t;
        }
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

    /// Before a WRITE or SETATTR(size) is forwarded: a change (the file's size is not
    /// trusted until a reply shows it again), and the blocks a WRITE will touch go.
    pub fn before_change(&self, call: &[u8]) {
        let Some((p, args_at)) = nfs_call(call) else {
            return;
        };
        let Ok(args) = Args::decode(p, &call[args_at..]) else {
            return;
        };
        let _m = self.mutate.lock().expect("mutate lock");
        match args {
            Args::Write(w) => {
                self.changed(w.file.0, None);
                let last = w.offset.saturating_add(w.count.max(1) as u64 - 1) / self.bs;
                self.invalidate(w.file.0, w.offset / self.bs, last);
            }
            Args::Setattr(a) if a.new_attributes.size.is_some() => {
                self.changed(a.object.0, None);
            }
            _ => {}
        }
    }

    /// Learns from a forwarded call's reply, for a call stamped `stamp`: attributes of
    /// the files it mentions, READ data, truncations, changes behind our back.
    pub fn observe(&self, call: &[u8], reply: &[u8], stamp: u64) {
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
        let _m = self.mutate.lock().expect("mutate lock");
        let own_change = matches!(p, Proc::WRITE | Proc::SETATTR | Proc::COMMIT);
        let attributes_mode = self.consistency == Consistency::Attributes;
        // (file, first block, last block) to invalidate after the walk.
        let mut stale: Vec<(Vec<u8>, u64, u64)> = Vec::new();
        let mut learned: Vec<(Vec<u8>, Fattr3)> = Vec::new();
        let mut pre: Vec<(Vec<u8>, u64, nfs3::Nfstime3)> = Vec::new();
        res.for_each_attr_mut(&args, |fh, a| match (fh, a) {
            (Some(fh), AttrMut::Post(f)) => learned.push((fh.0.to_vec(), f.clone())),
            (Some(fh), AttrMut::Pre(w)) => pre.push((fh.0.to_vec(), w.size, w.mtime)),
            _ => {}
        });
        // Another client's change shows in the "before" of our own change's reply.
        if attributes_mode {
            for (fh, size, mtime) in pre {
                let known = self.with_file(&fh, |s| s.attr.clone());
                if let Some(k) = known
                    && (k.size != size || k.mtime != mtime)
                {
                    stale.push((fh, 0, k.size.max(size) / self.bs));
                }
            }
        }
        for (fh, f) in learned {
            if !self.unchanged_since(&fh, stamp) {
                continue; // stamped before a change: these attributes may be older
            }
            let before = self.with_file(&fh, |s| s.attr.replace(f.clone()));
            let Some(b) = before else { continue };
            if attributes_mode && !own_change && (f.mtime != b.mtime || f.size != b.size) {
                stale.push((fh, 0, b.size.max(f.size) / self.bs));
            } else if f.size < b.size {
                stale.push((fh, f.size / self.bs, b.size / self.bs));
            }
        }
        match (&args, &res) {
            (Args::Write(w), _) => {
                // A READ of these bytes answered before this WRITE may have filled them
                // meanwhile: clear again, as another change (the size just learned stays).
                let attr = self.with_file(w.file.0, |s| s.attr.clone());
                self.changed(w.file.0, attr);
                let last = w.offset.saturating_add(w.count.max(1) as u64 - 1) / self.bs;
                self.invalidate(w.file.0, w.offset / self.bs, last);
            }
            (Args::Read(r), Res::Read(NfsResult::Ok(ok)))
                if self.unchanged_since(r.file.0, stamp) =>
            {
                self.fill(r.file.0, r.offset, ok.data);
            }
            (Args::Setattr(a), Res::Setattr(NfsResult::Ok(ok))) => {
                if let Some(new) = a.new_attributes.size {
                    let attr = self.with_file(a.object.0, |s| s.attr.clone());
                    self.changed(a.object.0, attr);
                    // Shrinking drops the tail; growing must read zeros where bytes of
                    // an earlier, longer life of the file may be cached. Old size
                    // unknown: everything past the new size goes.
                    let old = ok.obj_wcc.before.as_ref().map(|b| b.size);
                    let (from, to) = match old {
                        Some(old) => (new.min(old) / self.bs, new.max(old) / self.bs),
                        None => (new / self.bs, u64::MAX / self.bs),
                    };
                    stale.push((a.object.0.to_vec(), from, to));
                }
            }
            _ => {}
        }
        for (fh, from, to) in stale {
            let attr = self.with_file(&fh, |s| s.attr.clone());
            self.changed(&fh, attr);
            self.invalidate(&fh, from, to);
        }
    }

    fn fill(&self, fh: &[u8], off: u64, data: &[u8]) {
        let Some(end) = off.checked_add(data.len() as u64) else {
            return; // past 2^64: nothing a real file holds
        };
        let mut pos = off;
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
/// stamp taken when the call was forwarded.
pub type Observe = (std::sync::Arc<CacheLayer>, bytes::Bytes, u64);

/// What to do with an NFS call before forwarding it.
pub enum Before {
    /// Answered from the cache: the whole reply record.
    Hit(BytesMut),
    /// Forward it; `stamp` goes to `observe` with the reply.
    Forward { stamp: u64 },
}

/// Tries a READ on the cache; prepares WRITE/SETATTR (invalidation); stamps the call.
/// Runs the file I/O on the blocking pool.
pub async fn before_forward(
    cache: &std::sync::Arc<CacheLayer>,
    p: Proc,
    call: &bytes::Bytes,
) -> Before {
    // Only these touch the store before forwarding; every other call just takes a stamp
    // here, without a trip through the blocking pool on each RPC.
    if !matches!(p, Proc::READ | Proc::WRITE | Proc::SETATTR) {
        return Before::Forward {
            stamp: cache.stamp(),
        };
    }
    let c = cache.clone();
    let call = call.clone();
    let r = tokio::task::spawn_blocking(move || {
        let (_, args_at) = nfs_call(&call)?;
        match p {
            Proc::READ => {
                let Ok(Args::Read(a)) = Args::decode(p, &call[args_at..]) else {
                    return None;
                };
                let stamp = c.stamp();
                let xid = u32::from_be_bytes(call[..4].try_into().expect("xid"));
                match c.read(xid, a.file.0, a.offset, a.count) {
                    Some(reply) => Some(Before::Hit(reply)),
                    None => Some(Before::Forward { stamp }),
                }
            }
            _ => {
                c.before_change(&call);
                Some(Before::Forward { stamp: c.stamp() })
            }
        }
    })
    .await;
    r.ok()
        .flatten()
        // Not an NFS call we can read (cannot happen for routed calls): a stamp of 0
        // makes the reply teach nothing.
        .unwrap_or(Before::Forward { stamp: 0 })
}

/// (procedure, offset of the arguments) of an NFSv3 call record.
fn nfs_call(call: &[u8]) -> Option<(Proc, usize)> {
    let h = CallHeader::parse(call).ok()?;
    (h.prog == nfs3::PROGRAM && h.vers == nfs3::VERSION).then_some((Proc(h.proc_), h.args_at))
}
