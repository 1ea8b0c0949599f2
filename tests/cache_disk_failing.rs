//! The cache disk fails an fdatasync (EIO). Linux reports a writeback error once per
//! file, so the proxy must not trust that bank file again: the COMMIT that met the
//! failure answers NFS3ERR_IO (the application learns it at fsync or close, as on a
//! local disk), the write verifier changes (the UNSTABLE writes since the last COMMIT
//! count as lost), a FILE_SYNC WRITE is either refused or goes through to the server —
//! never acknowledged and then lost — and what was committed before the failure reaches
//! the server at the next flush. Other clients keep being served. The cache lives on a
//! FUSE pass-through file system (`tests/lab/faultyfs.py`, Debian's python3-fusepy)
//! whose fsync fails with EIO while a flag file exists: the kernel really returns EIO
//! from the proxy's fdatasync.
//!
//! The same file system can also lose every write not yet fsynced (`--lose-unsynced`):
//! a power failure after `kill -9`, which a plain `kill -9` is not (the page cache
//! survives it). Everything the proxy acknowledged as durable must survive that.

mod common;

use common::faultyfs::FaultyFs;
use common::{Gridvfs, Lab, ctl, pseudo_random};
use nfs3_types::nfs3::{COMMIT3args, Nfs3Result, nfs_fh3, nfsstat3, stable_how};

const PIECE: usize = 256 << 10;

/// WRITEs `data[range]` at its offsets in PIECE-byte calls: each reply's (verifier,
/// committed) or error status.
async fn write_range(
    c: &mut common::Client,
    fh: &nfs_fh3,
    data: &[u8],
    range: std::ops::Range<usize>,
    stable: stable_how,
) -> Vec<(usize, Result<([u8; 8], stable_how), nfsstat3>)> {
    let mut out = Vec::new();
    for at in range.step_by(PIECE) {
        let w = common::write_status(c, fh, at as u64, &data[at..at + PIECE], stable).await;
        out.push((at, w.map(|ok| (ok.verf.0, ok.committed))));
    }
    out
}

/// UNSTABLE WRITEs of `data[range]` (each must be accepted), then a COMMIT: its verifier.
async fn write_committed(
    c: &mut common::Client,
    fh: &nfs_fh3,
    data: &[u8],
    range: std::ops::Range<usize>,
) -> [u8; 8] {
    for (at, w) in write_range(c, fh, data, range, stable_how::UNSTABLE).await {
        assert!(w.is_ok(), "WRITE at {at}: {w:?}");
    }
    common::commit(c, fh).await.verf.0
}

/// One test's setting: the lab and its scratch directory (`dir` on this machine, `name`
/// on the export), faultyfs (losing unsynced writes on a power cut if asked), a control
/// socket, and a write-back proxy with its cache on faultyfs (`config`, for a restart),
/// a client mounted through it and the handle of the scratch directory.
struct Rig {
    lab: Lab,
    dir: std::path::PathBuf,
    name: String,
    fs: FaultyFs,
    /// Holds the control socket's directory.
    _ctl: tempfile::TempDir,
    socket: std::path::PathBuf,
    config: String,
    p: Gridvfs,
    c: common::Client,
    d: nfs_fh3,
}

async fn rig(scratch: &str, lose_unsynced: bool) -> Rig {
    let lab = Lab::get();
    let (dir, name) = lab.scratch(scratch);
    let fs = FaultyFs::mount_with(lose_unsynced);
    let ctl = tempfile::tempdir().unwrap();
    let socket = ctl.path().join("ctl");
    let config = common::write_back_and_control(&fs.mnt.join("cache"), common::CACHE_64M, &socket);
    let p = Gridvfs::start_with(lab.endpoint(), "127.0.0.1:0", "", &config);
    let mut c = common::mount(p.endpoints(), &lab.export).await;
    let d = common::scratch_fh(&mut c, &name).await;
    Rig {
        lab,
        dir,
        name,
        fs,
        _ctl: ctl,
        socket,
        config,
        p,
        c,
        d,
    }
}

