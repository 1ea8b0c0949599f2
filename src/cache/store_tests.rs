//! Tests of the block store: persistence, checksums, exact byte ranges, the
//! copy-on-write and sync rules of docs/cache-design.md, replacement, recovery.
use super::*;

const BS: u32 = 4096;

fn geo(ways: u32, sets: u64) -> Geometry {
    Geometry::new(sets * ways as u64 * BS as u64, BS, ways, 1).unwrap()
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn stored(p: Put) -> u64 {
    match p {
        Put::Stored { seq } => seq,
        other => panic!("expected Stored, got {other:?}"),
    }
}

#[test]
fn blocks_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let g = geo(4, 64);
    {
        let s = Store::open(dir.path(), g).unwrap();
        for b in 0..50 {
            stored(
                s.put(b"file-a", b, 0, &bytes(BS as usize, b as u8), false)
                    .unwrap(),
            );
        }
        stored(s.put(b"file-b", 7, 10, &bytes(100, 1), true).unwrap());
        s.close().unwrap();
    }
    let s = Store::open(dir.path(), g).unwrap();
    for b in 0..50 {
        let c = s.get(b"file-a", b).unwrap().expect("cached after reopen");
        assert_eq!(c.data, bytes(BS as usize, b as u8));
        assert_eq!(c.dirty, None);
    }
    let c = s.get(b"file-b", 7).unwrap().unwrap();
    assert_eq!((c.valid, c.dirty), (10..110, Some(10..110)));
    assert_eq!(
        s.dirty_blocks().unwrap(),
        vec![DirtyBlock {
            fh: b"file-b".to_vec(),
            block: 7,
            seq: c.seq,
            dirty: 10..110
        }]
    );
    assert!(s.get(b"file-c", 0).unwrap().is_none());
}

#[test]
fn checksum_failure_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(4, 8)).unwrap();
    stored(s.put(b"f", 3, 0, &bytes(BS as usize, 9), false).unwrap());
    // Damage one byte of the bank's data file wherever the block landed.
    let p = bank_path(dir.path(), 0);
    let mut data = std::fs::read(&p).unwrap();
    let base = tags_area(&geo(4, 8)) as usize;
    let at = base + data[base..].iter().position(|&b| b != 0).unwrap() + 17;
    data[at] ^= 0xff;
    std::fs::write(&p, data).unwrap();
    assert!(s.get(b"f", 3).unwrap().is_none());
    assert!(!s.lost_unstable_writes(), "a clean block is no lost write");
}

#[test]
fn partial_block_writes_keep_exact_byte_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(4, 8)).unwrap();
    stored(s.put(b"f", 0, 100, &[1; 100], true).unwrap());
    stored(s.put(b"f", 0, 150, &[2; 150], true).unwrap());
    let c = s.get(b"f", 0).unwrap().unwrap();
    assert_eq!(
        (c.valid.clone(), c.dirty.clone()),
        (100..300, Some(100..300))
    );
    assert_eq!(&c.data[..50], &[1; 50][..]);
    assert_eq!(&c.data[50..], &[2; 150][..]);
    // A write apart from the valid bytes needs the gap filled first: no zero fill.
    assert_eq!(
        s.put(b"f", 0, 1000, &[3; 10], true).unwrap(),
        Put::NeedsFill { gap: 300..1000 }
    );
    // A clean fill of the whole block never overwrites dirty bytes.
    stored(s.put(b"f", 0, 0, &[9; BS as usize], false).unwrap());
    let c = s.get(b"f", 0).unwrap().unwrap();
    assert_eq!((c.valid.clone(), c.dirty.clone()), (0..BS, Some(100..300)));
    assert_eq!(&c.data[..100], &[9; 100][..]);
    assert_eq!(&c.data[100..150], &[1; 50][..]);
    assert_eq!(&c.data[150..300], &[2; 150][..]);
    assert_eq!(&c.data[300..], &[9; (BS - 300) as usize][..]);
}

/// The crash the copy-on-write rule exists for: a committed version, then a newer
/// unstable one torn by a crash. The committed one must come back.
#[test]
fn torn_unstable_write_falls_back_to_the_committed_version() {
    let dir = tempfile::tempdir().unwrap();
    let g = geo(4, 1);
    {
        let s = Store::open(dir.path(), g).unwrap();
        stored(s.put(b"f", 0, 0, &[1; 512], true).unwrap());
        s.sync().unwrap(); // COMMIT of version 1
        stored(s.put(b"f", 0, 0, &[2; 512], true).unwrap()); // unstable version 2
        // "Crash": no sync; version 2's data reaches the disk torn.
        let p = bank_path(dir.path(), 0);
        let mut data = std::fs::read(&p).unwrap();
        let v2 = data.windows(512).position(|w| w == [2u8; 512]).unwrap();
        data[v2 + 100] = 0x55;
        std::fs::write(&p, data).unwrap();
    }
    let s = Store::open(dir.path(), g).unwrap();
    // Decided at open, before any COMMIT could be answered with the old verifier.
    assert!(s.lost_unstable_writes(), "the write verifier must change");
    let c = s.get(b"f", 0).unwrap().expect("committed version lost");
    assert_eq!(c.data, vec![1; 512]);
    assert_eq!(c.dirty, Some(0..512));
}

#[test]
fn durable_rewrite_replaces_and_clears_the_old_version() {
    let dir = tempfile::tempdir().unwrap();
    let g = geo(4, 1);
    let s = Store::open(dir.path(), g).unwrap();
    stored(s.put(b"f", 0, 0, &[1; 64], true).unwrap());
    s.sync().unwrap();
    let seq = stored(s.put(b"f", 0, 0, &[2; 64], true).unwrap());
    s.sync().unwrap();
    drop(s);
    let s = Store::open(dir.path(), g).unwrap();
    assert_eq!(s.get(b"f", 0).unwrap().unwrap().data, vec![2; 64]);
    let d = s.dirty_blocks().unwrap();
    assert_eq!(
        d.iter()
            .map(|d| (d.fh.clone(), d.block, d.seq))
            .collect::<Vec<_>>(),
        vec![(b"f".to_vec(), 0, seq)]
    );
    let bank = std::fs::read(bank_path(dir.path(), 0)).unwrap();
    let live = bank[..tags_area(&g) as usize]
        .chunks_exact(TAG_SIZE)
        .filter(|c| matches!(Tag::decode((*c).try_into().unwrap(), BS), Slot::Tag(_)))
        .count();
    assert_eq!(live, 1, "the superseded version was not cleared after sync");
}

#[test]
fn unstable_rewrites_reuse_their_frame_until_synced() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(2, 1)).unwrap();
    for i in 0..50u8 {
        stored(s.put(b"f", 0, 0, &[i; 32], true).unwrap());
    }
    assert_eq!(s.get(b"f", 0).unwrap().unwrap().data, vec![49; 32]);
}

#[test]
fn dirty_blocks_are_never_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(2, 1)).unwrap(); // one set of two ways
    stored(s.put(b"f", 0, 0, &[1; 8], true).unwrap());
    stored(s.put(b"f", 1, 0, &[2; 8], true).unwrap());
    assert!(matches!(
        s.put(b"f", 2, 0, &[3; 8], true),
        Err(CacheError::SetFull)
    ));
    assert!(matches!(
        s.put(b"g", 0, 0, &[3; 8], false),
        Err(CacheError::SetFull)
    ));
    // Written back and marked clean: now a clean fill may replace one of them.
    s.sync().unwrap();
    let seq = s.get(b"f", 0).unwrap().unwrap().seq;
    assert!(
        !s.mark_clean(b"f", 0, seq + 100).unwrap(),
        "stale seq must not clean"
    );
    assert!(s.mark_clean(b"f", 0, seq).unwrap());
    stored(s.put(b"g", 0, 0, &[3; 8], false).unwrap());
    assert!(s.get(b"f", 0).unwrap().is_none());
    assert_eq!(s.get(b"f", 1).unwrap().unwrap().data, vec![2; 8]);
}

#[test]
fn clock_gives_a_block_read_since_the_last_sweep_a_second_chance() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(3, 1)).unwrap(); // one set of three ways
    for b in 0..3 {
        stored(s.put(b"f", b, 0, &[b as u8; 8], false).unwrap());
    }
    // The sweep clears every reference bit and evicts block 0; the hand then rests
    // on block 1.
    stored(s.put(b"f", 3, 0, &[3; 8], false).unwrap());
    assert!(s.get(b"f", 0).unwrap().is_none());
    // Block 1 is read again: the next fill must pass over it and evict block 2.
    s.get(b"f", 1).unwrap().unwrap();
    stored(s.put(b"f", 4, 0, &[4; 8], false).unwrap());
    assert!(
        s.get(b"f", 1).unwrap().is_some(),
        "the block just read was evicted"
    );
    assert!(s.get(b"f", 2).unwrap().is_none());
}

