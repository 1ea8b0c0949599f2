//! Recording a VM's working set (`[meta] record_working_set`): the byte ranges the
//! clients READ of each file, so that middleware can write them into the file's sidecar
//! (`gridvfs workset` dumps them, `gridvfs meta workset` writes them) and later sessions
//! prefetch them (docs/sidecar-format.md, WORKSET).
//!
//! Data enters through [`Recorder::record_call`], called by the cache layer for every
//! READ a client sends, before anything answers it (a cache hit, a zero-map answer and a
//! forwarded READ are all recorded: the working set is what the VM asked for, not what
//! crossed the network). It leaves through [`Recorder::get`] (the control socket's
//! `workset PATH`) and [`Recorder::totals`] (`gridvfs status`).
//!
//! Per file handle the ranges are kept sorted and merged (overlapping or touching READs
//! become one range), so a sequential reader costs one range however many READs it
//! makes. Everything is bounded: [`MAX_FILES`] files (READs of later files are counted,
//! not recorded), [`MAX_WORKSET`] ranges per file (a sidecar holds no more; past it the
//! file's recording stops and is marked truncated), [`MAX_RANGES`] ranges in all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Mutex;

use tracing::warn;

use crate::meta::format::MAX_WORKSET;
use crate::nfs3::{Args, Proc};
use crate::rpc::CallHeader;
use crate::upstream::calls::Cred;

/// Files recorded at most. A VM session reads a handful of images; a proxy serving a
/// build tree would otherwise grow a table per source file.
pub const MAX_FILES: usize = 1024;
/// Ranges held in all files together (the per-file bound times `MAX_FILES` would be
/// 64 Mi ranges, gigabytes): 1 Mi ranges are about 40 MiB in the maps.
pub const MAX_RANGES: usize = 1 << 20;
/// Distinct files not recorded that are counted at most (their handles' hashes are
/// kept to count each file once).
const MAX_REFUSED: usize = 1 << 16;

/// The answer to the control request `workset PATH` (one JSON line after `"ok":true`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dump {
    /// PATH as asked.
    pub path: String,
    /// The file's size as its clients see it; the ranges are clipped to it.
    pub size: u64,
    /// `[offset, len]`, sorted, neither overlapping nor touching, len > 0.
    pub ranges: Vec<[u64; 2]>,
    /// The sum of the lengths.
    pub bytes: u64,
    /// The recording of this file stopped at a bound: READs after it are missing.
    pub truncated: bool,
}

/// What was recorded of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Sorted, disjoint, neither overlapping nor touching; not clipped to the file's
    /// size (a READ may ask past the end of file).
    pub ranges: Vec<Range<u64>>,
    /// The file reached [`MAX_WORKSET`] ranges (or the recorder [`MAX_RANGES`]) and READs
    /// after that were not recorded.
    pub truncated: bool,
}

/// Why nothing is recorded for a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotRecorded {
    #[error("no READ of it was recorded since the proxy started")]
    NeverRead,
    #[error("it was read, but the recorder already held {MAX_FILES} files")]
    TableFull,
}

/// `gridvfs status`'s view of the recorder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub files: u64,
    pub ranges: u64,
    /// Bytes in the recorded ranges, as asked (not clipped to the files' sizes).
    pub bytes: u64,
    /// Distinct files read while the table was full (counted up to 65,536).
    pub files_not_recorded: u64,
    /// Files whose recording stopped at a range bound.
    pub truncated: u64,
}

/// One file's ranges: start → end.
#[derive(Default)]
struct FileSet {
    ranges: BTreeMap<u64, u64>,
    truncated: bool,
}

#[derive(Default)]
struct Inner {
    files: HashMap<Vec<u8>, FileSet>,
    ranges: usize,
    bytes: u64,
    truncated: u64,
    /// Hashes of the handles of files not recorded (table full), to count each once.
    refused: HashSet<u64>,
    /// The credential of the last READ recorded (AUTH_NONE never replaces another):
    /// `gridvfs workset PATH` looks PATH up as the reader, since a profiling session
    /// may have written nothing, so there may be no writer's credential to use.
    reader: Option<Cred>,
}

/// The per-file working-set recorder. One mutex: the critical section of a READ is a
/// hash lookup and a B-tree step or two; nothing is allocated but a new file's key and,
/// now and then, a B-tree node.
#[derive(Default)]
pub struct Recorder {
    inner: Mutex<Inner>,
}

