//! Synthetic golden VM images and the clone workflow of the GVFS paper (§3.2.3, §4.3),
//! for the benchmark suite.
//!
//! A golden image is a directory with `vm.cfg` (the VM's configuration), `vm.vmss` (its
//! memory state: mostly zero pages, the rest like RAM) and `disk.img` (a sparse virtual
//! disk laid out like a half-full file system: metadata at the start, data extents of
//! text, code and random bytes, holes between). `gridvfs meta generate` gives the
//! memory state a whole-file sidecar and the disk a zero map.
//!
//! Cloning (non-persistent VM, the configuration's "undoable" disk): copy the
//! configuration, copy the memory state, symlink the disk, write the clone's
//! configuration; then "resume": read the memory state whole, read a working set of the
//! disk (default 10%), write a redo log. The same steps run over NFS (through gridvfs or
//! straight to the server) and on a local file system; each returns two digests, of the
//! golden image's bytes as it read them and of what it wrote of its own, which must equal
//! those computed from the golden files (`expected`, once per image) and from the clone's
//! name (`expected_own`).
//!
//! The persistent kind of VM (one that owns its disk: writes go into the disk itself and
//! are written back at the session's end, no redo log) is in `persistent.rs`; it reuses
//! the golden images, the working set and the pipelined reads of this module.
#![allow(dead_code)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::image::{self, PAGE, Rng};
use super::nfs::Client;
use super::util::median;

/// Sizes and shares of a golden image and of a clone's work.
#[derive(Debug, Clone)]
pub struct Spec {
    pub mem_mib: u64,
    pub mem_zero_pct: u64,
    pub disk_mib: u64,
    /// Share of the disk that holds data (the rest are holes).
    pub disk_data_pct: u64,
    /// Share of the disk read when the clone resumes.
    pub ws_pct: u64,
    /// Redo log written when the clone resumes.
    pub redo_mib: u64,
    /// The write-heavy runtime phase's file.
    pub runtime_mib: u64,
    /// Files of the build-like runtime phase.
    pub build_files: usize,
    /// Warm builds run, of which the median is reported.
    pub build_rounds: usize,
}

impl Spec {
    pub fn full() -> Spec {
        Spec {
            mem_mib: 256,
            mem_zero_pct: 90,
            disk_mib: 1024,
            disk_data_pct: 40,
            ws_pct: 10,
            redo_mib: 8,
            runtime_mib: 256,
            build_files: 200,
            build_rounds: 5,
        }
    }

    pub fn quick() -> Spec {
        Spec {
            mem_mib: 16,
            mem_zero_pct: 90,
            disk_mib: 64,
            disk_data_pct: 40,
            ws_pct: 10,
            redo_mib: 1,
            runtime_mib: 8,
            build_files: 24,
            build_rounds: 3,
        }
    }
}

pub const CFG: &str = "vm.cfg";
pub const MEM: &str = "vm.vmss";
pub const DISK: &str = "disk.img";
pub const REDO: &str = "disk.redo";

/// The configuration text of a VM named `name`.
pub fn config(name: &str, spec: &Spec) -> Vec<u8> {
    format!(
        "config.version = \"8\"\nvirtualHW.version = \"4\"\ndisplayName = \"{name}\"\n\
         memsize = \"{}\"\nscsi0.present = \"TRUE\"\nscsi0:0.fileName = \"{DISK}\"\n\
         scsi0:0.mode = \"undoable\"\nethernet0.present = \"TRUE\"\n\
         ethernet0.addressType = \"generated\"\nuuid.bios = \"56 4d {:02x} 1a 2b 3c 4d 5e\"\n\
         checkpoint.vmState = \"{MEM}\"\n",
        spec.mem_mib,
        name.len()
    )
    .into_bytes()
}

