//! Session metadata (`[cache] metadata = "session"`) against the real server: a warm
//! session's LOOKUP, GETATTR, ACCESS and READLINK — and REMOVEs of names known to be
//! absent — are answered by the proxy without a call upstream, and every answer still
//! equals the server's after namespace changes made through the proxy, also when many
//! clients change one directory at once.
//!
//! The next hop is a second gridvfs in front of Ganesha whose control socket reports
//! the calls it received; the truth is Ganesha's export directory on this machine's disk
//! and a client mounted on Ganesha directly.

mod common;

use std::path::Path;

use common::{
    Client, CountingChain, Lab, commit, create, getattr, mount, read_all, scratch_fh, signal,
    write, write_back_cache,
};
use nfs3_types::nfs3::{
    ACCESS3args, CREATE3args, LOOKUP3args, MKDIR3args, Nfs3Option, Nfs3Result, READLINK3args,
    REMOVE3args, RENAME3args, SETATTR3args, SYMLINK3args, createhow3, diropargs3, filename3,
    nfs_fh3, nfsstat3, sattr3, stable_how, symlinkdata3,
};
use nfs3_types::xdr_codec::Opaque;

/// A counting next hop in front of Ganesha, and a session-metadata proxy in front of it.
struct Chain(CountingChain);

impl Chain {
    fn start(lab: &Lab) -> Chain {
        Chain(CountingChain::start(lab, |dir| {
            write_back_cache(dir, "metadata = \"session\"\n")
        }))
    }

    /// Metadata calls the next hop received: LOOKUP + GETATTR + ACCESS + READLINK + REMOVE.
    fn upstream_metadata(&self) -> u64 {
        ["LOOKUP", "GETATTR", "ACCESS", "READLINK", "REMOVE"]
            .iter()
            .map(|p| self.upstream(p))
            .sum()
    }

    fn hits(&self) -> u64 {
        self.cache_status("metadata_hits")
    }
}

impl std::ops::Deref for Chain {
    type Target = CountingChain;
    fn deref(&self) -> &CountingChain {
        &self.0
    }
}

fn dirop(dir: &nfs_fh3, name: &str) -> diropargs3<'static> {
    diropargs3 {
        dir: dir.clone(),
        name: filename3(Opaque::owned(name.as_bytes().to_vec())),
    }
}

/// LOOKUP: the handle, or the NFS status of a failure.
async fn lookup(c: &mut Client, dir: &nfs_fh3, name: &str) -> Result<nfs_fh3, nfsstat3> {
    let r = c
        .lookup(&LOOKUP3args {
            what: dirop(dir, name),
        })
        .await
        .unwrap_or_else(|e| panic!("LOOKUP {name}: {e}"));
    match r {
        Nfs3Result::Ok(ok) => Ok(ok.object),
        Nfs3Result::Err((st, _)) => Err(st),
    }
}

async fn remove(c: &mut Client, dir: &nfs_fh3, name: &str) -> nfsstat3 {
    match c
        .remove(&REMOVE3args {
            object: dirop(dir, name),
        })
        .await
        .unwrap_or_else(|e| panic!("REMOVE {name}: {e}"))
    {
        Nfs3Result::Ok(_) => nfsstat3::NFS3_OK,
        Nfs3Result::Err((st, _)) => st,
    }
}

async fn mkdir(c: &mut Client, dir: &nfs_fh3, name: &str) -> nfs_fh3 {
    let ok = c
        .mkdir(&MKDIR3args {
            where_: dirop(dir, name),
            attributes: sattr3 {
                mode: Nfs3Option::Some(0o755),
                ..Default::default()
            },
        })
        .await
        .unwrap_or_else(|e| panic!("MKDIR {name}: {e}"));
    match ok {
        Nfs3Result::Ok(ok) => match ok.obj {
            Nfs3Option::Some(fh) => fh,
            Nfs3Option::None => lookup(c, dir, name).await.expect("made"),
        },
        Nfs3Result::Err((st, _)) => panic!("MKDIR {name}: {st:?}"),
    }
}

async fn access(c: &mut Client, fh: &nfs_fh3, mask: u32) -> u32 {
    match c
        .access(&ACCESS3args {
            object: fh.clone(),
            access: mask,
        })
        .await
        .expect("ACCESS")
    {
        Nfs3Result::Ok(ok) => ok.access,
        Nfs3Result::Err((st, _)) => panic!("ACCESS: {st:?}"),
    }
}

