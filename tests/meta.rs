//! Metadata sidecars against the real parts: the lab's Ganesha behind a server-role
//! gridvfs (built-in SSH server), a client gridvfs dialling it through a relay that
//! counts (and may throttle) the bytes of the SSH connection, libnfs's nfs-cat, the
//! nfs3_client crate for single READs, and the kernel client in qemu.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::relay::Relay;
use common::ssh::*;
use common::{Gridvfs, Lab, ctl, nfs_cat, pseudo_random, sha256_file};
use gridvfs::meta::{Actions, Codec, Fetch, FileTime, Sidecar, Writeback, ZeroMap};

const BS: u64 = 4096;

/// A VM memory image: `mib` MiB, about 90% zero pages in runs, the rest like RAM
/// (text, code-like repeats, some random). Returns the bytes and the zero block runs.
fn memory_image(mib: usize, seed: u64) -> (Vec<u8>, Vec<std::ops::Range<u64>>) {
    let blocks = (mib << 20) as u64 / BS;
    let mut img = vec![0u8; (blocks * BS) as usize];
    let noise = pseudo_random(img.len(), seed);
    let text = b"gridvfs memory page: the quick brown fox jumps over the lazy dog 0123456789\n";
    let mut zeros = Vec::new();
    let mut b = 0u64;
    let mut x = seed | 1;
    while b < blocks {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // A data run of 1..=24 pages, then a zero run of 9x that on average.
        let data = 1 + x % 24;
        let zero = (data * 9 * (50 + (x >> 8) % 100)) / 100 + 1;
        for p in b..(b + data).min(blocks) {
            let page = &mut img[(p * BS) as usize..((p + 1) * BS) as usize];
            match p % 3 {
                0 => page.copy_from_slice(&noise[(p * BS) as usize..((p + 1) * BS) as usize]),
                1 => {
                    for (i, c) in page.iter_mut().enumerate() {
                        *c = text[i % text.len()];
                    }
                }
                _ => {
                    for (i, c) in page.iter_mut().enumerate() {
                        *c = (i as u8).wrapping_mul(7) ^ (p as u8);
                    }
                    page[0] |= 1; // never all zero
                }
            }
        }
        b += data;
        let end = (b + zero).min(blocks);
        if b < end {
            zeros.push(b..end);
        }
        b = end;
    }
    (img, zeros)
}

/// Writes a sidecar for `path` (zero runs known from the fixture) with `actions`.
fn write_sidecar(path: &Path, zeros: &[std::ops::Range<u64>], actions: Actions) {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).unwrap();
    let sc = Sidecar {
        size: md.len(),
        mtime: FileTime {
            secs: md.mtime(),
            nsecs: md.mtime_nsec() as u32,
        },
        digest: None,
        actions,
        zeros: ZeroMap::from_runs(BS as u32, md.len().div_ceil(BS), zeros.to_vec()),
        working_set: Vec::new(),
    };
    std::fs::write(sidecar_path(path), sc.encode()).unwrap();
}

fn sidecar_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap().to_str().unwrap();
    path.with_file_name(format!(".{name}.gvfsmeta"))
}

fn actions(fetch: Fetch, codec: Codec, writeback: Writeback) -> Actions {
    Actions {
        fetch,
        codec,
        level: 0,
        writeback,
    }
}

/// The chain: client proxy (cache, sidecars) → relay → server proxy → Ganesha.
struct Chain {
    server: Gridvfs,
    client: Gridvfs,
    /// The client proxy's `[upstream.ssh]` extra lines, for a restart.
    client_extra: String,
    relay: Relay,
    server_sock: PathBuf,
    client_sock: PathBuf,
    _dirs: Vec<tempfile::TempDir>,
    _keys: Keys,
}

impl Chain {
    fn start(lab: &Lab, down_rate: Option<u64>) -> Chain {
        Chain::start_with(lab, down_rate, false)
    }

    /// With `compression`, the client asks for SSH's zlib compression on the tunnel.
    fn start_with(lab: &Lab, down_rate: Option<u64>, compression: bool) -> Chain {
        let keys = Keys::new();
        let (state, cdir, socks) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let server_sock = socks.path().join("server.sock");
        let client_sock = socks.path().join("client.sock");
        let server = server_proxy_with(
            lab,
            &keys,
            state.path(),
            &common::control_section(&server_sock),
        );
        let relay = Relay::start(ssh_addr(&server), None, down_rate);
        keys.trust(relay.addr, &keys.host_pub);
        let client_extra = format!(
            "compression = {compression}\n{}{}",
            common::write_back_cache(cdir.path(), ""),
            common::control_section(&client_sock)
        );
        let client = client_proxy(&keys, relay.addr, "client_key", &client_extra);
        Chain {
            server,
            client,
            client_extra,
            relay,
            server_sock,
            client_sock,
            _dirs: vec![state, cdir, socks],
            _keys: keys,
        }
    }

    /// Stops the client proxy (SIGTERM) and starts it again on the same cache.
    fn restart_client(&mut self) {
        assert_eq!(self.client.stop(), Some(0), "{}", self.logs());
        self.client = client_proxy(
            &self._keys,
            self.relay.addr,
            "client_key",
            &self.client_extra,
        );
    }

    fn client_status(&self) -> serde_json::Value {
        ctl(&self.client_sock, &["status"]).1
    }

    fn server_status(&self) -> serde_json::Value {
        ctl(&self.server_sock, &["status"]).1
    }

