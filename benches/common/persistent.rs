//! The persistent kind of VM in the clone workflow (paper §3.2.3, §4.3), for the benchmark
//! suite: a VM that owns its disk instead of writing a redo log next to a shared golden one.
//!
//! - **Image**: the user's own copy of a golden image (`prepare`), made on the server's
//!   disk before the run and untimed: `cp -a --sparse=always`, so holes stay holes and the
//!   sidecars keep their file's size and mtime (the zero map applies to the copy).
//! - **Session** (`session_nfs`, `session_local`): resume — read the configuration and the
//!   memory state whole, read the disk's working set (`vm::working_set`) — then write
//!   `redo_mib` (what a non-persistent clone puts in its redo log) into the disk itself,
//!   at page-aligned, non-overlapping offsets inside the working set, deterministic per VM
//!   name and session (`disk_writes`), and COMMIT (locally: `fsync`). Through gridvfs those
//!   writes land in the client proxy's write-back cache; the middleware writes them back
//!   at the session's end (`gridvfs flush`, driven by the suite).
//! - **Checks**: a session's digest over everything it read and wrote must equal
//!   `expected` (session k reads the golden bytes with the writes of sessions 1..k laid
//!   over them); after the write-back, `check_disk` reads the disk file on the server's
//!   disk and compares every written range and the whole file (BLAKE3) with the golden
//!   disk plus every write so far. A wrong byte panics.
#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use super::image::{self, PAGE, Rng};
use super::nfs::Client;
use super::vm::{self, CFG, DISK, MEM, Spec};

/// Where persistent VMs live below the suite's base directory (beside `golden/`).
pub const DIR: &str = "persistent";

/// WRITEs in flight during a session.
const WINDOW: usize = 16;

/// A persistent VM's configuration: the golden one with its disk in persistent mode.
pub fn config(golden_cfg: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(golden_cfg)
        .replace("mode = \"undoable\"", "mode = \"persistent\"")
        .into_bytes()
}

/// Makes `dest` the user's own copy of the golden image directory `golden` (its sidecars
/// included, size and mtime kept so they stay fresh), sparse: only data ranges are copied;
/// then its configuration says the disk is persistent.
pub fn prepare(golden: &Path, dest: &Path) {
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest.parent().expect("a parent directory")).unwrap();
    let st = Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(golden)
        .arg(dest)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "cp -a --sparse=always of {}",
        golden.display()
    );
    let cfg = config(&std::fs::read(golden.join(CFG)).unwrap());
    std::fs::write(dest.join(CFG), cfg).unwrap();
}

/// The writes session `session` (1, 2, ...) of persistent VM `name` makes into its disk,
/// in the order written: page-aligned pieces of 4–64 KiB inside the working set's extents,
/// not overlapping each other, `redo_mib` in all (pages like RAM, never all zero).
pub fn disk_writes(
    spec: &Spec,
    disk_size: u64,
    name: &str,
    session: u32,
    seed: u64,
) -> Vec<(u64, Vec<u8>)> {
    let ws = vm::working_set(disk_size, spec.ws_pct, seed);
    let mut rng = Rng(name
        .bytes()
        .chain(session.to_be_bytes())
        .fold(0x9e37_79b9u64, |h, b| h.wrapping_mul(31) ^ b as u64)
        | 1);
    let mut left = (spec.redo_mib << 20) / PAGE;
    // Ranges taken so far, by start (a BTreeMap finds a neighbour in log time).
    let mut taken = std::collections::BTreeMap::<u64, u64>::new();
    let mut out = Vec::new();
    let mut tries = 0u64;
    while left > 0 {
        tries += 1;
        assert!(
            tries < 1_000_000,
            "the working set has no room for the writes"
        );
        let (eoff, elen) = ws[(rng.next() % ws.len() as u64) as usize];
        let pages_in = elen as u64 / PAGE;
        if pages_in == 0 {
            continue;
        }
        let pages = (1 + rng.next() % 16).min(pages_in).min(left);
        let off = eoff + (rng.next() % (pages_in - pages + 1)) * PAGE;
        let end = off + pages * PAGE;
        let before = taken.range(..end).next_back();
        if before.is_some_and(|(_, &e)| e > off) {
            continue;
        }
        taken.insert(off, end);
        let mut data = vec![0u8; (pages * PAGE) as usize];
        for page in data.chunks_mut(PAGE as usize) {
            image::fill_page(page, &mut rng);
        }
        out.push((off, data));
        left -= pages;
    }
    out
}

