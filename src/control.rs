//! The control socket: how middleware asks a running proxy for its state and for a flush
//! (paper §3.2.1: middleware-driven consistency), besides the signals.
//!
//! A Unix stream socket (`[control] socket`), one request line, one JSON reply line:
//!
//! - `status` → `{"ok":true,"calls":{...},"cache":{...},"upstream":{...}}`
//! - `flush` → write back all dirty data. While it runs, a progress line every second
//!   (`{"progress":{"bytes_left":N,"rate_bytes_per_s":R,"bytes_done":C,...}}`: bytes
//!   not yet acknowledged by the next hop, their rate, bytes committed); when done, the answer:
//!   `{"ok":true,"written":N,"files":N,...}` (`"ok":false` if some file could not be
//!   written back: its data stays dirty).
//! - `flush --drop` → write back, then drop the whole cache (`"dropped":N` blocks).
//! - `workset PATH` → the byte ranges clients READ of the file at PATH (as mounted),
//!   recorded with `[meta] record_working_set`: `{"ok":true,"path":..,"size":N,
//!   "ranges":[[off,len],...],"bytes":N,"truncated":false}` (see `proxy::workset`).
//!
//! `gridvfs status --socket P`, `gridvfs flush [--drop] --socket P` and
//! `gridvfs workset --socket P PATH` are the clients; the last line of an answer is the
//! one with `"ok"`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::nfs3::Proc;
use crate::proxy::Proxy;

/// Longest request line accepted: a verb and a path of up to PATH_MAX (4,096) bytes.
const MAX_LINE: usize = 4096 + 64;

/// Serves the control socket until the task is dropped. The socket file is replaced if
/// it exists (a stale one from a crash) and made owner-only.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub async fn serve(listener: UnixListener, proxy: Arc<Proxy>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &proxy).await {
                warn!(side = "client", error = %e, "control request failed");
            }
        });
    }
}

async fn handle(stream: UnixStream, proxy: &Arc<Proxy>) -> std::io::Result<()> {
    // Calls made for the requester (prefetch) go as its uid and gid.
    let peer = stream.peer_cred().ok().map(|c| (c.uid(), c.gid()));
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(MAX_LINE as u64 + 1);
    rd.read_line(&mut line).await?;
    let cut = line.len() > MAX_LINE && !line.ends_with('\n');
    let line = line.trim_end_matches(['\n', '\r']);
    let reply = match line {
        // Never act on a cut line: its path would be another file's.
        _ if cut => error_line(&format!("request line over {MAX_LINE} bytes")),
        "status" => status(proxy).await,
        _ if line.starts_with("workset ") && line.len() > "workset ".len() => {
            workset(proxy, &line["workset ".len()..]).await
        }
        _ if line.starts_with("prefetch ") && line.len() > "prefetch ".len() => {
            prefetch(proxy, &line["prefetch ".len()..], peer).await
        }
        _ if line == "flush" || line.starts_with("flush ") => {
            let mut rest = &line["flush".len()..];
            let drop = rest.starts_with(" --drop");
            if drop {
                rest = &rest[" --drop".len()..];
            }
            match rest.strip_prefix(" --file ") {
                Some(path) => flush(proxy, drop, Some(path), &mut wr).await?,
                None if rest.is_empty() => flush(proxy, drop, None, &mut wr).await?,
                None => bad_request(line),
            }
        }
        other => bad_request(other),
    };
    wr.write_all(reply.as_bytes()).await?;
    wr.write_all(b"\n").await?;
    wr.shutdown().await
}

fn bad_request(line: &str) -> String {
    error_line(&format!(
        "unknown request {:?}: use status, flush [--drop] [--file PATH], workset PATH, \
         prefetch [--as UID:GID[:GID,...]] PATH",
        line.chars().take(40).collect::<String>()
    ))
}

/// `{"ok":false,"error":...}`.
fn error_line(error: &str) -> String {
    format!("{{\"ok\":false,\"error\":{}}}", json_str(error))
}

/// Answers `workset PATH`: what the recorder holds for the file, clipped to its size.
async fn workset(proxy: &Proxy, path: &str) -> String {
    info!(path, "control: workset");
    let dump = match proxy.working_set(path).await {
        Ok(d) => d,
        Err(e) => return error_line(&e),
    };
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        ok: bool,
        #[serde(flatten)]
        dump: &'a crate::proxy::workset::Dump,
    }
    serde_json::to_string(&Answer {
        ok: true,
        dump: &dump,
    })
    .unwrap_or_else(|e| error_line(&format!("cannot encode the answer: {e}")))
}

