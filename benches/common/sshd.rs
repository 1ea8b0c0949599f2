//! SSH pieces for benchmarks: keys made with `gridvfs keygen`, Debian's OpenSSH sshd on a
//! free loopback port (for `ssh -L`, direct-tcpip and scp baselines), processes ended by
//! PID when dropped.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn keygen(path: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gridvfs"))
        .args(["keygen", "--out"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(path.with_extension("pub")).unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16, what: &str) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process we started, ended by PID on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn sshd(dir: &Path, authorized: &str) -> (Proc, u16) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(dir.join("sshd_host"))
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(dir.join("sshd_authorized"), authorized).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let port = free_port();
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             PermitRootLogin prohibit-password\nStrictModes no\nAllowTcpForwarding yes\n\
             Subsystem sftp internal-sftp\n\
             PidFile {}\n",
            dir.join("sshd_host").display(),
            dir.join("sshd_authorized").display(),
            dir.join("sshd.pid").display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port, "sshd");
    (Proc(child), port)
}
