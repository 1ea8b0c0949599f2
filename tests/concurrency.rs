//! Many connections, many calls in flight on each, replies out of order: every reply must
//! reach the connection and the call it belongs to. All clients here use the *same* xids
//! (each numbers its calls from 1), so the proxy's xid remapping is what keeps them apart.

mod common;

#[path = "../benches/common/nfs.rs"]
mod nfs;

use bytes::{BufMut, BytesMut};
use common::{Gridvfs, Lab, pseudo_random};
use nfs::{Client, NFS, R};

const FILE_LEN: usize = 8 << 20;

async fn read_exact(c: &Client, fh: &[u8], off: u64, count: u32) -> Vec<u8> {
    let mut a = BytesMut::new();
    a.put_u32(fh.len() as u32);
    a.put_slice(fh);
    a.put_bytes(0, (4 - fh.len() % 4) % 4);
    a.put_u64(off);
    a.put_u32(count);
    let r = c.call(NFS, 6, &a).await;
    let mut r = R(&r);
    assert_eq!(r.u32(), 0, "READ failed");
    r.post_op_attr();
    let n = r.u32() as usize;
    r.u32();
    let data = r.opaque().to_vec();
    assert_eq!(data.len(), n);
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_many_calls_in_flight() {
    let lab = Lab::get();
    let p = Gridvfs::start(lab.endpoint(), "");
    let (dir, name) = lab.scratch("concurrency");
    let content = pseudo_random(FILE_LEN, 5);
    std::fs::write(dir.join("data.bin"), &content).unwrap();

    let m = Client::connect(p.addr).await.unwrap();
    let root = m.mnt(&lab.export).await;
    let d = m.lookup(&root, &name).await.expect("scratch dir");
    let fh = m.lookup(&d, "data.bin").await.expect("data.bin");

    let mut conns = tokio::task::JoinSet::new();
    for conn in 0..8u64 {
        let (fh, content) = (fh.clone(), content.clone());
        let addr = p.addr;
        conns.spawn(async move {
            let c = Client::connect(addr).await.unwrap();
            let mut calls = tokio::task::JoinSet::new();
            for i in 0..64u64 {
                let (c, fh, content) = (c.clone(), fh.clone(), content.clone());
                calls.spawn(async move {
                    // Sizes from 1 byte to 256 KiB at scattered offsets; small calls
                    // finish before large ones sent earlier, so replies come out of order.
                    let x = (conn * 64 + i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    let count = 1 + (x % (256 << 10)) as u32;
                    let off = (x >> 20) % (FILE_LEN as u64 - count as u64);
                    if i % 4 == 0 {
                        assert_eq!(c.getattr(&fh).await, FILE_LEN as u64);
                    }
                    let got = read_exact(&c, &fh, off, count).await;
                    let want = &content[off as usize..off as usize + count as usize];
                    assert!(
                        got == want,
                        "conn {conn} call {i}: wrong bytes at {off}+{count}"
                    );
                });
            }
            while let Some(r) = calls.join_next().await {
                r.unwrap();
            }
        });
    }
    while let Some(r) = conns.join_next().await {
        r.unwrap();
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Regression: a READ asking for more than the proxy's max_io (1 MiB) drew an 8 MiB reply
/// from Ganesha (which allows 64 MiB), over max_record: the link was torn down and the
/// call re-sent for ever. Now the count is capped and the client gets a short read.
#[tokio::test]
async fn read_larger_than_max_io_gets_a_short_read() {
    let lab = Lab::get();
    let p = Gridvfs::start(lab.endpoint(), "");
    let (dir, name) = lab.scratch("bigread");
    let content = pseudo_random(FILE_LEN, 9);
    std::fs::write(dir.join("data.bin"), &content).unwrap();
    let c = Client::connect(p.addr).await.unwrap();
    let root = c.mnt(&lab.export).await;
    let d = c.lookup(&root, &name).await.unwrap();
    let fh = c.lookup(&d, "data.bin").await.unwrap();
    let got = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        read_exact(&c, &fh, 4096, 8 << 20),
    )
    .await
    .expect("READ of 8 MiB never answered");
    assert_eq!(got.len(), 1 << 20, "expected a short read capped at max_io");
    assert!(got[..] == content[4096..4096 + (1 << 20)]);
    std::fs::remove_dir_all(dir).unwrap();
}
