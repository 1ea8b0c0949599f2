use super::*;
use crate::meta::{Codec, Fetch, Writeback};

/// Deterministic non-zero filler (xorshift; never a zero byte, so a block is zero only
/// where the test put zeros).
fn noise(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for b in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x as u8) | 1;
    }
}

/// A `len`-byte file, zero in the byte ranges `zero` (start, end), noise elsewhere.
fn fixture(dir: &Path, bs: usize, len: usize, zero: &[(usize, usize)]) -> PathBuf {
    let mut data = vec![0u8; len];
    noise(&mut data, 42);
    for &(a, b) in zero {
        data[a..b].fill(0);
    }
    let p = dir.join("disk.img");
    std::fs::write(&p, &data).unwrap();
    assert_eq!(bs % 512, 0);
    p
}

/// The zero runs as (start, end) block numbers.
fn runs(s: &Sidecar) -> Vec<(u64, u64)> {
    s.zeros.runs().iter().map(|r| (r.start, r.end)).collect()
}

#[test]
fn scan_finds_the_zero_blocks_including_a_partial_last_one() {
    let tmp = tempfile::tempdir().unwrap();
    let bs = 4096;
    // 10 full blocks + 100 bytes. Zero: blocks 1..3, block 5 but for its last byte
    // (not zero), block 7 (exactly), and the partial last block 10.
    let len = 10 * bs + 100;
    let p = fixture(
        tmp.path(),
        bs,
        len,
        &[
            (bs, 3 * bs),
            (5 * bs, 6 * bs - 1),
            (7 * bs, 8 * bs),
            (10 * bs, len),
        ],
    );
    let s = scan(&p, &ScanOptions::default()).unwrap();
    assert_eq!(s.size, len as u64);
    assert_eq!(s.zeros.blocks, 11);
    assert_eq!(runs(&s), [(1, 3), (7, 8), (10, 11)]);
    assert_eq!(s.zero_bytes(), 3 * bs as u64 + 100);
    let content = std::fs::read(&p).unwrap();
    assert_eq!(s.digest, Some(*blake3::hash(&content).as_bytes()));
    let m = std::fs::metadata(&p).unwrap();
    assert_eq!(s.check_fresh(m.len(), mtime_of(&m)), Ok(()));
}

#[test]
fn scan_across_read_buffers_at_a_large_block_size() {
    // 9 MiB: three reads of the 4 MiB buffer; zero run crossing the first boundary.
    let tmp = tempfile::tempdir().unwrap();
    let mib = 1 << 20;
    let p = fixture(tmp.path(), mib, 9 * mib, &[(3 * mib, 6 * mib)]);
    let opts = ScanOptions {
        block_size: 1 << 20,
        digest: false,
        ..ScanOptions::default()
    };
    let mut seen = Vec::new();
    let s = scan_with_progress(&p, &opts, &mut |d| seen.push(d)).unwrap();
    assert_eq!(runs(&s), [(3, 6)]);
    assert_eq!(s.digest, None);
    assert_eq!(seen, [4 * mib as u64, 8 * mib as u64, 9 * mib as u64]);
}

#[test]
fn zero_length_file_has_no_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("empty");
    std::fs::write(&p, b"").unwrap();
    let s = scan(&p, &ScanOptions::default()).unwrap();
    assert_eq!((s.size, s.zeros.blocks, s.zero_bytes()), (0, 0, 0));
    assert_eq!(s.digest, Some(*blake3::hash(b"").as_bytes()));
    write_sidecar(&p, &s).unwrap();
    assert_eq!(read_sidecar(&p).unwrap(), s);
}

#[test]
fn all_zero_file_is_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("sparse");
    let f = File::create(&p).unwrap();
    f.set_len(5 * 4096 + 1).unwrap();
    let s = scan(&p, &ScanOptions::default()).unwrap();
    assert_eq!(runs(&s), [(0, 6)]);
    assert_eq!(s.zero_bytes(), s.size);
}

#[test]
fn write_is_atomic_with_mode_0644_and_leaves_no_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = fixture(tmp.path(), 4096, 8192, &[(0, 4096)]);
    let opts = ScanOptions {
        actions: Actions {
            fetch: Fetch::WholeFile,
            codec: Codec::Gzip,
            level: 9,
            writeback: Writeback::WholeFile,
        },
        ..ScanOptions::default()
    };
    let s = scan(&p, &opts).unwrap();
    let side = write_sidecar(&p, &s).unwrap();
    assert_eq!(side, tmp.path().join(".disk.img.gvfsmeta"));
    // Overwrite: still one sidecar, no temp file left.
    write_sidecar(&p, &s).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, [".disk.img.gvfsmeta", "disk.img"]);
    let mode = std::fs::metadata(&side).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert_eq!(read_sidecar(&p).unwrap(), s);
    assert_eq!(read_sidecar_at(&side).unwrap().actions, opts.actions);
}

#[test]
fn verify_tells_fresh_from_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let p = fixture(tmp.path(), 4096, 3 * 4096, &[(4096, 8192)]);
    let s = scan(&p, &ScanOptions::default()).unwrap();
    write_sidecar(&p, &s).unwrap();
    let none = &mut |_| {};
    assert_eq!(
        verify(&p, Check::Full, none).unwrap(),
        Verdict::Fresh { content: true }
    );
    assert_eq!(
        verify(&p, Check::Quick, none).unwrap(),
        Verdict::Fresh { content: false }
    );
    let f = OpenOptions::new().append(true).open(&p).unwrap();
    f.set_len(3 * 4096 + 1).unwrap();
    assert!(matches!(
        verify(&p, Check::Quick, none).unwrap(),
        Verdict::Stale(Why::Attr(Stale::Size { .. }))
    ));
}

