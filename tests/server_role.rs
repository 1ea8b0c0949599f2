//! The server role over plain TCP (as behind a stock sshd), against the lab's Ganesha:
//! identity mapping lands files on the server's disk as the mapped owner, unissued
//! handles are refused, only configured exports mount, and what was issued survives a
//! restart. (The SSH paths to the same role are in `tests/ssh_chain.rs`.)

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{Connector, Endpoints, Gridvfs, Lab, lookup_in};
use nfs3_client::Nfs3ConnectionBuilder;
use nfs3_types::nfs3::{GETATTR3args, Nfs3Result, nfs_fh3, nfsstat3};
use nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_types::xdr_codec::Opaque;

/// The account every TCP client of the server proxy runs as.
const MAPPED_UID: u32 = 3042;
const MAPPED_GID: u32 = 3043;

fn cred(uid: u32) -> opaque_auth<'static> {
    opaque_auth::auth_unix(&auth_unix {
        stamp: 1,
        machinename: Opaque::owned(b"compute-node".to_vec()),
        uid,
        gid: uid,
        gids: vec![uid],
    })
}

async fn mount_as(ep: Endpoints, export: &str, uid: u32) -> Result<common::Client, String> {
    Nfs3ConnectionBuilder::new(Connector, ep.nfs.ip().to_string(), export)
        .mount_port(ep.mount.port())
        .nfs3_port(ep.nfs.port())
        .connect_from_privileged_port(false)
        .credential(cred(uid))
        .mount()
        .await
        .map_err(|e| e.to_string())
}

fn server_section(state: &Path, export: &str, tcp_account: bool) -> String {
    format!(
        "\n[server]\nexports = [\"{export}\"]\nstate_dir = \"{}\"\n{}\
         [[server.account]]\nname = \"grid\"\nuid = {MAPPED_UID}\ngid = {MAPPED_GID}\ngids = [{MAPPED_GID}]\n{}",
        state.display(),
        if tcp_account {
            "tcp_account = \"grid\"\n"
        } else {
            ""
        },
        common::control_section(&state.join("ctl"))
    )
}

fn server_proxy(lab: &Lab, state: &Path, tcp_account: bool) -> Gridvfs {
    Gridvfs::start_with(
        lab.endpoint(),
        "127.0.0.1:0",
        "",
        &server_section(state, &lab.export, tcp_account),
    )
}

#[tokio::test]
async fn root_and_4242_both_land_as_the_mapped_account() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("server-ids");
    // The mapped account must be able to create files here.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let state = tempfile::tempdir().unwrap();
    let p = server_proxy(&lab, state.path(), true);
    for uid in [0u32, 4242] {
        let mut c = mount_as(p.endpoints(), &lab.export, uid).await.unwrap();
        let root = c.root_nfs_fh3();
        let sub = lookup_in(&mut c, &root, &name).await.object;
        let file = format!("made-by-{uid}");
        common::create(&mut c, &sub, &file).await;
        let md = std::fs::metadata(dir.join(&file)).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (MAPPED_UID, MAPPED_GID),
            "client uid {uid}: owner on the server's disk"
        );
    }
}

async fn getattr_status(c: &mut common::Client, fh: &nfs_fh3) -> Result<(), nfsstat3> {
    match c
        .getattr(&GETATTR3args { object: fh.clone() })
        .await
        .unwrap()
    {
        Nfs3Result::Ok(_) => Ok(()),
        Nfs3Result::Err((s, _)) => Err(s),
    }
}

