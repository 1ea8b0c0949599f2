//! Every NFSv3 procedure, through gridvfs and straight to NFS-Ganesha, compared.
//!
//! Each test runs one scenario twice: on a client mounted directly on the lab's Ganesha,
//! then on a client mounted through a fresh `gridvfs` in front of it. Each side works in
//! its own sub-directory (`direct/`, `proxy/`) of the test's scratch directory. A scenario
//! asserts what the server must do (bytes read back equal bytes written, the file on the
//! server's disk changed, the documented error status) and records a transcript of the
//! facts that must not depend on the path taken: statuses, types, modes, sizes, names,
//! link targets, times set explicitly. The two transcripts must be equal line for line.
//! What legitimately differs between two separate operations (fileids, handles, ctime,
//! free space) stays out of the transcripts.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{Client, Gridvfs, Lab, mount, pseudo_random};
use nfs3_types::nfs3::nfsstat3::{
    NFS3_OK, NFS3ERR_EXIST, NFS3ERR_NOENT, NFS3ERR_NOT_SYNC, NFS3ERR_NOTEMPTY, NFS3ERR_STALE,
};
use nfs3_types::nfs3::*;

/// The proxy's default FSINFO transfer-size clamp (`listen.max_io`).
const DEFAULT_MAX_IO: u32 = 1 << 20;

/// One path to the server: a mounted client and its own sub-directory.
struct Side {
    /// "direct" or "proxy"; also the name of the side's sub-directory.
    name: &'static str,
    c: Client,
    /// Handle of this side's sub-directory.
    dir: nfs_fh3,
    /// The same directory on this machine's disk (behind the export).
    local: PathBuf,
}

impl Side {
    /// Says which side a scenario runs on: a failing test prints it above the panic.
    fn begin(&self, scenario: &str) -> Transcript {
        eprintln!("--- {scenario}: {} side", self.name);
        Transcript(Vec::new())
    }
}

/// A test's two sides and the proxy that one of them goes through.
struct Pair {
    direct: Side,
    proxy: Side,
    /// Kept running until the test ends (killed on drop).
    _gridvfs: Gridvfs,
    /// The test's scratch directory on this machine's disk.
    scratch: PathBuf,
}

impl Pair {
    /// After a test passed: removes its scratch directory, so the big ones do not pile
    /// up in the export run after run (a failed test leaves it for inspection).
    fn clean_up(self) {
        std::fs::remove_dir_all(&self.scratch).unwrap();
    }
}

/// Starts a proxy in front of the lab and mounts both sides. `prepare` runs on each
/// side's local directory before any NFS call has looked inside it, so what it makes is
/// not hidden by the server's directory cache.
async fn pair(test: &str, prepare: impl Fn(&Path)) -> Pair {
    pair_with(test, prepare, "").await
}

/// A cache in front of the lab that answers metadata calls from the session's knowledge
/// (`metadata = "session"`, write-through so every change reaches the server's disk at
/// once, as the scenarios check).
fn session_metadata_cache(dir: &Path) -> String {
    format!(
        "[cache]\ndir = \"{}\"\nsize = \"64MiB\"\nwrite_policy = \"write-through\"\n\
         metadata = \"session\"\n",
        dir.display()
    )
}

/// [`pair`] with `upstream_extra` TOML after the proxy's `[upstream]` section (e.g. a
/// `[cache]` section).
async fn pair_with(test: &str, prepare: impl Fn(&Path), upstream_extra: &str) -> Pair {
    let lab = Lab::get();
    let (scratch, scratch_name) = lab.scratch(test);
    for name in ["direct", "proxy"] {
        std::fs::create_dir(scratch.join(name)).unwrap();
        prepare(&scratch.join(name));
    }
    let gridvfs = Gridvfs::start_with(lab.endpoint(), "127.0.0.1:0", "", upstream_extra);
    let mut sides = Vec::new();
    for (name, ep) in [("direct", lab.endpoint()), ("proxy", gridvfs.endpoints())] {
        let mut c = mount(ep, &lab.export).await;
        let root = c.root_nfs_fh3();
        let top = lookup_fh(&mut c, &root, &scratch_name).await;
        let dir = lookup_fh(&mut c, &top, name).await;
        let local = scratch.join(name);
        sides.push(Side {
            name,
            c,
            dir,
            local,
        });
    }
    let proxy = sides.pop().unwrap();
    let direct = sides.pop().unwrap();
    Pair {
        direct,
        proxy,
        _gridvfs: gridvfs,
        scratch,
    }
}

/// The facts of one scenario run that the other side must reproduce.
#[derive(Debug, PartialEq)]
struct Transcript(Vec<String>);

impl Transcript {
    fn step(&mut self, what: &str, fact: impl std::fmt::Display) {
        self.0.push(format!("{what}: {fact}"));
    }

    /// Asserts the proxy's transcript equals the direct one, naming the first step that
    /// differs.
    fn assert_same_as(&self, proxy: &Transcript, what: &str) {
        for (d, p) in self.0.iter().zip(&proxy.0) {
            assert_eq!(d, p, "{what}: left is direct, right is through gridvfs");
        }
        assert_eq!(self, proxy, "{what}: transcripts differ in length");
        assert!(!self.0.is_empty(), "{what}: empty transcript");
    }
}

// ---- wrappers: an RPC-level failure (not an NFS status) always fails the test ----

/// Calls `$c.$proc(&$args)`, panicking on an RPC-level failure.
macro_rules! call {
    ($c:expr, $proc:ident, $args:expr) => {
        $c.$proc(&$args)
            .await
            .unwrap_or_else(|e| panic!("{}: RPC failed: {e:?}", stringify!($proc)))
    };
}

fn status<T, E>(r: &Nfs3Result<T, E>) -> nfsstat3 {
    match r {
        Nfs3Result::Ok(_) => NFS3_OK,
        Nfs3Result::Err((s, _)) => *s,
    }
}