/// Bytes of session `session`'s writes that land on pages that are zero in the golden disk
/// (the zero map's blocks: a stale map must never answer them as zeros).
pub fn bytes_on_zero_pages(
    golden_disk: &Path,
    spec: &Spec,
    name: &str,
    session: u32,
    seed: u64,
) -> u64 {
    let g = std::fs::File::open(golden_disk).unwrap();
    let size = g.metadata().unwrap().len();
    let mut page = vec![0u8; PAGE as usize];
    let mut n = 0;
    for (off, d) in disk_writes(spec, size, name, session, seed) {
        for at in (off..off + d.len() as u64).step_by(PAGE as usize) {
            g.read_exact_at(&mut page, at).unwrap();
            if page.iter().all(|&b| b == 0) {
                n += PAGE;
            }
        }
    }
    n
}

/// The writes of sessions `1..=sessions`, in the order made (later ones win).
fn writes_through(
    spec: &Spec,
    disk_size: u64,
    name: &str,
    sessions: u32,
    seed: u64,
) -> Vec<(u64, Vec<u8>)> {
    (1..=sessions)
        .flat_map(|s| disk_writes(spec, disk_size, name, s, seed))
        .collect()
}

/// Lays `writes` (in order) over `buf`, which holds the disk's bytes from `at`.
fn overlay(buf: &mut [u8], at: u64, writes: &[(u64, Vec<u8>)]) {
    let end = at + buf.len() as u64;
    for (off, d) in writes {
        let (lo, hi) = ((*off).max(at), (off + d.len() as u64).min(end));
        if lo < hi {
            buf[(lo - at) as usize..(hi - at) as usize]
                .copy_from_slice(&d[(lo - off) as usize..(hi - off) as usize]);
        }
    }
}

/// What a session did.
#[derive(Debug, Clone)]
pub struct Session {
    /// Seconds for the whole session (resume + writes + COMMIT or fsync).
    pub secs: f64,
    /// Seconds to the end of the resume (configuration, memory state, working set read).
    pub resume_secs: f64,
    /// BLAKE3 over everything read and written, in order.
    pub digest: [u8; 32],
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// The digest a correct session `session` of persistent VM `name`, copied from `golden`
/// (a local directory), reports.
pub fn expected(golden: &Path, spec: &Spec, name: &str, session: u32, seed: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&config(&std::fs::read(golden.join(CFG)).unwrap()));
    h.update(&std::fs::read(golden.join(MEM)).unwrap());
    let disk = std::fs::File::open(golden.join(DISK)).unwrap();
    let size = disk.metadata().unwrap().len();
    let before = writes_through(spec, size, name, session - 1, seed);
    for (off, len) in vm::working_set(size, spec.ws_pct, seed) {
        let mut b = vec![0u8; len as usize];
        disk.read_exact_at(&mut b, off).unwrap();
        overlay(&mut b, off, &before);
        h.update(&b);
    }
    for (_, d) in disk_writes(spec, size, name, session, seed) {
        h.update(&d);
    }
    *h.finalize().as_bytes()
}

