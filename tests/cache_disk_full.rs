//! The cache disk fills up (ENOSPC): WRITEs the cache cannot take go through to the
//! server as FILE_SYNC (logged and counted), the client never sees an error, and nothing
//! is lost — what did land in the cache is written back at the flush. The cache lives on
//! a 2 MiB tmpfs mounted for the test (we are root on the test machines), configured as
//! a 64 MiB cache, so its sparse bank files run out of space.

mod common;

use std::process::Command;

use common::{Gridvfs, Lab, ctl, pseudo_random};
use nfs3_types::nfs3::stable_how;

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap().keep();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "gridvfs-test"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs (the tests run as root)");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test]
async fn a_full_cache_disk_writes_through_and_loses_nothing() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("disk-full");
    let fs = Tmpfs::mount("2m");
    let socket = fs.0.join("ctl");
    let mut p = Gridvfs::start_with(
        lab.endpoint(),
        "127.0.0.1:0",
        "",
        &common::write_back_and_control(&fs.0.join("cache"), common::CACHE_64M, &socket),
    );
    let mut c = common::mount(p.endpoints(), &lab.export).await;
    let d = common::scratch_fh(&mut c, &name).await;
    let fh = common::create(&mut c, &d, "f.bin").await;
    let data = pseudo_random(8 << 20, 77);
    for (i, part) in data.chunks(256 << 10).enumerate() {
        let ok = common::write(
            &mut c,
            &fh,
            (i * (256 << 10)) as u64,
            part,
            stable_how::UNSTABLE,
        )
        .await;
        assert_eq!(ok.count as usize, part.len());
    }
    common::commit(&mut c, &fh).await;
    assert!(
        common::read_all(&mut c, &fh).await == data,
        "read back through the proxy"
    );

    let (ok, s) = ctl(&socket, &["status"]);
    assert!(ok, "{s}");
    let through = s["cache"]["write_throughs"].as_u64().unwrap();
    assert!(
        through > 0,
        "no WRITE went through with the cache disk full: {s}"
    );
    assert!(p.log_text().contains("writing it through"), "not logged");

    // A truncation with the disk still full: answered OK (through to the server if the
    // cache cannot record it), never an error; the bytes are the cut ones.
    use nfs3_types::nfs3::{Nfs3Option, Nfs3Result, SETATTR3args, sattr3};
    let cut = 5 << 20;
    let r = c
        .setattr(&SETATTR3args {
            object: fh.clone(),
            new_attributes: sattr3 {
                size: Nfs3Option::Some(cut as u64),
                ..Default::default()
            },
            guard: Nfs3Option::None,
        })
        .await
        .unwrap();
    assert!(
        matches!(r, Nfs3Result::Ok(_)),
        "truncation on a full cache disk failed\n{}",
        p.log_text()
    );
    let data = &data[..cut];
    assert!(
        common::read_all(&mut c, &fh).await == data,
        "read back after the truncation"
    );

    let (ok, f) = ctl(&socket, &["flush"]);
    assert!(ok, "{f}");
    common::assert_same_bytes(
        "server copy",
        &std::fs::read(dir.join("f.bin")).unwrap(),
        data,
    );
    drop(c);
    assert_eq!(p.stop(), Some(0));
    drop(fs);
    std::fs::remove_dir_all(dir).unwrap();
}