/// Writes golden image `name` under `root` (made if missing) and its sidecars.
pub fn make_golden(root: &Path, name: &str, spec: &Spec, seed: u64) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(CFG), config(name, spec)).unwrap();
    let (mem, _) = image::memory_image(spec.mem_mib, spec.mem_zero_pct, seed);
    std::fs::write(dir.join(MEM), &mem).unwrap();
    drop(mem);
    write_disk(&dir.join(DISK), spec, seed ^ 0x5eed);
    image::meta_generate(
        &dir.join(MEM),
        &["--fetch", "whole-file", "--codec", "zstd"],
    );
    image::meta_generate(&dir.join(DISK), &["--fetch", "blocks"]);
    dir
}

/// A sparse disk image: 1 MiB of file-system metadata, then data extents (64 KiB – 4 MiB)
/// and holes, about `disk_data_pct` percent data.
fn write_disk(path: &Path, spec: &Spec, seed: u64) {
    let size = spec.disk_mib << 20;
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut rng = Rng(seed | 1);
    let mut pos = 0u64;
    let mut first = true;
    while pos < size {
        let len = if first {
            1 << 20
        } else {
            (1 + rng.next() % 64) * (64 << 10)
        };
        first = false;
        let len = len.min(size - pos);
        let mut buf = vec![0u8; len as usize];
        for page in buf.chunks_mut(PAGE as usize) {
            image::fill_page(page, &mut rng);
        }
        f.seek(SeekFrom::Start(pos)).unwrap();
        f.write_all(&buf).unwrap();
        pos += len;
        let hole = len * (100 - spec.disk_data_pct) / spec.disk_data_pct.max(1);
        let hole = (hole * (50 + rng.next() % 100) / 100) / (64 << 10) * (64 << 10);
        pos += hole;
    }
}

/// The disk extents a clone reads when it resumes: about `ws_pct` percent of the disk in
/// extents of 64 – 512 KiB, a third of them from the first 5% (boot), the rest spread;
/// deterministic per `seed`, in the order read.
pub fn working_set(disk_size: u64, ws_pct: u64, seed: u64) -> Vec<(u64, u32)> {
    let mut rng = Rng(seed | 1);
    let want = disk_size * ws_pct / 100;
    let boot = (disk_size / 20).max(1 << 20);
    let mut got = 0u64;
    let mut out = Vec::new();
    let mut boot_pos = 0u64;
    while got < want {
        let len = ((1 + rng.next() % 8) * (64 << 10))
            .min(want - got)
            .max(4096);
        let off = if out.len() % 3 == 0 && boot_pos + len <= boot {
            let o = boot_pos;
            boot_pos += len;
            o
        } else {
            (rng.next() % ((disk_size - len) / 4096 + 1)) * 4096
        };
        out.push((off, len as u32));
        got += len;
    }
    out
}

/// What a clone did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Seconds for the whole clone (copy + resume).
    pub secs: f64,
    /// Seconds to the end of the copy steps.
    pub copy_secs: f64,
    /// BLAKE3 over the golden image's bytes as the clone read them (the configuration
    /// file, the memory state read back from the clone's copy, the disk's working set
    /// through the symlink), in order: the same for every clone of an image, so it is
    /// computed once per image to check against.
    pub digest: [u8; 32],
    /// BLAKE3 over what the clone wrote of its own (its configuration, its redo log), read
    /// back from where it wrote them after the timed clone.
    pub own: [u8; 32],
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// The redo log a clone writes (deterministic per clone name).
pub fn redo_bytes(spec: &Spec, clone: &str) -> Vec<u8> {
    let mut rng = Rng(clone
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31) ^ b as u64)
        | 1);
    let mut v = vec![0u8; (spec.redo_mib << 20) as usize];
    for page in v.chunks_mut(PAGE as usize) {
        image::fill_page(page, &mut rng);
    }
    v
}

