//! Whole files beside the block frames (the paper's heterogeneous cache): files whose
//! sidecar says `fetch = "whole-file"` are fetched once, compressed, over the file
//! channel and kept here as sparse local files (zero blocks stay holes).
//!
//! A transfer decompresses each frame straight into place as it arrives; `progress`
//! says how far the file is complete (frames come in file order, so everything before
//! the frontier is there), and a READ waits only for its own range. A complete file is
//! made durable (data, then its `.info` record, then the directory) so a restarted
//! proxy still has it; it is used only while the next hop's size and mtime equal those it
//! was fetched at.
//!
//! Layout of `dir`: `<stem>.data` (the file's bytes) and `<stem>.info` (magic, handle,
//! size, mtime, CRC32); `stem` = hex of 16 bytes of the handle's BLAKE3 hash, the
//! process id and a serial, so a new copy never reuses an old one's files.

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BufMut;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::meta::channel::{self, ChannelError, FrameHead, Op, Request};
use crate::meta::{Sidecar, ZeroMap};
use crate::nfs3::Nfstime3;
use crate::ssh::client::SshConnector;
use crate::upstream::calls::Cred;

const INFO_MAGIC: &[u8; 8] = b"GVFSWHL1";
/// After a failed transfer, the file goes by blocks for this long before another try.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// How far a transfer has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Bytes before `frontier` are in place.
    Running {
        frontier: u64,
    },
    Done,
    Failed,
}

/// One whole file, complete or on its way.
pub struct Entry {
    pub size: u64,
    pub mtime: Nfstime3,
    data: PathBuf,
    info: PathBuf,
    file: std::fs::File,
    progress: watch::Receiver<Progress>,
    /// Bytes it takes on disk (its non-zero bytes), for the budget.
    charge: u64,
    last_use: AtomicU64,
}

impl Entry {
    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// Whether `off..end` is in place.
    fn has(&self, end: u64) -> bool {
        match self.progress() {
            Progress::Done => true,
            Progress::Running { frontier } => end <= frontier,
            Progress::Failed => false,
        }
    }

    /// Waits until `off..end` is in place; false if the transfer failed.
    pub async fn wait_for(&self, end: u64) -> bool {
        let mut rx = self.progress.clone();
        loop {
            if self.has(end) {
                return true;
            }
            if self.progress() == Progress::Failed || rx.changed().await.is_err() {
                return self.has(end);
            }
        }
    }

    /// Reads the bytes of `data` (ranges of the file, in order, at or after `off`) into
    /// `out`, which holds the file from `off` on and is zero elsewhere. The caller passes
    /// the sidecar's data ranges: the zero blocks were never fetched (holes here), and
    /// reading a hole costs the kernel a page of zeros in its page cache and a copy,
    /// where `out` already holds the zeros.
    pub fn read_data(
        &self,
        off: u64,
        data: &[std::ops::Range<u64>],
        out: &mut [u8],
    ) -> std::io::Result<()> {
        for r in data {
            let at = (r.start - off) as usize;
            self.file
                .read_exact_at(&mut out[at..at + (r.end - r.start) as usize], r.start)?;
        }
        Ok(())
    }
}

/// Counters of whole-file work, for `gridvfs status`.
#[derive(Default)]
pub struct WholeStats {
    pub fetches: AtomicU64,
    pub failed: AtomicU64,
    /// File bytes received (decompressed) and the bytes they took on the channel.
    pub raw_bytes: AtomicU64,
    pub wire_bytes: AtomicU64,
    /// READs answered from whole files.
    pub reads: AtomicU64,
    pub evicted: AtomicU64,
    /// Working sets fetched into the block cache (`prefetch`; also counted in
    /// `fetches`/`failed`/`raw_bytes`/`wire_bytes`), and READs that waited for one.
    pub working_sets: AtomicU64,
    pub working_set_waits: AtomicU64,
}

