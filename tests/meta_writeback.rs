//! Writes into zero-mapped blocks through a write-back client proxy (a persistent VM
//! writing into its own disk, whose sidecar says those blocks are zero): the written bytes
//! must read back before and after the write-back and after a drop, never shadowed by the
//! zero map (which is stale once the write-back changed the file's mtime).
//!
//! The client proxy (write-back cache, sidecars) reaches the lab's Ganesha through a relay
//! that understands RPC record marking and can hold back the replies of one procedure
//! until told: that makes the arrival order of replies around a write-back deterministic.
//! Two regression tests pin a bug found this way (fixed): a reply to a call forwarded
//! before a write-back, arriving after it, was believed.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ssh::open_scratch;
use common::{Gridvfs, Lab, ctl, pseudo_random};
use nfs3_types::nfs3::stable_how;

const GETATTR: u32 = 1;

/// A reply held back: the connection's client side and the record (with its marks).
type Held = (Arc<Mutex<TcpStream>>, Vec<u8>);

/// A TCP relay to an NFS server that, while `hold` is set to a procedure, keeps the
/// replies to calls of that procedure until `release`.
struct HoldingRelay {
    addr: SocketAddr,
    hold: Arc<Mutex<Option<u32>>>,
    held: Arc<Mutex<Vec<Held>>>,
}

/// Reads one RPC record (all its fragments, marks kept); None at EOF.
fn read_record(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut rec = Vec::new();
    loop {
        let mut mark = [0u8; 4];
        s.read_exact(&mut mark).ok()?;
        let m = u32::from_be_bytes(mark);
        let at = rec.len();
        rec.extend_from_slice(&mark);
        rec.resize(at + 4 + (m & 0x7fff_ffff) as usize, 0);
        s.read_exact(&mut rec[at + 4..]).ok()?;
        if m & 0x8000_0000 != 0 {
            return Some(rec);
        }
    }
}

/// The big-endian word at byte `at` of a record's body (after its first mark): 0 is the
/// xid, 20 a call's procedure.
fn body_u32(rec: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        rec.get(4 + at..8 + at)?.try_into().ok()?,
    ))
}

