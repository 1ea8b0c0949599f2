//! Write-back (paper §3.2.1, §3.2.3) against the real server: WRITE and COMMIT are
//! answered by the proxy from its disk cache and nothing reaches Ganesha until the
//! middleware asks for a flush (SIGUSR1, SIGUSR2, `gridvfs flush`); meanwhile the client
//! sees its own data and sizes; the write verifier only changes when data was lost; and
//! dirty data survives a restart and an unreachable next hop. Every check is on the bytes
//! of the file on Ganesha's export directory.
//!
//! Where upstream calls are counted, the next hop is a second gridvfs in front of Ganesha
//! whose control socket reports the calls it received (`calls.READ`, `calls.WRITE`).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{
    Client, Gridvfs, Lab, apply, assert_same_bytes, commit, control_section, create, ctl,
    ctl_spawn, ctl_wait, getattr, logged, lookup_in, mount, pseudo_random, read, read_all,
    scratch_fh, set_size, signal, write, write_back_cache, write_back_cache_with, write_chunks,
};
use nfs3_types::nfs3::{Nfs3Option, Nfs3Result, REMOVE3args, diropargs3, nfs_fh3, stable_how};

/// A write-back proxy in front of `up` with a control socket, and the directory holding
/// its cache and socket.
struct Proxy {
    gridvfs: Gridvfs,
    tmp: tempfile::TempDir,
}

impl Proxy {
    fn start(up: common::Endpoints, cache_extra: &str) -> Proxy {
        let tmp = tempfile::tempdir().unwrap();
        let gridvfs = Self::run(up, "127.0.0.1:0", tmp.path(), cache_extra);
        Proxy { gridvfs, tmp }
    }

    /// Starts gridvfs with the cache and socket in `tmp` (again, for a restart).
    fn run(up: common::Endpoints, listen: &str, tmp: &Path, cache_extra: &str) -> Gridvfs {
        let cfg = format!(
            "{}{}",
            write_back_cache(&tmp.join("cache"), cache_extra),
            control_section(&tmp.join("ctl.sock"))
        );
        Gridvfs::start_with(up, listen, "", &cfg)
    }

    fn socket(&self) -> PathBuf {
        self.tmp.path().join("ctl.sock")
    }

    /// `gridvfs status`: the proxy's dirty bytes.
    fn dirty_bytes(&self) -> u64 {
        let (ok, s) = ctl(&self.socket(), &["status"]);
        assert!(ok, "{s}");
        s["cache"]["dirty_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no cache.dirty_bytes in {s}"))
    }

    /// `gridvfs flush`: returns the bytes written back.
    fn flush(&self) -> u64 {
        let (ok, f) = ctl(&self.socket(), &["flush"]);
        assert!(
            ok && f["ok"] == true,
            "flush failed: {f}\nlog:\n{}",
            self.gridvfs.log_text()
        );
        f["written"]
            .as_u64()
            .unwrap_or_else(|| panic!("no `written` in {f}"))
    }

    /// SIGUSR1, and waits for the write-back to finish; returns its `written=`.
    fn flush_by_signal(&self) -> u64 {
        let before = self.gridvfs.log_count("write-back done");
        signal(self.gridvfs.pid(), "USR1");
        let log = self.gridvfs.wait_log("write-back done", before + 1);
        let line = log
            .lines()
            .rfind(|l| l.contains("write-back done"))
            .unwrap();
        assert!(line.contains("written="), "no written= on the line: {line}");
        logged(line, "written=")
    }
}

/// A counting next hop: a plain gridvfs with a control socket, in front of Ganesha.
struct Hop {
    gridvfs: Gridvfs,
    tmp: tempfile::TempDir,
}

impl Hop {
    fn start(lab: &Lab) -> Hop {
        let tmp = tempfile::tempdir().unwrap();
        let gridvfs = Self::run(lab, "127.0.0.1:0", tmp.path());
        Hop { gridvfs, tmp }
    }

    fn run(lab: &Lab, listen: &str, tmp: &Path) -> Gridvfs {
        let cfg = control_section(&tmp.join("hop.sock"));
        Gridvfs::start_with(lab.endpoint(), listen, "", &cfg)
    }