    fn logs(&self) -> String {
        format!(
            "client log:\n{}\nserver log:\n{}",
            self.client.log_text(),
            self.server.log_text()
        )
    }
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Zero blocks cost nothing upstream: the bytes that cross the tunnel are about the
/// non-zero ones, the data is byte-equal, and the same file without a sidecar gives the
/// same bytes (and costs the whole file).
#[test]
fn zero_blocks_cost_no_upstream_bytes_and_read_back_equal() {
    let lab = Lab::get();
    let (dir, name) = open_scratch(&lab, "meta-zero");
    let (img, zeros) = memory_image(24, 5);
    let zero_bytes: u64 = zeros.iter().map(|r| (r.end - r.start) * BS).sum();
    let nonzero = img.len() as u64 - zero_bytes;
    assert!(
        zero_bytes * 100 / img.len() as u64 >= 85,
        "fixture is not mostly zero"
    );
    std::fs::write(dir.join("mem.vmss"), &img).unwrap();
    std::fs::write(dir.join("copy.vmss"), &img).unwrap();
    write_sidecar(
        &dir.join("mem.vmss"),
        &zeros,
        actions(Fetch::Blocks, Codec::Zstd, Writeback::Blocks),
    );

    let c = Chain::start(&lab, None);
    let before = c.relay.bytes().1;
    let got = nfs_cat(
        c.client.endpoints(),
        &lab.export,
        &format!("{name}/mem.vmss"),
    );
    common::assert_same_bytes("mem.vmss through the sidecar", &got, &img);
    let down = c.relay.bytes().1 - before;
    let st = c.client_status();
    let m = &st["meta"];
    assert_eq!(n(&m["sidecars_found"]), 1, "{st}\n{}", c.logs());
    assert_eq!(n(&m["zero_bytes"]), zero_bytes, "{st}");
    // nfs-cat reads 1 MiB at a time: every READ held some data, and only that crossed.
    assert!(n(&m["partial_reads"]) > 0, "{st}");
    // Encrypted, framed, with RPC headers: a few percent over the data, never the zeros.
    assert!(
        down < nonzero + nonzero / 10 + (1 << 20),
        "{down} bytes came down the tunnel for {nonzero} non-zero bytes"
    );
    // Upstream READs: at most one per data run and per 1 MiB READ it was split by, none
    // for zero runs (the sidecar's own READ included).
    let reads = n(&c.server_status()["calls"]["READ"]);
    let data_runs = zeros.len() as u64 + 1;
    assert!(
        reads > 0 && reads <= data_runs + 24 + 1,
        "{reads} upstream READs for {data_runs} data runs in 24 MiB"
    );

    // The same bytes without a sidecar: equal, and the whole file crosses.
    let before = c.relay.bytes().1;
    let got = nfs_cat(
        c.client.endpoints(),
        &lab.export,
        &format!("{name}/copy.vmss"),
    );
    common::assert_same_bytes("copy.vmss without a sidecar", &got, &img);
    let down_plain = c.relay.bytes().1 - before;
    assert!(
        down_plain > img.len() as u64,
        "{down_plain} bytes for a {} byte file read by blocks",
        img.len()
    );
    let st = c.client_status();
    assert_eq!(n(&st["meta"]["sidecars_absent"]), 1, "{st}");
    // By blocks: the whole file is READ upstream (at least one READ per MiB).
    let reads_plain = n(&c.server_status()["calls"]["READ"]) - reads;
    assert!(
        reads_plain >= 24,
        "{reads_plain} upstream READs without a sidecar"
    );
}

/// The unmodified kernel client in qemu reads a memory image through the zero map; its
/// sha256 matches the file on Ganesha's disk.
#[test]
fn kernel_client_reads_a_memory_image_through_the_zero_map() {
    let lab = Lab::get();
    let (dir, name) = open_scratch(&lab, "meta-kernel");
    let (img, zeros) = memory_image(16, 9);
    let zero_bytes: u64 = zeros.iter().map(|r| (r.end - r.start) * BS).sum();
    std::fs::write(dir.join("mem.vmss"), &img).unwrap();
    write_sidecar(
        &dir.join("mem.vmss"),
        &zeros,
        actions(Fetch::Blocks, Codec::Zstd, Writeback::Blocks),
    );
    let c = Chain::start(&lab, None);
    let out = common::boot_vm(&[
        ("PORT", c.client.addr.port().to_string()),
        ("EXPORT", lab.export.clone()),
        ("MB", "0".into()),
        ("READFILE", format!("{name}/mem.vmss")),
    ]);
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kernel client run failed:\n{console}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    let st = c.client_status();
    assert_eq!(n(&st["meta"]["sidecars_found"]), 1, "{st}");
    // The kernel reads ahead and in its own sizes: every zero byte it asked for was
    // answered locally, and it asked for nearly all of them.
    let z = n(&st["meta"]["zero_bytes"]);
    assert!(
        z >= zero_bytes * 9 / 10 && z <= zero_bytes,
        "{z} of {zero_bytes}: {st}"
    );
}

/// Whole-file fetch with each codec: byte-equal; one transfer, later reads local.
#[test]
fn whole_file_fetch_with_zstd_and_gzip_is_byte_equal() {
    let lab = Lab::get();
    let (dir, name) = open_scratch(&lab, "meta-whole");
    let c = Chain::start(&lab, None);
    for (i, codec) in [Codec::Zstd, Codec::Gzip].into_iter().enumerate() {
        let (img, zeros) = memory_image(20, 20 + i as u64);
        let zero_bytes: u64 = zeros.iter().map(|r| (r.end - r.start) * BS).sum();
        let file = format!("mem{i}.vmss");
        std::fs::write(dir.join(&file), &img).unwrap();
        write_sidecar(
            &dir.join(&file),
            &zeros,
            actions(Fetch::WholeFile, codec, Writeback::Blocks),
        );
        let before = c.relay.bytes().1;
        let got = nfs_cat(c.client.endpoints(), &lab.export, &format!("{name}/{file}"));
        common::assert_same_bytes(&format!("{file} ({codec:?})"), &got, &img);
        let down = c.relay.bytes().1 - before;
        let nonzero = img.len() as u64 - zero_bytes;
        // A third of the data is random: compressed, it still comes to well under the
        // non-zero bytes.
        assert!(
            down < nonzero * 3 / 4,
            "{codec:?}: {down} bytes for {nonzero}\n{}",
            c.logs()
        );
        let st = c.client_status();
        let w = &st["meta"]["whole"];
        assert_eq!(n(&w["fetches"]), i as u64 + 1, "{st}\n{}", c.logs());
        assert_eq!(n(&w["raw_bytes"]), {
            let mut t = 0;
            for j in 0..=i {
                let (im, z) = memory_image(20, 20 + j as u64);
                t += im.len() as u64 - z.iter().map(|r| (r.end - r.start) * BS).sum::<u64>();
            }
            t
        });
        // Again: from the whole file, nothing crosses but the call overhead.
        let reads_before = n(&w["reads"]);
        let before = c.relay.bytes().1;
        let got = nfs_cat(c.client.endpoints(), &lab.export, &format!("{name}/{file}"));
        common::assert_same_bytes("second read", &got, &img);
        let st = c.client_status();
        assert!(n(&st["meta"]["whole"]["reads"]) > reads_before, "{st}");
        assert!(
            c.relay.bytes().1 - before < 512 << 10,
            "second read crossed the tunnel"
        );
    }
    let st = c.server_status();
    assert_eq!(n(&st["server"]["file_fetches"]), 2, "{st}");
}

/// A working set in the sidecar of a file read by blocks crosses once, as one compressed
/// stream into the block cache (whole 64 KiB cache blocks around it); a READ inside it
/// waits for the stream and is then a cache hit, READs outside it or across its edge go
/// by blocks, and every byte is right. After a restart the cache still holds it (nothing
/// crosses again), and a re-profiled working set fetches only what the cache lacks.
#[test]
fn a_working_set_crosses_as_one_stream_into_the_cache() {
    let lab = Lab::get();
    let (dir, name) = open_scratch(&lab, "meta-workset");
    // A disk-like image: data blocks (half random, half text) with zero runs: 1 MiB at
    // 3 MiB, 2 MiB at 7 MiB, and every 7th block.
    let blocks = (16u64 << 20) / BS;
    let noise = pseudo_random((blocks * BS) as usize, 91);
    let text = b"root:x:0:0:root:/root:/bin/sh daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n";
    let mut img = vec![0u8; (blocks * BS) as usize];
    let mut zeros = Vec::new();
    for b in 0..blocks {
        let page = &mut img[(b * BS) as usize..((b + 1) * BS) as usize];
        if (768..1024).contains(&b) || (1792..2304).contains(&b) || b % 7 == 3 {
            zeros.push(b..b + 1);
        } else if b % 2 == 0 {
            page.copy_from_slice(&noise[(b * BS) as usize..((b + 1) * BS) as usize]);
        } else {
            for (i, c) in page.iter_mut().enumerate() {
                *c = text[(i + b as usize) % text.len()];
            }
        }
    }
    let file = dir.join("disk.img");
    std::fs::write(&file, &img).unwrap();
    // Unaligned ranges: they are widened to whole 64 KiB cache blocks.
    let mib = 1u64 << 20;
    let g = 64u64 << 10;
    let ws = vec![
        mib + 100..mib + mib / 2,
        5 * mib..6 * mib + 3,
        12 * mib + 4096..12 * mib + 300_000,
    ];
    write_sidecar(
        &file,
        &zeros,
        actions(Fetch::Blocks, Codec::Zstd, Writeback::Blocks),
    );
    let mut sc = Sidecar::parse(&std::fs::read(sidecar_path(&file)).unwrap()).unwrap();
    sc.working_set = ws.clone();
    std::fs::write(sidecar_path(&file), sc.encode()).unwrap();
    let cover: Vec<std::ops::Range<u64>> = ws
        .iter()
        .map(|r| r.start / g * g..r.end.div_ceil(g) * g)
        .collect();
    let cover_bytes: u64 = cover.iter().map(|r| r.end - r.start).sum();
    let mut c = Chain::start(&lab, Some(4_000_000));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let first = (cover[2].start / BS..cover[2].end / BS)
        .rev()
        .find(|b| !sc.zeros.is_zero_block(*b))
        .expect("data in the last range")
        * BS;
    let at = |o: u64, k: u64| &img[o as usize..(o + k) as usize];
    rt.block_on(async {
        let mut cl = common::mount(c.client.endpoints(), &lab.export).await;
        let fh = common::lookup_path(&mut cl, &name, "disk.img").await;
        // The first READ (of a data block near the end of the working set; a READ of
        // zero blocks alone is answered by the zero map) starts the stream and waits for
        // it to pass its range.
        let r = common::read(&mut cl, &fh, first, 4096).await;
        assert_eq!(&r.data[..], at(first, 4096));
        let st = c.client_status();
        assert_eq!(n(&st["meta"]["whole"]["working_set_waits"]), 1, "{st}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while n(&c.client_status()["meta"]["whole"]["working_sets"]) == 0 {
            assert!(Instant::now() < deadline, "no working set\n{}", c.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        let st = c.client_status();
        // Every byte of the cover crossed once (its zero blocks too, compressed to
        // nearly nothing), in one transfer.
        assert_eq!(n(&st["meta"]["whole"]["raw_bytes"]), cover_bytes, "{st}");
        assert_eq!(n(&st["meta"]["whole"]["fetches"]), 1, "{st}");
        // Inside it: cache hits, nothing crosses but the calls.
        let before = (c.relay.bytes().1, n(&st["cache"]["hits"]));
        for r in &cover {
            let mut o = r.start;
            while o < r.end {
                let k = (r.end - o).min(65536);
                let got = common::read(&mut cl, &fh, o, k as u32).await;
                assert_eq!(&got.data[..], at(o, k), "working-set READ at {o}");
                o += k;
            }
        }
        let st = c.client_status();
        assert!(n(&st["cache"]["hits"]) > before.1 + 20, "{st}");
        assert!(
            c.relay.bytes().1 - before.0 < 256 << 10,
            "working-set READs crossed the tunnel: {} bytes",
            c.relay.bytes().1 - before.0
        );
        // Outside it (data blocks, not the zero runs), and across its edge: by blocks
        // over the tunnel, right bytes.
        for (o, k) in [(10 * mib, 65536), (mib + mib / 2 - 4096, 8192), (0, 4096)] {
            let down = c.relay.bytes().1;
            let got = common::read(&mut cl, &fh, o, k as u32).await;
            assert_eq!(
                &got.data[..],
                at(o, k),
                "READ at {o} outside the working set"
            );
            assert!(c.relay.bytes().1 > down, "READ at {o} did not cross");
        }
        let all = common::read_all(&mut cl, &fh).await;
        common::assert_same_bytes("whole file", &all, &img);
    });
    let st = c.server_status();
    assert_eq!(n(&st["server"]["file_fetches"]), 1, "{st}");

    // Restarted on the same cache: the working set is still there, nothing crosses.
    c.restart_client();
    let read_at = |c: &Chain, o: u64| {
        rt.block_on(async {
            let mut cl = common::mount(c.client.endpoints(), &lab.export).await;
            let fh = common::lookup_path(&mut cl, &name, "disk.img").await;
            let got = common::read(&mut cl, &fh, o, 65536).await;
            assert_eq!(&got.data[..], at(o, 65536), "READ at {o} after a restart");
        })
    };
    read_at(&c, 5 * mib);
    let st = c.client_status();
    let w = &st["meta"]["whole"];
    assert_eq!(
        (n(&w["fetches"]), n(&w["failed"])),
        (0, 0),
        "{st}\n{}",
        c.logs()
    );
    assert!(n(&st["cache"]["hits"]) >= 1, "{st}");
    // Re-profiled: the working set is now 5..7 MiB, of which the cache holds what the
    // first stream brought (5 MiB to 6 MiB + 64 KiB): only the rest crosses.
    sc.working_set = std::iter::once(5 * mib..7 * mib).collect();
    std::fs::write(sidecar_path(&file), sc.encode()).unwrap();
    c.restart_client();
    read_at(&c, 6 * mib + 512 * 1024);
    let deadline = Instant::now() + Duration::from_secs(30);
    while n(&c.client_status()["meta"]["whole"]["working_sets"]) == 0 {
        assert!(
            Instant::now() < deadline,
            "no new working set\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = c.client_status();
    assert_eq!(
        n(&st["meta"]["whole"]["raw_bytes"]),
        mib - g,
        "{st}\n{}",
        c.logs()
    );
    read_at(&c, 5 * mib + 768 * 1024);
}

/// A client writes into the working set while its stream runs (found in review: a
/// frame fetched before the write must never land on the written block, even once the
/// block is written back): the stream stops at its next frame, its waiting READs go on
/// by blocks, the written bytes are read back, and they reach the server at the flush.
#[test]
fn a_write_during_a_working_set_stream_wins() {
    let lab = Lab::get();
    let (dir, name) = open_scratch(&lab, "meta-ws-write");
    // 8 MiB of incompressible data, all of it the working set: ~4 s at 2 MB/s.
    let img = pseudo_random(8 << 20, 17);
    let file = dir.join("disk.img");
    std::fs::write(&file, &img).unwrap();
    // The mapped account writes it back at the flush.
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    write_sidecar(
        &file,
        &[],
        actions(Fetch::Blocks, Codec::Zstd, Writeback::Blocks),
    );
    let mut sc = Sidecar::parse(&std::fs::read(sidecar_path(&file)).unwrap()).unwrap();
    sc.working_set = std::iter::once(0..img.len() as u64).collect();
    std::fs::write(sidecar_path(&file), sc.encode()).unwrap();
    let c = Chain::start(&lab, Some(2_000_000));
    let at = (7 << 20) + 8192u64;
    let mine = vec![0x5au8; 4096];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cl = common::mount(c.client.endpoints(), &lab.export).await;
        let fh = common::lookup_path(&mut cl, &name, "disk.img").await;
        // Starts the stream (and waits only for the first block).
        let r = common::read(&mut cl, &fh, 0, 4096).await;
        assert_eq!(&r.data[..], &img[..4096]);
        // Near the end, long before the stream gets there.
        common::write(
            &mut cl,
            &fh,
            at,
            &mine,
            nfs3_types::nfs3::stable_how::UNSTABLE,
        )
        .await;
        common::commit(&mut cl, &fh).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = common::read(&mut cl, &fh, at, 4096).await;
            assert_eq!(&got.data[..], &mine[..], "the write was overwritten");
            let st = c.client_status();
            if n(&st["meta"]["whole"]["working_sets"]) == 0
                && c.client.log_text().contains("working-set fetch stopped")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the stream never stopped\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let got = common::read(&mut cl, &fh, at - 8192, 16384).await;
        let mut want = img[(at - 8192) as usize..(at + 8192) as usize].to_vec();
        want[8192..12288].copy_from_slice(&mine);
        assert_eq!(&got.data[..], &want[..]);
    });
    let (ok, st) = ctl(&c.client_sock, &["flush"]);
    assert!(ok, "{st}");
    let disk = std::fs::read(&file).unwrap();
    assert_eq!(&disk[at as usize..at as usize + 4096], &mine[..]);
    assert_eq!(&disk[..at as usize], &img[..at as usize]);
}

/// Regression (found by the clone suite): over a tunnel with SSH compression, a channel
/// packet of the full 256 KiB of already compressed (incompressible) frame bytes grows a
/// little in zlib and passed russh's packet limit on the receiving side, which then
/// closed the whole session — every RPC channel with it — and the transfer fell back to
/// blocks. Channel packets now leave room for that growth.
#[test]
fn incompressible_frames_cross_a_compressed_tunnel() {
    let lab = Lab::get();
    let (dir, name) = open_scratch(&lab, "meta-zlib");
    let img = pseudo_random(8 << 20, 5);
    std::fs::write(dir.join("random.bin"), &img).unwrap();
    write_sidecar(
        &dir.join("random.bin"),
        &[],
        actions(Fetch::WholeFile, Codec::Zstd, Writeback::Blocks),
    );
    let c = Chain::start_with(&lab, None, true);
    let got = nfs_cat(
        c.client.endpoints(),
        &lab.export,
        &format!("{name}/random.bin"),
    );
    common::assert_same_bytes("random.bin", &got, &img);
    // The copy is made durable, then counted: the last READ may be answered before.
    let deadline = Instant::now() + Duration::from_secs(30);
    while n(&c.client_status()["meta"]["whole"]["fetches"]) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = c.client_status();
    let w = &st["meta"]["whole"];
    assert_eq!(n(&w["failed"]), 0, "{st}\n{}", c.logs());
    assert_eq!(n(&w["fetches"]), 1, "{st}\n{}", c.logs());
    assert!(
        !c.client
            .log_text()
            .contains("connection to the next hop lost"),
        "{}",
        c.logs()
    );
}

/// A READ in the middle of a file being fetched whole is answered as soon as its range
/// arrived, before the transfer ends (the tunnel is throttled to 2 MB/s).
#[test]
fn a_read_in_the_middle_is_answered_before_the_transfer_ends() {
    let lab = Lab::get();
    let (dir, name) = open_scratch(&lab, "meta-middle");
    // Incompressible and without zeros: 12 MiB take ~6 s at 2 MB/s.
    let img = pseudo_random(12 << 20, 77);
    std::fs::write(dir.join("big.bin"), &img).unwrap();
    write_sidecar(
        &dir.join("big.bin"),
        &[],
        actions(Fetch::WholeFile, Codec::Zstd, Writeback::Blocks),
    );
    let c = Chain::start(&lab, Some(2_000_000));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cl = common::mount(c.client.endpoints(), &lab.export).await;
        let fh = common::lookup_path(&mut cl, &name, "big.bin").await;
        let t0 = Instant::now();
        // The first READ starts the transfer.
        let first = common::read(&mut cl, &fh, 0, 65536).await;
        assert_eq!(&first.data[..], &img[..65536]);
        let mid = 6 << 20;
        let r = common::read(&mut cl, &fh, mid, 65536).await;
        let at = t0.elapsed();
        assert_eq!(&r.data[..], &img[mid as usize..mid as usize + 65536]);
        let st = c.client_status();
        assert_eq!(
            n(&st["meta"]["whole"]["fetches"]),
            0,
            "the transfer had already ended when the middle READ was answered ({at:?}): {st}"
        );
        // And the transfer completes.
        let deadline = Instant::now() + Duration::from_secs(60);
        while n(&c.client_status()["meta"]["whole"]["fetches"]) == 0 {
            assert!(
                Instant::now() < deadline,
                "transfer never completed\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            at < t0.elapsed(),
            "middle READ at {at:?}, transfer done at {:?}",
            t0.elapsed()
        );
        let all = common::read_all(&mut cl, &fh).await;
        common::assert_same_bytes("after the transfer", &all, &img);
    });
}

/// Whole-file write-back: blocks written through the client proxy go back over the file
/// channel (no NFS WRITE reaches the server proxy), committed, byte-equal on disk.
#[test]
fn whole_file_write_back_round_trip() {
    let lab = Lab::get();
    let (dir, name) = open_scratch(&lab, "meta-upload");
    let (mut img, zeros) = memory_image(8, 31);
    let path = dir.join("disk.img");
    std::fs::write(&path, &img).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    write_sidecar(
        &path,
        &zeros,
        actions(Fetch::Blocks, Codec::Gzip, Writeback::WholeFile),
    );
    let c = Chain::start(&lab, None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cl = common::mount(c.client.endpoints(), &lab.export).await;
        let fh = common::lookup_path(&mut cl, &name, "disk.img").await;
        // Read a bit (finds the sidecar), then overwrite three spans.
        let _ = common::read(&mut cl, &fh, 0, 4096).await;
        for (off, seed) in [(4096u64, 1u64), (3 << 20, 2), ((8 << 20) - 100_000, 3)] {
            let data = pseudo_random(70_000, seed);
            common::write(
                &mut cl,
                &fh,
                off,
                &data,
                nfs3_types::nfs3::stable_how::UNSTABLE,
            )
            .await;
            common::apply(&mut img, off, &data);
        }
        let _ = common::commit(&mut cl, &fh).await;
    });
    let (ok, v) = ctl(&c.client_sock, &["flush"]);
    assert!(ok, "flush: {v}\n{}", c.logs());
    assert_eq!(sha256_file(&path), {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), &img).unwrap();
        sha256_file(tmp.path())
    });
    let st = c.client_status();
    assert!(n(&st["meta"]["uploads"]) >= 1, "{st}\n{}", c.logs());
    assert_eq!(n(&st["meta"]["upload_bytes"]), 3 * 70_000, "{st}");
    let ss = c.server_status();
    assert!(n(&ss["server"]["file_stores"]) >= 1, "{ss}");
    assert_eq!(n(&ss["calls"]["WRITE"]), 0, "WRITEs went by RPC: {ss}");
}

