//! Real third-party clients (libnfs-utils: nfs-cp, nfs-cat, nfs-ls) through the proxy:
//! large files in and out byte-equal, a two-proxy cascade, and the next hop killed and
//! restarted in the middle of a transfer.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Endpoints, Gridvfs, Lab, nfs_cat, nfs_url, random_file, sha256_file, signal};

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run libnfs tool (apt: libnfs-utils)");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nfs_cp(from: &str, to: &str) {
    run(Command::new("nfs-cp").arg(from).arg(to));
}

fn round_trip(ep: Endpoints, lab: &Lab, test: &str, mib: usize) {
    let (dir, name) = lab.scratch(test);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.bin");
    random_file(&src, mib << 20, 7);
    let want = sha256_file(&src);

    // In: local → NFS; the file on the server's disk must be byte-equal.
    nfs_cp(
        src.to_str().unwrap(),
        &nfs_url(ep, &lab.export, &format!("{name}/in.bin")),
    );
    assert_eq!(
        sha256_file(&dir.join("in.bin")),
        want,
        "upload differs on the server"
    );

    // Out: NFS → local, and nfs-cat, byte-equal.
    let back = tmp.path().join("back.bin");
    nfs_cp(
        &nfs_url(ep, &lab.export, &format!("{name}/in.bin")),
        back.to_str().unwrap(),
    );
    assert_eq!(sha256_file(&back), want, "download differs");
    let cat = nfs_cat(ep, &lab.export, &format!("{name}/in.bin"));
    assert_eq!(cat.len(), mib << 20);
    std::fs::write(tmp.path().join("cat.bin"), &cat).unwrap();
    assert_eq!(sha256_file(&tmp.path().join("cat.bin")), want);

    // nfs-ls lists the directory.
    let ls = Command::new("nfs-ls")
        .arg(nfs_url(ep, &lab.export, &name))
        .output()
        .unwrap();
    assert!(ls.status.success());
    assert!(String::from_utf8_lossy(&ls.stdout).contains("in.bin"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn large_files_in_and_out_through_the_proxy() {
    let lab = Lab::get();
    let p = Gridvfs::start(lab.endpoint(), "");
    round_trip(p.endpoints(), &lab, "libnfs-proxy", 128);
}

/// Also runs the front proxy with the smallest memory budget allowed (one record), so
/// every call waits for the one before it to be answered: slow, but never stuck.
#[test]
fn two_proxies_cascaded() {
    let lab = Lab::get();
    let lan = Gridvfs::start(lab.endpoint(), "");
    let client = Gridvfs::start(lan.endpoints(), "max_buffered = \"2MiB\"");
    round_trip(client.endpoints(), &lab, "libnfs-cascade", 32);
}

/// The next hop (a second gridvfs in front of Ganesha) is killed with SIGKILL and
/// restarted on the same port in the middle of an upload and of a download; both
/// transfers complete byte-equal, because the first proxy re-sends what was in flight.
#[test]
fn next_hop_killed_and_restarted_mid_transfer() {
    let lab = Lab::get();
    let mut hop = Gridvfs::start(lab.endpoint(), "");
    let hop_addr = hop.addr.to_string();
    let front = Gridvfs::start(hop.endpoints(), "");
    let (dir, name) = lab.scratch("libnfs-restart");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.bin");
    random_file(&src, 256 << 20, 11);
    let want = sha256_file(&src);

    let transfer = |from: String, to: String| {
        Command::new("nfs-cp")
            .arg(from)
            .arg(to)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let restart = |hop: &mut Gridvfs, grow: &dyn Fn() -> u64| {
        // Wait until the transfer is visibly under way, then kill the next hop.
        let t0 = Instant::now();
        while grow() < 16 << 20 {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "transfer did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        signal(hop.pid(), "KILL");
        std::thread::sleep(Duration::from_millis(300));
        Gridvfs::start_with(lab.endpoint(), &hop_addr, "", "")
    };

    // Upload.
    let dst = dir.join("up.bin");
    let cp = transfer(
        src.to_str().unwrap().into(),
        nfs_url(front.endpoints(), &lab.export, &format!("{name}/up.bin")),
    );
    hop = restart(&mut hop, &|| {
        std::fs::metadata(&dst).map(|m| m.len()).unwrap_or(0)
    });
    let out = cp.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "upload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sha256_file(&dst),
        want,
        "upload corrupted across the restart"
    );

    // Download.
    let back = tmp.path().join("back.bin");
    let cp = transfer(
        nfs_url(front.endpoints(), &lab.export, &format!("{name}/up.bin")),
        back.to_str().unwrap().into(),
    );
    let _hop = restart(&mut hop, &|| {
        std::fs::metadata(&back).map(|m| m.len()).unwrap_or(0)
    });
    let out = cp.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "download failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sha256_file(&back),
        want,
        "download corrupted across the restart"
    );
    assert!(
        front.log_text().contains("re-sent calls"),
        "the front proxy never re-sent anything: the kill missed the transfer?\n{}",
        front.log_text()
    );
    std::fs::remove_dir_all(dir).unwrap();
}