impl HoldingRelay {
    fn start(to: SocketAddr) -> HoldingRelay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let hold: Arc<Mutex<Option<u32>>> = Arc::default();
        let held: Arc<Mutex<Vec<Held>>> = Arc::default();
        let (hold2, held2) = (hold.clone(), held.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                let Ok(mut s) = TcpStream::connect(to) else {
                    continue;
                };
                let _ = (c.set_nodelay(true), s.set_nodelay(true));
                // xid → procedure of the calls in flight on this connection.
                let procs: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
                let client = Arc::new(Mutex::new(c.try_clone().unwrap()));
                let (mut s_up, p_up) = (s.try_clone().unwrap(), procs.clone());
                std::thread::spawn(move || {
                    while let Some(rec) = read_record(&mut c) {
                        if let (Some(xid), Some(p)) = (body_u32(&rec, 0), body_u32(&rec, 20)) {
                            p_up.lock().unwrap().insert(xid, p);
                        }
                        if s_up.write_all(&rec).is_err() {
                            break;
                        }
                    }
                    let _ = s_up.shutdown(std::net::Shutdown::Write);
                });
                let (hold, held) = (hold2.clone(), held2.clone());
                std::thread::spawn(move || {
                    while let Some(rec) = read_record(&mut s) {
                        let p = body_u32(&rec, 0).and_then(|x| procs.lock().unwrap().remove(&x));
                        let h = *hold.lock().unwrap();
                        if p.is_some() && p == h {
                            held.lock().unwrap().push((client.clone(), rec));
                            continue;
                        }
                        if client.lock().unwrap().write_all(&rec).is_err() {
                            break;
                        }
                    }
                    let _ = client.lock().unwrap().shutdown(std::net::Shutdown::Write);
                });
            }
        });
        HoldingRelay { addr, hold, held }
    }

    /// Holds the replies to calls of procedure `p` from now on.
    fn hold(&self, p: u32) {
        *self.hold.lock().unwrap() = Some(p);
    }

    /// Waits until `n` replies are held (at most 10 s).
    fn wait_held(&self, n: usize) {
        let t0 = Instant::now();
        while self.held.lock().unwrap().len() < n {
            assert!(t0.elapsed() < Duration::from_secs(10), "no reply held");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops holding and sends the held replies, in the order they came.
    fn release(&self) {
        *self.hold.lock().unwrap() = None;
        for (client, rec) in self.held.lock().unwrap().drain(..) {
            let _ = client.lock().unwrap().write_all(&rec);
        }
    }
}

/// A 4 MiB disk image: 1 MiB of data, then 3 MiB of zeros, with a zero-map sidecar made
/// by `gridvfs meta generate` (blocks fetched by NFS; no file channel needed).
fn disk_with_zero_map(dir: &Path) -> Vec<u8> {
    let mut img = pseudo_random(1 << 20, 71);
    img.resize(4 << 20, 0);
    let path = dir.join("disk.img");
    std::fs::write(&path, &img).unwrap();
    let st = std::process::Command::new(common::bin())
        .args(["meta", "generate", "--fetch", "blocks"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success(), "gridvfs meta generate");
    img
}

/// A write-back client proxy with sidecars whose NFS next hop is `relay`.
fn client_proxy(lab: &Lab, relay: SocketAddr, cache: &Path, sock: &Path) -> Gridvfs {
    Gridvfs::start_config(&format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n\
         [upstream]\nnfs = \"tcp://{relay}\"\nmount = \"tcp://{}\"\n\
         {}{}[log]\nlevel = \"debug\"\n",
        lab.mount,
        common::write_back_cache(cache, ""),
        common::control_section(sock),
    ))
}

/// The relay to Ganesha, and a client proxy through it with its control socket.
struct Rig {
    relay: HoldingRelay,
    _tmp: tempfile::TempDir,
    sock: PathBuf,
    p: Gridvfs,
}

impl Rig {
    fn start(lab: &Lab) -> Rig {
        let relay = HoldingRelay::start(lab.nfs);
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("c.sock");
        let p = client_proxy(lab, relay.addr, &tmp.path().join("cache"), &sock);
        Rig {
            relay,
            _tmp: tmp,
            sock,
            p,
        }
    }
}

/// Reads the zero-mapped block at `AT` (zeros, answered by the zero map), then writes
/// `data` there and COMMITs.
async fn write_over_zero_map(
    c: &mut common::Client,
    fh: &nfs3_types::nfs3::nfs_fh3,
    sock: &Path,
    p: &Gridvfs,
    data: &[u8],
) {
    let z = common::read(c, fh, AT, 64 << 10).await;
    assert!(z.data.iter().all(|&b| b == 0));
    assert!(
        zero_reads(sock) >= 1,
        "the zero map is not in use\n{}",
        p.log_text()
    );
    common::write(c, fh, AT, data, stable_how::UNSTABLE).await;
    common::commit(c, fh).await;
}

fn zero_reads(sock: &Path) -> u64 {
    ctl(sock, &["status"]).1["meta"]["zero_reads"]
        .as_u64()
        .unwrap_or(0)
}

/// Where the test writes: 2 MiB in, a block the zero map says is zero.
const AT: u64 = 2 << 20;

/// The ordinary order (a persistent VM's session): a write into zero-mapped blocks reads
/// back before the write-back, after it (the sidecar is now stale) and after the cache is
/// dropped; the server's file then holds it.
#[test]
fn writes_into_zero_mapped_blocks_read_back_across_write_back_and_drop() {
    let lab = Lab::get();
    let (dir, name) = open_scratch(&lab, "meta-wb-zero");
    let mut img = disk_with_zero_map(&dir);
    let Rig {
        relay: _relay,
        _tmp,
        sock,
        p,
    } = Rig::start(&lab);
    let data = pseudo_random(64 << 10, 72);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = common::mount(p.endpoints(), &lab.export).await;
        let fh = common::lookup_path(&mut c, &name, "disk.img").await;
        write_over_zero_map(&mut c, &fh, &sock, &p, &data).await;
        let got = common::read(&mut c, &fh, AT, 64 << 10).await;
        common::assert_same_bytes("before the write-back", &got.data, &data);
        let (ok, v) = ctl(&sock, &["flush"]);
        assert!(ok, "flush: {v}");
        let got = common::read(&mut c, &fh, AT, 64 << 10).await;
        common::assert_same_bytes("after the write-back", &got.data, &data);
        let (ok, v) = ctl(&sock, &["flush", "--drop"]);
        assert!(ok, "flush --drop: {v}");
        let got = common::read(&mut c, &fh, AT, 64 << 10).await;
        common::assert_same_bytes("after the cache was dropped", &got.data, &data);
    });
    common::apply(&mut img, AT, &data);
    common::assert_same_bytes(
        "the server's file",
        &std::fs::read(dir.join("disk.img")).unwrap(),
        &img,
    );
}