#[test]
fn invalidate_forgets_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(4, 2)).unwrap();
    stored(s.put(b"f", 0, 0, &[1; 8], true).unwrap());
    s.sync().unwrap();
    stored(s.put(b"f", 0, 0, &[2; 8], true).unwrap()); // two versions now
    stored(s.put(b"f", 1, 0, &[3; 8], false).unwrap());
    s.invalidate(b"f", 0).unwrap();
    assert!(s.get(b"f", 0).unwrap().is_none());
    assert!(
        s.get(b"f", 1).unwrap().is_some(),
        "another block was touched"
    );
}

/// A block written as zeros is read back as zeros without reading the bank file (it is
/// a hole there), until it is written with other bytes; after a reopen the store no
/// longer knows and reads the hole, which gives the same zeros.
#[test]
fn zero_blocks_written_here_are_read_without_the_bank_file() {
    let dir = tempfile::tempdir().unwrap();
    let g = geo(4, 4);
    {
        let s = Store::open(dir.path(), g).unwrap();
        stored(s.put(b"f", 0, 0, &[0; BS as usize], true).unwrap());
        stored(s.put(b"f", 1, 0, &[0; BS as usize], false).unwrap());
        let mut out = bytes::BytesMut::from(&b"hdr"[..]);
        assert!(s.read_into(b"f", 0, 0..BS, &mut out).unwrap());
        assert!(s.read_into(b"f", 1, 0..BS, &mut out).unwrap());
        assert_eq!(s.zero_reads(), 2);
        assert_eq!(&out[..3], b"hdr");
        assert!(out[3..].iter().all(|&b| b == 0) && out.len() == 3 + 2 * BS as usize);
        // Other bytes over it (in place: the version is not durable yet): read from
        // the file again.
        let data = bytes(BS as usize, 9);
        stored(s.put(b"f", 0, 0, &data, true).unwrap());
        let mut out = bytes::BytesMut::new();
        assert!(s.read_into(b"f", 0, 0..BS, &mut out).unwrap());
        assert!(out[..] == data[..]);
        assert_eq!(s.zero_reads(), 2);
        // Zeros again, after a sync (copy-on-write to another frame this time).
        s.sync().unwrap();
        stored(s.put(b"f", 0, 0, &[0; BS as usize], true).unwrap());
        let mut out = bytes::BytesMut::new();
        assert!(s.read_into(b"f", 0, 0..BS, &mut out).unwrap());
        assert!(out.iter().all(|&b| b == 0) && out.len() == BS as usize);
        assert_eq!(s.zero_reads(), 3);
        s.sync().unwrap();
        s.close().unwrap();
    }
    let s = Store::open(dir.path(), g).unwrap();
    for b in 0..2 {
        let mut out = bytes::BytesMut::new();
        assert!(s.read_into(b"f", b, 0..BS, &mut out).unwrap());
        assert!(out.iter().all(|&b| b == 0) && out.len() == BS as usize);
    }
    assert_eq!(s.zero_reads(), 0, "not known after a reopen");
}

#[test]
fn read_into_whole_and_partial_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(4, 4)).unwrap();
    let whole = bytes(BS as usize, 5);
    stored(s.put(b"f", 0, 0, &whole, false).unwrap());
    stored(s.put(b"f", 1, 100, &[7; 50], false).unwrap());
    let mut out = bytes::BytesMut::from(&b"hdr"[..]);
    assert!(s.read_into(b"f", 0, 0..BS, &mut out).unwrap());
    assert!(s.read_into(b"f", 1, 110..120, &mut out).unwrap());
    assert!(
        !s.read_into(b"f", 1, 90..120, &mut out).unwrap(),
        "bytes 90..100 not cached"
    );
    assert!(!s.read_into(b"f", 2, 0..10, &mut out).unwrap());
    assert_eq!(&out[..3], b"hdr");
    assert!(out[3..3 + BS as usize] == whole[..]);
    assert_eq!(&out[3 + BS as usize..], &[7; 10][..]);
}

#[test]
fn drop_clean_keeps_dirty_blocks_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let g = geo(4, 4);
    {
        let s = Store::open(dir.path(), g).unwrap();
        for b in 0..6 {
            stored(s.put(b"f", b, 0, &[b as u8; 16], b == 3).unwrap());
        }
        s.sync().unwrap();
        assert_eq!(s.drop_clean().unwrap(), 5);
        assert!(s.get(b"f", 0).unwrap().is_none());
    }
    let s = Store::open(dir.path(), g).unwrap();
    assert!(s.get(b"f", 2).unwrap().is_none(), "dropped block came back");
    assert_eq!(s.get(b"f", 3).unwrap().unwrap().data, vec![3; 16]);
}

/// Regression: a SETATTR to a size of 2^62 made the proxy walk 2^46 block numbers.
#[test]
fn invalidating_a_huge_range_is_bounded_by_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(4, 4)).unwrap();
    for b in [0u64, 5, 1 << 40] {
        stored(s.put(b"f", b, 0, &[1; 8], false).unwrap());
    }
    stored(s.put(b"g", 5, 0, &[2; 8], false).unwrap());
    let t = std::time::Instant::now();
    s.invalidate_range(b"f", 1, u64::MAX / 4096).unwrap();
    assert!(t.elapsed().as_secs() < 2);
    assert!(
        s.get(b"f", 0).unwrap().is_some(),
        "block before the range was dropped"
    );
    assert!(s.get(b"f", 5).unwrap().is_none());
    assert!(s.get(b"f", 1 << 40).unwrap().is_none());
    assert!(
        s.get(b"g", 5).unwrap().is_some(),
        "another file was touched"
    );
}

/// Regression: a superseded frame that was invalidated and reused was then cleared
/// by `sync`, losing a block acknowledged as durable.
#[test]
fn sync_never_clears_a_reused_frame() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(2, 1)).unwrap();
    stored(s.put(b"x", 0, 0, &[1; 8], true).unwrap());
    s.sync().unwrap();
    stored(s.put(b"x", 0, 0, &[2; 8], true).unwrap()); // copy-on-write
    s.invalidate(b"x", 0).unwrap(); // both frames free again
    stored(s.put(b"z", 0, 0, &[3; 8], true).unwrap()); // the unsynced version's frame
    // The durable version's frame, once its clearing is durable (the put syncs it).
    stored(s.put(b"z", 1, 0, &[4; 8], true).unwrap());
    s.sync().unwrap();
    assert_eq!(s.get(b"z", 0).unwrap().unwrap().data, vec![3; 8]);
    assert_eq!(s.get(b"z", 1).unwrap().unwrap().data, vec![4; 8]);
}

/// Regression: marking the newest version clean left the older durable dirty
/// version behind; dropping the clean one brought the old bytes back as dirty.
#[test]
fn mark_clean_retires_older_versions() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(4, 1)).unwrap();
    stored(s.put(b"x", 0, 0, &[1; 8], true).unwrap());
    s.sync().unwrap();
    let v2 = stored(s.put(b"x", 0, 0, &[2; 8], true).unwrap());
    assert!(s.mark_clean(b"x", 0, v2).unwrap());
    s.drop_clean().unwrap();
    assert!(
        s.get(b"x", 0).unwrap().is_none(),
        "an old version came back"
    );
    assert!(s.dirty_blocks().unwrap().is_empty());
}

#[test]
fn put_outside_the_block_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(2, 1)).unwrap();
    assert!(matches!(
        s.put(b"x", 0, BS - 4, &[0; 8], false),
        Err(CacheError::OutsideBlock)
    ));
    assert!(matches!(
        s.put(b"x", 0, u32::MAX, &[0; 8], false),
        Err(CacheError::OutsideBlock)
    ));
}

#[test]
fn unclean_start_drops_clean_blocks_and_keeps_dirty_ones() {
    let dir = tempfile::tempdir().unwrap();
    let g = geo(4, 4);
    {
        let s = Store::open(dir.path(), g).unwrap();
        stored(s.put(b"f", 0, 0, &[1; 8], false).unwrap());
        stored(s.put(b"f", 1, 0, &[2; 8], true).unwrap());
        s.sync().unwrap();
        // No close(): a crash. A clean block invalidated just before it could come
        // back from disk, so none is trusted.
    }
    let s = Store::open(dir.path(), g).unwrap();
    assert!(s.get(b"f", 0).unwrap().is_none());
    assert_eq!(s.get(b"f", 1).unwrap().unwrap().data, vec![2; 8]);
    s.close().unwrap();
    drop(s);
    let s = Store::open(dir.path(), g).unwrap();
    assert!(s.get(b"f", 1).unwrap().is_some());
}

