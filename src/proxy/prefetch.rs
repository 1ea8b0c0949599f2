//! Working-set prefetch into the block cache.
//!
//! A file read by blocks (`fetch = "blocks"`) whose sidecar lists a working set (what the
//! VM read the last time it resumed: `gridvfs workset`, `gridvfs meta workset`) has that
//! working set fetched at its first READ as one FETCH over the file channel — the same
//! compressed stream as a whole file, with a skip map that leaves out everything outside
//! the working set and every part the cache already holds — and each frame goes into the
//! block cache as a clean fill. A cold resume's scattered READs, each a round trip and
//! compressed only by SSH's per-packet zlib, become one zstd stream at the link's rate.
//!
//! The working set is widened to whole *granules* (the larger of the cache's and the zero
//! map's block sizes) and its zero blocks are fetched too (they cost nothing compressed),
//! so every cache block it touches is filled whole and later READs are plain hits.
//! While the stream runs, a READ inside the working set waits until the stream has
//! passed it (unless more than `meta.wait_ahead` of it is still to come), then goes the
//! usual way — a hit, or by blocks if its fill did not happen (the file changed meanwhile:
//! fills older than a change are dropped by the cache, `CacheLayer::fill_checked`). The
//! data lives in the block cache only, so it survives restarts, write-backs of the file's
//! own writes and everything else the cache handles, like any block read by READ.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use tokio::sync::watch;
use tracing::{info, warn};

use super::cached::CacheLayer;
use super::wholefile::{Progress, WholeFiles, data_bytes, transfer};
use crate::cache::store::CacheError;
use crate::meta::channel::{self, ChannelError};
use crate::meta::{Sidecar, ZeroMap};
use crate::nfs3::Nfstime3;
use crate::ssh::client::SshConnector;
use crate::upstream::calls::Cred;

/// Prefetches remembered at most (running ones are never forgotten).
const MAX_PREFETCHES: usize = 4096;
/// The sink's error when the file changed here during the stream.
const CHANGED: &str = "the file changed here during the working-set fetch";

/// One working-set transfer, running or done, for a file as it was (size, mtime).
pub struct Prefetch {
    size: u64,
    mtime: Nfstime3,
    /// The byte ranges it brings: the working set widened to granules, sorted, neither
    /// overlapping nor touching, inside the file.
    cover: Vec<Range<u64>>,
    /// Bytes of `cover` before each of its ranges (prefix sums, one more than ranges).
    cover_at: Vec<u64>,
    /// The sidecar it was planned from: a new one (re-profiled) plans again.
    sidecar: Weak<Sidecar>,
    progress: watch::Receiver<Progress>,
}

impl Prefetch {
    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// Whether `off..end` lies inside the working set.
    pub fn covers(&self, off: u64, end: u64) -> bool {
        let i = self.cover.partition_point(|r| r.end <= off);
        self.cover
            .get(i)
            .is_some_and(|r| r.start <= off && end <= r.end)
    }

    /// Bytes of the working set in `from..to`.
    pub fn cover_bytes(&self, from: u64, to: u64) -> u64 {
        let pos = |x: u64| {
            let i = self.cover.partition_point(|r| r.end <= x);
            match self.cover.get(i) {
                Some(r) if r.start < x => self.cover_at[i] + (x - r.start),
                _ => self.cover_at[i],
            }
        };
        pos(to).saturating_sub(pos(from))
    }

    /// Waits until the stream has passed `end` (or ended); false if it failed first.
    pub async fn wait_for(&self, end: u64) -> bool {
        let mut rx = self.progress.clone();
        loop {
            match *rx.borrow_and_update() {
                Progress::Done => return true,
                Progress::Failed => return false,
                Progress::Running { frontier } if end <= frontier => return true,
                Progress::Running { .. } => {}
            }
            if rx.changed().await.is_err() {
                return matches!(*rx.borrow(), Progress::Done);
            }
        }
    }
}

/// The working set of `sc` widened to whole granules of `granule` bytes (a power of two,
/// at least the zero map's block size), merged, clipped to the file.
pub fn plan_cover(sc: &Sidecar, granule: u64) -> Vec<Range<u64>> {
    let mut ws: Vec<Range<u64>> = sc
        .working_set
        .iter()
        .filter(|r| r.start < r.end.min(sc.size))
        .map(|r| r.start / granule * granule..r.end.min(sc.size).div_ceil(granule) * granule)
        .collect();
    ws.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ws.len());
    for r in ws {
        match merged.last_mut() {
            Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
            _ => merged.push(r),
        }
    }
    for r in &mut merged {
        r.end = r.end.min(sc.size);
    }
    merged
}