fn dirop<'a>(dir: &nfs_fh3, name: &'a str) -> diropargs3<'a> {
    let name = name.as_bytes().into();
    diropargs3 {
        dir: dir.clone(),
        name,
    }
}

/// Type, permission bits, link count, owner and size: what two equal operations agree on.
fn describe(a: &fattr3) -> String {
    let (t, m, n, u, g, s) = (a.type_, perm(a), a.nlink, a.uid, a.gid, a.size);
    format!("{t} mode={m:o} nlink={n} uid={u} gid={g} size={s}")
}

fn perm(a: &fattr3) -> u32 {
    a.mode & 0o7777
}

fn mode(m: u32) -> sattr3 {
    let mode = Nfs3Option::Some(m);
    sattr3 {
        mode,
        ..Default::default()
    }
}

fn size(n: u64) -> sattr3 {
    let size = Nfs3Option::Some(n);
    sattr3 {
        size,
        ..Default::default()
    }
}

fn time(seconds: u32, nseconds: u32) -> nfstime3 {
    nfstime3 { seconds, nseconds }
}

async fn lookup(c: &mut Client, dir: &nfs_fh3, name: &str) -> LOOKUP3res {
    let what = dirop(dir, name);
    call!(c, lookup, LOOKUP3args { what })
}

async fn lookup_fh(c: &mut Client, dir: &nfs_fh3, name: &str) -> nfs_fh3 {
    match lookup(c, dir, name).await {
        Nfs3Result::Ok(ok) => ok.object,
        Nfs3Result::Err((st, _)) => panic!("LOOKUP {name}: {st}"),
    }
}

/// The handle of a name just made: LOOKUP's, which must equal the one the call returned.
async fn made(c: &mut Client, dir: &nfs_fh3, name: &str, returned: post_op_fh3) -> nfs_fh3 {
    let fh = lookup_fh(c, dir, name).await;
    if let Nfs3Option::Some(r) = returned {
        assert_eq!(r, fh, "{name}: handle on creation != LOOKUP's");
    }
    fh
}

async fn getattr_status(c: &mut Client, fh: &nfs_fh3) -> nfsstat3 {
    status(&call!(c, getattr, GETATTR3args { object: fh.clone() }))
}

async fn getattr(c: &mut Client, fh: &nfs_fh3) -> fattr3 {
    let r = call!(c, getattr, GETATTR3args { object: fh.clone() });
    r.expect("GETATTR").obj_attributes
}

async fn create(c: &mut Client, dir: &nfs_fh3, name: &str, how: createhow3) -> CREATE3res {
    let where_ = dirop(dir, name);
    call!(c, create, CREATE3args { where_, how })
}

/// CREATE GUARDED with permission bits `perm`; returns the new file's handle.
async fn create_file(c: &mut Client, dir: &nfs_fh3, name: &str, perm: u32) -> nfs_fh3 {
    let how = createhow3::GUARDED(mode(perm));
    let ok = create(c, dir, name, how).await.expect("CREATE");
    made(c, dir, name, ok.obj).await
}

async fn mkdir(c: &mut Client, dir: &nfs_fh3, name: &str, perm: u32) -> MKDIR3res {
    let (where_, attributes) = (dirop(dir, name), mode(perm));
    call!(c, mkdir, MKDIR3args { where_, attributes })
}

async fn remove(c: &mut Client, dir: &nfs_fh3, name: &str) -> nfsstat3 {
    let object = dirop(dir, name);
    status(&call!(c, remove, REMOVE3args { object }))
}

async fn rmdir(c: &mut Client, dir: &nfs_fh3, name: &str) -> nfsstat3 {
    let object = dirop(dir, name);
    status(&call!(c, rmdir, RMDIR3args { object }))
}

async fn setattr(c: &mut Client, fh: &nfs_fh3, new: sattr3, guard: sattrguard3) -> nfsstat3 {
    let (object, new_attributes) = (fh.clone(), new);
    let args = SETATTR3args {
        object,
        new_attributes,
        guard,
    };
    status(&call!(c, setattr, args))
}

async fn read(c: &mut Client, fh: &nfs_fh3, offset: u64, count: u32) -> READ3res<'static> {
    let file = fh.clone();
    call!(
        c,
        read,
        READ3args {
            file,
            offset,
            count
        }
    )
}

async fn write(c: &mut Client, fh: &nfs_fh3, at: u64, data: &[u8], how: stable_how) -> WRITE3res {
    let (file, count, data) = (fh.clone(), data.len() as u32, data.into());
    let args = WRITE3args {
        file,
        offset: at,
        count,
        stable: how,
        data,
    };
    call!(c, write, args)
}

async fn fsinfo(c: &mut Client, fh: &nfs_fh3) -> FSINFO3resok {
    call!(c, fsinfo, FSINFO3args { fsroot: fh.clone() }).expect("FSINFO")
}

/// Writes `data` at `off` in `chunk`-sized WRITEs, continuing after short writes.
/// Returns the distinct `committed` levels and verifiers the server answered with.
async fn write_all(
    c: &mut Client,
    fh: &nfs_fh3,
    off: u64,
    data: &[u8],
    chunk: usize,
    how: stable_how,
) -> (Vec<stable_how>, Vec<writeverf3>) {
    let (mut levels, mut verfs) = (Vec::new(), Vec::new());
    let mut done = 0;
    while done < data.len() {
        let part = &data[done..data.len().min(done + chunk)];
        let at = off + done as u64;
        let ok = write(c, fh, at, part, how).await.expect("WRITE");
        let n = ok.count as usize;
        assert!(n > 0 && n <= part.len(), "WRITE at {at}: count {n}");
        done += n;
        if !levels.contains(&ok.committed) {
            levels.push(ok.committed);
        }
        if !verfs.contains(&ok.verf) {
            verfs.push(ok.verf);
        }
    }
    (levels, verfs)
}