/// Checks persistent VM `name`'s disk file `disk` (read directly from the disk it lives on)
/// after sessions `1..=sessions` were written back: each written range holds the bytes
/// last written there, and the whole file equals `golden_disk` with every write laid over
/// it. Panics at the first difference.
pub fn check_disk(
    disk: &Path,
    golden_disk: &Path,
    spec: &Spec,
    name: &str,
    sessions: u32,
    seed: u64,
) {
    let g = std::fs::File::open(golden_disk).unwrap();
    let size = g.metadata().unwrap().len();
    let f = std::fs::File::open(disk).unwrap();
    let got_size = f.metadata().unwrap().len();
    assert_eq!(
        got_size, size,
        "{name}: disk size after session {sessions}'s write-back"
    );
    let all = writes_through(spec, size, name, sessions, seed);
    for (off, d) in &all {
        let mut want = vec![0u8; d.len()];
        g.read_exact_at(&mut want, *off).unwrap();
        overlay(&mut want, *off, &all);
        let mut got = vec![0u8; d.len()];
        f.read_exact_at(&mut got, *off).unwrap();
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "{name}: after session {sessions}'s write-back, disk byte {} is {:#04x}, \
                 written {:#04x} (range {off}+{})",
                off + i as u64,
                got[i],
                want[i],
                d.len()
            );
        }
    }
    let (mut hw, mut hg) = (blake3::Hasher::new(), blake3::Hasher::new());
    let chunk = 1u64 << 20;
    let (mut want, mut got) = (vec![0u8; chunk as usize], vec![0u8; chunk as usize]);
    for at in (0..size).step_by(chunk as usize) {
        let n = chunk.min(size - at) as usize;
        g.read_exact_at(&mut want[..n], at).unwrap();
        overlay(&mut want[..n], at, &all);
        hw.update(&want[..n]);
        f.read_exact_at(&mut got[..n], at).unwrap();
        hg.update(&got[..n]);
    }
    assert!(
        hw.finalize() == hg.finalize(),
        "{name}: after session {sessions}'s write-back the disk differs from the golden \
         disk with the writes laid over it (outside the written ranges)"
    );
}

/// Session `session` of the persistent VM in directory `vdir` on a local file system:
/// reads with `read(2)`, writes with `pwrite(2)`, then `fsync` (COMMIT's guarantee).
pub fn session_local(vdir: &Path, spec: &Spec, name: &str, session: u32, seed: u64) -> Session {
    let t0 = Instant::now();
    let mut h = blake3::Hasher::new();
    let (mut read, mut written) = (0u64, 0u64);
    for f in [CFG, MEM] {
        let b = std::fs::read(vdir.join(f)).unwrap();
        h.update(&b);
        read += b.len() as u64;
    }
    let disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(vdir.join(DISK))
        .unwrap();
    let size = disk.metadata().unwrap().len();
    for (off, len) in vm::working_set(size, spec.ws_pct, seed) {
        let mut b = vec![0u8; len as usize];
        disk.read_exact_at(&mut b, off).unwrap();
        h.update(&b);
        read += len as u64;
    }
    let resume_secs = t0.elapsed().as_secs_f64();
    for (off, d) in disk_writes(spec, size, name, session, seed) {
        disk.write_all_at(&d, off).unwrap();
        h.update(&d);
        written += d.len() as u64;
    }
    disk.sync_data().unwrap();
    Session {
        secs: t0.elapsed().as_secs_f64(),
        resume_secs,
        digest: *h.finalize().as_bytes(),
        bytes_read: read,
        bytes_written: written,
    }
}

/// Session `session` of persistent VM `name` over NFS through `c`: the VM is
/// `base/persistent/<name>` (`base` a directory handle). Ends when the COMMIT of its
/// writes is answered; every WRITE and the COMMIT must show one verifier (else a client
/// would have to send again: the run fails instead).
pub async fn session_nfs(
    c: &Client,
    base: &[u8],
    name: &str,
    spec: &Spec,
    seed: u64,
    session: u32,
) -> Session {
    let t0 = Instant::now();
    let mut h = blake3::Hasher::new();
    let (mut read, mut written) = (0u64, 0u64);
    let dir = c.lookup(base, DIR).await.expect("persistent VM directory");
    let vd = c.lookup(&dir, name).await.expect("persistent VM");
    for f in [CFG, MEM] {
        let fh = c.lookup(&vd, f).await.expect("VM file");
        let b = vm::read_all(c, &fh, c.getattr(&fh).await).await;
        h.update(&b);
        read += b.len() as u64;
    }
    let disk = c.lookup(&vd, DISK).await.expect("disk.img");
    let size = c.getattr(&disk).await;
    let ws = vm::working_set(size, spec.ws_pct, seed);
    vm::for_each_extent(c, &disk, &ws, |d| {
        read += d.len() as u64;
        h.update(d);
    })
    .await;
    let resume_secs = t0.elapsed().as_secs_f64();
    let writes = disk_writes(spec, size, name, session, seed);
    let mut set = tokio::task::JoinSet::new();
    let mut verfs = Vec::new();
    for (off, d) in &writes {
        while set.len() >= WINDOW {
            verfs.push(set.join_next().await.unwrap().unwrap());
        }
        h.update(d);
        written += d.len() as u64;
        let (c, fh, off, d) = (c.clone(), disk.clone(), *off, bytes::Bytes::from(d.clone()));
        set.spawn(async move { c.write(&fh, off, &d).await });
    }
    while let Some(r) = set.join_next().await {
        verfs.push(r.unwrap());
    }
    let verf = c.commit_verf(&disk).await;
    assert!(
        verfs.iter().all(|v| *v == verf),
        "{name}: the write verifier changed between the WRITEs and the COMMIT of session {session}"
    );
    Session {
        secs: t0.elapsed().as_secs_f64(),
        resume_secs,
        digest: *h.finalize().as_bytes(),
        bytes_read: read,
        bytes_written: written,
    }
}

