//! The far site of a WAN benchmark: a server-role gridvfs (built-in SSH server, one
//! account mapped to root) and Debian's OpenSSH sshd in front of the lab's Ganesha, each
//! reached through the WAN emulator, plus a pair of emulated links straight to Ganesha
//! (the "WAN-NFS" baseline). Keys are made with `gridvfs keygen`; the client key is
//! trusted by both servers and both host keys are in `known_hosts`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use super::proxy::Proxy;
use super::sshd;
use super::wan;

pub struct Site {
    pub tmp: tempfile::TempDir,
    pub server: Proxy,
    pub sshd: sshd::Proc,
    /// The server proxy's SSH port, through the WAN.
    pub wan_ssh: wan::WanRelay,
    /// sshd, through the WAN (scp, rsync).
    pub wan_sshd: wan::WanRelay,
    /// Ganesha's NFS and MOUNT ports, through the WAN.
    pub wan_nfs: (wan::WanRelay, wan::WanRelay),
}

impl Site {
    pub async fn start(
        nfs: SocketAddr,
        mount: SocketAddr,
        export: &str,
        link: &wan::WanConfig,
    ) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let host_pub = sshd::keygen(&t.join("host_key"));
        let client_pub = sshd::keygen(&t.join("client_key"));
        std::fs::write(t.join("authorized_keys"), &client_pub).unwrap();
        let server = Proxy::start_config(&format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n\
             [upstream]\nnfs = \"tcp://{nfs}\"\nmount = \"tcp://{mount}\"\n\
             [server]\nexports = [\"{export}\"]\nstate_dir = \"{}\"\n\
             [server.ssh]\nlisten = \"127.0.0.1:0\"\nhost_key = \"{}\"\nauthorized_keys = \"{}\"\n\
             [[server.account]]\nname = \"bench\"\nkeys = [\"*\"]\nuid = 0\ngid = 0\nallow_root = true\n\
             [log]\nlevel = \"warn\"\n",
            t.join("state").display(),
            t.join("host_key").display(),
            t.join("authorized_keys").display(),
        ));
        let (sshd_proc, sshd_port) = sshd::sshd(t, &client_pub);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let ssh = server.ssh.expect("ssh= line in the ready file");
        let wan_ssh = wan::WanRelay::start(any, ssh, link.clone()).await.unwrap();
        let to_sshd = format!("127.0.0.1:{sshd_port}").parse().unwrap();
        let wan_sshd = wan::WanRelay::start(any, to_sshd, link.clone())
            .await
            .unwrap();
        let wan_nfs = wan::start_pair(nfs, mount, link.clone()).await.unwrap();
        let sshd_pub = std::fs::read_to_string(t.join("sshd_host.pub")).unwrap();
        let key2 = |l: &str| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        std::fs::write(
            t.join("known_hosts"),
            format!(
                "[127.0.0.1]:{} {}\n[127.0.0.1]:{} {}\n",
                wan_ssh.local_addr().port(),
                key2(&host_pub),
                wan_sshd.local_addr().port(),
                key2(&sshd_pub)
            ),
        )
        .unwrap();
        Site {
            tmp,
            server,
            sshd: sshd_proc,
            wan_ssh,
            wan_sshd,
            wan_nfs,
        }
    }

    pub fn t(&self) -> &Path {
        self.tmp.path()
    }

    /// `ssh://bench@…` through the WAN to the server proxy.
    pub fn ssh_upstream(&self) -> String {
        format!("ssh://bench@{}", self.wan_ssh.local_addr())
    }

    /// The `[upstream.ssh]` section of a client proxy of this site.
    pub fn ssh_section(&self, compression: bool) -> String {
        format!(
            "[upstream.ssh]\nkey = \"{}\"\nknown_hosts = \"{}\"\ncompression = {compression}\n",
            self.t().join("client_key").display(),
            self.t().join("known_hosts").display(),
        )
    }

    /// OpenSSH client options for scp / rsync to this site's sshd.
    pub fn ssh_args(&self) -> Vec<String> {
        vec![
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!(
                "UserKnownHostsFile={}",
                self.t().join("known_hosts").display()
            ),
            "-i".into(),
            self.t().join("client_key").display().to_string(),
        ]
    }
}