/// The skip map of the FETCH (in the zero map's blocks): everything outside `cover`,
/// and each granule of it for which `held(range)` says the cache has every byte.
pub fn skip_map(
    sc: &Sidecar,
    cover: &[Range<u64>],
    granule: u64,
    mut held: impl FnMut(Range<u64>) -> bool,
) -> ZeroMap {
    let bs = sc.zeros.block_size as u64;
    let blocks = sc.zeros.blocks;
    let mut skip: Vec<Range<u64>> = Vec::with_capacity(cover.len() + 1);
    let mut at = 0;
    for r in cover {
        if at < r.start / bs {
            skip.push(at..r.start / bs);
        }
        let mut g = r.start;
        while g < r.end {
            let e = (g + granule).min(r.end);
            if held(g..e) {
                skip.push(g / bs..e.div_ceil(bs));
            }
            g = e;
        }
        at = r.end.div_ceil(bs);
    }
    if at < blocks {
        skip.push(at..blocks);
    }
    ZeroMap::from_runs(sc.zeros.block_size, blocks, skip)
}

impl WholeFiles {
    /// The working-set transfer of `fh` for the file as it is (`size`, `mtime`) and its
    /// sidecar `sc`, started if there is none; None if the file's transfers failed
    /// lately or its working set is empty.
    #[allow(clippy::too_many_arguments)]
    pub fn prefetch(
        self: &Arc<Self>,
        connector: Arc<SshConnector>,
        cache: Arc<CacheLayer>,
        fh: &[u8],
        sc: Arc<Sidecar>,
        size: u64,
        mtime: Nfstime3,
        cred: Cred,
    ) -> Option<Arc<Prefetch>> {
        let mut m = self.prefetches.lock().expect("prefetches");
        if let Some(p) = m.get(fh)
            && p.size == size
            && p.mtime == mtime
            && (std::ptr::eq(p.sidecar.as_ptr(), Arc::as_ptr(&sc))
                || matches!(p.progress(), Progress::Running { .. }))
        {
            return Some(p.clone());
        }
        if self.failed_lately(fh) {
            return None;
        }
        let granule = cache.block_size().max(sc.zeros.block_size as u64);
        let cover = plan_cover(&sc, granule);
        if cover.is_empty() {
            return None;
        }
        if m.len() >= MAX_PREFETCHES {
            m.retain(|_, p| matches!(p.progress(), Progress::Running { .. }));
        }
        let mut cover_at = vec![0];
        for r in &cover {
            cover_at.push(cover_at.last().expect("non-empty") + (r.end - r.start));
        }
        let (tx, rx) = watch::channel(Progress::Running {
            frontier: cover[0].start,
        });
        let p = Arc::new(Prefetch {
            size,
            mtime,
            cover,
            cover_at,
            sidecar: Arc::downgrade(&sc),
            progress: rx,
        });
        m.insert(fh.to_vec(), p.clone());
        drop(m);
        let (me, fh, p2) = (self.clone(), fh.to_vec(), p.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            // Fills older than a change of the file are dropped by the cache.
            let stamp = cache.stamp();
            let plan = {
                let (c, f, sc, cover) = (cache.clone(), fh.clone(), sc.clone(), p2.cover.clone());
                tokio::task::spawn_blocking(move || {
                    let skip = skip_map(&sc, &cover, granule, |r| c.holds(&f, r));
                    let bytes = data_bytes(&skip, sc.size);
                    (skip, bytes)
                })
                .await
            };
            let r = match plan {
                Ok((_, 0)) => Ok(0), // all of it is in the cache already
                Ok((skip, _)) if skip.runs().len() > crate::meta::format::MAX_RUNS => {
                    Err(ChannelError::Malformed("skip map too fragmented".into()))
                }
                Ok((skip, _)) => {
                    // READs over granules the cache holds wait no longer than planning.
                    let _ = tx.send(Progress::Running {
                        frontier: skip.next_data(0, sc.size).map_or(sc.size, |r| r.start),
                    });
                    let (c, f) = (cache.clone(), fh.clone());
                    let sink = move |off: u64, data: &[u8]| {
                        // Once the file has changed here (a write, a truncation, a
                        // write-back, SIGUSR2) the cache drops older fills: the stream is
                        // of no more use, and its waiting READs go on by blocks.
                        if c.local(&f).is_some() || !c.unchanged_since(&f, stamp) {
                            return Err(std::io::Error::other(CHANGED));
                        }
                        match c.fill_checked(&f, off, data, stamp) {
                            // A set full of dirty blocks keeps this part out, like any fill.
                            Ok(()) | Err(CacheError::SetFull) => Ok(()),
                            Err(e) => Err(std::io::Error::other(e)),
                        }
                    };
                    transfer(&me, &connector, &fh, &sc, &skip, mtime, cred, sink, &tx).await
                }
                Err(e) => Err(ChannelError::Malformed(format!(
                    "planning task failed: {e}"
                ))),
            };
            match r {
                Ok(bytes) => {
                    if bytes > 0 {
                        me.stats.fetches.fetch_add(1, Ordering::Relaxed);
                        me.stats.working_sets.fetch_add(1, Ordering::Relaxed);
                    }
                    info!(
                        size = sc.size,
                        bytes,
                        secs = format!("{:.2}", started.elapsed().as_secs_f64()),
                        "working set fetched into the cache"
                    );
                    let _ = tx.send(Progress::Done);
                }
                Err(err) => {
                    let changed = matches!(&err, ChannelError::Io(e) if e.to_string() == CHANGED);
                    let stale = matches!(err, ChannelError::Status(channel::STALE_META));
                    if stale {
                        // The server proxy found the file changed since the sidecar, at
                        // the end: frames already filled may mix two versions of it.
                        // They go, and the file's attributes are learnt again.
                        let (c, f, cover) = (cache.clone(), fh.clone(), p2.cover.clone());
                        let _ = tokio::task::spawn_blocking(move || {
                            for r in cover {
                                c.invalidate_clean(&f, r);
                            }
                            c.forget_attr(&f);
                        })
                        .await;
                    }
                    if changed {
                        info!("working-set fetch stopped: the file changed here");
                    } else {
                        me.stats.failed.fetch_add(1, Ordering::Relaxed);
                        warn!(side = "upstream", error = %err, "working-set fetch failed; the file is read by blocks");
                    }
                    let _ = tx.send(Progress::Failed);
                    // Only the file's current transfer decides about its next one (an
                    // older one failing must not hold a newer version back).
                    let mut m = me.prefetches.lock().expect("prefetches");
                    if m.get(&fh).is_some_and(|x| Arc::ptr_eq(x, &p2)) {
                        m.remove(&fh);
                        drop(m);
                        if !changed {
                            me.failed_now(&fh, false);
                        }
                    }
                }
            }
        });
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{Actions, FileTime};

