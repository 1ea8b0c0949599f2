//! The command line as an operator meets it: config validation (same code for
//! `check-config` and `run`), exit codes, JSON logs, a clean stop on SIGTERM.

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::{Lab, bin};

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn example_configs_check_ok() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let out = Command::new(bin())
            .arg("check-config")
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
    }
}

#[test]
fn bad_configs_exit_2_naming_the_key_for_check_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "typo.toml",
            "[upstream]\nnfs = \"127.0.0.1:1\"\nconections = 3\n",
            "conections",
        ),
        (
            "addr.toml",
            "[listen]\naddr = \"localhost\"\n[upstream]\nnfs = \"127.0.0.1:1\"\n",
            "listen.addr",
        ),
        (
            "size.toml",
            "[listen]\nmax_record = \"12 parsecs\"\n[upstream]\nnfs = \"h:1\"\n",
            "parsecs",
        ),
        (
            "noup.toml",
            "[listen]\naddr = \"127.0.0.1:0\"\n",
            "upstream",
        ),
        (
            "fmt.toml",
            "[upstream]\nnfs = \"h:1\"\n[log]\nformat = \"xml\"\n",
            "log.format",
        ),
        (
            "resend.toml",
            "[upstream]\nnfs = \"h:1\"\nresend_limit = 0\n",
            "upstream.resend_limit",
        ),
    ];
    for (name, text, needle) in cases {
        let p = write(tmp.path(), name, text);
        for args in [vec!["check-config"], vec!["run", "--config"]] {
            let out = Command::new(bin()).args(&args).arg(&p).output().unwrap();
            assert_eq!(out.status.code(), Some(2), "{name} {args:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(needle),
                "{name}: message does not name `{needle}`: {err}"
            );
        }
    }
    let out = Command::new(bin())
        .args(["check-config", "/nonexistent/gridvfs.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn port_in_use_exits_1_with_a_clear_message() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "c.toml",
        &format!(
            "[listen]\naddr = \"{}\"\n[upstream]\nnfs = \"127.0.0.1:1\"\n",
            busy.local_addr().unwrap()
        ),
    );
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot start serving on"));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let lab = Lab::get();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(
        tmp.path(),
        "c.toml",
        &format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nnfs = \"{}\"\nmount = \"{}\"\n[log]\nformat = \"json\"\n",
            lab.nfs, lab.mount
        ),
    );
    let log = tmp.path().join("json.log");
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&log).unwrap().contains("serving") {
        assert!(t0.elapsed().as_secs() < 10, "no 'serving' log line");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    common::signal(child.id(), "TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let mut n = 0;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
        n += 1;
    }
    assert!(n >= 3, "expected listening/serving/stopped lines:\n{text}");
}