#[test]
fn another_geometry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path(), geo(4, 8)).unwrap();
    let e = Store::open(dir.path(), geo(8, 8))
        .err()
        .expect("must refuse");
    assert!(matches!(e, CacheError::GeometryChanged { .. }), "{e}");
}

#[test]
fn truncate_block_cuts_dirty_and_clean_bytes_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let g = geo(4, 16);
    {
        let s = Store::open(dir.path(), g).unwrap();
        stored(s.put(b"f", 0, 0, &bytes(4096, 1), false).unwrap());
        stored(s.put(b"f", 0, 1000, &bytes(2000, 2), true).unwrap());
        s.sync().unwrap(); // the dirty version is durable: the cut must copy-on-write
        s.truncate_block(b"f", 0, 1500).unwrap();
        let c = s.get(b"f", 0).unwrap().unwrap();
        assert_eq!(
            (c.valid.clone(), c.dirty.clone()),
            (0..1500, Some(1000..1500))
        );
        assert_eq!(&c.data[1000..1500], &bytes(2000, 2)[..500]);
        // Cut below the dirty bytes: clean data stays, the block is no longer dirty.
        s.truncate_block(b"f", 0, 800).unwrap();
        let c = s.get(b"f", 0).unwrap().unwrap();
        assert_eq!((c.valid.clone(), c.dirty.clone()), (0..800, None));
        // Cut at or below the first valid byte: the block is gone.
        stored(s.put(b"g", 3, 100, &bytes(50, 3), true).unwrap());
        s.truncate_block(b"g", 3, 100).unwrap();
        assert!(s.get(b"g", 3).unwrap().is_none());
        s.sync_all().unwrap();
        s.close().unwrap();
    }
    let s = Store::open(dir.path(), g).unwrap();
    let c = s.get(b"f", 0).unwrap().unwrap();
    assert_eq!((c.valid, c.dirty), (0..800, None));
    assert!(s.get(b"g", 3).unwrap().is_none());
    assert!(s.dirty_blocks().unwrap().is_empty());
}

#[test]
fn clean_invalidation_keeps_dirty_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(4, 16)).unwrap();
    stored(s.put(b"f", 0, 0, &bytes(4096, 1), false).unwrap());
    stored(s.put(b"f", 1, 0, &bytes(100, 2), true).unwrap());
    stored(s.put(b"f", 2, 0, &bytes(4096, 3), false).unwrap());
    s.invalidate_range_clean(b"f", 0, 2).unwrap();
    assert!(s.get(b"f", 0).unwrap().is_none());
    assert_eq!(s.get(b"f", 1).unwrap().unwrap().dirty, Some(0..100));
    assert!(s.get(b"f", 2).unwrap().is_none());
    // The whole-cache pass (a range longer than the sets) keeps it too.
    s.invalidate_range_clean(b"f", 0, u64::MAX / 4096).unwrap();
    assert_eq!(s.get(b"f", 1).unwrap().unwrap().dirty, Some(0..100));
    s.invalidate_range(b"f", 0, u64::MAX / 4096).unwrap();
    assert!(s.get(b"f", 1).unwrap().is_none());
}

#[test]
fn dirty_in_set_lists_the_dirty_blocks_sharing_a_set() {
    let dir = tempfile::tempdir().unwrap();
    // One set: every block of every file lands in it.
    let s = Store::open(dir.path(), geo(4, 1)).unwrap();
    stored(s.put(b"a", 0, 0, &bytes(10, 1), true).unwrap());
    stored(s.put(b"b", 5, 0, &bytes(10, 2), true).unwrap());
    stored(s.put(b"c", 1, 0, &bytes(10, 3), false).unwrap());
    let mut d: Vec<_> = s
        .dirty_in_set(b"zzz", 9)
        .unwrap()
        .into_iter()
        .map(|d| (d.fh, d.block, d.dirty.start, d.dirty.end))
        .collect();
    d.sort();
    assert_eq!(
        d,
        vec![(b"a".to_vec(), 0, 0, 10), (b"b".to_vec(), 5, 0, 10)]
    );
}

#[test]
fn write_verifier_is_stable_until_dirty_data_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let g = geo(4, 16);
    let v1 = {
        let s = Store::open(dir.path(), g).unwrap();
        s.set_marker_linger(std::time::Duration::ZERO);
        stored(s.put(b"f", 0, 0, &bytes(100, 1), true).unwrap());
        s.sync().unwrap();
        s.verifier()
    }; // dropped without close(): a crash, but everything dirty was durable
    let v2 = Store::open(dir.path(), g).unwrap().verifier();
    assert_eq!(v1, v2, "no data lost: same verifier");
    {
        let s = Store::open(dir.path(), g).unwrap();
        stored(s.put(b"f", 0, 0, &bytes(100, 9), true).unwrap()); // unstable rewrite
    }
    // Damage the unstable version's data, as a crash before its write reached the disk.
    let data = bank_path(dir.path(), 0);
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    use std::os::unix::fs::FileExt;
    let whole = std::fs::read(&data).unwrap();
    let at = whole
        .windows(100)
        .position(|w| w == bytes(100, 9))
        .expect("the unstable version's bytes");
    f.write_all_at(&[0xEE; 10], at as u64).unwrap();
    let s = Store::open(dir.path(), g).unwrap();
    assert!(s.lost_unstable_writes());
    assert_ne!(s.verifier(), v2, "lost unstable data: a new verifier");
    assert_eq!(s.get(b"f", 0).unwrap().unwrap().data, bytes(100, 1));
}

#[test]
fn a_crash_with_unsynced_dirty_writes_changes_the_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let g = geo(4, 16);
    let v1 = {
        let s = Store::open(dir.path(), g).unwrap();
        stored(s.put(b"f", 0, 0, &bytes(100, 1), true).unwrap());
        assert!(
            dir.path().join("unstable").exists(),
            "marker before the reply"
        );
        s.sync().unwrap();
        assert!(
            dir.path().join("unstable").exists(),
            "a sync right after a dirty write leaves the marker (MARKER_LINGER)"
        );
        s.set_marker_linger(std::time::Duration::ZERO);
        s.sync().unwrap();
        assert!(!dir.path().join("unstable").exists(), "retired by the sync");
        stored(s.put(b"f", 1, 0, &bytes(100, 2), false).unwrap()); // clean: no marker
        assert!(!dir.path().join("unstable").exists());
        s.verifier()
    };
    let v2 = {
        let s = Store::open(dir.path(), g).unwrap();
        assert_eq!(s.verifier(), v1);
        // An unstable write whose data and tag may both be lost by a power failure;
        // "crash" without a sync.
        stored(s.put(b"f", 0, 0, &bytes(100, 3), true).unwrap());
        s.verifier()
    };
    let s = Store::open(dir.path(), g).unwrap();
    assert_ne!(
        s.verifier(),
        v2,
        "unsynced writes at the crash: new verifier"
    );
    assert!(!dir.path().join("unstable").exists());
}

/// A clean cut version (dirty bytes all past the cut) newer than the old dirty version,
/// then a crash before the old one was cleared: the unclean start must not drop the
/// clean newest version first and bring the uncut dirty one back.
#[test]
fn unclean_start_keeps_the_newest_version_even_if_clean() {
    let dir = tempfile::tempdir().unwrap();
    let g = geo(4, 64);
    {
        let s = Store::open(dir.path(), g).unwrap();
        stored(s.put(b"F", 0, 0, &[0u8; 1000], false).unwrap());
        stored(s.put(b"F", 0, 1000, &[9u8; 2000], true).unwrap());
        s.sync().unwrap();
        s.truncate_block(b"F", 0, 500).unwrap();
        // kill -9: no sync_all, no close
    }
    let s = Store::open(dir.path(), g).unwrap();
    let c = s.get(b"F", 0).unwrap();
    assert!(
        c.as_ref()
            .is_none_or(|c| c.dirty.is_none() && c.valid.end <= 500),
        "cut bytes back after restart: {:?}",
        c.map(|c| (c.valid, c.dirty))
    );
    assert!(s.dirty_blocks().unwrap().is_empty());
}