    fn sidecar(size: u64, zero_runs: Vec<Range<u64>>, ws: Vec<Range<u64>>) -> Sidecar {
        Sidecar {
            size,
            mtime: FileTime { secs: 1, nsecs: 2 },
            digest: None,
            actions: Actions::default(),
            zeros: ZeroMap::from_runs(4096, size.div_ceil(4096), zero_runs),
            working_set: ws,
        }
    }

    fn prefetch(cover: Vec<Range<u64>>) -> Prefetch {
        let mut cover_at = vec![0];
        for r in &cover {
            cover_at.push(cover_at.last().unwrap() + (r.end - r.start));
        }
        let (_tx, rx) = watch::channel(Progress::Done);
        Prefetch {
            size: 1 << 30,
            mtime: Nfstime3 {
                seconds: 1,
                nseconds: 2,
            },
            cover,
            cover_at,
            sidecar: Weak::new(),
            progress: rx,
        }
    }

    /// The working set is widened to whole granules, merged where they then touch, and
    /// clipped to the end of the file.
    #[test]
    fn the_cover_is_the_working_set_in_whole_granules() {
        let g = 65536u64;
        let size = 10 * g + 100;
        let sc = sidecar(
            size,
            vec![],
            vec![
                3 * g + 5..3 * g + 6,         // granule 3
                4 * g - 1..4 * g + 1,         // granules 3..5, merged with the first
                7 * g..7 * g + 10,            // granule 7
                10 * g + 50..10 * g + 99,     // the partial last granule
                9 * g..9 * g + 1 + 20 * size, // past the end: clipped
            ],
        );
        assert_eq!(
            plan_cover(&sc, g),
            vec![3 * g..5 * g, 7 * g..8 * g, 9 * g..size]
        );
        assert!(plan_cover(&sidecar(size, vec![], vec![]), g).is_empty());
    }

    /// The skip map leaves out what is outside the cover and the granules the cache
    /// holds, and keeps the zero blocks inside the cover (so cache blocks fill whole).
    #[test]
    fn the_skip_map_leaves_out_the_rest_and_what_the_cache_holds() {
        let g = 65536u64;
        let size = 10 * g;
        let sc = sidecar(
            size,
            vec![16..20, 100..120],
            std::iter::once(g..4 * g).collect(),
        );
        let cover = plan_cover(&sc, g);
        let skip = skip_map(&sc, &cover, g, |r| r.start == 2 * g);
        // 4 KiB blocks: 0..16 outside, 32..48 held, 64..160 outside. The zero run
        // 16..20 inside the cover is fetched.
        assert_eq!(skip.runs(), &[0..16, 32..48, 64..160]);
        assert_eq!(data_bytes(&skip, size), 2 * g);
        let all_held = skip_map(&sc, &cover, g, |_| true);
        assert_eq!(data_bytes(&all_held, size), 0);
    }

    #[test]
    fn covers_and_bytes_still_to_come() {
        let p = prefetch(vec![100..200, 300..400, 400_000..400_100]);
        assert!(p.covers(100, 200));
        assert!(p.covers(150, 160));
        assert!(!p.covers(150, 250));
        assert!(!p.covers(250, 260));
        assert!(!p.covers(0, 10));
        assert_eq!(p.cover_bytes(0, 1_000_000), 300);
        assert_eq!(p.cover_bytes(150, 350), 100);
        assert_eq!(p.cover_bytes(250, 260), 0);
        assert_eq!(p.cover_bytes(350, 150), 0);
    }
}
