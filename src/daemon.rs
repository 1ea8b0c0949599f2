//! `gridvfs run`: logging, binding, the ready file, rpcbind registration, signals.
//!
//! Signals (paper §3.2.1, middleware control of the cache):
//! - SIGTERM, SIGINT: stop accepting new connections, let calls in flight finish, write
//!   back dirty data (`cache.flush_on_exit`; a second signal skips it), exit 0.
//! - SIGUSR1: write back all dirty data; blocks stay cached, clean.
//! - SIGUSR2: write back, then drop the whole cache.

use std::path::Path;
use std::sync::Arc;
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
/// Bytes an SSH channel may have sent that the server proxy has not read yet (see
/// `ssh::pump`): above what a gridvfs client has in flight on one of its (at least 2)
/// channels with the default `upstream.max_in_flight` (256 calls of at most 1 MiB,
/// spread over the channels). Channels per session are capped too (`ssh::server`).
const SSH_MAX_UNREAD: usize = 192 << 20;

/// Takes the proxy's registrations out of rpcbind and puts back the ones it replaced.
async fn unregister(registered: Option<&[portmap::Rpcb]>, socket: &Path) {
    let Some(previous) = registered else {
        return;
    };
    match tokio::time::timeout(RPCBIND_TIMEOUT, portmap::unregister(socket, previous)).await {
        Ok(Ok(())) if previous.is_empty() => {}
        Ok(Ok(())) => info!(
            restored = previous.len(),
            "rpcbind's earlier registrations put back"
        ),
        Ok(Err(e)) => warn!(error = %e, "could not unregister from rpcbind"),
        Err(_) => warn!("rpcbind did not answer the unregistration"),
    }
}

/// Runs a write-back in the background (signals must not wait for it); logs the result.
fn spawn_flush(proxy: &std::sync::Arc<crate::proxy::Proxy>, drop: bool) {
    let p = proxy.clone();
    tokio::spawn(async move {
        match p.flush(None, drop).await {
            Ok((rep, dropped)) => {
                if !rep.failed.is_empty() {
                    warn!(failed = ?rep.failed, "some files were not written back; their data stays in the cache");
                }
                if drop {
                    info!(blocks = dropped, "cache dropped");
                }
            }
            Err(e) => warn!(side = "cache", error = %e, "write-back failed"),
        }
    });
}

