//! `gridvfs meta generate|show|verify` as an operator runs them: the sidecar they write
//! (parsed back and compared with the zero layout the test made), what they print, and
//! their exit codes for fresh, stale, missing and damaged sidecars.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gridvfs::meta::Sidecar;

const BS: usize = 4096;
/// 8 MiB: 2048 blocks, of which 0..256 and 1024..1536 are zero (768, 37.50%).
const LEN: usize = 8 << 20;
const ZERO_RUNS: [(u64, u64); 2] = [(0, 256), (1024, 1536)];

fn gridvfs(args: &[&str], paths: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gridvfs"))
        .arg("meta")
        .args(args)
        .args(paths)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String, i32) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        o.status.code().unwrap_or(-1),
    )
}

/// Writes the 8 MiB fixture: zero in `ZERO_RUNS`, pseudo-random bytes (never 0) elsewhere.
fn fixture(path: &Path) {
    let mut data = vec![0u8; LEN];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x as u8) | 1;
    }
    for (s, e) in ZERO_RUNS {
        data[s as usize * BS..e as usize * BS].fill(0);
    }
    std::fs::write(path, &data).unwrap();
}

fn sidecar_of(data: &Path) -> PathBuf {
    let name = data.file_name().unwrap().to_str().unwrap();
    data.with_file_name(format!(".{name}.gvfsmeta"))
}

/// Sets the file's mtime back to `secs.nsecs` (as a careless writer with a coarse clock,
/// or `touch -r`, would).
fn set_mtime(path: &Path, secs: i64, nsecs: i64) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: nsecs,
        },
    ];
    // SAFETY: a NUL-terminated path and two timespecs, as utimensat(2) asks.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(rc, 0, "utimensat: {}", std::io::Error::last_os_error());
}

#[test]
fn generate_writes_the_zero_map_and_show_and_verify_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.img");
    fixture(&img);

    let (out, err, code) = text(&gridvfs(&["generate"], &[&img]));
    assert_eq!(code, 0, "{err}");
    let side = sidecar_of(&img);
    assert_eq!(
        out,
        format!(
            "{}: 8388608 bytes, 37.50% zero, sidecar {}\n",
            img.display(),
            side.display()
        )
    );
    let s = Sidecar::parse(&std::fs::read(&side).unwrap()).unwrap();
    assert_eq!(
        (s.size, s.zeros.blocks, s.zeros.zero_blocks()),
        (LEN as u64, 2048, 768)
    );
    let runs: Vec<_> = s.zeros.runs().iter().map(|r| (r.start, r.end)).collect();
    assert_eq!(runs, ZERO_RUNS);
    assert_eq!(
        s.digest,
        Some(*blake3::hash(&std::fs::read(&img).unwrap()).as_bytes())
    );

    // show, by the data file's path and by the sidecar's.
    for p in [&img, &side] {
        let (out, err, code) = text(&gridvfs(&["show"], &[p]));
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("zero blocks: 768 (37.50% of blocks"), "{out}");
        assert!(out.contains("blocks:      2048"), "{out}");
        assert!(out.contains("zero runs:   2: 0..256, 1024..1536"), "{out}");
        assert!(out.contains("freshness:   fresh"), "{out}");
    }

    let (out, err, code) = text(&gridvfs(&["verify"], &[&img]));
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            &*format!("{}: fresh (size, mtime and content match)\n", img.display())
        ),
        "{err}"
    );
}

