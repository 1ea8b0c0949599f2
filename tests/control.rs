//! The control socket, as middleware uses it: `gridvfs status` reports counters (JSON)
//! that move with real traffic, `gridvfs flush --drop` empties the cache and returns when
//! done, bad requests get a clear error, and the socket goes away with the daemon.

mod common;

use std::process::Command;

use common::{Gridvfs, Lab, bin, ctl, nfs_cat, random_file};

/// The cache of the write-back tests here (block size: the default).
const GEOMETRY: &str = "size = \"64MiB\"\nways = 8\nbanks = 4\n";

#[test]
fn status_and_flush_drop_over_the_control_socket() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("control");
    random_file(&dir.join("f.bin"), 4 << 20, 8);
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("ctl.sock");
    let mut p = Gridvfs::start_with(
        lab.endpoint(),
        "127.0.0.1:0",
        "",
        &format!(
            "[cache]\ndir = \"{}\"\nsize = \"64MiB\"\nways = 8\nbanks = 4\n[control]\nsocket = \"{}\"\n",
            tmp.path().join("cache").display(),
            socket.display()
        ),
    );
    let cat = || {
        let got = nfs_cat(p.endpoints(), &lab.export, &format!("{name}/f.bin"));
        assert_eq!(got.len(), 4 << 20);
    };
    cat();
    cat();
    let (ok, s) = ctl(&socket, &["status"]);
    assert!(ok, "{s}");
    let hits = s["cache"]["hits"].as_u64().unwrap();
    let misses = s["cache"]["misses"].as_u64().unwrap();
    assert!(hits >= 4 && misses >= 4, "{s}");
    assert!(s["calls"]["READ"].as_u64().unwrap() >= hits + misses, "{s}");
    assert!(s["upstream"]["nfs"]["calls"].as_u64().unwrap() > 0, "{s}");

    let (ok, d) = ctl(&socket, &["flush", "--drop"]);
    assert!(ok, "{d}");
    assert!(d["dropped"].as_u64().unwrap() > 0, "{d}");
    cat();
    let (_, s2) = ctl(&socket, &["status"]);
    assert!(
        s2["cache"]["misses"].as_u64().unwrap() >= 2 * misses,
        "not refetched after the drop: {s2}"
    );

    let (ok, f) = ctl(&socket, &["flush"]);
    assert!(ok && f["written"] == 0, "{f}");

    // A bad request: a clear error, and the socket keeps serving.
    let reply = {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.write_all(b"reboot the world\n").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        line
    };
    assert!(
        reply.contains("\"ok\":false") && reply.contains("unknown request"),
        "{reply}"
    );
    assert!(ctl(&socket, &["status"]).0);

    assert_eq!(p.stop(), Some(0));
    assert!(!socket.exists(), "control socket left behind");
    let out = Command::new(bin())
        .args(["status", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the control socket"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// `gridvfs flush --file PATH` writes back that file only, named by its path as mounted;
/// status shows the dirty bytes before and after; a path outside the export is refused.
#[test]
fn flush_one_file_by_its_path() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("control-file");
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("ctl.sock");
    let mut p = Gridvfs::start_with(
        lab.endpoint(),
        "127.0.0.1:0",
        "",
        &common::write_back_and_control(&tmp.path().join("cache"), GEOMETRY, &socket),
    );
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    random_file(&a, (1 << 20) + 5, 81);
    random_file(&b, (2 << 20) + 7, 82);
    for (src, to) in [(&a, "a.bin"), (&b, "b.bin")] {
        let url = common::nfs_url(p.endpoints(), &lab.export, &format!("{name}/{to}"));
        common::ssh::nfs_cp(src.to_str().unwrap(), &url).unwrap();
    }
    let (ok, s) = ctl(&socket, &["status"]);
    assert!(ok, "{s}");
    assert_eq!(s["cache"]["dirty_bytes"], (3 << 20) + 12, "{s}");
    assert_eq!(s["cache"]["dirty_files"], 2, "{s}");
    assert_eq!(std::fs::metadata(dir.join("a.bin")).unwrap().len(), 0);

    let path = format!("{}/{name}/a.bin", lab.export);
    let (ok, f) = ctl(&socket, &["flush", "--file", &path]);
    assert!(ok, "{f}");
    assert_eq!(f["written"], (1 << 20) + 5, "{f}");
    assert_eq!(
        std::fs::read(dir.join("a.bin")).unwrap(),
        std::fs::read(&a).unwrap()
    );
    assert_eq!(
        std::fs::metadata(dir.join("b.bin")).unwrap().len(),
        0,
        "b written too"
    );
    let (_, s) = ctl(&socket, &["status"]);
    assert_eq!(s["cache"]["dirty_bytes"], (2 << 20) + 7, "{s}");

    let (ok, e) = ctl(&socket, &["flush", "--file", "/not-an-export/x"]);
    assert!(
        !ok && e["error"].as_str().unwrap().contains("not under an export"),
        "{e}"
    );
    let (ok, e) = ctl(&socket, &["flush", "--file", &format!("{path}.missing")]);
    assert!(!ok && e["error"].as_str().unwrap().contains("NOENT"), "{e}");

    // SIGTERM writes back the rest before exit.
    assert_eq!(p.stop(), Some(0));
    assert_eq!(
        std::fs::read(dir.join("b.bin")).unwrap(),
        std::fs::read(&b).unwrap()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A flush that takes seconds (the write-back goes through a relay capped at 4 MiB/s)
/// tells `gridvfs flush` its progress every second — bytes left falling, a rate — and
/// the proxy keeps answering meanwhile (status, and a client's READ of another file).
#[test]
fn a_long_flush_reports_progress_and_clients_keep_being_served() {
    let lab = Lab::get();
    let (dir, name) = lab.scratch("control-progress");
    random_file(&dir.join("other.bin"), 1 << 20, 84);
    let relay = common::relay::Relay::start(lab.nfs, Some(4 << 20), None);
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("ctl.sock");
    let mut p = Gridvfs::start_with(
        common::Endpoints {
            nfs: relay.addr,
            mount: lab.mount,
        },
        "127.0.0.1:0",
        "",
        &common::write_back_and_control(&tmp.path().join("cache"), GEOMETRY, &socket),
    );
    const SIZE: u64 = 14 << 20;
    let src = tmp.path().join("big");
    random_file(&src, SIZE as usize, 85);
    let url = common::nfs_url(p.endpoints(), &lab.export, &format!("{name}/big.bin"));
    common::ssh::nfs_cp(src.to_str().unwrap(), &url).unwrap();
    let (_, s) = ctl(&socket, &["status"]);
    assert_eq!(s["cache"]["dirty_bytes"], SIZE, "{s}");

    let t0 = std::time::Instant::now();
    let flush = Command::new(bin())
        .args(["flush", "--socket"])
        .arg(&socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While it runs: the control socket and the NFS port both answer.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let (ok, s) = ctl(&socket, &["status"]);
    assert!(ok, "{s}");
    assert_eq!(
        s["cache"]["flush"]["running"], true,
        "answered during the flush: {s}"
    );
    let got = nfs_cat(p.endpoints(), &lab.export, &format!("{name}/other.bin"));
    assert_eq!(got, std::fs::read(dir.join("other.bin")).unwrap());
    let mut flush = flush;
    assert!(
        flush.try_wait().unwrap().is_none(),
        "the READ was answered only after the flush ended"
    );
    let out = flush.wait_with_output().unwrap();
    let took = t0.elapsed();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    let reply: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert!(out.status.success(), "{reply} {said}");
    assert_eq!(reply["written"], SIZE, "{reply}");
    assert!(
        took.as_secs_f64() > 2.5,
        "the relay caps the flush: {took:?}"
    );

    eprintln!("{said}");
    // "flush: 9.3 MiB left of 14.0 MiB, 3.9 MiB/s, 0.0 MiB committed", one a second.
    let lines: Vec<(f64, f64, f64)> = said
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("flush: ")?;
            let nums: Vec<f64> = l
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .filter_map(|w| w.parse().ok())
                .collect();
            Some((nums[0], nums[1], nums[2]))
        })
        .collect();
    assert!(lines.len() >= 2, "progress lines: {said}");
    for w in lines.windows(2) {
        assert!(w[1].0 <= w[0].0, "bytes left rose: {said}");
    }
    let (first, last) = (lines[0], lines[lines.len() - 1]);
    assert!(last.0 < first.0, "bytes left never fell: {said}");
    assert!(lines.iter().all(|l| l.1 == 14.0), "{said}");
    assert!(
        lines.iter().any(|l| l.2 > 1.0 && l.2 < 8.0),
        "a rate near the 4 MiB/s cap: {said}"
    );
    assert_eq!(
        common::sha256_file(&dir.join("big.bin")),
        common::sha256_file(&src),
        "written back byte-equal"
    );
    assert_eq!(p.stop(), Some(0));
}