#[tokio::test]
async fn a_failing_cache_disk_loses_no_acknowledged_write() {
    let Rig {
        lab,
        dir,
        name,
        fs,
        _ctl,
        socket,
        config: _,
        mut p,
        mut c,
        d,
    } = rig("disk-failing", false).await;
    std::fs::write(dir.join("other.bin"), pseudo_random(300 << 10, 92)).unwrap();
    let fh = common::create(&mut c, &d, "f.bin").await;
    let data = pseudo_random(6 << 20, 91);
    let on_server = |r: std::ops::Range<usize>| {
        let f = std::fs::read(dir.join("f.bin")).unwrap();
        f.len() >= r.end && f[r.clone()] == data[r]
    };

    // Healthy: 2 MiB written and committed in the cache under one verifier.
    for (_, w) in write_range(&mut c, &fh, &data, 0..2 << 20, stable_how::UNSTABLE).await {
        assert!(matches!(w, Ok((_, stable_how::UNSTABLE))), "{w:?}");
    }
    let v1 = common::commit(&mut c, &fh).await.verf.0;
    assert!(
        !on_server(0..PIECE),
        "write-back cache: nothing at the server yet"
    );

    // 2 MiB more, UNSTABLE; then every fdatasync of the cache disk fails.
    for (_, w) in write_range(&mut c, &fh, &data, 2 << 20..4 << 20, stable_how::UNSTABLE).await {
        assert_eq!(w.map(|w| w.0), Ok(v1));
    }
    fs.fail_syncs(true);
    let commit = c
        .commit(&COMMIT3args {
            file: fh.clone(),
            offset: 0,
            count: 0,
        })
        .await
        .unwrap();
    assert!(
        matches!(commit, Nfs3Result::Err((nfsstat3::NFS3ERR_IO, _))),
        "a COMMIT whose fdatasync failed was answered {commit:?}\n{}",
        p.log_text()
    );
    assert!(
        p.log_text().contains("unstable data may be lost"),
        "{}",
        p.log_text()
    );

    // FILE_SYNC WRITEs with the disk still failing: each either went through (the
    // bytes are on the server's disk now) or was refused — here refused, since the file
    // has unsynced data in the failed bank, and a durable point that needs that bank
    // fails until the proxy restarts (docs/operations.md).
    let (mut through, mut refused) = (0, 0);
    for (at, w) in write_range(&mut c, &fh, &data, 4 << 20..6 << 20, stable_how::FILE_SYNC).await {
        match w {
            Ok((v, how)) => {
                assert!(matches!(how, stable_how::FILE_SYNC), "{how:?}");
                assert_ne!(v, v1, "the verifier did not change");
                assert!(
                    on_server(at..at + PIECE),
                    "FILE_SYNC at {at} acknowledged, not on the server"
                );
                through += 1;
            }
            Err(s) => {
                assert_eq!(s, nfsstat3::NFS3ERR_IO);
                refused += 1;
            }
        }
    }
    assert_eq!(through + refused, 8);

    // Other clients are served meanwhile.
    let got = common::nfs_cat(p.endpoints(), &lab.export, &format!("{name}/other.bin"));
    assert_eq!(got, std::fs::read(dir.join("other.bin")).unwrap());
    let (ok, s) = ctl(&socket, &["status"]);
    assert!(ok, "{s}");
    assert_eq!(s["cache"]["write_throughs"], through, "{s}");
    // The disk recovers; the flush takes what was committed before the failure (and
    // the rest the cache still holds) to the server.
    fs.fail_syncs(false);
    // A WRITE of another file now carries a new verifier (the UNSTABLE writes since
    // the last COMMIT counted as lost).
    let g = common::create(&mut c, &d, "g.bin").await;
    let w = common::write_status(&mut c, &g, 0, &data[..PIECE], stable_how::UNSTABLE).await;
    assert!(
        matches!(&w, Ok(ok) if ok.verf.0 != v1),
        "after the failure: {w:?}\n{}",
        p.log_text()
    );
    let (ok, f) = ctl(&socket, &["flush"]);
    assert!(ok, "{f}");
    assert!(
        on_server(0..2 << 20),
        "data committed before the failure is not on the server after the flush: {f}\n{}",
        p.log_text()
    );
    // Blocks of the failed banks are not sent again; the flush that took them to the
    // server renewed those banks (new, empty files), so nothing is at risk any more.
    let (ok, again) = ctl(&socket, &["flush"]);
    assert!(ok && again["written"] == 0, "{again}");
    let (ok, s) = ctl(&socket, &["status"]);
    assert!(ok, "{s}");
    assert_eq!(s["cache"]["failed_banks"], 0, "{s}\n{}", p.log_text());
    assert!(s["cache"]["renewed_banks"].as_u64() >= Some(1), "{s}");
    assert!(p.log_text().contains("renewed"), "{}", p.log_text());
    // The range the failed bank refused is taken again, in the cache: WRITE, COMMIT
    // (one verifier), and only the next flush takes it to the server.
    let mut verfs = Vec::new();
    for (at, w) in write_range(&mut c, &fh, &data, 4 << 20..6 << 20, stable_how::UNSTABLE).await {
        match w {
            Ok((v, stable_how::UNSTABLE)) => verfs.push(v),
            other => panic!(
                "WRITE at {at} after the renewal: {other:?}\n{}",
                p.log_text()
            ),
        }
    }
    let v2 = common::commit(&mut c, &fh).await.verf.0;
    assert!(
        verfs.iter().all(|v| *v == v2),
        "verifier moved: {verfs:?} {v2:?}"
    );
    let (_, s2) = ctl(&socket, &["status"]);
    assert_eq!(
        s2["cache"]["write_throughs"],
        s["cache"]["write_throughs"],
        "they went into the cache, none through: {s2}\n{}",
        p.log_text()
    );
    let (ok, f) = ctl(&socket, &["flush"]);
    assert!(
        ok && f["failed"].as_array().is_some_and(|a| a.is_empty()),
        "{f}"
    );
    assert!(
        std::fs::read(dir.join("f.bin")).unwrap() == data,
        "after the renewal and a flush the server's file is not what was written: {f}"
    );
    drop(c);
    p.stop();
    drop(fs);
    std::fs::remove_dir_all(dir).unwrap();
}

