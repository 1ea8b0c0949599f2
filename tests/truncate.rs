//! Truncations kept in the write-back cache, against the real server: a SETATTR of the
//! size, or a CREATE of a name the session knows to exist, is answered by the proxy
//! without a call upstream; reads see zeros past the cut (never the server's old bytes);
//! the write-back applies the cut at the server before the file's WRITEs, so the server's
//! file ends byte-equal to what the client saw; a crash loses nothing acknowledged.
//!
//! The next hop is a second gridvfs in front of Ganesha whose control socket reports the
//! calls it received; the truth is Ganesha's export directory on this machine's disk.

mod common;

use std::path::Path;

use common::{
    CountingChain, Lab, apply, assert_same_bytes, commit, create_sized, getattr, lookup_in, mount,
    pseudo_random, read, read_all, scratch_fh, set_size, write, write_back_cache,
    write_back_cache_with, write_chunks,
};
use nfs3_types::nfs3::{Nfs3Option, Nfs3Result, SETATTR3args, sattr3, stable_how};

/// A counting next hop in front of Ganesha, and a write-back, session-metadata proxy
/// (with a cache of `geometry`, or the default one).
fn chain(lab: &Lab, geometry: Option<&'static str>) -> CountingChain {
    CountingChain::start(lab, cache(geometry))
}

fn cache(geometry: Option<&'static str>) -> impl Fn(&Path) -> String {
    move |dir| {
        let session = "metadata = \"session\"\n";
        match geometry {
            Some(g) => write_back_cache_with(dir, g, session),
            None => write_back_cache(dir, session),
        }
    }
}

/// A file of `len` random bytes, mode 0644, in the scratch directory.
fn server_file(dir: &Path, name: &str, len: usize, seed: u64) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt;
    let data = pseudo_random(len, seed);
    let p = dir.join(name);
    std::fs::write(&p, &data).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    data
}

/// CREATE of a known file and SETATTRs of the size are answered by the proxy; the
/// server's file is untouched until the write-back, which leaves it equal to what the
/// client saw (old bytes past the cut never come back).
#[tokio::test]
async fn truncations_are_kept_here_until_the_write_back() {
    let lab = Lab::get();
    let (local, name) = lab.scratch("trunc-kept");
    let old = server_file(&local, "f", 300_000, 11);
    let chain = chain(&lab, None);
    let mut c = mount(chain.proxy.endpoints(), &lab.export).await;
    let top = scratch_fh(&mut c, &name).await;
    let fh = lookup_in(&mut c, &top, "f").await.object;
    assert_same_bytes("first read", &read_all(&mut c, &fh).await, &old);
    let (setattrs, creates) = (chain.upstream("SETATTR"), chain.upstream("CREATE"));

    // CREATE of the existing name: the same file, now empty.
    assert_eq!(
        create_sized(&mut c, &top, "f", Some(0)).await,
        fh,
        "same handle"
    );
    assert_eq!(getattr(&mut c, &fh).await.size, 0);
    assert!(read_all(&mut c, &fh).await.is_empty(), "empty after CREATE");

    // Written again at its head and far past it: the gap reads as zeros.
    let mut want = Vec::new();
    let head = pseudo_random(1000, 12);
    let tail = pseudo_random(100, 13);
    write(&mut c, &fh, 0, &head, stable_how::UNSTABLE).await;
    apply(&mut want, 0, &head);
    write(&mut c, &fh, 200_000, &tail, stable_how::UNSTABLE).await;
    apply(&mut want, 200_000, &tail);
    commit(&mut c, &fh).await;
    assert_same_bytes("after the rewrite", &read_all(&mut c, &fh).await, &want);
    let mid = read(&mut c, &fh, 100_003, 5000).await;
    assert!(
        mid.data.iter().all(|&b| b == 0),
        "bytes past the cut are zeros, not the server's old ones"
    );

    // SETATTR of the size: cut below the tail, then extended again.
    set_size(&mut c, &fh, 150_000).await;
    want.truncate(150_000);
    set_size(&mut c, &fh, 180_000).await;
    want.resize(180_000, 0);
    assert_eq!(getattr(&mut c, &fh).await.size, 180_000);
    assert_same_bytes("after SETATTRs", &read_all(&mut c, &fh).await, &want);

    assert_eq!(
        chain.upstream("SETATTR"),
        setattrs,
        "no SETATTR upstream yet"
    );
    assert_eq!(chain.upstream("CREATE"), creates, "no CREATE upstream");
    assert_same_bytes(
        "the server's file before the write-back",
        &std::fs::read(local.join("f")).unwrap(),
        &old,
    );
    assert_eq!(chain.cache_status("local_truncations"), 3);
    assert_eq!(chain.cache_status("truncations_pending"), 1);

    chain.flush();
    assert_same_bytes(
        "the server's file after the write-back",
        &std::fs::read(local.join("f")).unwrap(),
        &want,
    );
    assert_eq!(
        chain.upstream("SETATTR"),
        setattrs + 2,
        "the write-back applies the cut and the size: two SETATTRs"
    );
    assert_eq!(chain.cache_status("truncations_pending"), 0);
    assert_same_bytes(
        "read after the write-back",
        &read_all(&mut c, &fh).await,
        &want,
    );

    // A file only truncated (nothing written since) is written back too.
    set_size(&mut c, &fh, 10).await;
    chain.flush();
    assert_same_bytes(
        "the server's file after a bare truncation",
        &std::fs::read(local.join("f")).unwrap(),
        &want[..10],
    );
}

