//! The client proxy's use of metadata sidecars (paper §3.2.2).
//!
//! - Names: a file handle's parent directory and name are learned from LOOKUP, CREATE
//!   and READDIRPLUS replies (bounded table), because a sidecar is found by name.
//! - On the first READ of a file, its sidecar is looked up (one LOOKUP and its READs,
//!   with the client's credential), parsed and checked against the file's attributes.
//!   The result, positive or negative, is kept until the file's size or mtime change.
//!   A stale sidecar is ignored with a warning, a malformed one with the parse error.
//! - READs of zero blocks are answered here without any upstream call; a READ that is
//!   partly zero asks the next hop only for its other bytes.
//! - `fetch = "whole-file"`: the first READ starts a whole-file transfer over the file
//!   channel (`wholefile`), and READs are answered from it as their range arrives.
//! - A working set in the sidecar of a file read by blocks: the first READ starts a
//!   transfer of just the working set the same way, into the block cache (`prefetch`);
//!   READs inside it wait for the stream, then go the usual way (hits).
//!
//! Files with local writes (write-back) are left to the block path: the sidecar
//! describes the next hop's file, and the cache's dirty data wins.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use tracing::{debug, warn};

use super::cached::CacheLayer;
use super::wholefile::{Progress, WholeFiles};
use crate::config::MetaConfig;
use crate::meta::{Fetch, FileTime, Sidecar, sidecar_name};
use crate::nfs3::{self, Args, Fattr3, Fh, Ftype3, LookupArgs, NfsResult, Nfstime3, Proc, Res};
use crate::rpc::CallHeader;
use crate::ssh::client::SshConnector;
use crate::upstream::Upstream;
use crate::upstream::calls::{CallError, Cred, nfs_call, read_upstream};

/// Names remembered at most (a handle and a name each).
const MAX_NAMES: usize = 65_536;
/// Regular files at least this large have their sidecar looked up when a LOOKUP finds
/// them (smaller files wait for their first READ, so a tree of small files costs no
/// extra calls).
const PREFETCH_MIN: u64 = 1 << 20;
/// Zero runs (16 bytes each) held by remembered sidecars at most: 256 MiB.
const MAX_RUNS_HELD: u64 = 16 << 20;
/// Sidecar lookups remembered at most.
const MAX_SIDECARS: usize = 16_384;

/// The outcome of a sidecar lookup for a file as it was (size, mtime).
struct Lookup {
    size: u64,
    mtime: Nfstime3,
    sidecar: Option<Arc<Sidecar>>,
}

/// (directory handle, name) of a file.
type DirName = (Vec<u8>, Vec<u8>);
/// A file's sidecar lookup: later READs wait for the first one's.
type Slot = Arc<tokio::sync::Mutex<Option<Lookup>>>;

/// Counters for `gridvfs status`.
#[derive(Default)]
pub struct MetaStats {
    pub sidecars_found: AtomicU64,
    pub sidecars_absent: AtomicU64,
    pub sidecars_stale: AtomicU64,
    pub sidecars_bad: AtomicU64,
    /// READs answered entirely from zero maps, and the zero bytes answered (also those
    /// in partly zero READs).
    pub zero_reads: AtomicU64,
    pub zero_bytes: AtomicU64,
    /// READs split around zero blocks (only their other bytes asked upstream).
    pub partial_reads: AtomicU64,
    /// Whole-file write-backs over the file channel, and their file bytes.
    pub uploads: AtomicU64,
    pub upload_bytes: AtomicU64,
}

pub struct MetaLayer {
    cfg: MetaConfig,
    /// handle → (directory handle, name).
    names: Mutex<HashMap<Vec<u8>, DirName>>,
    /// handle → its sidecar lookup (one at a time per file: later READs wait for it).
    lookups: Mutex<HashMap<Vec<u8>, Slot>>,
    /// Zero runs held by the sidecars in `lookups` (bounds their memory).
    runs_held: AtomicU64,
    pub whole: Option<Arc<WholeFiles>>,
    /// The SSH session to a gridvfs server proxy, for the file channel.
    connector: Option<Arc<SshConnector>>,
    /// The next hop, for sidecar lookups started by a LOOKUP reply.
    up: Arc<Upstream>,
    /// Transfers queued by `gridvfs prefetch` run one at a time, holding this.
    prefetch_turn: tokio::sync::Mutex<()>,
    pub stats: MetaStats,
}

