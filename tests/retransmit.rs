//! Retransmissions: a client that resends a call with the same xid (after a timeout or a
//! reconnect) must get the original call's reply, not a second execution. The proxy gives
//! forwarded calls fresh xids, so the server's own duplicate request cache cannot see the
//! retransmission; the proxy's cache must.

mod common;

use common::raw::{be, call, connect, parse, recv, send, word};
use common::{Gridvfs, Lab};

const NFS: u32 = 100003;
const MOUNT: u32 = 100005;
const NFS3ERR_NOENT: u32 = 2;

fn opaque(b: &[u8]) -> Vec<u8> {
    let mut v = be(b.len() as u32).to_vec();
    v.extend_from_slice(b);
    v.resize(v.len() + (4 - b.len() % 4) % 4, 0);
    v
}

/// Status word and the rest of an accepted, successful reply.
fn results(reply: &[u8]) -> (u32, Vec<u8>) {
    let (_, rs, st, rest) = parse(reply);
    assert_eq!((rs, st), (0, 0), "call not accepted");
    (word(&rest, 0), rest[4..].to_vec())
}

fn handle(rest: &[u8]) -> Vec<u8> {
    let n = word(rest, 0) as usize;
    rest[4..4 + n].to_vec()
}

#[test]
fn retransmitted_remove_gets_the_original_reply_not_noent() {
    let lab = Lab::get();
    let p = Gridvfs::start(lab.endpoint(), "");
    let (dir, name) = lab.scratch("retransmit");
    std::fs::write(dir.join("victim"), b"bye").unwrap();

    let mut a = connect(p.addr);
    send(
        &mut a,
        &call(1, MOUNT, 3, 1, &opaque(lab.export.as_bytes())),
    );
    let (st, rest) = results(&recv(&mut a).unwrap());
    assert_eq!(st, 0, "MNT failed");
    let root = handle(&rest);
    let mut lookup = opaque(&root);
    lookup.extend_from_slice(&opaque(name.as_bytes()));
    send(&mut a, &call(2, NFS, 3, 3, &lookup));
    let (st, rest) = results(&recv(&mut a).unwrap());
    assert_eq!(st, 0, "LOOKUP failed");
    let dirfh = handle(&rest);

    let mut remove = opaque(&dirfh);
    remove.extend_from_slice(&opaque(b"victim"));
    let msg = call(0x5eed, NFS, 3, 12, &remove);
    send(&mut a, &msg);
    let first = recv(&mut a).unwrap();
    assert_eq!(results(&first).0, 0, "REMOVE failed");
    assert!(!dir.join("victim").exists());

    // The client reconnects and retransmits the same call (same xid, same bytes).
    drop(a);
    let mut b = connect(p.addr);
    send(&mut b, &msg);
    let again = recv(&mut b).unwrap();
    assert_eq!(
        again, first,
        "the retransmission was executed again instead of replayed"
    );

    // A new call (another xid) with the same arguments is executed: NOENT now.
    send(&mut b, &call(0x5eee, NFS, 3, 12, &remove));
    assert_eq!(results(&recv(&mut b).unwrap()).0, NFS3ERR_NOENT);
    std::fs::remove_dir_all(dir).unwrap();
}