/// The digest of the golden image's bytes a correct clone of `golden` (a local
/// directory) reads (`Report::digest`; the same for every clone of it).
pub fn expected(golden: &Path, spec: &Spec, seed: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    let cfg = std::fs::read(golden.join(CFG)).unwrap();
    h.update(&cfg);
    let mem = std::fs::read(golden.join(MEM)).unwrap();
    h.update(&mem);
    let disk = std::fs::File::open(golden.join(DISK)).unwrap();
    let size = disk.metadata().unwrap().len();
    for (off, len) in working_set(size, spec.ws_pct, seed) {
        let mut b = vec![0u8; len as usize];
        disk.read_exact_at(&mut b, off).unwrap();
        h.update(&b);
    }
    *h.finalize().as_bytes()
}

/// The digest of what clone `clone` writes of its own (`Report::own`).
pub fn expected_own(spec: &Spec, clone: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&config(clone, spec));
    h.update(&redo_bytes(spec, clone));
    *h.finalize().as_bytes()
}

/// Clones on a local file system: `golden` is the golden image directory, the clone goes
/// to `clones/clone`.
pub fn clone_local(golden: &Path, clones: &Path, clone: &str, spec: &Spec, seed: u64) -> Report {
    let t0 = Instant::now();
    let mut h = blake3::Hasher::new();
    let (mut read, mut written) = (0u64, 0u64);
    let cd = clones.join(clone);
    let _ = std::fs::remove_dir_all(&cd);
    std::fs::create_dir_all(&cd).unwrap();
    let cfg = std::fs::read(golden.join(CFG)).unwrap();
    h.update(&cfg);
    read += cfg.len() as u64;
    // Copy the memory state, 1 MiB at a time, and make it durable (as COMMIT does).
    {
        let mut src = std::fs::File::open(golden.join(MEM)).unwrap();
        let mut dst = std::fs::File::create(cd.join(MEM)).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            dst.write_all(&buf[..n]).unwrap();
            read += n as u64;
            written += n as u64;
        }
        dst.sync_data().unwrap();
    }
    std::os::unix::fs::symlink(golden.join(DISK), cd.join(DISK)).unwrap();
    let mine = config(clone, spec);
    let mut f = std::fs::File::create(cd.join(CFG)).unwrap();
    f.write_all(&mine).unwrap();
    f.sync_data().unwrap();
    written += mine.len() as u64;
    let copy_secs = t0.elapsed().as_secs_f64();
    // Resume: the memory state whole, the disk's working set, the redo log.
    let mem = std::fs::read(cd.join(MEM)).unwrap();
    h.update(&mem);
    read += mem.len() as u64;
    drop(mem);
    let disk = std::fs::File::open(cd.join(DISK)).unwrap();
    let size = disk.metadata().unwrap().len();
    for (off, len) in working_set(size, spec.ws_pct, seed) {
        let mut b = vec![0u8; len as usize];
        disk.read_exact_at(&mut b, off).unwrap();
        h.update(&b);
        read += len as u64;
    }
    let redo = redo_bytes(spec, clone);
    let mut f = std::fs::File::create(cd.join(REDO)).unwrap();
    f.write_all(&redo).unwrap();
    f.sync_data().unwrap();
    written += redo.len() as u64;
    let secs = t0.elapsed().as_secs_f64();
    // What the clone wrote of its own, read back from the disk (untimed).
    let mut own = blake3::Hasher::new();
    own.update(&std::fs::read(cd.join(CFG)).unwrap());
    own.update(&std::fs::read(cd.join(REDO)).unwrap());
    assert_eq!(
        std::fs::metadata(cd.join(MEM)).unwrap().len(),
        std::fs::metadata(golden.join(MEM)).unwrap().len(),
        "the clone's memory state has another size"
    );
    Report {
        secs,
        copy_secs,
        digest: *h.finalize().as_bytes(),
        own: *own.finalize().as_bytes(),
        bytes_read: read,
        bytes_written: written,
    }
}

/// READs in flight and their size.
const IO: u32 = 1 << 20;
const WINDOW: usize = 16;