pub struct WholeFiles {
    dir: PathBuf,
    max: u64,
    entries: Mutex<HashMap<Vec<u8>, Arc<Entry>>>,
    /// Files whose last transfer failed: when, and whether the server proxy found the
    /// file changed since its sidecar (not yet reported by `take_stale`).
    failed: Mutex<HashMap<Vec<u8>, (Instant, bool)>>,
    /// Working-set transfers into the block cache, running or done (`prefetch`).
    pub(super) prefetches: Mutex<HashMap<Vec<u8>, Arc<super::prefetch::Prefetch>>>,
    tick: AtomicU64,
    pub stats: WholeStats,
}

fn key(fh: &[u8]) -> String {
    let h = blake3::hash(fh);
    h.as_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn encode_info(fh: &[u8], size: u64, mtime: Nfstime3) -> Vec<u8> {
    let mut b = Vec::with_capacity(96);
    b.put_slice(INFO_MAGIC);
    b.put_u32(fh.len() as u32);
    b.put_slice(fh);
    b.put_u64(size);
    b.put_u32(mtime.seconds);
    b.put_u32(mtime.nseconds);
    let crc = crc32fast::hash(&b);
    b.put_u32(crc);
    b
}

fn decode_info(b: &[u8]) -> Option<(Vec<u8>, u64, Nfstime3)> {
    let (body, crc) = b.split_at_checked(b.len().checked_sub(4)?)?;
    if crc32fast::hash(body).to_be_bytes() != crc || body.get(..8)? != INFO_MAGIC {
        return None;
    }
    let mut r = crate::xdr::Reader::new(&body[8..]);
    let n = r.u32().ok()? as usize;
    if n > crate::nfs3::NFS3_FHSIZE {
        return None;
    }
    let fh = r.take(n).ok()?.to_vec();
    let size = r.u64().ok()?;
    let mtime = Nfstime3 {
        seconds: r.u32().ok()?,
        nseconds: r.u32().ok()?,
    };
    r.finish().ok()?;
    Some((fh, size, mtime))
}

impl WholeFiles {
    /// Opens `dir` (made if missing): complete files of an earlier run are kept, the
    /// rest (transfers cut by a stop) removed.
    pub fn open(dir: &Path, max: u64) -> std::io::Result<WholeFiles> {
        std::fs::create_dir_all(dir)?;
        let w = WholeFiles {
            dir: dir.to_path_buf(),
            max,
            entries: Mutex::default(),
            failed: Mutex::default(),
            prefetches: Mutex::default(),
            tick: AtomicU64::new(1),
            stats: WholeStats::default(),
        };
        let mut kept = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "info") {
                let info = std::fs::read(&p).ok().and_then(|b| decode_info(&b));
                let data = p.with_extension("data");
                let file = std::fs::OpenOptions::new().read(true).open(&data);
                match (info, file) {
                    (Some((fh, size, mtime)), Ok(file)) if file.metadata()?.len() == size => {
                        let charge = file.metadata()?.blocks() * 512;
                        kept.push(data.clone());
                        let (_tx, rx) = watch::channel(Progress::Done);
                        w.entries.lock().expect("entries").insert(
                            fh,
                            Arc::new(Entry {
                                size,
                                mtime,
                                data,
                                info: p,
                                file,
                                progress: rx,
                                charge,
                                last_use: AtomicU64::new(0),
                            }),
                        );
                    }
                    _ => {
                        let _ = std::fs::remove_file(&p);
                    }
                }
            }
        }
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "data") && !kept.contains(&p) {
                let _ = std::fs::remove_file(&p);
            }
        }
        let n = w.entries.lock().expect("entries").len();
        if n > 0 {
            info!(files = n, dir = %dir.display(), "whole files kept from the last run");
        }
        Ok(w)
    }

    /// The entry for `fh` if it matches the file as it is (size, mtime); a stale one is
    /// removed.
    pub fn get(&self, fh: &[u8], size: u64, mtime: Nfstime3) -> Option<Arc<Entry>> {
        let mut m = self.entries.lock().expect("entries");
        let e = m.get(fh)?.clone();
        if e.size == size && e.mtime == mtime {
            e.last_use
                .store(self.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
            return Some(e);
        }
        if matches!(e.progress(), Progress::Running { .. }) {
            return None; // the transfer ends (and is dropped) on its own
        }
        m.remove(fh);
        drop(m);
        remove_entry(&e);
        None
    }

    /// Starts fetching `fh` over the file channel, unless it failed lately or there is
    /// no room. Returns its entry.
    pub fn start(
        self: &Arc<Self>,
        connector: Arc<SshConnector>,
        fh: &[u8],
        sc: Arc<Sidecar>,
        mtime: Nfstime3,
        cred: Cred,
    ) -> Option<Arc<Entry>> {
        if self.failed_lately(fh) {
            return None;
        }
        let charge = sc.size - sc.zero_bytes();
        let mut m = self.entries.lock().expect("entries");
        if let Some(e) = m.get(fh) {
            if e.size == sc.size && e.mtime == mtime {
                return Some(e.clone());
            }
            if matches!(e.progress(), Progress::Running { .. }) {
                return None;
            }
            let e = m.remove(fh).expect("present");
            remove_entry(&e);
        }
        // Room: least recently used complete files go.
        let mut used: u64 = m.values().map(|e| e.charge).sum();
        while used + charge > self.max {
            let victim = m
                .iter()
                .filter(|(_, e)| e.progress() == Progress::Done && Arc::strong_count(e) == 1)
                .min_by_key(|(_, e)| e.last_use.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            let Some(v) = victim else {
                info!(
                    size = sc.size,
                    max = self.max,
                    "no room for a whole file (meta.whole_file_max); read by blocks"
                );
                return None;
            };
            let e = m.remove(&v).expect("present");
            used -= e.charge;
            remove_entry(&e);
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        // A name of its own (handle hash and a serial): an old copy of the same file that
        // is still being read or deleted is never touched.
        let serial = self.tick.fetch_add(1, Ordering::Relaxed);
        let stem = format!("{}-{}-{serial}", key(fh), std::process::id());
        let data = self.dir.join(format!("{stem}.data"));
        let info = self.dir.join(format!("{stem}.info"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&data)
            .and_then(|f| f.set_len(sc.size).map(|_| f));
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                warn!(side = "cache", error = %e, path = %data.display(), "cannot make a whole-file copy; read by blocks");
                return None;
            }
        };
        let first = sc.zeros.next_data(0, sc.size).map_or(sc.size, |r| r.start);
        let (tx, rx) = watch::channel(Progress::Running { frontier: first });
        let writer = match file.try_clone() {
            Ok(w) => w,
            Err(_) => return None,
        };
        let entry = Arc::new(Entry {
            size: sc.size,
            mtime,
            data,
            info,
            file,
            progress: rx,
            charge,
            last_use: AtomicU64::new(self.tick.fetch_add(1, Ordering::Relaxed)),
        });
        m.insert(fh.to_vec(), entry.clone());
        drop(m);
        let (me, fh, e) = (self.clone(), fh.to_vec(), entry.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let sink = move |off: u64, data: &[u8]| writer.write_all_at(data, off);
            let r = transfer(&me, &connector, &fh, &sc, &sc.zeros, mtime, cred, sink, &tx)
                .await
                .map(|_| ());
            let r = match r {
                Ok(()) => finish(&e, &fh).await,
                Err(err) => Err(err),
            };
            match r {
                Ok(()) => {
                    me.stats.fetches.fetch_add(1, Ordering::Relaxed);
                    info!(
                        size = sc.size,
                        secs = format!("{:.2}", started.elapsed().as_secs_f64()),
                        "whole file fetched"
                    );
                    let _ = tx.send(Progress::Done);
                }
                Err(err) => {
                    me.stats.failed.fetch_add(1, Ordering::Relaxed);
                    warn!(side = "upstream", error = %err, "whole-file fetch failed; the file is read by blocks");
                    let stale = matches!(err, ChannelError::Status(channel::STALE_META));
                    me.failed_now(&fh, stale);
                    let _ = tx.send(Progress::Failed);
                    let mut m = me.entries.lock().expect("entries");
                    if m.get(&fh).is_some_and(|x| Arc::ptr_eq(x, &e)) {
                        m.remove(&fh);
                    }
                    drop(m);
                    remove_entry(&e);
                }
            }
        });
        Some(entry)
    }

    /// Whether a transfer of `fh` failed (or could not be made) within `RETRY_AFTER`:
    /// the file goes by blocks meanwhile.
    pub(super) fn failed_lately(&self, fh: &[u8]) -> bool {
        self.failed
            .lock()
            .expect("failed")
            .get(fh)
            .is_some_and(|(t, _)| t.elapsed() < RETRY_AFTER)
    }

    /// Remembers that a transfer of `fh` failed (`stale`: the server proxy found the
    /// file changed since its sidecar).
    pub(super) fn failed_now(&self, fh: &[u8], stale: bool) {
        let mut f = self.failed.lock().expect("failed");
        f.retain(|_, (t, s)| *s || t.elapsed() < RETRY_AFTER);
        f.insert(fh.to_vec(), (Instant::now(), stale));
    }

    /// Whether the last transfer of `fh` found the file changed since its sidecar (said
    /// once): the caller's idea of the file's attributes is out of date.
    pub fn take_stale(&self, fh: &[u8]) -> bool {
        match self.failed.lock().expect("failed").get_mut(fh) {
            Some((_, stale)) => std::mem::take(stale),
            None => false,
        }
    }

    /// Drops every complete whole file (SIGUSR2); transfers under way finish. Working
    /// sets are forgotten too (the cache dropped their blocks; a stream still running
    /// stops at its next frame, as the cache drops fills older than the drop).
    pub fn drop_all(&self) -> u64 {
        self.prefetches
            .lock()
            .expect("prefetches")
            .retain(|_, p| matches!(p.progress(), Progress::Running { .. }));
        let mut m = self.entries.lock().expect("entries");
        let done: Vec<Vec<u8>> = m
            .iter()
            .filter(|(_, e)| e.progress() == Progress::Done)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &done {
            if let Some(e) = m.remove(k) {
                remove_entry(&e);
            }
        }
        done.len() as u64
    }

    /// Whole files kept and their bytes on disk.
    pub fn usage(&self) -> (u64, u64) {
        let m = self.entries.lock().expect("entries");
        (m.len() as u64, m.values().map(|e| e.charge).sum())
    }
}