/// Answers `prefetch [--as UID:GID[:GID,...]] PATH`: queues the file's whole-file or
/// working-set transfer and says what was queued (it runs on in the proxy). The calls go
/// as `--as` says, else as the requester (the socket peer's uid and gid).
async fn prefetch(proxy: &Proxy, rest: &str, peer: Option<(u32, u32)>) -> String {
    use crate::proxy::meta::Started;
    use crate::upstream::calls::Cred;
    let (cred, path) = match rest.strip_prefix("--as ") {
        Some(r) => {
            let (who, path) = r.split_once(' ').unwrap_or((r, ""));
            match parse_ids(who) {
                Some((uid, gid, gids)) => (Cred::sys(uid, gid, &gids), path),
                None => {
                    return error_line(&format!(
                        "--as {who:?}: use UID:GID or UID:GID:GID,GID,... (numbers)"
                    ));
                }
            }
        }
        None => match peer {
            Some((uid, gid)) => (Cred::sys(uid, gid, &[]), rest),
            None => {
                return error_line(
                    "cannot tell who is asking (no peer credentials on the socket); use --as",
                );
            }
        },
    };
    if path.is_empty() {
        return bad_request(rest);
    }
    let (fetch, bytes, why) = match proxy.prefetch(path, cred).await {
        Ok(Started::WholeFile { bytes }) => ("whole-file", bytes, None),
        Ok(Started::WorkingSet { bytes }) => ("working-set", bytes, None),
        Ok(Started::Nothing(why)) => ("none", 0, Some(why)),
        Err(e) => return error_line(&e),
    };
    info!(path, fetch, bytes, why, "control: prefetch");
    format!(
        "{{\"ok\":true,\"path\":{},\"fetch\":\"{fetch}\",\"bytes\":{bytes}{}}}",
        json_str(path),
        why.map_or(String::new(), |w| format!(",\"why\":{}", json_str(w)))
    )
}

