//! Tests of the cache layer's local view (no next hop needed; the write-back paths that
//! talk to a server are tested against Ganesha in tests/writeback.rs).
use super::*;
use crate::config::{CacheConfig, Consistency, WritePolicy};

fn layer(dir: &std::path::Path, ways: u32, sets: u64) -> CacheLayer {
    layer_in_banks(dir, ways, sets, 1)
}

/// `sets` sets in each of `banks` banks.
fn layer_in_banks(dir: &std::path::Path, ways: u32, sets: u64, banks: u32) -> CacheLayer {
    CacheLayer::open(&CacheConfig {
        dir: dir.to_path_buf(),
        size: sets * ways as u64 * 4096 * banks as u64,
        block_size: 4096,
        ways,
        banks,
        consistency: Consistency::Session,
        metadata: crate::config::Metadata::Forward,
        write_policy: WritePolicy::WriteBack,
        flush_on_exit: true,
        writeback_in_flight: 4,
        shared: false,
    })
    .unwrap()
}

fn attr(size: u64) -> Fattr3 {
    let t = Nfstime3 {
        seconds: 1,
        nseconds: 0,
    };
    Fattr3 {
        ftype: Ftype3::REG,
        mode: 0o644,
        nlink: 1,
        uid: 0,
        gid: 0,
        size,
        used: size,
        rdev: nfs3::Specdata3::default(),
        fsid: 1,
        fileid: 2,
        atime: t,
        mtime: t,
        ctime: t,
    }
}

/// The cut block's set is full of durable dirty blocks: the cut still happens (the tag
/// is rewritten in place), the size changes, nothing past the cut stays.
#[test]
fn a_cut_in_a_set_full_of_dirty_blocks_holds() {
    let dir = tempfile::tempdir().unwrap();
    let c = layer(dir.path(), 2, 1); // one set, two ways
    c.learn_attr(b"F", attr(0), c.stamp());
    c.store.put(b"F", 0, 0, &[1u8; 4096], true).unwrap();
    c.note_local_write(b"F", 4096, None);
    c.store.put(b"G", 0, 0, &[2u8; 4096], true).unwrap();
    c.store.sync().unwrap(); // both durable dirty: no free way
    assert!(c.truncated(b"F", Some(0), 100).unwrap().is_none());
    assert_eq!(c.effective_attr(b"F").unwrap().size, 100);
    let b = c.store.get(b"F", 0).unwrap().unwrap();
    assert_eq!((b.valid, b.dirty), (0..100, Some(0..100)));
}

/// A file with dirty data shows its local size and time in every attribute; a larger
/// size seen upstream (another writer) raises it; after a write-back with no WRITE
/// since, the server's attributes are shown again.
#[test]
fn local_view_overlays_and_ends_with_the_write_back() {
    let dir = tempfile::tempdir().unwrap();
    let c = layer(dir.path(), 4, 16);
    c.learn_attr(b"F", attr(10), c.stamp());
    c.store.put(b"F", 0, 0, &[3u8; 200], true).unwrap();
    c.note_local_write(b"F", 200, None);
    let a = c.effective_attr(b"F").unwrap();
    assert_eq!(a.size, 200);
    assert_ne!(a.mtime, attr(0).mtime);
    let wgen = c.wgen(b"F");
    c.store.put(b"F", 0, 200, &[4u8; 50], true).unwrap();
    c.note_local_write(b"F", 250, None);
    c.written_back(b"F", wgen, Some(attr(200)));
    assert!(
        c.local(b"F").is_some(),
        "a WRITE came after the write-back began"
    );
    let wgen = c.wgen(b"F");
    c.written_back(b"F", wgen, Some(attr(250)));
    assert!(c.local(b"F").is_none());
    assert_eq!(c.effective_attr(b"F").unwrap(), attr(250));
}