/// A stale sidecar (file changed after it was made) and broken ones (truncated, random,
/// over the size limit) are ignored: right bytes, counted, logged, proxy alive.
#[test]
fn stale_and_broken_sidecars_are_ignored() {
    let lab = Lab::get();
    let (dir, name) = open_scratch(&lab, "meta-broken");
    let (img, zeros) = memory_image(4, 41);
    let acts = actions(Fetch::WholeFile, Codec::Zstd, Writeback::Blocks);
    // Stale: made, then the file is rewritten with other bytes of the same size.
    std::fs::write(dir.join("stale.img"), &img).unwrap();
    write_sidecar(&dir.join("stale.img"), &zeros, acts);
    std::thread::sleep(Duration::from_millis(20));
    let other = pseudo_random(img.len(), 3);
    std::fs::write(dir.join("stale.img"), &other).unwrap();
    // Broken ones.
    let good = {
        std::fs::write(dir.join("t.img"), &img).unwrap();
        write_sidecar(&dir.join("t.img"), &zeros, acts);
        std::fs::read(sidecar_path(&dir.join("t.img"))).unwrap()
    };
    std::fs::write(sidecar_path(&dir.join("t.img")), &good[..good.len() / 2]).unwrap();
    std::fs::write(dir.join("r.img"), &img).unwrap();
    std::fs::write(sidecar_path(&dir.join("r.img")), pseudo_random(5000, 8)).unwrap();
    std::fs::write(dir.join("o.img"), &img).unwrap();
    let mut big = good.clone();
    big.resize(17 << 20, 0);
    std::fs::write(sidecar_path(&dir.join("o.img")), &big).unwrap();

    let c = Chain::start(&lab, None);
    let got = nfs_cat(
        c.client.endpoints(),
        &lab.export,
        &format!("{name}/stale.img"),
    );
    common::assert_same_bytes("stale.img", &got, &other);
    for f in ["t.img", "r.img", "o.img"] {
        let got = nfs_cat(c.client.endpoints(), &lab.export, &format!("{name}/{f}"));
        common::assert_same_bytes(f, &got, &img);
    }
    let st = c.client_status();
    assert_eq!(n(&st["meta"]["sidecars_stale"]), 1, "{st}");
    assert_eq!(n(&st["meta"]["sidecars_bad"]), 3, "{st}\n{}", c.logs());
    assert_eq!(n(&st["meta"]["sidecars_found"]), 0, "{st}");
    assert_eq!(n(&st["meta"]["whole"]["fetches"]), 0, "{st}");
    let log = c.client.log_text();
    assert!(log.contains("stale sidecar ignored"), "{log}");
    assert!(
        log.contains("checksum") || log.contains("malformed"),
        "{log}"
    );
}

