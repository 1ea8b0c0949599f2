//! Test support: the real lab (NFS-Ganesha started by `tests/lab/lab.sh up`, found through
//! the `GRIDVFS_LAB_*` environment variables that `scripts/test.sh` exports), a `gridvfs`
//! daemon started from the built binary, and an NFSv3 client (nfs3_client) to drive both.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod faultyfs;
pub mod raw;
pub mod relay;
pub mod ssh;

use nfs3_client::Nfs3ConnectionBuilder;
use nfs3_types::nfs3::{
    COMMIT3args, COMMIT3resok, CREATE3args, CREATE3resok, GETATTR3args, LOOKUP3args, LOOKUP3resok,
    Nfs3Option, Nfs3Result, READ3args, READ3resok, SETATTR3args, SETATTR3resok, WRITE3args,
    WRITE3resok, createhow3, diropargs3, fattr3, filename3, nfs_fh3, nfsstat3, sattr3, stable_how,
    writeverf3,
};
use nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_types::xdr_codec::Opaque;

/// The real NFS server the tests run against.
#[derive(Debug, Clone)]
pub struct Lab {
    pub nfs: SocketAddr,
    pub mount: SocketAddr,
    /// The path clients mount, e.g. `/export`.
    pub export: String,
    /// The directory behind the export on this machine's disk.
    pub export_dir: PathBuf,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the real NFS server. Run them with \
             `scripts/test.sh`, or `tests/lab/lab.sh up && . /tmp/gridvfs-lab/env` first"
        )
    })
}

impl Lab {
    pub fn get() -> Lab {
        Lab {
            nfs: env("GRIDVFS_LAB_NFS")
                .parse()
                .expect("GRIDVFS_LAB_NFS is ip:port"),
            mount: env("GRIDVFS_LAB_MOUNT")
                .parse()
                .expect("GRIDVFS_LAB_MOUNT is ip:port"),
            export: env("GRIDVFS_LAB_EXPORT"),
            export_dir: PathBuf::from(env("GRIDVFS_LAB_EXPORT_DIR")),
        }
    }

    /// A fresh directory inside the export for one test, named after it.
    pub fn scratch(&self, test: &str) -> (PathBuf, String) {
        let name = format!("{test}-{}", std::process::id());
        let dir = self.export_dir.join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        (dir, name)
    }

    pub fn endpoint(&self) -> Endpoints {
        Endpoints {
            nfs: self.nfs,
            mount: self.mount,
        }
    }
}

/// Where a client connects: a server directly, or a proxy (both ports the same).
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    pub nfs: SocketAddr,
    pub mount: SocketAddr,
}

/// A running `gridvfs run` process, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Gridvfs {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The built-in SSH server's address (server role with `[server.ssh]`).
    pub ssh: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gridvfs")
}

impl Gridvfs {
    /// Starts a proxy in front of `up` with `extra` TOML appended to `[listen]`
    /// (e.g. `max_record = "64KiB"`). Waits until it accepts connections.
    pub fn start(up: Endpoints, extra: &str) -> Gridvfs {
        Self::start_with(up, "127.0.0.1:0", extra, "")
    }

    pub fn start_with(
        up: Endpoints,
        listen: &str,
        listen_extra: &str,
        upstream_extra: &str,
    ) -> Gridvfs {
        Self::start_config(&format!(
            "[listen]\naddr = \"{listen}\"\n{listen_extra}\n\
             [upstream]\nnfs = \"tcp://{}\"\nmount = \"tcp://{}\"\n\
             backoff_max = \"500ms\"\n{upstream_extra}\n[log]\nlevel = \"info\"\n",
            up.nfs, up.mount
        ))
    }

