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

/// PMAPPROC_DUMP (portmapper v2, procedure 4) on the proxy's port lists exactly what it
/// serves: NFS v3 and MOUNT v3 over TCP at its own port; GETPORT of anything else is 0.
#[test]
fn the_proxys_portmapper_dumps_what_it_serves() {
    use common::raw::{call, connect, parse, recv, send, word};
    let lab = Lab::get();
    let p = Gridvfs::start(lab.endpoint(), "");
    let mut s = connect(p.addr);
    send(&mut s, &call(7, 100000, 2, 4, &[]));
    let (xid, rstat, astat, body) = parse(&recv(&mut s).expect("DUMP reply"));
    assert_eq!((xid, rstat, astat), (7, 0, 0));
    let mut entries = Vec::new();
    let mut i = 0;
    while word(&body, i) == 1 {
        entries.push((
            word(&body, i + 1),
            word(&body, i + 2),
            word(&body, i + 3),
            word(&body, i + 4),
        ));
        i += 5;
    }
    assert_eq!(
        body.len(),
        (i + 1) * 4,
        "list ends with FALSE and nothing after"
    );
    let port = p.addr.port() as u32;
    assert_eq!(entries, vec![(100003, 3, 6, port), (100005, 3, 6, port)]);
    // GETPORT of a program it does not serve (NLM): 0, on the same connection.
    let mut args = Vec::new();
    for v in [100021u32, 4, 6, 0] {
        args.extend_from_slice(&v.to_be_bytes());
    }
    send(&mut s, &call(8, 100000, 2, 3, &args));
    let (xid, _, astat, body) = parse(&recv(&mut s).expect("GETPORT reply"));
    assert_eq!((xid, astat, word(&body, 0)), (8, 0, 0));
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
    // Another NFS server (a listening socket plays it) registered before the proxy
    // starts: the proxy replaces it, and puts it back when it exits.
    let rpcbind = std::path::Path::new("/run/rpcbind.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let other_server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = other_server.local_addr().unwrap();
    let op = other.port();
    let none = rt
        .block_on(gridvfs::proxy::portmap::register(rpcbind, other))
        .expect("register the other server");
    assert!(registered(&rpcinfo(), 100003, op), "setup:\n{}", rpcinfo());
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

    let listing = rpcinfo();
    assert!(
        !registered(&listing, 100003, op),
        "the other server still registered beside the proxy:\n{listing}"
    );
    assert_eq!(p.stop(), Some(0));
    let listing = rpcinfo();
    assert!(
        !registered(&listing, 100003, port),
        "still registered after exit:\n{listing}"
    );
    for prog in [100003, 100005] {
        assert!(
            registered(&listing, prog, op),
            "program {prog} of the other server not put back:\n{listing}"
        );
    }
    // A registration whose port nobody listens on any more (a proxy killed before it
    // could unregister leaves one) is not put back.
    drop(other_server);
    let mut p = Gridvfs::start(lab.endpoint(), "register_rpcbind = true");
    let port = p.addr.port();
    assert!(registered(&rpcinfo(), 100003, port));
    assert_eq!(p.stop(), Some(0));
    let listing = rpcinfo();
    assert!(
        !registered(&listing, 100003, op) && !registered(&listing, 100003, port),
        "a dead registration put back, or the proxy's left:\n{listing}"
    );
    // Leave rpcbind as it was before the test.
    rt.block_on(gridvfs::proxy::portmap::unregister(rpcbind, &none))
        .expect("restore rpcbind");
    std::fs::remove_dir_all(dir).unwrap();
}