/// An acknowledged UNSTABLE write lost at run time (its frame damaged) changes the
/// verifier the next COMMIT returns.
#[test]
fn runtime_loss_of_an_unstable_write_changes_the_verifier() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(4, 64)).unwrap();
    s.set_marker_linger(std::time::Duration::ZERO);
    let v0 = s.verifier();
    stored(s.put(b"F", 0, 0, &[5u8; 4096], true).unwrap());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(bank_path(dir.path(), 0))
        .unwrap();
    let base = tags_area(&geo(4, 64));
    for frame in 0..4 * 64u64 {
        f.write_all_at(&[0xAA; 16], base + frame * 4096).unwrap();
    }
    assert!(s.get(b"F", 0).unwrap().is_none());
    s.sync().unwrap();
    assert_ne!(s.verifier(), v0);
    let again = Store::open(dir.path(), geo(4, 64)).unwrap().verifier();
    assert_eq!(again, s.verifier(), "the new verifier is kept");
}

/// A committed version superseded by an unsynced one that is then lost (damaged) is the
/// block again: the next sync must not clear it as superseded.
#[test]
fn a_lost_newer_version_does_not_take_the_committed_one_with_it() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(4, 1)).unwrap();
    stored(s.put(b"F", 0, 0, &[1u8; 512], true).unwrap());
    s.sync().unwrap(); // P committed
    stored(s.put(b"F", 0, 0, &[2u8; 512], true).unwrap()); // U, copy-on-write, unsynced
    let p = bank_path(dir.path(), 0);
    let data = std::fs::read(&p).unwrap();
    let u = data.windows(512).position(|w| w == [2u8; 512]).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .write_all_at(&[9u8; 8], u as u64)
        .unwrap();
    assert_eq!(s.get(b"F", 0).unwrap().unwrap().data, vec![1u8; 512]);
    s.sync().unwrap();
    assert_eq!(
        s.get(b"F", 0)
            .unwrap()
            .expect("committed version cleared")
            .data,
        vec![1u8; 512]
    );
}

/// Truncation rewrites the tag in place: it works with every frame of the set holding
/// durable dirty data (no second frame needed).
#[test]
fn truncation_needs_no_free_frame() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(2, 1)).unwrap();
    stored(s.put(b"F", 0, 0, &bytes(4096, 1), true).unwrap());
    stored(s.put(b"G", 0, 0, &bytes(4096, 2), true).unwrap());
    s.sync().unwrap();
    s.truncate_block(b"F", 0, 100).unwrap();
    s.sync_all().unwrap();
    let c = s.get(b"F", 0).unwrap().unwrap();
    assert_eq!(
        (c.valid, c.dirty, c.data),
        (0..100, Some(0..100), bytes(100, 1))
    );
}

/// The shared golden-image cache: a reader proxy sees what the owner filled (also after
/// it opened), never the owner's dirty data, writes nothing, and bypasses a file it was
/// told changed.
#[test]
fn shared_view_reads_the_owners_clean_blocks_and_never_writes() {
    let dir = tempfile::tempdir().unwrap();
    let g = geo(4, 64);
    let owner = Store::open(dir.path(), g).unwrap();
    stored(
        owner
            .put(b"golden", 0, 0, &bytes(BS as usize, 1), false)
            .unwrap(),
    );
    stored(
        owner
            .put(b"golden", 1, 0, &bytes(BS as usize, 2), true)
            .unwrap(),
    );
    owner.sync_all().unwrap();
    let listing = |d: &Path| {
        let mut v: Vec<(String, u64, std::time::SystemTime)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    m.len(),
                    m.modified().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let reader = Store::open_shared(dir.path(), g).unwrap();
    assert_eq!(
        reader.get(b"golden", 0).unwrap().unwrap().data,
        bytes(BS as usize, 1)
    );
    assert!(
        reader.get(b"golden", 1).unwrap().is_none(),
        "owner's dirty data is not served"
    );
    // Filled by the owner after the reader opened: seen at once.
    stored(
        owner
            .put(b"golden", 2, 0, &bytes(BS as usize, 3), false)
            .unwrap(),
    );
    let mut dst = bytes::BytesMut::new();
    assert!(reader.read_into(b"golden", 2, 0..BS, &mut dst).unwrap());
    assert_eq!(&dst[..], &bytes(BS as usize, 3)[..]);
    // The reader's own fills, invalidations, syncs and close write nothing.
    assert_eq!(
        reader.put(b"other", 0, 0, &bytes(10, 4), false).unwrap(),
        Put::Skipped
    );
    reader.invalidate(b"golden", 0).unwrap();
    reader.sync_all().unwrap();
    assert_eq!(reader.drop_clean().unwrap(), 0);
    reader.close().unwrap();
    // ...but the invalidated file is bypassed by this reader from now on.
    assert!(reader.get(b"golden", 0).unwrap().is_none());
    assert_eq!(
        owner.get(b"golden", 0).unwrap().unwrap().data,
        bytes(BS as usize, 1)
    );
    // The owner is idle now: another reader's writes must leave every file as it is.
    let after_reader = listing(dir.path());
    let reader2 = Store::open_shared(dir.path(), g).unwrap();
    reader2.put(b"x", 0, 0, &bytes(10, 5), true).unwrap();
    reader2.truncate_block(b"golden", 2, 0).unwrap();
    reader2.close().unwrap();
    assert_eq!(
        listing(dir.path()),
        after_reader,
        "a shared view wrote to the cache"
    );
    // Opening a directory that is not a cache is an error, not a new cache.
    let empty = tempfile::tempdir().unwrap();
    assert!(Store::open_shared(empty.path(), g).is_err());
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
}

/// Review finding: a shared view opened before the owner's first fill never saw later
/// fills (bank files were looked for only at open).
#[test]
fn shared_view_opened_before_the_owners_first_fill_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new(64 * 4 * BS as u64, BS, 4, 4).unwrap();
    let owner = Store::open(dir.path(), g).unwrap();
    let reader = Store::open_shared(dir.path(), g).unwrap();
    for b in 0..16 {
        stored(
            owner
                .put(b"golden", b, 0, &bytes(BS as usize, b as u8), false)
                .unwrap(),
        );
    }
    for b in 0..16 {
        assert_eq!(
            reader.get(b"golden", b).unwrap().map(|c| c.data),
            Some(bytes(BS as usize, b as u8)),
            "block {b}"
        );
    }
}

/// Zero blocks (a VM's free memory pages) take no data blocks on the cache's disk: the
/// frame becomes a hole, also where it held other bytes before; they read back as zeros
/// after a reopen, checksums included.
#[test]
fn zero_blocks_are_holes_and_read_back_as_zeros() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let g = geo(1, 64);
    let zeros = vec![0u8; BS as usize];
    {
        let s = Store::open(dir.path(), g).unwrap();
        // Frames first filled with other bytes, then rewritten with zeros (one way per
        // set: the same frame).
        for b in 0..32 {
            stored(
                s.put(b"f", b, 0, &bytes(BS as usize, b as u8), false)
                    .unwrap(),
            );
        }
        s.sync_all().unwrap();
        let full = std::fs::metadata(s.bank_path(0)).unwrap().blocks();
        for b in 0..32 {
            stored(s.put(b"f", b, 0, &zeros, true).unwrap());
        }
        s.sync_all().unwrap();
        let after = std::fs::metadata(s.bank_path(0)).unwrap().blocks();
        assert!(
            after + 32 * (BS as u64 / 512) <= full,
            "32 zero blocks should free their data blocks: {full} -> {after} sectors"
        );
        s.close().unwrap();
    }
    let s = Store::open(dir.path(), g).unwrap();
    for b in 0..32 {
        let c = s.get(b"f", b).unwrap().expect("cached after reopen");
        assert_eq!(c.data, zeros, "block {b}");
        assert_eq!(c.dirty, Some(0..BS));
    }
    assert!(all_zero(&[0; 33]) && !all_zero(&[0, 0, 1]) && !all_zero(&[[0; 31], [1; 31]].concat()));
}

/// The `unstable` marker lingers after a sync while writes keep coming (no two fsyncs
/// per committed file); a crash then changes the verifier although nothing was lost
/// (always safe: clients re-send only what they did not see committed), while a clean
/// close retires it and keeps the verifier.
#[test]
fn the_unstable_marker_lingers_until_quiet_or_close() {
    let dir = tempfile::tempdir().unwrap();
    let g = geo(4, 16);
    let v1 = {
        let s = Store::open(dir.path(), g).unwrap();
        stored(s.put(b"f", 0, 0, &bytes(100, 1), true).unwrap());
        s.sync().unwrap();
        assert!(dir.path().join("unstable").exists(), "lingers");
        s.verifier()
    }; // a crash while it lingers
    let s = Store::open(dir.path(), g).unwrap();
    assert_ne!(
        s.verifier(),
        v1,
        "a lingering marker at a crash: a new verifier"
    );
    assert_eq!(
        s.get(b"f", 0).unwrap().unwrap().data,
        bytes(100, 1),
        "nothing lost"
    );
    let v2 = s.verifier();
    stored(s.put(b"f", 0, 0, &bytes(100, 2), true).unwrap());
    s.sync().unwrap();
    s.close().unwrap();
    assert!(!dir.path().join("unstable").exists(), "retired by close");
    drop(s);
    let s = Store::open(dir.path(), g).unwrap();
    assert_eq!(s.verifier(), v2, "a clean close keeps the verifier");
    assert_eq!(s.get(b"f", 0).unwrap().unwrap().data, bytes(100, 2));
}