    /// Calls of procedure `proc_` (e.g. "READ") the hop received so far.
    fn calls(&self, proc_: &str) -> u64 {
        let (ok, s) = ctl(&self.tmp.path().join("hop.sock"), &["status"]);
        assert!(ok, "{s}");
        s["calls"][proc_].as_u64().unwrap_or(0)
    }
}

/// The file as it is on Ganesha's disk (empty if absent).
fn on_disk(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_default()
}

/// An async call that must not hang (e.g. while the next hop is down).
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in 20 s"))
}

enum FlushBy {
    Signal,
    Socket,
}

/// A new file (5 MiB + 12345 bytes in unaligned UNSTABLE WRITEs, then an unaligned
/// overwrite) and an existing one (overwritten in the middle, extended with FILE_SYNC):
/// after COMMIT, Ganesha's disk still holds the old bytes and the proxy serves the new
/// ones; after the flush, the disk is byte-equal to what was written.
async fn written_back_only_by_a_flush(test: &str, by: FlushBy) {
    let lab = Lab::get();
    let (dir, name) = lab.scratch(test);
    let old = pseudo_random(3 << 20, 1);
    std::fs::write(dir.join("old.bin"), &old).unwrap();
    let p = Proxy::start(lab.endpoint(), "");
    let mut c = mount(p.gridvfs.endpoints(), &lab.export).await;
    let d = scratch_fh(&mut c, &name).await;

    let new_fh = create(&mut c, &d, "new.bin").await;
    let mut new_img = Vec::new();
    let data = pseudo_random((5 << 20) + 12345, 2);
    let mut verfs = write_chunks(&mut c, &new_fh, 0, &data, 200_003, stable_how::UNSTABLE).await;
    apply(&mut new_img, 0, &data);
    let patch = pseudo_random(100_003, 3);
    verfs.push(
        write(&mut c, &new_fh, 1_234_567, &patch, stable_how::UNSTABLE)
            .await
            .verf,
    );
    apply(&mut new_img, 1_234_567, &patch);
    // A MiB of zeros (a VM's free memory): holes in the cache, read back without
    // reading its files (status `zero_reads`), written back as zeros.
    let zeros = vec![0u8; 1 << 20];
    verfs.push(
        write(&mut c, &new_fh, 3 << 20, &zeros, stable_how::UNSTABLE)
            .await
            .verf,
    );
    apply(&mut new_img, 3 << 20, &zeros);
    let dirty_new = new_img.len() as u64;

    let old_fh = lookup_in(&mut c, &d, "old.bin").await.object;
    let mut old_img = old.clone();
    let mid = pseudo_random(777_777, 4);
    verfs.extend(
        write_chunks(
            &mut c,
            &old_fh,
            1_000_001,
            &mid,
            65_000,
            stable_how::UNSTABLE,
        )
        .await,
    );
    apply(&mut old_img, 1_000_001, &mid);
    let tail = pseudo_random(123_457, 5);
    let w = write(
        &mut c,
        &old_fh,
        old.len() as u64,
        &tail,
        stable_how::FILE_SYNC,
    )
    .await;
    assert_eq!(w.committed, stable_how::FILE_SYNC, "FILE_SYNC answered as");
    verfs.push(w.verf);
    apply(&mut old_img, old.len() as u64, &tail);
    let dirty_old = (mid.len() + tail.len()) as u64;

    for fh in [&new_fh, &old_fh] {
        let cm = commit(&mut c, fh).await;
        verfs.push(cm.verf);
    }
    assert!(
        verfs.iter().all(|v| *v == verfs[0]),
        "the write verifier changed with no restart: {verfs:?}"
    );

    // Held back: Ganesha has the empty new file and the old bytes.
    assert!(
        on_disk(&dir.join("new.bin")).is_empty(),
        "new.bin reached the server before a flush"
    );
    assert_same_bytes(
        "old.bin on the server before a flush",
        &on_disk(&dir.join("old.bin")),
        &old,
    );
    // The client sees its own writes.
    assert_same_bytes(
        "new.bin read back",
        &read_all(&mut c, &new_fh).await,
        &new_img,
    );
    assert_same_bytes(
        "old.bin read back",
        &read_all(&mut c, &old_fh).await,
        &old_img,
    );
    let (ok, st) = ctl(&p.socket(), &["status"]);
    assert!(ok, "{st}");
    let zero_reads = st["cache"]["zero_reads"].as_u64().unwrap_or(0);
    assert!(
        zero_reads > 0,
        "the zero MiB was read from the cache's files: {st}"
    );
    let dirty = p.dirty_bytes();
    assert!(
        dirty >= dirty_new + dirty_old,
        "status shows {dirty} dirty bytes, {} were written",
        dirty_new + dirty_old
    );

    let written = match by {
        FlushBy::Signal => p.flush_by_signal(),
        FlushBy::Socket => p.flush(),
    };
    assert!(
        written >= dirty_new + dirty_old,
        "flush wrote back {written} bytes, {} were dirty",
        dirty_new + dirty_old
    );
    assert_same_bytes(
        "new.bin on the server",
        &on_disk(&dir.join("new.bin")),
        &new_img,
    );
    assert_same_bytes(
        "old.bin on the server",
        &on_disk(&dir.join("old.bin")),
        &old_img,
    );
    assert_eq!(p.dirty_bytes(), 0, "dirty bytes left after the flush");
    // Still served (the blocks stay cached, now clean), and nothing left to write.
    assert_same_bytes(
        "new.bin after the flush",
        &read_all(&mut c, &new_fh).await,
        &new_img,
    );
    assert_eq!(p.flush(), 0, "a second flush wrote again");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn held_back_until_sigusr1() {
    written_back_only_by_a_flush("wb-usr1", FlushBy::Signal).await;
}

#[tokio::test]
async fn held_back_until_flush_over_the_control_socket() {
    written_back_only_by_a_flush("wb-flush", FlushBy::Socket).await;
}

/// Size of `fh` as Ganesha sees it, asked directly (not through the proxy).
async fn size_at_server(direct: &mut Client, fh: &nfs_fh3) -> u64 {
    getattr(direct, fh).await.size
}

/// While a file has dirty data the client sees its local size and mtime in GETATTR,
/// LOOKUP, WRITE and READ replies, Ganesha the old ones; READ past Ganesha's end of file
/// returns the dirty bytes with an exact `eof`; SETATTR(size) truncates and extends like
/// a local disk (zeros past the cut), and the flush leaves exactly that on the disk.
#[tokio::test]
async fn client_sees_local_sizes_and_bytes_before_the_flush() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("wb-attrs");
    let file = dir.join("f");
    let old = pseudo_random(100_000, 11);
    std::fs::write(&file, &old).unwrap();
    let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    let p = Proxy::start(lab.endpoint(), "");
    let mut c = mount(p.gridvfs.endpoints(), &lab.export).await;
    let mut direct = mount(lab.endpoint(), &lab.export).await;
    let d = scratch_fh(&mut c, &name).await;
    let fh = lookup_in(&mut c, &d, "f").await.object;
    let mut img = old.clone();
    assert_same_bytes("before any write", &read_all(&mut c, &fh).await, &img);

    // Append 50,000 bytes.
    let tail = pseudo_random(50_000, 12);
    let w = write(&mut c, &fh, 100_000, &tail, stable_how::UNSTABLE).await;
    apply(&mut img, 100_000, &tail);
    let Nfs3Option::Some(after) = w.file_wcc.after else {
        panic!("WRITE reply without post-op attributes")
    };
    assert_eq!(after.size, 150_000, "WRITE reply: size");
    commit(&mut c, &fh).await;
    let a = getattr(&mut c, &fh).await;
    assert_eq!(
        a.size, 150_000,
        "GETATTR through the proxy: size after append"
    );
    assert!(
        a.mtime.seconds > 1_000_000_000,
        "GETATTR through the proxy: mtime not the local one ({:?})",
        a.mtime
    );
    let Nfs3Option::Some(la) = lookup_in(&mut c, &d, "f").await.obj_attributes else {
        panic!("LOOKUP without attributes")
    };
    assert_eq!(
        la.size, 150_000,
        "LOOKUP through the proxy: size after append"
    );
    assert_eq!(
        size_at_server(&mut direct, &fh).await,
        100_000,
        "Ganesha's size"
    );
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 100_000);
    let m = std::fs::metadata(&file).unwrap().modified().unwrap();
    assert_eq!(m, long_ago, "Ganesha's file was touched before a flush");

    // READ past Ganesha's EOF, inside the dirty data.
    let r = read(&mut c, &fh, 100_000, 10_000).await;
    assert!(!r.eof, "eof set inside the file");
    assert_same_bytes("READ 100000+10000", &r.data, &tail[..10_000]);
    let r = read(&mut c, &fh, 90_000, 20_000).await;
    assert_same_bytes("READ across the old EOF", &r.data, &img[90_000..110_000]);
    let r = read(&mut c, &fh, 120_000, 100_000).await;
    assert!(r.eof, "no eof at the local end of file");
    assert_same_bytes("READ to the local EOF", &r.data, &img[120_000..]);
    let Nfs3Option::Some(ra) = r.file_attributes else {
        panic!("READ without attributes")
    };
    assert_eq!(ra.size, 150_000, "READ reply: size");
    let r = read(&mut c, &fh, 150_000, 10).await;
    assert!(r.eof && r.data.is_empty(), "READ at the local EOF");

    // Dirty overwrite across the coming cut, then truncate, then extend.
    let over = pseudo_random(20_000, 13);
    write(&mut c, &fh, 50_000, &over, stable_how::UNSTABLE).await;
    apply(&mut img, 50_000, &over);
    let s = set_size(&mut c, &fh, 60_000).await;
    img.truncate(60_000);
    if let Nfs3Option::Some(after) = s.obj_wcc.after {
        assert_eq!(after.size, 60_000, "SETATTR reply: size");
    }
    assert_eq!(
        getattr(&mut c, &fh).await.size,
        60_000,
        "size after truncation"
    );
    assert_same_bytes("after truncation", &read_all(&mut c, &fh).await, &img);
    set_size(&mut c, &fh, 200_000).await;
    img.resize(200_000, 0);
    assert_eq!(
        getattr(&mut c, &fh).await.size,
        200_000,
        "size after extension"
    );
    let got = read_all(&mut c, &fh).await;
    assert_same_bytes("after truncate + extend (zeros past 60000)", &got, &img);
    let late = pseudo_random(1_000, 14);
    write(&mut c, &fh, 180_000, &late, stable_how::UNSTABLE).await;
    apply(&mut img, 180_000, &late);
    commit(&mut c, &fh).await;
    assert_same_bytes("before the flush", &read_all(&mut c, &fh).await, &img);
    assert!(
        on_disk(&file)[50_000..60_000] != img[50_000..60_000],
        "the dirty overwrite reached the server before a flush"
    );

    p.flush();
    assert_same_bytes("the server's file after the flush", &on_disk(&file), &img);
    assert_eq!(size_at_server(&mut direct, &fh).await, 200_000);
    assert_eq!(getattr(&mut c, &fh).await.size, 200_000);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Through a counting next hop: no WRITE reaches it before a flush and no READ while the
