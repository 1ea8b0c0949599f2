use super::*;

fn sample(runs: Vec<Range<u64>>, size: u64, bs: u32) -> Sidecar {
    Sidecar {
        size,
        mtime: FileTime {
            secs: 1_700_000_000,
            nsecs: 123,
        },
        digest: Some([7; 32]),
        actions: Actions {
            fetch: Fetch::WholeFile,
            codec: Codec::Gzip,
            level: 6,
            writeback: Writeback::WholeFile,
        },
        zeros: ZeroMap::from_runs(bs, size.div_ceil(bs as u64), runs),
        working_set: vec![0..4096, 8192..10000],
    }
}

#[test]
fn round_trips_with_runs_and_with_a_bitmap() {
    // Few runs: encoded as runs.
    let s = sample(vec![2..10, 20..21], 100 * 4096 + 7, 4096);
    assert_eq!(Sidecar::parse(&s.encode()).unwrap(), s);
    // Alternating blocks: a bitmap is smaller.
    let runs: Vec<_> = (0..1000u64).step_by(2).map(|b| b..b + 1).collect();
    let s = sample(runs, 1000 * 512, 512);
    let enc = s.encode();
    assert!(
        enc.len() < 1000,
        "bitmap encoding expected, got {} bytes",
        enc.len()
    );
    assert_eq!(Sidecar::parse(&enc).unwrap(), s);
}

#[test]
fn zero_queries() {
    let z = ZeroMap::from_runs(4096, 10, vec![2..5, 7..8]);
    assert!(z.is_zero(2 * 4096, 5 * 4096));
    assert!(z.is_zero(2 * 4096 + 5, 3 * 4096));
    assert!(!z.is_zero(4096, 3 * 4096));
    assert!(!z.is_zero(2 * 4096, 5 * 4096 + 1));
    assert!(z.is_zero_block(7) && !z.is_zero_block(6) && !z.is_zero_block(8));
    assert_eq!(
        z.data_ranges(0, 10 * 4096),
        vec![0..8192, 20480..28672, 32768..40960]
    );
    assert_eq!(z.data_ranges(3 * 4096, 6 * 4096 + 10), vec![20480..24586]);
    assert_eq!(z.data_ranges(2 * 4096, 5 * 4096), Vec::<Range<u64>>::new());
    // Touching and overlapping runs merge.
    let z = ZeroMap::from_runs(512, 10, vec![3..4, 0..2, 2..3, 1..2]);
    assert_eq!(z.runs().len(), 1);
    assert_eq!(z.runs()[0], 0..4);
}

#[test]
fn zero_bytes_counts_a_partial_last_block_to_the_end_of_file() {
    let s = sample(vec![0..1, 2..3], 2 * 4096 + 100, 4096);
    assert_eq!(s.zero_bytes(), 4096 + 100);
}

#[test]
fn freshness() {
    let s = sample(vec![], 4096, 4096);
    assert!(s.check_fresh(4096, s.mtime).is_ok());
    assert!(matches!(
        s.check_fresh(4097, s.mtime),
        Err(Stale::Size { .. })
    ));
    let later = FileTime {
        secs: s.mtime.secs,
        nsecs: 124,
    };
    assert!(matches!(
        s.check_fresh(4096, later),
        Err(Stale::Mtime { .. })
    ));
}

#[test]
fn every_truncation_and_every_flipped_byte_is_refused() {
    let enc = sample(vec![2..10, 20..21], 100 * 4096, 4096).encode();
    for n in 0..enc.len() {
        assert!(
            Sidecar::parse(&enc[..n]).is_err(),
            "truncated to {n} accepted"
        );
    }
    for i in 0..enc.len() {
        let mut b = enc.clone();
        b[i] ^= 0x40;
        assert!(Sidecar::parse(&b).is_err(), "flip at {i} accepted");
    }
}

/// Re-encodes with a valid checksum, so the structural checks are what refuse it.
fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_be_bytes());
    body
}