/// A file's durable point (COMMIT) syncs the banks holding that file's unsynced changes
/// — one fdatasync each, data and tags being one file — and no other bank.
#[test]
fn sync_file_syncs_only_the_files_banks() {
    let dir = tempfile::tempdir().unwrap();
    // 4 banks of 8 sets: block b of a file lands in set (h + b) mod 32.
    let g = Geometry::new(4 * 32 * BS as u64, BS, 4, 4).unwrap();
    let s = Store::open(dir.path(), g).unwrap();
    let bank_of = |fh: &[u8]| s.bank_of(fh, 0);
    let a: &[u8] = b"file-a";
    let b = (0u32..)
        .map(|i| format!("file-b{i}").into_bytes())
        .find(|fh| bank_of(fh) != bank_of(a))
        .unwrap();
    stored(s.put(a, 0, 0, &bytes(512, 1), true).unwrap());
    stored(s.put(&b, 0, 0, &bytes(512, 2), true).unwrap());
    let unsynced = |fh: &[u8]| {
        let bank = s.banks[bank_of(fh)].lock().unwrap();
        bank.unsynced_files.contains(&fnv1a(fh)) && !bank.written.is_empty()
    };
    assert!(unsynced(a) && unsynced(&b));
    let n0 = s.syncs();
    s.sync_file(a).unwrap();
    assert_eq!(s.syncs() - n0, 1, "one bank, one fdatasync");
    assert!(!unsynced(a), "file a is durable");
    assert!(unsynced(&b), "file b's bank was not synced for a's COMMIT");
    s.sync_file(a).unwrap();
    assert_eq!(s.syncs() - n0, 1, "nothing more to sync for file a");
    // A cut (a cleared tag, no data written) is file b's change to make durable too.
    s.sync_file(&b).unwrap();
    s.invalidate(&b, 0).unwrap();
    let n1 = s.syncs();
    s.sync_file(&b).unwrap();
    assert_eq!(s.syncs() - n1, 1, "the cleared tag is synced");
    drop(s);
    // Not closed: an unclean start drops clean blocks; the committed dirty block of
    // file a and the durable clear of file b's block are what is found.
    let s = Store::open(dir.path(), g).unwrap();
    assert_eq!(s.get(a, 0).unwrap().unwrap().data, bytes(512, 1));
    assert!(s.get(&b, 0).unwrap().is_none());
}

/// A file whose blocks span banks is made durable in every one of them by its COMMIT,
/// found through the store's file → banks map (no lock taken on other banks), and the
/// map forgets what was synced, by `sync_file` or by `sync`: it holds only unsynced files.
#[test]
fn sync_file_finds_every_bank_of_a_file_and_the_map_forgets_synced_ones() {
    let dir = tempfile::tempdir().unwrap();
    // 4 banks of 2 sets: 8 consecutive blocks of a file touch every bank.
    let g = Geometry::new(4 * 2 * 4 * BS as u64, BS, 4, 4).unwrap();
    let s = Store::open(dir.path(), g).unwrap();
    for blk in 0..8 {
        stored(s.put(b"f", blk, 0, &bytes(512, blk as u8), true).unwrap());
    }
    stored(s.put(b"g", 0, 0, &bytes(512, 9), true).unwrap());
    let mapped = |fh: &[u8]| {
        let mut v = s
            .unsynced_banks
            .lock()
            .unwrap()
            .get(&fnv1a(fh))
            .cloned()
            .unwrap_or_default();
        v.sort_unstable();
        v
    };
    assert_eq!(mapped(b"f"), vec![0, 1, 2, 3]);
    let n0 = s.syncs();
    s.sync_file(b"f").unwrap();
    assert_eq!(s.syncs() - n0, 4, "one fdatasync per bank of the file");
    assert!(mapped(b"f").is_empty());
    // g's bank was synced with f's (one file per bank): g is durable and forgotten too.
    assert!(mapped(b"g").is_empty());
    stored(s.put(b"g", 1, 0, &bytes(512, 10), true).unwrap());
    assert_eq!(mapped(b"g").len(), 1);
    s.sync().unwrap();
    assert!(
        s.unsynced_banks.lock().unwrap().is_empty(),
        "sync forgets all"
    );
    drop(s);
    let s = Store::open(dir.path(), g).unwrap();
    for blk in 0..8 {
        assert_eq!(
            s.get(b"f", blk).unwrap().unwrap().data,
            bytes(512, blk as u8)
        );
    }
    assert_eq!(s.get(b"g", 1).unwrap().unwrap().data, bytes(512, 10));
}

#[test]
fn a_cache_of_another_format_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let g = geo(4, 8);
    std::fs::write(
        dir.path().join(SUPERBLOCK),
        "gridvfs-cache v2\nblock_size=4096 ways=4 banks=1 sets_per_bank=8\n",
    )
    .unwrap();
    let e = Store::open(dir.path(), g)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("another gridvfs version") && e.contains("gridvfs-cache v2"),
        "{e}"
    );
}

/// Count of live tags in bank 0.
fn live_tags(dir: &Path, g: &Geometry) -> usize {
    let bank = std::fs::read(bank_path(dir, 0)).unwrap();
    bank[..tags_area(g) as usize]
        .chunks_exact(TAG_SIZE)
        .filter(|c| matches!(Tag::decode((*c).try_into().unwrap(), BS), Slot::Tag(_)))
        .count()
}

/// A version superseded by a durable one goes (durably) with the sync that made its
/// successor durable: a truncation that leaves the successor clean must not let the
/// older dirty version back when clean blocks are dropped or evicted.
#[test]
fn a_truncated_block_never_lets_its_older_dirty_version_back() {
    let dir = tempfile::tempdir().unwrap();
    let g = geo(4, 1);
    let s = Store::open(dir.path(), g).unwrap();
    stored(s.put(b"f", 0, 0, &[1; 4096], false).unwrap());
    stored(s.put(b"f", 0, 3000, &[2; 100], true).unwrap());
    s.sync_file(b"f").unwrap();
    stored(s.put(b"f", 0, 3050, &[3; 100], true).unwrap()); // copy-on-write
    s.truncate_block(b"f", 0, 1000).unwrap(); // no dirty bytes left: clean
    let n0 = s.syncs();
    s.sync_file(b"f").unwrap();
    assert_eq!(
        s.syncs() - n0,
        2,
        "the sync, then the clearing of the old version"
    );
    assert_eq!(live_tags(dir.path(), &g), 1);
    assert!(s.dirty_blocks().unwrap().is_empty());
    s.drop_clean().unwrap();
    assert!(s.get(b"f", 0).unwrap().is_none());
}

/// After an fdatasync of a bank failed (Linux reports a writeback error once per file),
/// no later durable point that needs the bank succeeds, it takes no dirty write or cut,
/// and the cache is not closed as clean.
#[test]
fn a_failed_bank_sync_is_not_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let g = geo(4, 8);
    let s = Store::open(dir.path(), g).unwrap();
    let seq = stored(s.put(b"f", 0, 0, &[1; 512], true).unwrap());
    {
        // As `fsync_bank` leaves a bank on EIO: failed, its unsynced writes still
        // listed (tags_dirty as it was: false after the last successful sync).
        let mut b = s.banks[0].lock().unwrap();
        b.failed = true;
        b.lost_files = b.unsynced_files.clone();
        s.failed_banks.store(1, Ordering::SeqCst);
    }
    let n0 = s.syncs();
    assert!(s.sync_file(b"f").is_err(), "a COMMIT must not succeed now");
    assert!(s.sync().is_err());
    assert!(
        s.sync_tags().is_ok(),
        "a failed bank holds no tag change to wait for: skipped, not an error for all"
    );
    assert_eq!(s.syncs(), n0, "no fdatasync is trusted to report it again");
    assert!(
        s.put(b"f", 1, 0, &[2; 512], true).is_err(),
        "written through instead"
    );
    assert!(s.truncate_block(b"f", 0, 100).is_err(), "forwarded instead");
    assert!(
        !s.at_risk(b"f", 0),
        "dirty when its bank failed, but failed by hand here"
    );
    assert_eq!(s.dirty_blocks().unwrap().len(), 1);
    assert!(
        s.mark_clean(b"f", 0, seq).is_err(),
        "written back, but its clean tag could never be made durable: stays dirty"
    );
    assert!(s.get(b"f", 0).unwrap().unwrap().dirty.is_some());
    assert!(s.at_risk(b"f", 0), "and no WRITE may go past it");
    assert!(
        s.dirty_blocks().unwrap().is_empty(),
        "not listed for write-back again in this run"
    );
    stored(s.put(b"g", 0, 0, &[3; 512], false).unwrap()); // clean fills still cached
    assert!(s.close().is_err());
    assert!(!dir.path().join(CLEAN).exists(), "not a clean shutdown");
}

