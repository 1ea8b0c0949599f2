//! Crash loop (the foyer shape): a client does random WRITEs (mostly UNSTABLE, some
//! FILE_SYNC/DATA_SYNC), COMMITs and the odd truncation through a write-back proxy, while
//! the proxy is killed with SIGKILL at random points (sometimes in the middle of a
//! SIGUSR1 write-back) and restarted on the same cache directory and port, 20 times.
//!
//! The client behaves like a real NFSv3 client and keeps a recorder of what it was told:
//! - `images`: every byte it wrote (its page cache), which is what the files must hold in
//!   the end;
//! - `pending`: UNSTABLE writes acknowledged but not yet covered by a COMMIT that answered
//!   their verifier — the server may lose these, but then it must change its verifier;
//! - the call in flight when the proxy died, whose outcome is unknown.
//!
//! After each restart it COMMITs to learn the verifier, reads every file back and checks
//! that nothing it may rely on was lost: every byte outside the writes it must re-send
//! (the unknown call, and pending writes whose verifier changed) must be there. Then it
//! re-sends those writes, as a client does. At the end a flush over the control socket
//! must leave Ganesha's files byte-equal to `images`, and the cache must never have grown
//! past its configured size.
//!
//! A run prints its seed; `GRIDVFS_CRASH_SEED=N` replays one (the timing still differs).
//!
//! The second test runs the same loop with the cache on faultyfs (`--lose-unsynced`) and
//! a power cut after every kill: every cache write not yet fsynced is lost, as after a
//! real power failure (a SIGKILL alone leaves the page cache, so the first loop never
//! loses an unsynced write).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    Client, Gridvfs, Lab, OkOrPanic, assert_same_bytes, commit, ctl, lookup_in, mount,
    pseudo_random, read_all, scratch_fh, signal, write_back_and_control,
};
use nfs3_types::nfs3::{
    COMMIT3args, Nfs3Option, SETATTR3args, WRITE3args, nfs_fh3, sattr3, stable_how, writeverf3,
};

const ROUNDS: usize = 20;
/// Writes land in [0, SPAN) of each file.
const SPAN: u64 = 4 << 20;
const MAX_WRITE: u64 = 256 << 10;
/// Initial sizes on Ganesha: a full file, a shorter one, an empty one.
const INITIAL: [usize; 3] = [4 << 20, (1 << 20) + 333, 0];
/// Smaller than the 13 MiB the files span, so dirty blocks must be written back to make
/// room: 6 MiB of 16 KiB blocks in sets of 4 ways, over 2 bank files.
const CACHE_SIZE: u64 = 6 << 20;
const CACHE_GEOMETRY: &str = "size = \"6MiB\"\nblock_size = \"16KiB\"\nways = 4\nbanks = 2\n";

/// xorshift64*: the test's only source of randomness, seeded (and printed) per run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// An acknowledged UNSTABLE write not yet known to be committed.
#[derive(Debug, Clone)]
struct Pending {
    file: usize,
    off: u64,
    len: u64,
    verf: writeverf3,
}

/// The call that was in flight when the proxy died.
#[derive(Debug, Clone)]
enum Unknown {
    Write { file: usize, off: u64, len: u64 },
    SetSize { file: usize, from: u64, to: u64 },
    Commit,
}

#[derive(Debug, Default)]
struct Stats {
    writes: u64,
    unstable: u64,
    commits: u64,
    truncations: u64,
    resent: u64,
    unknown: u64,
    verifier_changes: u64,
}

/// What the client knows. See the module comment.
struct Recorder {
    images: Vec<Vec<u8>>,
    pending: Vec<Pending>,
    /// Size each file must have at least, whatever the server lost that it may lose.
    sure_len: Vec<u64>,
    unknown: Option<Unknown>,
    /// The verifier of this proxy lifetime, once seen.
    verf: Option<writeverf3>,
    stats: Stats,
    /// Every call answered (and the one in flight at each kill), for failure messages.
    journal: Vec<Entry>,
    /// The current round (proxy lifetime).
    round: usize,
}

/// A call in the journal: enough to say which write's bytes a reader got.
#[derive(Debug, Clone)]
struct Entry {
    round: usize,
    file: usize,
    call: Call,
}

