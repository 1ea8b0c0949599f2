//! Test support: the real lab (NFS-Ganesha started by `tests/lab/lab.sh up`, found through
//! the `GRIDVFS_LAB_*` environment variables that `scripts/test.sh` exports), a `gridvfs`
//! daemon started from the built binary, and an NFSv3 client (nfs3_client) to drive both.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod raw;

use nfs3_client::Nfs3ConnectionBuilder;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_types::rpc::{auth_unix, opaque_auth};

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
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("gridvfs.toml");
        std::fs::write(
            &cfg,
            format!(
                "[listen]\naddr = \"{listen}\"\n{listen_extra}\n\
                 [upstream]\nnfs = \"tcp://{}\"\nmount = \"tcp://{}\"\n\
                 backoff_max = \"500ms\"\n{upstream_extra}\n[log]\nlevel = \"info\"\n",
                up.nfs, up.mount
            ),
        )
        .unwrap();
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
        let addr = loop {
            if let Ok(s) = std::fs::read_to_string(&ready) {
                break s.trim().parse().unwrap();
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

pub type Client = nfs3_client::Nfs3Connection<TokioIo<tokio::net::TcpStream>>;

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
    Nfs3ConnectionBuilder::new(TokioConnector, ep.nfs.ip().to_string(), export)
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
