//! Bad input at the front door: every malformed or unsupported call gets its proper RPC
//! reply (or, for an oversized record, the connection is closed), the daemon never
//! panics, and another client served at the same time is not disturbed.
//!
//! Messages are built by hand here (not with the proxy's own encoder) so the test does
//! not share the proxy's assumptions.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Gridvfs, Lab};

use common::raw::{LAST, be, call, head, parse, recv, send, word};

fn connect(p: &Gridvfs) -> TcpStream {
    common::raw::connect(p.addr)
}

const NFS: u32 = 100003;
const MOUNT: u32 = 100005;
const GARBAGE_ARGS: u32 = 4;

#[test]
fn bad_calls_get_proper_replies_and_the_connection_keeps_serving() {
    let lab = Lab::get();
    let p = Gridvfs::start(lab.endpoint(), "");
    let mut s = connect(&p);

    // Unknown program → PROG_UNAVAIL.
    send(&mut s, &call(1, 200_000, 1, 0, &[]));
    assert_eq!(head(&recv(&mut s).unwrap()), [1, 0, 1]);

    // NFS version 4 → PROG_MISMATCH, supported range 3..=3.
    send(&mut s, &call(2, NFS, 4, 0, &[]));
    let (xid, rs, st, rest) = parse(&recv(&mut s).unwrap());
    assert_eq!((xid, rs, st), (2, 0, 2));
    assert_eq!((word(&rest, 0), word(&rest, 1)), (3, 3));

    // Unknown NFSv3 procedure → PROC_UNAVAIL; unknown MOUNT procedure too.
    send(&mut s, &call(3, NFS, 3, 99, &[]));
    assert_eq!(head(&recv(&mut s).unwrap()), [3, 0, 3]);
    send(&mut s, &call(4, MOUNT, 3, 42, &[]));
    assert_eq!(head(&recv(&mut s).unwrap()), [4, 0, 3]);

    // GETATTR with a 200-byte handle (limit 64) → GARBAGE_ARGS.
    let mut fh = be(200).to_vec();
    fh.extend_from_slice(&[7u8; 200]);
    send(&mut s, &call(5, NFS, 3, 1, &fh));
    assert_eq!(head(&recv(&mut s).unwrap()), [5, 0, GARBAGE_ARGS]);

    // Truncated XDR: GETATTR whose handle length says 32 but carries 8 bytes.
    let mut fh = be(32).to_vec();
    fh.extend_from_slice(&[1u8; 8]);
    send(&mut s, &call(6, NFS, 3, 1, &fh));
    assert_eq!(head(&recv(&mut s).unwrap()), [6, 0, GARBAGE_ARGS]);

    // Trailing bytes after a valid GETATTR argument → GARBAGE_ARGS.
    let mut fh = be(8).to_vec();
    fh.extend_from_slice(&[1u8; 8]);
    fh.extend_from_slice(&[0u8; 4]);
    send(&mut s, &call(7, NFS, 3, 1, &fh));
    assert_eq!(head(&recv(&mut s).unwrap()), [7, 0, GARBAGE_ARGS]);

    // MNT with a dirpath length of 0xffffffff → GARBAGE_ARGS, nothing allocated.
    send(&mut s, &call(8, MOUNT, 3, 1, &be(0xffff_ffff)));
    assert_eq!(head(&recv(&mut s).unwrap()), [8, 0, GARBAGE_ARGS]);

    // RPC version 3 → MSG_DENIED / RPC_MISMATCH (2..=2).
    let mut m = call(9, NFS, 3, 0, &[]);
    m[8..12].copy_from_slice(&be(3));
    send(&mut s, &m);
    let (xid, rs, st, rest) = parse(&recv(&mut s).unwrap());
    assert_eq!((xid, rs, st), (9, 1, 0));
    assert_eq!((word(&rest, 0), word(&rest, 1)), (2, 2));

    // Random garbage (not a call at all) is dropped; a damaged header gets GARBAGE_ARGS.
    send(&mut s, &[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 7, 1, 2, 3]);
    send(&mut s, &call(10, NFS, 3, 0, &[])[..30]);
    assert_eq!(head(&recv(&mut s).unwrap()), [10, 0, GARBAGE_ARGS]);

    // ...and the same connection still forwards a real call (NULL to Ganesha).
    send(&mut s, &call(11, NFS, 3, 0, &[]));
    assert_eq!(head(&recv(&mut s).unwrap()), [11, 0, 0]);
    drop(s);
    assert!(p.log_text().find("panicked").is_none(), "{}", p.log_text());
}