fn remove_entry(e: &Entry) {
    let _ = std::fs::remove_file(&e.info);
    let _ = std::fs::remove_file(&e.data);
}

/// Makes a complete copy durable: its bytes, then its record, then the directory.
async fn finish(e: &Arc<Entry>, fh: &[u8]) -> Result<(), ChannelError> {
    let (e, fh) = (e.clone(), fh.to_vec());
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        e.file.sync_data()?;
        let tmp = e.info.with_extension("info.tmp");
        std::fs::write(&tmp, encode_info(&fh, e.size, e.mtime))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &e.info)?;
        if let Some(d) = e.info.parent() {
            std::fs::File::open(d)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(|e| ChannelError::Malformed(e.to_string()))??;
    Ok(())
}

/// A transfer whose server proxy sends nothing for this long is given up (the file is
/// then read by blocks).
pub const SILENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// `f`, failed with a timeout after `SILENCE` without progress.
pub async fn timed<T, E: Into<ChannelError>>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ChannelError> {
    match tokio::time::timeout(SILENCE, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(ChannelError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the server proxy sent nothing for {} s", SILENCE.as_secs()),
        ))),
    }
}

/// Frames decompressed at once, waiting to be written.
const DECODE_QUEUE: usize = 8;

/// One FETCH of `fh`: every byte outside `skip`'s blocks, in file order, each frame
/// decompressed on a blocking thread and handed to `sink(offset, bytes)`; `tx` moves the
/// frontier (the next byte to come) as each is in place. Returns the bytes received.
#[allow(clippy::too_many_arguments)]
pub(super) async fn transfer(
    w: &WholeFiles,
    connector: &SshConnector,
    fh: &[u8],
    sc: &Arc<Sidecar>,
    skip: &ZeroMap,
    mtime: Nfstime3,
    cred: Cred,
    mut sink: impl FnMut(u64, &[u8]) -> std::io::Result<()> + Send + 'static,
    tx: &watch::Sender<Progress>,
) -> Result<u64, ChannelError> {
    let req = Request {
        op: Op::Fetch,
        fh: fh.to_vec(),
        cred,
        size: sc.size,
        mtime: (mtime.seconds, mtime.nseconds),
        codec: sc.actions.codec,
        level: sc.actions.level,
        zeros: skip.clone(),
    };
    // Opening the channel is bounded like every later step: a server proxy that never
    // answers must not keep READs waiting on this transfer.
    let stream = timed(async {
        connector
            .open_file_channel(&req.encode())
            .await
            .map_err(|e| ChannelError::Io(std::io::Error::other(e)))
    })
    .await?;
    let (rd, _wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let status = timed(rd.read_u32()).await?;
    if status != channel::OK {
        return Err(ChannelError::Status(status));
    }
    let size = timed(rd.read_u64()).await?;
    if size != sc.size {
        return Err(ChannelError::Malformed(format!(
            "server proxy sends {size} bytes, sidecar says {}",
            sc.size
        )));
    }
    // Frames are decompressed and written on a blocking thread while the next ones
    // arrive; the frontier moves as each is in place.
    let (ftx, mut frx) = tokio::sync::mpsc::channel::<(u64, u32, Vec<u8>)>(DECODE_QUEUE);
    let (codec, size, skip2, tx2) = (sc.actions.codec, sc.size, skip.clone(), tx.clone());
    let writer = tokio::task::spawn_blocking(move || -> Result<u64, ChannelError> {
        let mut raw_total = 0u64;
        // Each frame must start at the next byte to come (the frontier): a frame that
        // skipped some would leave holes that read as zeros.
        let mut expect = skip2.next_data(0, size).map_or(size, |r| r.start);
        while let Some((off, raw, comp)) = frx.blocking_recv() {
            let data_end = skip2.next_data(off, size).map_or(off, |r| r.end);
            if off != expect || off + raw as u64 > data_end.max(off) {
                return Err(ChannelError::Malformed(format!(
                    "frame at {off} (+{raw}) where the next data starts at {expect}"
                )));
            }
            let data = channel::decompress(codec, &comp, raw)?;
            sink(off, &data)?;
            raw_total += raw as u64;
            expect = skip2
                .next_data(off + raw as u64, size)
                .map_or(size, |r| r.start);
            let _ = tx2.send(Progress::Running { frontier: expect });
        }
        Ok(raw_total)
    });
    let mut wire = 0u64;
    let end_status = loop {
        match timed(channel::read_frame_head(&mut rd)).await {
            Ok(FrameHead::End(s)) => break Ok(s),
            Ok(FrameHead::Data { offset, raw, comp }) => {
                let mut buf = vec![0; comp as usize];
                if let Err(e) = timed(rd.read_exact(&mut buf)).await {
                    break Err(e);
                }
                wire += comp as u64 + 16;
                w.stats
                    .wire_bytes
                    .fetch_add(comp as u64 + 16, Ordering::Relaxed);
                if ftx.send((offset, raw, buf)).await.is_err() {
                    break Ok(channel::FAILED); // the writer stopped: its error below
                }
            }
            Err(e) => break Err(e),
        }
    };
    drop(ftx);
    let written = writer
        .await
        .map_err(|e| ChannelError::Malformed(e.to_string()))??;
    let status = end_status?;
    if status != channel::OK {
        return Err(ChannelError::Status(status));
    }
    let expected = data_bytes(skip, sc.size);
    if written != expected {
        return Err(ChannelError::Malformed(format!(
            "received {written} bytes of data, the skip map leaves {expected}"
        )));
    }
    w.stats.raw_bytes.fetch_add(written, Ordering::Relaxed);
    info!(
        raw = written,
        wire,
        ratio = format!("{:.2}", written as f64 / wire.max(1) as f64),
        "file-channel transfer complete"
    );
    Ok(written)
}

/// Bytes of a file of `size` bytes outside `map`'s blocks.
pub(super) fn data_bytes(map: &ZeroMap, size: u64) -> u64 {
    size - map.zero_bytes(size)
}