/// data is cached; SIGUSR1 writes back and keeps the blocks (a re-read makes no READ);
/// SIGUSR2 writes back and drops them (the next re-read fetches again, once).
#[tokio::test]
async fn sigusr1_keeps_sigusr2_drops_and_the_next_read_refetches() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("wb-drop");
    let hop = Hop::start(&lab);
    let p = Proxy::start(hop.gridvfs.endpoints(), "");
    let mut c = mount(p.gridvfs.endpoints(), &lab.export).await;
    let d = scratch_fh(&mut c, &name).await;
    let fh = create(&mut c, &d, "f.bin").await;
    let data = pseudo_random(2 << 20, 21);
    write_chunks(&mut c, &fh, 0, &data, 256 << 10, stable_how::UNSTABLE).await;
    commit(&mut c, &fh).await;
    assert_same_bytes("read back", &read_all(&mut c, &fh).await, &data);
    assert_eq!(
        hop.calls("WRITE"),
        0,
        "a WRITE reached the next hop before a flush"
    );
    assert_eq!(
        hop.calls("COMMIT"),
        0,
        "a COMMIT reached the next hop before a flush"
    );
    assert_eq!(
        hop.calls("READ"),
        0,
        "dirty data was read from the next hop"
    );
    assert!(on_disk(&dir.join("f.bin")).is_empty());

    p.flush_by_signal();
    assert_same_bytes("after SIGUSR1", &on_disk(&dir.join("f.bin")), &data);
    assert!(hop.calls("WRITE") > 0);
    assert_same_bytes("re-read after SIGUSR1", &read_all(&mut c, &fh).await, &data);
    assert_eq!(hop.calls("READ"), 0, "SIGUSR1 dropped cached blocks");

    // Written again, then SIGUSR2: written back first, then dropped.
    let patch = pseudo_random(70_000, 22);
    write(&mut c, &fh, 1_000_000, &patch, stable_how::UNSTABLE).await;
    commit(&mut c, &fh).await;
    let mut img = data.clone();
    apply(&mut img, 1_000_000, &patch);
    let before = p.gridvfs.log_count("cache dropped");
    signal(p.gridvfs.pid(), "USR2");
    let log = p.gridvfs.wait_log("cache dropped", before + 1);
    let wb = log
        .rfind("write-back done")
        .expect("no write-back before the drop");
    assert!(
        wb < log.rfind("cache dropped").unwrap(),
        "cache dropped before the write-back:\n{log}"
    );
    assert_same_bytes("after SIGUSR2", &on_disk(&dir.join("f.bin")), &img);
    assert_same_bytes("re-read after SIGUSR2", &read_all(&mut c, &fh).await, &img);
    let reads = hop.calls("READ");
    assert!(
        reads >= 2,
        "2 MiB re-read after the drop with only {reads} upstream READs"
    );
    assert_same_bytes("third read", &read_all(&mut c, &fh).await, &img);
    assert_eq!(
        hop.calls("READ"),
        reads,
        "the refetched blocks were not cached"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The next hop is killed with SIGKILL while the proxy holds dirty data: cached and dirty
/// data is still read, new writes and COMMITs are still answered; `gridvfs flush` waits
/// while the hop is down and completes once it is back on the same port.
#[tokio::test]
async fn upstream_down_with_dirty_data() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("wb-down");
    let clean = pseudo_random(1 << 20, 31);
    std::fs::write(dir.join("clean.bin"), &clean).unwrap();
    let mut hop = Hop::start(&lab);
    let hop_addr = hop.gridvfs.addr.to_string();
    let p = Proxy::start(hop.gridvfs.endpoints(), "");
    let mut c = mount(p.gridvfs.endpoints(), &lab.export).await;
    let d = scratch_fh(&mut c, &name).await;
    let clean_fh = lookup_in(&mut c, &d, "clean.bin").await.object;
    assert_same_bytes("clean.bin", &read_all(&mut c, &clean_fh).await, &clean);
    let fh = create(&mut c, &d, "dirty.bin").await;
    let mut img = pseudo_random((3 << 20) + 5, 32);
    write_chunks(&mut c, &fh, 0, &img, 300_000, stable_how::UNSTABLE).await;
    commit(&mut c, &fh).await;

    hop.gridvfs.kill();
    assert_same_bytes(
        "cached clean.bin, hop down",
        &within("READ clean.bin", read_all(&mut c, &clean_fh)).await,
        &clean,
    );
    assert_same_bytes(
        "dirty.bin, hop down",
        &within("READ dirty.bin", read_all(&mut c, &fh)).await,
        &img,
    );
    let more = pseudo_random(250_001, 33);
    within(
        "WRITE, hop down",
        write(&mut c, &fh, 2_000_000, &more, stable_how::UNSTABLE),
    )
    .await;
    apply(&mut img, 2_000_000, &more);
    let ext = pseudo_random(4_321, 34);
    let at = img.len() as u64;
    within(
        "WRITE FILE_SYNC, hop down",
        write(&mut c, &fh, at, &ext, stable_how::FILE_SYNC),
    )
    .await;
    apply(&mut img, at, &ext);
    within("COMMIT, hop down", commit(&mut c, &fh)).await;
    assert_same_bytes(
        "dirty.bin after new writes, hop down",
        &within("READ", read_all(&mut c, &fh)).await,
        &img,
    );

    let flush = ctl_spawn(&p.socket(), &["flush"]);
    std::thread::sleep(Duration::from_secs(3));
    let mut flush = flush;
    assert!(
        flush.try_wait().unwrap().is_none(),
        "gridvfs flush finished while the next hop was down: {:?}",
        flush.wait_with_output()
    );
    assert!(
        on_disk(&dir.join("dirty.bin")).is_empty(),
        "data reached the server with the hop down?"
    );

    let _hop = Hop::run(&lab, &hop_addr, hop.tmp.path());
    let (ok, f) = ctl_wait(flush, Duration::from_secs(60));
    assert!(ok && f["ok"] == true, "flush after the hop came back: {f}");
    assert_same_bytes(
        "dirty.bin on the server",
        &on_disk(&dir.join("dirty.bin")),
        &img,
    );
    assert_same_bytes(
        "clean.bin untouched",
        &on_disk(&dir.join("clean.bin")),
        &clean,
    );
    assert_eq!(p.dirty_bytes(), 0);
    std::fs::remove_dir_all(dir).unwrap();
}