/// READs from `off` in `chunk`-sized calls until EOF.
async fn read_to_eof(c: &mut Client, fh: &nfs_fh3, mut off: u64, chunk: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let ok = read(c, fh, off, chunk).await.expect("READ");
        let n = ok.count;
        assert_eq!(n as usize, ok.data.len(), "READ at {off}: count");
        assert!(n <= chunk, "READ at {off}: {n} > {chunk} bytes");
        out.extend_from_slice(&ok.data);
        off += u64::from(n);
        if ok.eof {
            return out;
        }
        assert!(n > 0, "READ at {off}: 0 bytes and no EOF");
    }
}

/// Asserts byte equality, reporting the first differing offset instead of two dumps.
fn assert_bytes_eq(what: &str, got: &[u8], want: &[u8]) {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let (g, w) = (got[i], want[i]);
        panic!("{what}: first difference at byte {i}: {g:#04x}, want {w:#04x}");
    }
    assert_eq!(got.len(), want.len(), "{what}: length");
}

// ---- CREATE, WRITE (UNSTABLE + COMMIT, FILE_SYNC), READ ----

async fn files_scenario(s: &mut Side) -> Transcript {
    let (mut t, c) = (s.begin("files"), &mut s.c);
    let info = fsinfo(c, &s.dir).await;
    // Ganesha advertises 64 MiB, the proxy 1 MiB: calls of at most 1 MiB keep the test
    // quick and are the same calls on both sides.
    let wsize = info.wtmax.min(DEFAULT_MAX_IO) as usize;
    let rsize = info.rtmax.min(DEFAULT_MAX_IO);
    // Two full-size UNSTABLE writes, then a FILE_SYNC tail that is not block aligned.
    let split = 2 * wsize;
    let data = pseudo_random(split + 4321, 7);

    let fh = create_file(c, &s.dir, "data.bin", 0o644).await;
    t.step("CREATE data.bin", describe(&getattr(c, &fh).await));

    let head = &data[..split];
    let (levels, verfs) = write_all(c, &fh, 0, head, wsize, stable_how::UNSTABLE).await;
    assert_eq!(verfs.len(), 1, "the write verifier changed between WRITEs");
    let what = format!("WRITE UNSTABLE {split} bytes in {wsize}-byte calls");
    t.step(&what, format!("committed {levels:?}"));

    let file = fh.clone();
    let commit = call!(
        c,
        commit,
        COMMIT3args {
            file,
            offset: 0,
            count: 0
        }
    );
    let commit = commit.expect("COMMIT");
    // A verifier that differs from the WRITEs' tells a client to send its data again.
    assert_eq!(commit.verf, verfs[0], "COMMIT verifier != WRITE verifier");
    t.step("COMMIT 0..", "OK, verifier matches the WRITEs");

    let (tail, sync) = (&data[split..], stable_how::FILE_SYNC);
    let (levels, _) = write_all(c, &fh, split as u64, tail, wsize, sync).await;
    assert_eq!(levels, [sync], "a FILE_SYNC write was committed as");
    let what = format!("WRITE FILE_SYNC {} bytes at {split}", tail.len());
    t.step(&what, format!("committed {levels:?}"));

    let back = read_to_eof(c, &fh, 0, rsize).await;
    assert_bytes_eq("READ back", &back, &data);
    let what = format!("READ in {rsize}-byte calls");
    t.step(&what, format!("{} bytes, equal to written", back.len()));
    let past = read_to_eof(c, &fh, data.len() as u64, 4096).await;
    assert!(past.is_empty(), "READ at EOF returned data");
    t.step("READ at EOF", "0 bytes, eof");

    let on_disk = std::fs::read(s.local.join("data.bin")).unwrap();
    assert_bytes_eq("the file on the server's disk", &on_disk, &data);
    let a = getattr(c, &fh).await;
    let want = (ftype3::NF3REG, 0o644, data.len() as u64);
    assert_eq!((a.type_, perm(&a), a.size), want, "GETATTR");
    t.step("GETATTR", describe(&a));
    t
}

#[tokio::test]
async fn files_read_write_commit() {
    let mut p = pair("procs-files", |_| ()).await;
    let direct = files_scenario(&mut p.direct).await;
    let proxy = files_scenario(&mut p.proxy).await;
    direct.assert_same_as(&proxy, "create/write/commit/read");
    p.clean_up();
}

// ---- SETATTR: truncate, extend, chmod, chown, guard, times ----