async fn readlink(c: &mut Client, fh: &nfs_fh3) -> Vec<u8> {
    match c
        .readlink(&READLINK3args {
            symlink: fh.clone(),
        })
        .await
        .expect("READLINK")
    {
        Nfs3Result::Ok(ok) => ok.data.0.to_vec(),
        Nfs3Result::Err((st, _)) => panic!("READLINK: {st:?}"),
    }
}

async fn chmod(c: &mut Client, fh: &nfs_fh3, mode: u32) {
    let r = c
        .setattr(&SETATTR3args {
            object: fh.clone(),
            new_attributes: sattr3 {
                mode: Nfs3Option::Some(mode),
                ..Default::default()
            },
            guard: Nfs3Option::None,
        })
        .await
        .expect("SETATTR");
    assert!(matches!(r, Nfs3Result::Ok(_)), "SETATTR mode");
}

/// What the server says a name is, straight from Ganesha: Ok(fileid) or the status.
async fn truth(direct: &mut Client, dir: &nfs_fh3, name: &str) -> Result<u64, nfsstat3> {
    match lookup(direct, dir, name).await {
        Ok(fh) => Ok(getattr(direct, &fh).await.fileid),
        Err(st) => Err(st),
    }
}

/// What the proxy says a name is, in the same terms.
async fn said(c: &mut Client, dir: &nfs_fh3, name: &str) -> Result<u64, nfsstat3> {
    match lookup(c, dir, name).await {
        Ok(fh) => Ok(getattr(c, &fh).await.fileid),
        Err(st) => Err(st),
    }
}

/// A warm session asks the next hop nothing for metadata it already knows; namespace
/// changes through the proxy are reflected in every later answer.
#[tokio::test]
async fn warm_metadata_is_local_and_follows_changes() {
    let lab = Lab::get();
    let (local, name) = lab.scratch("names-warm");
    let chain = Chain::start(&lab);
    let mut c = mount(chain.proxy.endpoints(), &lab.export).await;
    let mut direct = mount(lab.endpoint(), &lab.export).await;
    let top = scratch_fh(&mut c, &name).await;
    let dtop = scratch_fh(&mut direct, &name).await;

    // Cold: a tree made through the proxy, read once.
    let sub = mkdir(&mut c, &top, "sub").await;
    let mut files = Vec::new();
    for i in 0..5 {
        let f = create(&mut c, &sub, &format!("f{i}")).await;
        write(
            &mut c,
            &f,
            0,
            format!("file {i}").as_bytes(),
            stable_how::UNSTABLE,
        )
        .await;
        commit(&mut c, &f).await;
        files.push(f);
    }
    let target = b"sub/f0".to_vec();
    let ln = c
        .symlink(&SYMLINK3args {
            where_: dirop(&top, "ln"),
            symlink: symlinkdata3 {
                symlink_attributes: sattr3::default(),
                symlink_data: target.clone().into(),
            },
        })
        .await
        .expect("SYMLINK");
    let Nfs3Result::Ok(ln) = ln else {
        panic!("SYMLINK failed")
    };
    let ln = match ln.obj {
        Nfs3Option::Some(fh) => fh,
        Nfs3Option::None => lookup(&mut c, &top, "ln").await.unwrap(),
    };
    // In a directory made through the proxy every name is known: absent ones too.
    assert_eq!(
        lookup(&mut c, &sub, "nothing").await,
        Err(nfsstat3::NFS3ERR_NOENT)
    );
    assert_eq!(
        remove(&mut c, &sub, "nothing").await,
        nfsstat3::NFS3ERR_NOENT
    );
    let a = access(&mut c, &files[0], 0x3f).await;
    assert_eq!(readlink(&mut c, &ln).await, target);

    // Warm: the same walk asks the next hop nothing.
    let before = chain.upstream_metadata();
    let hits = chain.hits();
    for round in 0..3 {
        for (i, f) in files.iter().enumerate() {
            let fh = lookup(&mut c, &sub, &format!("f{i}")).await.unwrap();
            assert_eq!(
                &fh, f,
                "round {round}: LOOKUP f{i} gives the handle CREATE gave"
            );
            // Written back only at a flush: the size is the session's.
            let attr = getattr(&mut c, &fh).await;
            assert_eq!(attr.size, 6, "f{i}: its size with the local writes");
            assert_eq!(
                read_all(&mut c, &fh).await,
                format!("file {i}").as_bytes(),
                "f{i}'s bytes"
            );
        }
        assert_eq!(access(&mut c, &files[0], 0x3f).await, a, "ACCESS again");
        assert_eq!(access(&mut c, &files[0], 0x01).await, a & 0x01, "a subset");
        assert_eq!(readlink(&mut c, &ln).await, target);
        assert_eq!(lookup(&mut c, &top, "ln").await.unwrap(), ln);
        assert_eq!(
            lookup(&mut c, &sub, "nothing").await,
            Err(nfsstat3::NFS3ERR_NOENT)
        );
    }
    assert_eq!(
        chain.upstream_metadata(),
        before,
        "a warm session's metadata calls must not reach the next hop"
    );
    assert_eq!(chain.hits(), hits + 3 * 15, "metadata_hits counts them");

    // Changes through the proxy: every answer equals the server's afterwards.
    assert_eq!(remove(&mut c, &sub, "f1").await, nfsstat3::NFS3_OK);
    let r = c
        .rename(&RENAME3args {
            from: dirop(&sub, "f2"),
            to: dirop(&top, "moved"),
        })
        .await
        .expect("RENAME");
    assert!(matches!(r, Nfs3Result::Ok(_)), "RENAME");
    let again = create(&mut c, &sub, "f1").await;
    assert_ne!(again, files[1], "a new file under the old name");
    chmod(&mut c, &files[0], 0o600).await;
    let dsub = lookup(&mut direct, &dtop, "sub").await.unwrap();
    for (dir, ddir, n) in [
        (&sub, &dsub, "f0"),
        (&sub, &dsub, "f1"),
        (&sub, &dsub, "f2"),
        (&sub, &dsub, "f3"),
        (&top, &dtop, "moved"),
        (&top, &dtop, "sub"),
    ] {
        assert_eq!(
            said(&mut c, dir, n).await,
            truth(&mut direct, ddir, n).await,
            "{n}: the proxy's answer differs from the server's"
        );
    }
    assert_eq!(
        lookup(&mut c, &top, "moved").await.unwrap(),
        files[2],
        "RENAME keeps the handle"
    );
    assert_eq!(
        getattr(&mut c, &files[0]).await.mode & 0o777,
        0o600,
        "chmod seen"
    );
    assert_eq!(
        access(&mut c, &files[0], 0x3f).await,
        {
            let fh = lookup(&mut direct, &dsub, "f0").await.unwrap();
            access(&mut direct, &fh, 0x3f).await
        },
        "ACCESS after chmod as the server says"
    );

    // The end of the session (SIGUSR2) forgets it all: the next LOOKUP asks again.
    let before = chain.upstream("LOOKUP");
    signal(chain.proxy.pid(), "USR2");
    chain.proxy.wait_log("cache dropped", 1);
    lookup(&mut c, &sub, "f3").await.unwrap();
    assert!(
        chain.upstream("LOOKUP") > before,
        "LOOKUP after SIGUSR2 goes upstream"
    );
    std::fs::remove_dir_all(&local).unwrap();
}

