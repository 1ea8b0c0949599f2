//! faultyfs (`tests/lab/faultyfs.py`, Debian's python3-fusepy): a FUSE pass-through file
//! system for a cache directory whose fsync fails with EIO on demand, and which can lose
//! every write not yet fsynced (a power failure).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// faultyfs.py over a scratch directory, unmounted (by killing its PID) on drop.
pub struct FaultyFs {
    child: Child,
    pub mnt: PathBuf,
    flag: PathBuf,
    _dir: tempfile::TempDir,
}

impl FaultyFs {
    pub fn mount() -> FaultyFs {
        Self::mount_with(false)
    }

    /// `lose_unsynced`: data not yet fsynced is kept in faultyfs's memory until
    /// `power_cut` throws it away.
    pub fn mount_with(lose_unsynced: bool) -> FaultyFs {
        let dir = tempfile::tempdir().unwrap();
        let (root, mnt) = (dir.path().join("root"), dir.path().join("mnt"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        let flag = dir.path().join("fail-sync");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/faultyfs.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args([&root, &mnt, &flag])
            .args(lose_unsynced.then_some("--lose-unsynced"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("faultyfs.log")).unwrap())
            .spawn()
            .expect("run /usr/bin/python3 (scripts/install-deps.sh installs python3-fusepy)");
        let t0 = Instant::now();
        let mounted = |m: &Path| {
            std::fs::read_to_string("/proc/mounts")
                .unwrap()
                .lines()
                .any(|l| l.split(' ').nth(1) == Some(m.to_str().unwrap()))
        };
        while !mounted(&mnt) {
            if t0.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "faultyfs did not mount: {}",
                    std::fs::read_to_string(dir.path().join("faultyfs.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        FaultyFs {
            child,
            mnt,
            flag,
            _dir: dir,
        }
    }

    /// A power failure: every write not yet fsynced is lost (the proxy must be dead).
    pub fn power_cut(&self) {
        let cut = self.flag.with_extension("cut");
        std::fs::write(&cut, b"").unwrap();
        let t0 = Instant::now();
        while cut.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "faultyfs did not cut"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn fail_syncs(&self, on: bool) {
        if on {
            std::fs::write(&self.flag, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(&self.flag);
        }
    }
}

impl Drop for FaultyFs {
    fn drop(&mut self) {
        // SIGTERM: libfuse leaves its loop and unmounts.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