async fn setattr_scenario(s: &mut Side) -> Transcript {
    let (mut t, c) = (s.begin("setattr"), &mut s.c);
    let data = pseudo_random(10_000, 11);
    let local = s.local.join("t.bin");
    let disk = || std::fs::metadata(&local).unwrap();
    let fh = create_file(c, &s.dir, "t.bin", 0o644).await;
    write_all(c, &fh, 0, &data, 65536, stable_how::FILE_SYNC).await;
    let no_guard = Nfs3Option::None;

    let st = setattr(c, &fh, size(4096), no_guard).await;
    assert_eq!(st, NFS3_OK, "truncate");
    let back = read_to_eof(c, &fh, 0, 65536).await;
    assert_bytes_eq("after truncate", &back, &data[..4096]);
    assert_eq!(disk().len(), 4096, "size on disk");
    let a = getattr(c, &fh).await;
    t.step("SETATTR size=4096", format!("{st}; {}", describe(&a)));

    let st = setattr(c, &fh, size(20_000), no_guard).await;
    assert_eq!(st, NFS3_OK, "extend");
    let back = read_to_eof(c, &fh, 0, 65536).await;
    assert_eq!(back.len(), 20_000, "size after extend");
    assert_bytes_eq("kept prefix", &back[..4096], &data[..4096]);
    assert!(
        back[4096..].iter().all(|&b| b == 0),
        "extended with non-zeros"
    );
    let a = getattr(c, &fh).await;
    t.step("SETATTR size=20000", format!("{st}; {}", describe(&a)));

    let st = setattr(c, &fh, mode(0o600), no_guard).await;
    let a = getattr(c, &fh).await;
    assert_eq!((st, perm(&a)), (NFS3_OK, 0o600), "chmod");
    assert_eq!(disk().mode() & 0o7777, 0o600, "mode on disk");
    t.step("SETATTR mode=600", format!("{st}; {}", describe(&a)));

    let (uid, gid) = (Nfs3Option::Some(4242), Nfs3Option::Some(4343));
    let owner = sattr3 {
        uid,
        gid,
        ..Default::default()
    };
    let st = setattr(c, &fh, owner, no_guard).await;
    let (a, md) = (getattr(c, &fh).await, disk());
    assert_eq!(st, NFS3_OK, "chown");
    let got = (a.uid, a.gid, md.uid(), md.gid());
    assert_eq!(got, (4242, 4343, 4242, 4343), "owner over NFS and on disk");
    t.step(
        "SETATTR uid=4242 gid=4343",
        format!("{st}; {}", describe(&a)),
    );

    // Guarded SETATTR: a stale ctime must refuse, the current one must apply.
    let stale = Nfs3Option::Some(time(1, 0));
    let st = setattr(c, &fh, mode(0o644), stale).await;
    let a = getattr(c, &fh).await;
    assert_eq!(st, NFS3ERR_NOT_SYNC, "SETATTR with a stale guard");
    assert_eq!(perm(&a), 0o600, "a refused SETATTR changed the mode");
    t.step(
        "SETATTR mode=644 guard=stale",
        format!("{st}; {}", describe(&a)),
    );
    let current = Nfs3Option::Some(a.ctime);
    let st = setattr(c, &fh, mode(0o640), current).await;
    let a = getattr(c, &fh).await;
    assert_eq!((st, perm(&a)), (NFS3_OK, 0o640), "guard = current ctime");
    t.step(
        "SETATTR mode=640 guard=ctime",
        format!("{st}; {}", describe(&a)),
    );

    let atime = time(1_000_000_000, 123_456_789);
    let mtime = time(1_234_567_890, 987_654_321);
    let times = sattr3 {
        atime: set_atime::SET_TO_CLIENT_TIME(atime),
        mtime: set_mtime::SET_TO_CLIENT_TIME(mtime),
        ..Default::default()
    };
    let st = setattr(c, &fh, times, no_guard).await;
    let (a, md) = (getattr(c, &fh).await, disk());
    assert_eq!(st, NFS3_OK, "set times");
    assert_eq!((a.atime, a.mtime), (atime, mtime), "times over NFS");
    let on_disk = (md.atime(), md.atime_nsec(), md.mtime(), md.mtime_nsec());
    let want = (1_000_000_000, 123_456_789, 1_234_567_890, 987_654_321);
    assert_eq!(on_disk, want, "times on the server's disk");
    let what = "SETATTR atime,mtime=client";
    t.step(what, format!("{st}; atime={atime:?} mtime={mtime:?}"));

    let mtime = set_mtime::SET_TO_SERVER_TIME;
    let st = setattr(
        c,
        &fh,
        sattr3 {
            mtime,
            ..Default::default()
        },
        no_guard,
    )
    .await;
    let a = getattr(c, &fh).await;
    let set = SystemTime::from(a.mtime);
    let off = SystemTime::now()
        .duration_since(set)
        .unwrap_or_else(|e| e.duration());
    assert_eq!(st, NFS3_OK, "mtime to server time");
    assert!(off < Duration::from_secs(60), "server time is {off:?} off");
    assert_eq!(a.atime, atime, "atime changed though not asked to");
    let fact = format!("{st}; mtime now, atime kept; {}", describe(&a));
    t.step("SETATTR mtime=server", fact);
    t
}

#[tokio::test]
async fn setattr_truncate_chmod_times() {
    let mut p = pair("procs-setattr", |_| ()).await;
    let direct = setattr_scenario(&mut p.direct).await;
    let proxy = setattr_scenario(&mut p.proxy).await;
    direct.assert_same_as(&proxy, "setattr");
    p.clean_up();
}

// ---- LOOKUP, ACCESS, MKDIR, SYMLINK/READLINK, LINK, RENAME, MKNOD, REMOVE, RMDIR ----