/// What the suite measured of one session.
pub struct Times {
    /// Resume + writes (through gridvfs: to the COMMIT's reply; locally: to the `fsync`).
    pub secs: f64,
    pub resume_secs: f64,
    /// The write-back at the session's end (through gridvfs): seconds, bytes written back.
    pub flush: Option<(f64, u64)>,
    /// From the client proxy's status before the write-back: dirty bytes, zero-map bytes
    /// answered locally so far, stale sidecars met so far.
    pub dirty: u64,
    pub zero: u64,
    pub stale: u64,
    /// Bytes the session wrote on pages that are zero in the golden disk (zero-mapped).
    pub on_zero: u64,
}

/// The persistent VM's table and notes for the suite's report (markdown): Local's and
/// WAN-persistent's sessions, each total against Local's session of the same number.
pub fn report_md(spec: &Spec, local: &[Times], wan: &[Times]) -> String {
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut md = format!(
        "Persistent VM (the user's own copy of img0 beside the golden images, sidecars \
         included, made before the run): each session resumes it — memory state read whole, \
         {}% working set of the disk read — and writes {} MiB into its disk at working-set \
         offsets (no redo log). Through gridvfs (one client proxy, empty at session 1) the \
         session ends with the middleware's write-back, timed apart: `gridvfs flush`, which \
         keeps the blocks cached for session 2, then `gridvfs flush --drop`; locally it ends \
         with `fsync`. After each session the disk file was compared with the golden disk \
         plus every write, on the disk it lives on.\n\n\
         | scenario | session | resume s | resume + writes s | write-back s | total s | \
         total vs Local |\n|---|---|---|---|---|---|---|\n",
        spec.ws_pct, spec.redo_mib
    );
    for (name, v) in [("Local", local), ("WAN-persistent", wan)] {
        for (k, s) in v.iter().enumerate() {
            let (flush, total) = match s.flush {
                Some((f, _)) => (format!("{f:.2}"), s.secs + f),
                None => ("–".into(), s.secs),
            };
            let base = local.get(k).map_or(f64::NAN, |l| l.secs);
            let session = match (s.flush.is_some(), k) {
                (false, _) => format!("{}", k + 1),
                (true, 0) => "1 (cold)".into(),
                (true, k) => format!("{} (warm)", k + 1),
            };
            md.push_str(&format!(
                "| {name} | {session} | {:.2} | {:.2} | {flush} | {total:.2} | {:.2}× |\n",
                s.resume_secs,
                s.secs,
                total / base,
            ));
        }
    }
    md.push('\n');
    for (k, s) in wan.iter().enumerate() {
        md.push_str(&format!(
            "- WAN-persistent session {}: {:.1} MiB written, {:.1} MiB of it on pages that are \
             zero in the golden disk; {:.1} MiB dirty in the client proxy before the \
             write-back, {:.1} MiB written back; zero-map bytes answered locally so far \
             {:.1} MiB; stale sidecars met so far {}\n",
            k + 1,
            spec.redo_mib as f64,
            mib(s.on_zero),
            mib(s.dirty),
            mib(s.flush.map_or(0, |f| f.1)),
            mib(s.zero),
            s.stale,
        ));
    }
    md
}
