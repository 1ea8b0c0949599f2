//! The read cache (write-through) against the real server: a second read of a file is
//! answered from the cache (no READ reaches the next hop), writes and truncations through
//! the proxy are never hidden by stale cached bytes, and the cache is warm after a restart.
//! The next hop is a second gridvfs in front of Ganesha, whose per-procedure counts at
//! exit tell how many READs got past the cache.

mod common;

use std::process::Command;

use common::{
    Gridvfs, Lab, logged, lookup_path, nfs_cat, nfs_url, pseudo_random, random_file, sha256_file,
};

/// A caching proxy in front of `hop`. These tests are about the read cache, so writes
/// go through (`write-through`: the written bytes are also kept); write-back has its own
/// tests (tests/writeback.rs).
fn front(hop: &Gridvfs, cache_dir: &std::path::Path) -> Gridvfs {
    front_with(hop, cache_dir, "")
}

fn front_with(hop: &Gridvfs, cache_dir: &std::path::Path, extra: &str) -> Gridvfs {
    Gridvfs::start_with(
        hop.endpoints(),
        "127.0.0.1:0",
        "",
        &format!(
            "[cache]\ndir = \"{}\"\nsize = \"64MiB\"\nblock_size = \"64KiB\"\nways = 8\nbanks = 4\nwrite_policy = \"write-through\"\n{extra}\n",
            cache_dir.display()
        ),
    )
}

