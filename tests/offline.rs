//! The next hop down: a proxy restarted on its cache directory serves cached files
//! (GETATTR from the attributes it kept, READ from its blocks) and takes writes, and the
//! writes reach the server once the next hop is back and the middleware flushes.
//! Raw RPCs with a file handle learned earlier: a client that already had the file open
//! (MOUNT and LOOKUP need the server).

mod common;

use std::net::TcpStream;

use common::raw::{self, be, call, recv, send};
use common::{Gridvfs, Lab, lookup_path, pseudo_random};

const NFS: u32 = 100_003;

fn fh_arg(fh: &[u8]) -> Vec<u8> {
    let mut a = be(fh.len() as u32).to_vec();
    a.extend_from_slice(fh);
    a.resize(4 + fh.len().div_ceil(4) * 4, 0);
    a
}

fn rpc(s: &mut TcpStream, xid: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
    send(s, &call(xid, NFS, 3, proc_, args));
    let r = recv(s).unwrap_or_else(|| {
        panic!("no reply to xid {xid} (the proxy must answer with the next hop down)")
    });
    let (x, rs, acc, rest) = raw::parse(&r);
    assert_eq!((x, rs, acc), (xid, 0, 0), "RPC failed");
    rest
}

/// (status, size from the fattr3 of a GETATTR reply body).
fn getattr(s: &mut TcpStream, xid: u32, fh: &[u8]) -> (u32, u64) {
    let b = rpc(s, xid, 1, &fh_arg(fh));
    let status = raw::word(&b, 0);
    // fattr3: type, mode, nlink, uid, gid, size(u64) -> size at words 6..8
    let size = if status == 0 {
        u64::from_be_bytes(b[24..32].try_into().unwrap())
    } else {
        0
    };
    (status, size)
}

/// The data of a READ reply body.
fn read(s: &mut TcpStream, xid: u32, fh: &[u8], off: u64, count: u32) -> Vec<u8> {
    let mut a = fh_arg(fh);
    a.extend_from_slice(&off.to_be_bytes());
    a.extend_from_slice(&be(count));
    let b = rpc(s, xid, 6, &a);
    assert_eq!(raw::word(&b, 0), 0, "READ status");
    // status, post_op_attr (bool + 84-byte fattr3), count, eof, data length, data
    let at = if raw::word(&b, 1) == 1 { 8 + 84 } else { 8 };
    let n = u32::from_be_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
    b[at + 12..at + 12 + n].to_vec()
}

fn write(s: &mut TcpStream, xid: u32, fh: &[u8], off: u64, data: &[u8], stable: u32) -> u32 {
    let mut a = fh_arg(fh);
    a.extend_from_slice(&off.to_be_bytes());
    a.extend_from_slice(&be(data.len() as u32));
    a.extend_from_slice(&be(stable));
    a.extend_from_slice(&be(data.len() as u32));
    a.extend_from_slice(data);
    a.resize(a.len().div_ceil(4) * 4, 0);
    raw::word(&rpc(s, xid, 7, &a), 0)
}

#[tokio::test]
async fn a_restarted_proxy_serves_cached_files_and_takes_writes_while_the_server_is_down() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("offline");
    let want = pseudo_random((1 << 20) + 777, 41);
    std::fs::write(dir.join("f"), &want).unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let ctl = cache_dir.path().join("ctl");
    let cache = format!(
        "[cache]\ndir = \"{}\"\nsize = \"64MiB\"\nways = 8\nbanks = 4\n[control]\nsocket = \"{}\"\n",
        cache_dir.path().join("c").display(),
        ctl.display()
    );
    let mut hop = Gridvfs::start(lab.endpoint(), "");
    let hop_addr = hop.endpoints().nfs;
    let front = |hop: &Gridvfs| Gridvfs::start_with(hop.endpoints(), "127.0.0.1:0", "", &cache);

    // Session 1: the file is read through the proxy (cached, attributes kept).
    let mut fr = front(&hop);
    let fh = {
        let mut c = common::mount(fr.endpoints(), &lab.export).await;
        lookup_path(&mut c, &name, "f").await.data.to_vec()
    };
    let mut s = raw::connect(fr.endpoints().nfs);
    assert_eq!(read(&mut s, 1, &fh, 0, 1 << 20), want[..1 << 20]);
    assert_eq!(read(&mut s, 2, &fh, 1 << 20, 1 << 20), want[1 << 20..]);
    drop(s);
    assert_eq!(fr.stop(), Some(0));

    // The next hop goes away; the proxy restarts on its cache directory.
    hop.stop();
    let mut fr = front(&hop);
    let mut s = raw::connect(fr.endpoints().nfs);
    assert_eq!(getattr(&mut s, 10, &fh), (0, want.len() as u64));
    assert_eq!(read(&mut s, 11, &fh, 0, 1 << 20), want[..1 << 20]);
    assert_eq!(read(&mut s, 12, &fh, 1 << 20, 1 << 20), want[1 << 20..]);

    // Writes are taken (write-back) and read back, size included.
    let patch = pseudo_random(5000, 42);
    assert_eq!(write(&mut s, 13, &fh, 4000, &patch, 2), 0, "WRITE status");
    let tail = pseudo_random(3000, 43);
    assert_eq!(write(&mut s, 14, &fh, want.len() as u64, &tail, 0), 0);
    let mut expect = want.clone();
    expect[4000..9000].copy_from_slice(&patch);
    expect.extend_from_slice(&tail);
    assert_eq!(getattr(&mut s, 15, &fh), (0, expect.len() as u64));
    assert_eq!(read(&mut s, 16, &fh, 0, 1 << 20), expect[..1 << 20]);
    assert_eq!(read(&mut s, 17, &fh, 1 << 20, 1 << 20), expect[1 << 20..]);
    assert_eq!(
        std::fs::read(dir.join("f")).unwrap(),
        want,
        "written back too early"
    );

    // A flush waits for the next hop...
    let bin = common::bin();
    let mut flush = std::process::Command::new(bin)
        .args(["flush", "--socket"])
        .arg(&ctl)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        flush.try_wait().unwrap().is_none(),
        "flush finished with the server down"
    );
    // ...and completes when it is back (same address).
    let mut hop = Gridvfs::start_with(lab.endpoint(), &hop_addr.to_string(), "", "");
    let out = flush.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "flush: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        std::fs::read(dir.join("f")).unwrap(),
        expect,
        "server copy after flush"
    );
    drop(s);
    assert_eq!(fr.stop(), Some(0));
    hop.stop();
    std::fs::remove_dir_all(dir).unwrap();
}