/// What a recording step has to say once the lock is released.
enum Note {
    Nothing,
    /// The file's recording stopped here (its first time).
    Truncated,
    /// The first file the full table turned away.
    TableFull,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Records the range of a READ call record (RPC header included); anything that is
    /// not a well-formed NFSv3 READ is ignored (the proxy answers it GARBAGE_ARGS).
    pub fn record_call(&self, call: &[u8]) {
        let Ok(h) = CallHeader::parse(call) else {
            return;
        };
        if let Some(Ok(Args::Read(a))) = call
            .get(h.args_at..)
            .map(|args| Args::decode(Proc(h.proc_), args))
        {
            let cred = (h.cred.flavor.0, h.cred.body);
            self.record_as(a.file.0, a.offset, a.count, Some(cred));
        }
    }

    /// Records that `fh` was read at `offset` for `count` bytes.
    pub fn record(&self, fh: &[u8], offset: u64, count: u32) {
        self.record_as(fh, offset, count, None)
    }

    /// [`Recorder::record`] by a caller with this credential (flavor, body).
    fn record_as(&self, fh: &[u8], offset: u64, count: u32, cred: Option<(u32, &[u8])>) {
        if count == 0 {
            return;
        }
        let end = offset.saturating_add(count as u64);
        if offset >= end {
            return; // at the very end of the offset space: nothing to keep
        }
        let note = {
            let mut g = self.inner.lock().expect("workset lock");
            if let Some((flavor, body)) = cred {
                g.remember_reader(flavor, body);
            }
            g.add(fh, offset, end)
        };
        match note {
            Note::Nothing => {}
            Note::Truncated => warn!(
                file = %short_hex(fh),
                limit = MAX_WORKSET,
                total_limit = MAX_RANGES,
                "working-set recording of a file stopped: too many separate ranges \
                 (the rest of its READs are not recorded; `gridvfs workset` says truncated)"
            ),
            Note::TableFull => warn!(
                limit = MAX_FILES,
                "working-set recorder full: READs of further files are not recorded \
                 (counted in `gridvfs status` as files_not_recorded)"
            ),
        }
    }

    /// The ranges recorded for `fh`.
    pub fn get(&self, fh: &[u8]) -> Result<Recorded, NotRecorded> {
        let g = self.inner.lock().expect("workset lock");
        match g.files.get(fh) {
            Some(f) => Ok(Recorded {
                ranges: f.ranges.iter().map(|(&s, &e)| s..e).collect(),
                truncated: f.truncated,
            }),
            None if g.refused.contains(&crate::cache::layout::fnv1a(fh)) => {
                Err(NotRecorded::TableFull)
            }
            None => Err(NotRecorded::NeverRead),
        }
    }

    /// The credential of the last READ recorded, if any.
    pub fn reader(&self) -> Option<Cred> {
        self.inner.lock().expect("workset lock").reader.clone()
    }

    pub fn totals(&self) -> Totals {
        let g = self.inner.lock().expect("workset lock");
        Totals {
            files: g.files.len() as u64,
            ranges: g.ranges as u64,
            bytes: g.bytes,
            files_not_recorded: g.refused.len() as u64,
            truncated: g.truncated,
        }
    }
}

impl Inner {
    /// Keeps the reader's credential; allocates only when it changes.
    fn remember_reader(&mut self, flavor: u32, body: &[u8]) {
        let same = |c: &Cred| c.flavor == flavor && c.body == body;
        if self.reader.as_ref().is_some_and(same) || (flavor == 0 && self.reader.is_some()) {
            return;
        }
        self.reader = Some(Cred {
            flavor,
            body: body.to_vec(),
        });
    }

    fn add(&mut self, fh: &[u8], start: u64, end: u64) -> Note {
        if !self.files.contains_key(fh) {
            if self.files.len() >= MAX_FILES {
                let first = self.refused.is_empty();
                if self.refused.len() < MAX_REFUSED {
                    self.refused.insert(crate::cache::layout::fnv1a(fh));
                }
                return if first {
                    Note::TableFull
                } else {
                    Note::Nothing
                };
            }
            self.files.insert(fh.to_vec(), FileSet::default());
        }
        let total = self.ranges;
        let f = self.files.get_mut(fh).expect("present or just inserted");
        if f.truncated {
            return Note::Nothing;
        }
        // The ranges `start..end` overlaps or touches: the last one starting at or before
        // `start` (if it reaches `start`), then every one starting at or before `end`.
        let mut lo = start;
        let mut hi = end;
        let mut first = match f.ranges.range(..=start).next_back() {
            Some((&s, &e)) if e >= start => Some(s),
            _ => None,
        };
        if first.is_none() {
            first = f.ranges.range(start..=end).next().map(|(&s, _)| s);
        }
        let Some(from) = first else {
            // Disjoint from everything: a new range, if the bounds allow it.
            if f.ranges.len() >= MAX_WORKSET || total >= MAX_RANGES {
                f.truncated = true;
                self.truncated += 1;
                return Note::Truncated;
            }
            f.ranges.insert(start, end);
            self.ranges += 1;
            self.bytes += end - start;
            return Note::Nothing;
        };
        // Merge every range from `from` on that starts at or before the merged end.
        let mut removed = 0u64;
        let mut gone = 0usize;
        while let Some((&s, &e)) = f.ranges.range(from..=hi).next() {
            f.ranges.remove(&s);
            lo = lo.min(s);
            hi = hi.max(e);
            removed += e - s;
            gone += 1;
        }
        f.ranges.insert(lo, hi);
        self.bytes += (hi - lo) - removed;
        self.ranges = self.ranges + 1 - gone;
        Note::Nothing
    }
}