/// The file channel obeys the server's identity mapping: a file the account may not
/// read is not fetched whole (the client falls back, and gets the server's refusal).
#[test]
fn whole_file_fetch_obeys_the_identity_mapping() {
    let lab = Lab::get();
    let (dir, name) = open_scratch(&lab, "meta-denied");
    let (img, zeros) = memory_image(2, 51);
    let path = dir.join("secret.img");
    std::fs::write(&path, &img).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    write_sidecar(
        &path,
        &zeros,
        actions(Fetch::WholeFile, Codec::Zstd, Writeback::Blocks),
    );
    let c = Chain::start(&lab, None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // READ straight away (libnfs would stop at ACCESS).
        let mut cl = common::mount(c.client.endpoints(), &lab.export).await;
        let fh = common::lookup_path(&mut cl, &name, "secret.img").await;
        let args = nfs3_types::nfs3::READ3args {
            file: fh,
            offset: 0,
            count: 65536,
        };
        match cl.read(&args).await.unwrap() {
            nfs3_types::nfs3::Nfs3Result::Err((stat, _)) => {
                assert_eq!(stat, nfs3_types::nfs3::nfsstat3::NFS3ERR_ACCES)
            }
            nfs3_types::nfs3::Nfs3Result::Ok(_) => panic!("read a 0600 root file as uid {UID}"),
        }
    });
    let st = c.client_status();
    assert_eq!(n(&st["meta"]["whole"]["failed"]), 1, "{st}\n{}", c.logs());
    assert_eq!(n(&st["meta"]["whole"]["fetches"]), 0, "{st}");
    assert!(c.server.log_text().contains("ACCES"), "{}", c.logs());
}

