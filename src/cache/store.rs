//! The block store: frames in bank files, found by set, replaced by CLOCK, written with
//! the durability order of `docs/cache-design.md`:
//!
//! - a block whose frame holds dirty data is rewritten *elsewhere* in its set (copy-on-
//!   write) with a higher sequence number; the superseded frame is cleared (durably) by
//!   the sync that makes its successor durable, so the last durable version survives a
//!   crash at any point;
//! - the durable point (COMMIT, FILE_SYNC: `sync_file`; `sync` for all) is one fdatasync
//!   per bank file, which holds its tags and then its data frames;
//! - reads verify the data checksum; a mismatch is a miss, and the next older version of
//!   the block (if any) is used instead.
//!
//! Blocking file I/O: callers run it off the async reactor. One mutex per bank.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::layout::{Frame, Geometry, GeometryError, fnv1a};
use super::tag::{MAX_FH, Slot, TAG_SIZE, Tag};

/// Why the store failed. I/O errors name the file; none of them is retried here.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Geometry(#[from] GeometryError),
    #[error(
        "cache directory {path} was made with another geometry ({found}); configured: {configured}. \
         It may hold dirty data: flush it with its old configuration, or remove it"
    )]
    GeometryChanged {
        path: PathBuf,
        found: String,
        configured: String,
    },
    #[error("cache superblock {path} is unreadable: {why}")]
    BadSuperblock { path: PathBuf, why: String },
    /// Every frame of the set holds dirty data: write back or write through.
    #[error("cache set is full of dirty blocks")]
    SetFull,
    #[error("file handle longer than 64 bytes")]
    FhTooLong,
    #[error("bytes past the end of the cache block")]
    OutsideBlock,
}

type Result<T> = std::result::Result<T, CacheError>;

/// What `get` returns: the valid bytes of a block and which of them are dirty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// Byte range of the block that `data` covers.
    pub valid: Range<u32>,
    pub data: Vec<u8>,
    pub dirty: Option<Range<u32>>,
    /// The tag's sequence number (for `mark_clean`).
    pub seq: u64,
}

impl Cached {
    /// The bytes of `r` (a sub-range of `valid`), e.g. the dirty bytes to write back.
    pub fn bytes(&self, r: Range<u32>) -> &[u8] {
        let s = (r.start - self.valid.start) as usize;
        &self.data[s..s + r.len()]
    }
}

/// What `put` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    Stored {
        seq: u64,
    },
    /// Dirty bytes disjoint from the block's valid range: fetch `gap` and put it first.
    NeedsFill {
        gap: Range<u32>,
    },
    /// Clean bytes that would overwrite or sit apart from dirty data: not stored.
    Skipped,
}

/// The contents of a block version about to be written.
struct Version {
    valid: Range<u32>,
    buf: Vec<u8>,
    dirty: Option<Range<u32>>,
}

/// Block numbers from here up are not file data but the cache layer's small records
/// about a file (kept like blocks, dirty ones durable like dirty data): never listed
/// by `dirty_blocks` or `dirty_in_set`, so never written back as bytes of the file.
pub const RECORDS_FROM: u64 = u64::MAX - 15;

/// A dirty block, for write-back: the newest version's sequence and dirty byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyBlock {
    pub fh: Vec<u8>,
    pub block: u64,
    pub seq: u64,
    pub dirty: Range<u32>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    /// Fingerprint of (fh, block); 0 = empty frame.
    fp: u64,
    /// Hash of the file handle alone, to find all of a file's frames.
    fh_hash: u64,
    dirty: bool,
    referenced: bool,
    /// Written since the last sync: not durable yet, so it may be overwritten in place
    /// (a durable predecessor, if any, still exists elsewhere in the set).
    unsynced: bool,
    /// Written by this process with zeros only (a hole, `write_data`): a read of its
    /// whole valid range is answered with zeros without reading the bank file. Reading a
    /// hole costs the kernel a zeroed page-cache page per 4 KiB and a copy; a VM's memory
    /// state is mostly such blocks. Not known after a restart (false: read as usual).
    zero: bool,
    /// Dirty data written back after its bank failed (see `mark_clean`): it stays dirty,
    /// is not listed for write-back again in this run, and no newer WRITE goes past it.
    /// Not known after a restart, whose write-back sends it again.
    stuck: bool,
}

struct Bank {
    /// The bank file (tags, then data frames), opened on first use.
    file: Option<File>,
    meta: Vec<Meta>,
    /// CLOCK hand per set.
    hands: Vec<u8>,
    /// Frames (local indices) written since the last sync.
    written: Vec<usize>,
    /// Superseded versions to clear once their successors are durable.
    superseded: Vec<usize>,
    /// Tags were rewritten or cleared since the tag file was last synced.
    tags_dirty: bool,
    /// Files (hash of the handle) with a dirty write, a cut or a cleared tag in this bank
    /// since its last sync: what `sync_file` syncs for them.
    unsynced_files: std::collections::HashSet<u64>,
    /// An fdatasync of this bank failed. Linux reports a writeback error once per file,
    /// so no later fsync of it can be trusted: every durable point that needs this bank
    /// fails from then on, and it takes no dirty write or cut (they are written through
    /// or forwarded instead) until `renew_failed_banks` retires it or the proxy restarts
    /// and recovery checks its tags.
    failed: bool,
    /// Blocks (hash of the file handle, block) whose dirty tag here was cleared or
    /// marked clean since the bank's last fdatasync: if that fdatasync fails, the dirty
    /// tag may come back after a power failure, so they join `at_risk`.
    cleaned: std::collections::HashSet<(u64, u64)>,
    /// Frames (local indices) whose durable dirty version was cleared since the bank's
    /// last good fdatasync. Not taken for another block before it: until the clearing (a
    /// truncation, a removal) is durable, that version may be the block's only durable
    /// copy, acknowledged by a COMMIT, and a power failure would have neither.
    cleared: std::collections::HashSet<usize>,
    /// Once the bank failed: blocks (hash of the file handle, block) that may have a
    /// dirty tag on its disk which this run can no longer clear durably — dirty when it
    /// failed, cleaned shortly before, or written back or dropped after. A WRITE to one,
    /// or a truncation of the file below it, is refused (NFS3ERR_IO) for the rest of
    /// the run: acknowledged and sent through, it could be undone by the old dirty
    /// version, written back after a power failure and a restart.
    at_risk: std::collections::HashSet<(u64, u64)>,
    /// Files (hash of the handle) that had unsynced changes here when the bank failed:
    /// their durable points keep failing for the rest of the run. Other files' durable
    /// points skip the failed bank (it takes no dirty write, and nothing cleared in it
    /// is noted as unsynced after the failure).
    lost_files: std::collections::HashSet<u64>,
    /// A dirty tag not yet written back (not `stuck`) was cleared here after the bank
    /// failed (a truncation, a removal, a version that stopped verifying): the clearing
    /// is not durable, and whether it was acknowledged is not known here — its data may
    /// exist nowhere but in this file. Such a bank is not renewed in this run.
    pinned: bool,
}

impl Bank {
    /// A bank with no frame in use, over `file` if it is open.
    fn new(file: Option<File>, geo: &Geometry) -> Bank {
        Bank {
            file,
            meta: vec![Meta::default(); (geo.sets_per_bank * geo.ways as u64) as usize],
            hands: vec![0; geo.sets_per_bank as usize],
            written: Vec::new(),
            superseded: Vec::new(),
            tags_dirty: false,
            unsynced_files: Default::default(),
            failed: false,
            cleaned: Default::default(),
            cleared: Default::default(),
            at_risk: Default::default(),
            lost_files: Default::default(),
            pinned: false,
        }
    }
}

/// In `Bank::at_risk`: every block of the file (a dirty tag whose block is unknown).
const ALL_BLOCKS: u64 = u64::MAX;

pub struct Store {
    geo: Geometry,
    dir: PathBuf,
    banks: Vec<Mutex<Bank>>,
    seq: AtomicU64,
    /// Set when recovery found a dirty version that never reached a durable point: the
    /// proxy must change its write verifier.
    lost_unstable: AtomicBool,
    /// Banks failed now (see `Bank::failed`): counted up by the fdatasync that fails,
    /// down when `renew_failed_banks` retires them.
    failed_banks: AtomicUsize,
    renewed_banks: AtomicU64,
    verifier: Mutex<[u8; 8]>,
    /// Held shared by every dirty write, exclusively by `sync` when it retires the
    /// `unstable` marker file (see `UNSTABLE`).
    unstable: std::sync::RwLock<()>,
    /// The `unstable` marker file exists.
    marked: AtomicBool,
    /// When the last dirty write began, in milliseconds since `born` (see `MARKER_LINGER`).
    last_dirty_ms: AtomicU64,
    born: std::time::Instant,
    /// `MARKER_LINGER` in milliseconds (tests set 0).
    linger_ms: AtomicU64,
    /// Opened with `open_shared`: another proxy owns (fills) this directory.
    shared: Option<SharedView>,
    /// fsync/fdatasync calls made on the cache's bank files (status: `cache_syncs`).
    syncs: AtomicU64,
    /// Block reads answered with zeros without reading a bank file (`Meta::zero`).
    zero_reads: AtomicU64,
    /// File (hash of the handle) → banks whose `unsynced_files` hold it, so `sync_file`
    /// locks only those banks (not every bank, each possibly held by another file's
    /// fdatasync). Taken only while no bank lock is waited for under it.
    unsynced_banks: Mutex<std::collections::HashMap<u64, Vec<u32>>>,
}

