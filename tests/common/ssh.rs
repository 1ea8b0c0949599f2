//! SSH test support: keys made with `gridvfs keygen`, a server-role gridvfs with its
//! built-in SSH server in front of the lab's Ganesha, a client gridvfs dialling it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Gridvfs, Lab};

/// The account every tunnelled client runs as on Ganesha.
pub const UID: u32 = 3142;
pub const GID: u32 = 3143;

pub fn keygen(path: &Path) -> String {
    keygen_fp(path).0
}

/// `gridvfs keygen --out path`: the public line and the key's SHA256 fingerprint (as
/// `ssh-keygen -l` prints it, which keygen reports on stderr).
pub fn keygen_fp(path: &Path) -> (String, String) {
    let out = Command::new(super::bin())
        .args(["keygen", "--out"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gridvfs keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    let fp = said
        .split(['(', ')'])
        .find(|w| w.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no fingerprint in keygen's output: {said}"))
        .to_string();
    let public = std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string();
    (public, fp)
}

/// Keys and files of one tunnel.
pub struct Keys {
    pub dir: tempfile::TempDir,
    pub host_pub: String,
}

impl Keys {
    pub fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let host_pub = keygen(&dir.path().join("host_key"));
        let client_pub = keygen(&dir.path().join("client_key"));
        keygen(&dir.path().join("stranger_key"));
        std::fs::write(
            dir.path().join("authorized_keys"),
            format!("{client_pub}\n"),
        )
        .unwrap();
        std::fs::write(dir.path().join("known_hosts"), "").unwrap();
        Keys { dir, host_pub }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Trusts the server's host key at `addr` (the `[host]:port` form OpenSSH writes).
    pub fn trust(&self, addr: SocketAddr, host_pub: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path("known_hosts"))
            .unwrap();
        let key: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        writeln!(f, "[{}]:{} {}", addr.ip(), addr.port(), key.join(" ")).unwrap();
    }
}

/// A server-role gridvfs in front of the lab's Ganesha with its own SSH server.
pub fn server_proxy(lab: &Lab, keys: &Keys, state: &Path) -> Gridvfs {
    server_proxy_with(lab, keys, state, "")
}

/// `server_proxy` with more config appended (`extra`: whole TOML sections).
pub fn server_proxy_with(lab: &Lab, keys: &Keys, state: &Path, extra: &str) -> Gridvfs {
    let account =
        format!("[[server.account]]\nname = \"grid\"\nkeys = [\"*\"]\nuid = {UID}\ngid = {GID}\n");
    server_proxy_accounts(lab, keys, state, &format!("{account}{extra}"))
}

/// A server proxy whose accounts (and any other sections) are all in `tail`.
pub fn server_proxy_accounts(lab: &Lab, keys: &Keys, state: &Path, tail: &str) -> Gridvfs {
    Gridvfs::start_config(&format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n\
         [upstream]\nnfs = \"tcp://{}\"\nmount = \"tcp://{}\"\nbackoff_max = \"500ms\"\n\
         [server]\nexports = [\"{}\"]\nstate_dir = \"{}\"\n\
         [server.ssh]\nlisten = \"127.0.0.1:0\"\nhost_key = \"{}\"\nauthorized_keys = \"{}\"\n\
         [log]\nlevel = \"info\"\n{tail}",
        lab.nfs,
        lab.mount,
        lab.export,
        state.display(),
        keys.path("host_key").display(),
        keys.path("authorized_keys").display(),
    ))
}

/// A client gridvfs whose next hop is `ssh://grid@addr`.
pub fn client_proxy(keys: &Keys, addr: SocketAddr, key: &str, extra_ssh: &str) -> Gridvfs {
    Gridvfs::start_config(&format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n\
         [upstream]\nnfs = \"ssh://grid@{addr}\"\nbackoff_max = \"500ms\"\n\
         [upstream.ssh]\nkey = \"{}\"\nknown_hosts = \"{}\"\n{extra_ssh}\n\
         [log]\nlevel = \"info\"\n",
        keys.path(key).display(),
        keys.path("known_hosts").display(),
    ))
}

pub fn nfs_cp(from: &str, to: &str) -> Result<(), String> {
    let out = Command::new("nfs-cp")
        .arg(from)
        .arg(to)
        .output()
        .expect("run nfs-cp (apt: libnfs-utils)");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nfs-cp {from} {to}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A scratch directory the mapped account may write in.
pub fn open_scratch(lab: &Lab, test: &str) -> (PathBuf, String) {
    let (dir, name) = lab.scratch(test);
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    (dir, name)
}

pub fn ssh_addr(p: &Gridvfs) -> SocketAddr {
    p.ssh
        .expect("server proxy wrote its ssh address to the ready file")
}