/// A truncation the proxy must forward (it also changes the mode) applies the one kept
/// in the cache first, so the server never holds bytes that the later write-back of the
/// kept cut would destroy, and the file ends right.
#[tokio::test]
async fn a_forwarded_truncation_applies_the_kept_one_first() {
    let lab = Lab::get();
    let (local, name) = lab.scratch("trunc-forwarded");
    let old = server_file(&local, "g", 200_000, 21);
    let chain = chain(&lab, None);
    let mut c = mount(chain.proxy.endpoints(), &lab.export).await;
    let top = scratch_fh(&mut c, &name).await;
    let fh = lookup_in(&mut c, &top, "g").await.object;
    assert_same_bytes("first read", &read_all(&mut c, &fh).await, &old);

    set_size(&mut c, &fh, 5000).await;
    let mut want = old[..5000].to_vec();
    let data = pseudo_random(3000, 22);
    write(&mut c, &fh, 100_000, &data, stable_how::UNSTABLE).await;
    apply(&mut want, 100_000, &data);
    commit(&mut c, &fh).await;
    let setattrs = chain.upstream("SETATTR");

    let r = c
        .setattr(&SETATTR3args {
            object: fh.clone(),
            new_attributes: sattr3 {
                mode: Nfs3Option::Some(0o600),
                size: Nfs3Option::Some(101_000),
                ..Default::default()
            },
            guard: Nfs3Option::None,
        })
        .await
        .expect("SETATTR");
    assert!(matches!(r, Nfs3Result::Ok(_)), "SETATTR mode+size");
    want.truncate(101_000);
    assert!(
        chain.upstream("SETATTR") >= setattrs + 2,
        "the kept cut went first, then the forwarded SETATTR"
    );
    assert_same_bytes("read", &read_all(&mut c, &fh).await, &want);
    chain.flush();
    assert_same_bytes(
        "the server's file after the write-back",
        &std::fs::read(local.join("g")).unwrap(),
        &want,
    );
}