/// What [`MetaLayer::start_fetch`] started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// The whole file's transfer (queued, running or done), of this many data bytes.
    WholeFile { bytes: u64 },
    /// The working set's transfer (queued, running or done), this many bytes of the
    /// file (widened to whole cache blocks).
    WorkingSet { bytes: u64 },
    /// Nothing, and why.
    Nothing(&'static str),
}

/// What the sidecar path did with a READ.
pub enum MetaRead {
    /// The whole reply.
    Reply(BytesMut),
    /// Not ours: the block path answers it.
    Pass,
}

impl MetaLayer {
    pub fn new(
        cfg: &MetaConfig,
        connector: Option<Arc<SshConnector>>,
        up: Arc<Upstream>,
    ) -> std::io::Result<MetaLayer> {
        let connector = connector.filter(|c| c.has_file_channel());
        let whole = match (&cfg.whole_file_dir, &connector) {
            (Some(dir), Some(_)) => Some(Arc::new(WholeFiles::open(dir, cfg.whole_file_max)?)),
            _ => None,
        };
        Ok(MetaLayer {
            cfg: cfg.clone(),
            names: Mutex::default(),
            lookups: Mutex::default(),
            runs_held: AtomicU64::new(0),
            whole,
            connector,
            up,
            prefetch_turn: tokio::sync::Mutex::new(()),
            stats: MetaStats::default(),
        })
    }