/// A read-only view of a cache directory that another proxy owns and fills (the paper's
/// shared cache for golden images). It never writes: tags are read from the owner's tag
/// files at every lookup (the in-memory index would go stale as the owner fills and
/// evicts), only clean blocks are served, a block that fails its checksum (the owner
/// rewriting the frame under us) is a miss, and a file this proxy changes (WRITE,
/// truncation) is bypassed from then on, since the owner's copy of it is now stale.
struct SharedView {
    bypass: Mutex<std::collections::HashSet<Vec<u8>>>,
}

/// Present (durably) while dirty data may have been written but not synced. A power
/// failure can lose such writes *and* their tags, leaving an older version that still
/// verifies: the loss would go unseen. So a start that finds this file changes the write
/// verifier, and clients re-send what they have not seen committed. Created before the
/// first dirty write after a durable point; removed by the `sync` that leaves no
/// unsynced dirty write behind.
const UNSTABLE: &str = "unstable";

/// A `sync` retires the `unstable` marker only when no dirty write began for this long:
/// a session that writes and commits file after file would otherwise create it (two
/// fsyncs) and remove it again for every file. A crash while it lingers changes the
/// write verifier although nothing was lost: clients re-send what they did not see
/// committed, which is always safe. `close` retires it at once.
const MARKER_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