#[derive(Debug, Clone)]
enum Call {
    /// `data` is `pseudo_random(len, seed)`.
    Write {
        off: u64,
        len: u64,
        seed: u64,
        stable: stable_how,
        answered: Option<stable_how>,
    },
    Resend {
        off: u64,
        len: u64,
    },
    SetSize {
        from: u64,
        to: u64,
    },
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::Write {
                off,
                len,
                stable,
                answered,
                ..
            } => write!(f, "WRITE {off}+{len} {stable:?}, answered {answered:?}"),
            Call::Resend { off, len } => write!(f, "WRITE {off}+{len} (re-sent)"),
            Call::SetSize { from, to } => write!(f, "SETATTR size {from} -> {to}"),
        }
    }
}

impl Recorder {
    fn note(&mut self, file: usize, call: Call) {
        let round = self.round;
        self.journal.push(Entry { round, file, call });
    }

    /// Which calls wrote or cut byte `at` of `file` (the last few), and whether the
    /// `got` bytes from `at` on are those of an earlier write: for failure messages.
    fn explain(&self, file: usize, at: usize, got: &[u8]) -> String {
        let mut out = String::new();
        let touching: Vec<&Entry> = self
            .journal
            .iter()
            .filter(|e| e.file == file)
            .filter(|e| match e.call {
                Call::Write { off, len, .. } | Call::Resend { off, len } => {
                    (off..off + len).contains(&(at as u64))
                }
                Call::SetSize { from, to } => (to.min(from)..to.max(from)).contains(&(at as u64)),
            })
            .collect();
        for e in touching.iter().rev().take(8).rev() {
            out += &format!("\n  round {}: {}", e.round, e.call);
        }
        let run = got.get(at..got.len().min(at + 32)).unwrap_or_default();
        if run.is_empty() {
            return out + &format!("\n  nothing read at {at} (the file is {} bytes)", got.len());
        }
        for e in touching.iter().rev() {
            if let Call::Write { off, len, seed, .. } = e.call {
                let data = pseudo_random(len as usize, seed);
                let from = at - off as usize;
                let theirs = &data[from..data.len().min(from + run.len())];
                if run.starts_with(theirs) {
                    out += &format!(
                        "\n  the bytes read at {at} are those of the round {} write at {off}+{len}",
                        e.round
                    );
                    break;
                }
            }
        }
        if run.iter().all(|&b| b == 0) {
            out += &format!("\n  the bytes read at {at} are zeros");
        }
        out
    }

    /// Every verifier answered within one proxy lifetime must be the same.
    fn saw(&mut self, v: writeverf3, what: &str) {
        match self.verf {
            None => self.verf = Some(v),
            Some(old) => assert_eq!(
                old, v,
                "{what}: the write verifier changed while the proxy kept running"
            ),
        }
    }

    /// A COMMIT of [off, off+count) (count 0: to the end) answered `verf`.
    fn committed(&mut self, file: usize, off: u64, count: u64, verf: writeverf3) {
        let end = if count == 0 { u64::MAX } else { off + count };
        let sure = &mut self.sure_len[file];
        self.pending.retain(|p| {
            let covered = p.file == file && p.verf == verf && p.off >= off && p.off + p.len <= end;
            if covered {
                *sure = (*sure).max(p.off + p.len);
            }
            !covered
        });
    }
}

