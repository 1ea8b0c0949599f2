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
use tracing::{debug, warn};

use crate::cache::layout::Geometry;
use crate::cache::store::{CacheError, Put, Store};
use crate::config::{CacheConfig, Consistency, WritePolicy};
use crate::nfs3::{self, Args, AttrMut, Fattr3, Ftype3, NfsResult, Nfstime3, Proc, Res, WccAttr};
use crate::rpc::msg::accepted_reply;
use crate::rpc::{AcceptStat, CallHeader, ReplyKind, parse_reply};
use crate::xdr::{Encode, XdrWrite};

/// What the proxy remembers of a file.
#[derive(Debug, Clone, Default)]
struct FileState {
    /// The next hop's attributes, as last seen (never with the local overlay).
    attr: Option<Fattr3>,
    /// Clock value of the file's last change.
    changed_at: u64,
    /// For eviction of the least recently used entries.
    used: u64,
    /// Set while the file has dirty data in the cache (write-back): the local size and
    /// times that replies show. A file with `local` is never forgotten.
    local: Option<Local>,
    /// The credential of the last client WRITE to the file, for its write-back.
    cred: Option<Cred>,
    /// Counts local WRITEs: a flush that saw the same count before and after left the
    /// file clean.
    wgen: u64,
    /// A truncation answered here and not yet applied at the next hop (write-back): the
    /// next hop's bytes from this offset on are not the file's any more (zeros, unless
    /// written since). Kept durably in the store (`CUT_BLOCK`); implies `local`.
    cut: Option<u64>,
    /// The last cut applied at the next hop, with the clock value then: a READ reply
    /// stamped before it may still carry the bytes the cut removed.
    cut_gone: Option<(u64, u64)>,
}

impl FileState {
    /// The next hop shows `size`: a file with local writes is at least that long (another
    /// writer's extension), unless a truncation here is still to be applied there.
    fn grow_local(&mut self, size: u64) {
        if self.cut.is_none()
            && let Some(l) = &mut self.local
        {
            l.size = l.size.max(size);
        }
    }
}

/// The local view of a file with dirty data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    pub size: u64,
    pub mtime: Nfstime3,
    pub ctime: Nfstime3,
}

pub use crate::upstream::calls::Cred;

/// The block number under which a file's last known attributes are kept in the store
/// (clean data, so dropped with the cache and after an unclean stop): a restarted proxy
/// can answer READs of cached files, and GETATTRs while the next hop is down, before
/// any reply has told it the file's size again.
const ATTR_BLOCK: u64 = u64::MAX;

/// The block number under which a file's pending truncation is kept (dirty, so as
/// durable as dirty data): the cut (`FileState::cut`) and the local size it left, 8
/// bytes each, big-endian. Above `store::RECORDS_FROM`, so never written back as data.
const CUT_BLOCK: u64 = u64::MAX - 1;
const _: () = assert!(CUT_BLOCK >= crate::cache::store::RECORDS_FROM);

fn cut_record(cut: u64, size: u64) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[..8].copy_from_slice(&cut.to_be_bytes());
    r[8..].copy_from_slice(&size.to_be_bytes());
    r
}

fn parse_cut_record(b: &[u8]) -> Option<(u64, u64)> {
    let b: &[u8; 16] = b.try_into().ok()?;
    let (c, s) = b.split_at(8);
    Some((
        u64::from_be_bytes(c.try_into().ok()?),
        u64::from_be_bytes(s.try_into().ok()?),
    ))
}

/// Where the credential of the last writer is kept, so a restarted proxy can write back
/// dirty data before any client has called again.
const CRED_FILE: &str = "credential";

/// The current time as an NFS time.
pub fn now() -> Nfstime3 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Nfstime3 {
        seconds: d.as_secs() as u32,
        nseconds: d.subsec_nanos(),
    }
}

/// `attr` as the client must see it while the file has local writes.
pub fn overlay(mut attr: Fattr3, l: &Local) -> Fattr3 {
    attr.size = l.size;
    attr.used = attr.used.max(l.size);
    attr.mtime = l.mtime;
    attr.ctime = l.ctime;
    attr
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
    pub(super) store: Store,
    consistency: Consistency,
    pub policy: WritePolicy,
    pub(super) cfg: CacheConfig,
    pub(super) bs: u64,
    /// The credential of the last client WRITE, also kept in the cache directory.
    last_cred: Mutex<Option<Cred>>,
    /// The change clock; stamps are its values.
    clock: AtomicU64,
    files: Mutex<Files>,
    /// Held by changes and fills with their clock checks.
    mutate: Mutex<()>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// READs answered from cached blocks plus the missing ones fetched (`part_read`).
    pub partial_hits: AtomicU64,
    pub fills: AtomicU64,
    /// Progress of the running (or last) flush.
    pub flush: FlushProgress,
    /// WRITEs answered from the cache (write-back).
    pub local_writes: AtomicU64,
    /// WRITEs the cache could not take and sent through (disk full, set full).
    pub write_throughs: AtomicU64,
    /// Sets that were full of dirty blocks and written back to make room.
    pub evictions: AtomicU64,
    /// GETATTRs answered from the cache while the next hop was down.
    pub offline_getattrs: AtomicU64,
    /// Truncations (SETATTR of the size, CREATE of an existing file) answered here and
    /// applied at the next hop by the write-back.
    pub local_truncations: AtomicU64,
    /// The session's metadata (`metadata = "session"`).
    pub names: Option<super::names::Names>,
    /// Per-file locks, striped by handle: WRITEs and write-back share a file; a
    /// truncation or a write-through has it alone.
    locks: Vec<tokio::sync::RwLock<()>>,
    /// Per-file write-back locks (striped): one write-back of a file's blocks at a time.
    wb_locks: Vec<tokio::sync::Mutex<()>>,
    /// Sidecars and whole files (`[meta]`), set once the upstream is known.
    pub meta: std::sync::OnceLock<std::sync::Arc<super::meta::MetaLayer>>,
    /// The READ ranges of each file (`[meta] record_working_set`), set by the proxy
    /// before the layer is shared; None when off. Here rather than on the sidecar layer
    /// so that recording works with `sidecars = false` too.
    pub workset: Option<super::workset::Recorder>,
}

/// A block a truncation could not cut in the cache (see `CacheLayer::truncated`).
pub struct Uncut {
    pub block: u64,
    /// Bytes of the block that stay.
    pub keep: u32,
    pub c: crate::cache::store::Cached,
}

/// How much dirty data the cache holds.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirtySummary {
    pub bytes: u64,
    pub blocks: u64,
    pub files: u64,
}

/// Stripes of `CacheLayer::locks`.
const LOCK_STRIPES: usize = 256;

/// What `gridvfs status` and a waiting `gridvfs flush` show of a write-back.
#[derive(Default)]
pub struct FlushProgress {
    pub running: std::sync::atomic::AtomicBool,
    /// Dirty bytes found when the flush started.
    pub total: AtomicU64,
    /// Bytes the next hop has acknowledged WRITEs of so far (committed or not; a batch
    /// re-sent after a verifier change counts again).
    pub sent: AtomicU64,
    /// Bytes written back and committed (clean in the cache) so far.
    pub done: AtomicU64,
    /// When the flush started, in milliseconds since the epoch.
    pub started_ms: AtomicU64,
    /// Serialises flushes.
    pub lock: tokio::sync::Mutex<()>,
    /// A background write-back has been asked for and has not started yet.
    pub bg_pending: std::sync::atomic::AtomicBool,
}