#[test]
fn a_changed_byte_behind_an_unchanged_mtime_is_stale_by_digest_but_quick_misses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.img");
    fixture(&img);
    assert_eq!(gridvfs(&["generate"], &[&img]).status.code(), Some(0));
    let m = std::fs::metadata(&img).unwrap();

    // One byte of a data block, still non-zero; same size; mtime put back.
    let mut data = std::fs::read(&img).unwrap();
    data[300 * BS + 5] ^= 0x80;
    std::fs::write(&img, &data).unwrap();
    set_mtime(&img, m.mtime(), m.mtime_nsec());

    let (out, _, code) = text(&gridvfs(&["verify"], &[&img]));
    assert_eq!(code, 1);
    assert!(out.ends_with(": stale (content digest differs)\n"), "{out}");
    let (out, _, code) = text(&gridvfs(&["verify", "--quick"], &[&img]));
    assert_eq!(code, 0);
    assert!(out.contains(": fresh (size and mtime match"), "{out}");

    // An mtime change alone is stale even for --quick.
    set_mtime(&img, m.mtime() + 1, 0);
    let (out, _, code) = text(&gridvfs(&["verify", "--quick"], &[&img]));
    assert_eq!(code, 1);
    let was = format!("{}.{:09}", m.mtime(), m.mtime_nsec());
    let now = format!("{}.000000000", m.mtime() + 1);
    assert!(
        out.ends_with(&format!(
            ": stale (modification time changed: sidecar says {was}, file is {now})\n"
        )),
        "{out}"
    );

    // A size change is stale either way, and show says so too.
    let f = std::fs::OpenOptions::new().append(true).open(&img).unwrap();
    f.set_len(LEN as u64 + 1).unwrap();
    for args in [&["verify"][..], &["verify", "--quick"]] {
        let (out, _, code) = text(&gridvfs(args, &[&img]));
        assert_eq!(code, 1);
        assert!(
            out.contains("stale (size changed: sidecar says 8388608, file is 8388609)"),
            "{out}"
        );
    }
    let (out, _, code) = text(&gridvfs(&["show"], &[&img]));
    assert_eq!(code, 0);
    assert!(out.contains("freshness:   stale (size changed"), "{out}");
}

#[test]
fn damaged_or_missing_sidecars_have_their_own_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.img"), tmp.path().join("b.img"));
    std::fs::write(&a, b"some data").unwrap();
    std::fs::write(&b, b"more data").unwrap();

    // No sidecar: 1.
    let (_, err, code) = text(&gridvfs(&["verify"], &[&a]));
    assert_eq!(code, 1);
    assert!(err.contains(".a.img.gvfsmeta: no such sidecar"), "{err}");

    // Garbage: 2, for verify and show, naming the sidecar.
    std::fs::write(sidecar_of(&a), b"this is not a sidecar at all").unwrap();
    for cmd in ["verify", "show"] {
        let (_, err, code) = text(&gridvfs(&[cmd], &[&a]));
        assert_eq!(code, 2, "{cmd}: {err}");
        assert!(
            err.contains(".a.img.gvfsmeta: not a gridvfs sidecar (bad magic)"),
            "{cmd}: {err}"
        );
    }
    // Truncated real sidecar: 2 (checksum), even next to a fresh one.
    assert_eq!(gridvfs(&["generate"], &[&a, &b]).status.code(), Some(0));
    let raw = std::fs::read(sidecar_of(&a)).unwrap();
    std::fs::write(sidecar_of(&a), &raw[..raw.len() - 1]).unwrap();
    let (out, err, code) = text(&gridvfs(&["verify"], &[&a, &b]));
    assert_eq!(code, 2);
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(out.contains("b.img: fresh"), "{out}");
}

#[test]
fn a_failed_file_does_not_stop_the_others_and_bad_options_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.img");
    std::fs::write(&good, vec![0u8; 10_000]).unwrap();
    let missing = tmp.path().join("missing.img");
    let (out, err, code) = text(&gridvfs(&["generate"], &[&missing, &good]));
    assert_eq!(code, 1);
    assert!(err.contains("missing.img: no such data file"), "{err}");
    assert!(out.contains("good.img: 10000 bytes, 100.00% zero"), "{out}");
    assert!(sidecar_of(&good).exists());

    for args in [
        &["generate", "--block-size", "1000"][..],
        &["generate", "--block-size", "2MiB"],
        &["generate", "--codec", "gzip", "--level", "10"],
        &["generate", "--fetch", "sometimes"],
    ] {
        let (_, err, code) = text(&gridvfs(args, &[&good]));
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    // Actions end up in the sidecar.
    let args = [
        "generate",
        "--block-size",
        "64KiB",
        "--fetch",
        "whole-file",
        "--codec",
        "gzip",
        "--level",
        "9",
        "--writeback",
        "whole-file",
        "--no-digest",
    ];
    assert_eq!(gridvfs(&args, &[&good]).status.code(), Some(0));
    let (out, _, _) = text(&gridvfs(&["show"], &[&good]));
    assert!(
        out.contains("actions:     fetch whole-file, codec gzip (level 9), write-back whole-file"),
        "{out}"
    );
    assert!(out.contains("digest:      none"), "{out}");
    assert!(out.contains("block size:  65536 bytes"), "{out}");
}