/// WRITE and COMMIT answer the same verifier, and it survives a clean restart (SIGTERM
/// with `flush_on_exit = false`) on the same cache directory; the dirty data survives it
/// too, still held back, and is written back by the next flush.
#[tokio::test]
async fn verifier_and_dirty_data_survive_a_clean_restart() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("wb-restart");
    let no_flush = "flush_on_exit = false";
    let mut p = Proxy::start(lab.endpoint(), no_flush);
    let addr = p.gridvfs.addr.to_string();
    let mut c = mount(p.gridvfs.endpoints(), &lab.export).await;
    let d = scratch_fh(&mut c, &name).await;
    let fh = create(&mut c, &d, "f.bin").await;
    let mut img = pseudo_random((1 << 20) + 999, 41);
    let mut verfs = write_chunks(&mut c, &fh, 0, &img, 100_000, stable_how::UNSTABLE).await;
    let sync = pseudo_random(5_000, 42);
    let w = write(&mut c, &fh, 7_777, &sync, stable_how::FILE_SYNC).await;
    apply(&mut img, 7_777, &sync);
    verfs.push(w.verf);
    let verf = commit(&mut c, &fh).await.verf;
    assert!(
        verfs.iter().all(|v| *v == verf),
        "WRITE verifiers {verfs:?} != COMMIT verifier {verf:?}"
    );

    drop(c);
    assert_eq!(p.gridvfs.stop(), Some(0), "SIGTERM: exit status");
    assert!(
        on_disk(&dir.join("f.bin")).is_empty(),
        "flush_on_exit = false, yet the data was written back at exit"
    );
    p.gridvfs = Proxy::run(lab.endpoint(), &addr, p.tmp.path(), no_flush);
    let mut c = mount(p.gridvfs.endpoints(), &lab.export).await;
    assert_same_bytes(
        "read back after the restart",
        &read_all(&mut c, &fh).await,
        &img,
    );
    assert!(p.dirty_bytes() > 0, "no dirty data after the restart");
    let more = pseudo_random(3_000, 43);
    let w = write(&mut c, &fh, 500_000, &more, stable_how::UNSTABLE).await;
    apply(&mut img, 500_000, &more);
    assert_eq!(
        w.verf, verf,
        "WRITE verifier changed across a clean restart"
    );
    assert_eq!(
        commit(&mut c, &fh).await.verf,
        verf,
        "COMMIT verifier changed across a clean restart"
    );
    assert!(on_disk(&dir.join("f.bin")).is_empty());
    p.flush();
    assert_same_bytes(
        "the server's file after the flush",
        &on_disk(&dir.join("f.bin")),
        &img,
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// With the default `flush_on_exit`, SIGTERM writes everything back before exit 0.
#[tokio::test]
async fn sigterm_writes_back_before_exit() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("wb-term");
    let mut p = Proxy::start(lab.endpoint(), "");
    let mut c = mount(p.gridvfs.endpoints(), &lab.export).await;
    let d = scratch_fh(&mut c, &name).await;
    let fh = create(&mut c, &d, "f.bin").await;
    let img = pseudo_random((2 << 20) + 17, 51);
    write_chunks(&mut c, &fh, 0, &img, 1 << 20, stable_how::UNSTABLE).await;
    commit(&mut c, &fh).await;
    assert!(on_disk(&dir.join("f.bin")).is_empty());
    drop(c);
    assert_eq!(p.gridvfs.stop(), Some(0), "SIGTERM: exit status");
    assert_same_bytes("written back at exit", &on_disk(&dir.join("f.bin")), &img);
    std::fs::remove_dir_all(dir).unwrap();
}