#[test]
fn structural_errors_behind_a_valid_checksum_are_refused() {
    let good = sample(vec![2..10, 30..31], 100 * 4096, 4096).encode();
    let body = good[..good.len() - 4].to_vec();
    // A run count far beyond the bytes present.
    let mut b = body.clone();
    let at = find_runs_count(&b);
    b[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Sidecar::parse(&with_crc(b)),
        Err(SidecarError::Bad(_))
    ));
    // A run past the end of the file.
    let mut b = body.clone();
    b[at + 4..at + 12].copy_from_slice(&99u64.to_be_bytes());
    assert!(Sidecar::parse(&with_crc(b)).is_err());
    // A section length past the end.
    let mut b = body.clone();
    b[16..20].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    assert!(Sidecar::parse(&with_crc(b)).is_err());
    // Unknown sections are skipped.
    let mut b = body.clone();
    b.extend_from_slice(&99u32.to_be_bytes());
    b.extend_from_slice(&3u32.to_be_bytes());
    b.extend_from_slice(&[1, 2, 3, 0]);
    assert!(Sidecar::parse(&with_crc(b)).is_ok());
    // Oversized.
    assert!(matches!(
        Sidecar::parse(&vec![0; MAX_SIDECAR + 1]),
        Err(SidecarError::TooBig(_))
    ));
}

/// Offset of the run count in an encoding made by `sample` with the runs encoding.
fn find_runs_count(b: &[u8]) -> usize {
    let mut at = 12;
    loop {
        let tag = u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
        let len = u32::from_be_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        if tag == TAG_ZEROMAP {
            return at + 8 + 4 + 8 + 8 + 4;
        }
        at += 8 + len + crate::xdr::pad(len);
    }
}

#[test]
fn names() {
    assert_eq!(sidecar_name(b"vm.vmss").unwrap(), b".vm.vmss.gvfsmeta");
    assert!(sidecar_name(b".vm.vmss.gvfsmeta").is_none());
    assert!(sidecar_name(&[b'a'; 250]).is_none());
    assert!(sidecar_name(b"..").is_none());
    assert!(is_sidecar_name(b".x.gvfsmeta") && !is_sidecar_name(b".gvfsmeta"));
}

/// A bitmap so fragmented that it would expand to more than `MAX_RUNS` runs (64 MiB in
/// memory; a 16 MiB sidecar could otherwise hold 1 GiB once parsed) is refused.
#[test]
fn a_bitmap_with_more_runs_than_the_limit_is_refused() {
    let blocks = 2 * MAX_RUNS as u64 + 16;
    let runs: Vec<_> = (0..blocks).step_by(2).map(|b| b..b + 1).collect();
    let s = Sidecar {
        size: blocks * 512,
        mtime: FileTime { secs: 1, nsecs: 0 },
        digest: None,
        actions: Actions::default(),
        zeros: ZeroMap::from_runs(512, blocks, runs),
        working_set: Vec::new(),
    };
    let enc = s.encode();
    assert!(enc.len() < 2 << 20, "bitmap encoding expected");
    match Sidecar::parse(&enc) {
        Err(SidecarError::Bad(why)) => assert!(why.contains("zero runs"), "{why}"),
        other => panic!("accepted or wrong error: {other:?}"),
    }
}

/// `next_data` is `data_ranges(..).first()` without the list (the whole-file writer asks
/// it once per frame).
#[test]
fn next_data_is_the_first_data_range() {
    let z = ZeroMap::from_runs(4096, 50, vec![0..2, 5..9, 20..21, 40..50]);
    let size = 50 * 4096 - 10;
    for off in (0..size + 5000).step_by(1000) {
        for end in [off, off + 1, off + 4096, off + 40_000, size] {
            assert_eq!(
                z.next_data(off, end),
                z.data_ranges(off, end).first().cloned(),
                "{off}..{end}"
            );
        }
    }
}