/// Regression (the write-back did not tick the change clock): a GETATTR forwarded before
/// a write-back whose reply arrives after it was believed. Its attributes are the
/// server's from before the write-back — the size and mtime the sidecar was made for — so
/// the stale zero map counted as fresh again, and a READ of the bytes the client wrote
/// (and that are on the server) was answered with zeros by `MetaLayer::read`.
#[test]
fn a_getattr_reply_from_before_a_write_back_does_not_revive_the_stale_zero_map() {
    let lab = Lab::get();
    let (dir, name) = open_scratch(&lab, "meta-wb-race");
    let img = disk_with_zero_map(&dir);
    let Rig {
        relay,
        _tmp,
        sock,
        p,
    } = Rig::start(&lab);
    let data = pseudo_random(64 << 10, 73);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = common::mount(p.endpoints(), &lab.export).await;
        let mut c2 = common::mount(p.endpoints(), &lab.export).await;
        let fh = common::lookup_path(&mut c, &name, "disk.img").await;
        write_over_zero_map(&mut c, &fh, &sock, &p, &data).await;
        // Another GETATTR of the file (the kernel client revalidating) reaches the server
        // before the write-back; its reply is slow to come back (held by the relay).
        relay.hold(GETATTR);
        let fh2 = fh.clone();
        let slow = tokio::spawn(async move { common::getattr(&mut c2, &fh2).await });
        relay.wait_held(1);
        let (ok, v) = tokio::task::spawn_blocking({
            let sock = sock.clone();
            move || ctl(&sock, &["flush"])
        })
        .await
        .unwrap();
        assert!(ok, "flush: {v}");
        let mut on_disk = img.clone();
        common::apply(&mut on_disk, AT, &data);
        common::assert_same_bytes(
            "the server's file after the write-back",
            &std::fs::read(dir.join("disk.img")).unwrap(),
            &on_disk,
        );
        relay.release();
        slow.await.unwrap();
        let zr = zero_reads(&sock);
        let got = common::read(&mut c, &fh, AT, 64 << 10).await;
        assert!(
            got.data[..] == data[..],
            "the bytes written into zero-mapped blocks (on the server since the write-back) \
             read back as {} after it; READs answered by the zero map: {zr} before this one, \
             {} after",
            if got.data.iter().all(|&b| b == 0) {
                "zeros"
            } else {
                "other bytes"
            },
            zero_reads(&sock)
        );
    });
    drop(p);
}

const READ: u32 = 6;

/// Regression (same cause as above): a READ forwarded before a write-back (a miss on a
/// block the client wrote only part of) whose reply arrives after it was believed: its
/// pre-write-back bytes were put into the cache over the block the write-back had just
/// marked clean, so later READs returned old bytes although the server has the new ones;
/// and that READ itself, sent after the WRITE's COMMIT was answered, got the old bytes
/// (no longer merged with the dirty ones). Now a reply older than a change of its file
/// teaches nothing and gets the cache's newer bytes laid over it.
#[test]
fn a_read_reply_from_before_a_write_back_does_not_refill_old_bytes() {
    let lab = Lab::get();
    let (dir, name) = open_scratch(&lab, "meta-wb-read");
    let mut img = pseudo_random(512 << 10, 74);
    std::fs::write(dir.join("f.img"), &img).unwrap();
    let Rig {
        relay,
        _tmp,
        sock,
        p,
    } = Rig::start(&lab);
    let data = pseudo_random(4096, 75);
    let (block, at) = (64u64 << 10, (64u64 << 10) + 4096);
    common::apply(&mut img, at, &data);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = common::mount(p.endpoints(), &lab.export).await;
        let mut c2 = common::mount(p.endpoints(), &lab.export).await;
        let fh = common::lookup_path(&mut c, &name, "f.img").await;
        // 4 KiB into a 64 KiB block never read: the block is not whole in the cache.
        common::write(&mut c, &fh, at, &data, stable_how::UNSTABLE).await;
        common::commit(&mut c, &fh).await;
        // Another client reads the block: a miss, forwarded; its reply is slow.
        relay.hold(READ);
        let fh2 = fh.clone();
        let slow = tokio::spawn(async move {
            common::read(&mut c2, &fh2, block, 64 << 10)
                .await
                .data
                .to_vec()
        });
        relay.wait_held(1);
        let (ok, v) = tokio::task::spawn_blocking({
            let sock = sock.clone();
            move || ctl(&sock, &["flush"])
        })
        .await
        .unwrap();
        assert!(ok, "flush: {v}");
        common::assert_same_bytes(
            "the server's file after the write-back",
            &std::fs::read(dir.join("f.img")).unwrap(),
            &img,
        );
        relay.release();
        let slow = slow.await.unwrap();
        let want = &img[block as usize..(block + (64 << 10)) as usize];
        let got = common::read(&mut c, &fh, block, 64 << 10).await;
        assert!(
            got.data[..] == want[..] && slow == want,
            "after the write-back, a READ of the block the client wrote returns {}; the READ \
             sent before the write-back (after the COMMIT) returned {}",
            if got.data[..] == want[..] {
                "the new bytes"
            } else {
                "old bytes"
            },
            if slow == want {
                "the new bytes"
            } else {
                "old bytes"
            },
        );
    });
    drop(p);
}