/// Runs random calls on `c` until one fails at the RPC level (the proxy died) or
/// `stop` says so; the recorder comes back with the call in flight, if any.
async fn workload(
    mut c: Client,
    fhs: Vec<nfs_fh3>,
    mut r: Recorder,
    mut rng: Rng,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Recorder {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let file = rng.below(fhs.len() as u64) as usize;
        let fh = fhs[file].clone();
        let pick = rng.below(100);
        if pick < 86 {
            let len = if rng.percent(30) {
                1 + rng.below(4096)
            } else {
                1 + rng.below(MAX_WRITE)
            };
            let off = rng.below(SPAN - len + 1);
            let stable = match rng.below(100) {
                0..80 => stable_how::UNSTABLE,
                80..92 => stable_how::FILE_SYNC,
                _ => stable_how::DATA_SYNC,
            };
            let seed = rng.next();
            let data = pseudo_random(len as usize, seed);
            common::apply(&mut r.images[file], off, &data);
            r.unknown = Some(Unknown::Write { file, off, len });
            let answered = None;
            r.note(
                file,
                Call::Write {
                    off,
                    len,
                    seed,
                    stable,
                    answered,
                },
            );
            let args = WRITE3args {
                file: fh,
                offset: off,
                count: len as u32,
                stable,
                data: data.as_slice().into(),
            };
            let Ok(res) = c.write(&args).await else {
                return r;
            };
            let ok = res.ok_or_panic(|| format!("WRITE {len} bytes at {off} of f{file}"));
            r.unknown = None;
            assert_eq!(ok.count as u64, len, "short WRITE");
            r.saw(ok.verf, "WRITE");
            r.stats.writes += 1;
            if let Some(Entry {
                call: Call::Write { answered, .. },
                ..
            }) = r.journal.last_mut()
            {
                *answered = Some(ok.committed);
            }
            if ok.committed == stable_how::UNSTABLE {
                assert_eq!(
                    stable,
                    stable_how::UNSTABLE,
                    "a {stable:?} WRITE answered UNSTABLE"
                );
                r.stats.unstable += 1;
                r.pending.push(Pending {
                    file,
                    off,
                    len,
                    verf: ok.verf,
                });
            } else {
                r.sure_len[file] = r.sure_len[file].max(off + len);
            }
        } else if pick < 97 {
            let (off, count) = if rng.percent(25) {
                (rng.below(SPAN), 1 + rng.below(1 << 20))
            } else {
                (0, 0)
            };
            if !commit_range(&mut c, &mut r, file, &fh, off, count).await {
                return r;
            }
        } else {
            // Truncate or extend, like a local client: its dirty data committed first.
            if !commit_range(&mut c, &mut r, file, &fh, 0, 0).await {
                return r;
            }
            assert!(
                r.pending.iter().all(|p| p.file != file),
                "COMMIT left writes of f{file} uncommitted"
            );
            let from = r.images[file].len() as u64;
            let to = rng.below(SPAN + MAX_WRITE);
            r.images[file].resize(to as usize, 0);
            r.unknown = Some(Unknown::SetSize { file, from, to });
            r.note(file, Call::SetSize { from, to });
            let args = SETATTR3args {
                object: fh,
                new_attributes: sattr3 {
                    size: Nfs3Option::Some(to),
                    ..Default::default()
                },
                guard: Nfs3Option::None,
            };
            let Ok(res) = c.setattr(&args).await else {
                return r;
            };
            let ok = res.ok_or_panic(|| format!("SETATTR size={to} of f{file}"));
            if let Nfs3Option::Some(after) = ok.obj_wcc.after {
                assert_eq!(
                    after.size, to,
                    "round {}: SETATTR size {from} -> {to} of f{file} answered size {}",
                    r.round, after.size
                );
            }
            r.unknown = None;
            r.sure_len[file] = to;
            r.stats.truncations += 1;
        }
    }
    r
}

/// COMMIT; false if the proxy died during it.
async fn commit_range(
    c: &mut Client,
    r: &mut Recorder,
    file: usize,
    fh: &nfs_fh3,
    offset: u64,
    count: u64,
) -> bool {
    r.unknown = Some(Unknown::Commit);
    let args = COMMIT3args {
        file: fh.clone(),
        offset,
        count: count as u32,
    };
    let Ok(res) = c.commit(&args).await else {
        return false;
    };
    let ok = res.ok_or_panic(|| format!("COMMIT {offset}+{count} of f{file}"));
    r.unknown = None;
    r.saw(ok.verf, "COMMIT");
    r.committed(file, offset, count, ok.verf);
    r.stats.commits += 1;
    true
}