/// A put of exactly the bytes and dirty range the newest version holds keeps that
/// version: no second frame superseding a durable one, nothing new to sync.
#[test]
fn a_put_of_the_same_bytes_keeps_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(4, 8)).unwrap();
    let seq = stored(s.put(b"f", 1, 0, &bytes(100, 3), true).unwrap());
    s.sync().unwrap();
    let n = s.syncs();
    assert_eq!(
        stored(s.put(b"f", 1, 0, &bytes(100, 3), true).unwrap()),
        seq
    );
    s.sync_file(b"f").unwrap();
    assert_eq!(s.syncs(), n, "nothing new to sync");
    // Other bytes, or the same bytes clean, are a new version.
    assert_ne!(
        stored(s.put(b"f", 1, 0, &bytes(100, 4), true).unwrap()),
        seq
    );
    let clean = stored(s.put(b"g", 0, 0, &bytes(50, 1), false).unwrap());
    assert_ne!(
        stored(s.put(b"g", 0, 0, &bytes(50, 1), true).unwrap()),
        clean
    );
}

/// An fdatasync that fails puts at risk every block the bank held dirty and every block
/// cleaned there since its last good fdatasync (their dirty tags may come back after a
/// power failure); a block clean and durable before is not at risk. (The bank file is
/// swapped for /dev/full, whose fdatasync fails — EINVAL, a special file — and whose
/// reads give zeros: the dirty frames' tags cannot be read back, so their whole files
/// are taken to be at risk.)
#[test]
fn a_failing_fdatasync_puts_dirty_and_recently_cleaned_blocks_at_risk() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(4, 8)).unwrap();
    stored(s.put(b"f", 0, 0, &[1; 512], true).unwrap());
    let cleaned = stored(s.put(b"h", 0, 0, &[2; 512], true).unwrap());
    stored(s.put(b"g", 0, 0, &[3; 512], false).unwrap());
    stored(s.put(b"k", 0, 0, &[5; 512], false).unwrap());
    stored(s.put(b"k", 0, 256, &[6; 256], true).unwrap());
    s.sync_all().unwrap();
    assert!(s.mark_clean(b"h", 0, cleaned).unwrap());
    // A cut that leaves only clean bytes: its dirty tag becomes clean in place.
    s.truncate_block(b"k", 0, 200).unwrap();
    assert!(s.get(b"k", 0).unwrap().unwrap().dirty.is_none());
    stored(s.put(b"f", 2, 0, &[4; 512], true).unwrap());
    s.banks[0].lock().unwrap().file = Some(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap(),
    );
    let v = s.verifier();
    assert!(s.sync_file(b"f").is_err());
    assert_ne!(s.verifier(), v, "unsynced writes counted as lost");
    assert!(
        s.at_risk(b"f", 0) && s.at_risk(b"f", 2),
        "dirty when the bank failed"
    );
    assert!(s.at_risk(b"f", 3), "tag unreadable: the whole file");
    assert!(s.at_risk(b"h", 0), "cleaned since the last good fdatasync");
    assert!(
        s.at_risk(b"k", 0),
        "cut to clean since the last good fdatasync"
    );
    assert!(!s.at_risk(b"h", 1), "never cached");
    assert!(!s.at_risk(b"g", 0), "clean and durable before");
    // A truncation below an at-risk block is refused; above them all, or of another
    // file, it is not.
    assert!(s.at_risk_from(b"h", 0) && s.at_risk_from(b"f", 5));
    assert!(!s.at_risk_from(b"h", 1));
    assert!(!s.at_risk_from(b"g", 0));
}

/// After a bank failed, a block can hold two dirty versions: the older one durable,
/// the newer written after the last good fdatasync (the older is no longer cleared as
/// superseded). Once the write-back has sent the newest, neither is sent again in this
/// run — the older must not follow it to the server.
#[test]
fn after_a_failed_fdatasync_an_older_dirty_version_is_not_written_back_after_the_newer() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(4, 8)).unwrap();
    stored(s.put(b"f", 0, 0, &[1; 512], true).unwrap());
    s.sync_all().unwrap();
    let newer = stored(s.put(b"f", 0, 0, &[2; 512], true).unwrap());
    // The bank's fdatasync fails.
    assert!(s.with_failing_bank(0, || s.sync_file(b"f")).is_err());
    let d = s.dirty_blocks().unwrap();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0].block, d[0].seq),
        (0, newer),
        "the newest version first"
    );
    assert!(s.mark_clean(b"f", 0, newer).is_err(), "the bank failed");
    let again = s.dirty_blocks().unwrap();
    assert!(again.is_empty(), "written back again: {again:?}");
}

/// A failed bank whose dirty data has all been written back is renewed: its file is
/// removed (so no old dirty tag can come back), nothing is at risk any more, WRITEs and
/// COMMITs work again in a new file, and a reopen finds only what was written since.
/// While some of its dirty data is not written back, it stays failed.
#[test]
fn a_failed_bank_is_renewed_once_its_dirty_data_is_written_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(4, 8)).unwrap();
    stored(s.put(b"f", 0, 0, &[1; 512], true).unwrap());
    stored(s.put(b"f", 1, 0, &[2; 512], true).unwrap());
    let h = stored(s.put(b"h", 0, 0, &[3; 512], true).unwrap());
    s.sync_all().unwrap();
    assert!(s.mark_clean(b"h", 0, h).unwrap());
    stored(s.put(b"g", 0, 0, &[4; 512], false).unwrap());
    assert!(
        s.with_failing_bank(0, || s.sync_all()).is_err(),
        "the cleared tag of h needs the failing fdatasync"
    );
    assert!(s.at_risk(b"f", 0) && s.at_risk(b"h", 0));
    assert_eq!(
        s.renew_failed_banks().unwrap(),
        Vec::<u32>::new(),
        "dirty data left"
    );
    assert!(s.any_failed());
    // The write-back sends both dirty blocks; the failed bank keeps them, stuck.
    let d = s.dirty_blocks().unwrap();
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(s.mark_clean(&d[0].fh, d[0].block, d[0].seq).is_err());
    assert_eq!(
        s.renew_failed_banks().unwrap(),
        Vec::<u32>::new(),
        "one left"
    );
    assert!(s.mark_clean(&d[1].fh, d[1].block, d[1].seq).is_err());
    assert_eq!(s.renew_failed_banks().unwrap(), vec![0]);
    assert!(!s.any_failed());
    assert!(!s.at_risk(b"f", 0) && !s.at_risk(b"h", 0));
    assert!(
        s.get(b"g", 0).unwrap().is_none(),
        "the bank starts over empty"
    );
    // Written again, and durable again.
    stored(s.put(b"f", 0, 0, &[5; 512], true).unwrap());
    s.sync_file(b"f").unwrap();
    s.close().unwrap();
    drop(s);
    let s = Store::open(dir.path(), geo(4, 8)).unwrap();
    assert!(!s.lost_unstable_writes());
    let d = s.dirty_blocks().unwrap();
    assert_eq!(
        d.len(),
        1,
        "only the block written after the renewal: {d:?}"
    );
    assert_eq!((d[0].fh.as_slice(), d[0].block), (&b"f"[..], 0));
    assert_eq!(s.get(b"f", 0).unwrap().unwrap().data, vec![5; 512]);
}

/// One bank's failing fdatasync does not stop `sync_tags` from making the other banks'
/// clean tags durable (left unsynced, their dirty predecessors could come back after a
/// power failure and be written back again over newer data at the server).
#[test]
fn sync_tags_goes_on_past_a_failing_bank() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new(2 * 8 * 4 * BS as u64, BS, 4, 2).unwrap();
    let s = Store::open(dir.path(), g).unwrap();
    let seqs: Vec<u64> = (0..16)
        .map(|b| stored(s.put(b"f", b, 0, &[b as u8; 512], true).unwrap()))
        .collect();
    s.sync_all().unwrap();
    for (b, seq) in seqs.iter().enumerate() {
        assert!(s.mark_clean(b"f", b as u64, *seq).unwrap());
    }
    let dirty_tags = |k: usize| s.banks[k].lock().unwrap().tags_dirty;
    assert!(
        dirty_tags(0) && dirty_tags(1),
        "both banks hold cleaned tags"
    );
    assert!(s.with_failing_bank(0, || s.sync_tags()).is_err());
    assert!(s.banks[0].lock().unwrap().failed);
    assert!(!dirty_tags(1), "bank 1 was not synced after bank 0 failed");
}