/// The proxy is killed after acknowledging a truncation and a COMMIT: restarted on the
/// same cache, it still shows the cut file, and its write-back makes the server's file
/// equal to it.
#[tokio::test]
async fn a_kept_truncation_survives_a_crash() {
    let lab = Lab::get();
    let (local, name) = lab.scratch("trunc-crash");
    let old = server_file(&local, "h", 300_000, 31);
    let mut chain = chain(&lab, None);
    let want = {
        let mut c = mount(chain.proxy.endpoints(), &lab.export).await;
        let top = scratch_fh(&mut c, &name).await;
        let fh = lookup_in(&mut c, &top, "h").await.object;
        assert_same_bytes("first read", &read_all(&mut c, &fh).await, &old);
        set_size(&mut c, &fh, 1000).await;
        let mut want = old[..1000].to_vec();
        let data = pseudo_random(100, 32);
        write(&mut c, &fh, 50_000, &data, stable_how::UNSTABLE).await;
        apply(&mut want, 50_000, &data);
        commit(&mut c, &fh).await;
        want
    };
    chain.proxy.kill();
    assert_same_bytes(
        "the server's file after the crash",
        &std::fs::read(local.join("h")).unwrap(),
        &old,
    );
    chain.proxy = CountingChain::proxy(&chain.hop, chain.tmp.path(), cache(None));
    assert_eq!(chain.cache_status("truncations_pending"), 1);
    let mut c = mount(chain.proxy.endpoints(), &lab.export).await;
    let top = scratch_fh(&mut c, &name).await;
    let fh = lookup_in(&mut c, &top, "h").await.object;
    assert_eq!(getattr(&mut c, &fh).await.size, want.len() as u64);
    assert_same_bytes("read after restart", &read_all(&mut c, &fh).await, &want);
    chain.flush();
    assert_same_bytes(
        "the server's file after the write-back",
        &std::fs::read(local.join("h")).unwrap(),
        &want,
    );
}

/// A session that only truncates (no WRITE through this cache yet, so no writer's
/// credential is known): the write-back applies the cut with the credential of the call
/// that asked for it, not AUTH_NONE (which the server refuses), and the server's file
/// ends cut.
#[tokio::test]
async fn a_bare_truncation_is_written_back_with_its_callers_credential() {
    let lab = Lab::get();
    let (local, name) = lab.scratch("trunc-cred");
    let old = server_file(&local, "k", 100_000, 41);
    let chain = chain(&lab, None);
    let mut c = mount(chain.proxy.endpoints(), &lab.export).await;
    let top = scratch_fh(&mut c, &name).await;
    let fh = lookup_in(&mut c, &top, "k").await.object;
    assert_same_bytes("first read", &read_all(&mut c, &fh).await, &old);
    set_size(&mut c, &fh, 10).await;
    assert_eq!(chain.cache_status("truncations_pending"), 1);
    chain.flush();
    assert_eq!(
        chain.cache_status("truncations_pending"),
        0,
        "the cut was applied"
    );
    assert_same_bytes(
        "the server's file after the write-back",
        &std::fs::read(local.join("k")).unwrap(),
        &old[..10],
    );
}

/// In a cache too small for the file's new bytes, room is made by writing dirty blocks
/// back before the flush (or the WRITE goes through): the kept truncation is applied at
/// the server first, so the later write-back does not cut the bytes already sent.
#[tokio::test]
async fn room_making_applies_a_kept_cut_first() {
    let lab = Lab::get();
    let (local, name) = lab.scratch("trunc-room");
    server_file(&local, "r", 100_000, 51);
    // 4 frames of 16 KiB in 2 sets: the record and 5 new blocks cannot all stay.
    let tiny = "size = \"64KiB\"\nblock_size = \"16KiB\"\nways = 2\nbanks = 1\n";
    let chain = chain(&lab, Some(tiny));
    let mut c = mount(chain.proxy.endpoints(), &lab.export).await;
    let top = scratch_fh(&mut c, &name).await;
    let fh = lookup_in(&mut c, &top, "r").await.object;
    assert_eq!(getattr(&mut c, &fh).await.size, 100_000);
    let setattrs = chain.upstream("SETATTR");
    set_size(&mut c, &fh, 0).await;
    assert_eq!(chain.upstream("SETATTR"), setattrs, "kept in the cache");
    let data = pseudo_random(80 << 10, 52);
    write_chunks(&mut c, &fh, 0, &data, 16 << 10, stable_how::UNSTABLE).await;
    commit(&mut c, &fh).await;
    assert!(
        chain.upstream("SETATTR") > setattrs,
        "room-making (or a write-through) applied the cut first"
    );
    assert_same_bytes("read before the flush", &read_all(&mut c, &fh).await, &data);
    chain.flush();
    assert_same_bytes(
        "the server's file after the write-back",
        &std::fs::read(local.join("r")).unwrap(),
        &data,
    );
}