/// The file channel spoken directly (the library's SSH client, the product's key): a
/// handle the server never issued is refused (DENIED) without reaching Ganesha, a
/// malformed request gets BAD_REQUEST, and the server keeps serving.
#[test]
fn the_file_channel_refuses_forged_handles_and_malformed_requests() {
    use gridvfs::meta::channel::{self, Op, Request};
    use gridvfs::ssh::client::{ChannelTarget, SshClientOptions, SshConnector};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let lab = Lab::get();
    let keys = Keys::new();
    let state = tempfile::tempdir().unwrap();
    let sock = state.path().join("s.sock");
    let server = server_proxy_with(&lab, &keys, state.path(), &common::control_section(&sock));
    keys.trust(ssh_addr(&server), &keys.host_pub);
    let conn = SshConnector::new(SshClientOptions {
        user: "grid".into(),
        host: ssh_addr(&server).ip().to_string(),
        port: ssh_addr(&server).port(),
        key: keys.path("client_key"),
        known_hosts: keys.path("known_hosts"),
        accept_new: false,
        target: ChannelTarget::Subsystem(gridvfs::ssh::SUBSYSTEM.into()),
        window: 8 << 20,
        connect_timeout: Duration::from_secs(10),
        keepalive: Duration::from_secs(15),
        compression: false,
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let forged = Request {
            op: Op::Fetch,
            fh: vec![0x42; 28],
            cred: gridvfs::upstream::calls::Cred {
                flavor: 0,
                body: Vec::new(),
            },
            size: 4096,
            mtime: (0, 0),
            codec: Codec::Zstd,
            level: 0,
            zeros: ZeroMap::from_runs(4096, 1, Vec::new()),
        };
        let mut ch = conn.open_file_channel(&forged.encode()).await.unwrap();
        assert_eq!(ch.read_u32().await.unwrap(), channel::DENIED);
        // Garbage where the request should be.
        let mut junk = 64u32.to_be_bytes().to_vec();
        junk.extend_from_slice(&pseudo_random(64, 4));
        let mut ch = conn.open_file_channel(&junk).await.unwrap();
        assert_eq!(ch.read_u32().await.unwrap(), channel::BAD_REQUEST);
        // An announced request far over the limit: refused before anything is read.
        let mut ch = conn
            .open_file_channel(&u32::MAX.to_be_bytes())
            .await
            .unwrap();
        assert_eq!(ch.read_u32().await.unwrap(), channel::BAD_REQUEST);
        let _ = ch.flush().await;
    });
    let (_, st) = ctl(&sock, &["status"]);
    assert_eq!(n(&st["server"]["refused"]), 1, "{st}");
    assert_eq!(n(&st["calls"]["READ"]), 0, "{st}");
    assert_eq!(n(&st["server"]["file_fetches"]), 0, "{st}");
    // Still serving: an ordinary round trip through a client proxy.
    let client = client_proxy(&keys, ssh_addr(&server), "client_key", "");
    let (dir, name) = open_scratch(&lab, "meta-forged");
    std::fs::write(dir.join("f"), b"still serving").unwrap();
    assert_eq!(
        nfs_cat(client.endpoints(), &lab.export, &format!("{name}/f")),
        b"still serving"
    );
}