    /// Makes the file channel's session in the background if there is none yet, so
    /// that a transfer about to start does not wait for its handshake.
    pub fn warm_file_session(&self) {
        if let (Some(c), Some(_)) = (&self.connector, &self.whole)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let c = c.clone();
            rt.spawn(async move { c.warm_file_session().await });
        }
    }

    /// Whether whole files can be moved over the file channel.
    pub fn has_channel(&self) -> bool {
        self.connector.is_some()
    }

    pub fn connector(&self) -> Option<&Arc<SshConnector>> {
        self.connector.as_ref()
    }

    pub(super) fn learn_name(&self, fh: &[u8], dir: &[u8], name: &[u8]) {
        if name == b"." || name == b".." {
            return;
        }
        let mut m = self.names.lock().expect("names");
        if m.len() >= MAX_NAMES && !m.contains_key(fh) {
            // Forget an arbitrary half: a forgotten file just has no sidecar until it is
            // looked up again.
            let drop: Vec<Vec<u8>> = m.keys().take(MAX_NAMES / 2).cloned().collect();
            for k in drop {
                m.remove(&k);
            }
        }
        m.insert(fh.to_vec(), (dir.to_vec(), name.to_vec()));
    }

    /// Learns names from a reply (called by the cache's `observe`). A LOOKUP of a large
    /// regular file (an image about to be opened) starts its sidecar lookup at once, so
    /// the first READ does not wait for it.
    pub fn observe(self: &Arc<Self>, call: &[u8], args: &Args<'_>, res: &Res<'_>) {
        match (args, res) {
            (Args::Lookup(a), Res::Lookup(NfsResult::Ok(ok))) => {
                self.learn_name(ok.object.0, a.what.dir.0, a.what.name);
                if let Some(attr) = &ok.obj_attributes
                    && attr.ftype == Ftype3::REG
                    && attr.size >= PREFETCH_MIN
                    && !crate::meta::is_sidecar_name(a.what.name)
                    && let Some(cred) = Cred::of(call)
                    && let Ok(rt) = tokio::runtime::Handle::try_current()
                {
                    let (me, fh, attr) = (self.clone(), ok.object.0.to_vec(), attr.clone());
                    rt.spawn(async move {
                        let up = me.up.clone();
                        me.sidecar(&up, &fh, &attr, &cred).await;
                    });
                    self.warm_file_session();
                }
            }
            (Args::Create(a), Res::Create(NfsResult::Ok(ok))) => {
                if let Some(fh) = &ok.obj {
                    self.learn_name(fh.0, a.where_.dir.0, a.where_.name);
                }
            }
            (Args::Readdirplus(a), Res::Readdirplus(NfsResult::Ok(ok))) => {
                for e in &ok.reply.entries {
                    if let Some(fh) = &e.name_handle {
                        self.learn_name(fh.0, a.dir.0, e.name);
                    }
                }
            }
            (Args::Rename(a), Res::Rename(NfsResult::Ok(_))) => {
                let mut m = self.names.lock().expect("names");
                for v in m.values_mut() {
                    if v.0 == a.from.dir.0 && v.1 == a.from.name {
                        *v = (a.to.dir.0.to_vec(), a.to.name.to_vec());
                    }
                }
            }
            _ => {}
        }
    }

    /// The file's fresh sidecar, looking it up if this file (at this size and mtime)
    /// was not looked up yet.
    pub async fn sidecar(
        &self,
        up: &Upstream,
        fh: &[u8],
        attr: &Fattr3,
        cred: &Cred,
    ) -> Option<Arc<Sidecar>> {
        let slot = {
            let mut m = self.lookups.lock().expect("lookups");
            match m.get(fh) {
                Some(s) => s.clone(),
                // A file whose name is unknown cannot have its sidecar found: no entry
                // (every READ of such a file passes here).
                None if !self.names.lock().expect("names").contains_key(fh) => return None,
                None => {
                    if m.len() >= MAX_SIDECARS
                        || self.runs_held.load(Ordering::Relaxed) >= MAX_RUNS_HELD
                    {
                        // Forget them all (each is looked up again when next needed).
                        m.clear();
                        self.runs_held.store(0, Ordering::Relaxed);
                    }
                    m.entry(fh.to_vec()).or_default().clone()
                }
            }
        };
        let mut g = slot.lock().await;
        if let Some(l) = &*g
            && l.size == attr.size
            && l.mtime == attr.mtime
        {
            return l.sidecar.clone();
        }
        let (dir, name) = self.names.lock().expect("names").get(fh).cloned()?;
        let sidecar = self
            .look_up(up, &dir, &name, attr, cred)
            .await
            .map(Arc::new);
        *g = Some(Lookup {
            size: attr.size,
            mtime: attr.mtime,
            sidecar: sidecar.clone(),
        });
        sidecar
    }

    async fn look_up(
        &self,
        up: &Upstream,
        dir: &[u8],
        name: &[u8],
        attr: &Fattr3,
        cred: &Cred,
    ) -> Option<Sidecar> {
        let shown = String::from_utf8_lossy(name).into_owned();
        let sname = sidecar_name(name)?;
        let args = Args::Lookup(LookupArgs {
            what: nfs3::Diropargs3 {
                dir: Fh(dir),
                name: &sname,
            },
        });
        let sfh = match nfs_call(up, cred, &args).await {
            Ok((reply, at)) => match Res::decode(Proc::LOOKUP, &reply[at..]) {
                Ok(Res::Lookup(NfsResult::Ok(ok))) => ok.object.0.to_vec(),
                _ => return None,
            },
            Err(CallError::Status(s)) if s == nfs3::Nfsstat3::NOENT => {
                self.stats.sidecars_absent.fetch_add(1, Ordering::Relaxed);
                debug!(file = %shown, "no sidecar");
                return None;
            }
            Err(e) => {
                warn!(side = "upstream", file = %shown, error = %e, "sidecar lookup failed; reading by blocks");
                return None;
            }
        };
        let limit = crate::meta::format::MAX_SIDECAR as u32 + 1;
        let bytes = match read_upstream(up, cred, &sfh, 0, limit).await {
            Ok(b) => b,
            Err(e) => {
                warn!(side = "upstream", file = %shown, error = %e, "sidecar unreadable; ignored");
                self.stats.sidecars_bad.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        // Parsing a big map takes a while: off the reactor.
        let parsed = tokio::task::spawn_blocking(move || Sidecar::parse(&bytes)).await;
        let sc = match parsed.unwrap_or_else(|e| {
            Err(crate::meta::SidecarError::Bad(format!(
                "parser task failed: {e}"
            )))
        }) {
            Ok(s) => s,
            Err(e) => {
                warn!(side = "upstream", file = %shown, error = %e, "sidecar ignored");
                self.stats.sidecars_bad.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let now = FileTime {
            secs: attr.mtime.seconds as i64,
            nsecs: attr.mtime.nseconds,
        };
        if let Err(why) = sc.check_fresh(attr.size, now) {
            warn!(file = %shown, %why, "stale sidecar ignored (run `gridvfs meta generate` again)");
            self.stats.sidecars_stale.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.stats.sidecars_found.fetch_add(1, Ordering::Relaxed);
        debug!(file = %shown, zero = sc.zero_bytes(), size = sc.size, "sidecar in use");
        Some(sc)
    }

    /// Queues what the file's first READ would start (`gridvfs prefetch`): its
    /// whole-file transfer, or the transfer of its working set into the block cache, as
    /// `cred`. `fh` must have been looked up (its name learnt), with attributes `attr`.
    /// Returns once the sidecar is known; the transfers queued this way then run one at
    /// a time in the order asked (the link is shared, and the first file asked for is
    /// the first needed). A READ does not wait for its turn: it starts its file's
    /// transfer at once, and the queue later finds it running or done.
    pub async fn start_fetch(
        self: &Arc<Self>,
        cache: &Arc<CacheLayer>,
        fh: &[u8],
        attr: &Fattr3,
        cred: &Cred,
    ) -> Started {
        if attr.ftype != Ftype3::REG {
            return Started::Nothing("not a regular file");
        }
        if cache.local(fh).is_some() {
            return Started::Nothing("the file has local writes: it is read by blocks");
        }
        let Some(sc) = self.sidecar(&self.up, fh, attr, cred).await else {
            return Started::Nothing("no fresh sidecar");
        };
        let (Some(whole), Some(_)) = (&self.whole, &self.connector) else {
            return Started::Nothing(
                "no file channel (the next hop is not a gridvfs server proxy over SSH)",
            );
        };
        if whole.failed_lately(fh) {
            return Started::Nothing("its transfer failed lately: READs go by blocks for now");
        }
        let started = match sc.actions.fetch {
            Fetch::WholeFile => Started::WholeFile {
                bytes: super::wholefile::data_bytes(&sc.zeros, attr.size),
            },
            Fetch::Blocks if !sc.working_set.is_empty() => {
                let granule = cache.block_size().max(sc.zeros.block_size as u64);
                let cover = super::prefetch::plan_cover(&sc, granule);
                Started::WorkingSet {
                    bytes: cover.iter().map(|r| r.end - r.start).sum(),
                }
            }
            Fetch::Blocks => return Started::Nothing("the sidecar has no working set"),
        };
        let (me, cache, fh, attr, cred) = (
            self.clone(),
            cache.clone(),
            fh.to_vec(),
            attr.clone(),
            cred.clone(),
        );
        tokio::spawn(async move {
            let _turn = me.prefetch_turn.lock().await;
            me.fetch_and_wait(&cache, &fh, &attr, &cred, sc).await;
        });
        started
    }

    /// Starts (or finds) the transfer `sc` calls for and waits until it is done or failed.
    async fn fetch_and_wait(
        &self,
        cache: &Arc<CacheLayer>,
        fh: &[u8],
        attr: &Fattr3,
        cred: &Cred,
        sc: Arc<Sidecar>,
    ) {
        let (Some(whole), Some(conn)) = (&self.whole, &self.connector) else {
            return;
        };
        let ok = match sc.actions.fetch {
            Fetch::WholeFile => {
                let entry = match whole.get(fh, attr.size, attr.mtime) {
                    Some(e) => Some(e),
                    None => whole.start(conn.clone(), fh, sc, attr.mtime, cred.clone()),
                };
                match entry {
                    Some(e) => e.wait_for(attr.size).await,
                    None => false,
                }
            }
            Fetch::Blocks => {
                let p = whole.prefetch(
                    conn.clone(),
                    cache.clone(),
                    fh,
                    sc,
                    attr.size,
                    attr.mtime,
                    cred.clone(),
                );
                match p {
                    Some(p) => p.wait_for(attr.size).await,
                    None => false,
                }
            }
        };
        if !ok {
            let name = self
                .names
                .lock()
                .expect("names")
                .get(fh)
                .map(|(_, n)| n.clone());
            let file = String::from_utf8_lossy(name.as_deref().unwrap_or(b"?")).into_owned();
            warn!(
                side = "upstream",
                %file,
                "a transfer asked for by `gridvfs prefetch` did not complete; READs go by blocks"
            );
        }
    }

    /// Drops whole files and forgets sidecar lookups (SIGUSR2).
    pub fn drop_all(&self) {
        self.lookups.lock().expect("lookups").clear();
        self.runs_held.store(0, Ordering::Relaxed);
        if let Some(w) = &self.whole {
            w.drop_all();
        }
    }

    /// READ through the sidecar, if the file has one.
    pub async fn read(
        self: &Arc<Self>,
        cache: &Arc<CacheLayer>,
        up: &Arc<Upstream>,
        call: &bytes::Bytes,
    ) -> MetaRead {
        let Some((xid, fh, off, count, cred)) = read_args(call) else {
            return MetaRead::Pass;
        };
        if cache.local(&fh).is_some() {
            return MetaRead::Pass;
        }
        let Some(attr) = cache.upstream_attr(&fh).filter(|a| a.ftype == Ftype3::REG) else {
            return MetaRead::Pass;
        };
        let end = off.saturating_add(count as u64).min(attr.size);
        if off >= end {
            return MetaRead::Pass;
        }
        let Some(sc) = self.sidecar(up, &fh, &attr, &cred).await else {
            return MetaRead::Pass;
        };
        let eof = end >= attr.size;
        if sc.zeros.is_zero(off, end) {
            self.stats.zero_reads.fetch_add(1, Ordering::Relaxed);
            self.stats
                .zero_bytes
                .fetch_add(end - off, Ordering::Relaxed);
            return MetaRead::Reply(read_reply(xid, &attr, eof, (end - off) as usize, |_| {}));
        }
        if sc.actions.fetch == Fetch::WholeFile
            && let (Some(whole), Some(conn)) = (&self.whole, &self.connector)
        {
            let entry = match whole.get(&fh, attr.size, attr.mtime) {
                Some(e) => Some(e),
                None => whole.start(conn.clone(), &fh, sc.clone(), attr.mtime, cred.clone()),
            };
            if let Some(e) = entry {
                let near = match e.progress() {
                    Progress::Running { frontier } => {
                        off <= frontier.saturating_add(self.cfg.wait_ahead)
                    }
                    Progress::Done => true,
                    Progress::Failed => false,
                };
                let arrived = near && e.wait_for(end).await;
                if !arrived && whole.take_stale(&fh) {
                    // The server proxy saw another size or mtime: this proxy's attributes
                    // (and so the sidecar's freshness) are out of date. Learn them again
                    // from the next reply; meanwhile the block path answers.
                    self.lookups.lock().expect("lookups").remove(&fh);
                    let (c, f) = (cache.clone(), fh.clone());
                    let _ = tokio::task::spawn_blocking(move || c.forget_attr(&f)).await;
                    return MetaRead::Pass;
                }
                if arrived {
                    let (e2, a2, data) = (e.clone(), attr.clone(), sc.zeros.data_ranges(off, end));
                    let r = tokio::task::spawn_blocking(move || {
                        read_reply_io(xid, &a2, eof, (end - off) as usize, |out| {
                            e2.read_data(off, &data, out)
                        })
                    })
                    .await;
                    if let Ok(Ok(reply)) = r {
                        whole.stats.reads.fetch_add(1, Ordering::Relaxed);
                        return MetaRead::Reply(reply);
                    }
                }
            }
        }
        // A working set: fetched into the block cache in one stream at the first READ;
        // a READ inside it waits for the stream to pass it (it is what the VM reads
        // next: fetching it again by blocks would send the same bytes twice), unless
        // more than `wait_ahead` of it is still to come; then it goes on as usual below.
        if sc.actions.fetch == Fetch::Blocks
            && !sc.working_set.is_empty()
            && let (Some(whole), Some(conn)) = (&self.whole, &self.connector)
            && let Some(p) = whole.prefetch(
                conn.clone(),
                cache.clone(),
                &fh,
                sc.clone(),
                attr.size,
                attr.mtime,
                cred.clone(),
            )
            && p.covers(off, end)
            && let Progress::Running { frontier } = p.progress()
            && frontier < end
            && p.cover_bytes(frontier, off) <= self.cfg.wait_ahead
        {
            whole
                .stats
                .working_set_waits
                .fetch_add(1, Ordering::Relaxed);
            // At most `SILENCE` in all (a stream that trickles is not waited for
            // forever): then the READ goes on (by blocks). A stream the server found
            // stale has relearnt the file's attributes itself (`prefetch`).
            let _ = tokio::time::timeout(super::wholefile::SILENCE, p.wait_for(end)).await;
        }
        let ranges = sc.zeros.data_ranges(off, end);
        let data: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        if data == end - off {
            return MetaRead::Pass; // no zero block in it: the block path as usual
        }
        // Partly zero: the other bytes from the cache or the next hop, each copied
        // once, into the reply (zeros elsewhere).
        match self.partial(cache, up, &fh, &cred, ranges).await {
            Some(pieces) => {
                self.stats.partial_reads.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .zero_bytes
                    .fetch_add(end - off - data, Ordering::Relaxed);
                MetaRead::Reply(read_reply(xid, &attr, eof, (end - off) as usize, |out| {
                    for (at, b) in pieces {
                        let i = (at - off) as usize;
                        out[i..i + b.len()].copy_from_slice(&b);
                    }
                }))
            }
            None => MetaRead::Pass,
        }
    }

    /// The bytes of `ranges` (the non-zero parts of a READ), each from the cache or the
    /// next hop, with their offsets; None if any read failed (the block path then tries).
    async fn partial(
        &self,
        cache: &Arc<CacheLayer>,
        up: &Arc<Upstream>,
        fh: &[u8],
        cred: &Cred,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> Option<Vec<(u64, bytes::Bytes)>> {
        // What the cache holds, in one trip to a blocking thread.
        let stamp = cache.stamp();
        let (c, f) = (cache.clone(), fh.to_vec());
        let looked = tokio::task::spawn_blocking(move || {
            ranges
                .into_iter()
                .map(|r| {
                    let got = c.read_range(&f, r.clone()).map(bytes::Bytes::from);
                    (r, got)
                })
                .collect::<Vec<_>>()
        })
        .await
        .ok()?;
        let mut pieces = Vec::with_capacity(looked.len());
        let mut missing = Vec::new();
        for (r, got) in looked {
            match got {
                Some(b) => pieces.push((r.start, b)),
                None => missing.push(r),
            }
        }
        let fetched = super::cached::fetch_ranges(cache, up, fh, cred, &missing, stamp).await?;
        pieces.extend(missing.iter().map(|r| r.start).zip(fetched));
        Some(pieces)
    }
}

/// (xid, file, offset, count, credential) of a READ call.
fn read_args(call: &[u8]) -> Option<(u32, Vec<u8>, u64, u32, Cred)> {
    let h = CallHeader::parse(call).ok()?;
    let Ok(Args::Read(a)) = Args::decode(Proc(h.proc_), &call[h.args_at..]) else {
        return None;
    };
    let xid = u32::from_be_bytes(call.get(..4)?.try_into().ok()?);
    Some((
        xid,
        a.file.0.to_vec(),
        a.offset,
        a.count,
        Cred {
            flavor: h.cred.flavor.0,
            body: h.cred.body.to_vec(),
        },
    ))
}

/// A READ reply of `n` bytes that `fill` writes into place (zeros before it does).
fn read_reply(
    xid: u32,
    attr: &Fattr3,
    eof: bool,
    n: usize,
    fill: impl FnOnce(&mut [u8]),
) -> BytesMut {
    read_reply_io(xid, attr, eof, n, |out| {
        fill(out);
        Ok(())
    })
    .expect("a fill that cannot fail")
}

/// A READ reply of `n` bytes that `fill` writes into place (zeros before it does), or
/// fill's error.
fn read_reply_io(
    xid: u32,
    attr: &Fattr3,
    eof: bool,
    n: usize,
    fill: impl FnOnce(&mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<BytesMut> {
    let mut out = super::cached::read_reply_head(xid, attr, eof, n);
    let at = out.len();
    out.put_bytes(0, n);
    fill(&mut out[at..at + n])?;
    out.put_bytes(0, crate::xdr::pad(n));
    Ok(out)
}