/// Eight clients create, remove and rename in one directory at once through one proxy;
/// afterwards every name the proxy answers for agrees with the server.
#[tokio::test]
async fn concurrent_changes_leave_no_stale_names() {
    let lab = Lab::get();
    let (local, name) = lab.scratch("names-race");
    let chain = Chain::start(&lab);
    let mut c = mount(chain.proxy.endpoints(), &lab.export).await;
    let top = scratch_fh(&mut c, &name).await;
    let dir = mkdir(&mut c, &top, "d").await;
    const NAMES: usize = 12;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8u64 {
        let (ep, export, dir) = (chain.proxy.endpoints(), lab.export.clone(), dir.clone());
        tasks.spawn(async move {
            let mut c = mount(ep, &export).await;
            let mut x = w * 7919 + 1;
            for _ in 0..60 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let n = format!("n{}", (x >> 33) as usize % NAMES);
                match (x >> 20) % 4 {
                    0 => {
                        // Ganesha may answer NOENT while a RENAME of the name runs:
                        // any status will do, the check is on the names afterwards.
                        let _ = c
                            .create(&CREATE3args {
                                where_: dirop(&dir, &n),
                                how: createhow3::UNCHECKED(sattr3::default()),
                            })
                            .await
                            .expect("CREATE");
                    }
                    1 => {
                        remove(&mut c, &dir, &n).await;
                    }
                    2 => {
                        let to = format!("n{}", (x >> 40) as usize % NAMES);
                        let _ = c
                            .rename(&RENAME3args {
                                from: dirop(&dir, &n),
                                to: dirop(&dir, &to),
                            })
                            .await
                            .expect("RENAME");
                    }
                    _ => {
                        let _ = lookup(&mut c, &dir, &n).await;
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let on_disk = |n: &str| std::fs::symlink_metadata(local.join("d").join(n));
    for i in 0..NAMES {
        let n = format!("n{i}");
        let got = said(&mut c, &dir, &n).await;
        match on_disk(&n) {
            Ok(m) => assert_eq!(
                got,
                Ok(std::os::unix::fs::MetadataExt::ino(&m)),
                "{n} is on the server's disk"
            ),
            Err(_) => assert_eq!(got, Err(nfsstat3::NFS3ERR_NOENT), "{n} is not on disk"),
        }
    }
    std::fs::remove_dir_all(&local).unwrap();
}

/// `metadata = "session"` needs `consistency = "session"`; bad values are refused with
/// the key named.
#[test]
fn bad_metadata_config_is_refused() {
    for (extra, want) in [
        ("metadata = \"sometimes\"\n", "cache.metadata"),
        (
            "metadata = \"session\"\nconsistency = \"attributes\"\n",
            "needs consistency",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "[upstream]\nnfs = \"tcp://127.0.0.1:2049\"\n{}",
                write_back_cache(Path::new("/tmp/none"), extra)
            ),
        )
        .unwrap();
        let out = std::process::Command::new(common::bin())
            .arg("check-config")
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: accepted");
        assert!(
            err.contains(want),
            "{extra}: error does not say {want}: {err}"
        );
    }
}

/// MKDIR, SYMLINK, CREATE GUARDED and LINK of a name the session knows to exist are
/// refused with NFS3ERR_EXIST by the proxy, as Ganesha refuses them, without a call
/// upstream; a name not known is still asked.
#[tokio::test]
async fn making_a_known_name_again_is_refused_here() {
    use nfs3_types::nfs3::LINK3args;
    let lab = Lab::get();
    let (_local, name) = lab.scratch("names-exist");
    let chain = Chain::start(&lab);
    let mut c = mount(chain.proxy.endpoints(), &lab.export).await;
    let mut direct = mount(lab.endpoint(), &lab.export).await;
    let top = scratch_fh(&mut c, &name).await;
    let sub = mkdir(&mut c, &top, "sub").await;
    let f = create(&mut c, &sub, "f").await;
    fn st<T, E>(r: Nfs3Result<T, E>) -> nfsstat3 {
        match r {
            Nfs3Result::Ok(_) => nfsstat3::NFS3_OK,
            Nfs3Result::Err((st, _)) => st,
        }
    }
    // Each call, through the proxy and straight to Ganesha.
    async fn attempts(c: &mut Client, dir: &nfs_fh3, f: &nfs_fh3) -> Vec<nfsstat3> {
        let mut out = Vec::new();
        let r = c
            .mkdir(&MKDIR3args {
                where_: dirop(dir, "f"),
                attributes: sattr3::default(),
            })
            .await
            .expect("MKDIR");
        out.push(st(r));
        let r = c
            .symlink(&SYMLINK3args {
                where_: dirop(dir, "f"),
                symlink: symlinkdata3 {
                    symlink_attributes: sattr3::default(),
                    symlink_data: b"x".to_vec().into(),
                },
            })
            .await
            .expect("SYMLINK");
        out.push(st(r));
        let r = c
            .create(&CREATE3args {
                where_: dirop(dir, "f"),
                how: createhow3::GUARDED(sattr3::default()),
            })
            .await
            .expect("CREATE");
        out.push(st(r));
        let r = c
            .link(&LINK3args {
                file: f.clone(),
                link: dirop(dir, "f"),
            })
            .await
            .expect("LINK");
        out.push(st(r));
        out
    }
    let before = ["MKDIR", "SYMLINK", "CREATE", "LINK"].map(|p| chain.upstream(p));
    let hits = chain.hits();
    let got = attempts(&mut c, &sub, &f).await;
    assert_eq!(
        ["MKDIR", "SYMLINK", "CREATE", "LINK"].map(|p| chain.upstream(p)),
        before,
        "answered by the proxy"
    );
    assert_eq!(chain.hits(), hits + 4);
    let dtop = scratch_fh(&mut direct, &name).await;
    let dsub = lookup(&mut direct, &dtop, "sub").await.unwrap();
    let df = lookup(&mut direct, &dsub, "f").await.unwrap();
    let want = attempts(&mut direct, &dsub, &df).await;
    assert_eq!(got, want, "the same statuses as Ganesha's");
    assert!(got.iter().all(|s| *s == nfsstat3::NFS3ERR_EXIST), "{got:?}");
    // A name the session does not know goes upstream.
    let _new = mkdir(&mut c, &sub, "d2").await;
    assert_eq!(chain.upstream("MKDIR"), before[0] + 1);
}