/// After a restart: learn the verifier, check that nothing the client may rely on was
/// lost, re-send what must be re-sent, commit it.
async fn recover(c: &mut Client, fhs: &[nfs_fh3], r: &mut Recorder, round: usize, logs: &str) {
    let old = r.verf.take();
    for (file, fh) in fhs.iter().enumerate() {
        let v = commit(c, fh).await.verf;
        r.saw(v, "COMMIT after restart");
        r.committed(file, 0, 0, v);
    }
    let now = r.verf.unwrap();
    if old.is_some_and(|o| o != now) {
        r.stats.verifier_changes += 1;
    }
    // What may differ: the unknown call's bytes, and pending writes (their verifier
    // changed, or they would have been committed just now).
    let mut resend: Vec<Pending> = std::mem::take(&mut r.pending);
    let mut lower: Vec<u64> = r.sure_len.clone();
    let mut masks: Vec<Vec<(u64, u64)>> = vec![Vec::new(); fhs.len()];
    for p in &resend {
        masks[p.file].push((p.off, p.off + p.len));
    }
    let mut set_again = None;
    let unknown = r.unknown.take();
    match unknown.clone() {
        Some(Unknown::Write { file, off, len }) => {
            masks[file].push((off, off + len));
            resend.push(Pending {
                file,
                off,
                len,
                verf: writeverf3::default(),
            });
            r.stats.unknown += 1;
        }
        Some(Unknown::SetSize { file, from, to }) => {
            masks[file].push((from.min(to), from.max(to)));
            lower[file] = lower[file].min(to);
            set_again = Some((file, to, from));
            r.stats.unknown += 1;
        }
        Some(Unknown::Commit) => r.stats.unknown += 1,
        None => {}
    }
    for (file, fh) in fhs.iter().enumerate() {
        let got = read_all(c, fh).await;
        let want = &r.images[file];
        let longest = match set_again {
            Some((f, _, from)) if f == file => want.len().max(from as usize),
            _ => want.len(),
        };
        let mut masked = vec![false; got.len().max(longest)];
        for &(a, b) in &masks[file] {
            let b = (b as usize).min(masked.len());
            masked[(a as usize).min(b)..b].fill(true);
        }
        let ctx = || {
            format!(
                "round {round}, f{file}: read {} bytes, want {} (at least {}); may differ: {:?}\n\
                 unknown: {unknown:?}\nproxy logs:\n{logs}",
                got.len(),
                want.len(),
                lower[file],
                masks[file],
            )
        };
        // Where to look: the first byte that should not be there, or the last missing one.
        let edge = if got.len() > want.len() {
            want.len()
        } else {
            (lower[file] as usize).max(1) - 1
        };
        assert!(
            got.len() as u64 >= lower[file] && got.len() <= longest,
            "acknowledged size lost: {}\ncalls at {edge}:{}",
            ctx(),
            r.explain(file, edge, &got)
        );
        let bad: Vec<usize> = (0..masked.len())
            .filter(|&i| !masked[i])
            .filter(|&i| match (got.get(i), want.get(i)) {
                (Some(g), Some(w)) => g != w,
                (None, Some(w)) => *w != 0,
                (Some(_), None) => true,
                (None, None) => false,
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{} acknowledged bytes lost or wrong after a crash, first at {}: {}\ncalls there:{}",
            bad.len(),
            bad[0],
            ctx(),
            r.explain(file, bad[0], &got)
        );
    }

    // Re-send, as a client does, the bytes it has now (a later write may have replaced
    // part of an earlier one), and commit until the verifier holds.
    if let Some((file, to, _)) = set_again {
        common::set_size(c, &fhs[file], to).await;
    }
    for attempt in 0.. {
        assert!(attempt < 3, "round {round}: the verifier keeps changing");
        let mut sent = Vec::new();
        for p in resend.drain(..) {
            let img = &r.images[p.file];
            let end = (p.off + p.len).min(img.len() as u64);
            if p.off >= end {
                continue;
            }
            let data = &img[p.off as usize..end as usize];
            let ok = common::write(c, &fhs[p.file], p.off, data, stable_how::UNSTABLE).await;
            let (off, len) = (p.off, end - p.off);
            r.note(p.file, Call::Resend { off, len });
            r.stats.resent += 1;
            sent.push(Pending { verf: ok.verf, ..p });
        }
        let mut verfs = Vec::new();
        for fh in fhs {
            verfs.push(commit(c, fh).await.verf);
        }
        resend = sent
            .into_iter()
            .filter(|p| p.verf != verfs[p.file])
            .collect();
        if resend.is_empty() {
            break;
        }
    }
    for (file, img) in r.images.iter().enumerate() {
        r.sure_len[file] = img.len() as u64;
    }
}

/// Bytes allocated on disk by the cache's bank files (tags and data frames) and how
/// many bank files there are.
fn cache_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut used, mut banks) = (0, 0);
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("bank-") {
            used += e.metadata().unwrap().blocks() * 512;
            banks += 1;
        }
    }
    (used, banks)
}