/// A file changed at the server after the client proxy learned its attributes (session
/// consistency trusts them): the server proxy refuses the whole-file fetch as stale, the
/// client proxy forgets the attributes, and the new bytes are read by blocks.
#[test]
fn a_file_changed_behind_the_client_proxy_is_read_by_blocks() {
    let lab = Lab::get();
    let (dir, name) = open_scratch(&lab, "meta-changed");
    let (img, zeros) = memory_image(4, 61);
    let path = dir.join("mem.vmss");
    std::fs::write(&path, &img).unwrap();
    write_sidecar(
        &path,
        &zeros,
        actions(Fetch::WholeFile, Codec::Zstd, Writeback::Blocks),
    );
    let c = Chain::start(&lab, None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cl = common::mount(c.client.endpoints(), &lab.export).await;
        let fh = common::lookup_path(&mut cl, &name, "mem.vmss").await;
        // Rewritten behind the proxy's back: same size, data everywhere.
        std::thread::sleep(Duration::from_millis(20));
        let other = pseudo_random(img.len(), 62);
        std::fs::write(&path, &other).unwrap();
        let got = common::read_all(&mut cl, &fh).await;
        common::assert_same_bytes("file changed behind the proxy", &got, &other);
    });
    let st = c.client_status();
    assert_eq!(n(&st["meta"]["whole"]["failed"]), 1, "{st}\n{}", c.logs());
    assert_eq!(n(&st["meta"]["whole"]["fetches"]), 0, "{st}");
    assert!(
        c.server.log_text().contains("changed since its sidecar"),
        "{}",
        c.logs()
    );
}