impl CacheLayer {
    pub fn open(cfg: &CacheConfig) -> Result<CacheLayer, CacheError> {
        let geo = Geometry::new(cfg.size, cfg.block_size, cfg.ways, cfg.banks)?;
        let store = if cfg.shared {
            Store::open_shared(&cfg.dir, geo)?
        } else {
            Store::open(&cfg.dir, geo)?
        };
        let last_cred = std::fs::read(cfg.dir.join(CRED_FILE))
            .ok()
            .and_then(|b| Cred::from_bytes(&b));
        let layer = CacheLayer {
            store,
            consistency: cfg.consistency,
            policy: cfg.write_policy,
            cfg: cfg.clone(),
            bs: cfg.block_size as u64,
            last_cred: Mutex::new(last_cred),
            clock: AtomicU64::new(1),
            files: Mutex::default(),
            mutate: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            partial_hits: AtomicU64::new(0),
            fills: AtomicU64::new(0),
            flush: FlushProgress::default(),
            local_writes: AtomicU64::new(0),
            write_throughs: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            offline_getattrs: AtomicU64::new(0),
            local_truncations: AtomicU64::new(0),
            names: (cfg.metadata == crate::config::Metadata::Session)
                .then(super::names::Names::default),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::RwLock::new(()))
                .collect(),
            wb_locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            meta: std::sync::OnceLock::new(),
            workset: None,
        };
        // Dirty data found at open (after a restart or a crash): the files are local
        // again, their size at least the end of their dirty bytes until the next hop's
        // attributes say more.
        let t = now();
        let (dirty, records) = layer.store.dirty_blocks_and_records()?;
        for d in &dirty {
            let end = d
                .block
                .saturating_mul(layer.bs)
                .saturating_add(d.dirty.end as u64);
            layer.with_file(&d.fh, |s| {
                let l = s.local.get_or_insert(Local {
                    size: 0,
                    mtime: t,
                    ctime: t,
                });
                l.size = l.size.max(end);
            });
        }
        // Truncations answered before the restart and not yet applied at the next hop.
        let mut cuts = 0;
        for r in records {
            if r.block != CUT_BLOCK {
                continue;
            }
            let Some((cut, size)) = layer
                .store
                .get(&r.fh, CUT_BLOCK)?
                .and_then(|c| parse_cut_record(&c.data))
            else {
                warn!(side = "cache", "a truncation record is damaged; ignored");
                continue;
            };
            cuts += 1;
            layer.with_file(&r.fh, |s| {
                s.cut = Some(cut);
                let l = s.local.get_or_insert(Local {
                    size: 0,
                    mtime: t,
                    ctime: t,
                });
                l.size = l.size.max(size);
            });
        }
        if !dirty.is_empty() || cuts > 0 {
            tracing::info!(
                blocks = dirty.len(),
                truncations = cuts,
                "cache holds dirty data from before the restart; it is written back at the next flush"
            );
        }
        Ok(layer)
    }

    /// Closes the store cleanly (at exit), so the next start finds it warm.
    pub fn close(&self) -> Result<(), CacheError> {
        self.store.close()
    }

    /// fsync/fdatasync calls made on the cache's bank files so far.
    pub fn syncs(&self) -> u64 {
        self.store.syncs()
    }

    /// Block reads answered with zeros the cache wrote itself, without reading a file.
    pub fn zero_reads(&self) -> u64 {
        self.store.zero_reads()
    }

    /// Cache banks failed now, and failed banks renewed in this run.
    pub fn banks_failed_renewed(&self) -> (usize, u64) {
        (self.store.failed_banks(), self.store.renewed_banks())
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
            // Files with local writes are never forgotten; if they are all there is,
            // the table grows (bounded by the dirty frames) instead.
            let mut ages: Vec<u64> = files
                .map
                .values()
                .filter(|s| s.local.is_none())
                .map(|s| s.used)
                .collect();
            ages.sort_unstable();
            let cut = ages.get(ages.len() / 8).copied().unwrap_or(0);
            let mut forgotten = files.forgotten;
            files.map.retain(|_, s| {
                let keep = s.used > cut || s.local.is_some();
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

    pub(super) fn unchanged_since(&self, fh: &[u8], stamp: u64) -> bool {
        self.with_file(fh, |s| s.changed_at <= stamp)
    }

    /// Forgets every clean cached block and every remembered file without local writes
    /// (SIGUSR2, after a write-back). Dirty blocks (written after the write-back began,
    /// or not written back) stay. Returns the number of blocks dropped.
    pub fn drop_all(&self) -> Result<u64, CacheError> {
        let _m = self.mutate.lock().expect("mutate lock");
        let t = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut f = self.files.lock().expect("files lock");
            f.map.retain(|_, s| s.local.is_some());
            for s in f.map.values_mut() {
                s.changed_at = t;
            }
            f.forgotten = t;
        }
        if let Some(m) = self.meta.get() {
            m.drop_all();
        }
        if let Some(n) = &self.names {
            n.drop_all(t);
        }
        self.store.drop_clean()
    }

    /// The bytes of `r` if every block of it is in the store (for READs split around
    /// zero blocks).
    pub fn read_range(&self, fh: &[u8], r: std::ops::Range<u64>) -> Option<Vec<u8>> {
        let mut out = BytesMut::with_capacity((r.end - r.start) as usize);
        let mut pos = r.start;
        while pos < r.end {
            let block = pos / self.bs;
            let lo = (pos % self.bs) as u32;
            let hi = (r.end - block * self.bs).min(self.bs) as u32;
            if !matches!(self.store.read_into(fh, block, lo..hi, &mut out), Ok(true)) {
                return None;
            }
            pos = block * self.bs + hi as u64;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(out.into()) // the buffer itself, not a copy
    }

    /// Whether the cache holds every byte of `r` of `fh`, by the blocks' tags (their data
    /// is not read: for planning a fetch, not for serving).
    pub fn holds(&self, fh: &[u8], r: std::ops::Range<u64>) -> bool {
        let mut pos = r.start;
        while pos < r.end {
            let block = pos / self.bs;
            let lo = (pos % self.bs) as u32;
            let hi = (r.end - block * self.bs).min(self.bs) as u32;
            match self.store.valid_range(fh, block) {
                Ok(Some(v)) if v.start <= lo && hi <= v.end => {}
                _ => return false,
            }
            pos = block * self.bs + hi as u64;
        }
        true
    }

    /// Forgets the clean blocks holding any byte of `r` of `fh` (dirty ones stay).
    pub fn invalidate_clean(&self, fh: &[u8], r: std::ops::Range<u64>) {
        if r.start >= r.end {
            return;
        }
        let _m = self.mutate.lock().expect("mutate lock");
        if let Err(e) =
            self.store
                .invalidate_range_clean(fh, r.start / self.bs, (r.end - 1) / self.bs)
        {
            warn!(side = "cache", error = %e, "cache invalidation failed");
        }
    }

    /// Whether the file's truncation record is at risk in a failed bank (dirty there when
    /// it failed, or cleared since): it may come back after a power failure and be
    /// applied at a restart, so no WRITE to the file may be acknowledged, and nothing of
    /// it written back (`writeback::apply_cut`), in this run.
    pub fn cut_at_risk(&self, fh: &[u8]) -> bool {
        self.store.at_risk(fh, CUT_BLOCK)
    }

    /// The cache's block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.bs
    }

    /// Answers a READ from the store: the whole reply record (with `xid`), or None (a
    /// miss). The data is read from the bank files straight into the reply.
    pub fn read(&self, xid: u32, fh: &[u8], off: u64, count: u32) -> Option<BytesMut> {
        match self.read_local(xid, fh, off, count) {
            Some(r) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(r)
            }
            None => self.miss(),
        }
    }

    fn read_local(&self, xid: u32, fh: &[u8], off: u64, count: u32) -> Option<BytesMut> {
        let attr = self.effective_attr(fh)?;
        if attr.ftype != Ftype3::REG {
            return None;
        }
        let end = off.saturating_add(count as u64).min(attr.size);
        let n = end.saturating_sub(off) as usize;
        let mut out = read_reply_head(xid, &attr, end >= attr.size, n);
        let mut pos = off;
        while pos < end {
            let block = pos / self.bs;
            let lo = (pos % self.bs) as u32;
            let hi = (end - block * self.bs).min(self.bs) as u32;
            match self.store.read_into(fh, block, lo..hi, &mut out) {
                Ok(true) => {}
                // Only a miss asks for the file's cut (a hit takes no extra lock).
                Ok(false)
                    if self
                        .cut(fh)
                        .is_some_and(|c| self.read_past_cut(fh, block, lo..hi, c, &mut out)) => {}
                Ok(false) => return None,
                Err(e) => {
                    warn!(side = "cache", error = %e, "cache read failed; forwarding");
                    return None;
                }
            }
            pos = block * self.bs + hi as u64;
        }
        out.put_bytes(0, crate::xdr::pad(n));
        Some(out)
    }

    /// For a READ the cache cannot answer whole (after [`CacheLayer::read`] missed): if
    /// the file is clean here (no local writes, no truncation to apply) and the cache
    /// holds some of the READ's blocks but not all, the bytes it holds and the runs of
    /// blocks it lacks, in file order, for [`part_read`]. Only in the session model,
    /// where cached blocks are trusted without the attributes a forwarded READ brings.
    pub fn plan_part_read(
        &self,
        xid: u32,
        fh: &[u8],
        off: u64,
        count: u32,
        stamp: u64,
    ) -> Option<PartRead> {
        if self.consistency != Consistency::Session
            || self.local(fh).is_some()
            || self.cut(fh).is_some()
        {
            return None;
        }
        let attr = self.effective_attr(fh)?;
        if attr.ftype != Ftype3::REG {
            return None;
        }
        let end = off.saturating_add(count as u64).min(attr.size);
        let mut pieces: Vec<Piece> = Vec::new();
        let mut pos = off;
        while pos < end {
            let block = pos / self.bs;
            let lo = (pos % self.bs) as u32;
            let hi = (end - block * self.bs).min(self.bs) as u32;
            let next = block * self.bs + hi as u64;
            let mut held = BytesMut::new();
            match (
                self.store.read_into(fh, block, lo..hi, &mut held),
                pieces.last_mut(),
            ) {
                (Ok(true), Some(Piece::Have(b))) => b.extend_from_slice(&held),
                (Ok(true), _) => pieces.push(Piece::Have(held)),
                (Ok(false), Some(Piece::Need(r))) => r.end = next,
                (Ok(false), _) => pieces.push(Piece::Need(pos..next)),
                (Err(_), _) => return None,
            }
            pos = next;
        }
        let have = pieces.iter().any(|p| matches!(p, Piece::Have(_)));
        let need = pieces.iter().any(|p| matches!(p, Piece::Need(_)));
        (have && need).then_some(PartRead {
            xid,
            attr,
            off,
            end,
            stamp,
            pieces,
        })
    }

    /// Appends bytes `want` of a block of a file truncated here at `cut` (not yet applied
    /// at the next hop) when every one of them is cached or at or past the cut (zeros):
    /// such bytes need no call upstream. False (`dst` unchanged) otherwise.
    fn read_past_cut(
        &self,
        fh: &[u8],
        block: u64,
        want: std::ops::Range<u32>,
        cut: u64,
        dst: &mut BytesMut,
    ) -> bool {
        let base = block * self.bs;
        let c = match self.store.get(fh, block) {
            Ok(c) => c,
            Err(_) => return false,
        };
        let valid = c.as_ref().map_or(0..0, |c| c.valid.clone());
        // The bytes not cached: below the valid range and above it.
        let below = want.start..valid.start.clamp(want.start, want.end);
        let above = valid.end.clamp(want.start, want.end)..want.end;
        let zeros = |r: &std::ops::Range<u32>| r.is_empty() || base + r.start as u64 >= cut;
        if !zeros(&below) || !zeros(&above) {
            return false;
        }
        let start = dst.len();
        dst.resize(start + want.len(), 0);
        if let Some(c) = &c {
            let lo = c.valid.start.max(want.start);
            let hi = c.valid.end.min(want.end);
            if lo < hi {
                let at = start + (lo - want.start) as usize;
                dst[at..at + (hi - lo) as usize].copy_from_slice(c.bytes(lo..hi));
            }
        }
        true
    }

    /// The attributes a client must see: the next hop's, with the local size and times
    /// while the file has dirty data.
    pub fn effective_attr(&self, fh: &[u8]) -> Option<Fattr3> {
        let (attr, local) = self.with_file(fh, |s| (s.attr.clone(), s.local));
        let attr = attr.or_else(|| self.persisted_attr(fh))?;
        Some(match &local {
            Some(l) => overlay(attr, l),
            None => attr,
        })
    }

    /// Attributes kept in the store by an earlier run (see `ATTR_BLOCK`); remembered
    /// for this run unless a change came meanwhile.
    fn persisted_attr(&self, fh: &[u8]) -> Option<Fattr3> {
        let stamp = self.stamp();
        let c = self.store.get(fh, ATTR_BLOCK).ok()??;
        let a = crate::xdr::decode_all::<Fattr3>(&c.data).ok()?;
        // Checked and set under the file table's lock (not `mutate`: callers may hold
        // it), so a change since the stamp wins.
        self.with_file(fh, |s| {
            if s.changed_at > stamp {
                return None;
            }
            s.grow_local(a.size);
            Some(s.attr.get_or_insert(a).clone())
        })
    }

    /// Keeps a file's attributes in the store when they changed (no disk write for a
    /// GETATTR that shows the same attributes again).
    fn persist_attr(&self, fh: &[u8], before: Option<&Fattr3>, now: &Fattr3) {
        if before == Some(now) || now.ftype != Ftype3::REG {
            return;
        }
        let mut b = BytesMut::with_capacity(96);
        now.encode(&mut b);
        if let Err(e) = self.store.put(fh, ATTR_BLOCK, 0, &b, false) {
            tracing::debug!(side = "cache", error = %e, "attributes not kept in the cache");
        }
    }

    /// Dirty data in the cache (for `gridvfs status`).
    pub fn dirty_summary(&self) -> Result<DirtySummary, CacheError> {
        let d = self.store.dirty_blocks()?;
        let mut files = d.iter().map(|b| &b.fh).collect::<Vec<_>>();
        files.dedup();
        Ok(DirtySummary {
            bytes: d.iter().map(|b| b.dirty.len() as u64).sum(),
            blocks: d.len() as u64,
            files: files.len() as u64,
        })
    }

    /// The lock of a file (a stripe shared with other handles).
    pub fn file_lock(&self, fh: &[u8]) -> &tokio::sync::RwLock<()> {
        &self.locks[(crate::cache::layout::fnv1a(fh) % LOCK_STRIPES as u64) as usize]
    }

    /// The write-back lock of a file (a stripe shared with other handles).
    pub fn wb_lock(&self, fh: &[u8]) -> &tokio::sync::Mutex<()> {
        &self.wb_locks[(crate::cache::layout::fnv1a(fh) % LOCK_STRIPES as u64) as usize]
    }

    /// Files with local writes, with their write counts.
    pub fn local_files(&self) -> Vec<(Vec<u8>, u64)> {
        let f = self.files.lock().expect("files lock");
        f.map
            .iter()
            .filter(|(_, s)| s.local.is_some())
            .map(|(k, s)| (k.clone(), s.wgen))
            .collect()
    }

    /// A write-through of a file with local writes may make it longer.
    pub fn extend_local(&self, fh: &[u8], end: u64) {
        self.with_file(fh, |s| {
            if let Some(l) = &mut s.local {
                l.size = l.size.max(end);
            }
        });
    }

    /// Puts clean bytes fetched by a call stamped `stamp`, unless the file changed since.
    pub fn fill_checked(
        &self,
        fh: &[u8],
        off: u64,
        data: &[u8],
        stamp: u64,
    ) -> Result<(), CacheError> {
        let _m = self.mutate.lock().expect("mutate lock");
        if !self.unchanged_since(fh, stamp) {
            return Ok(());
        }
        // Past a truncation not yet applied at the next hop, its bytes are zeros here.
        let mut zeroed;
        let mut data = data;
        if let Some(cut) = self.with_file(fh, |s| s.cut)
            && off.saturating_add(data.len() as u64) > cut
        {
            zeroed = data.to_vec();
            let from = cut.saturating_sub(off) as usize;
            zeroed[from..].fill(0);
            data = &zeroed;
        }
        let mut pos = off;
        let end = off + data.len() as u64;
        while pos < end {
            let block = pos / self.bs;
            let lo = pos - block * self.bs;
            let n = (self.bs - lo).min(end - pos);
            let bytes = &data[(pos - off) as usize..(pos - off + n) as usize];
            self.store.put(fh, block, lo as u32, bytes, false)?;
            pos += n;
        }
        Ok(())
    }

    /// The local view of a file with dirty data.
    pub fn local(&self, fh: &[u8]) -> Option<Local> {
        self.with_file(fh, |s| s.local)
    }

    /// The next hop's attributes as last seen.
    pub fn upstream_attr(&self, fh: &[u8]) -> Option<Fattr3> {
        self.with_file(fh, |s| s.attr.clone())
    }

    /// Records attributes fetched by the cache itself (a GETATTR of its own).
    pub fn learn_attr(&self, fh: &[u8], attr: Fattr3, stamp: u64) {
        let _m = self.mutate.lock().expect("mutate lock");
        if self.unchanged_since(fh, stamp) {
            self.with_file(fh, |s| {
                s.grow_local(attr.size);
                s.attr = Some(attr)
            });
        }
    }

    /// The `wcc_attr` a reply about this file shows as "before".
    pub fn pre_attr(&self, fh: &[u8]) -> Option<WccAttr> {
        self.effective_attr(fh).map(|a| WccAttr {
            size: a.size,
            mtime: a.mtime,
            ctime: a.ctime,
        })
    }

    /// A client WRITE landed in the cache: the file is local (size at least `end`, times
    /// now), and its writer's credential is kept for the write-back.
    pub fn note_local_write(&self, fh: &[u8], end: u64, cred: Option<Cred>) {
        let t = now();
        self.with_file(fh, |s| {
            let base = s.attr.as_ref().map_or(0, |a| a.size);
            let l = s.local.get_or_insert(Local {
                size: base,
                mtime: t,
                ctime: t,
            });
            l.size = l.size.max(end);
            l.mtime = t;
            l.ctime = t;
            s.wgen += 1;
            if cred.is_some() {
                s.cred.clone_from(&cred);
            }
        });
        if let Some(c) = cred {
            self.remember_cred(c);
        }
    }

    /// Keeps the newest writer's credential in the cache directory (only when it
    /// changes: one small durable write per session, not per WRITE).
    fn remember_cred(&self, c: Cred) {
        let mut last = self.last_cred.lock().expect("cred lock");
        // AUTH_NONE never replaces a real credential for write-backs.
        if last.as_ref() == Some(&c) || (c.flavor == 0 && last.is_some()) {
            return;
        }
        let dir = &self.cfg.dir;
        let tmp = dir.join("credential.tmp");
        let r = std::fs::write(&tmp, c.to_bytes())
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, dir.join(CRED_FILE)))
            .and_then(|_| std::fs::File::open(dir)?.sync_all());
        if let Err(e) = r {
            warn!(side = "cache", error = %e, "cannot keep the writer's credential in the cache directory");
        }
        *last = Some(c);
    }

    /// The credential to write a file back with: its last writer's, else the last
    /// writer's of the session (kept across restarts).
    pub fn cred_for(&self, fh: &[u8]) -> Option<Cred> {
        self.with_file(fh, |s| s.cred.clone())
            .or_else(|| self.last_cred.lock().expect("cred lock").clone())
    }

    /// How many local WRITEs the file has had.
    pub fn wgen(&self, fh: &[u8]) -> u64 {
        self.with_file(fh, |s| s.wgen)
    }

    /// After a write-back of the file: if no local WRITE came since `wgen`, the file is
    /// no longer local; `after` (the COMMIT's attributes) is the next hop's view now.
    /// The attributes are kept in the store too (blocking I/O), so a restarted proxy
    /// does not take the file's pre-write-back size and mtime for the current ones.
    pub fn written_back(&self, fh: &[u8], wgen: u64, after: Option<Fattr3>) {
        let _m = self.mutate.lock().expect("mutate lock");
        let now = self.with_file(fh, |s| {
            if s.wgen != wgen || s.cut.is_some() {
                return None;
            }
            let l = s.local.take()?;
            s.attr = match after {
                Some(a) if a.size == l.size => Some(a),
                _ => s.attr.take().map(|a| overlay(a, &l)),
            };
            s.attr.clone()
        });
        match now {
            Some(a) => self.persist_attr(fh, None, &a),
            None => {
                if let Err(e) = self.store.invalidate(fh, ATTR_BLOCK) {
                    warn!(side = "cache", error = %e, "cache invalidation failed");
                }
            }
        }
    }

    /// The file is gone upstream (write-back got NFS3ERR_STALE): its dirty data goes,
    /// as a removed file's data does on a local disk.
    pub fn forget_file(&self, fh: &[u8]) {
        let _m = self.mutate.lock().expect("mutate lock");
        self.changed(fh, None);
        self.with_file(fh, |s| {
            s.local = None;
            s.cut = None;
        });
        let _ = self.store.invalidate(fh, ATTR_BLOCK);
        if let Err(e) = self.store.invalidate(fh, CUT_BLOCK) {
            warn!(side = "cache", error = %e, "cache invalidation failed");
        }
        if let Err(e) = self.store.invalidate_range(fh, 0, u64::MAX / self.bs) {
            warn!(side = "cache", error = %e, "cache invalidation failed");
        }
    }

    /// A change made by the cache itself (a write-through or a truncation): replies
    /// stamped before it teach nothing.
    /// Forgets a file's attributes (also those kept in the store) and its clean blocks:
    /// the file is known to have changed behind the proxy's back, and the next reply is
    /// believed instead. Dirty blocks stay (local writes win until flushed).
    pub fn forget_attr(&self, fh: &[u8]) {
        let _m = self.mutate.lock().expect("mutate lock");
        self.changed(fh, None);
        if let Err(e) = self.store.invalidate(fh, ATTR_BLOCK) {
            warn!(side = "cache", error = %e, "cache invalidation failed");
        }
        if let Err(e) = self.store.invalidate_range_clean(fh, 0, u64::MAX / self.bs) {
            warn!(side = "cache", error = %e, "cache invalidation failed");
        }
    }

    pub fn change(&self, fh: &[u8]) {
        let _m = self.mutate.lock().expect("mutate lock");
        let attr = self.with_file(fh, |s| s.attr.clone());
        self.changed(fh, attr);
    }

    /// A SETATTR(size) succeeded upstream (write-back): bytes past `new` are gone, dirty
    /// or not; growing reads zeros. The old size is the local one for a file with dirty
    /// data, else the reply's "before" (unknown: everything past the new size goes).
    /// Made durable before returning, so a crash cannot bring cut bytes back.
    ///
    /// If the block holding the new end cannot be rewritten (its set is full of dirty
    /// blocks, or the disk fails), it is returned as it is: the caller writes its dirty
    /// bytes below the cut to the next hop and then drops it (`drop_block`).
    pub fn truncated(
        &self,
        fh: &[u8],
        old: Option<u64>,
        new: u64,
    ) -> Result<Option<Uncut>, CacheError> {
        let _m = self.mutate.lock().expect("mutate lock");
        let local = self.with_file(fh, |s| s.local);
        let old = local.map(|l| l.size).or(old);
        let cut = old.map_or(new, |o| o.min(new));
        let top = old.map_or(u64::MAX / self.bs, |o| o.max(new) / self.bs);
        let attr = self.with_file(fh, |s| s.attr.clone());
        self.changed(fh, attr);
        let first_whole = cut.div_ceil(self.bs);
        let mut uncut = None;
        if !cut.is_multiple_of(self.bs) {
            let (block, keep) = (cut / self.bs, (cut % self.bs) as u32);
            if let Err(e) = self.store.truncate_block(fh, block, keep) {
                warn!(side = "cache", error = %e, "cannot cut a cached block; writing its kept dirty bytes through");
                match self.store.get(fh, block)? {
                    Some(c) if c.dirty.as_ref().is_some_and(|d| d.start < keep) => {
                        uncut = Some(Uncut { block, keep, c });
                    }
                    _ => self.store.invalidate(fh, block)?,
                }
            }
        }
        self.store
            .invalidate_range(fh, first_whole, top.max(first_whole))?;
        let t = now();
        self.with_file(fh, |s| {
            if let Some(l) = &mut s.local {
                l.size = new;
                l.mtime = t;
                l.ctime = t;
                s.wgen += 1;
            }
        });
        if local.is_some() {
            // The file's cut tags and cleared blocks are noted as its unsynced changes:
            // its banks' fdatasyncs make them durable, and only its own lost writes (in
            // a failed bank) refuse the truncation.
            self.store.sync_file(fh)?;
        }
        Ok(uncut)
    }

    /// Forgets every version of a block and makes that durable (after its dirty bytes
    /// were written through).
    pub fn drop_block(&self, fh: &[u8], block: u64) -> Result<(), CacheError> {
        let _m = self.mutate.lock().expect("mutate lock");
        self.store.invalidate(fh, block)?;
        self.store.sync_file(fh)
    }

    /// A SETATTR(size) answered here (write-back): the cache cuts or zero-extends the file
    /// as `truncated` does, and records the truncation (durably, like dirty data) for the
    /// next write-back, which applies it at the next hop before the file's WRITEs. Until
    /// then the next hop's bytes past the cut are not the file's: reads there are zeros
    /// unless written since. Returns the attributes before and after, or None when the
    /// cache cannot take it (attributes unknown, not a regular file, no room): the caller
    /// forwards the truncation instead.
    /// `cred`: the caller's credential, kept (as a WRITE's is) for the write-back that
    /// applies the truncation.
    pub fn truncate_locally(
        &self,
        fh: &[u8],
        new: u64,
        cred: Option<Cred>,
    ) -> Result<Option<(WccAttr, Fattr3)>, CacheError> {
        if self.store.is_shared() {
            return Ok(None);
        }
        let m = self.mutate.lock().expect("mutate lock");
        let Some(before) = self.effective_attr(fh).filter(|a| a.ftype == Ftype3::REG) else {
            return Ok(None);
        };
        let old = before.size;
        let low = old.min(new);
        if self.store.at_risk_from(fh, low / self.bs) {
            // Forwarded instead, where it is refused (see `writeback::setattr_size`).
            return Ok(None);
        }
        let cut = self.with_file(fh, |s| s.cut).map_or(low, |c| c.min(low));
        if !low.is_multiple_of(self.bs)
            && let Err(e) = self
                .store
                .truncate_block(fh, low / self.bs, (low % self.bs) as u32)
        {
            // Nothing recorded yet (bytes past `low` go either way): forwarded instead.
            tracing::debug!(side = "cache", error = %e, "cannot cut a cached block here; forwarding the truncation");
            return Ok(None);
        }
        // Before the record: a restart that finds it also finds a credential to apply it.
        if let Some(c) = cred.clone() {
            self.remember_cred(c);
        }
        // The same truncation again (a build's CREATE size 0 of the object it rewrites)
        // finds the record as it is: `put` keeps it, no new version to sync.
        match self
            .store
            .put(fh, CUT_BLOCK, 0, &cut_record(cut, new), true)
        {
            Ok(Put::Stored { .. }) => {}
            // No room for the record: forwarded. Known limit: the block holding `low` is
            // already cut, so should the server then refuse the truncation, the cached
            // bytes past `low` in that block are gone although the client was told it
            // failed (a client retries a failed truncation).
            Ok(_) | Err(CacheError::SetFull) => return Ok(None),
            // The cache disk full (ENOSPC) or failing: the truncation goes through to the
            // next hop instead, like a WRITE the cache cannot take.
            Err(e) => {
                tracing::warn!(side = "cache", error = %e, "truncation record not stored; forwarding the truncation");
                return Ok(None);
            }
        }
        let attr = self.with_file(fh, |s| s.attr.clone());
        self.changed(fh, attr);
        let t = now();
        let after = self.with_file(fh, |s| {
            s.cut = Some(cut);
            let l = s.local.insert(Local {
                size: new,
                mtime: t,
                ctime: t,
            });
            let after = overlay(s.attr.clone().unwrap_or_else(|| before.clone()), l);
            s.wgen += 1;
            if cred.is_some() {
                s.cred = cred;
            }
            after
        });
        let first_whole = low.div_ceil(self.bs);
        self.store
            .invalidate_range(fh, first_whole, (old.max(new) / self.bs).max(first_whole))?;
        // Durable before the reply, but not under `mutate`: every other change and fill
        // of every file would wait for these fsyncs (8 truncating clients took turns).
        drop(m);
        self.store.sync_file(fh)?;
        self.local_truncations.fetch_add(1, Ordering::Relaxed);
        let pre = WccAttr {
            size: before.size,
            mtime: before.mtime,
            ctime: before.ctime,
        };
        Ok(Some((pre, after)))
    }

    /// The truncation to apply at the next hop before the file's data (write-back).
    pub fn cut(&self, fh: &[u8]) -> Option<u64> {
        self.with_file(fh, |s| s.cut)
    }

    /// Files with a truncation to apply at the next hop.
    pub fn cut_files(&self) -> Vec<Vec<u8>> {
        let f = self.files.lock().expect("files lock");
        f.map
            .iter()
            .filter(|(_, s)| s.cut.is_some())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The next hop has applied the truncation `cut` (and the file's local size): its
    /// record goes, durably. A READ reply stamped before now may still carry the bytes it
    /// removed (`cut_gone`). `after`: the next hop's attributes after it (its last
    /// SETATTR's), which replace those kept from before the cut, also in the store: a
    /// restart must not take the old size for another writer's extension.
    pub fn cut_applied(
        &self,
        fh: &[u8],
        cut: u64,
        after: Option<Fattr3>,
    ) -> Result<(), CacheError> {
        let _m = self.mutate.lock().expect("mutate lock");
        if self.with_file(fh, |s| s.cut) != Some(cut) {
            return Ok(()); // a newer truncation: its record stays
        }
        match &after {
            Some(a) => self.persist_attr(fh, None, a),
            None => self.store.invalidate(fh, ATTR_BLOCK)?,
        }
        self.store.invalidate(fh, CUT_BLOCK)?;
        self.store.sync_tags()?;
        // sync_tags skips failed banks: a record removed from one (or whose bank failed
        // meanwhile) could come back after a power failure and be applied at the restart
        // after data the write-back had marked clean. So this fails: the flush of the file
        // stops here with its data dirty, to be replayed with the record at the restart
        // (such a bank is not renewed, `Store::renew_failed_banks`).
        if let Some(e) = self.store.at_risk_error(fh, CUT_BLOCK) {
            return Err(e);
        }
        let attr = after.or_else(|| self.with_file(fh, |s| s.attr.clone()));
        self.changed(fh, attr);
        let at = self.stamp();
        self.with_file(fh, |s| {
            s.cut = None;
            s.cut_gone = Some((cut, at));
        });
        Ok(())
    }

    /// Builds a READ reply for a file with local writes from the next hop's bytes
    /// (`upstream`, may be short) with the dirty bytes laid over them, up to the local
    /// size; bytes past both are zeros (a hole the local writes made). `all_cached`: every
    /// cached byte is laid over, clean ones too (a reply older than the cache's bytes).
    /// `zero_from`: the next hop's bytes from there on are not the file's (a truncation).
    fn merged_read(
        &self,
        xid: u32,
        r: &nfs3::ReadArgs<'_>,
        upstream: &[u8],
        upstream_eof: bool,
        all_cached: bool,
        zero_from: Option<u64>,
    ) -> Option<BytesMut> {
        let (fh, off, count) = (r.file.0, r.offset, r.count);
        let attr = self.effective_attr(fh)?;
        let mut end = off.saturating_add(count as u64).min(attr.size);
        let upstream = match zero_from {
            Some(z) => &upstream[..upstream.len().min(z.saturating_sub(off) as usize)],
            None => upstream,
        };
        // Past the cut the next hop's bytes are not needed: a short reply still covers it.
        let covered = zero_from.is_some_and(|z| off + upstream.len() as u64 >= z);
        if !upstream_eof && !covered {
            // A short read from the server that is not at its end of file: answer as
            // short (the client asks again for the rest), never with invented zeros.
            end = end.min(off + upstream.len() as u64);
        }
        let n = end.saturating_sub(off) as usize;
        let mut buf = vec![0u8; n];
        let k = upstream.len().min(n);
        buf[..k].copy_from_slice(&upstream[..k]);
        if n > 0 {
            for block in off / self.bs..=(end - 1) / self.bs {
                let Ok(Some(c)) = self.store.get(fh, block) else {
                    continue;
                };
                let d = match (&c.dirty, all_cached) {
                    (_, true) => c.valid.clone(),
                    (Some(d), false) => d.clone(),
                    (None, false) => continue,
                };
                let base = block * self.bs;
                let lo = (base + d.start as u64).max(off);
                let hi = (base + d.end as u64).min(end);
                if lo < hi {
                    let r = (lo - base) as u32..(hi - base) as u32;
                    buf[(lo - off) as usize..(hi - off) as usize].copy_from_slice(c.bytes(r));
                }
            }
        }
        let res = Res::Read(NfsResult::Ok(nfs3::ReadResOk {
            file_attributes: Some(attr.clone()),
            count: n as u32,
            eof: end >= attr.size,
            data: &buf,
        }));
        let mut out = accepted_reply(xid, AcceptStat::SUCCESS);
        res.encode(&mut out);
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
            Args::Setattr(a) => {
                // Mode, owner or times change: a GETATTR answered before must not put
                // the old ones back when its reply comes last.
                let attr = self.with_file(a.object.0, |s| s.attr.clone());
                self.changed(a.object.0, attr);
            }
            _ => {}
        }
    }

    /// Learns from a forwarded call's reply, for a call stamped `stamp`: attributes of
    /// the files it mentions, READ data, truncations, changes behind our back. Returns
    /// the reply to send instead, when the client must see local writes in it (the
    /// local size and times of files with dirty data; READ data merged with dirty bytes).
    pub fn observe(&self, call: &[u8], reply: &[u8], stamp: u64) -> Option<BytesMut> {
        let (p, args_at) = nfs_call(call)?;
        let Ok((xid, ReplyKind::Accepted { stat, results_at })) = parse_reply(reply) else {
            return None;
        };
        if stat != AcceptStat::SUCCESS {
            return None;
        }
        let (Ok(args), Ok(mut res)) = (
            Args::decode(p, &call[args_at..]),
            Res::decode(p, &reply[results_at..]),
        ) else {
            return None;
        };
        if let Some(m) = self.meta.get() {
            m.observe(call, &args, &res);
        }
        let _m = self.mutate.lock().expect("mutate lock");
        let write_back = self.policy == WritePolicy::WriteBack;
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
            let before = self.with_file(&fh, |s| {
                // Truncations go through the cache (`truncated`, `truncate_locally`), so
                // a larger size upstream is another writer's extension.
                s.grow_local(f.size);
                s.attr.replace(f.clone())
            });
            self.persist_attr(&fh, before.as_ref(), &f);
            let Some(b) = before else { continue };
            if attributes_mode && !own_change && (f.mtime != b.mtime || f.size != b.size) {
                stale.push((fh, 0, b.size.max(f.size) / self.bs));
            } else if f.size < b.size {
                stale.push((fh, f.size / self.bs, b.size / self.bs));
            }
        }
        match (&args, &res) {
            (Args::Write(w), r) => {
                // A READ of these bytes answered before this WRITE may have filled them
                // meanwhile: clear again, as another change (the size just learned stays).
                let attr = self.with_file(w.file.0, |s| s.attr.clone());
                self.changed(w.file.0, attr);
                let last = w.offset.saturating_add(w.count.max(1) as u64 - 1) / self.bs;
                self.invalidate(w.file.0, w.offset / self.bs, last);
                if self.policy == WritePolicy::WriteThrough
                    && matches!(r, Res::Write(NfsResult::Ok(_)))
                {
                    // The bytes are the next hop's now: keep them for later reads.
                    self.fill(w.file.0, w.offset, w.data);
                }
            }
            (Args::Read(r), Res::Read(NfsResult::Ok(ok)))
                if self.unchanged_since(r.file.0, stamp) =>
            {
                // Past a truncation not yet applied upstream the bytes are not the file's.
                let data = match self.with_file(r.file.0, |s| s.cut) {
                    Some(c) => &ok.data[..ok.data.len().min(c.saturating_sub(r.offset) as usize)],
                    None => ok.data,
                };
                self.fill(r.file.0, r.offset, data);
            }
            (Args::Setattr(a), Res::Setattr(NfsResult::Ok(ok))) if !write_back => {
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
        if let (Args::Setattr(a), Res::Setattr(NfsResult::Ok(_))) = (&args, &res) {
            // Its attributes are what this reply said: replies to calls forwarded while
            // it ran (their stamps are older) must not put the old ones back.
            let attr = self.with_file(a.object.0, |s| s.attr.clone());
            self.changed(a.object.0, attr);
        }
        for (fh, from, to) in stale {
            let attr = self.with_file(&fh, |s| s.attr.clone());
            self.changed(&fh, attr);
            if write_back {
                // Local writes win over the next hop's changes until they are flushed.
                if let Err(e) = self.store.invalidate_range_clean(&fh, from, to) {
                    warn!(side = "cache", error = %e, "cache invalidation failed");
                }
            } else {
                self.invalidate(&fh, from, to);
            }
        }
        if !write_back {
            return None;
        }
        // Files with local writes: their READ data and their attributes as the client
        // must see them.
        if let (Args::Read(r), Res::Read(rr)) = (&args, &res) {
            // The next hop's bytes from here on are not the file's: a truncation to be
            // applied there, or one applied after this call was forwarded.
            let (local, zero_from) = self.with_file(r.file.0, |s| {
                let gone = s.cut_gone.filter(|g| stamp < g.1).map(|g| g.0);
                (s.local.is_some(), s.cut.or(gone))
            });
            if local {
                if let Some(out) = self.read_local(xid, r.file.0, r.offset, r.count) {
                    return Some(out);
                }
                if let NfsResult::Ok(ok) = rr {
                    // A reply older than a change (a write-back batch marked clean) gets
                    // every cached byte laid over it, not only the dirty ones.
                    let older = !self.unchanged_since(r.file.0, stamp);
                    return self.merged_read(xid, r, ok.data, ok.eof, older, zero_from);
                }
            } else if let NfsResult::Ok(ok) = rr
                && !self.unchanged_since(r.file.0, stamp)
            {
                // Forwarded before a change (a write-back of local writes, typically):
                // the server may have answered with bytes from before it. What the cache
                // holds of the range is newer: laid over the reply. Known window: a block
                // written back and evicted before this reply came is not in the cache,
                // and the reply's old bytes for it pass (a set full of dirty blocks
                // within one round trip of the write-back). The same holds for bytes
                // past a cut applied within one round trip when the file's entry was
                // dropped meanwhile (SIGUSR2), or past the cut before the last one
                // (`cut_gone` keeps one).
                if let Some(out) = self.merged_read(xid, r, ok.data, ok.eof, true, zero_from) {
                    return Some(out);
                }
            }
        }
        let mut touched = false;
        res.for_each_attr_mut(&args, |fh, a| {
            let Some(fh) = fh else { return };
            let Some(l) = self.with_file(fh.0, |s| s.local) else {
                return;
            };
            touched = true;
            match a {
                AttrMut::Post(f) => *f = overlay(f.clone(), &l),
                AttrMut::Pre(w) => {
                    w.size = l.size;
                    w.mtime = l.mtime;
                    w.ctime = l.ctime;
                }
            }
        });
        if !touched {
            return None;
        }
        let mut out = BytesMut::with_capacity(reply.len() + 64);
        out.extend_from_slice(&reply[..results_at]);
        res.encode(&mut out);
        Some(out)
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

/// The head of a successful READ reply of `n` bytes (status, attributes, count, eof,
/// the data's length); the data and its padding follow.
pub(super) fn read_reply_head(xid: u32, attr: &Fattr3, eof: bool, n: usize) -> BytesMut {
    let mut out = accepted_reply(xid, AcceptStat::SUCCESS);
    out.reserve(n + 128);
    out.put_u32(nfs3::Nfsstat3::OK.0);
    out.put_xdr_bool(true);
    attr.encode(&mut out);
    out.put_u32(n as u32);
    out.put_xdr_bool(eof);
    out.put_u32(n as u32);
    out
}

/// Part of a READ: bytes the cache holds, or a range (a run of missing blocks) to ask
/// the next hop for.
pub enum Piece {
    Have(BytesMut),
    Need(std::ops::Range<u64>),
}

/// A READ the cache holds part of ([`CacheLayer::plan_part_read`]).
pub struct PartRead {
    xid: u32,
    attr: Fattr3,
    off: u64,
    end: u64,
    /// Taken before the cache was read: fills of the fetched runs are dropped if the
    /// file changed here since.
    stamp: u64,
    pieces: Vec<Piece>,
}

/// Reads each of `ranges` of `fh` from the next hop with one READ, all at once, as
/// `cred`, and fills them into the cache under `stamp` (dropped if the file changed here
/// since); the bytes, in the order of `ranges`. None if any read fails or comes back
/// short (the file changed at the next hop).
pub async fn fetch_ranges(
    cache: &std::sync::Arc<CacheLayer>,
    up: &std::sync::Arc<crate::upstream::Upstream>,
    fh: &[u8],
    cred: &crate::upstream::calls::Cred,
    ranges: &[std::ops::Range<u64>],
    stamp: u64,
) -> Option<Vec<bytes::Bytes>> {
    if ranges.is_empty() {
        return Some(Vec::new());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, r) in ranges.iter().enumerate() {
        let (up, cred, fh, r) = (up.clone(), cred.clone(), fh.to_vec(), r.clone());
        tasks.spawn(async move {
            let len = (r.end - r.start) as u32;
            let b = crate::upstream::calls::read_upstream(&up, &cred, &fh, r.start, len).await;
            (i, b.ok().filter(|b| b.len() == len as usize))
        });
    }
    let mut got: Vec<Option<bytes::Bytes>> = vec![None; ranges.len()];
    while let Some(r) = tasks.join_next().await {
        let (i, b) = r.ok()?;
        got[i] = Some(bytes::Bytes::from(b?));
    }
    let got: Vec<bytes::Bytes> = got.into_iter().collect::<Option<_>>()?;
    let (c, f, fills) = (
        cache.clone(),
        fh.to_vec(),
        ranges
            .iter()
            .map(|r| r.start)
            .zip(got.clone())
            .collect::<Vec<_>>(),
    );
    let _ = tokio::task::spawn_blocking(move || {
        for (at, b) in fills {
            if let Err(e) = c.fill_checked(&f, at, &b, stamp) {
                debug!(side = "cache", error = %e, "fill of fetched bytes failed");
            }
        }
    })
    .await;
    Some(got)
}

/// Answers a READ from the cached bytes of `plan` and its missing runs
/// ([`fetch_ranges`]): only what the cache lacks crosses. None (the caller forwards the
/// READ as it came) if a fetch fails or comes back short.
pub async fn part_read(
    cache: &std::sync::Arc<CacheLayer>,
    up: &std::sync::Arc<crate::upstream::Upstream>,
    fh: &[u8],
    cred: &crate::upstream::calls::Cred,
    plan: PartRead,
) -> Option<BytesMut> {
    let need: Vec<std::ops::Range<u64>> = plan
        .pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Need(r) => Some(r.clone()),
            Piece::Have(_) => None,
        })
        .collect();
    let mut fetched = fetch_ranges(cache, up, fh, cred, &need, plan.stamp)
        .await?
        .into_iter();
    let n = (plan.end - plan.off) as usize;
    let mut out = read_reply_head(plan.xid, &plan.attr, plan.end >= plan.attr.size, n);
    for p in &plan.pieces {
        match p {
            Piece::Have(b) => out.extend_from_slice(b),
            Piece::Need(_) => out.extend_from_slice(&fetched.next()?),
        }
    }
    out.put_bytes(0, crate::xdr::pad(n));
    cache.partial_hits.fetch_add(1, Ordering::Relaxed);
    Some(out)
}

/// What to do with an NFS call before forwarding it.
pub enum Before {
    /// Answered from the cache: the whole reply record.
    Hit(BytesMut),
    /// Forward it; `stamp` goes to `observe` with the reply.
    Forward { stamp: u64 },
}

/// Whether a call of this procedure goes through the cache before it is forwarded (and
/// may be answered there): the connection handles these off its reader.
pub fn touches_store(p: Proc) -> bool {
    matches!(
        p,
        Proc::READ | Proc::WRITE | Proc::SETATTR | Proc::COMMIT | Proc::CREATE
    )
}

/// A call answered before anything else sees it: a CREATE GUARDED of a name the session
/// knows to exist (NFS3ERR_EXIST), or (write-back) a truncation the cache takes
/// (`writeback::truncate_here`). None: go on with `names_before` and
/// `before_forward`.
pub async fn answer_here(
    cache: &std::sync::Arc<CacheLayer>,
    p: Proc,
    call: &bytes::Bytes,
) -> Option<BytesMut> {
    if p == Proc::CREATE
        && let Some(r) = cache.answer_metadata(p, call)
    {
        return Some(r); // GUARDED, of a name known to exist
    }
    // Only in the session model: with `consistency = "attributes"` another writer may
    // have grown the file since its size was seen, and a growing truncation kept here
    // would zero that writer's bytes.
    if cache.policy != WritePolicy::WriteBack
        || cache.consistency != Consistency::Session
        || !matches!(p, Proc::SETATTR | Proc::CREATE)
    {
        return None;
    }
    super::writeback::truncate_here(cache, p, call).await
}

/// Tries a READ on the cache; answers WRITE, COMMIT and SETATTR(size) in write-back
/// mode; prepares WRITE/SETATTR otherwise (invalidation); stamps the call. Runs the file
/// I/O on the blocking pool.
pub async fn before_forward(
    cache: &std::sync::Arc<CacheLayer>,
    up: &std::sync::Arc<crate::upstream::Upstream>,
    p: Proc,
    call: &bytes::Bytes,
) -> Before {
    if p == Proc::GETATTR {
        // Only routed here while the next hop is down (conn.rs): answer from what the
        // cache knows, in the session model where the cache is trusted anyway.
        let (c, call) = (cache.clone(), call.clone());
        let hit = tokio::task::spawn_blocking(move || c.getattr_offline(&call)).await;
        return match hit {
            Ok(Some(r)) => Before::Hit(r),
            _ => Before::Forward {
                stamp: cache.stamp(),
            },
        };
    }
    // Only these touch the store before forwarding; every other call just takes a stamp
    // here, without a trip through the blocking pool on each RPC.
    if !touches_store(p) {
        return Before::Forward {
            stamp: cache.stamp(),
        };
    }
    // Every READ the client sends is part of its working set, however it is answered.
    if p == Proc::READ
        && let Some(ws) = &cache.workset
    {
        ws.record_call(call);
    }
    if p == Proc::READ
        && let Some(m) = cache.meta.get()
        && let super::meta::MetaRead::Reply(r) = m.read(cache, up, call).await
    {
        return Before::Hit(r);
    }
    if cache.policy == WritePolicy::WriteBack {
        use super::writeback;
        match p {
            Proc::WRITE => return Before::Hit(writeback::write(cache, up, call.clone()).await),
            Proc::COMMIT => return Before::Hit(writeback::commit(cache, call.clone()).await),
            Proc::SETATTR if setattr_size(call) => {
                return Before::Hit(writeback::setattr_size(cache, up, call.clone()).await);
            }
            Proc::CREATE if create_size(call).is_some() => {
                return Before::Hit(writeback::create_sized(cache, up, call.clone()).await);
            }
            Proc::SETATTR => {
                // Times set on a file with local writes: write it back first, or the
                // flush's WRITEs would overwrite the time set (cp -p, tar, rsync -t).
                if let Some(fh) = setattr_times(call).filter(|fh| cache.local(fh).is_some())
                    && let Err(e) = writeback::flush(cache, up, Some(fh)).await
                {
                    warn!(side = "cache", error = %e, "write-back before a SETATTR of times failed");
                }
            }
            _ => {}
        }
    }
    if p == Proc::COMMIT {
        return Before::Forward {
            stamp: cache.stamp(),
        };
    }
    let c = cache.clone();
    let owned = call.clone();
    let r = tokio::task::spawn_blocking(move || {
        let call = owned;
        let (_, args_at) = nfs_call(&call)?;
        match p {
            Proc::READ => {
                let Ok(Args::Read(a)) = Args::decode(p, &call[args_at..]) else {
                    return None;
                };
                let stamp = c.stamp();
                let xid = u32::from_be_bytes(call[..4].try_into().expect("xid"));
                match c.read(xid, a.file.0, a.offset, a.count) {
                    Some(reply) => Some(Step::Done(Before::Hit(reply))),
                    None => match c.plan_part_read(xid, a.file.0, a.offset, a.count, stamp) {
                        Some(plan) => Some(Step::Part(a.file.0.to_vec(), plan)),
                        None => Some(Step::Done(Before::Forward { stamp })),
                    },
                }
            }
            _ => {
                c.before_change(&call);
                Some(Step::Done(Before::Forward { stamp: c.stamp() }))
            }
        }
    })
    .await;
    match r.ok().flatten() {
        Some(Step::Done(b)) => b,
        Some(Step::Part(fh, plan)) => {
            let stamp = plan.stamp;
            // The client's credential, parsed only for the READs that need it.
            match crate::upstream::calls::Cred::of(call) {
                Some(cred) => match part_read(cache, up, &fh, &cred, plan).await {
                    Some(reply) => Before::Hit(reply),
                    None => Before::Forward { stamp },
                },
                None => Before::Forward { stamp },
            }
        }
        // Not an NFS call we can read (cannot happen for routed calls): a stamp of 0
        // makes the reply teach nothing.
        None => Before::Forward { stamp: 0 },
    }
}

/// What the blocking part of [`before_forward`] decided.
enum Step {
    Done(Before),
    /// A READ the cache holds part of: fetch the rest (file handle, plan).
    Part(Vec<u8>, PartRead),
}

impl super::names::Attrs for CacheLayer {
    fn attr(&self, fh: &[u8]) -> Option<Fattr3> {
        let (attr, local) = self.with_file(fh, |s| (s.attr.clone(), s.local));
        let attr = attr?;
        Some(match &local {
            Some(l) => overlay(attr, l),
            None => attr,
        })
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn now(&self) -> u64 {
        self.stamp()
    }

    fn touch(&self, fh: &[u8]) {
        self.change(fh);
    }

    /// Also the attributes kept in the store (blocking I/O): a later READ must not
    /// bring them back (`persisted_attr`).
    fn forget(&self, fh: &[u8]) {
        let _m = self.mutate.lock().expect("mutate lock");
        self.changed(fh, None);
        if let Err(e) = self.store.invalidate(fh, ATTR_BLOCK) {
            warn!(side = "cache", error = %e, "cache invalidation failed");
        }
    }
}

impl CacheLayer {
    /// The reply to a metadata call the session knows (`metadata = "session"`),
    /// without touching the disk. None: forward it (call `names_before` first).
    pub fn answer_metadata(&self, p: Proc, call: &[u8]) -> Option<BytesMut> {
        self.names.as_ref()?.answer(p, call, self)
    }

    /// Before a call is forwarded (see `names::Names::before`).
    pub fn names_before(&self, p: Proc, call: &[u8]) {
        if let Some(n) = &self.names {
            n.before(p, call, self);
        }
    }

    /// What a forwarded call's reply teaches the session's metadata; call before
    /// `observe`.
    pub fn observe_names(&self, call: &[u8], reply: &[u8], stamp: u64) {
        let Some(n) = &self.names else { return };
        let Some((p, _)) = nfs_call(call) else { return };
        // Every forwarded reply passes here: READ/WRITE/COMMIT replies are not parsed.
        if !super::names::Names::learns_from(p) {
            return;
        }
        let body = match parse_reply(reply) {
            Ok((_, ReplyKind::Accepted { stat, results_at })) if stat == AcceptStat::SUCCESS => {
                &reply[results_at..]
            }
            _ => &[][..],
        };
        n.observe(p, call, body, stamp, self);
    }

    /// Whether a GETATTR should be tried on the cache: the next hop is down and the
    /// cache is trusted (`session`).
    pub fn answers_getattr_offline(&self, up: &crate::upstream::Upstream) -> bool {
        self.consistency == Consistency::Session && up.is_down()
    }

    /// A GETATTR answered from the cache's attributes (the next hop is down).
    fn getattr_offline(&self, call: &[u8]) -> Option<BytesMut> {
        let (p, at) = nfs_call(call)?;
        let Ok(Args::Getattr(a)) = Args::decode(p, &call[at..]) else {
            return None;
        };
        let attr = self.effective_attr(a.object.0)?;
        let xid = u32::from_be_bytes(call[..4].try_into().ok()?);
        let mut out = accepted_reply(xid, AcceptStat::SUCCESS);
        Res::Getattr(NfsResult::Ok(nfs3::GetattrResOk {
            obj_attributes: attr,
        }))
        .encode(&mut out);
        self.offline_getattrs.fetch_add(1, Ordering::Relaxed);
        Some(out)
    }
}

/// The file of a SETATTR call that sets its mtime or atime.
fn setattr_times(call: &[u8]) -> Option<Vec<u8>> {
    let (p, at) = nfs_call(call)?;
    match Args::decode(p, &call[at..]) {
        Ok(Args::Setattr(a))
            if a.new_attributes.mtime != nfs3::SetTime::DontChange
                || a.new_attributes.atime != nfs3::SetTime::DontChange =>
        {
            Some(a.object.0.to_vec())
        }
        _ => None,
    }
}

/// The size a CREATE sets on the file (UNCHECKED or GUARDED with a size): on an
/// existing file, NFSv3's create-or-truncate.
pub(super) fn create_size(call: &[u8]) -> Option<u64> {
    let (p, at) = nfs_call(call)?;
    match Args::decode(p, &call[at..]) {
        Ok(Args::Create(c)) => match c.how {
            nfs3::CreateHow3::Unchecked(a) | nfs3::CreateHow3::Guarded(a) => a.size,
            nfs3::CreateHow3::Exclusive(_) => None,
        },
        _ => None,
    }
}

/// A SETATTR call that sets the size.
fn setattr_size(call: &[u8]) -> bool {
    let Some((p, at)) = nfs_call(call) else {
        return false;
    };
    matches!(Args::decode(p, &call[at..]), Ok(Args::Setattr(a)) if a.new_attributes.size.is_some())
}

/// (procedure, offset of the arguments) of an NFSv3 call record.
fn nfs_call(call: &[u8]) -> Option<(Proc, usize)> {
    let h = CallHeader::parse(call).ok()?;
    (h.prog == nfs3::PROGRAM && h.vers == nfs3::VERSION).then_some((Proc(h.proc_), h.args_at))
}

#[cfg(test)]
#[path = "cached_tests.rs"]
mod tests;