/// REMOVE of a file with dirty data, like on a local disk: gone, and the flush neither
/// brings it back nor gets stuck on it; a file renamed while dirty is written back under
/// its new name.
#[tokio::test]
async fn remove_and_rename_of_dirty_files() {
    use nfs3_types::nfs3::RENAME3args;
    let lab = Lab::get();
    let (dir, name) = lab.scratch("wb-remove");
    let p = Proxy::start(lab.endpoint(), "");
    let mut c = mount(p.gridvfs.endpoints(), &lab.export).await;
    let d = scratch_fh(&mut c, &name).await;
    let gone = create(&mut c, &d, "gone.bin").await;
    write_chunks(
        &mut c,
        &gone,
        0,
        &pseudo_random(300_000, 61),
        65536,
        stable_how::UNSTABLE,
    )
    .await;
    commit(&mut c, &gone).await;
    let moved = create(&mut c, &d, "a.bin").await;
    let img = pseudo_random(200_001, 62);
    write_chunks(&mut c, &moved, 0, &img, 65536, stable_how::UNSTABLE).await;
    commit(&mut c, &moved).await;

    let r = c
        .remove(&REMOVE3args {
            object: diropargs3 {
                dir: d.clone(),
                name: b"gone.bin".as_slice().into(),
            },
        })
        .await
        .unwrap();
    assert!(matches!(r, Nfs3Result::Ok(_)), "REMOVE");
    let r = c
        .rename(&RENAME3args {
            from: diropargs3 {
                dir: d.clone(),
                name: b"a.bin".as_slice().into(),
            },
            to: diropargs3 {
                dir: d.clone(),
                name: b"b.bin".as_slice().into(),
            },
        })
        .await
        .unwrap();
    assert!(matches!(r, Nfs3Result::Ok(_)), "RENAME");
    p.flush();
    assert!(!dir.join("gone.bin").exists(), "the removed file came back");
    assert!(!dir.join("a.bin").exists());
    assert_same_bytes("renamed file", &on_disk(&dir.join("b.bin")), &img);
    assert_eq!(p.dirty_bytes(), 0);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Truncation of a file whose blocks fill their cache sets with dirty data (a tiny cache:
/// 2 sets of 2 ways of 16 KiB): the cut block cannot be rewritten copy-on-write in its
/// full set, yet the truncation must hold like on a local disk — the size, the bytes,
/// and what the flush leaves on the server.
#[tokio::test]
async fn truncation_in_a_cache_full_of_dirty_blocks() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("wb-trunc-full");
    let tiny = "size = \"64KiB\"\nblock_size = \"16KiB\"\nways = 2\nbanks = 1\n";
    let tmp = tempfile::tempdir().unwrap();
    let cache = write_back_cache_with(&tmp.path().join("cache"), tiny, "");
    let p = Proxy {
        gridvfs: Gridvfs::start_with(
            lab.endpoint(),
            "127.0.0.1:0",
            "",
            &format!("{cache}{}", control_section(&tmp.path().join("ctl.sock"))),
        ),
        tmp,
    };
    let mut c = mount(p.gridvfs.endpoints(), &lab.export).await;
    let d = scratch_fh(&mut c, &name).await;
    let fh = create(&mut c, &d, "f.bin").await;
    let mut img = pseudo_random(64 << 10, 71);
    write_chunks(&mut c, &fh, 0, &img, 16 << 10, stable_how::UNSTABLE).await;
    commit(&mut c, &fh).await;
    assert!(p.dirty_bytes() > 0);

    set_size(&mut c, &fh, 20_000).await;
    img.truncate(20_000);
    assert_eq!(
        getattr(&mut c, &fh).await.size,
        20_000,
        "size after truncation"
    );
    assert_same_bytes("read after truncation", &read_all(&mut c, &fh).await, &img);
    p.flush();
    assert_same_bytes(
        "the server's file after the flush",
        &on_disk(&dir.join("f.bin")),
        &img,
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Clients keep being served during a flush, and what they write meanwhile is not lost:
/// a block rewritten while it is being written back stays dirty (the next flush takes
/// it), whether or not the running flush already sent it.
#[tokio::test]
async fn writes_during_a_flush_are_kept() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("wb-during");
    let p = Proxy::start(lab.endpoint(), "");
    let mut c = mount(p.gridvfs.endpoints(), &lab.export).await;
    let d = scratch_fh(&mut c, &name).await;
    let fh = create(&mut c, &d, "f.bin").await;
    let mut img = pseudo_random(40 << 20, 81);
    write_chunks(&mut c, &fh, 0, &img, 1 << 20, stable_how::UNSTABLE).await;
    commit(&mut c, &fh).await;

    let mut flush = ctl_spawn(&p.socket(), &["flush"]);
    let mut during = 0;
    let mut x = 82u64;
    for i in 0..300u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 20) % ((40 << 20) - 70_000);
        let data = pseudo_random(1 + (x % 70_000) as usize, i);
        write(&mut c, &fh, off, &data, stable_how::UNSTABLE).await;
        apply(&mut img, off, &data);
        if flush.try_wait().unwrap().is_none() {
            during += 1;
        }
    }
    commit(&mut c, &fh).await;
    let (ok, f) = ctl_wait(flush, Duration::from_secs(60));
    assert!(ok && f["ok"] == true, "{f}");
    assert!(
        during > 0,
        "the flush ended before the first write; nothing tested"
    );
    p.flush();
    assert_same_bytes("the server's file", &on_disk(&dir.join("f.bin")), &img);
    assert_same_bytes("read back", &read_all(&mut c, &fh).await, &img);
    std::fs::remove_dir_all(dir).unwrap();
}

