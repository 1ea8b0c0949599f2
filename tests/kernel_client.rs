//! The unmodified Linux kernel NFS client (Debian's kernel booted in qemu with a busybox
//! initramfs, `tests/lab/kernel-client-vm.sh`) mounts the proxy, writes and reads back a
//! file with a checksum, and runs a shell scenario (mkdir, ls, mv, ln -s, rm -r) whose
//! results are then checked on the server's disk.

mod common;

use common::{Gridvfs, Lab, boot_vm as boot};

#[test]
fn kernel_client_through_the_proxy() {
    let lab = Lab::get();
    let p = Gridvfs::start(lab.endpoint(), "");
    let (dir, name) = lab.scratch("kernel");
    std::fs::write(
        dir.join("scenario.sh"),
        format!(
            r#"set -e
D=/mnt/{name}
mkdir $D/a
mkdir $D/a/b
echo hello > $D/a/b/f1
ls -la $D/a/b | grep -q f1
mv $D/a/b/f1 $D/a/f2
ln -s f2 $D/a/l2
[ "$(cat $D/a/l2)" = hello ]
dd if=/dev/urandom of=$D/a/b/big bs=64k count=40 2>/dev/null
sha256sum $D/a/b/big | cut -d' ' -f1 > $D/a/big.sum
cp $D/a/b/big $D/a/big.copy
rm -r $D/a/b
ls $D/a > $D/a/listing
echo done > $D/done
"#
        ),
    )
    .unwrap();
    let out = boot(&[
        ("NFS_PORT", p.addr.port().to_string()),
        ("MNT_PORT", p.addr.port().to_string()),
        ("EXPORT", lab.export.clone()),
        ("MB", "16".into()),
        ("SCRIPT", format!("{name}/scenario.sh")),
    ]);
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kernel client run failed:\n{console}\n{}\nproxy log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.log_text()
    );
    assert!(console.contains("CHECKSUM OK"), "{console}");

    // What the guest did is on the server's disk.
    let a = dir.join("a");
    assert_eq!(std::fs::read_to_string(dir.join("done")).unwrap(), "done\n");
    assert_eq!(std::fs::read_to_string(a.join("f2")).unwrap(), "hello\n");
    assert_eq!(
        std::fs::read_link(a.join("l2")).unwrap().to_str(),
        Some("f2")
    );
    assert!(!a.join("b").exists(), "rm -r left a/b behind");
    let copy = std::fs::read(a.join("big.copy")).unwrap();
    assert_eq!(copy.len(), 40 * 65536);
    let sum = std::fs::read_to_string(a.join("big.sum")).unwrap();
    assert_eq!(common::sha256_file(&a.join("big.copy")), sum.trim());
    let listing = std::fs::read_to_string(a.join("listing")).unwrap();
    let mut names: Vec<&str> = listing.split_whitespace().collect();
    names.sort();
    // `ls > listing` creates the listing file before ls runs, so it lists itself.
    assert_eq!(names, ["big.copy", "big.sum", "f2", "l2", "listing"]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// With `register_rpcbind = true` the guest mounts with no port options at all: its
/// kernel asks the host's rpcbind (10.0.2.2:111) and is sent to the proxy.
#[test]
fn kernel_client_bare_mount_via_rpcbind() {
    let lab = Lab::get();
    let p = Gridvfs::start(lab.endpoint(), "register_rpcbind = true");
    let out = boot(&[
        ("EXPORT", lab.export.clone()),
        ("MB", "4".into()),
        ("RAW_OPTS", "vers=3,nolock".into()),
    ]);
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bare kernel mount failed:\n{console}\n{}\nproxy log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.log_text()
    );
    assert!(console.contains("CHECKSUM OK"), "{console}");
    assert!(
        p.log_text().contains("client connected"),
        "the guest did not come through the proxy:\n{}",
        p.log_text()
    );
}