#[test]
fn a_directory_walk_skips_sidecars_links_and_names_too_long() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir(root.join("sub")).unwrap();
    std::fs::write(root.join("a.img"), vec![0u8; 4096]).unwrap();
    std::fs::write(root.join("sub/b.img"), vec![1u8; 4096]).unwrap();
    std::os::unix::fs::symlink("a.img", root.join("link.img")).unwrap();
    let long = "x".repeat(250);
    std::fs::write(root.join(&long), b"x").unwrap();

    // Twice: the second walk must not make sidecars of the sidecars.
    for _ in 0..2 {
        let (out, err, code) = text(&gridvfs(&["generate"], &[root]));
        assert_eq!(code, 0, "{err}");
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(
            lines[0].starts_with(&format!(
                "{}: 4096 bytes, 100.00%",
                root.join("a.img").display()
            )),
            "{out}"
        );
        assert!(
            lines[1].starts_with(&format!(
                "{}: 4096 bytes, 0.00%",
                root.join("sub/b.img").display()
            )),
            "{out}"
        );
        assert!(err.contains("link.img: a symbolic link"), "{err}");
        assert!(err.contains("would pass 255 bytes"), "{err}");
    }
    let mut names: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() < 200)
        .collect();
    names.sort();
    assert_eq!(names, [".a.img.gvfsmeta", "a.img", "link.img", "sub"]);
    assert!(root.join("sub/.b.img.gvfsmeta").exists());
}

/// `meta workset` with its input on standard input.
fn gridvfs_stdin(args: &[&str], paths: &[&Path], input: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gridvfs"))
        .arg("meta")
        .args(args)
        .args(paths)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The sidecar with its working set left out: what `meta workset` must not change.
fn without_working_set(s: &Sidecar) -> Sidecar {
    Sidecar {
        working_set: Vec::new(),
        ..s.clone()
    }
}

#[test]
fn meta_workset_writes_the_working_set_into_a_fresh_sidecar_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.img");
    fixture(&img);
    let side = sidecar_of(&img);
    let parse = || Sidecar::parse(&std::fs::read(&side).unwrap()).unwrap();

    // No sidecar yet: refused, saying what to run.
    let ws = tmp.path().join("ws.txt");
    std::fs::write(&ws, "0 4096\n").unwrap();
    let from = ws.to_str().unwrap();
    let (_, err, code) = text(&gridvfs(&["workset", "--from", from], &[&img]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(".disk.img.gvfsmeta: no such sidecar"), "{err}");
    assert!(err.contains("run `gridvfs meta generate"), "{err}");

    let (_, err, code) = text(&gridvfs(&["generate", "--block-size", "64KiB"], &[&img]));
    assert_eq!(code, 0, "{err}");
    let before = parse();
    assert!(before.working_set.is_empty());

    // What `gridvfs workset` prints, with a range added out of order and overlapping.
    std::fs::write(
        &ws,
        "# gridvfs working set of /export/vm/disk.img: 8388608 bytes, 3 ranges, 1069056 bytes\n\
         0 65536\n\
         1048576 1000000\n\
         8384512 4096\n\
         \n\
         # added by hand\n\
         60000 10000\n",
    )
    .unwrap();
    let (out, err, code) = text(&gridvfs(&["workset", "--from", from], &[&img]));
    assert_eq!(code, 0, "{err}");
    // 0..70000 (merged), 1048576..2048576, 8384512..8388608.
    let bytes = 70_000 + 1_000_000 + 4096;
    assert_eq!(
        out,
        format!(
            "{}: working set of 3 ranges, {bytes} bytes (12.80% of the file), sidecar {}\n",
            img.display(),
            side.display()
        )
    );
    let after = parse();
    assert_eq!(
        after.working_set,
        [0..70_000, 1_048_576..2_048_576, 8_384_512..8_388_608]
    );
    // Size, mtime, digest, actions and zero map are the generated ones.
    assert_eq!(without_working_set(&after), before);

    let (out, _, code) = text(&gridvfs(&["show"], &[&img]));
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!(
            "working set: 3 ranges, {bytes} bytes (12.80% of the file)\n"
        )),
        "{out}"
    );
    assert!(out.contains("freshness:   fresh"), "{out}");

    // From standard input, replacing the working set.
    let (out, err, code) = text(&gridvfs_stdin(
        &["workset", "--from", "-"],
        &[&img],
        "4096 8192\n20000 1\n",
    ));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("working set of 2 ranges, 8193 bytes (0.10% of the file)"),
        "{out}"
    );
    assert_eq!(parse().working_set, [4096..12_288, 20_000..20_001]);

    // Regenerating keeps it (it still fits) and says so.
    let (out, err, code) = text(&gridvfs(&["generate"], &[&img]));
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with(", working set of 2 ranges kept\n"), "{out}");
    assert_eq!(parse().working_set, [4096..12_288, 20_000..20_001]);
    let before = without_working_set(&parse());

    // --clear removes it, and only it.
    let (out, err, code) = text(&gridvfs(&["workset", "--clear"], &[&img]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("working set of 0 ranges, 0 bytes (0.00% of the file)"),
        "{out}"
    );
    assert_eq!(parse(), before);
    let (out, _, _) = text(&gridvfs(&["show"], &[&img]));
    assert!(out.contains("working set: 0 ranges, 0 bytes"), "{out}");
}