/// The first bytes of a handle in hex, to tell files apart in a log line.
fn short_hex(fh: &[u8]) -> String {
    fh.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// `ranges` clipped to a file of `size` bytes: ranges past the end dropped, the one
/// across it shortened. Returns them and their bytes.
pub fn clip(ranges: &[Range<u64>], size: u64) -> (Vec<Range<u64>>, u64) {
    let out: Vec<Range<u64>> = ranges
        .iter()
        .filter(|r| r.start < size)
        .map(|r| r.start..r.end.min(size))
        .collect();
    let bytes = out.iter().map(|r| r.end - r.start).sum();
    (out, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(r: &Recorder, fh: &[u8]) -> Vec<(u64, u64)> {
        r.get(fh)
            .unwrap()
            .ranges
            .iter()
            .map(|r| (r.start, r.end))
            .collect()
    }

    #[test]
    fn overlapping_reads_merge_and_disjoint_ones_stay_apart() {
        let r = Recorder::new();
        r.record(b"f", 100, 50); // 100..150
        r.record(b"f", 300, 10); // 300..310
        r.record(b"f", 140, 20); // overlaps the first: 100..160
        r.record(b"f", 0, 10); // before everything
        r.record(b"f", 120, 5); // inside: nothing changes
        assert_eq!(ranges(&r, b"f"), [(0, 10), (100, 160), (300, 310)]);
        // One READ spanning several ranges swallows them.
        r.record(b"f", 5, 300);
        assert_eq!(ranges(&r, b"f"), [(0, 310)]);
        let t = r.totals();
        assert_eq!((t.files, t.ranges, t.bytes), (1, 1, 310));
    }

    #[test]
    fn touching_reads_merge_into_one_range() {
        let r = Recorder::new();
        // A sequential reader: 4 KiB READs one after the other.
        for i in 0..100u64 {
            r.record(b"seq", i * 4096, 4096);
        }
        assert_eq!(ranges(&r, b"seq"), [(0, 409_600)]);
        // Touching from below and from above, and filling a gap exactly.
        r.record(b"g", 10, 10); // 10..20
        r.record(b"g", 30, 10); // 30..40
        r.record(b"g", 0, 10); // touches 10..20 from below
        r.record(b"g", 40, 5); // touches 30..40 from above
        assert_eq!(ranges(&r, b"g"), [(0, 20), (30, 45)]);
        r.record(b"g", 20, 10); // exactly the gap
        assert_eq!(ranges(&r, b"g"), [(0, 45)]);
        let t = r.totals();
        assert_eq!((t.files, t.ranges, t.bytes), (2, 2, 409_600 + 45));
    }

    #[test]
    fn empty_reads_and_reads_at_the_end_of_the_offset_space_are_not_ranges() {
        let r = Recorder::new();
        r.record(b"f", 100, 0);
        assert_eq!(r.get(b"f"), Err(NotRecorded::NeverRead));
        r.record(b"f", u64::MAX, 10);
        assert_eq!(r.get(b"f"), Err(NotRecorded::NeverRead));
        r.record(b"f", u64::MAX - 4, 10); // saturates at u64::MAX
        assert_eq!(ranges(&r, b"f"), [(u64::MAX - 4, u64::MAX)]);
    }

    #[test]
    fn files_past_the_table_bound_are_counted_not_recorded() {
        let r = Recorder::new();
        for i in 0..MAX_FILES as u32 {
            r.record(&i.to_be_bytes(), 0, 1);
        }
        r.record(b"late", 0, 4096);
        r.record(b"late", 4096, 4096); // the same file again: counted once
        r.record(b"later", 0, 1);
        assert_eq!(r.get(b"late"), Err(NotRecorded::TableFull));
        assert_eq!(r.get(b"never"), Err(NotRecorded::NeverRead));
        // Files already in the table keep being recorded.
        r.record(&0u32.to_be_bytes(), 1, 1);
        assert_eq!(ranges(&r, &0u32.to_be_bytes()), [(0, 2)]);
        let t = r.totals();
        assert_eq!(
            (t.files, t.files_not_recorded, t.ranges),
            (MAX_FILES as u64, 2, MAX_FILES as u64)
        );
    }

    #[test]
    fn a_file_past_the_range_bound_stops_recording_and_is_marked_truncated() {
        let r = Recorder::new();
        // Every other 10-byte piece: MAX_WORKSET separate ranges.
        for i in 0..MAX_WORKSET as u64 {
            r.record(b"f", i * 20, 10);
        }
        let got = r.get(b"f").unwrap();
        assert_eq!((got.ranges.len(), got.truncated), (MAX_WORKSET, false));
        // Merging into an existing range is still possible below the bound...
        r.record(b"f", 5, 10);
        assert_eq!(r.get(b"f").unwrap().ranges[0], 0..15);
        // ...but one more separate range stops the recording.
        r.record(b"f", 1 << 40, 10);
        let got = r.get(b"f").unwrap();
        assert!(got.truncated);
        assert_eq!(got.ranges.len(), MAX_WORKSET);
        assert!(!got.ranges.contains(&((1 << 40)..(1 << 40) + 10)));
        // After that nothing changes, not even merges; the file counts as truncated once.
        r.record(b"f", 15, 5);
        r.record(b"f", 1 << 41, 10);
        assert_eq!(r.get(b"f").unwrap(), got);
        let t = r.totals();
        assert_eq!((t.truncated, t.ranges), (1, MAX_WORKSET as u64));
        // Other files are not affected.
        r.record(b"g", 0, 10);
        assert_eq!(ranges(&r, b"g"), [(0, 10)]);
    }

    #[test]
    fn the_bound_on_all_ranges_stops_the_file_that_would_pass_it() {
        let r = Recorder::new();
        let files = MAX_RANGES / MAX_WORKSET;
        for f in 0..files as u32 {
            for i in 0..MAX_WORKSET as u64 {
                r.record(&f.to_be_bytes(), i * 20, 10);
            }
        }
        assert_eq!(r.totals().ranges, MAX_RANGES as u64);
        assert_eq!(r.totals().truncated, 0);
        // A new file's first range would pass the bound: it is recorded as truncated.
        r.record(b"new", 0, 10);
        let got = r.get(b"new").unwrap();
        assert!(got.truncated && got.ranges.is_empty());
        // Merging into a held range adds none: still recorded.
        r.record(&0u32.to_be_bytes(), 10, 10);
        assert_eq!(r.get(&0u32.to_be_bytes()).unwrap().ranges[0], 0..30);
        let t = r.totals();
        assert_eq!((t.ranges, t.truncated), (MAX_RANGES as u64 - 1, 1));
    }

    #[test]
    fn a_read_call_record_is_decoded_and_anything_else_ignored() {
        use crate::nfs3::{Fh, ReadArgs};
        let mut args = bytes::BytesMut::new();
        Args::Read(ReadArgs {
            file: Fh(b"handle"),
            offset: 8192,
            count: 4096,
        })
        .encode(&mut args);
        let call = crate::rpc::msg::call_message(
            7,
            crate::nfs3::PROGRAM,
            crate::nfs3::VERSION,
            Proc::READ.0,
            &args,
        );
        let r = Recorder::new();
        r.record_call(&call);
        assert_eq!(ranges(&r, b"handle"), [(8192, 12288)]);
        // The caller's credential is kept for looking paths up later (AUTH_NONE here).
        assert_eq!(r.reader().map(|c| c.flavor), Some(0));
        // Truncated arguments, garbage: nothing recorded, no panic.
        r.record_call(&call[..call.len() - 2]);
        r.record_call(b"garbage");
        assert_eq!(r.totals().ranges, 1);
    }

    #[test]
    fn the_last_real_readers_credential_is_kept_and_auth_none_does_not_replace_it() {
        let mut g = Inner::default();
        g.remember_reader(0, b"");
        assert_eq!(g.reader.as_ref().map(|c| c.flavor), Some(0));
        g.remember_reader(1, b"uid 4242");
        g.remember_reader(0, b"");
        assert_eq!(
            g.reader.as_ref().map(|c| (c.flavor, c.body.as_slice())),
            Some((1, &b"uid 4242"[..]))
        );
        g.remember_reader(1, b"uid 7");
        assert_eq!(g.reader.as_ref().unwrap().body, b"uid 7");
    }

    #[test]
    fn clipping_drops_ranges_past_the_end_and_shortens_the_one_across_it() {
        let (got, bytes) = clip(&[0..10, 20..40, 50..60], 30);
        assert_eq!(got, [0..10, 20..30]);
        assert_eq!(bytes, 20);
        assert_eq!(clip(&[0..10, 20..30], 0), (vec![], 0));
    }
}