    /// Starts `gridvfs run` with this whole config text; waits until it is ready.
    pub fn start_config(config: &str) -> Gridvfs {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("gridvfs.toml");
        std::fs::write(&cfg, config).unwrap();
        let ready = dir.path().join("ready");
        let log = dir.path().join("gridvfs.log");
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start gridvfs");
        let t0 = Instant::now();
        let (addr, ssh) = loop {
            if let Ok(s) = std::fs::read_to_string(&ready) {
                let mut lines = s.lines();
                let addr = lines.next().unwrap().trim().parse().unwrap();
                let ssh = lines
                    .find_map(|l| l.strip_prefix("ssh="))
                    .map(|a| a.trim().parse().unwrap());
                break (addr, ssh);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "gridvfs did not become ready; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Gridvfs {
            child: Some(child),
            addr,
            ssh,
            dir,
            log,
        }
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            nfs: self.addr,
            mount: self.addr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Is the process still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits (up to 60 s) until `needle` is in at least `times` log lines; returns the log.
    pub fn wait_log(&self, needle: &str, times: usize) -> String {
        let t0 = Instant::now();
        loop {
            let log = self.log_text();
            if log.lines().filter(|l| l.contains(needle)).count() >= times {
                return log;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no {times} log lines with {needle:?} after 60 s; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap (the cache directory is left as the crash left it).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        signal(child.id(), "TERM");
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.code();
            }
            if t0.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "gridvfs ignored SIGTERM for 15 s; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gridvfs {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends a signal (by name: TERM, KILL, USR1, ...) to a process we started.
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

pub type Client = nfs3_client::Nfs3Connection<Io>;

/// A TCP stream for nfs3_client on which end of stream is an error. nfs3_client 0.9's
/// `async_read_exact` retries a read of 0 bytes forever, so with its own stream a client
/// whose server died (a proxy killed on purpose, or a crash) spins instead of failing.
pub struct Io(tokio::net::TcpStream);

impl nfs3_client::io::AsyncRead for Io {
    async fn async_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = tokio::io::AsyncReadExt::read(&mut self.0, buf).await?;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(n)
    }
}

impl nfs3_client::io::AsyncWrite for Io {
    async fn async_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = tokio::io::AsyncWriteExt::write(&mut self.0, buf).await?;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        Ok(n)
    }
}

/// Connects [`Io`] streams (from any local port: the proxy and the lab allow that).
pub struct Connector;

impl nfs3_client::net::Connector for Connector {
    type Connection = Io;

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Io> {
        Ok(Io(tokio::net::TcpStream::connect(addr).await?))
    }

    async fn connect_with_port(&self, addr: SocketAddr, local_port: u16) -> std::io::Result<Io> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([0, 0, 0, 0], local_port)))?;
        Ok(Io(socket.connect(addr).await?))
    }
}

/// AUTH_SYS as root (Ganesha refuses AUTH_NONE with AUTH_TOOWEAK).
pub fn root_cred() -> opaque_auth<'static> {
    opaque_auth::auth_unix(&auth_unix {
        stamp: 1,
        machinename: nfs3_types::xdr_codec::Opaque::owned(b"gridvfs-test".to_vec()),
        uid: 0,
        gid: 0,
        gids: vec![0],
    })
}

/// Mounts `export` at `ep` with an NFSv3 client (explicit ports, no portmapper).
pub async fn mount(ep: Endpoints, export: &str) -> Client {
    Nfs3ConnectionBuilder::new(Connector, ep.nfs.ip().to_string(), export)
        .mount_port(ep.mount.port())
        .nfs3_port(ep.nfs.port())
        .connect_from_privileged_port(false)
        .credential(root_cred())
        .mount()
        .await
        .expect("mount")
}

/// A libnfs URL for `path` under `export` at `ep` (explicit ports: no portmapper).
pub fn nfs_url(ep: Endpoints, export: &str, path: &str) -> String {
    format!(
        "nfs://{}{export}/{path}?version=3&nfsport={}&mountport={}",
        ep.nfs.ip(),
        ep.nfs.port(),
        ep.mount.port()
    )
}