/// After the server proxy refuses a whole-file fetch as stale (the file changed behind
/// this proxy), `forget_attr` must drop the file's clean blocks too: with the old
/// attributes gone, the reply showing the new mtime would otherwise not drop them, and
/// the old bytes would be served under the new mtime (found in review).
#[test]
fn forget_attr_drops_the_blocks_of_a_file_changed_behind_the_proxy() {
    use crate::rpc::msg::{accepted_reply, call_message};
    let dir = tempfile::tempdir().unwrap();
    let c = CacheLayer::open(&CacheConfig {
        dir: dir.path().to_path_buf(),
        size: 16 * 4 * 4096,
        block_size: 4096,
        ways: 4,
        banks: 1,
        consistency: Consistency::Attributes,
        metadata: crate::config::Metadata::Forward,
        write_policy: WritePolicy::WriteThrough,
        flush_on_exit: true,
        writeback_in_flight: 4,
        shared: false,
    })
    .unwrap();
    let getattr = |fh: &[u8], a: &Fattr3| {
        let mut args = BytesMut::new();
        Args::Getattr(nfs3::GetattrArgs {
            object: nfs3::Fh(fh),
        })
        .encode(&mut args);
        let call = call_message(1, nfs3::PROGRAM, nfs3::VERSION, Proc::GETATTR.0, &args);
        let mut reply = accepted_reply(1, AcceptStat::SUCCESS);
        Res::Getattr(NfsResult::Ok(nfs3::GetattrResOk {
            obj_attributes: a.clone(),
        }))
        .encode(&mut reply);
        c.observe(&call, &reply, c.stamp());
    };
    let old = attr(8192);
    let mut new = attr(8192);
    new.mtime.seconds = 2;
    getattr(b"F", &old);
    c.store.put(b"F", 0, 0, &[1u8; 4096], false).unwrap();
    assert!(c.read(1, b"F", 0, 4096).is_some(), "cached block is a hit");
    c.forget_attr(b"F");
    getattr(b"F", &new);
    assert!(
        c.read(1, b"F", 0, 4096).is_none(),
        "a block from before the change is served under the new mtime"
    );
}

/// A READ call for `fh` and the next hop's reply to it: `data` with EOF, the file's
/// attributes at `size`.
fn read_exchange(fh: &[u8], off: u64, data: &[u8], size: u64) -> (BytesMut, BytesMut) {
    use crate::rpc::msg::{accepted_reply, call_message};
    let mut args = BytesMut::new();
    Args::Read(nfs3::ReadArgs {
        file: nfs3::Fh(fh),
        offset: off,
        count: data.len() as u32,
    })
    .encode(&mut args);
    let call = call_message(1, nfs3::PROGRAM, nfs3::VERSION, Proc::READ.0, &args);
    let mut reply = accepted_reply(1, AcceptStat::SUCCESS);
    Res::Read(NfsResult::Ok(nfs3::ReadResOk {
        file_attributes: Some(attr(size)),
        count: data.len() as u32,
        eof: true,
        data,
    }))
    .encode(&mut reply);
    (call, reply)
}

/// The data of a READ reply record.
fn read_data(reply: &[u8]) -> Vec<u8> {
    let Ok((_, ReplyKind::Accepted { results_at, .. })) = parse_reply(reply) else {
        panic!("not an accepted reply");
    };
    match Res::decode(Proc::READ, &reply[results_at..]) {
        Ok(Res::Read(NfsResult::Ok(ok))) => ok.data.to_vec(),
        _ => panic!("not a READ reply"),
    }
}