/// The kernel client reads a file through a caching proxy twice (two boots, so its own
/// page cache is empty the second time): both checksums match the server's file, and the
/// second pass is answered from the proxy's cache.
#[test]
fn kernel_client_reads_through_the_cache() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("kernel-cache");
    common::random_file(&dir.join("img.bin"), 24 << 20, 77);
    let cache = tempfile::tempdir().unwrap();
    let mut p = Gridvfs::start_with(
        lab.endpoint(),
        "127.0.0.1:0",
        "",
        &format!(
            "[cache]\ndir = \"{}\"\nsize = \"128MiB\"\nblock_size = \"64KiB\"\nways = 8\nbanks = 8\n",
            cache.path().display()
        ),
    );
    for pass in 0..2 {
        let out = boot(&[
            ("NFS_PORT", p.addr.port().to_string()),
            ("MNT_PORT", p.addr.port().to_string()),
            ("EXPORT", lab.export.clone()),
            ("MB", "0".into()),
            ("READFILE", format!("{name}/img.bin")),
        ]);
        let console = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && console.contains("READFILE CHECKSUM OK"),
            "pass {pass}: kernel read through the cache failed:\n{console}\nproxy log:\n{}",
            p.log_text()
        );
    }
    p.stop();
    let log = p.log_text();
    let hits = common::logged(&log, "cache_hits=");
    // 24 MiB in READs of at most 1 MiB: the second pass alone is at least 24 hits.
    assert!(
        hits >= 24,
        "second pass not served from the cache (hits {hits}):\n{log}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Write-back under the kernel client: the guest writes (whole-file copies and
/// unaligned `dd conv=notrunc` patches), truncates, appends, extends, renames, removes a
/// dirty file, syncs, drops its page cache and checksums what it reads back through the
/// proxy, then unmounts. Until the middleware's flush (control socket) Ganesha's disk
/// does not have the data; after it, every file is byte-equal to what the test computes
/// from the same source bytes, and to the guest's own checksums.
#[test]
fn kernel_client_write_back_then_flush() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("kernel-wb");
    let src = common::pseudo_random((3 << 20) + 1234, 88);
    std::fs::write(dir.join("src.bin"), &src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("ctl.sock");
    let p = Gridvfs::start_with(
        lab.endpoint(),
        "127.0.0.1:0",
        "",
        &common::write_back_and_control(&tmp.path().join("cache"), common::CACHE_64M, &socket),
    );
    // Block sizes chosen so that no write is aligned to a page or to a cache block.
    std::fs::write(
        dir.join("scenario.sh"),
        format!(
            r#"set -e
D=/mnt/{name}
cd $D
dd if=src.bin of=a.bin bs=64k 2>/dev/null
dd if=src.bin of=a.bin bs=1000 skip=7 seek=1234 count=300 conv=notrunc 2>/dev/null
truncate -s 1500000 a.bin
dd if=src.bin bs=777 count=100 2>/dev/null >> a.bin
truncate -s 2000000 a.bin
printf 'hello\n' > b.txt
printf 'world\n' >> b.txt
dd if=src.bin of=c.bin bs=4096 count=100 2>/dev/null
truncate -s 0 c.bin
dd if=src.bin of=c.bin bs=333 skip=3 count=5 2>/dev/null
dd if=src.bin of=gone.bin bs=64k count=8 2>/dev/null
dd if=src.bin of=moved.bin bs=100000 count=3 2>/dev/null
sync
rm gone.bin
mv moved.bin renamed.bin
sync
echo 3 > /proc/sys/vm/drop_caches
sha256sum a.bin b.txt c.bin renamed.bin > sums
cat sums
ls > listing
sync
"#
        ),
    )
    .unwrap();
    let out = boot(&[
        ("NFS_PORT", p.addr.port().to_string()),
        ("MNT_PORT", p.addr.port().to_string()),
        ("EXPORT", lab.export.clone()),
        ("MB", "0".into()),
        ("SCRIPT", format!("{name}/scenario.sh")),
    ]);
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kernel client run failed:\n{console}\n{}\nproxy log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.log_text()
    );

    // What the files must hold, computed here from the same bytes.
    let mut a = src.clone();
    a[1_234_000..1_534_000].copy_from_slice(&src[7_000..307_000]);
    a.truncate(1_500_000);
    a.extend_from_slice(&src[..77_700]);
    a.resize(2_000_000, 0);
    let b = b"hello\nworld\n".to_vec();
    let c = src[999..999 + 5 * 333].to_vec();
    let renamed = src[..300_000].to_vec();
    let want = [
        ("a.bin", &a),
        ("b.txt", &b),
        ("c.bin", &c),
        ("renamed.bin", &renamed),
    ];

    // Held back: none of it is on the server yet (the files exist: CREATE goes through).
    let (ok, s) = common::ctl(&socket, &["status"]);
    assert!(ok, "{s}");
    assert!(
        s["cache"]["dirty_bytes"].as_u64().unwrap() > 0,
        "nothing dirty after the guest's writes: {s}"
    );
    // The kernel's truncations (truncate -s, O_TRUNC) are SETATTRs of the size, kept in
    // the cache until the flush like the data.
    assert!(
        s["cache"]["local_truncations"].as_u64().unwrap() >= 3,
        "the kernel's truncations were not kept in the cache: {s}"
    );
    for (f, bytes) in want {
        let disk = std::fs::read(dir.join(f)).unwrap_or_default();
        assert!(
            disk != *bytes,
            "{f} is already on the server before the flush"
        );
    }
    assert!(!dir.join("sums").exists() || std::fs::read(dir.join("sums")).unwrap().is_empty());

    let (ok, f) = common::ctl(&socket, &["flush"]);
    assert!(ok && f["ok"] == true, "flush: {f}\n{}", p.log_text());
    for (f, bytes) in want {
        let disk = std::fs::read(dir.join(f)).unwrap_or_default();
        common::assert_same_bytes(&format!("{f} on the server after the flush"), &disk, bytes);
    }
    assert!(
        !dir.join("gone.bin").exists(),
        "a removed dirty file came back"
    );
    assert!(!dir.join("moved.bin").exists());

    // The guest's checksums of what it read back through the proxy (before the flush)
    // agree, in the file it wrote and on its console.
    let sums = std::fs::read_to_string(dir.join("sums")).unwrap();
    for (f, bytes) in want {
        let path = dir.join(format!("expect-{f}"));
        std::fs::write(&path, bytes).unwrap();
        let line = format!("{}  {f}", common::sha256_file(&path));
        assert!(sums.contains(&line), "guest read back {f} wrong: {sums}");
        assert!(
            console.contains(&line),
            "guest console lacks {line}:\n{console}"
        );
    }
    let listing = std::fs::read_to_string(dir.join("listing")).unwrap();
    let mut names: Vec<&str> = listing.split_whitespace().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "a.bin",
            "b.txt",
            "c.bin",
            "listing",
            "renamed.bin",
            "scenario.sh",
            "src.bin",
            "sums"
        ]
    );
    std::fs::remove_dir_all(dir).unwrap();
}