/// `kill -9`, then a power failure that loses every cache write not yet fsynced, then a
/// restart on the same cache: what was committed (COMMIT, FILE_SYNC) and a truncation
/// the proxy acknowledged reach the server at the flush, byte for byte; the UNSTABLE
/// writes that were lost show as a new write verifier.
#[tokio::test]
async fn a_power_cut_after_kill_loses_nothing_acknowledged() {
    let Rig {
        lab,
        dir,
        name,
        fs,
        _ctl,
        socket,
        config,
        mut p,
        mut c,
        d,
    } = rig("power-cut", true).await;
    let data = pseudo_random(6 << 20, 93);

    // a.bin: 4 MiB committed, then 1 MiB UNSTABLE never committed.
    let a = common::create(&mut c, &d, "a.bin").await;
    let v1 = write_committed(&mut c, &a, &data, 0..4 << 20).await;
    for (_, w) in write_range(&mut c, &a, &data, 4 << 20..5 << 20, stable_how::UNSTABLE).await {
        assert!(w.is_ok(), "{w:?}");
    }
    // b.bin: FILE_SYNC WRITEs.
    let b = common::create(&mut c, &d, "b.bin").await;
    for (_, w) in write_range(&mut c, &b, &data, 0..1 << 20, stable_how::FILE_SYNC).await {
        assert!(matches!(w, Ok((_, stable_how::FILE_SYNC))), "{w:?}");
    }
    // t.bin: 1 MiB committed, then cut to 300 KiB (acknowledged).
    let t = common::create(&mut c, &d, "t.bin").await;
    write_committed(&mut c, &t, &data, 0..1 << 20).await;
    common::set_size(&mut c, &t, 300 << 10).await;
    assert_eq!(
        std::fs::metadata(dir.join("a.bin")).unwrap().len(),
        0,
        "write-back: nothing at the server yet"
    );

    drop(c);
    p.kill();
    fs.power_cut();
    let mut p = Gridvfs::start_with(lab.endpoint(), "127.0.0.1:0", "", &config);
    let mut c = common::mount(p.endpoints(), &lab.export).await;
    let d = common::scratch_fh(&mut c, &name).await;
    let n = common::create(&mut c, &d, "n.bin").await;
    let w = common::write(&mut c, &n, 0, &data[..PIECE], stable_how::UNSTABLE).await;
    assert_ne!(
        w.verf.0,
        v1,
        "UNSTABLE writes were lost in the power cut: the verifier must change\n{}",
        p.log_text()
    );
    let a = common::lookup_in(&mut c, &d, "a.bin").await.object;
    let got = common::read(&mut c, &a, 0, 1 << 20).await;
    assert!(
        got.data[..] == data[..1 << 20],
        "a.bin read back after the restart"
    );

    let (ok, f) = ctl(&socket, &["flush"]);
    assert!(ok, "{f}\n{}", p.log_text());
    let on_disk = |file: &str| std::fs::read(dir.join(file)).unwrap();
    let a_now = on_disk("a.bin");
    assert!(
        a_now.len() >= 4 << 20 && a_now[..4 << 20] == data[..4 << 20],
        "committed data of a.bin lost in the power cut ({} bytes on the server)\n{}",
        a_now.len(),
        p.log_text()
    );
    common::assert_same_bytes("b.bin", &on_disk("b.bin"), &data[..1 << 20]);
    common::assert_same_bytes("t.bin", &on_disk("t.bin"), &data[..300 << 10]);
    drop(c);
    p.stop();
    drop(fs);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The double fault the failed-bank rules are for. A file's committed data is written
/// back by a flush while the cache disk fails its fdatasyncs: the blocks are clean in
/// the proxy's memory, but their clean tags never reach the disk. The disk recovers,
/// the client writes the same blocks again (FILE_SYNC), then `kill -9` and a power cut
/// lose every write not fsynced, so the old dirty tags are back at the restart, whose
/// flush writes them back. Every WRITE the proxy acknowledged must still be on the
/// server after that: one it could not protect from the old version must have been
/// refused. (Without the `at_risk` rules this fails: the WRITEs go through, are
/// acknowledged, and are undone.)
#[tokio::test]
async fn acknowledged_writes_survive_a_failed_fdatasync_then_a_power_cut() {
    let Rig {
        lab,
        dir,
        name,
        fs,
        _ctl,
        socket,
        config,
        mut p,
        mut c,
        d,
    } = rig("eio-power-cut", true).await;
    const LEN: usize = 2 << 20;
    // (pseudo_random sets the seed's low bit: 94 and 95 would give the same bytes.)
    let v1 = pseudo_random(LEN, 94);
    let v3 = pseudo_random(LEN, 98);
    let a = common::create(&mut c, &d, "a.bin").await;
    write_committed(&mut c, &a, &v1, 0..LEN).await;
    // Another file's committed dirty data in every set (128 blocks: all sets of all
    // four banks), not written back below, keeps the failed banks from being renewed:
    // the at-risk rules are what must protect version 3.
    let b = common::create(&mut c, &d, "b.bin").await;
    let other = pseudo_random(8 << 20, 100);
    write_committed(&mut c, &b, &other, 0..8 << 20).await;
    // a.bin written back while the disk fails: on the server, clean in memory only.
    fs.fail_syncs(true);
    let path = format!("{}/{name}/a.bin", lab.export);
    let (_, f) = ctl(&socket, &["flush", "--file", &path]);
    fs.fail_syncs(false);
    assert!(
        std::fs::read(dir.join("a.bin")).unwrap() == v1,
        "the flush wrote version 1 back: {f}"
    );
    let (_, s) = ctl(&socket, &["status"]);
    assert!(
        s["cache"]["failed_banks"].as_u64() > Some(0) && s["cache"]["renewed_banks"] == 0,
        "{s}"
    );
    // Version 3, FILE_SYNC: each piece acknowledged or refused.
    let mut acked = Vec::new();
    for (at, w) in write_range(&mut c, &a, &v3, 0..LEN, stable_how::FILE_SYNC).await {
        match w {
            Ok(_) => acked.push(at),
            Err(s) => assert_eq!(s, nfsstat3::NFS3ERR_IO, "at {at}"),
        }
    }
    drop(c);
    p.kill();
    fs.power_cut();
    let mut p = Gridvfs::start_with(lab.endpoint(), "127.0.0.1:0", "", &config);
    let (ok, f2) = ctl(&socket, &["flush"]);
    assert!(ok, "{f2}\n{}", p.log_text());
    let server = std::fs::read(dir.join("a.bin")).unwrap();
    assert_eq!(server.len(), LEN, "after the restart: {f2}");
    for at in (0..LEN).step_by(PIECE) {
        if acked.contains(&at) {
            assert!(
                server[at..at + PIECE] == v3[at..at + PIECE],
                "an acknowledged FILE_SYNC WRITE at {at} was undone after the power cut \
                 (acknowledged: {acked:?})\n{}",
                p.log_text()
            );
        } else {
            // Not acknowledged: each cache block holds one of the versions (a refused
            // WRITE may still have changed the file, as NFS allows of a failed WRITE).
            for b in (at..at + PIECE).step_by(64 << 10) {
                let r = b..b + (64 << 10);
                assert!(
                    [&v1, &v3].iter().any(|v| server[r.clone()] == v[r.clone()]),
                    "at {b}: none of the versions written"
                );
            }
        }
    }
    p.stop();
    drop(fs);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A failed bank is renewed once its dirty data is at the server: its file is removed
/// (durably), so a dirty tag in it can no longer come back. The file's committed data is
/// written back by a flush while the cache disk fails its fdatasyncs (the clean tags
/// never reach the disk), the disk recovers, another client changes the file at the
/// server, then `kill -9` and a power cut lose every cache write not fsynced, and the
/// proxy restarts and flushes. The other client's bytes must still be there: without
/// the renewal the old dirty tags came back and the restart's flush wrote the old data
/// over them.
#[tokio::test]
async fn a_renewed_bank_brings_no_old_dirty_data_back_after_a_power_cut() {
    let Rig {
        lab,
        dir,
        name: _,
        fs,
        _ctl,
        socket,
        config,
        mut p,
        mut c,
        d,
    } = rig("eio-renewed", true).await;
    const LEN: usize = 2 << 20;
    let (v1, v2) = (pseudo_random(LEN, 102), pseudo_random(LEN, 104));
    let a = common::create(&mut c, &d, "a.bin").await;
    write_committed(&mut c, &a, &v1, 0..LEN).await;
    fs.fail_syncs(true);
    let (ok, f) = ctl(&socket, &["flush"]);
    fs.fail_syncs(false);
    assert!(ok, "{f}");
    assert!(std::fs::read(dir.join("a.bin")).unwrap() == v1, "{f}");
    let (_, s) = ctl(&socket, &["status"]);
    assert!(
        s["cache"]["failed_banks"] == 0 && s["cache"]["renewed_banks"].as_u64() >= Some(1),
        "the flush renewed the failed bank: {s}\n{}",
        p.log_text()
    );
    // Another client writes the file at the server.
    std::fs::write(dir.join("a.bin"), &v2).unwrap();
    drop(c);
    p.kill();
    fs.power_cut();
    let mut p = Gridvfs::start_with(lab.endpoint(), "127.0.0.1:0", "", &config);
    let (ok, f2) = ctl(&socket, &["flush"]);
    assert!(ok, "{f2}\n{}", p.log_text());
    assert!(
        std::fs::read(dir.join("a.bin")).unwrap() == v2,
        "old cache data was written back over the server's newer file after the \
         restart: {f2}\n{}",
        p.log_text()
    );
    p.stop();
    drop(fs);
    std::fs::remove_dir_all(dir).unwrap();
}