fn fingerprint(fh: &[u8], block: u64) -> u64 {
    let mut b = Vec::with_capacity(fh.len() + 8);
    b.extend_from_slice(fh);
    b.extend_from_slice(&block.to_le_bytes());
    fnv1a(&b) | 1
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

const SUPERBLOCK: &str = "superblock";
/// Present while the cache is closed cleanly (removed at open, written by `close`).
/// Clearing a tag is not fsynced, so after a crash an invalidated block could come back:
/// an unclean start drops every clean block.
const CLEAN: &str = "clean-shutdown";
const SB_MAGIC: &str = "gridvfs-cache v3";
/// What every format's magic starts with (v2 had separate data and tag files).
const SB_FAMILY: &str = "gridvfs-cache v";

impl Store {
    /// Opens (or creates) the cache in `dir` with this geometry and reads all tags.
    pub fn open(dir: &Path, geo: Geometry) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (sb, want) = (dir.join(SUPERBLOCK), superblock_text(&geo));
        if !has_superblock(dir, &want)? {
            let tmp = dir.join("superblock.tmp");
            std::fs::write(&tmp, &want).map_err(io(&tmp))?;
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io(&tmp))?;
            std::fs::rename(&tmp, &sb).map_err(io(&sb))?;
            sync_dir(dir)?;
        }
        let per_bank = (geo.sets_per_bank * geo.ways as u64) as usize;
        let mut max_seq = 0;
        // Blocks found in more than one frame (a crash before superseded versions were
        // cleared): sorted out below, before anything else looks at them. All versions
        // of a block share its set, so duplicates are found set by set.
        let mut multi: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut banks = Vec::with_capacity(geo.banks as usize);
        for b in 0..geo.banks {
            let mut bank = Bank::new(None, &geo);
            let path = bank_path(dir, b);
            if path.exists() {
                let file = open_bank(dir, b, &geo)?;
                let mut bytes = vec![0u8; per_bank * TAG_SIZE];
                file.read_exact_at(&mut bytes, 0).map_err(io(&path))?;
                bank.file = Some(file);
                for (i, chunk) in bytes.chunks_exact(TAG_SIZE).take(per_bank).enumerate() {
                    let slot: &[u8; TAG_SIZE] = chunk.try_into().expect("chunk size");
                    match Tag::decode(slot, geo.block_size) {
                        Slot::Tag(t) => {
                            max_seq = max_seq.max(t.seq);
                            let fp = fingerprint(&t.fh, t.block);
                            let set_start = i - i % geo.ways as usize;
                            if (set_start..i).any(|j| bank.meta[j].fp == fp)
                                && !multi.iter().any(|(f, b)| *f == t.fh && *b == t.block)
                            {
                                multi.push((t.fh.clone(), t.block));
                            }
                            bank.meta[i] = Meta {
                                fp: fingerprint(&t.fh, t.block),
                                fh_hash: fnv1a(&t.fh),
                                dirty: t.dirty.is_some(),
                                referenced: false,
                                unsynced: false,
                                zero: false,
                                stuck: false,
                            };
                        }
                        Slot::Empty => {}
                        Slot::Corrupt(why) => {
                            tracing::warn!(bank = b, frame = i, why, "corrupt cache tag ignored");
                        }
                    }
                }
            }
            banks.push(Mutex::new(bank));
        }
        let store = Store {
            geo,
            dir: dir.to_path_buf(),
            banks,
            seq: AtomicU64::new(max_seq),
            lost_unstable: AtomicBool::new(false),
            failed_banks: AtomicUsize::new(0),
            renewed_banks: AtomicU64::new(0),
            verifier: Mutex::new([0; 8]),
            unstable: std::sync::RwLock::new(()),
            marked: AtomicBool::new(false),
            last_dirty_ms: AtomicU64::new(0),
            born: std::time::Instant::now(),
            linger_ms: AtomicU64::new(MARKER_LINGER.as_millis() as u64),
            shared: None,
            syncs: AtomicU64::new(0),
            zero_reads: AtomicU64::new(0),
            unsynced_banks: Mutex::default(),
        };
        store.verify_dirty()?;
        // Of several versions of a block, the newest that verifies wins and the others
        // go now — before an unclean start drops clean blocks, which could otherwise
        // drop a clean newest version (a cut, or a written-back block) and let an older
        // dirty one come back.
        for (fh, block) in multi {
            store.get(&fh, block)?;
        }
        store.sync()?;
        let marker = dir.join(UNSTABLE);
        if marker.exists() {
            tracing::warn!(
                dir = %dir.display(),
                "the cache stopped with unsynced writes: the write verifier changes, clients re-send what they did not see committed"
            );
            store.lost_unstable.store(true, Ordering::Relaxed);
        }
        *store.verifier.lock().expect("verifier lock") =
            load_verifier(dir, store.lost_unstable_writes())?;
        if marker.exists() {
            std::fs::remove_file(&marker).map_err(io(&marker))?;
        }
        let clean = dir.join(CLEAN);
        let was_clean = clean.exists();
        if was_clean {
            std::fs::remove_file(&clean).map_err(io(&clean))?;
            sync_dir(dir)?;
        } else if max_seq > 0 {
            let n = store.drop_clean()?;
            tracing::warn!(dir = %dir.display(), dropped = n,
                "cache was not closed cleanly: clean blocks dropped (dirty ones kept)");
        }
        Ok(store)
    }

    /// Opens a cache directory that another proxy owns, read-only (see `SharedView`).
    /// The directory must already hold a cache of this geometry.
    pub fn open_shared(dir: &Path, geo: Geometry) -> Result<Store> {
        if !has_superblock(dir, &superblock_text(&geo))? {
            let sb = dir.join(SUPERBLOCK);
            return Err(io(&sb)(std::io::Error::from(std::io::ErrorKind::NotFound)));
        }
        let banks = (0..geo.banks)
            .map(|b| {
                let p = bank_path(dir, b);
                let file = match File::open(&p) {
                    Ok(f) => Some(f),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(io(&p)(e)),
                };
                Ok(Mutex::new(Bank::new(file, &geo)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Store {
            geo,
            dir: dir.to_path_buf(),
            banks,
            seq: AtomicU64::new(0),
            lost_unstable: AtomicBool::new(false),
            failed_banks: AtomicUsize::new(0),
            renewed_banks: AtomicU64::new(0),
            verifier: Mutex::new([0; 8]),
            unstable: std::sync::RwLock::new(()),
            marked: AtomicBool::new(false),
            last_dirty_ms: AtomicU64::new(0),
            born: std::time::Instant::now(),
            linger_ms: AtomicU64::new(MARKER_LINGER.as_millis() as u64),
            shared: Some(SharedView {
                bypass: Mutex::default(),
            }),
            syncs: AtomicU64::new(0),
            zero_reads: AtomicU64::new(0),
            unsynced_banks: Mutex::default(),
        })
    }

    /// Read-only view of another proxy's cache (`open_shared`).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// In a shared view: stop serving this file's blocks (we changed it upstream).
    /// Returns true if the store is a shared view (the caller must not write).
    fn bypassed_now(&self, fh: &[u8]) -> bool {
        match &self.shared {
            Some(v) => {
                v.bypass.lock().expect("bypass lock").insert(fh.to_vec());
                true
            }
            None => false,
        }
    }

    /// A shared view opened before the owner created this bank's files: open them once
    /// they exist (the owner creates a bank on its first fill there).
    fn open_late(&self, bank: &mut Bank, b: u32) {
        if self.shared.is_none() || bank.file.is_some() {
            return;
        }
        if let Ok(f) = File::open(self.bank_path(b)) {
            bank.file = Some(f);
        }
    }

    fn is_bypassed(&self, fh: &[u8]) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|v| v.bypass.lock().expect("bypass lock").contains(fh))
    }

    /// At open: every dirty version's data must verify. One that does not is a write that
    /// never reached a durable point (or damage): it is cleared (an older version, if
    /// any, takes over) and `lost_unstable_writes` turns true, so the write verifier
    /// changes *before* any COMMIT is answered and clients re-send what they did not
    /// see committed.
    fn verify_dirty(&self) -> Result<()> {
        for (b, bank) in self.banks.iter().enumerate() {
            let mut bank = bank.lock().expect("bank lock");
            for li in 0..bank.meta.len() {
                if !bank.meta[li].dirty {
                    continue;
                }
                let f = self.frame_of(b as u32, li);
                let Slot::Tag(t) = self.read_tag(&bank, f)? else {
                    continue;
                };
                let mut data = vec![0u8; (t.valid.end - t.valid.start) as usize];
                let file = bank.file.as_ref().expect("tags imply a bank file");
                file.read_exact_at(&mut data, self.data_at(f) + t.valid.start as u64)
                    .map_err(io(&self.bank_path(f.bank)))?;
                if crc32fast::hash(&data) != t.data_crc {
                    tracing::warn!(
                        bank = b,
                        frame = li,
                        block = t.block,
                        "dirty cache block failed its checksum at open: an unstable write was lost"
                    );
                    self.lost_unstable.store(true, Ordering::Relaxed);
                    self.clear(&mut bank, f)?;
                }
            }
        }
        Ok(())
    }

    /// Makes everything durable and marks the cache as cleanly closed, so the next open
    /// keeps its clean blocks.
    pub fn close(&self) -> Result<()> {
        if self.is_shared() {
            return Ok(());
        }
        self.sync()?;
        self.retire_marker(true)?;
        for (b, bank) in self.banks.iter().enumerate() {
            let mut bank = bank.lock().expect("bank lock");
            if bank.file.is_some() {
                // Cleared tags (invalidations) are not synced by `sync` on their own.
                self.fsync_bank(b, &mut bank)?;
            }
        }
        let clean = self.dir.join(CLEAN);
        File::create(&clean)
            .and_then(|f| f.sync_all())
            .map_err(io(&clean))?;
        sync_dir(&self.dir)
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// True once recovery dropped a dirty version that was never made durable.
    pub fn lost_unstable_writes(&self) -> bool {
        self.lost_unstable.load(Ordering::Relaxed)
    }

    fn locate(&self, fh: &[u8], block: u64) -> (u64, u64) {
        (self.geo.set_of(fnv1a(fh), block), fingerprint(fh, block))
    }

    /// The newest intact version of a block, if cached.
    pub fn get(&self, fh: &[u8], block: u64) -> Result<Option<Cached>> {
        if self.is_bypassed(fh) {
            return Ok(None);
        }
        let (set, fp, mut bank) = self.set_of(fh, block);
        Ok(self.newest(&mut bank, set, fp, fh, block)?.map(|(_, c)| c))
    }

    /// The set and fingerprint of (fh, block), and its bank, locked and open.
    fn set_of(&self, fh: &[u8], block: u64) -> (u64, u64, std::sync::MutexGuard<'_, Bank>) {
        let (set, fp) = self.locate(fh, block);
        let frame0 = self.geo.frame(set, 0);
        let mut bank = self.banks[frame0.bank as usize].lock().expect("bank lock");
        self.open_late(&mut bank, frame0.bank);
        (set, fp, bank)
    }

    /// The valid bytes of the newest version of (fh, block), by its tag alone: its data
    /// is neither read nor checked (a read still verifies it, and a version that fails
    /// is a miss then). For planning what to fetch, never for serving.
    pub fn valid_range(&self, fh: &[u8], block: u64) -> Result<Option<Range<u32>>> {
        if self.is_bypassed(fh) {
            return Ok(None);
        }
        let (set, fp, bank) = self.set_of(fh, block);
        let v = self.versions(&bank, set, fp, fh, block)?;
        Ok(v.first().map(|(_, t)| t.valid.clone()))
    }

    /// Finds the versions of (fh, block) in `set`, newest first, and returns the first
    /// whose data verifies; versions that fail are cleared.
    fn newest(
        &self,
        bank: &mut Bank,
        set: u64,
        fp: u64,
        fh: &[u8],
        block: u64,
    ) -> Result<Option<(u32, Cached)>> {
        let versions = self.versions(bank, set, fp, fh, block)?;
        let mut dropped_dirty = false;
        for (way, t) in versions {
            let f = self.geo.frame(set, way);
            let mut data = vec![0u8; (t.valid.end - t.valid.start) as usize];
            let file = bank.file.as_ref().expect("tags imply a bank file");
            let at = self.data_at(f) + t.valid.start as u64;
            file.read_exact_at(&mut data, at)
                .map_err(io(&self.bank_path(f.bank)))?;
            if crc32fast::hash(&data) == t.data_crc {
                if dropped_dirty {
                    self.lost("a dirty cache block failed its checksum");
                }
                let li = self.local(f);
                bank.meta[li].referenced = true;
                // The version served is never cleared as superseded (its newer copy
                // may have been lost).
                bank.superseded.retain(|&x| x != li);
                if !bank.meta[li].unsynced {
                    // Older versions behind a durable one (left by a crash before their
                    // clearing): cleared at the next sync.
                    for (w, _) in self.versions(bank, set, fp, fh, block)? {
                        let old = self.local(self.geo.frame(set, w));
                        if w != way && !bank.superseded.contains(&old) {
                            bank.superseded.push(old);
                        }
                    }
                }
                return Ok(Some((
                    way,
                    Cached {
                        valid: t.valid,
                        data,
                        dirty: t.dirty,
                        seq: t.seq,
                    },
                )));
            }
            tracing::warn!(
                bank = f.bank,
                set,
                way,
                block,
                dirty = t.dirty.is_some(),
                "cached block failed its checksum; treated as a miss"
            );
            if self.is_shared() {
                // The owner may be rewriting this frame: a miss, and not ours to clear.
                continue;
            }
            dropped_dirty |= t.dirty.is_some();
            self.clear(bank, f)?;
        }
        if dropped_dirty {
            self.lost("a dirty cache block failed its checksum");
        }
        Ok(None)
    }

    /// Appends bytes `want` of block `block` to `dst` if the newest intact version holds
    /// them: read straight into `dst` when `want` is the whole valid range (the common
    /// aligned case), so a hit costs one copy. Returns false on a miss (`dst` unchanged).
    pub fn read_into(
        &self,
        fh: &[u8],
        block: u64,
        want: Range<u32>,
        dst: &mut bytes::BytesMut,
    ) -> Result<bool> {
        if self.is_bypassed(fh) {
            return Ok(false);
        }
        let (set, fp, mut bank) = self.set_of(fh, block);
        let versions = self.versions(&bank, set, fp, fh, block)?;
        let Some((way, t)) = versions.into_iter().next() else {
            return Ok(false);
        };
        if t.valid != want {
            // Partial: verify the whole version, then copy the part asked for.
            drop(bank);
            return Ok(match self.get(fh, block)? {
                Some(c) if c.valid.start <= want.start && want.end <= c.valid.end => {
                    let s = (want.start - c.valid.start) as usize;
                    dst.extend_from_slice(&c.data[s..s + want.len()]);
                    true
                }
                _ => false,
            });
        }
        let f = self.geo.frame(set, way);
        let li = self.local(f);
        if bank.meta[li].zero {
            // Written here as zeros (a hole): nothing to read, nothing to verify.
            bank.meta[li].referenced = true;
            self.zero_reads.fetch_add(1, Ordering::Relaxed);
            bytes::BufMut::put_bytes(dst, 0, want.len());
            return Ok(true);
        }
        let start = dst.len();
        let file = bank.file.as_ref().expect("tags imply a bank file");
        read_append(file, dst, want.len(), self.data_at(f) + want.start as u64)
            .map_err(io(&self.bank_path(f.bank)))?;
        if crc32fast::hash(&dst[start..]) == t.data_crc {
            let li = self.local(f);
            bank.meta[li].referenced = true;
            return Ok(true);
        }
        // Damaged: let `get` sort out older versions and clear this one.
        dst.truncate(start);
        drop(bank);
        Ok(match self.get(fh, block)? {
            Some(c) if c.valid == want => {
                dst.extend_from_slice(&c.data);
                true
            }
            _ => false,
        })
    }

    /// Tags of the versions of (fh, block) in `set`, newest first.
    fn versions(
        &self,
        bank: &Bank,
        set: u64,
        fp: u64,
        fh: &[u8],
        block: u64,
    ) -> Result<Vec<(u32, Tag)>> {
        let mut versions = Vec::new();
        let shared = self.is_shared();
        for way in 0..self.geo.ways {
            let f = self.geo.frame(set, way);
            // A shared view has no index of its own: the owner's tags are the truth.
            if !shared && bank.meta[self.local(f)].fp != fp {
                continue;
            }
            if let Slot::Tag(t) = self.read_tag(bank, f)?
                && t.fh == fh
                && t.block == block
                && !(shared && t.dirty.is_some())
            {
                versions.push((way, t));
            }
        }
        versions.sort_by_key(|(_, t)| std::cmp::Reverse(t.seq));
        Ok(versions)
    }

    /// Stores `data` at byte `off` of block `block`. `dirty`: written by a client (must
    /// be written back); otherwise a clean fill from upstream.
    pub fn put(&self, fh: &[u8], block: u64, off: u32, data: &[u8], dirty: bool) -> Result<Put> {
        if let Some(v) = &self.shared {
            // Fills are the owner's job; a write means our view of the file is stale.
            if dirty {
                v.bypass.lock().expect("bypass lock").insert(fh.to_vec());
            }
            return Ok(Put::Skipped);
        }
        if fh.len() > MAX_FH {
            return Err(CacheError::FhTooLong);
        }
        let end = u32::try_from(data.len())
            .ok()
            .and_then(|n| off.checked_add(n))
            .filter(|&e| e <= self.geo.block_size)
            .ok_or(CacheError::OutsideBlock)?;
        let _unstable = if dirty {
            Some(self.unstable_guard()?)
        } else {
            None
        };
        let (set, fp) = self.locate(fh, block);
        let frame0 = self.geo.frame(set, 0);
        let mut bank = self.banks[frame0.bank as usize].lock().expect("bank lock");
        let existing = self.newest(&mut bank, set, fp, fh, block)?;

        // The new contents: one contiguous valid range, dirty bytes never overwritten by
        // clean ones.
        let (valid, buf, dirty_range, old_way, old_dirty) = match &existing {
            None => (
                off..end,
                data.to_vec(),
                dirty.then_some(off..end),
                None,
                false,
            ),
            Some((way, c)) => {
                let disjoint = end < c.valid.start || off > c.valid.end;
                if disjoint {
                    if dirty {
                        let gap = if end < c.valid.start {
                            end..c.valid.start
                        } else {
                            c.valid.end..off
                        };
                        return Ok(Put::NeedsFill { gap });
                    }
                    if c.dirty.is_some() {
                        return Ok(Put::Skipped);
                    }
                }
                let valid = if disjoint {
                    off..end
                } else {
                    c.valid.start.min(off)..c.valid.end.max(end)
                };
                let mut buf = vec![0u8; (valid.end - valid.start) as usize];
                if !disjoint {
                    let s = (c.valid.start - valid.start) as usize;
                    buf[s..s + c.data.len()].copy_from_slice(&c.data);
                }
                for (i, b) in data.iter().enumerate() {
                    let pos = off + i as u32;
                    let keep_old = !dirty && c.dirty.as_ref().is_some_and(|d| d.contains(&pos));
                    if !keep_old {
                        buf[(pos - valid.start) as usize] = *b;
                    }
                }
                let dirty_range = match (&c.dirty, dirty) {
                    (Some(d), true) => Some(d.start.min(off)..d.end.max(end)),
                    (Some(d), false) => Some(d.clone()),
                    (None, true) => Some(off..end),
                    (None, false) => None,
                };
                (valid, buf, dirty_range, Some(*way), c.dirty.is_some())
            }
        };
        if let Some((_, c)) = &existing
            && c.valid == valid
            && c.dirty == dirty_range
            && c.data == buf
            && !(bank.failed && dirty_range.is_some())
        {
            // Nothing changes (the same truncation record again, a fill of bytes already
            // here): the version stays. Rewriting a durable dirty one would supersede it,
            // a second frame and a second fdatasync to clear the first; an unsynced one is
            // already noted for its file's next sync.
            return Ok(Put::Stored { seq: c.seq });
        }

        let seq = self.write_version(
            &mut bank,
            set,
            fp,
            fh,
            block,
            Version {
                valid,
                buf,
                dirty: dirty_range,
            },
            old_way.map(|w| (w, old_dirty)),
        )?;
        Ok(Put::Stored { seq })
    }

    /// Writes a new version of (fh, block): in place over a clean or a not-yet-durable
    /// version; elsewhere (copy-on-write) over a durable dirty one, which must survive
    /// until the new version is durable. `old`: the current newest version's way and
    /// whether it is dirty.
    #[allow(clippy::too_many_arguments)]
    fn write_version(
        &self,
        bank: &mut Bank,
        set: u64,
        fp: u64,
        fh: &[u8],
        block: u64,
        v: Version,
        old: Option<(u32, bool)>,
    ) -> Result<u64> {
        let Version {
            valid,
            buf,
            dirty: dirty_range,
        } = v;
        if bank.failed && dirty_range.is_some() {
            return Err(self.failed_bank(self.geo.frame(set, 0).bank));
        }
        let old_way = old.map(|(w, _)| w);
        let in_place = old.filter(|&(w, old_dirty)| {
            let m = bank.meta[self.local(self.geo.frame(set, w))];
            !old_dirty || m.unsynced
        });
        let way = match in_place {
            Some((w, _)) => w,
            None => self.victim(bank, set, old_way)?,
        };
        let f = self.geo.frame(set, way);
        if bank.file.is_none() {
            bank.file = Some(open_bank(&self.dir, f.bank, &self.geo)?);
            // The new file's name must be durable before anything in it is relied on
            // (a COMMIT fdatasyncs the file, not the directory).
            sync_dir(&self.dir)?;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let tag = Tag {
            fh: fh.to_vec(),
            block,
            seq,
            valid: valid.clone(),
            dirty: dirty_range.clone(),
            data_crc: crc32fast::hash(&buf),
        };
        let written = {
            let file = bank.file.as_ref().expect("opened above");
            write_data(file, &buf, self.data_at(f) + valid.start as u64)
                .map_err(io(&self.bank_path(f.bank)))
                .and_then(|zero| {
                    file.write_all_at(&tag.encode(), self.tag_offset(f))
                        .map_err(io(&self.bank_path(f.bank)))
                        .map(|()| zero)
                })
        };
        let zero = match written {
            Ok(z) => z,
            Err(e) => {
                if in_place.is_some_and(|(_, old_dirty)| old_dirty) {
                    // The version overwritten in place held acknowledged (unsynced)
                    // bytes; the durable version it superseded, if any, is the block
                    // again.
                    let _ = self.clear(bank, f);
                    for (w, _) in self.versions(bank, set, fp, fh, block).unwrap_or_default() {
                        let old = self.local(self.geo.frame(set, w));
                        bank.superseded.retain(|&x| x != old);
                    }
                    self.lost("rewriting an unsynced dirty block failed");
                }
                return Err(e);
            }
        };
        let li = self.local(f);
        let was_unsynced = bank.meta[li].unsynced;
        let fh_hash = fnv1a(fh);
        bank.meta[li] = Meta {
            fp,
            fh_hash,
            dirty: dirty_range.is_some(),
            referenced: true,
            unsynced: true,
            zero,
            stuck: false,
        };
        if !was_unsynced {
            // At most once per frame between syncs: bounded by the cache's frames.
            bank.written.push(li);
        }
        if dirty_range.is_some() {
            self.mark_unsynced(bank, f.bank, fh_hash);
        }
        if let Some(w) = old_way.filter(|w| *w != way) {
            // The superseded version stays until the new one is durable.
            bank.superseded.push(self.local(self.geo.frame(set, w)));
        }
        Ok(seq)
    }

    /// Cuts a block at byte `keep` (a truncation of the file inside this block): the
    /// newest version loses its bytes from `keep` on, dirty or not, written as a new
    /// version with the copy-on-write rule of `put`. Nothing left: every version goes.
    /// Durable at the next `sync_all`.
    pub fn truncate_block(&self, fh: &[u8], block: u64, keep: u32) -> Result<()> {
        if self.bypassed_now(fh) {
            return Ok(());
        }
        let _unstable = self.unstable_guard()?;
        let (set, fp) = self.locate(fh, block);
        let frame0 = self.geo.frame(set, 0);
        let mut bank = self.banks[frame0.bank as usize].lock().expect("bank lock");
        if bank.failed {
            return Err(self.failed_bank(frame0.bank));
        }
        let Some((way, c)) = self.newest(&mut bank, set, fp, fh, block)? else {
            return Ok(());
        };
        if c.valid.end <= keep {
            return Ok(());
        }
        if c.valid.start >= keep {
            drop(bank);
            drop(_unstable);
            return self.invalidate(fh, block);
        }
        // The kept bytes are a prefix of the frame's data, already there: only the tag
        // changes, in place (one 128-byte sector write: old or new after a crash, and
        // the caller makes it durable before the truncation is acknowledged). No second
        // frame is needed, so a set full of dirty blocks cannot stop a truncation.
        let valid = c.valid.start..keep;
        let kept = &c.data[..(keep - c.valid.start) as usize];
        let dirty = c
            .dirty
            .clone()
            .map(|d| d.start..d.end.min(keep))
            .filter(|d| d.start < d.end);
        let f = self.geo.frame(set, way);
        let tag = Tag {
            fh: fh.to_vec(),
            block,
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            valid,
            dirty: dirty.clone(),
            data_crc: crc32fast::hash(kept),
        };
        let file = bank.file.as_ref().expect("tags imply a bank file");
        file.write_all_at(&tag.encode(), self.tag_offset(f))
            .map_err(io(&self.bank_path(f.bank)))?;
        let li = self.local(f);
        if c.dirty.is_some() && dirty.is_none() {
            // Dirty to clean in place, durable only at the bank's next good fdatasync.
            bank.cleaned.insert((fnv1a(fh), block));
        }
        bank.meta[li].dirty = dirty.is_some();
        bank.tags_dirty = true;
        self.mark_unsynced(&mut bank, f.bank, fnv1a(fh));
        Ok(())
    }

    /// Picks a frame to (re)use in `set`: an empty one, else a clean one by CLOCK;
    /// never `keep` (the version being superseded), never a dirty frame, and never one
    /// whose durable dirty version was cleared since the bank's last sync
    /// (`Bank::cleared`) — if such frames are all the room there is, the bank (locked
    /// by the caller) is synced first, which frees them.
    fn victim(&self, bank: &mut Bank, set: u64, keep: Option<u32>) -> Result<u32> {
        if let Some(w) = self.pick(bank, set, keep) {
            return Ok(w);
        }
        let base = self.local(self.geo.frame(set, 0));
        if !bank.failed && (0..self.geo.ways as usize).any(|w| bank.cleared.contains(&(base + w))) {
            // Frames held only until their clearing is durable: made durable now (one
            // fdatasync of this bank), so nothing waits for a sync that may never come.
            self.fsync_bank(self.geo.frame(set, 0).bank as usize, bank)?;
            if let Some(w) = self.pick(bank, set, keep) {
                return Ok(w);
            }
        }
        Err(CacheError::SetFull)
    }

    /// `victim` without syncing: None if no frame of `set` may be taken now.
    fn pick(&self, bank: &mut Bank, set: u64, keep: Option<u32>) -> Option<u32> {
        let ways = self.geo.ways;
        let base = self.local(self.geo.frame(set, 0));
        if let Some(w) = (0..ways).find(|&w| {
            let li = base + w as usize;
            Some(w) != keep && bank.meta[li].fp == 0 && !bank.cleared.contains(&li)
        }) {
            return Some(w);
        }
        let set_in_bank = (set % self.geo.sets_per_bank) as usize;
        for _ in 0..2 * ways {
            let w = bank.hands[set_in_bank] as u32 % ways;
            bank.hands[set_in_bank] = ((w + 1) % ways) as u8;
            if bank.cleared.contains(&(base + w as usize)) {
                continue;
            }
            let m = &mut bank.meta[base + w as usize];
            if Some(w) == keep || m.dirty {
                continue;
            }
            if m.referenced {
                m.referenced = false;
                continue;
            }
            return Some(w);
        }
        None
    }

    /// The durable point: data, then tags, of every bank written since the last sync;
    /// then superseded versions are cleared. Each bank stays locked while it is synced,
    /// so a write cannot slip in between the fsync and the bookkeeping.
    pub fn sync(&self) -> Result<()> {
        if self.is_shared() {
            return Ok(());
        }
        // Every bank is synced even if one fails: the first error is returned after.
        let mut first_err = None;
        for b in 0..self.banks.len() {
            let mut bank = self.banks[b].lock().expect("bank lock");
            if bank.failed {
                // What it held unsynced when it failed is lost; nothing since needs it.
                if !bank.lost_files.is_empty() {
                    first_err.get_or_insert(self.failed_bank(b as u32));
                }
                continue;
            }
            if (!bank.written.is_empty()
                || !bank.superseded.is_empty()
                || !bank.unsynced_files.is_empty())
                && let Err(e) = self.sync_bank(b, &mut bank)
            {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => self.retire_marker(false),
        }
    }

    /// The durable point for one file (COMMIT, FILE_SYNC, a truncation kept here): syncs
    /// the banks that hold its dirty writes, cuts or cleared tags since their last sync —
    /// with everything else written there, but no other bank. A small file's blocks and
    /// records share a bank or two (consecutive sets), so committing one file costs one
    /// fdatasync per such bank (two if it superseded a durable version), however many
    /// other files were written meanwhile.
    pub fn sync_file(&self, fh: &[u8]) -> Result<()> {
        if self.is_shared() {
            return Ok(());
        }
        let h = fnv1a(fh);
        // A failed bank holding a change of the file it could not make durable (its
        // unsynced writes when it failed, a dirty tag cleared since): no durable point.
        // Such a bank is not in the map below (a failed bank notes nothing there).
        if self.any_failed() {
            for (b, bank) in self.banks.iter().enumerate() {
                let bank = bank.lock().expect("bank lock");
                if bank.failed && bank.lost_files.contains(&h) {
                    return Err(self.failed_bank(b as u32));
                }
            }
        }
        // Every write acknowledged before this COMMIT is in the map (it was noted under
        // its bank's lock before its reply); a bank synced meanwhile no longer holds it.
        let banks = self
            .unsynced_banks
            .lock()
            .expect("unsynced map lock")
            .get(&h)
            .cloned()
            .unwrap_or_default();
        for b in banks {
            let b = b as usize;
            let mut bank = self.banks[b].lock().expect("bank lock");
            // Failed since the check above: refused the same way if the file lost
            // changes there, else skipped (it had nothing unsynced there).
            if bank.failed {
                if bank.lost_files.contains(&h) {
                    return Err(self.failed_bank(b as u32));
                }
                continue;
            }
            if bank.unsynced_files.contains(&h) {
                self.sync_bank(b, &mut bank)?;
            }
        }
        self.retire_marker(false)
    }

    /// fsync/fdatasync calls made on the bank files so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Block reads answered with zeros known to be there, without reading a bank file.
    pub fn zero_reads(&self) -> u64 {
        self.zero_reads.load(Ordering::Relaxed)
    }

    /// One fdatasync of bank `b` (locked by the caller): its data and tags, one file. Every
    /// fsync of a bank goes through here, since Linux reports a writeback error once per
    /// file: whichever call sees it must treat the bank's unsynced dirty writes as lost
    /// (a new write verifier; the older, durable versions stay, never cleared as
    /// superseded), or a later fdatasync would "succeed" and a COMMIT would be answered
    /// for data that never reached the disk.
    fn fsync_bank(&self, b: usize, bank: &mut Bank) -> Result<()> {
        if bank.failed {
            return Err(self.failed_bank(b as u32));
        }
        let Some(file) = &bank.file else {
            return Ok(());
        };
        self.syncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = file.sync_data() {
            bank.failed = true;
            self.failed_banks.fetch_add(1, Ordering::SeqCst);
            bank.lost_files = bank.unsynced_files.clone();
            bank.superseded.clear();
            let cleaned: Vec<_> = bank.cleaned.drain().collect();
            bank.at_risk.extend(cleaned);
            // Every dirty frame's block, from its tag (in the page cache: just written or
            // read). A tag that cannot be read puts the whole file at risk.
            for li in 0..bank.meta.len() {
                if !bank.meta[li].dirty {
                    continue;
                }
                let key = self.risk_key(bank, self.frame_of(b as u32, li));
                bank.at_risk.insert(key);
            }
            self.lost("syncing the cache failed");
            return Err(io(&self.bank_path(b as u32))(e));
        }
        bank.tags_dirty = false;
        bank.cleaned.clear();
        bank.cleared.clear();
        Ok(())
    }

    fn failed_bank(&self, b: u32) -> CacheError {
        io(&self.bank_path(b))(std::io::Error::other(
            "an earlier fdatasync of this cache file failed; a flush renews it once its dirty data is written back, else a restart recovers it",
        ))
    }

    /// Notes that bank `b` (locked by the caller) holds an unsynced change of file `h`.
    fn mark_unsynced(&self, bank: &mut Bank, b: u32, h: u64) {
        if bank.failed {
            // Nothing it takes now needs a durable point (clean fills, cleared tags).
            return;
        }
        if bank.unsynced_files.insert(h) {
            let mut map = self.unsynced_banks.lock().expect("unsynced map lock");
            let banks = map.entry(h).or_default();
            if !banks.contains(&b) {
                banks.push(b);
            }
        }
    }

    /// Syncs bank `b` (locked by the caller): its data and tags in one fdatasync (a tag
    /// that reaches the disk before its data fails its checksum after a crash, and its
    /// version was not acknowledged, since this sync had not returned: the older one is
    /// used); then superseded versions are cleared, durably.
    fn sync_bank(&self, b: usize, bank: &mut Bank) -> Result<()> {
        self.fsync_bank(b, bank)?;
        if !bank.unsynced_files.is_empty() {
            let mut map = self.unsynced_banks.lock().expect("unsynced map lock");
            for h in bank.unsynced_files.drain() {
                if let std::collections::hash_map::Entry::Occupied(mut e) = map.entry(h) {
                    e.get_mut().retain(|&x| x != b as u32);
                    if e.get().is_empty() {
                        e.remove();
                    }
                }
            }
        }
        for li in std::mem::take(&mut bank.written) {
            bank.meta[li].unsynced = false;
        }
        let superseded = std::mem::take(&mut bank.superseded);
        for &li in &superseded {
            let f = self.frame_of(b as u32, li);
            self.clear(bank, f)?;
        }
        if !superseded.is_empty() {
            // Durable too: the newer version's frame may later be rewritten in place
            // (clean, or not yet synced), and a torn rewrite must not let a stale
            // older version win after a power failure.
            self.fsync_bank(b, bank)?;
        }
        Ok(())
    }

    /// Sets how long the `unstable` marker lingers after the last dirty write.
    pub fn set_marker_linger(&self, d: std::time::Duration) {
        self.linger_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Removes the `unstable` marker if no unsynced dirty write is left and (unless
    /// `now`) none began within `MARKER_LINGER`.
    fn retire_marker(&self, now: bool) -> Result<()> {
        let quiet = || {
            self.now_ms()
                .saturating_sub(self.last_dirty_ms.load(Ordering::Relaxed))
                >= self.linger_ms.load(Ordering::Relaxed)
        };
        if self.marked.load(Ordering::SeqCst) && (now || quiet()) {
            // No dirty write can start while we look (they hold the lock shared).
            let _x = self.unstable.write().expect("unstable lock");
            let all_synced = self.banks.iter().all(|b| {
                let b = b.lock().expect("bank lock");
                b.written.iter().all(|&li| !b.meta[li].dirty)
            });
            if all_synced && (now || quiet()) {
                let p = self.dir.join(UNSTABLE);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&p)(e)),
                }
                self.marked.store(false, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    /// Shared hold on the `unstable` marker, creating it (durably) first if needed.
    fn unstable_guard(&self) -> Result<std::sync::RwLockReadGuard<'_, ()>> {
        self.last_dirty_ms.store(self.now_ms(), Ordering::Relaxed);
        loop {
            let g = self.unstable.read().expect("unstable lock");
            if self.marked.load(Ordering::SeqCst) {
                return Ok(g);
            }
            drop(g);
            let _x = self.unstable.write().expect("unstable lock");
            if !self.marked.load(Ordering::SeqCst) {
                let p = self.dir.join(UNSTABLE);
                File::create(&p)
                    .and_then(|f| f.sync_all())
                    .map_err(io(&p))?;
                sync_dir(&self.dir)?;
                self.marked.store(true, Ordering::SeqCst);
            }
        }
    }

    /// After write-back: the block is clean, unless it was rewritten since (`seq`).
    pub fn mark_clean(&self, fh: &[u8], block: u64, seq: u64) -> Result<bool> {
        if self.is_shared() {
            return Ok(false);
        }
        let (set, fp) = self.locate(fh, block);
        let frame0 = self.geo.frame(set, 0);
        let mut bank = self.banks[frame0.bank as usize].lock().expect("bank lock");
        let Some((way, c)) = self.newest(&mut bank, set, fp, fh, block)? else {
            return Ok(false);
        };
        if bank.failed {
            // Its tags can no longer be made durable: clean in memory only, the block
            // could take a newer WRITE (through to the next hop, acknowledged) while
            // the dirty version on disk outlives a power failure, to be written back
            // over it after the restart. Kept dirty instead, and stuck: not listed for
            // write-back again, a WRITE to it fails (`at_risk`), and the write-back
            // after a restart sends the same bytes again. So is every other dirty
            // version up to the one sent (kept since the failure, no longer cleared as
            // superseded; or left when the one sent no longer verifies): what was just
            // sent is newer, and they must not follow it to the next hop.
            if c.seq == seq && c.dirty.is_some() {
                let li = self.local(self.geo.frame(set, way));
                bank.meta[li].stuck = true;
            }
            // (A tag that cannot be read now is left as it is: this call fails anyway.)
            for (w, t) in self.versions(&bank, set, fp, fh, block).unwrap_or_default() {
                if t.seq <= seq && t.dirty.is_some() {
                    let li = self.local(self.geo.frame(set, w));
                    bank.meta[li].stuck = true;
                }
            }
            bank.at_risk.insert((fnv1a(fh), block));
            return Err(self.failed_bank(frame0.bank));
        }
        if c.seq != seq || c.dirty.is_none() {
            return Ok(false);
        }
        let f = self.geo.frame(set, way);
        let tag = Tag {
            fh: fh.to_vec(),
            block,
            seq,
            valid: c.valid,
            dirty: None,
            data_crc: crc32fast::hash(&c.data),
        };
        let file = bank.file.as_ref().expect("tags imply a bank file");
        file.write_all_at(&tag.encode(), self.tag_offset(f))
            .map_err(io(&self.bank_path(f.bank)))?;
        let li = self.local(f);
        bank.meta[li].dirty = false;
        bank.tags_dirty = true;
        bank.cleaned.insert((fnv1a(fh), block));
        // Older versions of the block (durable dirty ones kept by copy-on-write) must
        // not outlive the clean newest one: evicting it would bring them back.
        for (w, _) in self.versions(&bank, set, fp, fh, block)? {
            if w != way {
                let old = self.geo.frame(set, w);
                self.clear(&mut bank, old)?;
            }
        }
        Ok(true)
    }

    /// Banks failed now (their fdatasync failed, not renewed since).
    pub fn failed_banks(&self) -> usize {
        self.failed_banks.load(Ordering::SeqCst)
    }

    /// Failed banks renewed in this run (`renew_failed_banks`).
    pub fn renewed_banks(&self) -> u64 {
        self.renewed_banks.load(Ordering::Relaxed)
    }

    /// Whether a bank is failed (its fdatasync failed, not renewed since): otherwise
    /// nothing is at risk (`at_risk`, `at_risk_from`), and callers can skip asking.
    pub fn any_failed(&self) -> bool {
        self.failed_banks.load(Ordering::SeqCst) > 0
    }

    /// Retires each failed bank whose dirty data has all been written back (every dirty
    /// frame in it is `stuck`: sent and committed at the next hop since the failure) and
    /// in which no dirty tag was cleared before it was sent (`Bank::pinned`).
    /// Its file is removed and the directory synced, so no tag in it — dirty when the
    /// bank failed, or cleaned without a durable sync since — can come back after a
    /// power failure; the bank starts over empty, in a new file made by its next fill.
    /// Its at-risk blocks and lost files go with it: WRITEs to them, truncations and
    /// durable points of those files are taken again. A bank whose removal cannot be
    /// made durable stays failed (and at risk). Returns the banks renewed.
    pub fn renew_failed_banks(&self) -> Result<Vec<u32>> {
        if !self.any_failed() || self.is_shared() {
            return Ok(Vec::new());
        }
        let mut renewed = Vec::new();
        let mut outcome = Ok(());
        for (b, bank) in self.banks.iter().enumerate() {
            let mut bank = bank.lock().expect("bank lock");
            if !bank.failed || bank.pinned || bank.meta.iter().any(|m| m.dirty && !m.stuck) {
                continue;
            }
            let path = self.bank_path(b as u32);
            // Our open descriptor keeps reads of the old file working until the removal
            // is durable; a failure leaves the bank failed, as it was.
            let removed = match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
                _ => sync_dir(&self.dir),
            };
            if let Err(e) = removed {
                outcome = Err(e);
                continue;
            }
            *bank = Bank::new(None, &self.geo);
            // Under the bank's lock, which `mark_unsynced` holds when it adds an entry:
            // the file -> banks map forgets what the old bank held, and nothing that a
            // write into the new one notes there.
            self.unsynced_banks
                .lock()
                .expect("unsynced map lock")
                .retain(|_, banks| {
                    banks.retain(|&x| x != b as u32);
                    !banks.is_empty()
                });
            renewed.push(b as u32);
        }
        self.failed_banks.fetch_sub(renewed.len(), Ordering::SeqCst);
        self.renewed_banks
            .fetch_add(renewed.len() as u64, Ordering::Relaxed);
        outcome.map(|()| renewed)
    }

    /// `at_risk`, as the error that a durable point needing the block meets.
    pub fn at_risk_error(&self, fh: &[u8], block: u64) -> Option<CacheError> {
        if !self.at_risk(fh, block) {
            return None;
        }
        let (set, _) = self.locate(fh, block);
        Some(self.failed_bank(self.geo.frame(set, 0).bank))
    }

    /// Whether a block may have a dirty tag in a failed bank that this run cannot clear
    /// durably (see `Bank::at_risk`): no newer WRITE may go past it in this run.
    pub fn at_risk(&self, fh: &[u8], block: u64) -> bool {
        if !self.any_failed() {
            return false;
        }
        let (set, _) = self.locate(fh, block);
        let frame0 = self.geo.frame(set, 0);
        let bank = self.banks[frame0.bank as usize].lock().expect("bank lock");
        let h = fnv1a(fh);
        bank.failed
            && (bank.at_risk.contains(&(h, block)) || bank.at_risk.contains(&(h, ALL_BLOCKS)))
    }

    /// Whether any block of the file from `first` on is at risk (see `at_risk`): a
    /// truncation below it is refused in this run.
    pub fn at_risk_from(&self, fh: &[u8], first: u64) -> bool {
        if !self.any_failed() {
            return false;
        }
        let h = fnv1a(fh);
        self.banks.iter().any(|b| {
            let b = b.lock().expect("bank lock");
            b.failed && b.at_risk.iter().any(|&(x, block)| x == h && block >= first)
        })
    }

    /// Forgets every version of a block (its data changed upstream, or was truncated).
    /// Dirty versions are dropped too: callers use this only for data that is gone.
    pub fn invalidate(&self, fh: &[u8], block: u64) -> Result<()> {
        self.invalidate_block(fh, block, false)
    }

    /// Forgets the clean versions of a block; a dirty newest version stays (with the
    /// versions it supersedes), so a write-back cache never loses data to an
    /// invalidation.
    fn invalidate_block(&self, fh: &[u8], block: u64, keep_dirty: bool) -> Result<()> {
        if self.bypassed_now(fh) {
            return Ok(());
        }
        let (set, fp) = self.locate(fh, block);
        let frame0 = self.geo.frame(set, 0);
        let mut bank = self.banks[frame0.bank as usize].lock().expect("bank lock");
        for way in 0..self.geo.ways {
            let f = self.geo.frame(set, way);
            if bank.meta[self.local(f)].fp != fp {
                continue;
            }
            if let Slot::Tag(t) = self.read_tag(&bank, f)?
                && t.fh == fh
                && t.block == block
            {
                if keep_dirty && bank.meta[self.local(f)].dirty {
                    return Ok(());
                }
                self.clear(&mut bank, f)?;
                self.mark_unsynced(&mut bank, f.bank, fnv1a(fh));
            }
        }
        Ok(())
    }

    /// Forgets blocks `from..=to` of a file. A range longer than the number of sets
    /// (sizes can come from clients and servers: 2^63 is a valid file size) becomes one
    /// pass over the frames instead, so the work is bounded by the cache, not the range.
    pub fn invalidate_range(&self, fh: &[u8], from: u64, to: u64) -> Result<()> {
        self.invalidate_blocks(fh, from, to, false)
    }

    /// Like `invalidate_range`, but blocks holding dirty data stay whole (a file changed
    /// upstream while it has local writes: the local writes win, as they will at the
    /// next flush).
    pub fn invalidate_range_clean(&self, fh: &[u8], from: u64, to: u64) -> Result<()> {
        self.invalidate_blocks(fh, from, to, true)
    }

    fn invalidate_blocks(&self, fh: &[u8], from: u64, to: u64, keep_dirty: bool) -> Result<()> {
        if self.bypassed_now(fh) {
            return Ok(());
        }
        if to < from {
            return Ok(());
        }
        if to - from < self.geo.sets() {
            for b in from..=to {
                self.invalidate_block(fh, b, keep_dirty)?;
            }
            return Ok(());
        }
        let mut dirty_blocks = std::collections::HashSet::new();
        if keep_dirty {
            for d in self.dirty_blocks()? {
                if d.fh == fh {
                    dirty_blocks.insert(d.block);
                }
            }
        }
        let h = fnv1a(fh);
        for (b, bank) in self.banks.iter().enumerate() {
            let mut bank = bank.lock().expect("bank lock");
            for li in 0..bank.meta.len() {
                if bank.meta[li].fp == 0 || bank.meta[li].fh_hash != h {
                    continue;
                }
                let f = self.frame_of(b as u32, li);
                if let Slot::Tag(t) = self.read_tag(&bank, f)?
                    && t.fh == fh
                    && (from..=to).contains(&t.block)
                    && !dirty_blocks.contains(&t.block)
                {
                    self.clear(&mut bank, f)?;
                    self.mark_unsynced(&mut bank, b as u32, h);
                }
            }
        }
        Ok(())
    }

    /// Forgets every clean block (SIGUSR2 after write-back); dirty ones stay. One read and
    /// one write of each bank's tag file, then an fdatasync.
    pub fn drop_clean(&self) -> Result<u64> {
        if self.is_shared() {
            // Not ours to drop; the owner drops its own cache.
            return Ok(0);
        }
        let mut dropped = 0;
        // Every bank is dropped even if one fails; the first error is returned after.
        let mut first_err = None;
        for (b, bank) in self.banks.iter().enumerate() {
            let mut bank = bank.lock().expect("bank lock");
            // A failed bank's tags cannot be made durable, and its clean versions may
            // stand in front of older dirty ones kept since the failure: left as they
            // are until it is renewed (which empties it) or the proxy restarts.
            if bank.failed {
                continue;
            }
            let Some(file) = &bank.file else {
                continue;
            };
            let path = self.bank_path(b as u32);
            let mut tags = vec![0u8; bank.meta.len() * TAG_SIZE];
            if let Err(e) = file.read_exact_at(&mut tags, 0) {
                first_err.get_or_insert(io(&path)(e));
                continue;
            }
            let mut n = 0;
            for (i, slot) in tags.chunks_exact_mut(TAG_SIZE).enumerate() {
                if bank.meta[i].fp != 0 && !bank.meta[i].dirty {
                    slot.fill(0);
                    n += 1;
                }
            }
            if let Err(e) = file.write_all_at(&tags, 0) {
                first_err.get_or_insert(io(&path)(e));
                continue;
            }
            // Clean versions only: forgotten here whether or not the cleared tags are
            // durable (one back after a crash is dropped by the unclean-stop recovery).
            if let Err(e) = self.fsync_bank(b, &mut bank) {
                first_err.get_or_insert(e);
            }
            for m in bank.meta.iter_mut().filter(|m| m.fp != 0 && !m.dirty) {
                *m = Meta::default();
            }
            dropped += n;
        }
        first_err.map_or(Ok(dropped), Err)
    }

    /// Every dirty block of file data (its newest version), sorted by file handle and
    /// block, for write-back. Records (blocks from `RECORDS_FROM`) are not listed.
    pub fn dirty_blocks(&self) -> Result<Vec<DirtyBlock>> {
        Ok(self.dirty_blocks_and_records()?.0)
    }

    /// The dirty blocks of file data and, apart, the dirty records (blocks from
    /// `RECORDS_FROM`), each sorted like `dirty_blocks`: one pass over the tags.
    pub fn dirty_blocks_and_records(&self) -> Result<(Vec<DirtyBlock>, Vec<DirtyBlock>)> {
        Ok(self
            .all_dirty()?
            .into_iter()
            .partition(|d| d.block < RECORDS_FROM))
    }

    fn all_dirty(&self) -> Result<Vec<DirtyBlock>> {
        let mut out = Vec::new();
        for (b, bank) in self.banks.iter().enumerate() {
            let bank = bank.lock().expect("bank lock");
            for (i, m) in bank.meta.iter().enumerate() {
                if !m.dirty || m.stuck {
                    continue;
                }
                out.extend(self.dirty_block_at(&bank, self.frame_of(b as u32, i))?);
            }
        }
        Self::newest_dirty(out)
    }

    /// The dirty block a frame holds, read from its tag.
    fn dirty_block_at(&self, bank: &Bank, f: Frame) -> Result<Option<DirtyBlock>> {
        Ok(match self.read_tag(bank, f)? {
            Slot::Tag(t) => t.dirty.map(|dirty| DirtyBlock {
                fh: t.fh,
                block: t.block,
                seq: t.seq,
                dirty,
            }),
            _ => None,
        })
    }

    /// Sorts by (fh, block) and keeps the newest version of each block.
    fn newest_dirty(mut out: Vec<DirtyBlock>) -> Result<Vec<DirtyBlock>> {
        out.sort_by(|a, b| {
            (&a.fh, a.block, std::cmp::Reverse(a.seq)).cmp(&(
                &b.fh,
                b.block,
                std::cmp::Reverse(b.seq),
            ))
        });
        out.dedup_by(|a, b| a.fh == b.fh && a.block == b.block);
        Ok(out)
    }

    /// The dirty blocks that share a set with (fh, block): what to write back when that
    /// set is full of dirty data.
    pub fn dirty_in_set(&self, fh: &[u8], block: u64) -> Result<Vec<DirtyBlock>> {
        let (set, _) = self.locate(fh, block);
        let frame0 = self.geo.frame(set, 0);
        let bank = self.banks[frame0.bank as usize].lock().expect("bank lock");
        let mut out = Vec::new();
        for way in 0..self.geo.ways {
            let f = self.geo.frame(set, way);
            let m = bank.meta[self.local(f)];
            if m.dirty && !m.stuck {
                out.extend(self.dirty_block_at(&bank, f)?);
            }
        }
        out.retain(|d| d.block < RECORDS_FROM);
        Self::newest_dirty(out)
    }

    /// Makes every write and every cleared tag durable, in every bank (tests; a
    /// truncation needs only its own file's: `sync_file`, which also covers the tags it
    /// cut or cleared, and is refused only for that file's lost writes).
    #[cfg(test)]
    pub fn sync_all(&self) -> Result<()> {
        self.sync()?;
        self.sync_tags()
    }

    /// Makes cleared and rewritten tags durable (after a batch of `mark_clean`, which
    /// clears the versions a written-back block superseded).
    pub fn sync_tags(&self) -> Result<()> {
        if self.is_shared() {
            return Ok(());
        }
        // Every bank is synced even if one fails (the first error is returned after):
        // a clean tag left unsynced in a healthy bank would let its dirty predecessor
        // come back after a power failure, and be written back again over whatever
        // the server holds by then.
        let mut first_err = None;
        for (b, bank) in self.banks.iter().enumerate() {
            let mut bank = bank.lock().expect("bank lock");
            // A failed bank's tags cannot be made durable; what changes there is no
            // dirty state (`mark_clean` refuses it, dirty writes and cuts go elsewhere),
            // only clean frames, and its failure already changed the verifier. Skipped,
            // so the other banks' write-backs are not refused for it.
            if !bank.tags_dirty || bank.failed {
                continue;
            }
            let synced = if bank.unsynced_files.is_empty() {
                self.fsync_bank(b, &mut bank)
            } else {
                // The bookkeeping too, so the file → banks map forgets what is durable.
                self.sync_bank(b, &mut bank)
            };
            match synced {
                Ok(()) => bank.tags_dirty = false,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The write verifier: the same across restarts while no dirty data was lost; a new
    /// one after recovery dropped a dirty version that never reached a durable point.
    pub fn verifier(&self) -> [u8; 8] {
        *self.verifier.lock().expect("verifier lock")
    }

    /// Dirty data that was acknowledged UNSTABLE may be lost (a dirty version failed its
    /// checksum, a rewrite in place or a sync failed): a new write verifier, so clients
    /// re-send what they have not seen committed.
    fn lost(&self, why: &str) {
        self.lost_unstable.store(true, Ordering::Relaxed);
        let mut v = self.verifier.lock().expect("verifier lock");
        match load_verifier(&self.dir, true) {
            Ok(new) => {
                *v = new;
                tracing::warn!(why, "unstable data may be lost: the write verifier changed");
            }
            Err(e) => {
                // Not durable, but still new for this run: clients re-send now.
                v[0] ^= 0x80;
                v[7] = v[7].wrapping_add(1);
                tracing::warn!(why, error = %e, "unstable data may be lost; the new write verifier could not be saved");
            }
        }
    }

    fn read_tag(&self, bank: &Bank, f: Frame) -> Result<Slot> {
        let Some(file) = &bank.file else {
            return Ok(Slot::Empty);
        };
        let mut b = [0u8; TAG_SIZE];
        file.read_exact_at(&mut b, self.tag_offset(f))
            .map_err(io(&self.bank_path(f.bank)))?;
        Ok(Tag::decode(&b, self.geo.block_size))
    }

    /// The (file hash, block) of the dirty version frame `f` holds, read back from its
    /// tag; if the tag read is not that version's (a page dropped after a writeback
    /// error can read older bytes), the whole file: (file hash, `ALL_BLOCKS`).
    fn risk_key(&self, bank: &Bank, f: Frame) -> (u64, u64) {
        let m = bank.meta[self.local(f)];
        match self.read_tag(bank, f) {
            Ok(Slot::Tag(t)) if fingerprint(&t.fh, t.block) == m.fp => (fnv1a(&t.fh), t.block),
            _ => (m.fh_hash, ALL_BLOCKS),
        }
    }

    fn clear(&self, bank: &mut Bank, f: Frame) -> Result<()> {
        let li = self.local(f);
        if bank.meta[li].dirty {
            // Its dirty tag is cleared in place, durable only at the bank's next good
            // fdatasync (or never, if the bank has failed).
            let key = self.risk_key(bank, f);
            if bank.failed {
                // Not durable now: the file's durable points fail from here on (a
                // truncation or a record's removal must not be acknowledged), until the
                // bank is renewed.
                bank.at_risk.insert(key);
                bank.lost_files.insert(key.0);
                bank.pinned |= !bank.meta[li].stuck;
            } else {
                bank.cleaned.insert(key);
                if !bank.meta[li].unsynced {
                    // A durable version (an unsynced one was never the last durable).
                    bank.cleared.insert(li);
                }
            }
        }
        bank.meta[li] = Meta::default();
        // The frame may be reused at once: `sync` must not clear it later as a
        // superseded version.
        bank.superseded.retain(|&x| x != li);
        if let Some(file) = &bank.file {
            file.write_all_at(&[0u8; TAG_SIZE], self.tag_offset(f))
                .map_err(io(&self.bank_path(f.bank)))?;
            bank.tags_dirty = true;
        }
        Ok(())
    }

    fn local(&self, f: Frame) -> usize {
        (f.set_in_bank * self.geo.ways as u64 + f.way as u64) as usize
    }

    fn frame_of(&self, bank: u32, local: usize) -> Frame {
        let ways = self.geo.ways as usize;
        Frame {
            bank,
            set_in_bank: (local / ways) as u64,
            way: (local % ways) as u32,
        }
    }

    fn tag_offset(&self, f: Frame) -> u64 {
        self.local(f) as u64 * TAG_SIZE as u64
    }

    /// The bank holding `block` of `fh` (tests).
    #[cfg(test)]
    pub(crate) fn bank_of(&self, fh: &[u8], block: u64) -> usize {
        let (set, _) = self.locate(fh, block);
        self.geo.frame(set, 0).bank as usize
    }

    /// Runs `f` while bank `b`'s file is /dev/full (its fdatasync fails), then puts the
    /// real file back (tests).
    #[cfg(test)]
    pub(crate) fn with_failing_bank<T>(&self, b: usize, f: impl FnOnce() -> T) -> T {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let real = self.banks[b].lock().expect("bank lock").file.replace(full);
        let r = f();
        self.banks[b].lock().expect("bank lock").file = real;
        r
    }

    fn bank_path(&self, b: u32) -> PathBuf {
        bank_path(&self.dir, b)
    }

    /// Where a frame's data starts in its bank file: after the bank's tags.
    fn data_at(&self, f: Frame) -> u64 {
        tags_area(&self.geo) + self.geo.data_offset(f)
    }
}

const VERIFIER: &str = "verifier";

/// Reads the write verifier kept in the cache directory, or makes a new one (first
/// start, or `lost`: dirty data was lost, so clients must re-send what they have not
/// seen committed). Written durably (temp + rename + directory fsync) before use.
fn load_verifier(dir: &Path, lost: bool) -> Result<[u8; 8]> {
    let p = dir.join(VERIFIER);
    if !lost
        && let Ok(b) = std::fs::read(&p)
        && let Ok(v) = <[u8; 8]>::try_from(b.as_slice())
    {
        return Ok(v);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut v = (now.as_nanos() as u64 ^ ((std::process::id() as u64) << 40)).to_be_bytes();
    if let Ok(old) = std::fs::read(&p)
        && old.as_slice() == v
    {
        v[7] ^= 1;
    }
    let tmp = dir.join("verifier.tmp");
    std::fs::write(&tmp, v).map_err(io(&tmp))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, &p).map_err(io(&p))?;
    sync_dir(dir)?;
    Ok(v)
}

/// Whether every byte of `b` is zero (16 bytes at a time; stops at the first that is not).
fn all_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(16);
    chunks
        .by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0)
        && chunks.remainder().iter().all(|&x| x == 0)
}

/// Writes a frame's bytes at `off` of its bank file. Zeros (a VM's free memory pages, a
/// disk's unused blocks) are not written: the range becomes a hole, which reads as zeros,
/// costs no data blocks and nothing to sync but the extent map (fdatasync includes it).
/// Where holes cannot be punched the zeros are written. Returns whether `buf` was all
/// zeros (a block of at least 4 KiB).
fn write_data(file: &File, buf: &[u8], off: u64) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let zero = buf.len() >= 4096 && all_zero(buf);
    if zero {
        // SAFETY: fallocate on a file descriptor we own; it reads no memory of ours.
        let r = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off as libc::off_t,
                buf.len() as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(true);
        }
    }
    file.write_all_at(buf, off).map(|()| zero)
}

/// Appends `len` bytes read from `file` at `off` to `dst`, reading straight into its spare
/// capacity: a cache hit is one copy (disk page cache → reply buffer), with no zero fill
/// first (that memset was 16% of a warm re-read's CPU). On error `dst` is unchanged.
fn read_append(
    file: &File,
    dst: &mut bytes::BytesMut,
    len: usize,
    off: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    dst.reserve(len);
    let spare = &mut dst.spare_capacity_mut()[..len];
    let mut done = 0;
    while done < len {
        // SAFETY: `spare` is `len` bytes of owned, writable (uninitialised) capacity of
        // `dst`; pread writes at most `len - done` bytes at its offset `done` and never
        // reads them. The bytes only count as initialised after pread filled them all.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().add(done).cast(),
                len - done,
                (off + done as u64) as libc::off_t,
            )
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "cache bank shorter than its geometry",
                ));
            }
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    // SAFETY: the `len` bytes after the old length were all written by pread above.
    unsafe { dst.set_len(dst.len() + len) };
    Ok(())
}