/// The extents (offset, length) of a file read with `WINDOW` READs in flight, each
/// handed to `each` in the order given as soon as it and those before it are in. A
/// reply is dropped once handed over, so its connection buffer is free again: holding
/// them all (and then copying them into one more buffer) made the client fault in twice
/// the bytes it read, fresh pages the kernel zero-fills, which `std::fs::read` into one
/// buffer (the Local baseline) does not.
pub async fn for_each_extent(
    c: &Client,
    fh: &[u8],
    extents: &[(u64, u32)],
    mut each: impl FnMut(&[u8]),
) {
    let mut set = tokio::task::JoinSet::new();
    let mut early = std::collections::BTreeMap::new();
    let (mut next, mut done) = (0, 0);
    loop {
        // At most 2 × WINDOW replies held: a slow oldest READ (a miss) must not let every
        // later reply pile up in `early`.
        while set.len() < WINDOW && next < extents.len() && next - done < 2 * WINDOW {
            let (c, fh, (o, n), i) = (c.clone(), fh.to_vec(), extents[next], next);
            set.spawn(async move {
                let d = c.read_data(&fh, o, n).await.0;
                assert_eq!(
                    d.len(),
                    n as usize,
                    "short READ at {o} (not at end of file)"
                );
                (i, d)
            });
            next += 1;
        }
        let Some(r) = set.join_next().await else {
            break;
        };
        let (i, d) = r.unwrap();
        early.insert(i, d);
        while let Some(d) = early.remove(&done) {
            each(&d);
            done += 1;
        }
    }
    assert_eq!(done, extents.len(), "every extent read");
}

/// The whole of a file, read with `WINDOW` READs in flight into one buffer (as
/// `std::fs::read` fills one).
pub async fn read_all(c: &Client, fh: &[u8], size: u64) -> Vec<u8> {
    let extents: Vec<(u64, u32)> = (0..size)
        .step_by(IO as usize)
        .map(|o| (o, (IO as u64).min(size - o) as u32))
        .collect();
    let mut out = Vec::with_capacity(size as usize);
    for_each_extent(c, fh, &extents, |d| out.extend_from_slice(d)).await;
    out
}

/// Writes `data` at 0 with `WINDOW` WRITEs in flight, then COMMITs.
async fn write_all(c: &Client, fh: &[u8], data: &[u8], io: usize) {
    let data = bytes::Bytes::copy_from_slice(data);
    let mut set = tokio::task::JoinSet::new();
    let mut off = 0usize;
    loop {
        while set.len() < WINDOW && off < data.len() {
            let (c, fh) = (c.clone(), fh.to_vec());
            let n = io.min(data.len() - off);
            let d = data.slice(off..off + n);
            set.spawn(async move { c.write(&fh, off as u64, &d).await });
            off += n;
        }
        if set.join_next().await.is_none() {
            break;
        }
    }
    c.commit(fh).await;
}

/// Clones over NFS through `c`: the golden image is `base/golden/<image>`, the clone goes
/// to `base/clones/<clone>`. `base` is a directory handle and its path below the export.
pub async fn clone_nfs(
    c: &Client,
    base: &[u8],
    image: &str,
    clone: &str,
    spec: &Spec,
    seed: u64,
) -> Report {
    let (mut r, own) = clone_nfs_timed(c, base, image, clone, spec, seed).await;
    r.own = read_own(c, &own).await;
    r
}

/// The files a clone wrote over NFS, to read back after the timed clone (`read_own`).
pub struct Own {
    cfg: Vec<u8>,
    redo: Vec<u8>,
    mem: Vec<u8>,
    mem_size: u64,
}