/// A truncation kept here (not yet applied upstream): the next hop's bytes past the cut
/// never reach a client or the cache, whether the reply was sent before the truncation,
/// after it, or before the write-back applied it; after that, the next hop's bytes are
/// the file's again. Ranges past the cut are answered without the next hop.
#[test]
fn bytes_past_a_kept_cut_are_zeros_until_it_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let c = layer(dir.path(), 4, 16);
    c.learn_attr(b"F", attr(8192), c.stamp());
    let old = vec![9u8; 8192];
    let mut want = vec![9u8; 100];
    want.resize(8192, 0);
    let before = c.stamp();
    assert!(c.truncate_locally(b"F", 100, None).unwrap().is_some());
    let (_, after) = c.truncate_locally(b"F", 8192, None).unwrap().unwrap();
    assert_eq!((after.size, c.cut(b"F")), (8192, Some(100)));
    assert_eq!(
        read_data(&c.read(1, b"F", 4096, 4096).expect("past the cut: a hit")),
        vec![0u8; 4096]
    );
    assert!(
        c.read(1, b"F", 0, 8192).is_none(),
        "bytes below the cut: asked"
    );

    // Sent before the truncation: merged, zeros past the cut, and nothing cached.
    let (call, reply) = read_exchange(b"F", 0, &old, 8192);
    let out = c
        .observe(&call, &reply, before)
        .expect("a local file's READ is rebuilt");
    assert_eq!(read_data(&out), want);
    // Sent after: the same, and its bytes below the cut are cached.
    let out = c.observe(&call, &reply, c.stamp()).expect("rebuilt");
    assert_eq!(read_data(&out), want);
    assert_eq!(
        read_data(&c.read(1, b"F", 0, 8192).expect("now a hit")),
        want
    );

    // The write-back applied it: an old reply still gets zeros past the cut.
    let applying = c.stamp();
    c.cut_applied(b"F", 100, None).unwrap();
    assert_eq!(c.cut(b"F"), None);
    c.store.invalidate(b"F", 0).unwrap();
    let out = c.observe(&call, &reply, applying).expect("rebuilt");
    assert_eq!(
        read_data(&out),
        want,
        "a reply from before the cut was applied"
    );
}

/// A kept truncation is as durable as dirty data: after an unclean stop the reopened
/// cache has the cut and the size it left, and the next hop's larger size does not
/// bring the old length back.
#[test]
fn a_kept_cut_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = layer(dir.path(), 4, 16);
        c.learn_attr(b"F", attr(100_000), c.stamp());
        assert!(c.truncate_locally(b"F", 10, None).unwrap().is_some());
        assert!(c.truncate_locally(b"F", 5000, None).unwrap().is_some());
        // Dropped without `close`: an unclean stop.
    }
    let c = layer(dir.path(), 4, 16);
    assert_eq!(c.cut(b"F"), Some(10));
    assert_eq!(c.local(b"F").map(|l| l.size), Some(5000));
    c.learn_attr(b"F", attr(100_000), c.stamp());
    assert_eq!(c.effective_attr(b"F").unwrap().size, 5000);
    assert!(
        c.store.dirty_blocks().unwrap().is_empty(),
        "a record is not data"
    );
}

/// The same truncation again before any write-back (a build rewriting its outputs:
/// CREATE with size 0, WRITE, COMMIT, and again) keeps the record it already has: one
/// fdatasync, for the cut dirty data, not two (a rewritten record supersedes the old one,
/// whose clearing is synced too). After an unclean stop the file is still empty.
#[test]
fn the_same_truncation_again_keeps_its_record_and_one_sync() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = layer(dir.path(), 4, 16);
        c.learn_attr(b"F", attr(0), c.stamp());
        for round in 1..=3u8 {
            let before = c.syncs();
            assert!(c.truncate_locally(b"F", 0, None).unwrap().is_some());
            let syncs = c.syncs() - before;
            if round == 1 {
                assert_eq!(syncs, 1, "the first record is synced");
            } else {
                assert_eq!(
                    syncs, 1,
                    "round {round}: the cut data synced, the record kept"
                );
                let d = c.store.dirty_blocks().unwrap();
                assert!(
                    d.is_empty(),
                    "round {round}: the last round's bytes are cut: {d:?}"
                );
            }
            assert_eq!(c.effective_attr(b"F").unwrap().size, 0);
            c.store.put(b"F", 0, 0, &[round; 3000], true).unwrap();
            c.note_local_write(b"F", 3000, None);
            c.store.sync_file(b"F").unwrap(); // COMMIT
        }
        assert!(c.truncate_locally(b"F", 0, None).unwrap().is_some());
        // Dropped without `close`: an unclean stop.
    }
    let c = layer(dir.path(), 4, 16);
    assert_eq!(c.cut(b"F"), Some(0));
    assert_eq!(c.local(b"F").map(|l| l.size), Some(0));
    assert!(c.store.dirty_blocks().unwrap().is_empty());
    // A different truncation still writes a new record.
    c.learn_attr(b"F", attr(0), c.stamp());
    assert!(c.truncate_locally(b"F", 10, None).unwrap().is_some());
    let c2 = {
        drop(c);
        layer(dir.path(), 4, 16)
    };
    assert_eq!(
        (c2.cut(b"F"), c2.local(b"F").map(|l| l.size)),
        (Some(0), Some(10))
    );
}