/// CREATE UNCHECKED with `size = 0` of an existing file with dirty data (NFSv3's
/// create-or-truncate in one call): the old dirty bytes go, the size is the new one,
/// and after the flush the server has exactly the new contents. Three times over before
/// the flush (the same truncation again keeps its record), the middle round shorter.
#[tokio::test]
async fn create_with_a_size_truncates_a_dirty_file() {
    use nfs3_types::nfs3::{CREATE3args, createhow3, filename3, sattr3};
    use nfs3_types::xdr_codec::Opaque;
    let lab = Lab::get();
    let (dir, name) = lab.scratch("wb-create-trunc");
    let p = Proxy::start(lab.endpoint(), "");
    let mut c = mount(p.gridvfs.endpoints(), &lab.export).await;
    let d = scratch_fh(&mut c, &name).await;
    let fh = create(&mut c, &d, "f").await;
    let old = pseudo_random(200_000, 91);
    write(&mut c, &fh, 0, &old, stable_how::UNSTABLE).await;
    commit(&mut c, &fh).await;
    // Three rounds, as a build rewrites an object: the second and third find the first's
    // truncation still to apply at the server (no flush between) and keep its record. A
    // shorter round after a longer one shows any byte the truncation failed to cut.
    let mut new = Vec::new();
    for (len, seed) in [(30_000, 92), (10_000, 93), (50_000, 94)] {
        let args = CREATE3args {
            where_: diropargs3 {
                dir: d.clone(),
                name: filename3(Opaque::owned(b"f".to_vec())),
            },
            how: createhow3::UNCHECKED(sattr3 {
                size: Nfs3Option::Some(0),
                ..Default::default()
            }),
        };
        let Nfs3Result::Ok(_) = c.create(&args).await.unwrap() else {
            panic!("CREATE with size 0 failed");
        };
        assert_eq!(
            getattr(&mut c, &fh).await.size,
            0,
            "size after CREATE size=0"
        );
        new = pseudo_random(len, seed);
        write(&mut c, &fh, 0, &new, stable_how::UNSTABLE).await;
        commit(&mut c, &fh).await;
        assert_eq!(getattr(&mut c, &fh).await.size, new.len() as u64);
        assert_same_bytes("read through the proxy", &read_all(&mut c, &fh).await, &new);
        if len == 10_000 {
            // Read it after a truncation to a shorter length: nothing of the last round's.
            let (mut c2, fh2) = (mount(p.gridvfs.endpoints(), &lab.export).await, fh.clone());
            assert_same_bytes("a second client", &read_all(&mut c2, &fh2).await, &new);
        }
    }
    p.flush();
    assert_same_bytes("server copy", &std::fs::read(dir.join("f")).unwrap(), &new);
}