async fn namespace_scenario(s: &mut Side) -> Transcript {
    let (mut t, c) = (s.begin("namespace"), &mut s.c);
    let (dir, local) = (s.dir.clone(), s.local.clone());
    let on_disk = |p: &str| std::fs::symlink_metadata(local.join(p));

    let ok = mkdir(c, &dir, "sub", 0o755).await.expect("MKDIR sub");
    let sub = made(c, &dir, "sub", ok.obj).await;
    let a = getattr(c, &sub).await;
    assert_eq!((a.type_, perm(&a)), (ftype3::NF3DIR, 0o755), "MKDIR");
    assert!(on_disk("sub").unwrap().is_dir(), "sub on disk");
    t.step("MKDIR sub", describe(&a));

    let f = create_file(c, &sub, "f", 0o644).await;
    let hello = b"hello, namespace\n";
    write_all(c, &f, 0, hello, 4096, stable_how::FILE_SYNC).await;
    let fileid = getattr(c, &f).await.fileid;

    let parent = lookup_fh(c, &sub, "..").await;
    let dot = lookup_fh(c, &sub, ".").await;
    let dir_id = getattr(c, &dir).await.fileid;
    assert_eq!(getattr(c, &parent).await.fileid, dir_id, "LOOKUP sub/..");
    assert_eq!(getattr(c, &dot).await.fileid, a.fileid, "LOOKUP sub/.");
    t.step("LOOKUP sub/.. and sub/.", "the parent and sub itself");

    let all = ACCESS3_READ | ACCESS3_LOOKUP | ACCESS3_MODIFY;
    let all = all | ACCESS3_EXTEND | ACCESS3_DELETE | ACCESS3_EXECUTE;
    let rw = ACCESS3_READ | ACCESS3_MODIFY;
    for (what, fh) in [("ACCESS sub", &sub), ("ACCESS sub/f", &f)] {
        let object = fh.clone();
        let r = call!(
            c,
            access,
            ACCESS3args {
                object,
                access: all
            }
        );
        let granted = r.expect("ACCESS").access;
        assert_eq!(granted & !all, 0, "{what}: bits not asked for");
        assert_eq!(granted & rw, rw, "{what}: root may read and modify");
        t.step(what, format!("{granted:#x}"));
    }

    let target = "sub/f";
    let symlink = symlinkdata3 {
        symlink_attributes: mode(0o777),
        symlink_data: target.as_bytes().into(),
    };
    let where_ = dirop(&dir, "ln");
    let ok = call!(c, symlink, SYMLINK3args { where_, symlink });
    let ln = made(c, &dir, "ln", ok.expect("SYMLINK ln").obj).await;
    let r = call!(
        c,
        readlink,
        READLINK3args {
            symlink: ln.clone()
        }
    );
    let got = String::from_utf8(r.expect("READLINK").data.0.to_vec()).unwrap();
    assert_eq!(got, target, "READLINK");
    let disk_target = std::fs::read_link(local.join("ln")).unwrap();
    assert_eq!(disk_target, Path::new(target), "symlink target on disk");
    let a = getattr(c, &ln).await;
    let want = (ftype3::NF3LNK, target.len() as u64);
    assert_eq!((a.type_, a.size), want, "symlink attributes");
    t.step(
        "SYMLINK ln -> sub/f; READLINK",
        format!("{got:?}; {}", a.type_),
    );

    let (file, link) = (f.clone(), dirop(&dir, "hard"));
    let linked = call!(c, link, LINK3args { file, link }).expect("LINK");
    if let Nfs3Option::Some(fa) = &linked.file_attributes {
        assert_eq!(fa.nlink, 2, "LINK's post-op attributes");
    }
    let a = getattr(c, &f).await;
    let hard = lookup_fh(c, &dir, "hard").await;
    assert_eq!(a.nlink, 2, "nlink after LINK");
    assert_eq!(
        getattr(c, &hard).await.fileid,
        fileid,
        "LINK made another file"
    );
    let ino = |p: &str| on_disk(p).unwrap().ino();
    assert_eq!(ino("hard"), ino("sub/f"), "on disk, hard is not sub/f");
    t.step("LINK sub/f -> hard", describe(&a));

    let (from, to) = (dirop(&sub, "f"), dirop(&dir, "renamed"));
    let r = call!(c, rename, RENAME3args { from, to });
    assert_eq!(status(&r), NFS3_OK, "RENAME sub/f -> renamed");
    let old = status(&lookup(c, &sub, "f").await);
    let new = lookup_fh(c, &dir, "renamed").await;
    assert_eq!(old, NFS3ERR_NOENT, "the old name after RENAME");
    assert_eq!(
        getattr(c, &new).await.fileid,
        fileid,
        "RENAME kept the file"
    );
    assert_eq!(read_to_eof(c, &new, 0, 4096).await, hello, "content");
    assert!(on_disk("sub/f").is_err(), "sub/f still on disk");
    assert!(on_disk("renamed").unwrap().is_file(), "renamed on disk");
    let fact = format!("OK; LOOKUP sub/f: {old}; content kept");
    t.step("RENAME sub/f -> renamed", fact);

    let (where_, what) = (dirop(&dir, "fifo"), mknoddata3::NF3FIFO(mode(0o640)));
    let ok = call!(c, mknod, MKNOD3args { where_, what }).expect("MKNOD");
    let fifo = made(c, &dir, "fifo", ok.obj).await;
    let a = getattr(c, &fifo).await;
    assert_eq!((a.type_, perm(&a)), (ftype3::NF3FIFO, 0o640), "MKNOD");
    let ft = on_disk("fifo").unwrap().file_type();
    assert!(ft.is_fifo(), "fifo on disk is {ft:?}");
    t.step("MKNOD fifo", describe(&a));

    // EXCLUSIVE: a retransmission (same verifier) succeeds, another creator's fails.
    let excl = |v: u8| createhow3::EXCLUSIVE(createverf3([v; 8]));
    let ok = create(c, &dir, "excl", excl(1))
        .await
        .expect("CREATE EXCLUSIVE");
    let first = made(c, &dir, "excl", ok.obj).await;
    let again = create(c, &dir, "excl", excl(1))
        .await
        .expect("CREATE EXCLUSIVE again");
    assert_eq!(
        made(c, &dir, "excl", again.obj).await,
        first,
        "retransmitted CREATE"
    );
    let other = status(&create(c, &dir, "excl", excl(2)).await);
    assert_eq!(other, NFS3ERR_EXIST, "CREATE EXCLUSIVE, another verifier");
    assert!(on_disk("excl").unwrap().is_file(), "excl on disk");
    t.step("CREATE EXCLUSIVE excl twice, then other verifier", other);
    t.step("READDIR", format!("{:?}", list_names(c, &dir).await));

    for name in ["ln", "renamed", "fifo", "excl"] {
        let st = remove(c, &dir, name).await;
        let after = status(&lookup(c, &dir, name).await);
        assert_eq!((st, after), (NFS3_OK, NFS3ERR_NOENT), "REMOVE {name}");
        assert!(on_disk(name).is_err(), "{name} still on disk");
        t.step(&format!("REMOVE {name}"), format!("{st}; LOOKUP: {after}"));
    }
    let a = getattr(c, &hard).await;
    assert_eq!(a.nlink, 1, "nlink after removing the other name");
    t.step("hard after REMOVE renamed", describe(&a));

    let st = rmdir(c, &dir, "sub").await;
    let after = status(&lookup(c, &dir, "sub").await);
    assert_eq!((st, after), (NFS3_OK, NFS3ERR_NOENT), "RMDIR sub");
    assert!(on_disk("sub").is_err(), "sub still on disk");
    t.step("RMDIR sub", format!("{st}; LOOKUP: {after}"));
    t.step("READDIR", format!("{:?}", list_names(c, &dir).await));
    t
}