/// What the superblock of a cache with this geometry says.
fn superblock_text(geo: &Geometry) -> String {
    format!(
        "{SB_MAGIC}\nblock_size={} ways={} banks={} sets_per_bank={}\n",
        geo.block_size, geo.ways, geo.banks, geo.sets_per_bank
    )
}

/// Checks `dir`'s superblock against `want`: true if it matches, false if there is none
/// yet, an error if it is another geometry or not ours.
fn has_superblock(dir: &Path, want: &str) -> Result<bool> {
    let sb = dir.join(SUPERBLOCK);
    match std::fs::read_to_string(&sb) {
        Ok(found) if found == want => Ok(true),
        Ok(found) if found.starts_with(SB_MAGIC) => Err(CacheError::GeometryChanged {
            path: dir.to_path_buf(),
            found: found.lines().nth(1).unwrap_or("").into(),
            configured: want.lines().nth(1).unwrap_or("").into(),
        }),
        Ok(found) if found.starts_with(SB_FAMILY) => Err(CacheError::BadSuperblock {
            path: sb,
            why: format!(
                "made by another gridvfs version ({}; this one writes {SB_MAGIC}). It may \
                 hold dirty data: flush it with that version, or remove the directory",
                found.lines().next().unwrap_or("")
            ),
        }),
        Ok(_) => Err(CacheError::BadSuperblock {
            path: sb,
            why: "not a gridvfs cache superblock".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(&sb)(e)),
    }
}

fn bank_path(dir: &Path, b: u32) -> PathBuf {
    dir.join(format!("bank-{b:04}"))
}

/// Bytes at the start of a bank file that hold its tags (one per frame), rounded up to
/// a page so that data frames stay page-aligned.
fn tags_area(geo: &Geometry) -> u64 {
    (geo.sets_per_bank * geo.ways as u64 * TAG_SIZE as u64).next_multiple_of(4096)
}

/// Makes the directory's entries durable (a file made, renamed or removed in it).
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Opens (creating, sparse, at full size) a bank's file: its tags, then its data frames
/// (one file, so one fdatasync makes both durable).
fn open_bank(dir: &Path, b: u32, geo: &Geometry) -> Result<File> {
    let p = bank_path(dir, b);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .map_err(io(&p))?;
    let len = tags_area(geo) + geo.bank_bytes();
    if f.metadata().map_err(io(&p))?.len() < len {
        f.set_len(len).map_err(io(&p))?;
    }
    Ok(f)
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