/// The whole of `path` under the export, read through `ep` with libnfs's nfs-cat.
pub fn nfs_cat(ep: Endpoints, export: &str, path: &str) -> Vec<u8> {
    let out = Command::new("nfs-cat")
        .arg(nfs_url(ep, export, path))
        .output()
        .expect("run nfs-cat (apt: libnfs-utils)");
    assert!(
        out.status.success(),
        "nfs-cat {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The number in the last `key=N` field of a gridvfs log (e.g. `cache_hits=`); 0 if none.
pub fn logged(log: &str, key: &str) -> u64 {
    log.lines()
        .rev()
        .find_map(|l| {
            let at = l.find(key)? + key.len();
            let digits: String = l[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        })
        .unwrap_or(0)
}

/// Handle of `dir/file` below the export's root (LOOKUP twice).
pub async fn lookup_path(c: &mut Client, dir: &str, file: &str) -> nfs3_types::nfs3::nfs_fh3 {
    use nfs3_types::nfs3::{LOOKUP3args, Nfs3Result, diropargs3, filename3};
    use nfs3_types::xdr_codec::Opaque;
    let mut fh = c.root_nfs_fh3();
    for name in [dir, file] {
        let args = LOOKUP3args {
            what: diropargs3 {
                dir: fh,
                name: filename3(Opaque::owned(name.as_bytes().to_vec())),
            },
        };
        let Nfs3Result::Ok(ok) = c.lookup(&args).await.unwrap() else {
            panic!("LOOKUP {name} failed");
        };
        fh = ok.object;
    }
    fh
}

/// sha256 of a file on this machine's disk, via coreutils (no extra crate).
pub fn sha256_file(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// `len` pseudo-random bytes, deterministic per seed (xorshift64*: cheap, and
/// incompressible enough for transfer tests).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Writes `len` pseudo-random bytes (deterministic per seed) to `p`.
pub fn random_file(p: &Path, len: usize, seed: u64) {
    std::fs::write(p, pseudo_random(len, seed)).unwrap();
}

/// Cache geometry of most write-back tests: 64 MiB of 64 KiB blocks, 8 ways, 4 banks.
pub const CACHE_64M: &str = "size = \"64MiB\"\nblock_size = \"64KiB\"\nways = 8\nbanks = 4\n";

/// A `[cache]` section for a write-back cache in `dir` ([`CACHE_64M`]), with `extra` keys
/// appended (e.g. `flush_on_exit = false`). Goes in `upstream_extra` of
/// [`Gridvfs::start_with`].
pub fn write_back_cache(dir: &Path, extra: &str) -> String {
    write_back_cache_with(dir, CACHE_64M, extra)
}

/// [`write_back_cache`] with another `geometry` (size, block_size, ways, banks lines).
pub fn write_back_cache_with(dir: &Path, geometry: &str, extra: &str) -> String {
    format!(
        "[cache]\ndir = \"{}\"\n{geometry}write_policy = \"write-back\"\n{extra}\n",
        dir.display()
    )
}

/// The sections of a write-back proxy with a control socket: [`write_back_cache_with`]
/// (`geometry`, e.g. [`CACHE_64M`]) and [`control_section`].
pub fn write_back_and_control(dir: &Path, geometry: &str, socket: &Path) -> String {
    format!(
        "{}{}",
        write_back_cache_with(dir, geometry, ""),
        control_section(socket)
    )
}

/// A `[control]` section: the proxy's control socket at `socket`.
pub fn control_section(socket: &Path) -> String {
    format!("[control]\nsocket = \"{}\"\n", socket.display())
}

/// Runs `gridvfs ARGS --socket SOCKET` (e.g. `["flush"]`, `["status"]`), giving it up to
/// 120 s; returns its exit status and the JSON of its last line on stdout.
pub fn ctl(socket: &Path, args: &[&str]) -> (bool, serde_json::Value) {
    let child = ctl_spawn(socket, args);
    ctl_wait(child, Duration::from_secs(120))
}

/// Starts `gridvfs ARGS --socket SOCKET` in the background (stdout and stderr piped).
pub fn ctl_spawn(socket: &Path, args: &[&str]) -> Child {
    Command::new(bin())
        .args(args)
        .arg("--socket")
        .arg(socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits up to `limit` for a [`ctl_spawn`]ed command (killed, by its handle, and a panic
/// if it takes longer); returns its exit status and the JSON of its last stdout line.
pub fn ctl_wait(mut child: Child, limit: Duration) -> (bool, serde_json::Value) {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "gridvfs control command still running after {limit:?}; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let v = serde_json::from_str(last.trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

/// Asserts byte equality, reporting the first differing offset instead of two dumps.
pub fn assert_same_bytes(what: &str, got: &[u8], want: &[u8]) {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let (g, w) = (got[i], want[i]);
        let n = got.iter().zip(want).filter(|(a, b)| a != b).count();
        panic!("{what}: first difference at byte {i}: {g:#04x}, want {w:#04x} ({n} bytes differ)");
    }
    assert_eq!(got.len(), want.len(), "{what}: length");
}

/// Writes `data` at `off` into a model of a file's bytes (extended with zeros as needed).
pub fn apply(image: &mut Vec<u8>, off: u64, data: &[u8]) {
    let (off, end) = (off as usize, off as usize + data.len());
    if image.len() < end {
        image.resize(end, 0);
    }
    image[off..end].copy_from_slice(data);
}

// ---- NFSv3 calls for the tests: an RPC-level failure or an error status panics ----

/// `Nfs3Result::expect` with a message built only on failure.
pub trait OkOrPanic<T> {
    fn ok_or_panic(self, what: impl FnOnce() -> String) -> T;
}

impl<T, E: std::fmt::Debug> OkOrPanic<T> for Nfs3Result<T, E> {
    fn ok_or_panic(self, what: impl FnOnce() -> String) -> T {
        match self {
            Nfs3Result::Ok(v) => v,
            Nfs3Result::Err((st, e)) => panic!("{}: {st:?} {e:?}", what()),
        }
    }
}

/// Handle of `name` in directory `dir` (LOOKUP).
pub async fn lookup_in(c: &mut Client, dir: &nfs_fh3, name: &str) -> LOOKUP3resok {
    let args = LOOKUP3args {
        what: diropargs3 {
            dir: dir.clone(),
            name: filename3(Opaque::owned(name.as_bytes().to_vec())),
        },
    };
    c.lookup(&args)
        .await
        .unwrap_or_else(|e| panic!("LOOKUP {name}: {e}"))
        .ok_or_panic(|| format!("LOOKUP {name}"))
}

/// CREATE (UNCHECKED, mode 0644) of `name` in `dir`; returns its handle.
pub async fn create(c: &mut Client, dir: &nfs_fh3, name: &str) -> nfs_fh3 {
    create_sized(c, dir, name, None).await
}

/// CREATE UNCHECKED with mode 0644 and, if given, a size (NFSv3's create-or-truncate of
/// an existing file); returns its handle.
pub async fn create_sized(c: &mut Client, dir: &nfs_fh3, name: &str, size: Option<u64>) -> nfs_fh3 {
    let ok = create_status(c, dir, name, size)
        .await
        .unwrap_or_else(|s| panic!("CREATE {name}: {s:?}"));
    match ok.obj {
        Nfs3Option::Some(fh) => fh,
        Nfs3Option::None => lookup_in(c, dir, name).await.object,
    }
}

/// [`create_sized`]'s call: its reply, or the status it failed with.
pub async fn create_status(
    c: &mut Client,
    dir: &nfs_fh3,
    name: &str,
    size: Option<u64>,
) -> Result<CREATE3resok, nfsstat3> {
    let args = CREATE3args {
        where_: diropargs3 {
            dir: dir.clone(),
            name: filename3(Opaque::owned(name.as_bytes().to_vec())),
        },
        how: createhow3::UNCHECKED(sattr3 {
            mode: Nfs3Option::Some(0o644),
            size: size.map_or(Nfs3Option::None, Nfs3Option::Some),
            ..Default::default()
        }),
    };
    match c
        .create(&args)
        .await
        .unwrap_or_else(|e| panic!("CREATE {name}: {e}"))
    {
        Nfs3Result::Ok(ok) => Ok(ok),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// One WRITE of all of `data` at `off`.
pub async fn write(
    c: &mut Client,
    fh: &nfs_fh3,
    off: u64,
    data: &[u8],
    stable: stable_how,
) -> WRITE3resok {
    let ok = write_status(c, fh, off, data, stable)
        .await
        .unwrap_or_else(|s| panic!("WRITE at {off}: {s:?}"));
    assert_eq!(ok.count as usize, data.len(), "short WRITE at {off}");
    ok
}

/// [`write`]'s call: its reply, or the status it failed with.
pub async fn write_status(
    c: &mut Client,
    fh: &nfs_fh3,
    off: u64,
    data: &[u8],
    stable: stable_how,
) -> Result<WRITE3resok, nfsstat3> {
    let args = WRITE3args {
        file: fh.clone(),
        offset: off,
        count: data.len() as u32,
        stable,
        data: data.into(),
    };
    match c
        .write(&args)
        .await
        .unwrap_or_else(|e| panic!("WRITE at {off}: {e}"))
    {
        Nfs3Result::Ok(ok) => Ok(ok),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

/// WRITEs `data` at `off` in `chunk`-byte calls; returns the verifiers answered, in order.
pub async fn write_chunks(
    c: &mut Client,
    fh: &nfs_fh3,
    off: u64,
    data: &[u8],
    chunk: usize,
    stable: stable_how,
) -> Vec<writeverf3> {
    let mut verfs = Vec::new();
    for (i, part) in data.chunks(chunk).enumerate() {
        let at = off + (i * chunk) as u64;
        verfs.push(write(c, fh, at, part, stable).await.verf);
    }
    verfs
}

/// COMMIT of the whole file.
pub async fn commit(c: &mut Client, fh: &nfs_fh3) -> COMMIT3resok {
    let args = COMMIT3args {
        file: fh.clone(),
        offset: 0,
        count: 0,
    };
    c.commit(&args)
        .await
        .unwrap_or_else(|e| panic!("COMMIT: {e}"))
        .expect("COMMIT")
}

/// One READ.
pub async fn read(c: &mut Client, fh: &nfs_fh3, offset: u64, count: u32) -> READ3resok<'static> {
    let args = READ3args {
        file: fh.clone(),
        offset,
        count,
    };
    c.read(&args)
        .await
        .unwrap_or_else(|e| panic!("READ at {offset}: {e}"))
        .ok_or_panic(|| format!("READ at {offset}"))
}

/// The whole file, in READs of 1 MiB until EOF.
pub async fn read_all(c: &mut Client, fh: &nfs_fh3) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let ok = read(c, fh, out.len() as u64, 1 << 20).await;
        assert_eq!(
            ok.count as usize,
            ok.data.len(),
            "READ count != data length"
        );
        out.extend_from_slice(&ok.data);
        if ok.eof {
            return out;
        }
        assert!(ok.count > 0, "READ at {}: 0 bytes and no EOF", out.len());
    }
}

/// GETATTR.
pub async fn getattr(c: &mut Client, fh: &nfs_fh3) -> fattr3 {
    let args = GETATTR3args { object: fh.clone() };
    c.getattr(&args)
        .await
        .unwrap_or_else(|e| panic!("GETATTR: {e}"))
        .expect("GETATTR")
        .obj_attributes
}

/// SETATTR of the size only (truncate or extend).
pub async fn set_size(c: &mut Client, fh: &nfs_fh3, size: u64) -> SETATTR3resok {
    let args = SETATTR3args {
        object: fh.clone(),
        new_attributes: sattr3 {
            size: Nfs3Option::Some(size),
            ..Default::default()
        },
        guard: Nfs3Option::None,
    };
    c.setattr(&args)
        .await
        .unwrap_or_else(|e| panic!("SETATTR size={size}: {e}"))
        .ok_or_panic(|| format!("SETATTR size={size}"))
}

/// The handle of the export's subdirectory `name` (one LOOKUP from the root).
pub async fn scratch_fh(c: &mut Client, name: &str) -> nfs_fh3 {
    let root = c.root_nfs_fh3();
    lookup_in(c, &root, name).await.object
}

/// One VM at a time within a test binary: two TCG guests on two cores would only slow
/// each other down, and they share the initramfs that the script may rebuild.
static VM: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Boots the kernel-client guest (tests/lab/kernel-client-vm.sh) with `vars`; returns
/// its output.
pub fn boot_vm(vars: &[(&str, String)]) -> std::process::Output {
    let vm = std::env::var("GRIDVFS_LAB_VM").expect(
        "GRIDVFS_LAB_VM (path of tests/lab/kernel-client-vm.sh) is not set; run scripts/test.sh",
    );
    let _one = VM.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = Command::new("bash");
    cmd.arg(&vm);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A next hop that counts the calls it receives (a second gridvfs in front of Ganesha,
/// reporting through its control socket), and a proxy under test in front of it.
pub struct CountingChain {
    pub hop: Gridvfs,
    pub proxy: Gridvfs,
    pub tmp: tempfile::TempDir,
}

impl CountingChain {
    /// The proxy runs with `cache` (its `[cache]` section, given the cache directory).
    pub fn start(lab: &Lab, cache: impl Fn(&Path) -> String) -> CountingChain {
        let tmp = tempfile::tempdir().unwrap();
        let hop = Gridvfs::start_with(
            lab.endpoint(),
            "127.0.0.1:0",
            "",
            &control_section(&tmp.path().join("hop.sock")),
        );
        let proxy = Self::proxy(&hop, tmp.path(), cache);
        CountingChain { hop, proxy, tmp }
    }

    /// (Re)starts the proxy in front of `hop`, its cache and socket in `dir`.
    pub fn proxy(hop: &Gridvfs, dir: &Path, cache: impl Fn(&Path) -> String) -> Gridvfs {
        let cfg = format!(
            "{}{}",
            cache(&dir.join("cache")),
            control_section(&dir.join("proxy.sock"))
        );
        Gridvfs::start_with(hop.endpoints(), "127.0.0.1:0", "", &cfg)
    }

    /// Calls of `proc_` the next hop received.
    pub fn upstream(&self, proc_: &str) -> u64 {
        let (ok, s) = ctl(&self.tmp.path().join("hop.sock"), &["status"]);
        assert!(ok, "{s}");
        s["calls"][proc_].as_u64().unwrap_or(0)
    }

    /// A number from the proxy's `cache` status.
    pub fn cache_status(&self, key: &str) -> u64 {
        let (ok, s) = ctl(&self.tmp.path().join("proxy.sock"), &["status"]);
        assert!(ok, "{s}");
        s["cache"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("no cache.{key} in {s}"))
    }

    /// `gridvfs flush` through the proxy's control socket.
    pub fn flush(&self) {
        let (ok, v) = ctl(&self.tmp.path().join("proxy.sock"), &["flush"]);
        assert!(ok, "flush: {v}");
    }
}