#[test]
fn oversized_record_closes_only_that_connection() {
    let lab = Lab::get();
    let mut p = Gridvfs::start(lab.endpoint(), "max_record = \"64KiB\"\nmax_io = \"32KiB\"");

    // A second client keeps calling NULL through the proxy the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let bystander = {
        let (stop, ok) = (stop.clone(), ok.clone());
        let mut s = connect(&p);
        std::thread::spawn(move || {
            let mut xid = 1000;
            while !stop.load(Ordering::Relaxed) {
                send(&mut s, &call(xid, NFS, 3, 0, &[]));
                let r = recv(&mut s).expect("bystander connection was closed");
                assert_eq!(head(&r), [xid, 0, 0]);
                ok.fetch_add(1, Ordering::Relaxed);
                xid += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));

    // Record header claims 1 MiB (limit 64 KiB): the proxy must close this connection
    // without reading (or allocating) the body.
    let mut s = connect(&p);
    s.write_all(&be((1 << 20) | LAST)).unwrap();
    s.write_all(&[0u8; 1024]).unwrap();
    assert!(recv(&mut s).is_none(), "connection should be closed");

    // Multi-fragment record whose fragments add up past the limit: closed too.
    let mut s = connect(&p);
    for _ in 0..3 {
        s.write_all(&be(30 << 10)).unwrap();
        s.write_all(&vec![0u8; 30 << 10]).unwrap();
    }
    assert!(recv(&mut s).is_none(), "connection should be closed");

    // Regression: zero-length, not-last fragment headers were not counted and grew the
    // buffer without bound. 2 MiB of zero bytes is 512 Ki empty fragments.
    let mut s = connect(&p);
    let _ = s.write_all(&vec![0u8; 2 << 20]);
    assert!(recv(&mut s).is_none(), "connection should be closed");

    // A client that dies in the middle of a record.
    let mut s = connect(&p);
    s.write_all(&be(100 | LAST)).unwrap();
    s.write_all(&[1, 2, 3]).unwrap();
    drop(s);

    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    bystander.join().expect("bystander client failed");
    assert!(
        ok.load(Ordering::Relaxed) > 10,
        "bystander made too few calls"
    );
    assert!(p.alive(), "proxy died; log:\n{}", p.log_text());
    assert!(
        p.log_text().contains("max_record"),
        "no log line for the oversized record"
    );
    assert_eq!(p.stop(), Some(0));
}

#[tokio::test]
async fn real_client_served_after_bad_input() {
    let lab = Lab::get();
    let p = Gridvfs::start(lab.endpoint(), "");
    {
        let mut s = connect(&p);
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        // "GET " as a record header is a 0x47455420-byte fragment (not last): over the limit.
        assert!(recv(&mut s).is_none());
    }
    let mut c = common::mount(p.endpoints(), &lab.export).await;
    let root = c.root_nfs_fh3();
    let r = c
        .getattr(&nfs3_types::nfs3::GETATTR3args { object: root })
        .await
        .unwrap();
    assert!(matches!(r, nfs3_types::nfs3::Nfs3Result::Ok(_)));
}

/// A call the next hop can never take is answered with SYSTEM_ERR after
/// `upstream.resend_limit` lost connections, not re-sent for ever. Here the next hop is a
/// second gridvfs with a smaller `max_record` that closes the connection each time the
/// front proxy forwards a 100 KiB WRITE; without the limit the client waited for good.
/// The same connection and another client are served afterwards.
#[test]
fn a_call_that_breaks_the_next_hop_every_time_is_failed_not_resent_for_ever() {
    let lab = Lab::get();
    let mut back = Gridvfs::start(lab.endpoint(), "max_record = \"64KiB\"\nmax_io = \"32KiB\"");
    let mut front = Gridvfs::start_with(back.endpoints(), "127.0.0.1:0", "", "resend_limit = 3");

    let args = oversized_write_args();
    let mut s = connect(&front);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let t0 = std::time::Instant::now();
    send(&mut s, &call(21, NFS, 3, 7, &args));
    let reply = recv(&mut s).unwrap_or_else(|| {
        panic!(
            "no reply in {:?}: the call is re-sent for ever; front log:\n{}",
            t0.elapsed(),
            front.log_text()
        )
    });
    const SYSTEM_ERR: u32 = 5;
    assert_eq!(head(&reply), [21, 0, SYSTEM_ERR]);
    let lost = back.log_count("record over listen.max_record");
    assert_eq!(
        lost, 3,
        "the next hop saw the call {lost} times, not resend_limit"
    );
    assert!(
        front.log_text().contains("upstream.resend_limit"),
        "no log line says why the call failed:\n{}",
        front.log_text()
    );

    // The same connection, and a new one, still reach Ganesha through both proxies.
    send(&mut s, &call(22, NFS, 3, 0, &[]));
    assert_eq!(head(&recv(&mut s).unwrap()), [22, 0, 0]);
    let mut other = connect(&front);
    send(&mut other, &call(23, NFS, 3, 0, &[]));
    assert_eq!(head(&recv(&mut other).unwrap()), [23, 0, 0]);
    assert_eq!(front.stop(), Some(0));
    assert_eq!(back.stop(), Some(0));
}

/// WRITE3args with 100 KiB of data: a handle, offset 0, count, UNSTABLE, the data (never
/// parsed: a next hop with a 64 KiB `max_record` closes the connection on its size).
fn oversized_write_args() -> Vec<u8> {
    let data = vec![0x5a_u8; 100 << 10];
    let mut args = Vec::new();
    args.extend_from_slice(&be(8));
    args.extend_from_slice(&[7; 8]);
    args.extend_from_slice(&[0; 8]);
    args.extend_from_slice(&be(data.len() as u32));
    args.extend_from_slice(&be(0));
    args.extend_from_slice(&be(data.len() as u32));
    args.extend_from_slice(&data);
    args
}

/// A call queued behind the poisonous one on the same link (one connection) is not
/// failed with it: a loss is charged to a call only when it was the one unanswered call,
/// so the poisonous call fails after `resend_limit` losses and the later one is answered.
#[test]
fn a_call_behind_a_poisonous_one_is_not_failed_with_it() {
    let lab = Lab::get();
    let (mut back, mut front, mut a, mut b) = poison_chain(lab.endpoint(), 30);
    send(&mut a, &call(31, NFS, 3, 7, &oversized_write_args()));
    // Behind it (once the next hop has refused it the first time), while the link
    // reconnects and backs off (50 ms, 100 ms, ...): re-sent after it each time.
    back.wait_log("record over listen.max_record", 1);
    send(&mut b, &call(32, NFS, 3, 0, &[]));
    let rb = recv(&mut b).unwrap_or_else(|| panic!("no reply to the NULL:\n{}", front.log_text()));
    assert_eq!(
        head(&rb),
        [32, 0, 0],
        "the call behind the poisonous one failed:\n{}",
        front.log_text()
    );
    let ra = recv(&mut a).unwrap_or_else(|| panic!("no reply to the WRITE:\n{}", front.log_text()));
    const SYSTEM_ERR: u32 = 5;
    assert_eq!(head(&ra), [31, 0, SYSTEM_ERR]);
    // Charged 3 times (alone each time); one or two more if the NULL went out with it
    // (then neither was charged), depending on when the NULL met the reconnects.
    let seen = back.log_count("record over listen.max_record");
    assert!(
        (3..=5).contains(&seen),
        "the next hop saw the WRITE {seen} times"
    );
    assert_eq!(
        front.log_count("upstream.resend_limit"),
        1,
        "{}",
        front.log_text()
    );
    assert_eq!(front.stop(), Some(0));
    assert_eq!(back.stop(), Some(0));
}

/// A call sent *before* the poisonous one, still unanswered when the next hop breaks
/// (the next hop's own upstream is slow), is not failed either: after two lost
/// connections with both unanswered, the link re-sends them one at a time, the slow call
/// is answered alone, and only the poisonous one is charged.
#[test]
fn a_slow_call_sent_before_a_poisonous_one_is_not_failed_with_it() {
    let (front, seen, _) = slow_call_then_poison(Duration::from_millis(400));
    // Sent with the NULL twice (first send, one re-send of both), then alone 3 times
    // (probing: the NULL, the older, alone first and answered; then the WRITE alone).
    assert_eq!(seen, 5, "{front}");
}

/// The same with a call much slower than a probe may wait (5 s): probing gives up on it
/// and probes it after the never-slow suspects, so the poisonous call is alone next and fails
/// long before the slow call is answered (not probed behind it, 5 s a time, until then).
#[test]
fn a_suspect_too_slow_for_probing_does_not_hold_back_the_poisonous_one() {
    let (front, seen, write_failed) = slow_call_then_poison(Duration::from_secs(15));
    assert!(front.contains("not answered in time"), "{front}");
    assert!(
        write_failed < Duration::from_secs(11),
        "the WRITE failed only after {write_failed:?}:\n{front}"
    );
    // Twice with the NULL, once after the probe of the NULL gave up, 3 times alone.
    assert_eq!(seen, 6, "{front}");
}

/// A NULL that Ganesha, behind a slow relay behind the next hop, answers after `delay`,
/// then on the same link a WRITE that makes the next hop close the connection with the
/// NULL unanswered. Checks that the NULL is answered and the WRITE failed after
/// `resend_limit` (3); returns the front proxy's log, how often the next hop saw the
/// WRITE, and when (from the first send) the WRITE's failure came.
fn slow_call_then_poison(delay: Duration) -> (String, usize, Duration) {
    let lab = Lab::get();
    let (slow, forwarded) = slow_relay(lab.nfs, delay);
    let up = common::Endpoints {
        nfs: slow,
        mount: lab.mount,
    };
    let (mut back, mut front, mut a, mut b) = poison_chain(up, 60);
    send(&mut a, &call(41, NFS, 3, 0, &[]));
    let t0 = std::time::Instant::now();
    while forwarded.load(Ordering::Relaxed) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the NULL never reached the relay"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    send(&mut b, &call(42, NFS, 3, 7, &oversized_write_args()));
    let rb = recv(&mut b).unwrap_or_else(|| panic!("no reply to the WRITE:\n{}", front.log_text()));
    let write_failed = t0.elapsed();
    const SYSTEM_ERR: u32 = 5;
    assert_eq!(head(&rb), [42, 0, SYSTEM_ERR]);
    let ra = recv(&mut a).unwrap_or_else(|| panic!("no reply to the NULL:\n{}", front.log_text()));
    assert_eq!(
        head(&ra),
        [41, 0, 0],
        "the slow call sent before the poisonous one failed:\n{}",
        front.log_text()
    );
    assert_eq!(front.log_count("upstream.resend_limit"), 1);
    let seen = back.log_count("record over listen.max_record");
    let log = front.log_text();
    assert_eq!(front.stop(), Some(0));
    assert_eq!(back.stop(), Some(0));
    (log, seen, write_failed)
}

/// A next hop that closes the connection on records over 64 KiB (in front of `up`), a
/// front proxy with `resend_limit = 3` on one connection to it, and two clients of the
/// front that wait up to `timeout_s` for a reply.
fn poison_chain(up: common::Endpoints, timeout_s: u64) -> (Gridvfs, Gridvfs, TcpStream, TcpStream) {
    let back = Gridvfs::start(up, "max_record = \"64KiB\"\nmax_io = \"32KiB\"");
    let front = Gridvfs::start_with(
        back.endpoints(),
        "127.0.0.1:0",
        "",
        "resend_limit = 3\nconnections = 1",
    );
    let (a, b) = (connect(&front), connect(&front));
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_secs(timeout_s)))
            .unwrap();
    }
    (back, front, a, b)
}

/// A TCP relay to `to` that holds each chunk coming back from it for `delay`: a slow
/// server behind a next hop. Counts the bytes it forwarded to `to`. Its threads live as
/// long as the test process.
fn slow_relay(to: std::net::SocketAddr, delay: Duration) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    use std::io::Read;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let forwarded = Arc::new(AtomicU64::new(0));
    let fwd = forwarded.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let (Ok(mut c), Ok(mut s)) = (c, TcpStream::connect(to)) else {
                continue;
            };
            let (mut c2, mut s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
            let fwd = fwd.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n @ 1..) = c.read(&mut buf) {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    fwd.fetch_add(n as u64, Ordering::Relaxed);
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n @ 1..) = s2.read(&mut buf) {
                    std::thread::sleep(delay);
                    if c2.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (addr, forwarded)
}