#[test]
fn meta_workset_refuses_bad_input_and_stale_sidecars_and_leaves_the_sidecar_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.img");
    fixture(&img);
    assert_eq!(gridvfs(&["generate"], &[&img]).status.code(), Some(0));
    let side = sidecar_of(&img);
    let raw = std::fs::read(&side).unwrap();
    let ws = tmp.path().join("ws.txt");
    let from = ws.to_str().unwrap();

    // A range past the end of the file, on line 3.
    std::fs::write(&ws, "# header\n0 4096\n8388000 1000\n").unwrap();
    let (_, err, code) = text(&gridvfs(&["workset", "--from", from], &[&img]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{from}: line 3: range 8388000+1000 ends past the end of the file (8388608 bytes)"
        )),
        "{err}"
    );
    assert!(err.contains("is unchanged"), "{err}");
    // A line that is not two numbers.
    std::fs::write(&ws, "0 4096\n4096\n").unwrap();
    let (_, err, code) = text(&gridvfs(&["workset", "--from", from], &[&img]));
    assert_eq!(code, 1);
    assert!(
        err.contains("line 2: 1 fields; expected two decimal numbers"),
        "{err}"
    );
    assert_eq!(std::fs::read(&side).unwrap(), raw, "sidecar changed");

    // A stale sidecar (the file's mtime moved): refused, naming the fix.
    let m = std::fs::metadata(&img).unwrap();
    set_mtime(&img, m.mtime() + 5, 0);
    std::fs::write(&ws, "0 4096\n").unwrap();
    let (_, err, code) = text(&gridvfs(&["workset", "--from", from], &[&img]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the sidecar is stale (modification time changed")
            && err.contains("run `gridvfs meta generate` on the file first"),
        "{err}"
    );
    assert_eq!(std::fs::read(&side).unwrap(), raw, "sidecar changed");
    // Fresh again: accepted.
    set_mtime(&img, m.mtime(), m.mtime_nsec());
    let (_, err, code) = text(&gridvfs(&["workset", "--from", from], &[&img]));
    assert_eq!(code, 0, "{err}");

    // A damaged sidecar: refused, naming the fix.
    std::fs::write(&side, &raw[..raw.len() - 1]).unwrap();
    let (_, err, code) = text(&gridvfs(&["workset", "--clear"], &[&img]));
    assert_eq!(code, 1);
    assert!(
        err.contains("checksum mismatch") && err.contains("run `gridvfs meta generate"),
        "{err}"
    );

    // Usage: neither --from nor --clear, or both.
    for args in [&["workset"][..], &["workset", "--clear", "--from", from]] {
        let (_, err, code) = text(&gridvfs(args, &[&img]));
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}