/// `UID:GID` or `UID:GID:G1,G2,...` (decimal digits only; at most 16 groups, as AUTH_SYS
/// carries).
fn parse_ids(s: &str) -> Option<(u32, u32, Vec<u32>)> {
    let num = |x: &str| -> Option<u32> {
        (!x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
            .then(|| x.parse().ok())
            .flatten()
    };
    let mut parts = s.splitn(3, ':');
    let uid = num(parts.next()?)?;
    let gid = num(parts.next()?)?;
    let gids = match parts.next() {
        None => Vec::new(),
        Some(g) => g.split(',').map(num).collect::<Option<Vec<u32>>>()?,
    };
    (gids.len() <= 16).then_some((uid, gid, gids))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_digits_with_at_most_16_groups() {
        use super::parse_ids;
        assert_eq!(parse_ids("1000:100"), Some((1000, 100, vec![])));
        assert_eq!(parse_ids("0:0:7,8"), Some((0, 0, vec![7, 8])));
        for bad in [
            "",
            "1",
            "1:",
            "1:2:",
            "1::3",
            "+1:2",
            "1:2:3,",
            "a:b",
            "4294967296:1",
        ] {
            assert_eq!(parse_ids(bad), None, "{bad:?}");
        }
        let many = (0..17).map(|g| g.to_string()).collect::<Vec<_>>().join(",");
        assert_eq!(parse_ids(&format!("1:2:{many}")), None);
    }
}

/// How often a waiting `flush` is told the progress.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs a flush (it goes on if the requester goes away) and reports its progress to the
/// requester until it is done; returns the final line.
async fn flush(
    proxy: &Arc<Proxy>,
    drop: bool,
    file: Option<&str>,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<String> {
    info!(drop, file, "control: flush");
    let fh = match file {
        None => None,
        Some(path) => match proxy.resolve(path).await {
            Ok(fh) => Some(fh),
            Err(e) => return Ok(format!("{{\"ok\":false,\"error\":{}}}", json_str(&e))),
        },
    };
    let p = proxy.clone();
    let mut task = tokio::spawn(async move { p.flush(fh, drop).await });
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    let done = loop {
        tokio::select! {
            r = &mut task => break r,
            _ = tick.tick() => {
                if let Some(c) = &proxy.cache {
                    let line = format!("{{\"progress\":{}}}\n", crate::proxy::writeback::progress_json(c));
                    wr.write_all(line.as_bytes()).await?;
                }
            }
        }
    };
    Ok(match done {
        Ok(Ok((rep, dropped))) => format!(
            "{{\"ok\":{},\"written\":{},\"files\":{},\"dropped_files\":{},\"failed\":{},\"dropped\":{dropped}}}",
            rep.failed.is_empty(),
            rep.written,
            rep.files,
            rep.dropped_files,
            json_strings(&rep.failed)
        ),
        Ok(Err(e)) => format!("{{\"ok\":false,\"error\":{}}}", json_str(&e)),
        Err(e) => format!("{{\"ok\":false,\"error\":{}}}", json_str(&e.to_string())),
    })
}

/// A JSON string (Rust's debug escaping is JSON-compatible for what we print).
fn json_str(s: &str) -> String {
    format!("{s:?}")
}

fn json_strings(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(",")
    )
}

async fn status(p: &Proxy) -> String {
    let m = &p.metrics;
    let calls: Vec<String> = m
        .nfs
        .iter()
        .enumerate()
        .filter(|(_, c)| c.load(Relaxed) > 0)
        .map(|(i, c)| format!("\"{}\":{}", Proc(i as u32).name(), c.load(Relaxed)))
        .collect();
    let cache = match &p.cache {
        Some(c) => {
            let c2 = c.clone();
            let dirty = tokio::task::spawn_blocking(move || c2.dirty_summary())
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default();
            let (failed_banks, renewed_banks) = c.banks_failed_renewed();
            format!(
                "{{\"enabled\":true,\"write_policy\":\"{}\",\"hits\":{},\"misses\":{},\"partial_hits\":{},\"fills\":{},\
                 \"local_writes\":{},\"write_throughs\":{},\"set_evictions\":{},\
                 \"metadata_hits\":{},\"local_truncations\":{},\"truncations_pending\":{},\"syncs\":{},\"failed_banks\":{},\"renewed_banks\":{},\"zero_reads\":{},\"dirty_bytes\":{},\"dirty_blocks\":{},\"dirty_files\":{},\"flush\":{}}}",
                c.policy.name(),
                c.hits.load(Relaxed),
                c.misses.load(Relaxed),
                c.partial_hits.load(Relaxed),
                c.fills.load(Relaxed),
                c.local_writes.load(Relaxed),
                c.write_throughs.load(Relaxed),
                c.evictions.load(Relaxed),
                c.names.as_ref().map_or(0, |n| n.hits.load(Relaxed)),
                c.local_truncations.load(Relaxed),
                c.cut_files().len(),
                c.syncs(),
                failed_banks,
                renewed_banks,
                c.zero_reads(),
                dirty.bytes,
                dirty.blocks,
                dirty.files,
                crate::proxy::writeback::progress_json(c)
            )
        }
        None => "{\"enabled\":false}".into(),
    };
    let up = |u: &crate::upstream::Upstream| {
        format!(
            "{{\"endpoint\":\"{}\",\"calls\":{},\"resent\":{},\"probed\":{},\"abandoned\":{},\"connects\":{}}}",
            u.endpoint(),
            u.stats.calls.load(Relaxed),
            u.stats.resent.load(Relaxed),
            u.stats.probed.load(Relaxed),
            u.stats.abandoned.load(Relaxed),
            u.stats.connects.load(Relaxed)
        )
    };
    let server = match &p.policy {
        Some(pol) => format!(
            "{{\"enabled\":true,\"refused\":{},\"issued_handles\":{},\"file_fetches\":{},\
             \"file_stores\":{},\"file_raw_bytes\":{},\"file_wire_bytes\":{}}}",
            m.refused.load(Relaxed),
            pol.issued(),
            m.file_fetches.load(Relaxed),
            m.file_stores.load(Relaxed),
            m.file_raw_bytes.load(Relaxed),
            m.file_wire_bytes.load(Relaxed)
        ),
        None => "{\"enabled\":false}".to_string(),
    };
    let workset = {
        let rec = p.cache.as_ref().and_then(|c| c.workset.as_ref());
        let t = rec.map(|r| r.totals()).unwrap_or_default();
        format!(
            "{{\"recording\":{},\"files\":{},\"ranges\":{},\"bytes\":{},\
             \"files_not_recorded\":{},\"truncated\":{}}}",
            rec.is_some(),
            t.files,
            t.ranges,
            t.bytes,
            t.files_not_recorded,
            t.truncated
        )
    };
    let meta = match p.cache.as_ref().and_then(|c| c.meta.get()) {
        Some(mt) => {
            let s = &mt.stats;
            let whole = match &mt.whole {
                Some(w) => {
                    let (files, bytes) = w.usage();
                    let ws = &w.stats;
                    format!(
                        "{{\"files\":{files},\"bytes\":{bytes},\"fetches\":{},\"failed\":{},\
                         \"raw_bytes\":{},\"wire_bytes\":{},\"reads\":{},\"evicted\":{},\
                         \"working_sets\":{},\"working_set_waits\":{}}}",
                        ws.fetches.load(Relaxed),
                        ws.failed.load(Relaxed),
                        ws.raw_bytes.load(Relaxed),
                        ws.wire_bytes.load(Relaxed),
                        ws.reads.load(Relaxed),
                        ws.evicted.load(Relaxed),
                        ws.working_sets.load(Relaxed),
                        ws.working_set_waits.load(Relaxed)
                    )
                }
                None => "null".into(),
            };
            format!(
                "{{\"enabled\":true,\"file_channel\":{},\"sidecars_found\":{},\"sidecars_absent\":{},\
                 \"sidecars_stale\":{},\"sidecars_bad\":{},\"zero_reads\":{},\"zero_bytes\":{},\
                 \"partial_reads\":{},\"uploads\":{},\"upload_bytes\":{},\"whole\":{whole},\
                 \"workset\":{workset}}}",
                mt.has_channel(),
                s.sidecars_found.load(Relaxed),
                s.sidecars_absent.load(Relaxed),
                s.sidecars_stale.load(Relaxed),
                s.sidecars_bad.load(Relaxed),
                s.zero_reads.load(Relaxed),
                s.zero_bytes.load(Relaxed),
                s.partial_reads.load(Relaxed),
                s.uploads.load(Relaxed),
                s.upload_bytes.load(Relaxed)
            )
        }
        // Recording works without sidecars: its counters are shown either way.
        None => format!("{{\"enabled\":false,\"workset\":{workset}}}"),
    };
    format!(
        "{{\"ok\":true,\"connections\":{},\"calls\":{{{}}},\"mount_calls\":{},\"garbage_args\":{},\
         \"cache\":{cache},\"meta\":{meta},\"server\":{server},\"upstream\":{{\"nfs\":{},\"mount\":{}}}}}",
        m.connections.load(Relaxed),
        calls.join(","),
        m.mount.load(Relaxed),
        m.garbage_args.load(Relaxed),
        up(&p.nfs),
        up(&p.mount)
    )
}

/// The client side: sends one request line, passes progress lines to `progress`, and
/// returns the final reply line.
pub async fn request(
    socket: &Path,
    line: &str,
    mut progress: impl FnMut(&str),
) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket).await?;
    s.write_all(line.as_bytes()).await?;
    s.write_all(b"\n").await?;
    let mut r = BufReader::new(s);
    loop {
        let mut reply = String::new();
        if r.read_line(&mut reply).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the proxy closed the control connection without an answer",
            ));
        }
        let reply = reply.trim_end();
        if reply.starts_with("{\"progress\"") {
            progress(reply);
            continue;
        }
        return Ok(reply.to_string());
    }
}