/// What clone wrote of its own (`Report::own`), read back through `c`; checks that its
/// memory state has the golden one's size.
pub async fn read_own(c: &Client, o: &Own) -> [u8; 32] {
    let mut own = blake3::Hasher::new();
    for fh in [&o.cfg, &o.redo] {
        own.update(&read_all(c, fh, c.getattr(fh).await).await);
    }
    assert_eq!(
        c.getattr(&o.mem).await,
        o.mem_size,
        "the clone's memory state has another size"
    );
    *own.finalize().as_bytes()
}

/// `clone_nfs` without the read-back: `Report::own` is zero until `read_own(c, &Own)`
/// fills it, which a caller timing clones in parallel does after all of them are done.
pub async fn clone_nfs_timed(
    c: &Client,
    base: &[u8],
    image: &str,
    clone: &str,
    spec: &Spec,
    seed: u64,
) -> (Report, Own) {
    let t0 = Instant::now();
    let mut h = blake3::Hasher::new();
    let (mut read, mut written) = (0u64, 0u64);
    let goldens = c.lookup(base, "golden").await.expect("golden dir");
    let gd = c.lookup(&goldens, image).await.expect("golden image");
    let clones = c.mkdir(base, "clones").await;
    let cd = c.mkdir(&clones, clone).await;
    for n in [CFG, MEM, DISK, REDO] {
        c.remove(&cd, n).await;
    }
    let gcfg = c.lookup(&gd, CFG).await.expect("vm.cfg");
    let cfg = read_all(c, &gcfg, c.getattr(&gcfg).await).await;
    h.update(&cfg);
    read += cfg.len() as u64;
    // Copy the memory state: each chunk written as soon as it is read.
    let gmem = c.lookup(&gd, MEM).await.expect("vm.vmss");
    let size = c.getattr(&gmem).await;
    let cmem = c.create(&cd, MEM).await;
    let mut reads = tokio::task::JoinSet::new();
    let mut writes = tokio::task::JoinSet::new();
    let mut off = 0u64;
    loop {
        while reads.len() < WINDOW && off < size {
            let (c, fh) = (c.clone(), gmem.clone());
            let n = (IO as u64).min(size - off) as u32;
            reads.spawn(async move { (off, c.read_data(&fh, off, n).await.0) });
            off += n as u64;
        }
        let Some(r) = reads.join_next().await else {
            break;
        };
        let (at, data) = r.unwrap();
        read += data.len() as u64;
        written += data.len() as u64;
        let (c2, fh) = (c.clone(), cmem.clone());
        writes.spawn(async move { c2.write(&fh, at, &data).await });
        while writes.len() > WINDOW {
            writes.join_next().await;
        }
    }
    while writes.join_next().await.is_some() {}
    c.commit(&cmem).await;
    c.symlink(&cd, DISK, &format!("../../golden/{image}/{DISK}"))
        .await;
    let mine = config(clone, spec);
    let ccfg = c.create(&cd, CFG).await;
    write_all(c, &ccfg, &mine, IO as usize).await;
    written += mine.len() as u64;
    let copy_secs = t0.elapsed().as_secs_f64();
    // Resume: the memory state whole, then the disk's working set through the symlink.
    let mem = read_all(c, &cmem, size).await;
    h.update(&mem);
    read += mem.len() as u64;
    drop(mem);
    let link = c.lookup(&cd, DISK).await.expect("disk link");
    let target = c.readlink(&link).await;
    // Resolve the relative target from the clone's directory.
    let mut path: Vec<Vec<u8>> = vec![base.to_vec(), clones.clone(), cd.clone()];
    let mut disk = Vec::new();
    let parts: Vec<&str> = target.split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        match *p {
            ".." => {
                path.pop();
            }
            "." | "" => {}
            name => {
                let fh = c
                    .lookup(path.last().expect("inside base"), name)
                    .await
                    .expect("symlink target");
                if i + 1 == parts.len() {
                    disk = fh;
                } else {
                    path.push(fh);
                }
            }
        }
    }
    let dsize = c.getattr(&disk).await;
    let ws = working_set(dsize, spec.ws_pct, seed);
    for_each_extent(c, &disk, &ws, |d| {
        read += d.len() as u64;
        h.update(d);
    })
    .await;
    let redo = redo_bytes(spec, clone);
    let rfh = c.create(&cd, REDO).await;
    write_all(c, &rfh, &redo, 64 << 10).await;
    written += redo.len() as u64;
    let secs = t0.elapsed().as_secs_f64();
    let own = Own {
        cfg: ccfg,
        redo: rfh,
        mem: cmem,
        mem_size: size,
    };
    let r = Report {
        secs,
        copy_secs,
        digest: *h.finalize().as_bytes(),
        own: [0; 32],
        bytes_read: read,
        bytes_written: written,
    };
    (r, own)
}