fn start(lab: &Lab, listen: &str, tmp: &Path, cache_dir: &Path) -> Gridvfs {
    let cfg = write_back_and_control(cache_dir, CACHE_GEOMETRY, &tmp.join("ctl.sock"));
    Gridvfs::start_with(lab.endpoint(), listen, "", &cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_loses_nothing_acknowledged() {
    crash_loop(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_with_power_cuts_loses_nothing_acknowledged() {
    crash_loop(Some(common::faultyfs::FaultyFs::mount_with(true))).await;
}

/// The loop; with `fs`, the cache lives on it and every kill is followed by a power cut.
async fn crash_loop(fs: Option<common::faultyfs::FaultyFs>) {
    let t0 = Instant::now();
    let seed = std::env::var("GRIDVFS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash loop seed {seed} (GRIDVFS_CRASH_SEED={seed} replays it)");
    let mut rng = Rng(seed | 1);

    let lab = Lab::get();
    // Each loop its own directory: the two run at once.
    let (dir, name) = lab.scratch(if fs.is_some() {
        "crash-loop-power"
    } else {
        "crash-loop"
    });
    let mut images = Vec::new();
    for (i, &len) in INITIAL.iter().enumerate() {
        let data = pseudo_random(len, 100 + i as u64);
        std::fs::write(dir.join(format!("f{i}")), &data).unwrap();
        images.push(data);
    }
    let mut r = Recorder {
        sure_len: images.iter().map(|i| i.len() as u64).collect(),
        images,
        pending: Vec::new(),
        unknown: None,
        verf: None,
        stats: Stats::default(),
        journal: Vec::new(),
        round: 0,
    };
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = match &fs {
        Some(fs) => fs.mnt.join("cache"),
        None => tmp.path().join("cache"),
    };
    // On disk at most: the configured size of data frames, a 128-byte tag per frame
    // (rounded up to a page per bank file), and the extent index of the bank files.
    let frames = CACHE_SIZE / (16 << 10);
    let max_tags = frames * 128 + 2 * 4096;
    let max_extent_index = 64 << 10;
    let most = CACHE_SIZE + max_tags + max_extent_index;
    // The logs of the last two proxies killed (for failure messages).
    let mut logs = [String::new(), String::new()];
    let mut listen = "127.0.0.1:0".to_string();
    let mut usr1 = 0;

    for round in 0..=ROUNDS {
        let mut p = start(&lab, &listen, tmp.path(), &cache_dir);
        listen = p.addr.to_string();
        let mut c = mount(p.endpoints(), &lab.export).await;
        let d = scratch_fh(&mut c, &name).await;
        let mut fhs = Vec::new();
        for i in 0..INITIAL.len() {
            fhs.push(lookup_in(&mut c, &d, &format!("f{i}")).await.object);
        }
        recover(&mut c, &fhs, &mut r, round, &logs.concat()).await;
        if round == ROUNDS {
            // The end: everything acknowledged and re-sent is in the cache; write it back.
            let (ok, f) = ctl(&tmp.path().join("ctl.sock"), &["flush"]);
            assert!(ok && f["ok"] == true, "final flush: {f}\n{}", p.log_text());
            assert_eq!(p.stop(), Some(0), "exit status:\n{}", p.log_text());
            break;
        }

        r.round = round;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn(workload(c, fhs, r, Rng(rng.next() | 1), stop.clone()));
        let mut delay = Duration::from_millis(100 + rng.below(1400));
        if rng.percent(40) {
            // Kill it during (or after) a write-back: SIGUSR1 0-40 ms before the kill.
            let gap = Duration::from_millis(rng.below(40)).min(delay);
            tokio::time::sleep(delay - gap).await;
            signal(p.pid(), "USR1");
            usr1 += 1;
            delay = gap;
        }
        tokio::time::sleep(delay).await;
        p.kill();
        if let Some(fs) = &fs {
            fs.power_cut();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        r = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the client is stuck after the proxy died")
            .unwrap();
        let last = format!("---- round {round} ----\n{}", p.log_text());
        logs = [std::mem::take(&mut logs[1]), last];
        let (used, banks) = cache_usage(&cache_dir);
        // Frames of zeros are punched as holes: the file system may then need index
        // blocks for the extents of a bank file (counted in its blocks), a few KiB.
        assert!(
            used <= most && (1..=2).contains(&banks),
            "round {round}: the cache uses {used} bytes in {banks} bank files (size \
             {CACHE_SIZE}, at most {most} with tags and extent index)"
        );
    }

    let mut mismatches = 0;
    for (i, img) in r.images.iter().enumerate() {
        let disk = std::fs::read(dir.join(format!("f{i}"))).unwrap();
        let differ =
            disk.iter().zip(img).filter(|(a, b)| a != b).count() + disk.len().abs_diff(img.len());
        if differ > 0 {
            eprintln!(
                "f{i}: {differ} bytes differ on the server (length {} want {})",
                disk.len(),
                img.len()
            );
            mismatches += differ;
        }
    }
    eprintln!(
        "crash loop: {ROUNDS} kills ({usr1} during or after a SIGUSR1), power cuts {}, {:?}, {:?}",
        fs.is_some(),
        r.stats,
        t0.elapsed()
    );
    if mismatches > 0 {
        for (i, img) in r.images.iter().enumerate() {
            let disk = std::fs::read(dir.join(format!("f{i}"))).unwrap();
            assert_same_bytes(&format!("f{i} on the server (seed {seed})"), &disk, img);
        }
    }
    assert!(r.stats.writes > 300, "too little traffic: {:?}", r.stats);
    std::fs::remove_dir_all(dir).unwrap();
}
