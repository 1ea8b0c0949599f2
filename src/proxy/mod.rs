//! The front door: accepts client connections on one port that serves NFS v3, MOUNT v3
//! and a portmapper, routes each call (`dispatch`), forwards it to the next hop
//! (`crate::upstream`), and sends the reply back on the connection it came from (`conn`).

pub mod cached;
mod conn;
pub mod dispatch;
pub mod drc;
pub mod meta;
pub mod names;
pub mod portmap;
pub mod prefetch;
pub mod upload;
pub mod wholefile;
pub mod workset;
pub mod writeback;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::Upstream;
use crate::upstream::calls::Cred;

/// How long a completed non-idempotent call's reply is kept for retransmissions. The
/// Linux client's TCP retransmit timeout is 60 s (timeo=600); twice that covers one retry.
const DRC_TTL: std::time::Duration = std::time::Duration::from_secs(120);
/// At most this many completed replies are kept (each a few hundred bytes).
const DRC_ENTRIES: usize = 16_384;

/// Shared state of a running proxy.
pub struct Proxy {
    pub cfg: Config,
    /// Port we actually listen on (GETPORT answers with it).
    pub port: u16,
    pub nfs: Arc<Upstream>,
    pub mount: Arc<Upstream>,
    pub metrics: Metrics,
    /// Recognises retransmitted calls (see `drc`).
    pub drc: drc::Drc,
    /// Bounds the bytes held by calls in progress (`listen.max_buffered`).
    pub buffers: Budget,
    /// The block cache, if configured.
    pub cache: Option<Arc<cached::CacheLayer>>,
    /// Exports mounted through this proxy: (path, root handle), newest last (bounded).
    pub mounts: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
    /// The server role's identity mapping and export confinement, if configured.
    pub policy: Option<Arc<crate::server::Policy>>,
}

/// Mounted exports remembered for `gridvfs flush --file`.
const MAX_MOUNTS: usize = 64;

/// A byte budget shared by all connections, in KiB units of a semaphore. A call larger
/// than the whole budget is charged the whole budget, so it still runs (alone).
pub struct Budget {
    sem: Arc<Semaphore>,
    kib: u32,
}

impl Budget {
    pub fn new(bytes: usize) -> Budget {
        let kib = (bytes / 1024).clamp(1, u32::MAX as usize >> 4) as u32;
        Budget {
            sem: Arc::new(Semaphore::new(kib as usize)),
            kib,
        }
    }

    pub async fn charge(
        &self,
        bytes: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError> {
        let units = (bytes.div_ceil(1024) as u64).clamp(1, self.kib as u64) as u32;
        self.sem.clone().acquire_many_owned(units).await
    }
}

impl Proxy {
    /// Serves one already authenticated client stream (an SSH channel of the built-in
    /// server) as `account`, until it closes or the proxy stops.
    pub async fn serve_stream(
        self: Arc<Self>,
        duplex: crate::transport::Duplex,
        peer: SocketAddr,
        account: Arc<crate::config::Account>,
        shutdown: watch::Receiver<bool>,
    ) {
        Metrics::inc(&self.metrics.connections);
        conn::serve(self, duplex, peer, Some(account), shutdown).await;
    }

    /// Writes back all dirty data (or one file's); `drop` then forgets the clean blocks.
    /// Without a write-back cache there is nothing to write: an empty report.
    pub async fn flush(
        &self,
        file: Option<Vec<u8>>,
        drop: bool,
    ) -> Result<(writeback::FlushReport, u64), String> {
        let Some(c) = self.cache.clone() else {
            return Ok((writeback::FlushReport::default(), 0));
        };
        let report = writeback::flush(&c, &self.nfs, file).await?;
        let dropped = if drop {
            tokio::task::spawn_blocking(move || c.drop_all())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
        } else {
            0
        };
        Ok((report, dropped))
    }

    /// Remembers a mounted export's root handle (from a MNT reply).
    pub fn mounted(&self, path: &str, root: &[u8]) {
        let mut m = self.mounts.lock().expect("mounts lock");
        m.retain(|(p, _)| p != path);
        if m.len() >= MAX_MOUNTS {
            m.remove(0);
        }
        m.push((path.to_string(), root.to_vec()));
    }

    /// The handle of a file named by its path as a client mounted it
    /// (`/export/dir/file`), or relative to the only export mounted; LOOKUPs from the
    /// export's root with the last writer's credential.
    pub async fn resolve(&self, path: &str) -> Result<Vec<u8>, String> {
        self.resolve_as(path, None).await
    }