/// A kept cut applied by a path other than the file's flush (room-making, a
/// write-through, a forwarded truncation) leaves the file local; after a clean stop the
/// reopened cache must not take the size kept from before the cut (the attributes kept
/// in the store) for another writer's extension and show the old length again.
#[test]
fn an_applied_cut_does_not_bring_the_old_size_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = layer(dir.path(), 4, 16);
        c.learn_attr(b"F", attr(300_000), c.stamp());
        c.persist_attr(b"F", None, &attr(300_000)); // as a reply's attributes are kept
        assert!(c.truncate_locally(b"F", 1000, None).unwrap().is_some());
        c.store.put(b"F", 0, 0, &[7u8; 500], true).unwrap();
        c.note_local_write(b"F", 500, None);
        // The write-back applied the cut (SETATTR 1000) to make room, then stopped.
        c.cut_applied(b"F", 1000, Some(attr(1000))).unwrap();
        assert_eq!(c.effective_attr(b"F").unwrap().size, 1000);
        c.close().unwrap();
    }
    let c = layer(dir.path(), 4, 16);
    let _ = c.effective_attr(b"F");
    let size = c.effective_attr(b"F").map(|a| a.size);
    assert_eq!(
        size,
        Some(1000),
        "the size the cut left (not the one from before it, 300000)"
    );
}

/// A cache bank whose fdatasync failed, holding one file's lost writes, fails the
/// durable points of that file only: a truncation of another file, whose changes are
/// all in a healthy bank, is made durable and acknowledged. (Before, a truncation
/// forwarded to the next hop synced every bank and failed while any bank had lost
/// writes of any file.)
#[test]
fn a_failed_bank_fails_only_the_truncations_of_its_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let c = layer_in_banks(dir.path(), 2, 8, 2);
    let named = |bank: usize| {
        (0..)
            .map(|i| format!("F{i}").into_bytes())
            .find(|n| c.store.bank_of(n, 0) == bank)
            .unwrap()
    };
    let (a, b) = (named(0), named(1));
    for f in [&a, &b] {
        c.learn_attr(f, attr(4096), c.stamp());
        c.store.put(f, 0, 0, &[9u8; 4096], true).unwrap();
        c.note_local_write(f, 4096, None);
    }
    c.store.sync_file(&b).unwrap();
    // a's write was not durable when its bank's fdatasync failed.
    assert!(
        c.store
            .with_failing_bank(0, || c.store.sync_file(&a))
            .is_err()
    );
    assert!(
        c.truncated(&b, Some(4096), 100).is_ok(),
        "b's truncation is durable in its healthy bank"
    );
    assert_eq!(c.effective_attr(&b).unwrap().size, 100);
    assert!(
        c.truncated(&a, Some(4096), 100).is_err(),
        "a lost writes in the failed bank: its truncation is not acknowledged"
    );
}
