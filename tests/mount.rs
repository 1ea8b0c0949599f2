//! MOUNT v3 through the proxy: every procedure (NULL, MNT, DUMP, UMNT, UMNTALL, EXPORT)
//! is forwarded to the server's MOUNT program and answers as it does directly.

mod common;

use common::{Endpoints, Gridvfs, Lab, root_cred};
use nfs3_client::MountClient;
use nfs3_client::net::Connector;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_types::mount::dirpath;
use nfs3_types::rpc::opaque_auth;
use nfs3_types::xdr_codec::Opaque;

type Client = MountClient<TokioIo<tokio::net::TcpStream>>;

async fn client(ep: Endpoints) -> Client {
    let io = TokioConnector.connect(ep.mount).await.unwrap();
    MountClient::new_with_auth(io, root_cred(), opaque_auth::default())
}

fn path(p: &str) -> dirpath<'static> {
    dirpath(Opaque::owned(p.as_bytes().to_vec()))
}

/// What a mount session sees, in a form that can be compared across endpoints.
async fn session(ep: Endpoints, export: &str) -> Vec<String> {
    let mut c = client(ep).await;
    let mut seen = Vec::new();
    c.null().await.unwrap();
    let ok = c.mnt(path(export)).await.expect("MNT");
    seen.push(format!(
        "MNT fh {} bytes, flavors {:?}",
        ok.fhandle.0.len(),
        ok.auth_flavors
    ));
    let bad = c.mnt(path("/no-such-export")).await;
    seen.push(format!(
        "MNT missing: {:?}",
        bad.map(|_| ()).map_err(|e| e.to_string())
    ));
    let exports = c.export().await.unwrap();
    for e in exports.0 {
        seen.push(format!(
            "EXPORT {} groups {}",
            String::from_utf8_lossy(&e.ex_dir.0),
            e.ex_groups.0.len()
        ));
    }
    // DUMP's list depends on who mounted what; it must decode and be a list.
    let dump = c.dump().await.unwrap();
    seen.push(format!("DUMP decoded, non-empty={}", !dump.0.is_empty()));
    c.umnt(path(export)).await.unwrap();
    c.umntall().await.unwrap();
    seen.push("UMNT, UMNTALL ok".into());
    seen
}

#[tokio::test]
async fn every_mount_procedure_matches_direct() {
    let lab = Lab::get();
    let p = Gridvfs::start(lab.endpoint(), "");
    let direct = session(lab.endpoint(), &lab.export).await;
    let via = session(p.endpoints(), &lab.export).await;
    assert!(
        direct
            .iter()
            .any(|l| l.starts_with(&format!("EXPORT {}", lab.export))),
        "{direct:?}"
    );
    assert_eq!(via, direct);
}