    /// [`Proxy::resolve`] with the LOOKUPs made as `cred` (None: the last writer's).
    pub async fn resolve_as(
        &self,
        path: &str,
        cred: Option<crate::upstream::calls::Cred>,
    ) -> Result<Vec<u8>, String> {
        let Some(cache) = &self.cache else {
            return Err("no cache configured".into());
        };
        let (root, rel) = {
            let m = self.mounts.lock().expect("mounts lock");
            let under = |export: &str| -> Option<String> {
                let e = export.trim_end_matches('/');
                let rest = path.strip_prefix(e)?;
                (rest.is_empty() || rest.starts_with('/')).then(|| rest.to_string())
            };
            let best = m
                .iter()
                .filter_map(|(e, fh)| under(e).map(|r| (e.len(), fh.clone(), r)))
                .max_by_key(|(n, _, _)| *n);
            match best {
                Some((_, fh, r)) => (fh, r),
                None if !path.starts_with('/') && m.len() == 1 => {
                    (m[0].1.clone(), path.to_string())
                }
                None => {
                    return Err(format!(
                        "{path}: not under an export mounted through this proxy (mounted: {})",
                        m.iter()
                            .map(|(e, _)| e.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        };
        writeback::lookup_path(cache, &self.nfs, &root, &rel, cred).await
    }

    /// Queues the transfer that the first READ of the file at `path` (as
    /// [`Proxy::resolve`] takes it) would start — its whole-file fetch or its working
    /// set, as its sidecar says — as `cred` (`gridvfs prefetch`; see
    /// [`meta::MetaLayer::start_fetch`]). Middleware calls it as a session begins, so
    /// that the link is busy while the VM is being set up.
    pub async fn prefetch(&self, path: &str, cred: Cred) -> Result<meta::Started, String> {
        let Some(cache) = &self.cache else {
            return Err("no cache configured".into());
        };
        let Some(m) = cache.meta.get() else {
            return Err("no [meta] section: this proxy does not use sidecars".into());
        };
        m.warm_file_session(); // its handshake beside the LOOKUPs below
        let trimmed = path.trim_end_matches('/');
        let (parent, name) = match trimmed.rsplit_once('/') {
            Some((p, n)) => (if p.is_empty() { "/" } else { p }, n),
            None => ("", trimmed),
        };
        if name.is_empty() || name == "." || name == ".." {
            return Err(format!("{path}: not a file's path"));
        }
        let dir = self.resolve_as(parent, Some(cred.clone())).await?;
        let (fh, attr) = writeback::lookup_name(cache, &self.nfs, &dir, name, &cred)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let attr = match attr {
            Some(a) => a,
            None => writeback::attributes(cache, &self.nfs, &fh, Some(cred.clone()))
                .await
                .map_err(|e| format!("{path}: {e}"))?,
        };
        m.learn_name(&fh, &dir, name.as_bytes());
        Ok(m.start_fetch(cache, &fh, &attr, &cred).await)
    }

    /// What `[meta] record_working_set` recorded of the file at `path` (as
    /// [`Proxy::resolve`] takes it), clipped to the file's size as its clients see it.
    /// The LOOKUPs and the GETATTR go as the last reader recorded (a profiling session
    /// may have written nothing, so there may be no writer's credential to use).
    pub async fn working_set(&self, path: &str) -> Result<workset::Dump, String> {
        let Some((cache, rec)) = self
            .cache
            .as_ref()
            .and_then(|c| Some((c, c.workset.as_ref()?)))
        else {
            return Err("record_working_set is off in this proxy's config".into());
        };
        let cred = rec.reader();
        if cred.is_none() {
            // No READ at all yet: nothing to find, and no credential to look PATH up with.
            let never = workset::NotRecorded::NeverRead;
            return Err(format!("{path}: nothing recorded: {never}"));
        }
        let fh = self.resolve_as(path, cred.clone()).await?;
        let got = rec
            .get(&fh)
            .map_err(|e| format!("{path}: nothing recorded: {e}"))?;
        let attr = writeback::attributes(cache, &self.nfs, &fh, cred)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let (ranges, bytes) = workset::clip(&got.ranges, attr.size);
        Ok(workset::Dump {
            path: path.to_string(),
            size: attr.size,
            ranges: ranges.iter().map(|r| [r.start, r.end - r.start]).collect(),
            bytes,
            truncated: got.truncated,
        })
    }

    /// Closes the cache cleanly (after the last call), so the next start finds it warm.
    pub async fn close_cache(&self) {
        let Some(c) = self.cache.clone() else { return };
        use std::sync::atomic::Ordering::Relaxed;
        let closing = c.clone();
        match tokio::task::spawn_blocking(move || closing.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(side = "cache", error = %e, "cache not closed cleanly"),
            Err(e) => warn!(error = %e, "cache close task failed"),
        }
        info!(
            cache_hits = c.hits.load(Relaxed),
            cache_misses = c.misses.load(Relaxed),
            cache_fills = c.fills.load(Relaxed),
            cache_local_writes = c.local_writes.load(Relaxed),
            cache_write_throughs = c.write_throughs.load(Relaxed),
            cache_metadata_hits = c.names.as_ref().map_or(0, |n| n.hits.load(Relaxed)),
            cache_local_truncations = c.local_truncations.load(Relaxed),
            cache_syncs = c.syncs(),
            cache_zero_reads = c.zero_reads(),
            "cache counters"
        );
    }
}

/// A bound, not yet serving proxy.
pub struct Bound {
    listener: TcpListener,
    proxy: Arc<Proxy>,
}

impl Bound {
    /// Binds the listening socket and starts the upstream links (they connect in the
    /// background; calls wait for them).
    pub async fn bind(cfg: Config) -> std::io::Result<Bound> {
        let listener = TcpListener::bind(cfg.listen.addr).await?;
        let port = listener.local_addr()?.port();
        let max = cfg.listen.max_record;
        let max_buffered = cfg.listen.max_buffered;
        let cache = match cfg.cache.clone() {
            Some(c) => {
                // Reading the tag files is blocking I/O: off the reactor.
                let dir = c.dir.clone();
                let mut opened = tokio::task::spawn_blocking(move || cached::CacheLayer::open(&c))
                    .await
                    .map_err(std::io::Error::other)?
                    .map_err(|e| {
                        std::io::Error::other(format!(
                            "cannot open the cache in {}: {e}",
                            dir.display()
                        ))
                    })?;
                opened.workset = cfg.record_working_set.then(workset::Recorder::new);
                Some(Arc::new(opened))
            }
            None => None,
        };
        let policy = match &cfg.server {
            Some(s) => {
                let s = s.clone();
                let dir = s.state_dir.clone();
                let p = tokio::task::spawn_blocking(move || crate::server::Policy::open(&s))
                    .await
                    .map_err(std::io::Error::other)?
                    .map_err(|e| {
                        std::io::Error::other(format!(
                            "cannot open the server state in {}: {e}",
                            dir.display()
                        ))
                    })?;
                Some(Arc::new(p))
            }
            None => None,
        };
        let (nfs_dialer, mount_dialer) = crate::transport::dialers(&cfg.upstream);
        let connector = match &nfs_dialer {
            crate::transport::Dialer::Ssh { connector, .. } => Some(connector.clone()),
            crate::transport::Dialer::Tcp(_) => None,
        };
        let nfs = Upstream::start("nfs", nfs_dialer, &cfg.upstream, max);
        let mount = Upstream::start("mount", mount_dialer, &cfg.upstream, max);
        if let (Some(cache), Some(m)) = (&cache, &cfg.meta) {
            let connector = connector.clone();
            let layer = meta::MetaLayer::new(m, connector, nfs.clone()).map_err(|e| {
                std::io::Error::other(format!("cannot open the whole-file directory: {e}"))
            })?;
            let _ = cache.meta.set(Arc::new(layer));
        }
        Ok(Bound {
            listener,
            proxy: Arc::new(Proxy {
                cfg,
                port,
                nfs,
                mount,
                metrics: Metrics::default(),
                drc: drc::Drc::new(DRC_TTL, DRC_ENTRIES),
                buffers: Budget::new(max_buffered),
                cache,
                mounts: std::sync::Mutex::default(),
                policy,
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound socket has an address")
    }

    pub fn proxy(&self) -> Arc<Proxy> {
        self.proxy.clone()
    }

    /// Serves until `shutdown` turns true, then stops accepting and lets open
    /// connections finish the calls they have in flight.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) {
        let Bound { listener, proxy } = self;
        let conns = Arc::new(Semaphore::new(proxy.cfg.listen.max_connections));
        let mut tasks = tokio::task::JoinSet::new();
        info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            nfs = %proxy.nfs.endpoint(), mount = %proxy.mount.endpoint(), "serving");
        loop {
            let Ok(permit) = conns.clone().acquire_owned().await else {
                break;
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => break,
            };
            while tasks.try_join_next().is_some() {}
            match accepted {
                Ok((stream, peer)) => {
                    // In the server role, plain TCP clients (e.g. tunnelled by a stock
                    // sshd) run as `server.tcp_account`, or are not served at all.
                    let account = match &proxy.policy {
                        None => None,
                        Some(p) => match p.tcp_account() {
                            Some(a) => Some(a),
                            None => {
                                warn!(side = "client", %peer, "TCP client refused: no server.tcp_account is configured");
                                continue;
                            }
                        },
                    };
                    Metrics::inc(&proxy.metrics.connections);
                    info!(%peer, "client connected");
                    let _ = stream.set_nodelay(true);
                    let proxy = proxy.clone();
                    let sd = shutdown.clone();
                    tasks.spawn(async move {
                        let stream: crate::transport::BoxStream = Box::pin(stream);
                        conn::serve(proxy, stream.into(), peer, account, sd).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        drop(listener);
        info!(
            connections = tasks.len(),
            "stopped accepting; draining connections"
        );
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(std::time::Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            warn!("connections still busy after 10 s; closing them");
        }
        info!(calls = %proxy.metrics.nfs_summary(), "proxy stopped");
    }
}
