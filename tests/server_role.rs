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
    cred_ids(uid, uid, &[uid])
}

fn cred_ids(uid: u32, gid: u32, gids: &[u32]) -> opaque_auth<'static> {
    opaque_auth::auth_unix(&auth_unix {
        stamp: 1,
        machinename: Opaque::owned(b"compute-node".to_vec()),
        uid,
        gid,
        gids: gids.to_vec(),
    })
}

async fn mount_as(ep: Endpoints, export: &str, uid: u32) -> Result<common::Client, String> {
    mount_with(ep, export, cred(uid)).await
}

async fn mount_with(
    ep: Endpoints,
    export: &str,
    credential: opaque_auth<'static>,
) -> Result<common::Client, String> {
    Nfs3ConnectionBuilder::new(Connector, ep.nfs.ip().to_string(), export)
        .mount_port(ep.mount.port())
        .nfs3_port(ep.nfs.port())
        .connect_from_privileged_port(false)
        .credential(credential)
        .mount()
        .await
        .map_err(|e| e.to_string())
}

/// A server proxy whose TCP clients run as the account `account` (a TOML table body).
fn server_proxy_account(lab: &Lab, state: &Path, account: &str) -> Gridvfs {
    Gridvfs::start_with(
        lab.endpoint(),
        "127.0.0.1:0",
        "",
        &format!(
            "\n[server]\nexports = [\"{}\"]\nstate_dir = \"{}\"\ntcp_account = \"grid\"\n{}\
             [[server.account]]\nname = \"grid\"\n{account}",
            lab.export,
            state.display(),
            common::control_section(&state.join("ctl"))
        ),
    )
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

/// An account given by tables instead of fixed ids, on Ganesha's disk: a mapped uid and
/// gid land as the table says; an unmapped uid, root, and an unmapped primary group land
/// as the squash ids; supplementary groups reach the server only through `gid_map` (a
/// directory only group 5003 may write in), root's included; AUTH_NONE, mapped, runs as
/// the squash ids.
#[tokio::test]
async fn uid_and_gid_tables_map_squash_and_carry_groups_to_ganesha() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("server-tables");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let grp = dir.join("grp");
    std::fs::create_dir(&grp).unwrap();
    std::os::unix::fs::chown(&grp, Some(0), Some(5003)).unwrap();
    std::fs::set_permissions(&grp, std::os::unix::fs::PermissionsExt::from_mode(0o770)).unwrap();
    let state = tempfile::tempdir().unwrap();
    let p = server_proxy_account(
        &lab,
        state.path(),
        "uid_map = { \"4242\" = 5001, \"4343\" = 5004 }\n\
         gid_map = { \"4242\" = 5002, \"4243\" = 5003 }\nauth_none = \"map\"\n",
    );
    let nobody = (65534, 65534);
    let cases: [(&str, opaque_auth<'static>, (u32, u32), bool); 5] = [
        (
            "mapped",
            cred_ids(4242, 4242, &[4242, 4243]),
            (5001, 5002),
            true,
        ),
        (
            "unmapped-gid",
            cred_ids(4343, 4343, &[4343]),
            (5004, 65534),
            false,
        ),
        // Root is squashed; its other groups map like anyone's (as knfsd's root_squash
        // keeps non-zero supplementary groups).
        ("root", cred_ids(0, 0, &[0, 4243]), nobody, true),
        ("stranger", cred_ids(7777, 7777, &[7777]), nobody, false),
        ("auth-none", opaque_auth::default(), nobody, false),
    ];
    for (who, credential, owner, in_group) in cases {
        let mut c = mount_with(p.endpoints(), &lab.export, credential)
            .await
            .unwrap_or_else(|e| panic!("{who}: mount: {e}"));
        let root = c.root_nfs_fh3();
        let sub = lookup_in(&mut c, &root, &name).await.object;
        common::create(&mut c, &sub, who).await;
        let md = std::fs::metadata(dir.join(who)).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            owner,
            "{who}: owner on Ganesha's disk"
        );
        let g = lookup_in(&mut c, &sub, "grp").await.object;
        let made = common::create_status(&mut c, &g, who, None)
            .await
            .map(|_| ());
        if in_group {
            assert_eq!(made, Ok(()), "{who}: group 5003 may write in grp");
            let md = std::fs::metadata(grp.join(who)).unwrap();
            assert_eq!(md.uid(), owner.0, "{who}: owner in grp");
        } else {
            assert_eq!(
                made,
                Err(nfsstat3::NFS3ERR_ACCES),
                "{who}: not in group 5003"
            );
            assert!(!grp.join(who).exists(), "{who}");
        }
    }
}

/// AUTH_NONE against a fixed account: refused by default (AUTH_TOOWEAK, nothing reaches
/// Ganesha), run as the account with `auth_none = "map"`.
#[tokio::test]
async fn auth_none_is_refused_or_runs_as_the_fixed_account() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("server-auth-none");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let fixed = format!("uid = {MAPPED_UID}\ngid = {MAPPED_GID}\n");
    let state = tempfile::tempdir().unwrap();
    let refusing = server_proxy_account(&lab, state.path(), &fixed);
    let e = mount_with(refusing.endpoints(), &lab.export, opaque_auth::default())
        .await
        .err()
        .expect("AUTH_NONE mounted through auth_none = \"refuse\"");
    assert!(e.to_lowercase().contains("weak"), "{e}");
    drop(refusing);

    let state = tempfile::tempdir().unwrap();
    let mapping =
        server_proxy_account(&lab, state.path(), &format!("{fixed}auth_none = \"map\"\n"));
    let mut c = mount_with(mapping.endpoints(), &lab.export, opaque_auth::default())
        .await
        .unwrap();
    let root = c.root_nfs_fh3();
    let sub = lookup_in(&mut c, &root, &name).await.object;
    common::create(&mut c, &sub, "anonymous").await;
    let md = std::fs::metadata(dir.join("anonymous")).unwrap();
    assert_eq!((md.uid(), md.gid()), (MAPPED_UID, MAPPED_GID));
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