/// Seconds of the runtime phases after cloning (paper §4.4).
#[derive(Debug, Clone, Default)]
pub struct Runtime {
    /// A file of `runtime_mib` written, committed and read back.
    pub write_heavy: f64,
    /// A build-like tree the first time: sources written, each read back and an object
    /// written for it.
    pub build_cold: f64,
    /// The same build again (sources read, objects rewritten): the median of the rounds.
    pub build_warm: f64,
    /// Every warm round, in order.
    pub warm_rounds: Vec<f64>,
    /// fsync/fdatasync calls per file in the warm rounds, where counted (gridvfs's cache).
    pub warm_syncs_per_file: Option<f64>,
    /// Calls the proxy sent to its next hop per file in the warm rounds, where counted.
    pub warm_wan_calls_per_file: Option<f64>,
}

/// Files of the build-like tree, and the bytes of file `i` (4 – 16 KiB).
fn source(i: usize) -> Vec<u8> {
    let mut rng = Rng((i as u64 + 1) * 0x9e37_79b9_7f4a_7c15);
    let len = 4096 + (rng.next() % 12288) as usize;
    let mut v = vec![0u8; len];
    for page in v.chunks_mut(PAGE as usize) {
        image::fill_page(page, &mut rng);
    }
    v
}

/// The sizes of the build's objects, file by file.
pub fn object_sizes(files: usize) -> Vec<usize> {
    (0..files).map(|i| source(i).len().div_ceil(2)).collect()
}

/// The object a "compile" makes of a source: half its size, derived from it.
fn object(src: &[u8]) -> Vec<u8> {
    src.iter().step_by(2).map(|b| b.rotate_left(3)).collect()
}

/// The write-heavy phase's data.
fn heavy(mib: u64) -> Vec<u8> {
    let mut rng = Rng(0xfeed);
    let mut v = vec![0u8; (mib << 20) as usize];
    for page in v.chunks_mut(PAGE as usize) {
        image::fill_page(page, &mut rng);
    }
    v
}

/// Builds at most this many files at once (like `make -j8`), locally and over NFS.
const JOBS: usize = 8;

/// The runtime phases on a local file system, in `dir`: the build with `JOBS` threads,
/// as over NFS.
pub fn runtime_local(dir: &Path, mib: u64, files: usize, rounds: usize) -> Runtime {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let data = heavy(mib);
    let t0 = Instant::now();
    {
        let mut f = std::fs::File::create(dir.join("heavy.bin")).unwrap();
        f.write_all(&data).unwrap();
        f.sync_data().unwrap();
    }
    let back = std::fs::read(dir.join("heavy.bin")).unwrap();
    assert!(back == data, "write-heavy: local read-back differs");
    let write_heavy = t0.elapsed().as_secs_f64();
    for k in 0..10 {
        std::fs::create_dir_all(dir.join(format!("src{k}"))).unwrap();
    }
    let one = |i: usize, first: bool| {
        let d = dir.join(format!("src{}", i % 10));
        let src = source(i);
        if first {
            let mut f = std::fs::File::create(d.join(format!("f{i}.c"))).unwrap();
            f.write_all(&src).unwrap();
            f.sync_data().unwrap();
        }
        let got = std::fs::read(d.join(format!("f{i}.c"))).unwrap();
        assert!(got == src, "build: local source {i} differs");
        let mut f = std::fs::File::create(d.join(format!("f{i}.o"))).unwrap();
        f.write_all(&object(&got)).unwrap();
        f.sync_data().unwrap();
    };
    let build = |first: bool| {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..JOBS {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= files {
                            break;
                        }
                        one(i, first);
                    }
                });
            }
        });
        t0.elapsed().as_secs_f64()
    };
    let build_cold = build(true);
    let warm_rounds: Vec<f64> = (0..rounds.max(1)).map(|_| build(false)).collect();
    Runtime {
        write_heavy,
        build_cold,
        build_warm: median(warm_rounds.clone()),
        warm_rounds,
        warm_syncs_per_file: None,
        warm_wan_calls_per_file: None,
    }
}

