//! Finding the proxy without explicit ports: its own portmapper answers GETPORT on the
//! proxy's port, and with `register_rpcbind = true` the machine's real rpcbind sends
//! clients (libnfs here) to the proxy, so a bare `nfs://host/export` URL goes through it.

mod common;

use std::process::Command;

use common::{Gridvfs, Lab};
use nfs3_client::Nfs3ConnectionBuilder;
use nfs3_client::tokio::TokioConnector;
use nfs3_types::nfs3::{GETATTR3args, Nfs3Result};

#[tokio::test]
async fn client_resolves_ports_through_the_proxys_own_portmapper() {
    let lab = Lab::get();
    let p = Gridvfs::start(lab.endpoint(), "");
    // No mount_port/nfs3_port: nfs3_client asks the portmapper at the given port.
    let mut c = Nfs3ConnectionBuilder::new(TokioConnector, "127.0.0.1", &lab.export)
        .portmapper_port(p.addr.port())
        .connect_from_privileged_port(false)
        .credential(common::root_cred())
        .mount()
        .await
        .expect("mount through the proxy's portmapper");
    assert_eq!(c.mount_port, p.addr.port());
    assert_eq!(c.nfs3_port, p.addr.port());
    let root = c.root_nfs_fh3();
    let r = c.getattr(&GETATTR3args { object: root }).await.unwrap();
    assert!(matches!(r, Nfs3Result::Ok(_)));
}

fn rpcinfo() -> String {
    let out = Command::new("rpcinfo")
        .args(["-p", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rpcinfo failed: is rpcbind running (lab.sh up starts one)?"
    );
    String::from_utf8(out.stdout).unwrap()
}

fn registered(listing: &str, prog: u32, port: u16) -> bool {
    listing.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 4
            && f[0] == prog.to_string()
            && f[1] == "3"
            && f[2] == "tcp"
            && f[3] == port.to_string()
    })
}

#[test]
fn registered_with_rpcbind_a_bare_url_reaches_the_proxy() {
    let lab = Lab::get();
    let mut p = Gridvfs::start(lab.endpoint(), "register_rpcbind = true");
    let port = p.addr.port();
    let listing = rpcinfo();
    assert!(
        registered(&listing, 100003, port),
        "NFS not registered:\n{listing}"
    );
    assert!(
        registered(&listing, 100005, port),
        "MOUNT not registered:\n{listing}"
    );

    let (dir, name) = lab.scratch("portmap-bare");
    std::fs::write(dir.join("marker"), b"x").unwrap();
    // No nfsport/mountport: libnfs asks rpcbind on port 111.
    let out = Command::new("nfs-ls")
        .arg(format!("nfs://127.0.0.1{}/{name}?version=3", lab.export))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("marker"));
    assert!(
        p.log_text().contains("client connected"),
        "nfs-ls did not go through the proxy"
    );

    assert_eq!(p.stop(), Some(0));
    let listing = rpcinfo();
    assert!(
        !registered(&listing, 100003, port),
        "still registered after exit:\n{listing}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
