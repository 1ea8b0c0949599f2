//! A gridvfs daemon started from the built binary for a benchmark, with the TOML given,
//! on a free port; killed on drop. Its peak RSS is read from /proc; `control` speaks to its
//! control socket (`gridvfs status`, `gridvfs flush`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    /// The built-in SSH server's address, for a server-role proxy with `[server.ssh]`.
    pub ssh: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts `gridvfs run` with `[listen] addr = 127.0.0.1:0`, the upstream endpoints,
    /// and `extra` TOML sections appended (e.g. a `[cache]` section).
    pub fn start(nfs: SocketAddr, mount: SocketAddr, extra: &str) -> Proxy {
        Self::start_config(&format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nnfs = \"{nfs}\"\nmount = \"{mount}\"\n\
             [log]\nlevel = \"warn\"\n{extra}\n"
        ))
    }

    /// Starts `gridvfs run` with this whole config text.
    pub fn start_config(config: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, config).unwrap();
        let ready = dir.path().join("ready");
        let child = Command::new(env!("CARGO_BIN_EXE_gridvfs"))
            .args(["run", "--config"])
            .arg(&cfg)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
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
            assert!(t0.elapsed() < Duration::from_secs(10), "proxy not ready");
            std::thread::sleep(Duration::from_millis(20));
        };
        Proxy {
            child,
            addr,
            ssh,
            _dir: dir,
        }
    }

    /// The daemon's process id (for perf, /proc sampling).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub fn rss_peak_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `gridvfs ARGS --socket SOCK` and returns its reply (the JSON line), which must say
/// ok.
pub fn control(sock: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gridvfs"))
        .args(args)
        .arg("--socket")
        .arg(sock)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("gridvfs {args:?}: {e}: {text}"));
    assert!(
        out.status.success() && v["ok"] == true,
        "gridvfs {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    v
}