#[tokio::test]
async fn forged_and_foreign_handles_are_stale_issued_ones_survive_a_restart() {
    let lab = Lab::get();
    let (_dir, name) = lab.scratch("server-handles");
    std::fs::write(lab.export_dir.join(&name).join("f"), b"data").unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut p = server_proxy(&lab, state.path(), true);
    let mut c = mount_as(p.endpoints(), &lab.export, 4242).await.unwrap();
    let root = c.root_nfs_fh3();
    let sub = lookup_in(&mut c, &root, &name).await.object;
    let f = lookup_in(&mut c, &sub, "f").await.object;
    assert_eq!(getattr_status(&mut c, &f).await, Ok(()));

    // A forged handle: a real one with a byte flipped.
    let mut forged = f.data.to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 0x5a;
    let forged = nfs_fh3 {
        data: Opaque::owned(forged),
    };
    assert_eq!(
        getattr_status(&mut c, &forged).await,
        Err(nfsstat3::NFS3ERR_STALE)
    );

    // A foreign handle: a real file's handle obtained straight from Ganesha, never
    // issued through this proxy.
    std::fs::write(lab.export_dir.join(&name).join("g"), b"other").unwrap();
    let mut direct = common::mount(lab.endpoint(), &lab.export).await;
    let droot = direct.root_nfs_fh3();
    let dsub = lookup_in(&mut direct, &droot, &name).await.object;
    let g = lookup_in(&mut direct, &dsub, "g").await.object;
    assert_eq!(
        getattr_status(&mut direct, &g).await,
        Ok(()),
        "valid on the server"
    );
    assert_eq!(
        getattr_status(&mut c, &g).await,
        Err(nfsstat3::NFS3ERR_STALE),
        "a handle this proxy never issued"
    );

    let (ok, st) = common::ctl(&state.path().join("ctl"), &["status"]);
    assert!(ok, "{st}");
    assert!(st["server"]["refused"].as_u64().unwrap() >= 2, "{st}");
    assert!(
        st["server"]["issued_handles"].as_u64().unwrap() >= 3,
        "{st}"
    );

    // Restart the server proxy: handles it issued still work.
    p.stop();
    let p2 = server_proxy(&lab, state.path(), true);
    let mut c2 = mount_as(p2.endpoints(), &lab.export, 4242).await.unwrap();
    assert_eq!(
        getattr_status(&mut c2, &f).await,
        Ok(()),
        "issued before the restart"
    );
    assert_eq!(
        getattr_status(&mut c2, &forged).await,
        Err(nfsstat3::NFS3ERR_STALE)
    );
}

#[tokio::test]
async fn only_configured_exports_mount() {
    let lab = Lab::get();
    let state = tempfile::tempdir().unwrap();
    // Allow a path that is not the lab's export; the real export is then refused.
    let p = Gridvfs::start_with(
        lab.endpoint(),
        "127.0.0.1:0",
        "",
        &server_section(state.path(), "/elsewhere", true),
    );
    let e = mount_as(p.endpoints(), &lab.export, 4242)
        .await
        .err()
        .expect("MNT of an export not in server.exports must fail");
    assert!(
        e.to_lowercase().contains("acces") || e.contains("13"),
        "{e}"
    );
}

#[tokio::test]
async fn tcp_clients_refused_without_a_tcp_account() {
    let lab = Lab::get();
    let state = tempfile::tempdir().unwrap();
    let p = server_proxy(&lab, state.path(), false);
    assert!(mount_as(p.endpoints(), &lab.export, 4242).await.is_err());
    p.wait_log("TCP client refused", 1);
}

/// Review finding: MNT of a path below an export used to go to the server's mountd, which
/// follows symlinks — out of the export. Now the proxy walks it with LOOKUP (which never
/// follows symlinks): a real directory mounts, a symlink in the path is refused.
#[tokio::test]
async fn mount_below_an_export_follows_no_symlink() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("server-mnt-below");
    std::fs::create_dir_all(dir.join("real/deeper")).unwrap();
    std::fs::write(dir.join("real/deeper/f"), b"inside").unwrap();
    std::os::unix::fs::symlink("/etc", dir.join("escape")).unwrap();
    std::os::unix::fs::symlink("real", dir.join("alias")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let p = server_proxy(&lab, state.path(), true);
    let below = format!("{}/{name}/real/./deeper/", lab.export);
    let mut c = mount_as(p.endpoints(), &below, 4242).await.unwrap();
    let root = c.root_nfs_fh3();
    let f = lookup_in(&mut c, &root, "f").await.object;
    assert_eq!(getattr_status(&mut c, &f).await, Ok(()));
    for bad in ["escape", "alias", "escape/ssh"] {
        let e = mount_as(p.endpoints(), &format!("{}/{name}/{bad}", lab.export), 4242)
            .await
            .err()
            .unwrap_or_else(|| panic!("MNT through the symlink {bad} succeeded"));
        assert!(e.contains("NOTDIR"), "{bad}: {e}");
    }
    let e = mount_as(
        p.endpoints(),
        &format!("{}/{name}/missing", lab.export),
        4242,
    )
    .await
    .err()
    .expect("MNT of a missing directory succeeded");
    assert!(e.contains("NOENT"), "{e}");
}