/// Why `gridvfs workset` got no working set.
#[derive(Debug, thiserror::Error)]
pub enum WorksetError {
    #[error("cannot reach the control socket {}: {source}", socket.display())]
    Unreachable {
        socket: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The proxy answered `"ok":false` (recording off, no such path, nothing recorded).
    #[error("{0}")]
    Refused(String),
    #[error("the proxy's answer is not a working set ({why}): {line}")]
    Garbled { why: String, line: String },
}

/// The client side of `workset PATH`: asks the proxy at `socket` and decodes its answer.
pub async fn workset_request(
    socket: &Path,
    path: &str,
) -> Result<crate::proxy::workset::Dump, WorksetError> {
    let line = request(socket, &format!("workset {path}"), |_| {})
        .await
        .map_err(|source| WorksetError::Unreachable {
            socket: socket.to_path_buf(),
            source,
        })?;
    let garbled = |why: String| WorksetError::Garbled {
        why,
        line: line.chars().take(200).collect(),
    };
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| garbled(e.to_string()))?;
    if v["ok"] != serde_json::Value::Bool(true) {
        return Err(match v["error"].as_str() {
            Some(e) => WorksetError::Refused(e.to_string()),
            None => garbled("no \"ok\":true and no error".into()),
        });
    }
    serde_json::from_value(v).map_err(|e| garbled(e.to_string()))
}