// Failed-bank scenarios (found in review).

/// A block of `fh` (from `from` on) held by bank `b`.
fn block_in_bank(s: &Store, fh: &[u8], b: usize, from: u64) -> u64 {
    (from..).find(|&k| s.bank_of(fh, k) == b).unwrap()
}

/// The cut record (`CUT_BLOCK` of cached.rs) is pending, durable and dirty in a bank
/// whose fdatasync then fails; the file's data, committed before, sits in a healthy
/// bank. Removing the record cannot be made durable, so `cut_applied` fails and the
/// data stays dirty: after a power cut the restart finds the record *and* the data.
/// (Before cedb745 the flush went on and marked the data clean, durably; the record
/// came back, the restart re-applied the cut and never rewrote the committed bytes.)
#[test]
fn a_cut_record_whose_removal_is_not_durable_keeps_the_data_dirty() {
    const CUT: u64 = u64::MAX - 1;
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new(2 * 8 * 4 * BS as u64, BS, 4, 2).unwrap();
    let (cut_bank, data_bank, blk);
    {
        let s = Store::open(dir.path(), g).unwrap();
        cut_bank = s.bank_of(b"f", CUT);
        data_bank = 1 - cut_bank;
        blk = block_in_bank(&s, b"f", data_bank, 0);
        // truncate_locally(f, 0): the cut record, durable.
        let mut rec = [0u8; 16];
        rec[8..].copy_from_slice(&((blk + 1) * BS as u64).to_be_bytes());
        stored(s.put(b"f", CUT, 0, &rec, true).unwrap());
        // Then a WRITE of block `blk` and its COMMIT.
        stored(s.put(b"f", blk, 0, &[7; 4096], true).unwrap());
        s.sync_file(b"f").unwrap();
        s.sync_all().unwrap();
        // What a power cut keeps of the bank that is about to fail.
        let durable = std::fs::read(bank_path(dir.path(), cut_bank as u32)).unwrap();
        // Another file's COMMIT meets the failing fdatasync of the cut record's bank.
        let gb = block_in_bank(&s, b"g", cut_bank, 0);
        stored(s.put(b"g", gb, 0, &[1; 512], true).unwrap());
        assert!(s.with_failing_bank(cut_bank, || s.sync_file(b"g")).is_err());
        assert!(s.at_risk(b"f", CUT), "the cut record is at risk");
        // flush_file: apply_cut -> cut_applied, which fails when the record is at risk
        // after its removal: the flush of the file stops before its data is marked
        // clean. (The file's durable point fails too.)
        s.invalidate(b"f", CUT).unwrap();
        s.sync_tags().unwrap();
        assert!(
            s.at_risk_error(b"f", CUT).is_some() && s.sync_file(b"f").is_err(),
            "the cut record's removal from the failed bank taken as durable"
        );
        assert_eq!(s.renew_failed_banks().unwrap(), Vec::<u32>::new(), "pinned");
        drop(s); // power cut
        std::fs::write(bank_path(dir.path(), cut_bank as u32), durable).unwrap();
    }
    let s = Store::open(dir.path(), g).unwrap();
    let (data, records) = s.dirty_blocks_and_records().unwrap();
    let cut_back = records.iter().any(|d| d.fh == b"f" && d.block == CUT);
    let data_back = data.iter().any(|d| d.fh == b"f" && d.block == blk);
    assert!(
        !cut_back || data_back,
        "the restart re-applies the cut (record back: {cut_back}) but block {blk}, \
         committed and cut by it, is not rewritten (dirty: {data_back})"
    );
}

/// TOCTOU between the truncation's at-risk check (`truncation_at_risk` in
/// setattr_size, `at_risk_from` in truncate_locally) and the cut: the bank fails in
/// between (another task's fdatasync, with no file's unsynced change in it, e.g. the
/// flush's sync_tags), and `truncated` clears the file's dirty block past the cut in
/// the failed bank. Its `sync_all` must fail: acknowledged, the truncation would be
/// undone after a power cut by the cleared dirty tag coming back (it succeeded before
/// cedb745).
#[test]
fn a_truncation_is_not_acknowledged_when_its_bank_failed_after_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let g = geo(4, 8);
    {
        let s = Store::open(dir.path(), g).unwrap();
        stored(s.put(b"f", 5, 0, &[7; 4096], true).unwrap());
        let hs = stored(s.put(b"h", 0, 0, &[1; 512], true).unwrap());
        s.sync_all().unwrap();
        let durable = std::fs::read(bank_path(dir.path(), 0)).unwrap();
        // setattr_size(f, 0): the check passes ...
        assert!(!s.at_risk_from(b"f", 0));
        // ... the SETATTR goes to the server; meanwhile a flush of h: mark_clean, then
        // sync_tags, whose fdatasync fails.
        assert!(s.mark_clean(b"h", 0, hs).unwrap());
        assert!(s.with_failing_bank(0, || s.sync_tags()).is_err());
        // truncated(f, old, 0): invalidate_range, then sync_all.
        s.invalidate_range(b"f", 0, 5).unwrap();
        let acked = s.sync_all().is_ok();
        assert!(s.at_risk_from(b"f", 0), "block 5 is at risk now");
        if acked {
            drop(s); // power cut
            std::fs::write(bank_path(dir.path(), 0), durable).unwrap();
            let s = Store::open(dir.path(), g).unwrap();
            let back = s.dirty_blocks().unwrap();
            assert!(
                !back.iter().any(|d| d.fh == b"f"),
                "truncation to 0 acknowledged, yet block 5 comes back dirty: {back:?}"
            );
        }
    }
}

/// Same race through truncate_locally (cut record in a healthy bank): after clearing
/// f's dirty block in the failed bank, its `sync_file(f)` must fail (before cedb745 it
/// skipped the failed bank, where f had had nothing unsynced, and succeeded).
#[test]
fn a_local_truncation_into_a_failed_bank_is_not_durable() {
    const CUT: u64 = u64::MAX - 1;
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new(2 * 8 * 4 * BS as u64, BS, 4, 2).unwrap();
    let s = Store::open(dir.path(), g).unwrap();
    let cut_bank = s.bank_of(b"f", CUT);
    let failed = 1 - cut_bank;
    let blk = block_in_bank(&s, b"f", failed, 1);
    stored(s.put(b"f", blk, 0, &[7; 4096], true).unwrap());
    let hb = block_in_bank(&s, b"h", failed, 0);
    let hs = stored(s.put(b"h", hb, 0, &[1; 512], true).unwrap());
    s.sync_all().unwrap();
    assert!(!s.at_risk_from(b"f", 0)); // truncate_locally's check
    assert!(s.mark_clean(b"h", hb, hs).unwrap());
    assert!(s.with_failing_bank(failed, || s.sync_tags()).is_err());
    // truncate_locally goes on: record, invalidate_range, sync_file.
    stored(s.put(b"f", CUT, 0, &[0; 16], true).unwrap());
    s.invalidate_range(b"f", 0, blk).unwrap();
    assert!(s.at_risk(b"f", blk));
    assert!(
        s.sync_file(b"f").is_err(),
        "the cut of a dirty block in the failed bank was acknowledged as durable"
    );
}

/// After the failure a block has two dirty versions (v1 durable, v2 not). The flush
/// reads and sends v2; before `mark_clean(v2)` v2's data no longer verifies (its page,
/// never written to disk, dropped and re-read). `mark_clean` clears v2 and must mark v1
/// stuck too (before cedb745 it found v1 newest and returned Ok(false), and the next
/// flush sent the older v1 after v2).
#[test]
fn an_older_version_is_not_sent_after_a_newer_one_that_stopped_verifying() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(4, 8)).unwrap();
    stored(s.put(b"f", 0, 0, &[1; 512], true).unwrap());
    s.sync_all().unwrap();
    let newer = stored(s.put(b"f", 0, 0, &[2; 512], true).unwrap());
    assert!(s.with_failing_bank(0, || s.sync_file(b"f")).is_err());
    let got = s.get(b"f", 0).unwrap().unwrap();
    assert_eq!(got.seq, newer); // sent
    // v2's bytes read back differently now.
    {
        let bank = s.banks[0].lock().unwrap();
        let (set, fp) = s.locate(b"f", 0);
        let v = s.versions(&bank, set, fp, b"f", 0).unwrap();
        let (way, _) = v.iter().find(|(_, t)| t.seq == newer).unwrap();
        let f = s.geo.frame(set, *way);
        bank.file
            .as_ref()
            .unwrap()
            .write_all_at(&[9; 512], s.data_at(f))
            .unwrap();
    }
    let r = s.mark_clean(b"f", 0, newer);
    let again = s.dirty_blocks().unwrap();
    assert!(
        again.is_empty(),
        "mark_clean -> {r:?}; the older version is listed for write-back after the newer \
         was sent: {again:?}"
    );
}