/// All names in a small directory (one READDIR), sorted, without `.` and `..`.
async fn list_names(c: &mut Client, dir: &nfs_fh3) -> Vec<String> {
    let (dir, cookieverf) = (dir.clone(), cookieverf3::default());
    let args = READDIR3args {
        dir,
        cookie: 0,
        cookieverf,
        count: 8192,
    };
    let ok = call!(c, readdir, args).expect("READDIR");
    assert!(ok.reply.eof, "a small directory did not fit one READDIR");
    let names = ok.reply.entries.0.iter().map(|e| e.name.as_ref().to_vec());
    let mut names: Vec<String> = (names.map(|n| String::from_utf8(n).unwrap()))
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn namespace_ops() {
    let mut p = pair("procs-namespace", |_| ()).await;
    let direct = namespace_scenario(&mut p.direct).await;
    let proxy = namespace_scenario(&mut p.proxy).await;
    direct.assert_same_as(&proxy, "namespace");
    p.clean_up();
}

// ---- READDIR and READDIRPLUS over 5,000 entries, many pages ----

const BIG_ENTRIES: usize = 5000;

/// Entry `i` of the big directory: its name (lengths vary) and its size in bytes, which
/// READDIRPLUS attributes must report.
fn big_entry(i: usize) -> (String, usize) {
    (format!("entry-{i:05}-{}", "x".repeat(i % 23)), i % 97)
}

/// Made with std::fs on the export's disk: 5,000 NFS CREATEs would only slow the test.
fn make_big_dir(side_dir: &Path) {
    let big = side_dir.join("big");
    std::fs::create_dir(&big).unwrap();
    for (name, len) in (0..BIG_ENTRIES).map(big_entry) {
        std::fs::write(big.join(name), vec![b'z'; len]).unwrap();
    }
}

/// What one full listing saw.
#[derive(Default)]
struct Listing {
    /// Names in the order the server returned them, `.` and `..` included.
    names: Vec<String>,
    pages: usize,
}

impl Listing {
    fn push(&mut self, name: &filename3) {
        let name = String::from_utf8(name.as_ref().to_vec()).unwrap();
        self.names.push(name);
    }

    /// Asserts every name came once; returns them without `.` and `..`.
    fn unique(&self, what: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        for n in &self.names {
            assert!(seen.insert(n.clone()), "{what}: {n:?} listed twice");
        }
        seen.remove(".");
        seen.remove("..");
        seen
    }

    fn dots(&self) -> usize {
        let dots = self.names.iter().filter(|n| *n == "." || *n == "..");
        dots.count()
    }
}

/// READDIR from cookie 0 to EOF, passing each page's last cookie and the verifier on.
async fn readdir_all(c: &mut Client, dir: &nfs_fh3, count: u32) -> Listing {
    let (mut cookie, mut cookieverf) = (0, cookieverf3::default());
    let mut l = Listing::default();
    loop {
        let dir = dir.clone();
        let args = READDIR3args {
            dir,
            cookie,
            cookieverf,
            count,
        };
        let ok = match call!(c, readdir, args) {
            Nfs3Result::Ok(ok) => ok,
            Nfs3Result::Err((st, _)) => panic!("READDIR at cookie {cookie}: {st}"),
        };
        l.pages += 1;
        cookieverf = ok.cookieverf;
        let entries = ok.reply.entries.0;
        entries.iter().for_each(|e| l.push(&e.name));
        if ok.reply.eof {
            return l;
        }
        let last = entries.last().expect("READDIR: an empty page, no eof");
        cookie = last.cookie;
    }
}

/// READDIRPLUS to EOF; checks each entry's attributes against its name and, for a
/// sample, that its handle leads to the same file.
async fn readdirplus_all(c: &mut Client, dir: &nfs_fh3, dircount: u32, maxcount: u32) -> Listing {
    let (mut cookie, mut cookieverf) = (0, cookieverf3::default());
    let mut l = Listing::default();
    let sizes: HashMap<String, usize> = (0..BIG_ENTRIES).map(big_entry).collect();
    loop {
        let dir = dir.clone();
        let args = READDIRPLUS3args {
            dir,
            cookie,
            cookieverf,
            dircount,
            maxcount,
        };
        let ok = match call!(c, readdirplus, args) {
            Nfs3Result::Ok(ok) => ok,
            Nfs3Result::Err((st, _)) => panic!("READDIRPLUS at cookie {cookie}: {st}"),
        };
        l.pages += 1;
        cookieverf = ok.cookieverf;
        let entries = ok.reply.entries.0;
        for e in &entries {
            l.push(&e.name);
            let name = l.names.last().unwrap();
            let Some(&size) = sizes.get(name) else {
                continue;
            };
            let (Nfs3Option::Some(a), Nfs3Option::Some(fh)) = (&e.name_attributes, &e.name_handle)
            else {
                panic!("READDIRPLUS {name}: no attributes or no handle");
            };
            let want = (ftype3::NF3REG, size as u64, e.fileid);
            assert_eq!((a.type_, a.size, a.fileid), want, "READDIRPLUS {name}");
            if l.names.len() % 500 == 0 {
                let id = getattr(c, fh).await.fileid;
                assert_eq!(id, e.fileid, "READDIRPLUS {name}: handle");
            }
        }
        if ok.reply.eof {
            return l;
        }
        let last = entries.last().expect("READDIRPLUS: an empty page, no eof");
        cookie = last.cookie;
    }
}

async fn readdir_scenario(s: &mut Side) -> Transcript {
    let (mut t, c) = (s.begin("readdir"), &mut s.c);
    let big = lookup_fh(c, &s.dir, "big").await;
    let on_disk: BTreeSet<String> = std::fs::read_dir(s.local.join("big"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(on_disk.len(), BIG_ENTRIES);

    let plain = readdir_all(c, &big, 1024).await;
    let names = plain.unique("READDIR");
    assert!(
        names == on_disk,
        "READDIR: {} names, not those on disk",
        names.len()
    );
    assert!(plain.pages >= 50, "READDIR took only {} pages", plain.pages);
    let fact = format!("{} names + {} dots, as on disk", names.len(), plain.dots());
    t.step("READDIR count=1024", fact);

    let plus = readdirplus_all(c, &big, 512, 4096).await;
    let names = plus.unique("READDIRPLUS");
    assert!(
        names == on_disk,
        "READDIRPLUS: {} names, not those on disk",
        names.len()
    );
    assert!(
        plus.pages >= 50,
        "READDIRPLUS took only {} pages",
        plus.pages
    );
    let fact = format!("{} names + {} dots, as on disk", names.len(), plus.dots());
    t.step("READDIRPLUS dircount=512 maxcount=4096", fact);
    t
}

#[tokio::test]
async fn readdir_5000_entries() {
    let mut p = pair("procs-readdir", make_big_dir).await;
    let direct = readdir_scenario(&mut p.direct).await;
    let proxy = readdir_scenario(&mut p.proxy).await;
    direct.assert_same_as(&proxy, "readdir");
    p.clean_up();
}

// ---- NULL, FSSTAT, FSINFO, PATHCONF ----

/// The FSINFO fields a proxy must pass through untouched.
fn fsinfo_fixed(i: &FSINFO3resok) -> String {
    let (rm, wm, dt) = (i.rtmult, i.wtmult, i.dtpref);
    let (max, delta, p) = (i.maxfilesize, i.time_delta, i.properties);
    let mults = format!("rtmult={rm} wtmult={wm} dtpref={dt}");
    format!("{mults} maxfilesize={max} time_delta={delta:?} properties={p:#x}")
}

fn assert_clamped(what: &str, direct: &FSINFO3resok, proxy: &FSINFO3resok, max_io: u32) {
    let sizes = |i: &FSINFO3resok| [i.rtmax, i.rtpref, i.wtmax, i.wtpref];
    let want = sizes(direct).map(|v| v.min(max_io));
    assert_eq!(sizes(proxy), want, "{what}: [rtmax, rtpref, wtmax, wtpref]");
    let fixed = fsinfo_fixed(direct);
    assert_eq!(fsinfo_fixed(proxy), fixed, "{what}: other fields");
}

/// One READ of `count` bytes at offset 0 returns exactly the file's first `count` bytes.
async fn read_exactly(c: &mut Client, fh: &nfs_fh3, count: u32, want: &[u8], what: &str) {
    let ok = read(c, fh, 0, count).await.expect(what);
    assert_bytes_eq(what, &ok.data, &want[..count as usize]);
}

async fn fsstat(c: &mut Client, fh: &nfs_fh3) -> FSSTAT3resok {
    let r = call!(c, fsstat, FSSTAT3args { fsroot: fh.clone() });
    let s = r.expect("FSSTAT");
    let bytes = s.tbytes > 0 && s.fbytes <= s.tbytes && s.abytes <= s.fbytes;
    let files = s.tfiles > 0 && s.ffiles <= s.tfiles && s.afiles <= s.ffiles;
    assert!(bytes && files, "FSSTAT {s:?}");
    s
}

async fn pathconf(c: &mut Client, fh: &nfs_fh3) -> String {
    let r = call!(c, pathconf, PATHCONF3args { object: fh.clone() });
    let p = r.expect("PATHCONF");
    assert!(p.name_max >= 255 && p.linkmax >= 1, "PATHCONF {p:?}");
    let (lm, nm, nt) = (p.linkmax, p.name_max, p.no_trunc);
    let (cr, ci, cp) = (p.chown_restricted, p.case_insensitive, p.case_preserving);
    let names = format!("linkmax={lm} name_max={nm} no_trunc={nt}");
    format!("{names} chown_restricted={cr} case_insensitive={ci} case_preserving={cp}")
}

#[tokio::test]
async fn fs_info_calls() {
    let lab = Lab::get();
    // Larger than any transfer size the proxies advertise, to READ their rtmax at once.
    let big = pseudo_random((2 << 20) + 1, 3);
    let write_big = |d: &Path| std::fs::write(d.join("big.bin"), &big).unwrap();
    let mut p = pair("procs-fsinfo", write_big).await;
    let small = Gridvfs::start(lab.endpoint(), "max_io = \"64KiB\"");
    let mut sc = mount(small.endpoints(), &lab.export).await;
    let (d, x) = (&mut p.direct, &mut p.proxy);
    let (droot, xroot, sroot) = (d.c.root_nfs_fh3(), x.c.root_nfs_fh3(), sc.root_nfs_fh3());

    d.c.null().await.expect("NULL direct");
    x.c.null().await.expect("NULL through gridvfs");
    sc.null().await.expect("NULL through the 64KiB gridvfs");

    // Free space and free inodes move as other tests run; totals do not.
    let ds = fsstat(&mut d.c, &droot).await;
    let xs = fsstat(&mut x.c, &xroot).await;
    let totals = |s: &FSSTAT3resok| (s.tbytes, s.tfiles, s.invarsec);
    assert_eq!(totals(&xs), totals(&ds), "FSSTAT tbytes, tfiles, invarsec");

    let di = fsinfo(&mut d.c, &droot).await;
    let xi = fsinfo(&mut x.c, &xroot).await;
    let si = fsinfo(&mut sc, &sroot).await;
    assert_clamped("FSINFO through gridvfs", &di, &xi, DEFAULT_MAX_IO);
    assert_clamped("FSINFO through gridvfs, max_io 64KiB", &di, &si, 64 << 10);
    let limit = xi.rtmax.max(xi.wtmax).max(xi.rtpref).max(xi.wtpref);
    assert!(limit <= DEFAULT_MAX_IO, "gridvfs advertises {xi:?}");
    assert!(
        si.rtmax < di.rtmax,
        "lab rtmax {}: clamp not exercised",
        di.rtmax
    );

    // What a proxy advertises it carries: one READ of its rtmax returns all of it.
    let xfile = lookup_fh(&mut x.c, &x.dir, "big.bin").await;
    read_exactly(&mut x.c, &xfile, xi.rtmax, &big, "READ of rtmax").await;
    let scratch = format!("procs-fsinfo-{}", std::process::id());
    let mut sfile = sroot.clone();
    for name in [scratch.as_str(), "proxy", "big.bin"] {
        sfile = lookup_fh(&mut sc, &sfile, name).await;
    }
    read_exactly(&mut sc, &sfile, si.rtmax, &big, "64KiB: READ of rtmax").await;

    let dfile = lookup_fh(&mut d.c, &d.dir, "big.bin").await;
    for (what, dfh, xfh) in [("root", &droot, &xroot), ("file", &dfile, &xfile)] {
        let dp = pathconf(&mut d.c, dfh).await;
        let xp = pathconf(&mut x.c, xfh).await;
        assert_eq!(xp, dp, "PATHCONF {what}");
    }
    p.clean_up();
}

// ---- error statuses ----

async fn errors_scenario(s: &mut Side) -> Transcript {
    let (mut t, c) = (s.begin("errors"), &mut s.c);
    let dir = s.dir.clone();
    // `want`: the status the RFC prescribes, or None where the choice is the server's
    // (then it must be an error, and the same error on both sides).
    let mut check = |what: &str, got: nfsstat3, want: Option<nfsstat3>| {
        match want {
            Some(want) => assert_eq!(got, want, "{what}"),
            None => assert_ne!(got, NFS3_OK, "{what} succeeded"),
        }
        t.step(what, got);
    };

    let st = status(&lookup(c, &dir, "no-such-name").await);
    check("LOOKUP missing", st, Some(NFS3ERR_NOENT));
    let st = remove(c, &dir, "no-such-name").await;
    check("REMOVE missing", st, Some(NFS3ERR_NOENT));

    mkdir(c, &dir, "full", 0o755).await.expect("MKDIR full");
    let full = lookup_fh(c, &dir, "full").await;
    let inside = create_file(c, &full, "inside", 0o644).await;
    let st = rmdir(c, &dir, "full").await;
    check("RMDIR non-empty", st, Some(NFS3ERR_NOTEMPTY));
    assert!(
        s.local.join("full/inside").exists(),
        "refused RMDIR removed"
    );
    let how = createhow3::GUARDED(mode(0o600));
    let st = status(&create(c, &full, "inside", how).await);
    check("CREATE GUARDED existing", st, Some(NFS3ERR_EXIST));
    let st = status(&mkdir(c, &dir, "full", 0o755).await);
    check("MKDIR existing", st, Some(NFS3ERR_EXIST));

    let st = status(&lookup(c, &inside, "x").await);
    check("LOOKUP in a regular file", st, None);
    let symlink = inside.clone();
    let st = status(&call!(c, readlink, READLINK3args { symlink }));
    check("READLINK of a regular file", st, None);
    let st = status(&read(c, &full, 0, 100).await);
    check("READ of a directory", st, None);

    // A handle that outlived its file: STALE from Ganesha.
    let gone = create_file(c, &dir, "gone", 0o644).await;
    assert_eq!(getattr_status(c, &gone).await, NFS3_OK);
    assert_eq!(remove(c, &dir, "gone").await, NFS3_OK, "REMOVE gone");
    let st = getattr_status(c, &gone).await;
    check("GETATTR of a removed file", st, Some(NFS3ERR_STALE));
    let sync = stable_how::FILE_SYNC;
    let st = status(&write(c, &gone, 0, b"abc", sync).await);
    check("WRITE to a removed file", st, Some(NFS3ERR_STALE));
    t
}

/// Every scenario again through a proxy whose session metadata answers LOOKUP, GETATTR,
/// ACCESS and READLINK: the namespace changes it learns from must keep every answer
/// equal to the server's.
#[tokio::test]
async fn scenarios_with_session_metadata() {
    let cache = tempfile::tempdir().unwrap();
    for scenario in ["files", "setattr", "namespace", "errors"] {
        let cfg = session_metadata_cache(&cache.path().join(scenario));
        let mut p = pair_with(&format!("procs-session-md-{scenario}"), |_| (), &cfg).await;
        let (direct, proxy) = match scenario {
            "files" => (
                files_scenario(&mut p.direct).await,
                files_scenario(&mut p.proxy).await,
            ),
            "setattr" => (
                setattr_scenario(&mut p.direct).await,
                setattr_scenario(&mut p.proxy).await,
            ),
            "namespace" => (
                namespace_scenario(&mut p.direct).await,
                namespace_scenario(&mut p.proxy).await,
            ),
            _ => (
                errors_scenario(&mut p.direct).await,
                errors_scenario(&mut p.proxy).await,
            ),
        };
        direct.assert_same_as(&proxy, &format!("{scenario}, session metadata"));
        p.clean_up();
    }
}

#[tokio::test]
async fn errors_match_direct() {
    let mut p = pair("procs-errors", |_| ()).await;
    let direct = errors_scenario(&mut p.direct).await;
    let proxy = errors_scenario(&mut p.proxy).await;
    direct.assert_same_as(&proxy, "errors");
    p.clean_up();
}
