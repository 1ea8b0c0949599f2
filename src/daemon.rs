//! `gridvfs run`: logging, binding, the ready file, rpcbind registration, signals.
//!
//! SIGTERM and SIGINT stop accepting new connections, let calls in flight finish, and exit 0.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{Config, LogFormat};
use crate::proxy::{Bound, portmap};

/// Keeps freed megabyte buffers in the heap for reuse. By default glibc serves each
/// 1 MiB record with a fresh mmap (or trims the heap after it is freed), so every READ
/// or WRITE record costs page faults and kernel page zeroing; profiles of a sequential
/// read showed ~15% of the proxy's time there. The memory kept is bounded by what the
/// proxy holds at its peak (see `listen.max_buffered`).
pub fn tune_allocator() {
    // SAFETY: mallopt only adjusts allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

/// How long rpcbind may take to answer a registration.
const RPCBIND_TIMEOUT: Duration = Duration::from_secs(5);

async fn unregister(register: bool, socket: &Path, addr: std::net::SocketAddr) {
    if !register {
        return;
    }
    match tokio::time::timeout(RPCBIND_TIMEOUT, portmap::register(socket, addr, false)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "could not unregister from rpcbind"),
        Err(_) => warn!("rpcbind did not answer the unregistration"),
    }
}

/// Installs the global tracing subscriber. `RUST_LOG` overrides `log.level`.
pub fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only on a terminal: log files and collectors get plain `key=value`.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the proxy until SIGTERM/SIGINT. Writes the bound address to `ready_file` once
/// the port accepts connections.
pub async fn run(cfg: Config, ready_file: Option<&Path>) -> anyhow::Result<()> {
    let register = cfg.listen.register_rpcbind;
    let rpcbind_socket = cfg.listen.rpcbind_socket.clone();
    let bound = Bound::bind(cfg.clone())
        .await
        .with_context(|| format!("cannot start serving on {}", cfg.listen.addr))?;
    let addr = bound.local_addr();
    info!(%addr, version = env!("CARGO_PKG_VERSION"), "gridvfs listening");
    // Signals first: a supervisor may stop us as soon as the ready file appears.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    if register {
        tokio::time::timeout(
            RPCBIND_TIMEOUT,
            portmap::register(&rpcbind_socket, addr, true),
        )
        .await
        .map_err(|_| anyhow::anyhow!("rpcbind did not answer in {RPCBIND_TIMEOUT:?}"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .context("listen.register_rpcbind is on, but registration failed")?;
        info!(socket = %rpcbind_socket.display(), "registered NFS v3 and MOUNT v3 with rpcbind");
    }
    if let Some(p) = ready_file {
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string())
            .and_then(|_| std::fs::rename(&tmp, p))
            .with_context(|| format!("cannot write ready file {}", p.display()))?;
    }

    let (tx, rx) = watch::channel(false);
    let proxy = bound.proxy();
    let control = match &cfg.control_socket {
        Some(path) => {
            let l = crate::control::bind(path).with_context(|| {
                format!("cannot listen on the control socket {}", path.display())
            })?;
            info!(socket = %path.display(), "control socket ready");
            Some(tokio::spawn(crate::control::serve(l, proxy.clone())))
        }
        None => None,
    };
    let mut server = tokio::spawn(bound.serve(rx));
    let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?;
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = tick.tick() => debug!(calls = %proxy.metrics.nfs_summary(), "per-procedure counts"),
            // The cache is write-through in this build: nothing is dirty, so SIGUSR1
            // (write back) has nothing to do, and SIGUSR2 (write back, then drop) drops.
            _ = usr1.recv() => info!("SIGUSR1: write-back requested; the cache is write-through, nothing to write back"),
            _ = usr2.recv() => match proxy.cache.clone() {
                Some(c) => {
                    info!("SIGUSR2: dropping the cache");
                    match tokio::task::spawn_blocking(move || c.drop_all()).await {
                        Ok(Ok(n)) => info!(blocks = n, "cache dropped"),
                        Ok(Err(e)) => warn!(side = "cache", error = %e, "dropping the cache failed"),
                        Err(e) => warn!(error = %e, "cache drop task failed"),
                    }
                }
                None => info!("SIGUSR2: no cache configured"),
            },
            r = &mut server => {
                unregister(register, &rpcbind_socket, addr).await;
                r.context("server task failed")?;
                return Ok(());
            }
        }
    }
    let _ = tx.send(true);
    // A second signal while draining stops at once.
    tokio::select! {
        r = &mut server => if let Err(e) = r { warn!(error = %e, "server task ended abnormally") },
        _ = term.recv() => warn!("second signal: not waiting for connections to drain"),
        _ = int.recv() => warn!("second signal: not waiting for connections to drain"),
    }
    unregister(register, &rpcbind_socket, addr).await;
    if let Some(p) = ready_file {
        let _ = std::fs::remove_file(p);
    }
    if let (Some(task), Some(path)) = (control, &cfg.control_socket) {
        task.abort();
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