/// The runtime phases over NFS, below `base/runtime/<name>`. `counts`: reads the
/// serving proxy's count of cache fsyncs and of calls to its next hop, to report them per
/// file of a warm build.
pub async fn runtime_nfs(
    c: &Client,
    base: &[u8],
    name: &str,
    (mib, files, rounds): (u64, usize, usize),
    counts: Option<&dyn Fn() -> (u64, u64)>,
) -> Runtime {
    let rt = c.mkdir(base, "runtime").await;
    let dir = c.mkdir(&rt, name).await;
    let data = heavy(mib);
    let t0 = Instant::now();
    let fh = c.create(&dir, "heavy.bin").await;
    write_all(c, &fh, &data, IO as usize).await;
    let back = read_all(c, &fh, data.len() as u64).await;
    assert!(back == data, "write-heavy: read-back through NFS differs");
    let write_heavy = t0.elapsed().as_secs_f64();
    let mut dirs = Vec::new();
    for k in 0..10 {
        dirs.push(c.mkdir(&dir, &format!("src{k}")).await);
    }
    let dirs = std::sync::Arc::new(dirs);
    let build = |first: bool| {
        let (c, dirs) = (c.clone(), dirs.clone());
        async move {
            let t0 = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for i in 0..files {
                while set.len() >= JOBS {
                    set.join_next().await.unwrap().unwrap();
                }
                let (c, d) = (c.clone(), dirs[i % 10].clone());
                set.spawn(async move {
                    let src = source(i);
                    let sfh = if first {
                        let fh = c.create(&d, &format!("f{i}.c")).await;
                        write_all(&c, &fh, &src, 64 << 10).await;
                        fh
                    } else {
                        c.lookup(&d, &format!("f{i}.c")).await.expect("source")
                    };
                    let got = read_all(&c, &sfh, src.len() as u64).await;
                    assert!(got == src, "build: source {i} read through NFS differs");
                    let ofh = c.create(&d, &format!("f{i}.o")).await;
                    write_all(&c, &ofh, &object(&got), 64 << 10).await;
                });
            }
            while let Some(r) = set.join_next().await {
                r.unwrap();
            }
            t0.elapsed().as_secs_f64()
        }
    };
    let build_cold = build(true).await;
    let before = counts.map(|f| f());
    let mut warm_rounds = Vec::new();
    for _ in 0..rounds.max(1) {
        warm_rounds.push(build(false).await);
    }
    let n_files = files * warm_rounds.len();
    let per_file = |n: u64| n as f64 / n_files as f64;
    let after = counts.map(|f| f());
    let delta = before.zip(after).map(|(b, a)| (a.0 - b.0, a.1 - b.1));
    Runtime {
        write_heavy,
        build_cold,
        build_warm: median(warm_rounds.clone()),
        warm_rounds,
        warm_syncs_per_file: delta.map(|d| per_file(d.0)),
        warm_wan_calls_per_file: delta.map(|d| per_file(d.1)),
    }
}