#[test]
fn second_read_comes_from_the_cache_and_survives_a_restart() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("cache-read");
    random_file(&dir.join("f.bin"), 8 << 20, 21);
    let cache_dir = tempfile::tempdir().unwrap();
    let mut hop = Gridvfs::start(lab.endpoint(), "");
    let mut fr = front(&hop, cache_dir.path());
    let path = format!("{name}/f.bin");
    let want = std::fs::read(dir.join("f.bin")).unwrap();
    assert!(
        nfs_cat(fr.endpoints(), &lab.export, &path) == want,
        "first read differs"
    );
    assert!(
        nfs_cat(fr.endpoints(), &lab.export, &path) == want,
        "cached read differs"
    );
    fr.stop();
    let log = fr.log_text();
    let (hits, misses) = (logged(&log, "cache_hits="), logged(&log, "cache_misses="));
    assert!(
        hits >= 8,
        "second read not served from the cache (hits {hits}):\n{log}"
    );

    // Restarted on the same cache directory: warm.
    let mut fr = front(&hop, cache_dir.path());
    assert!(
        nfs_cat(fr.endpoints(), &lab.export, &path) == want,
        "read after restart differs"
    );
    fr.stop();
    let log2 = fr.log_text();
    assert!(
        logged(&log2, "cache_hits=") >= 8,
        "cache cold after restart:\n{log2}"
    );
    assert_eq!(logged(&log2, "cache_misses="), 0, "{log2}");

    hop.stop();
    let reads = logged(&hop.log_text(), "READ=");
    assert_eq!(
        reads, misses,
        "READs past the cache should equal its misses"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn writes_and_truncation_through_the_proxy_are_never_hidden() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("cache-write");
    let cache_dir = tempfile::tempdir().unwrap();
    let hop = Gridvfs::start(lab.endpoint(), "");
    let fr = front(&hop, cache_dir.path());
    let path = format!("{name}/f.bin");
    let tmp = tempfile::tempdir().unwrap();

    // 4 MiB written through the proxy, read (cached), read again.
    let a = tmp.path().join("a");
    random_file(&a, 4 << 20, 1);
    let cp = |src: &std::path::Path| {
        let out = Command::new("nfs-cp")
            .arg(src)
            .arg(nfs_url(fr.endpoints(), &lab.export, &path))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    cp(&a);
    assert_eq!(sha256_file(&dir.join("f.bin")), sha256_file(&a));
    assert!(nfs_cat(fr.endpoints(), &lab.export, &path) == std::fs::read(&a).unwrap());
    assert!(nfs_cat(fr.endpoints(), &lab.export, &path) == std::fs::read(&a).unwrap());

    // Replaced by a shorter file through the proxy (truncate + write): the cached 4 MiB
    // must not show through, neither the old bytes nor the old length.
    std::fs::remove_file(dir.join("f.bin")).unwrap();
    let b = tmp.path().join("b");
    std::fs::write(&b, pseudo_random((1 << 20) + 123, 2)).unwrap();
    cp(&b);
    let got = nfs_cat(fr.endpoints(), &lab.export, &path);
    assert_eq!(got.len(), (1 << 20) + 123, "old length shows through");
    assert!(
        got == std::fs::read(&b).unwrap(),
        "stale cached bytes returned"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Truncate to 0, then extend with SETATTR: the file must read as zeros, not as the bytes
/// cached before the truncation.
#[tokio::test]
async fn truncate_then_extend_reads_zeros() {
    use nfs3_types::nfs3::*;
    let lab = Lab::get();
    let (dir, name) = lab.scratch("cache-trunc");
    std::fs::write(dir.join("f"), pseudo_random(256 << 10, 3)).unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let hop = Gridvfs::start(lab.endpoint(), "");
    let fr = front(&hop, cache_dir.path());
    let mut c = common::mount(fr.endpoints(), &lab.export).await;
    let fh = lookup_path(&mut c, &name, "f").await;
    let read_all = async |c: &mut common::Client, fh: &nfs_fh3| {
        let r = c
            .read(&READ3args {
                file: fh.clone(),
                offset: 0,
                count: 256 << 10,
            })
            .await
            .unwrap();
        let Nfs3Result::Ok(ok) = r else {
            panic!("read")
        };
        ok.data.to_vec()
    };
    assert!(read_all(&mut c, &fh).await == std::fs::read(dir.join("f")).unwrap());
    assert!(read_all(&mut c, &fh).await == std::fs::read(dir.join("f")).unwrap()); // cached
    for size in [0u64, 256 << 10] {
        let r = c
            .setattr(&SETATTR3args {
                object: fh.clone(),
                new_attributes: sattr3 {
                    size: Nfs3Option::Some(size),
                    ..Default::default()
                },
                guard: Nfs3Option::None,
            })
            .await
            .unwrap();
        assert!(matches!(r, Nfs3Result::Ok(_)));
    }
    let got = read_all(&mut c, &fh).await;
    assert_eq!(got.len(), 256 << 10);
    assert!(
        got.iter().all(|&b| b == 0),
        "bytes from before the truncation came back"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// SIGUSR2 drops the cache (the middleware's "session over"): the next read goes
/// upstream again, byte-equal. SIGUSR1 (write back) leaves the proxy serving.
#[test]
fn sigusr2_drops_the_cache_and_the_next_read_refetches() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("cache-drop");
    random_file(&dir.join("f.bin"), 8 << 20, 33);
    let want = std::fs::read(dir.join("f.bin")).unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let mut hop = Gridvfs::start(lab.endpoint(), "");
    let mut fr = front(&hop, cache_dir.path());
    let path = format!("{name}/f.bin");
    assert!(nfs_cat(fr.endpoints(), &lab.export, &path) == want);
    assert!(nfs_cat(fr.endpoints(), &lab.export, &path) == want);
    common::signal(fr.pid(), "USR1");
    common::signal(fr.pid(), "USR2");
    let t0 = std::time::Instant::now();
    while !fr.log_text().contains("cache dropped") {
        assert!(
            t0.elapsed().as_secs() < 10,
            "no 'cache dropped' log line:\n{}",
            fr.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(fr.alive(), "a signal killed the proxy");
    assert!(
        logged(&fr.log_text(), "blocks=") >= 8 << 20 >> 16,
        "too few blocks dropped"
    );
    assert!(
        nfs_cat(fr.endpoints(), &lab.export, &path) == want,
        "read after the drop differs"
    );
    fr.stop();
    let log = fr.log_text();
    let (hits, misses) = (logged(&log, "cache_hits="), logged(&log, "cache_misses="));
    // Pass 1 and pass 3 missed, pass 2 hit: twice as many misses as hits.
    assert!(
        hits >= 8 && misses >= 2 * hits,
        "hits {hits} misses {misses}:\n{log}"
    );
    hop.stop();
    assert_eq!(logged(&hop.log_text(), "READ="), misses);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A file changed on the server behind the proxy's back (same size, new mtime): with
/// `consistency = "attributes"` the next open-and-read sees the new bytes; with the
/// default session consistency the cache is trusted until it is dropped (paper §3.2.1).
#[test]
fn attributes_consistency_sees_changes_made_behind_the_proxy() {
    let lab = Lab::get();
    let hop = Gridvfs::start(lab.endpoint(), "");
    for (mode, sees_change) in [("attributes", true), ("session", false)] {
        let (dir, name) = lab.scratch(&format!("cache-cto-{mode}"));
        let file = dir.join("f.bin");
        random_file(&file, 2 << 20, 41);
        let old = std::fs::read(&file).unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let fr = front_with(&hop, cache_dir.path(), &format!("consistency = \"{mode}\""));
        let path = format!("{name}/f.bin");
        assert!(nfs_cat(fr.endpoints(), &lab.export, &path) == old);
        // Another client rewrites the file in place: same size, new bytes, new mtime.
        let new = pseudo_random(2 << 20, 42);
        std::fs::write(&file, &new).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let got = nfs_cat(fr.endpoints(), &lab.export, &path);
        if sees_change {
            assert!(
                got == new,
                "{mode}: stale bytes after the file changed upstream"
            );
        } else {
            assert!(got == old, "{mode}: the cache was not trusted");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Regression: the remembered size was trusted across a WRITE, so a READ at the old end
/// of file right after an append was answered "EOF, 0 bytes" from the cache.
#[tokio::test]
async fn append_then_read_at_the_old_end_sees_the_new_bytes() {
    use nfs3_types::nfs3::*;
    use nfs3_types::xdr_codec::Opaque;
    let lab = Lab::get();
    let (dir, name) = lab.scratch("cache-append");
    let old = pseudo_random(100_000, 5);
    std::fs::write(dir.join("f"), &old).unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let hop = Gridvfs::start(lab.endpoint(), "");
    let fr = front(&hop, cache_dir.path());
    let mut c = common::mount(fr.endpoints(), &lab.export).await;
    let fh = lookup_path(&mut c, &name, "f").await;
    for _ in 0..2 {
        let Nfs3Result::Ok(r) = c
            .read(&READ3args {
                file: fh.clone(),
                offset: 0,
                count: 1 << 20,
            })
            .await
            .unwrap()
        else {
            panic!("read")
        };
        assert!(r.eof && r.data.as_ref() == &old[..]);
    }
    let tail = vec![0xab; 777];
    let w = c
        .write(&WRITE3args {
            file: fh.clone(),
            offset: old.len() as u64,
            count: tail.len() as u32,
            stable: stable_how::FILE_SYNC,
            data: Opaque::borrowed(&tail),
        })
        .await
        .unwrap();
    assert!(matches!(w, Nfs3Result::Ok(_)));
    let Nfs3Result::Ok(r) = c
        .read(&READ3args {
            file: fh.clone(),
            offset: old.len() as u64,
            count: 4096,
        })
        .await
        .unwrap()
    else {
        panic!("read after append")
    };
    assert_eq!(
        r.data.as_ref(),
        &tail[..],
        "appended bytes hidden by a stale size"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The paper's shared golden-image cache: a second proxy on the same host opens the
/// first one's cache directory read-only (`shared = true`) and serves the image from it
/// without a READ reaching the next hop; a file it writes is no longer served from the
/// shared copy (stale for it), and it never changes the owner's files.
#[tokio::test]
async fn a_second_proxy_shares_the_owners_cache_read_only() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("cache-shared");
    random_file(&dir.join("golden.img"), 6 << 20, 31);
    random_file(&dir.join("scratch.bin"), 1 << 20, 32);
    let want = std::fs::read(dir.join("golden.img")).unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let hop = Gridvfs::start(lab.endpoint(), "");
    let owner = front(&hop, cache_dir.path());
    let (image, scratch) = (format!("{name}/golden.img"), format!("{name}/scratch.bin"));
    assert!(
        nfs_cat(owner.endpoints(), &lab.export, &image) == want,
        "owner's read differs"
    );
    let old = nfs_cat(owner.endpoints(), &lab.export, &scratch);
    let listing = || {
        let mut v: Vec<(String, u64, std::time::SystemTime)> = std::fs::read_dir(cache_dir.path())
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
    let before = listing();
    let ctl_dir = tempfile::tempdir().unwrap();
    let socket = ctl_dir.path().join("ctl");
    let mut reader = Gridvfs::start_with(
        hop.endpoints(),
        "127.0.0.1:0",
        "",
        &format!(
            "[cache]\ndir = \"{}\"\nsize = \"64MiB\"\nblock_size = \"64KiB\"\nways = 8\nbanks = 4\n\
             write_policy = \"read-only\"\nshared = true\n{}",
            cache_dir.path().display(),
            common::control_section(&socket)
        ),
    );
    assert!(
        nfs_cat(reader.endpoints(), &lab.export, &image) == want,
        "shared read differs"
    );
    let (ok, st) = common::ctl(&socket, &["status"]);
    assert!(ok, "{st}");
    assert_eq!(
        st["cache"]["misses"], 0,
        "image READs went past the shared cache: {st}"
    );
    assert!(st["cache"]["hits"].as_u64().unwrap() >= 6, "{st}");
    // The reader writes the scratch file (the owner has it cached): from then on the
    // reader must see the new bytes, not the owner's stale copy.
    let new = pseudo_random(old.len(), 33);
    let mut c = common::mount(reader.endpoints(), &lab.export).await;
    let fh = lookup_path(&mut c, &name, "scratch.bin").await;
    for (i, chunk) in new.chunks(256 << 10).enumerate() {
        let off = (i * (256 << 10)) as u64;
        common::write(
            &mut c,
            &fh,
            off,
            chunk,
            nfs3_types::nfs3::stable_how::FILE_SYNC,
        )
        .await;
    }
    assert!(
        nfs_cat(reader.endpoints(), &lab.export, &scratch) == new,
        "stale shared copy served"
    );
    reader.stop();
    assert_eq!(
        listing(),
        before,
        "the shared reader changed the owner's cache files"
    );
}

/// A READ the cache holds part of is assembled: the cached blocks from the cache, each
/// run of missing blocks with one READ of the next hop (the hop's READ count shows
/// exactly those), filled in (the same READ again is a hit). Also unaligned, and at the
/// end of the file (short, eof). Every byte is the server's.
#[tokio::test]
async fn a_partly_cached_read_fetches_only_the_missing_blocks() {
    use nfs3_types::nfs3::*;
    let lab = Lab::get();
    let (dir, name) = lab.scratch("cache-partial");
    let len = 1 << 20;
    let want = pseudo_random(len, 31);
    std::fs::write(dir.join("f"), &want).unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let sock = cache_dir.path().join("control.sock");
    let mut hop = Gridvfs::start(lab.endpoint(), "");
    let fr = front_with(
        &hop,
        &cache_dir.path().join("c"),
        &common::control_section(&sock),
    );
    let mut c = common::mount(fr.endpoints(), &lab.export).await;
    let fh = lookup_path(&mut c, &name, "f").await;
    let k = 64u64 << 10;
    let mut read = async |off: u64, count: u32| {
        let Nfs3Result::Ok(r) = c
            .read(&READ3args {
                file: fh.clone(),
                offset: off,
                count,
            })
            .await
            .unwrap()
        else {
            panic!("READ at {off}")
        };
        let end = (off as usize + count as usize).min(len);
        assert_eq!(
            r.data.as_ref(),
            &want[off as usize..end],
            "READ {off}+{count}"
        );
        r.eof
    };
    let partial = || {
        let (ok, st) = common::ctl(&sock, &["status"]);
        assert!(ok, "{st}");
        st["cache"]["partial_hits"].as_u64().unwrap()
    };
    // Blocks 0 and 2 cached (2 READs upstream).
    read(0, k as u32).await;
    read(2 * k, k as u32).await;
    // 0..4 blocks: 1 and 3 missing: 2 READs upstream, 1 partial hit.
    read(0, 4 * k as u32).await;
    assert_eq!(partial(), 1);
    // All cached now: a hit, no READ upstream.
    read(0, 4 * k as u32).await;
    assert_eq!(partial(), 1);
    // Unaligned, blocks 1..=4 with 4 missing: 1 READ upstream (of block 4's part).
    read(100_000, 200_000).await;
    assert_eq!(partial(), 2);
    // The end of the file: block 15 cached, 13 and 14 missing (one run, 1 READ); the
    // reply is short and says eof.
    read(15 * k, k as u32).await;
    assert!(read(900_000, 200_000).await, "eof at the end of the file");
    assert_eq!(partial(), 3);
    drop(fr);
    hop.stop();
    let reads = logged(&hop.log_text(), "READ=");
    assert_eq!(reads, 2 + 2 + 1 + 1 + 1, "READs that reached the next hop");
    std::fs::remove_dir_all(dir).unwrap();
}
