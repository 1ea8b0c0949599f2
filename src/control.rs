//! The control socket: how middleware asks a running proxy for its state and for a flush
//! (paper §3.2.1: middleware-driven consistency), besides the signals.
//!
//! A Unix stream socket (`[control] socket`), one request line, one JSON reply line:
//!
//! - `status` → `{"ok":true,"calls":{...},"cache":{...},"upstream":{...}}`
//! - `flush` → write back all dirty data, answer when done (the cache is write-through in
//!   this build: nothing is dirty, the answer is immediate: `{"ok":true,"written":0}`)
//! - `flush --drop` → write back, then drop the whole cache: `{"ok":true,"dropped":N}`
//!
//! `gridvfs status --socket P` and `gridvfs flush [--drop] --socket P` are the clients.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::nfs3::Proc;
use crate::proxy::Proxy;

/// Longest request line accepted.
const MAX_LINE: usize = 256;

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
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(MAX_LINE as u64);
    rd.read_line(&mut line).await?;
    let reply = match line.trim() {
        "status" => status(proxy),
        "flush" => {
            info!("control: flush");
            "{\"ok\":true,\"written\":0}".to_string()
        }
        "flush --drop" => {
            info!("control: flush --drop");
            drop_cache(proxy).await
        }
        other => format!(
            "{{\"ok\":false,\"error\":\"unknown request {:?}: use status, flush or flush --drop\"}}",
            other.chars().take(40).collect::<String>()
        ),
    };
    wr.write_all(reply.as_bytes()).await?;
    wr.write_all(b"\n").await?;
    wr.shutdown().await
}

async fn drop_cache(proxy: &Arc<Proxy>) -> String {
    let Some(c) = proxy.cache.clone() else {
        return "{\"ok\":true,\"dropped\":0,\"cache\":false}".into();
    };
    match tokio::task::spawn_blocking(move || c.drop_all()).await {
        Ok(Ok(n)) => format!("{{\"ok\":true,\"dropped\":{n}}}"),
        Ok(Err(e)) => format!("{{\"ok\":false,\"error\":{:?}}}", e.to_string()),
        Err(e) => format!("{{\"ok\":false,\"error\":{:?}}}", e.to_string()),
    }
}

fn status(p: &Proxy) -> String {
    let m = &p.metrics;
    let calls: Vec<String> = m
        .nfs
        .iter()
        .enumerate()
        .filter(|(_, c)| c.load(Relaxed) > 0)
        .map(|(i, c)| format!("\"{}\":{}", Proc(i as u32).name(), c.load(Relaxed)))
        .collect();
    let cache = match &p.cache {
        Some(c) => format!(
            "{{\"enabled\":true,\"hits\":{},\"misses\":{},\"fills\":{},\"dirty_bytes\":0}}",
            c.hits.load(Relaxed),
            c.misses.load(Relaxed),
            c.fills.load(Relaxed)
        ),
        None => "{\"enabled\":false}".into(),
    };
    let up = |u: &crate::upstream::Upstream| {
        format!(
            "{{\"endpoint\":\"{}\",\"calls\":{},\"resent\":{},\"connects\":{}}}",
            u.endpoint(),
            u.stats.calls.load(Relaxed),
            u.stats.resent.load(Relaxed),
            u.stats.connects.load(Relaxed)
        )
    };
    format!(
        "{{\"ok\":true,\"connections\":{},\"calls\":{{{}}},\"mount_calls\":{},\"garbage_args\":{},\
         \"cache\":{cache},\"upstream\":{{\"nfs\":{},\"mount\":{}}}}}",
        m.connections.load(Relaxed),
        calls.join(","),
        m.mount.load(Relaxed),
        m.garbage_args.load(Relaxed),
        up(&p.nfs),
        up(&p.mount)
    )
}

/// The client side: sends one request line, returns the reply line.
pub async fn request(socket: &Path, line: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket).await?;
    s.write_all(line.as_bytes()).await?;
    s.write_all(b"\n").await?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).await?;
    Ok(reply.trim_end().to_string())
}