#[test]
fn refuses_what_is_not_a_regular_file() {
    let tmp = tempfile::tempdir().unwrap();
    let o = ScanOptions::default();
    let e = scan(tmp.path(), &o).unwrap_err();
    assert!(matches!(e, MetaError::NotRegular { .. }), "{e}");
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
    let e = scan(&link, &o).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    let e = scan(&tmp.path().join("nope"), &o).unwrap_err();
    assert!(matches!(e, MetaError::Missing { .. }), "{e}");
    let bad = ScanOptions {
        block_size: 1000,
        ..o
    };
    let e = scan(&link, &bad).unwrap_err();
    assert!(e.to_string().contains("block size 1000"), "{e}");
}

#[test]
fn names_map_both_ways() {
    let (d, s) = resolve(Path::new("/x/.a.img.gvfsmeta")).unwrap();
    assert_eq!(
        (d.as_path(), s.as_path()),
        (Path::new("/x/a.img"), Path::new("/x/.a.img.gvfsmeta"))
    );
    let (d, s) = resolve(Path::new("a.img")).unwrap();
    assert_eq!(
        (d.as_path(), s.as_path()),
        (Path::new("a.img"), Path::new(".a.img.gvfsmeta"))
    );
    assert!(is_meta_name(b".a.img.gvfsmeta.tmp.123"));
    assert!(is_meta_name(b".gvfsmeta.tmp.9"));
    assert!(!is_meta_name(b"a.img"));
    let long = "n".repeat(250);
    assert!(matches!(
        sidecar_path(Path::new(&long)),
        Err(MetaError::NoSidecarName { .. })
    ));
}

#[test]
fn is_zero_checks_every_byte() {
    let mut v = vec![0u8; 4096 + 33];
    assert!(is_zero(&v));
    for i in [0, 63, 64, 4095, 4096, 4096 + 32] {
        v[i] = 1;
        assert!(!is_zero(&v), "byte {i}");
        v[i] = 0;
    }
}

#[test]
fn a_fifo_or_directory_in_the_sidecar_s_place_is_refused_without_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("disk.img");
    std::fs::write(&p, b"data").unwrap();
    let side = sidecar_path(&p).unwrap();
    let c = std::ffi::CString::new(side.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let e = read_sidecar(&p).unwrap_err();
    assert!(
        e.is_bad_sidecar() && e.to_string().contains("not a regular file"),
        "{e}"
    );
    std::fs::remove_file(&side).unwrap();
    std::fs::create_dir(&side).unwrap();
    let e = read_sidecar(&p).unwrap_err();
    assert!(e.is_bad_sidecar(), "{e}");
    // A FIFO as the data file: refused, not read.
    let fifo = tmp.path().join("pipe");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let e = scan(&fifo, &ScanOptions::default()).unwrap_err();
    assert!(
        e.to_string().contains("not a regular file (special file)"),
        "{e}"
    );
}

#[test]
fn regenerating_keeps_a_working_set_that_fits_and_drops_one_that_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let p = fixture(tmp.path(), 4096, 8 * 4096, &[]);
    // No sidecar yet: nothing to keep.
    let mut s = scan(&p, &ScanOptions::default()).unwrap();
    assert_eq!(keep_working_set(&p, &mut s), KeptWorkingSet::None);
    s.working_set = vec![0..4096, 20_000..32_768];
    write_sidecar(&p, &s).unwrap();

    // The same size again (another block size): kept, exactly.
    let opts = ScanOptions {
        block_size: 512,
        ..ScanOptions::default()
    };
    let mut again = scan(&p, &opts).unwrap();
    assert_eq!(keep_working_set(&p, &mut again), KeptWorkingSet::Kept(2));
    assert_eq!(again.working_set, [0..4096, 20_000..32_768]);
    write_sidecar(&p, &again).unwrap();

    // The file shrank below the last range's end: none kept.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(30_000)
        .unwrap();
    let mut shorter = scan(&p, &opts).unwrap();
    assert_eq!(
        keep_working_set(&p, &mut shorter),
        KeptWorkingSet::Dropped(2)
    );
    assert!(shorter.working_set.is_empty());

    // A damaged old sidecar has nothing to keep.
    std::fs::write(sidecar_path(&p).unwrap(), b"junk").unwrap();
    assert_eq!(keep_working_set(&p, &mut shorter), KeptWorkingSet::None);
}

#[test]
fn read_fresh_sidecar_refuses_a_stale_or_missing_sidecar() {
    let tmp = tempfile::tempdir().unwrap();
    let p = fixture(tmp.path(), 4096, 3 * 4096, &[]);
    assert!(matches!(
        read_fresh_sidecar(&p),
        Err(MetaError::Missing {
            what: "sidecar",
            ..
        })
    ));
    let s = scan(&p, &ScanOptions::default()).unwrap();
    write_sidecar(&p, &s).unwrap();
    assert_eq!(read_fresh_sidecar(&p).unwrap(), s);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .set_len(3 * 4096 + 1)
        .unwrap();
    let e = read_fresh_sidecar(&p).unwrap_err();
    assert!(matches!(e, MetaError::Stale { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("the sidecar is stale (size changed: sidecar says 12288, file is 12289); run `gridvfs meta generate`"),
        "{e}"
    );
}