/// drop_clean skips a failed bank and drops the other banks' clean blocks (before
/// cedb745 it zeroed the failed bank's clean tags on disk, then failed at its
/// fsync_bank, leaving in-memory frames whose tags were gone and later banks undropped).
#[test]
fn drop_clean_skips_a_failed_bank_and_drops_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new(2 * 8 * 4 * BS as u64, BS, 4, 2).unwrap();
    let s = Store::open(dir.path(), g).unwrap();
    let a = block_in_bank(&s, b"c", 0, 0);
    let b = block_in_bank(&s, b"c", 1, 0);
    stored(s.put(b"c", a, 0, &[3; 512], false).unwrap());
    stored(s.put(b"c", b, 0, &[4; 512], false).unwrap());
    let gb = block_in_bank(&s, b"g", 0, 0);
    stored(s.put(b"g", gb, 0, &[1; 512], true).unwrap());
    assert!(s.with_failing_bank(0, || s.sync_file(b"g")).is_err());
    let r = s.drop_clean();
    assert!(r.is_ok(), "drop_clean: {r:?}");
    assert!(
        s.get(b"c", b).unwrap().is_none(),
        "bank 1's clean block not dropped"
    );
}

/// A WRITE that lands in a bank just renewed, while the renewal goes on to the next
/// bank, is synced by its COMMIT (the renewal's cleanup of the file -> banks map must
/// not erase what the new bank noted).
#[test]
fn a_write_into_a_bank_being_renewed_is_synced_by_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new(2 * 8 * 4 * BS as u64, BS, 4, 2).unwrap();
    let s = Store::open(dir.path(), g).unwrap();
    // Bank 0 fails holding g's write; the write-back sends it (stuck): renewable.
    let gb = block_in_bank(&s, b"g", 0, 0);
    stored(s.put(b"g", gb, 0, &[1; 512], true).unwrap());
    assert!(s.with_failing_bank(0, || s.sync_file(b"g")).is_err());
    let seq = s.get(b"g", gb).unwrap().unwrap().seq;
    assert!(s.mark_clean(b"g", gb, seq).is_err());
    let fb = block_in_bank(&s, b"f", 0, 0);
    std::thread::scope(|t| {
        // The renewal (end of a flush) has renewed bank 0 and is at bank 1.
        let held = s.banks[1].lock().unwrap();
        let renewal = t.spawn(|| s.renew_failed_banks());
        while s.banks[0].lock().unwrap().failed {
            std::thread::yield_now();
        }
        // A client's WRITE of f lands in the new bank 0.
        stored(s.put(b"f", fb, 0, &[2; 512], true).unwrap());
        drop(held);
        assert_eq!(renewal.join().unwrap().unwrap(), vec![0]);
    });
    // Its COMMIT.
    let n = s.syncs();
    s.sync_file(b"f").unwrap();
    assert!(
        s.syncs() > n && s.banks[0].lock().unwrap().unsynced_files.is_empty(),
        "COMMIT of f acknowledged without an fdatasync of bank 0, which holds its write"
    );
}

/// A truncation whose bank failed after its at-risk check is refused (NFS3ERR_IO); the
/// bank, where it cleared a committed dirty block that never reached the server, is
/// not renewed, so a power cut and a restart bring that block back.
#[test]
fn renewal_does_not_make_an_unacknowledged_cut_durable() {
    const CUT: u64 = u64::MAX - 1;
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new(2 * 8 * 4 * BS as u64, BS, 4, 2).unwrap();
    let blk;
    {
        let s = Store::open(dir.path(), g).unwrap();
        let cut_bank = s.bank_of(b"f", CUT);
        let failed = 1 - cut_bank;
        blk = block_in_bank(&s, b"f", failed, 1);
        stored(s.put(b"f", blk, 0, &[7; 4096], true).unwrap());
        let hb = block_in_bank(&s, b"h", failed, 0);
        let hs = stored(s.put(b"h", hb, 0, &[1; 512], true).unwrap());
        let kb = block_in_bank(&s, b"k", cut_bank, 0);
        stored(s.put(b"k", kb, 0, &[3; 512], true).unwrap()); // the cut bank's file exists
        s.sync_all().unwrap(); // COMMIT of f: acknowledged
        let cut_bank_durable = std::fs::read(bank_path(dir.path(), cut_bank as u32)).unwrap();
        let failed_durable = std::fs::read(bank_path(dir.path(), failed as u32)).unwrap();
        assert!(!s.at_risk_from(b"f", 0)); // truncate_locally's check
        assert!(s.mark_clean(b"h", hb, hs).unwrap());
        assert!(s.with_failing_bank(failed, || s.sync_tags()).is_err());
        // truncate_locally goes on: record, invalidate_range, sync_file -> NFS3ERR_IO.
        stored(s.put(b"f", CUT, 0, &[0; 16], true).unwrap());
        s.invalidate_range(b"f", 0, blk).unwrap();
        assert!(s.sync_file(b"f").is_err(), "truncation not acknowledged");
        // The end of a flush that did not apply f's cut.
        assert_eq!(s.renew_failed_banks().unwrap(), Vec::<u32>::new(), "pinned");
        drop(s); // power cut: the cut record's bank loses what was not synced
        std::fs::write(bank_path(dir.path(), cut_bank as u32), cut_bank_durable).unwrap();
        // The failed bank's file, unless its removal was made durable.
        let p = bank_path(dir.path(), failed as u32);
        if p.exists() {
            std::fs::write(p, failed_durable).unwrap();
        }
    }
    let s = Store::open(dir.path(), g).unwrap();
    let (data, records) = s.dirty_blocks_and_records().unwrap();
    let cut_back = records.iter().any(|d| d.fh == b"f" && d.block == CUT);
    let data_back = data.iter().any(|d| d.fh == b"f" && d.block == blk);
    assert!(
        cut_back || data_back,
        "f's committed block {blk} is gone (never at the server) and the truncation that \
         cut it was neither acknowledged nor kept"
    );
}

/// A frame whose durable dirty version was cleared (a truncation, before its durable
/// point) is not reused for another block before the bank's next sync, which a put
/// that finds no other room makes itself: a power failure before then could otherwise
/// keep neither the cleared version (acknowledged by a COMMIT) nor the clearing.
#[test]
fn a_cleared_dirty_frame_is_not_reused_before_the_next_sync() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), geo(2, 1)).unwrap();
    let old = bytes(BS as usize, 7);
    stored(s.put(b"x", 0, 0, &old, true).unwrap());
    s.sync_file(b"x").unwrap();
    s.invalidate(b"x", 0).unwrap();
    stored(s.put(b"y", 0, 0, &bytes(BS as usize, 9), true).unwrap());
    // x's committed bytes are still in a frame of the bank file (what a power failure
    // would find, with the clearing not yet durable).
    let on_disk = |s: &Store| {
        let bank = s.banks[0].lock().unwrap();
        let file = bank.file.as_ref().unwrap();
        (0..2)
            .map(|w| {
                let mut b = vec![0u8; BS as usize];
                file.read_exact_at(&mut b, s.data_at(s.geo.frame(0, w)))
                    .unwrap();
                b
            })
            .collect::<Vec<_>>()
    };
    assert!(
        on_disk(&s).contains(&old),
        "the cleared version was overwritten before its clearing was durable"
    );
    // The set's other frame holds y's dirty block: the only room is the held frame, so
    // the put makes the clearing durable first (one fdatasync), then takes it.
    let n0 = s.syncs();
    stored(s.put(b"z", 0, 0, &bytes(BS as usize, 3), true).unwrap());
    assert_eq!(
        s.syncs() - n0,
        1,
        "the clearing made durable before the reuse"
    );
    assert!(s.get(b"x", 0).unwrap().is_none());
    assert_eq!(s.get(b"z", 0).unwrap().unwrap().data, bytes(BS as usize, 3));
}