/// Installs the global tracing subscriber. `RUST_LOG` overrides `log.level`.
pub fn init_logging(cfg: &Config) {
    // russh logs "Maximum packet size (262144) should not larger than a TCP packet" at
    // ERROR for every session it makes (an SSH packet is not a TCP segment; we ask for
    // 256 KiB packets to cut per-packet work). That line comes from `russh::client`
    // itself; its submodules (kex, encrypted: real protocol errors) keep logging.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{},russh::client=off,russh::client::encrypted=warn,russh::client::kex=warn",
            cfg.log.level
        ))
    });
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
    // The server role's SSH server: bound now, so its address is in the ready file.
    let ssh_listener = match cfg.server.as_ref().and_then(|s| s.ssh.as_ref()) {
        Some(s) => {
            let l = tokio::net::TcpListener::bind(s.listen)
                .await
                .with_context(|| format!("cannot listen for SSH on {}", s.listen))?;
            Some((l, s.clone()))
        }
        None => None,
    };
    let ssh_addr = ssh_listener.as_ref().and_then(|(l, _)| l.local_addr().ok());
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
    let ssh_task = match ssh_listener {
        Some((l, s)) => {
            let opts = crate::ssh::server::SshServerOptions {
                host_key: s.host_key.clone(),
                authorized_keys: s.authorized_keys.clone(),
                window: s.window,
                subsystems: vec![
                    crate::ssh::SUBSYSTEM.into(),
                    crate::meta::channel::SUBSYSTEM.into(),
                ],
                max_unread: SSH_MAX_UNREAD,
                login_grace: crate::ssh::server::LOGIN_GRACE,
            };
            // Fail now (exit 1 with the reason) rather than refuse every login later.
            crate::ssh::keys::load_private(&s.host_key).with_context(|| {
                format!(
                    "server.ssh.host_key: make one with `gridvfs keygen --out {}`",
                    s.host_key.display()
                )
            })?;
            let p = proxy.clone();
            let sd = rx.clone();
            let on_channel: crate::ssh::server::OnChannel = Arc::new(
                move |duplex: crate::transport::Duplex, peer| {
                    let Some(policy) = &p.policy else { return };
                    match policy.account_for_key(&peer.key_fingerprint) {
                        Some(account) => {
                            if peer.subsystem == crate::meta::channel::SUBSYSTEM {
                                tokio::spawn(crate::server::filechan::serve(
                                    p.clone(),
                                    duplex.stream,
                                    account,
                                    peer.addr,
                                ));
                                return;
                            }
                            info!(peer = %peer.addr, key = %peer.key_fingerprint, account = %account.name,
                            "ssh channel: serving");
                            tokio::spawn(p.clone().serve_stream(
                                duplex,
                                peer.addr,
                                account,
                                sd.clone(),
                            ));
                        }
                        None => {
                            warn!(side = "client", peer = %peer.addr, key = %peer.key_fingerprint,
                        "ssh channel refused: the key is authorized but no [[server.account]] lists it (or \"*\")")
                        }
                    }
                },
            );
            let sd = rx.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = crate::ssh::server::serve(l, opts, on_channel, sd).await {
                    warn!(error = %e, "ssh server stopped");
                }
            }))
        }
        None => None,
    };
    let mut server = tokio::spawn(bound.serve(rx));
    let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?;
    // Last, once nothing else can fail: rpcbind is pointed at us (and put back if we
    // exit), then the ready file says we serve.
    let registered = if register {
        let previous =
            tokio::time::timeout(RPCBIND_TIMEOUT, portmap::register(&rpcbind_socket, addr))
                .await
                .map_err(|_| anyhow::anyhow!("rpcbind did not answer in {RPCBIND_TIMEOUT:?}"))
                .and_then(|r| r.map_err(anyhow::Error::from))
                .context("listen.register_rpcbind is on, but registration failed")?;
        info!(socket = %rpcbind_socket.display(), replaced = previous.len(),
            "registered NFS v3 and MOUNT v3 with rpcbind");
        Some(previous)
    } else {
        None
    };
    if let Some(p) = ready_file {
        let tmp = p.with_extension("tmp");
        let text = match ssh_addr {
            Some(a) => format!("{addr}\nssh={a}\n"),
            None => addr.to_string(),
        };
        let written = std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, p))
            .with_context(|| format!("cannot write ready file {}", p.display()));
        if written.is_err() {
            unregister(registered.as_deref(), &rpcbind_socket).await;
        }
        written?;
    }

    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = tick.tick() => debug!(calls = %proxy.metrics.nfs_summary(), "per-procedure counts"),
            _ = usr1.recv() => {
                info!("SIGUSR1: writing back dirty data");
                spawn_flush(&proxy, false);
            }
            _ = usr2.recv() => {
                info!("SIGUSR2: writing back dirty data, then dropping the cache");
                spawn_flush(&proxy, true);
            }
            r = &mut server => {
                unregister(registered.as_deref(), &rpcbind_socket).await;
                r.context("server task failed")?;
                return Ok(());
            }
        }
    }
    let _ = tx.send(true);
    // A second signal while draining stops at once.
    let mut hurry = false;
    tokio::select! {
        r = &mut server => if let Err(e) = r { warn!(error = %e, "server task ended abnormally") },
        _ = term.recv() => { hurry = true; warn!("second signal: not waiting for connections to drain") },
        _ = int.recv() => { hurry = true; warn!("second signal: not waiting for connections to drain") },
    }
    let flush_on_exit = cfg.cache.as_ref().is_some_and(|c| {
        c.flush_on_exit && c.write_policy == crate::config::WritePolicy::WriteBack
    });
    if flush_on_exit && !hurry {
        info!(
            "writing back dirty data before exit (a second signal skips this; the data stays in the cache)"
        );
        tokio::select! {
            r = proxy.flush(None, false) => match r {
                Ok((rep, _)) if rep.failed.is_empty() => {}
                Ok((rep, _)) => warn!(failed = ?rep.failed, "some files were not written back; their data stays in the cache"),
                Err(e) => warn!(error = %e, "write-back at exit failed; the data stays in the cache"),
            },
            _ = term.recv() => warn!("second signal: write-back skipped; dirty data stays in the cache"),
            _ = int.recv() => warn!("second signal: write-back skipped; dirty data stays in the cache"),
        }
    }
    proxy.close_cache().await;
    unregister(registered.as_deref(), &rpcbind_socket).await;
    if let Some(p) = ready_file {
        let _ = std::fs::remove_file(p);
    }
    if let Some(t) = ssh_task {
        t.abort();
    }
    if let (Some(task), Some(path)) = (control, &cfg.control_socket) {
        task.abort();
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