/// `gridvfs workset --socket S PATH` as an operator runs it; (stdout, stderr, exit code).
fn workset_cli(socket: &Path, path: &str) -> (String, String, i32) {
    let out = std::process::Command::new(common::bin())
        .arg("workset")
        .arg("--socket")
        .arg(socket)
        .arg(path)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// A client proxy with `record_working_set = true` records the byte ranges of every
/// READ (hits and misses alike), and `gridvfs workset` dumps them by path, merged and
/// clipped to the file's size; the dump written into the sidecar on the server side
/// (`gridvfs meta workset`) holds exactly those ranges. A proxy without it says so.
#[test]
fn a_recorded_working_set_is_dumped_by_path() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("meta-record");
    let size = (1u64 << 20) + 100;
    let img = pseudo_random(size as usize, 91);
    std::fs::write(dir.join("disk.img"), &img).unwrap();
    std::fs::write(dir.join("other.img"), pseudo_random(10_000, 92)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("ctl.sock");
    let cache = |d: &str| {
        format!(
            "[cache]\ndir = \"{}\"\nsize = \"64MiB\"\nways = 8\nbanks = 4\n",
            tmp.path().join(d).display()
        )
    };
    let p = Gridvfs::start_with(
        lab.endpoint(),
        "127.0.0.1:0",
        "",
        &format!(
            "{}[meta]\nrecord_working_set = true\n{}",
            cache("cache"),
            common::control_section(&socket)
        ),
    );
    let path = format!("{}/{name}/disk.img", lab.export);
    // Before any READ: nothing to dump.
    let (_, err, code) = workset_cli(&socket, &path);
    assert_eq!(code, 1);
    assert!(err.contains("nothing recorded: no READ of it"), "{err}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cl = common::mount(p.endpoints(), &lab.export).await;
        let fh = common::lookup_path(&mut cl, &name, "disk.img").await;
        // Touching, overlapping, apart (twice: the second time a cache hit, recorded
        // all the same), across the end of file.
        for (off, count) in [
            (0u64, 4096u32),
            (4096, 4096),
            (65_536, 1000),
            (60_000, 6000),
            (70_000, 10),
            (70_000, 10),
            (size - 50, 4096),
        ] {
            let r = common::read(&mut cl, &fh, off, count).await;
            let end = (off + count as u64).min(size) as usize;
            assert_eq!(&r.data[..], &img[off as usize..end], "READ at {off}");
        }
        let other = common::lookup_path(&mut cl, &name, "other.img").await;
        let _ = common::read(&mut cl, &other, 100, 200).await;
    });

    let (out, err, code) = workset_cli(&socket, &path);
    assert_eq!(code, 0, "{err}\n{}", p.log_text());
    let bytes = 8192 + 6536 + 10 + 50;
    assert_eq!(
        out,
        format!(
            "# gridvfs working set of {path}: {size} bytes, 4 ranges, {bytes} bytes\n\
             0 8192\n\
             60000 6536\n\
             70000 10\n\
             {} 50\n",
            size - 50
        )
    );
    let (ok, st) = ctl(&socket, &["status"]);
    assert!(ok, "{st}");
    let w = &st["meta"]["workset"];
    assert_eq!(w["recording"], true, "{st}");
    assert_eq!((n(&w["files"]), n(&w["ranges"])), (2, 5), "{st}");
    // As asked: the READ across the end of file counts its whole 4096 bytes here.
    assert_eq!(n(&w["bytes"]), 8192 + 6536 + 10 + 4096 + 200, "{st}");
    assert_eq!((n(&w["files_not_recorded"]), n(&w["truncated"])), (0, 0));
    assert!(
        n(&st["cache"]["hits"]) >= 1,
        "the repeated READ was no hit: {st}"
    );

    // On the server's side: the dump goes into the file's sidecar as it is.
    let data = dir.join("disk.img");
    let ws = tmp.path().join("ws.txt");
    std::fs::write(&ws, &out).unwrap();
    let meta = |args: &[&str]| {
        let o = std::process::Command::new(common::bin())
            .arg("meta")
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "meta {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    meta(&["generate", data.to_str().unwrap()]);
    meta(&[
        "workset",
        "--from",
        ws.to_str().unwrap(),
        data.to_str().unwrap(),
    ]);
    let sc = Sidecar::parse(&std::fs::read(sidecar_path(&data)).unwrap()).unwrap();
    assert_eq!(
        sc.working_set,
        [0..8192, 60_000..66_536, 70_000..70_010, size - 50..size]
    );

    // A file never read, and a path outside the mounted export: clear errors, exit 1.
    std::fs::write(dir.join("unread.img"), b"x").unwrap();
    let (out, err, code) = workset_cli(&socket, &format!("{}/{name}/unread.img", lab.export));
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.contains("nothing recorded: no READ of it was recorded since the proxy started"),
        "{err}"
    );
    let (_, err, code) = workset_cli(&socket, "/elsewhere/disk.img");
    assert_eq!(code, 1);
    assert!(
        err.contains("not under an export mounted through this proxy"),
        "{err}"
    );

    // A proxy restarted on the warm cache, with sidecars off (the sidecar now made
    // plays no part): a READ answered from the cache alone is recorded too.
    let mut p = p;
    assert_eq!(p.stop(), Some(0));
    let p = Gridvfs::start_with(
        lab.endpoint(),
        "127.0.0.1:0",
        "",
        &format!(
            "{}[meta]\nsidecars = false\nrecord_working_set = true\n{}",
            cache("cache"),
            common::control_section(&socket)
        ),
    );
    rt.block_on(async {
        let mut cl = common::mount(p.endpoints(), &lab.export).await;
        let fh = common::lookup_path(&mut cl, &name, "disk.img").await;
        let r = common::read(&mut cl, &fh, 70_000, 10).await;
        assert_eq!(&r.data[..], &img[70_000..70_010]);
    });
    let (_, st) = ctl(&socket, &["status"]);
    assert_eq!(
        (n(&st["cache"]["hits"]), n(&st["cache"]["misses"])),
        (1, 0),
        "{st}"
    );
    assert_eq!(st["meta"]["enabled"], false, "{st}");
    assert_eq!(st["meta"]["workset"]["recording"], true, "{st}");
    let (out, err, code) = workset_cli(&socket, &path);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("# gridvfs working set of {path}: {size} bytes, 1 ranges, 10 bytes\n70000 10\n")
    );

    // A proxy with the recording off says so.
    let off_socket = tmp.path().join("off.sock");
    let q = Gridvfs::start_with(
        lab.endpoint(),
        "127.0.0.1:0",
        "",
        &format!(
            "{}{}",
            cache("cache-off"),
            common::control_section(&off_socket)
        ),
    );
    let _ = nfs_cat(q.endpoints(), &lab.export, &format!("{name}/other.img"));
    let (out, err, code) = workset_cli(&off_socket, &path);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(
        err,
        "gridvfs: record_working_set is off in this proxy's config\n"
    );
    let (_, st) = ctl(&off_socket, &["status"]);
    assert_eq!(st["meta"]["workset"]["recording"], false, "{st}");
    assert_eq!(n(&st["meta"]["workset"]["files"]), 0, "{st}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Runs `gridvfs prefetch --socket SOCKET PATHS...`: (exit status ok, one JSON value per
/// stdout line, stderr).
fn prefetch_cli(socket: &Path, paths: &[String]) -> (bool, Vec<serde_json::Value>, String) {
    prefetch_cli_as(socket, None, paths)
}

/// [`prefetch_cli`] with `--as ID`.
fn prefetch_cli_as(
    socket: &Path,
    id: Option<&str>,
    paths: &[String],
) -> (bool, Vec<serde_json::Value>, String) {
    let mut cmd = std::process::Command::new(common::bin());
    cmd.arg("prefetch").arg("--socket").arg(socket);
    if let Some(id) = id {
        cmd.arg("--as").arg(id);
    }
    let out = cmd.args(paths).output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `gridvfs prefetch` (middleware, as a session begins) moves a memory image whole and a
/// disk's working set before any READ: both transfers run to the end with no client
/// call, in the order asked, and the VM's READs then cross nothing but the calls and get
/// the right bytes. A file without a sidecar starts nothing and says why; a missing file
/// and a path outside the mounted export are errors (exit 1) that name the path.
#[test]
fn prefetch_moves_files_before_they_are_read() {
    let lab = Lab::get();
    let (dir, name) = open_scratch(&lab, "meta-prefetch");
    let (img, zeros) = memory_image(12, 77);
    std::fs::write(dir.join("mem.vmss"), &img).unwrap();
    write_sidecar(
        &dir.join("mem.vmss"),
        &zeros,
        actions(Fetch::WholeFile, Codec::Zstd, Writeback::Blocks),
    );
    let nonzero = img.len() as u64 - zeros.iter().map(|r| (r.end - r.start) * BS).sum::<u64>();
    let disk = pseudo_random(8 << 20, 78);
    std::fs::write(dir.join("disk.img"), &disk).unwrap();
    write_sidecar(
        &dir.join("disk.img"),
        &[],
        actions(Fetch::Blocks, Codec::Zstd, Writeback::Blocks),
    );
    let mib = 1u64 << 20;
    let ws = [mib..2 * mib, 5 * mib..5 * mib + 256 * 1024];
    let mut sc =
        Sidecar::parse(&std::fs::read(sidecar_path(&dir.join("disk.img"))).unwrap()).unwrap();
    sc.working_set = ws.to_vec();
    std::fs::write(sidecar_path(&dir.join("disk.img")), sc.encode()).unwrap();
    std::fs::write(dir.join("plain.bin"), pseudo_random(2 << 20, 79)).unwrap();

    let c = Chain::start(&lab, Some(20_000_000));
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The proxy resolves paths from an export mounted through it.
    rt.block_on(common::mount(c.client.endpoints(), &lab.export));
    let path = |f: &str| format!("{}/{name}/{f}", lab.export.trim_end_matches('/'));
    let before = c.relay.bytes().1;
    let (ok, said, err) = prefetch_cli(&c.client_sock, &[path("mem.vmss"), path("disk.img")]);
    assert!(ok, "{said:?} {err}\n{}", c.logs());
    assert_eq!(said.len(), 2, "{said:?}");
    assert_eq!(said[0]["fetch"], "whole-file", "{said:?}");
    assert_eq!(n(&said[0]["bytes"]), nonzero, "{said:?}");
    assert_eq!(said[1]["fetch"], "working-set", "{said:?}");
    assert_eq!(n(&said[1]["bytes"]), mib + 256 * 1024, "{said:?}");
    // Both transfers run to the end with no READ from any client.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let w = &c.client_status()["meta"]["whole"];
        if n(&w["fetches"]) == 2 && n(&w["working_sets"]) == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{w}\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = c.client_status();
    assert_eq!(
        n(&st["meta"]["whole"]["raw_bytes"]),
        nonzero + mib + 256 * 1024,
        "{st}"
    );
    assert_eq!(n(&st["meta"]["whole"]["failed"]), 0, "{st}");
    let moved = c.relay.bytes().1 - before;
    assert!(moved > mib, "only {moved} bytes crossed for the transfers");
    // The VM's READs: right bytes, nothing crosses but the calls.
    let before = c.relay.bytes().1;
    let got = nfs_cat(
        c.client.endpoints(),
        &lab.export,
        &format!("{name}/mem.vmss"),
    );
    common::assert_same_bytes("mem.vmss after prefetch", &got, &img);
    rt.block_on(async {
        let mut cl = common::mount(c.client.endpoints(), &lab.export).await;
        let fh = common::lookup_path(&mut cl, &name, "disk.img").await;
        for r in &ws {
            let mut o = r.start;
            while o < r.end {
                let k = (r.end - o).min(65536);
                let got = common::read(&mut cl, &fh, o, k as u32).await;
                assert_eq!(
                    &got.data[..],
                    &disk[o as usize..(o + k) as usize],
                    "disk READ at {o}"
                );
                o += k;
            }
        }
    });
    let crossed = c.relay.bytes().1 - before;
    assert!(
        crossed < 512 << 10,
        "{crossed} bytes crossed for READs of prefetched data\n{}",
        c.logs()
    );
    // A second prefetch of the same files (as another identity) finds them there:
    // nothing new is fetched or crosses.
    let raw = n(&c.client_status()["meta"]["whole"]["raw_bytes"]);
    let before = c.relay.bytes().1;
    let (ok, said, err) = prefetch_cli_as(
        &c.client_sock,
        Some("4242:4242:7,8"),
        &[path("mem.vmss"), path("disk.img")],
    );
    assert!(ok, "{said:?} {err}");
    std::thread::sleep(Duration::from_secs(1));
    let w = &c.client_status()["meta"]["whole"];
    assert_eq!((n(&w["fetches"]), n(&w["raw_bytes"])), (2, raw), "{w}");
    let crossed = c.relay.bytes().1 - before;
    assert!(
        crossed < 64 << 10,
        "{crossed} bytes crossed for a second prefetch"
    );
    // A malformed identity is refused, naming the option.
    let (ok, said, _) = prefetch_cli_as(&c.client_sock, Some("root:0"), &[path("mem.vmss")]);
    assert!(!ok, "{said:?}");
    assert!(
        said[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("--as"),
        "{said:?}"
    );
    // No sidecar: nothing started, and why.
    let (ok, said, _) = prefetch_cli(&c.client_sock, &[path("plain.bin")]);
    assert!(ok, "{said:?}");
    assert_eq!(said[0]["fetch"], "none", "{said:?}");
    assert_eq!(said[0]["why"], "no fresh sidecar", "{said:?}");
    // Errors name the path and fail the command.
    let (ok, said, _) = prefetch_cli(&c.client_sock, &[path("no-such.vmss")]);
    assert!(!ok, "{said:?}");
    let e = said[0]["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("no-such.vmss") && e.contains("NOENT"),
        "{said:?}"
    );
    let (ok, said, _) = prefetch_cli(&c.client_sock, &["/elsewhere/x".to_string()]);
    assert!(!ok, "{said:?}");
    let e = said[0]["error"].as_str().unwrap_or_default();
    assert!(e.contains("not under an export"), "{said:?}");
}
