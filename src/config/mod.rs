//! Configuration: TOML text → `raw` serde structs (unknown keys rejected) → `Config`, a
//! validated value with typed sizes, durations and addresses. `gridvfs check-config` and
//! `gridvfs run` call the same `Config::load`, so a file that checks is a file that runs.
//!
//! Every key, its default and its unit is documented in `docs/config.md`.

mod raw;
pub mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raw::RawConfig;

/// Smallest record limit we accept: a 4 KiB READ/WRITE plus headers must fit.
const MIN_RECORD: u64 = 8 << 10;
/// Largest record limit we accept; bigger only invites memory exhaustion.
const MAX_RECORD: u64 = 64 << 20;

/// Why a configuration was refused. Always the operator's to fix; never retried.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Where the next hop is and how it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Plain TCP: `tcp://host:port` or `host:port`.
    Tcp(String),
    /// An SSH tunnel: `ssh://user@host[:port]` (port 22 by default). How the far end is
    /// reached (gridvfs's own SSH server, or a stock sshd forwarding to a server proxy)
    /// is in `[upstream.ssh]`.
    Ssh {
        user: String,
        host: String,
        port: u16,
    },
}

impl Endpoint {
    fn parse(s: &str) -> Result<Endpoint, String> {
        if let Some(rest) = s.strip_prefix("ssh://") {
            let (user, hostport) = rest.split_once('@').ok_or_else(|| {
                format!("`{s}`: an ssh endpoint needs a user (ssh://user@host:port)")
            })?;
            if user.is_empty() {
                return Err(format!("`{s}`: empty user"));
            }
            let (host, port) = match hostport.rsplit_once(':') {
                Some((h, p)) if !hostport.ends_with(']') => (
                    h,
                    p.parse::<u16>()
                        .map_err(|_| format!("`{s}`: `{p}` is not a port"))?,
                ),
                _ => (hostport, 22),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() || host.contains('/') {
                return Err(format!("`{s}` is not ssh://user@host:port"));
            }
            return Ok(Endpoint::Ssh {
                user: user.to_string(),
                host: host.to_string(),
                port,
            });
        }
        let rest = s.strip_prefix("tcp://").unwrap_or(s);
        if rest.contains("://") {
            return Err(format!(
                "`{s}`: unsupported scheme (use tcp://host:port or ssh://user@host:port)"
            ));
        }
        match rest.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Endpoint::Tcp(rest.to_string()))
            }
            _ => Err(format!("`{s}` is not host:port")),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
            Endpoint::Ssh { user, host, port } if host.contains(':') => {
                write!(f, "ssh://{user}@[{host}]:{port}")
            }
            Endpoint::Ssh { user, host, port } => write!(f, "ssh://{user}@{host}:{port}"),
        }
    }
}

/// How an `ssh://` next hop is reached and trusted (`[upstream.ssh]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshClientConfig {
    /// Our private key (OpenSSH format, not passphrase-protected).
    pub key: PathBuf,
    /// OpenSSH known_hosts file the server's host key is checked against.
    pub known_hosts: PathBuf,
    /// An unknown host key is learnt (appended) instead of refused. A changed one is
    /// always refused.
    pub accept_new: bool,
    /// Where channels go at the far end: `None` = the `gridvfs` subsystem of a gridvfs
    /// server proxy; `Some((host, port))` = a direct-tcpip channel through a stock sshd
    /// to a server proxy listening there (usually its loopback).
    pub forward_to: Option<(String, u16)>,
    /// SSH channel window, bytes.
    pub window: u32,
    /// SSH keepalive interval: a silent peer is declared dead after 3 of them.
    pub keepalive: Duration,
    /// zlib compression of the whole session (RPCs and file channels).
    pub compression: bool,
}

/// The front door: where clients connect.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// NFS, MOUNT and the portmapper all answer here.
    pub addr: SocketAddr,
    /// Largest RPC record (all fragments) read from any peer, checked before allocating.
    pub max_record: usize,
    /// FSINFO rtmax/rtpref/wtmax/wtpref are clamped to this.
    pub max_io: u32,
    /// Requests one client connection may have in progress; reading pauses beyond it.
    pub max_requests_per_conn: usize,
    /// Client connections accepted at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Bytes all calls in progress may hold (requests and expected replies); reading
    /// from clients pauses beyond it. Bounds the proxy's memory whatever the clients do.
    pub max_buffered: usize,
    /// Register NFS v3 and MOUNT v3 at this port with the local rpcbind.
    pub register_rpcbind: bool,
    /// The local rpcbind's Unix socket (registration needs it: rpcbind refuses SET over TCP).
    pub rpcbind_socket: PathBuf,
}

/// The next hop (a server or another gridvfs).
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub nfs: Endpoint,
    pub mount: Endpoint,
    /// Required when either endpoint is `ssh://`.
    pub ssh: Option<SshClientConfig>,
    /// Long-lived connections per endpoint; requests are spread over them.
    pub connections: usize,
    /// Requests in flight to one endpoint at once; callers wait beyond it (backpressure).
    pub max_in_flight: usize,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A call that was the only unanswered one on this many lost connections is failed
    /// (SYSTEM_ERR), so a call that breaks the next hop each time it arrives cannot be
    /// re-sent for ever.
    pub resend_limit: u32,
}

/// The server role (`[server]`): the proxy next to the real NFS server, which maps each
/// authenticated client onto an account and confines it to the configured exports.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Paths a client may MNT (exactly as the NFS server exports them).
    pub exports: Vec<String>,
    /// Where the handles this proxy has issued are kept, so confinement survives a restart.
    pub state_dir: PathBuf,
    /// Account for clients of the plain TCP `[listen]` port (e.g. tunnelled through a
    /// stock sshd); `None` = such clients are refused.
    pub tcp_account: Option<String>,
    /// The built-in SSH server, if any.
    pub ssh: Option<SshServerConfig>,
    pub accounts: Vec<Account>,
}

/// The built-in SSH server (`[server.ssh]`).
#[derive(Debug, Clone)]
pub struct SshServerConfig {
    pub listen: SocketAddr,
    pub host_key: PathBuf,
    pub authorized_keys: PathBuf,
    pub window: u32,
}

/// Who a client's calls run as on the NFS server (`[[server.account]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    /// SHA256 fingerprints (as `ssh-keygen -l` prints them) of the authorized keys that
    /// act as this account; `*` = any authorized key without an account of its own.
    pub keys: Vec<String>,
    pub mapping: Mapping,
    /// Stands in for a uid (gid) the mapping has no entry for, and for root.
    pub squash_uid: u32,
    pub squash_gid: u32,
    /// Whether uid 0 may reach the server (only when the mapping says 0).
    pub allow_root: bool,
    /// AUTH_NONE calls: run as the account (`true`) or refused with AUTH_TOOWEAK.
    pub map_auth_none: bool,
}

/// How an AUTH_SYS credential is rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// Every call runs as this uid, gid and supplementary groups.
    Fixed { uid: u32, gid: u32, gids: Vec<u32> },
    /// uids (and gids) through tables; anything not in them is squashed.
    Table {
        uids: std::collections::BTreeMap<u32, u32>,
        gids: std::collections::BTreeMap<u32, u32>,
    },
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `gridvfs=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

/// The on-disk block cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Bytes of data frames (tags add 128 bytes per frame).
    pub size: u64,
    pub block_size: u32,
    /// Associativity: frames per set.
    pub ways: u32,
    /// Bank files the sets are spread over.
    pub banks: u32,
    pub consistency: Consistency,
    /// LOOKUP, GETATTR, ACCESS and READLINK answered from what the session learnt.
    pub metadata: Metadata,
    pub write_policy: WritePolicy,
    /// SIGTERM/SIGINT write back all dirty data before the proxy exits.
    pub flush_on_exit: bool,
    /// WRITEs in flight to the next hop during a write-back.
    pub writeback_in_flight: usize,
    /// `dir` is another proxy's cache, used read-only (the shared golden-image cache).
    pub shared: bool,
}

/// What the cache does with a client's WRITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePolicy {
    /// Answered from the cache (durable on local disk at COMMIT/FILE_SYNC), written to
    /// the next hop at a flush (paper §3.2.1).
    WriteBack,
    /// Forwarded; the written bytes are kept in the cache for later reads.
    WriteThrough,
    /// Forwarded; cached blocks it touches are dropped.
    ReadOnly,
}

impl WritePolicy {
    pub fn name(self) -> &'static str {
        match self {
            WritePolicy::WriteBack => "write-back",
            WritePolicy::WriteThrough => "write-through",
            WritePolicy::ReadOnly => "read-only",
        }
    }
}

/// When cached blocks are believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// The paper's model: trust the cache until the middleware drops it (SIGUSR2).
    Session,
    /// Close-to-open: a file whose size or mtime changed upstream (seen in any reply,
    /// e.g. the GETATTR a kernel client sends at open) loses its cached blocks.
    Attributes,
}

/// What the cache does with metadata calls (LOOKUP, GETATTR, ACCESS, READLINK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metadata {
    /// Every metadata call goes to the next hop.
    Forward,
    /// Answered from what earlier replies and the session's own namespace changes taught
    /// (`proxy::names`); only with `consistency = "session"`.
    Session,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenConfig,
    pub upstream: UpstreamConfig,
    pub log: LogConfig,
    pub cache: Option<CacheConfig>,
    /// The server role, if this proxy sits next to the real NFS server.
    pub server: Option<ServerConfig>,
    /// The control socket (`gridvfs status`, `gridvfs flush`), if any.
    pub control_socket: Option<PathBuf>,
    /// Sidecars and whole files (needs the cache); None when off.
    pub meta: Option<MetaConfig>,
    /// `[meta] record_working_set`: record the byte ranges clients READ of each file, for
    /// `gridvfs workset` (needs the cache, which sees every READ; works with
    /// `sidecars = false` too, so it is not part of `meta`).
    pub record_working_set: bool,
}

/// What the client side does with metadata sidecars (`[meta]`).
#[derive(Debug, Clone)]
pub struct MetaConfig {
    /// Where whole files fetched over the file channel are kept; None: no whole-file
    /// fetches (a shared cache).
    pub whole_file_dir: Option<PathBuf>,
    /// Bytes of whole files kept at most (least recently used go first).
    pub whole_file_max: u64,
    /// A READ at most this far past what a running whole-file transfer has delivered
    /// waits for it; one farther away is fetched by blocks meanwhile.
    pub wait_ahead: u64,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates TOML text; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        raw.validate(path)
    }
}

impl RawConfig {
    fn validate(self, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        let l = self.listen;
        let addr: SocketAddr = l.addr.parse().map_err(|_| {
            invalid(
                "listen.addr",
                format!("`{}` is not ip:port (e.g. 127.0.0.1:2049)", l.addr),
            )
        })?;
        let max_record = l.max_record.0;
        if !(MIN_RECORD..=MAX_RECORD).contains(&max_record) {
            return Err(invalid(
                "listen.max_record",
                format!("{max_record} bytes is outside {MIN_RECORD}..={MAX_RECORD}"),
            ));
        }
        let max_io = l.max_io.0;
        if !(4096..=(16 << 20)).contains(&max_io) {
            return Err(invalid(
                "listen.max_io",
                format!("{max_io} bytes is outside 4KiB..=16MiB"),
            ));
        }
        if max_io + 4096 > max_record {
            return Err(invalid(
                "listen.max_io",
                format!(
                    "{max_io} bytes does not fit in listen.max_record ({max_record}) with 4 KiB for headers"
                ),
            ));
        }
        let max_buffered = l.max_buffered.0;
        if max_buffered < max_record {
            return Err(invalid(
                "listen.max_buffered",
                format!("{max_buffered} bytes is below listen.max_record ({max_record})"),
            ));
        }
        if l.max_requests_per_conn == 0 || l.max_connections == 0 {
            return Err(invalid(
                "listen.max_requests_per_conn",
                "limits must be at least 1".into(),
            ));
        }
        let u = self.upstream;
        let nfs = Endpoint::parse(&u.nfs).map_err(|m| invalid("upstream.nfs", m))?;
        let mount = match &u.mount {
            Some(m) => Endpoint::parse(m).map_err(|m| invalid("upstream.mount", m))?,
            None => nfs.clone(),
        };
        if u.connections == 0 || u.connections > 64 {
            return Err(invalid(
                "upstream.connections",
                format!("{} is outside 1..=64", u.connections),
            ));
        }
        if u.max_in_flight == 0 {
            return Err(invalid(
                "upstream.max_in_flight",
                "must be at least 1".into(),
            ));
        }
        if u.backoff_min.0 > u.backoff_max.0 || u.backoff_min.0.is_zero() {
            return Err(invalid(
                "upstream.backoff_min",
                "must be non-zero and not above upstream.backoff_max".into(),
            ));
        }
        if !(1..=1000).contains(&u.resend_limit) {
            return Err(invalid(
                "upstream.resend_limit",
                format!("{} is outside 1..=1000", u.resend_limit),
            ));
        }
        let uses_ssh = matches!(nfs, Endpoint::Ssh { .. }) || matches!(mount, Endpoint::Ssh { .. });
        let ssh = match (u.ssh, uses_ssh) {
            (None, true) => {
                return Err(invalid(
                    "upstream.ssh",
                    "an ssh:// next hop needs [upstream.ssh] with key and known_hosts".into(),
                ));
            }
            (None, false) => None,
            (Some(s), _) => Some(validate_ssh_client(s, &invalid)?),
        };
        let server = match self.server {
            None => None,
            Some(s) => Some(validate_server(s, &invalid)?),
        };
        let format = match self.log.format.as_str() {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("`{other}`: use \"human\" or \"json\""),
                ));
            }
        };
        let cache = match self.cache {
            None => None,
            Some(c) => {
                let bs = u32::try_from(c.block_size.0).unwrap_or(u32::MAX);
                crate::cache::layout::Geometry::new(c.size.0, bs, c.ways, c.banks)
                    .map_err(|e| invalid("cache", e.to_string()))?;
                if bs as usize > max_record as usize {
                    return Err(invalid(
                        "cache.block_size",
                        "must not exceed listen.max_record".into(),
                    ));
                }
                let consistency = match c.consistency.as_str() {
                    "session" => Consistency::Session,
                    "attributes" => Consistency::Attributes,
                    other => {
                        return Err(invalid(
                            "cache.consistency",
                            format!("`{other}`: use \"session\" or \"attributes\""),
                        ));
                    }
                };
                let metadata = match c.metadata.as_str() {
                    "forward" => Metadata::Forward,
                    "session" if consistency == Consistency::Session => Metadata::Session,
                    "session" => {
                        return Err(invalid(
                            "cache.metadata",
                            "\"session\" needs consistency = \"session\"".into(),
                        ));
                    }
                    other => {
                        return Err(invalid(
                            "cache.metadata",
                            format!("`{other}`: use \"forward\" or \"session\""),
                        ));
                    }
                };
                let write_policy = match c.write_policy.as_str() {
                    "write-back" => WritePolicy::WriteBack,
                    "write-through" => WritePolicy::WriteThrough,
                    "read-only" => WritePolicy::ReadOnly,
                    other => {
                        return Err(invalid(
                            "cache.write_policy",
                            format!(
                                "`{other}`: use \"write-back\", \"write-through\" or \"read-only\""
                            ),
                        ));
                    }
                };
                if c.writeback_in_flight == 0 || c.writeback_in_flight > 4096 {
                    return Err(invalid(
                        "cache.writeback_in_flight",
                        "must be between 1 and 4096".into(),
                    ));
                }
                if c.shared && write_policy != WritePolicy::ReadOnly {
                    return Err(invalid(
                        "cache.shared",
                        "a shared cache is read-only: set write_policy = \"read-only\"".into(),
                    ));
                }
                Some(CacheConfig {
                    shared: c.shared,
                    consistency,
                    metadata,
                    write_policy,
                    flush_on_exit: c.flush_on_exit,
                    writeback_in_flight: c.writeback_in_flight,
                    dir: c.dir,
                    size: c.size.0,
                    block_size: bs,
                    ways: c.ways,
                    banks: c.banks,
                })
            }
        };
        let raw_meta = self.meta.unwrap_or_default();
        if raw_meta.record_working_set && cache.is_none() {
            return Err(invalid(
                "meta.record_working_set",
                "needs a [cache] section: READs are recorded where the cache sees them".into(),
            ));
        }
        let meta = match &cache {
            Some(c) if raw_meta.sidecars => Some(MetaConfig {
                whole_file_dir: (!c.shared).then(|| {
                    raw_meta
                        .whole_file_dir
                        .clone()
                        .unwrap_or_else(|| c.dir.join("whole"))
                }),
                whole_file_max: raw_meta.whole_file_max.0,
                wait_ahead: raw_meta.wait_ahead.0,
            }),
            _ => None,
        };
        Ok(Config {
            control_socket: self.control.map(|c| c.socket),
            record_working_set: raw_meta.record_working_set,
            meta,
            cache,
            server,
            listen: ListenConfig {
                addr,
                max_record: max_record as usize,
                max_io: max_io as u32,
                max_requests_per_conn: l.max_requests_per_conn,
                max_connections: l.max_connections,
                max_buffered: max_buffered as usize,
                register_rpcbind: l.register_rpcbind,
                rpcbind_socket: l.rpcbind_socket,
            },
            upstream: UpstreamConfig {
                nfs,
                mount,
                ssh,
                connections: u.connections,
                max_in_flight: u.max_in_flight,
                connect_timeout: u.connect_timeout.0,
                backoff_min: u.backoff_min.0,
                backoff_max: u.backoff_max.0,
                resend_limit: u.resend_limit,
            },
            log: LogConfig {
                format,
                level: self.log.level,
            },
        })
    }
}

type Invalid<'a> = dyn Fn(&'static str, String) -> ConfigError + 'a;

/// Smallest SSH window we accept: below it a WAN tunnel crawls.
const MIN_WINDOW: u64 = 64 << 10;

fn window(w: u64, key: &'static str, invalid: &Invalid<'_>) -> Result<u32, ConfigError> {
    if !(MIN_WINDOW..=(1 << 30)).contains(&w) {
        return Err(invalid(key, format!("{w} bytes is outside 64KiB..=1GiB")));
    }
    Ok(w as u32)
}

fn validate_ssh_client(
    s: raw::RawSshClient,
    invalid: &Invalid<'_>,
) -> Result<SshClientConfig, ConfigError> {
    let accept_new = match s.host_key_policy.as_str() {
        "strict" => false,
        "accept-new" => true,
        other => {
            return Err(invalid(
                "upstream.ssh.host_key_policy",
                format!("`{other}`: use \"strict\" or \"accept-new\""),
            ));
        }
    };
    let forward_to = match s.forward_to {
        None => None,
        Some(t) => match t.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {
                Some((h.to_string(), p.parse().expect("checked")))
            }
            _ => {
                return Err(invalid(
                    "upstream.ssh.forward_to",
                    format!("`{t}` is not host:port"),
                ));
            }
        },
    };
    if s.keepalive.0 < Duration::from_secs(1) {
        return Err(invalid(
            "upstream.ssh.keepalive",
            "must be at least 1 s".into(),
        ));
    }
    Ok(SshClientConfig {
        key: s.key,
        known_hosts: s.known_hosts,
        accept_new,
        forward_to,
        window: window(s.window.0, "upstream.ssh.window", invalid)?,
        keepalive: s.keepalive.0,
        compression: s.compression,
    })
}

fn validate_server(s: raw::RawServer, invalid: &Invalid<'_>) -> Result<ServerConfig, ConfigError> {
    if s.exports.is_empty() {
        return Err(invalid(
            "server.exports",
            "list at least one export path".into(),
        ));
    }
    for e in &s.exports {
        if !e.starts_with('/') || e.len() > crate::nfs3::MAX_PATH_LEN {
            return Err(invalid(
                "server.exports",
                format!("`{e}` is not an absolute path"),
            ));
        }
    }
    let mut accounts = Vec::new();
    for a in s.account {
        accounts.push(validate_account(a, invalid)?);
    }
    let mut names = std::collections::BTreeSet::new();
    for a in &accounts {
        if !names.insert(a.name.as_str()) {
            return Err(invalid(
                "server.account.name",
                format!("`{}` is defined twice", a.name),
            ));
        }
    }
    let mut seen = std::collections::BTreeMap::new();
    for a in &accounts {
        for k in &a.keys {
            if let Some(other) = seen.insert(k.as_str(), a.name.as_str()) {
                return Err(invalid(
                    "server.account.keys",
                    format!("`{k}` is listed for both `{other}` and `{}`", a.name),
                ));
            }
        }
    }
    if let Some(t) = &s.tcp_account
        && !names.contains(t.as_str())
    {
        return Err(invalid(
            "server.tcp_account",
            format!("`{t}`: no [[server.account]] has that name"),
        ));
    }
    let ssh = match s.ssh {
        None => None,
        Some(h) => Some(SshServerConfig {
            listen: h.listen.parse().map_err(|_| {
                invalid(
                    "server.ssh.listen",
                    format!("`{}` is not ip:port", h.listen),
                )
            })?,
            host_key: h.host_key,
            authorized_keys: h.authorized_keys,
            window: window(h.window.0, "server.ssh.window", invalid)?,
        }),
    };
    if ssh.is_some() && accounts.iter().all(|a| a.keys.is_empty()) {
        return Err(invalid(
            "server.account.keys",
            "[server.ssh] is on but no account lists a key (or \"*\")".into(),
        ));
    }
    Ok(ServerConfig {
        exports: s.exports,
        state_dir: s.state_dir,
        tcp_account: s.tcp_account,
        ssh,
        accounts,
    })
}

fn validate_account(a: raw::RawAccount, invalid: &Invalid<'_>) -> Result<Account, ConfigError> {
    let name = a.name.clone();
    let bad = |key: &'static str, m: String| invalid(key, format!("account `{name}`: {m}"));
    for k in &a.keys {
        if k != "*" && !k.starts_with("SHA256:") {
            return Err(bad(
                "server.account.keys",
                format!(
                    "`{k}`: give the key's SHA256 fingerprint (ssh-keygen -l -f key.pub) or \"*\""
                ),
            ));
        }
    }
    let table = |m: Option<std::collections::BTreeMap<String, u32>>,
                 key: &'static str|
     -> Result<std::collections::BTreeMap<u32, u32>, ConfigError> {
        let mut out = std::collections::BTreeMap::new();
        for (from, to) in m.unwrap_or_default() {
            let f = from
                .parse::<u32>()
                .map_err(|_| bad(key, format!("`{from}` is not a numeric id")))?;
            out.insert(f, to);
        }
        Ok(out)
    };
    let mapping = match (a.uid, a.gid, a.uid_map.is_some() || a.gid_map.is_some()) {
        (Some(uid), Some(gid), false) => Mapping::Fixed {
            uid,
            gid,
            gids: a.gids.clone(),
        },
        (None, None, true) if a.gids.is_empty() => Mapping::Table {
            uids: table(a.uid_map, "server.account.uid_map")?,
            gids: table(a.gid_map, "server.account.gid_map")?,
        },
        _ => {
            return Err(bad(
                "server.account",
                "give either uid + gid (+ gids), or uid_map (+ gid_map)".into(),
            ));
        }
    };
    // Group 0 (root's group) is as privileged as uid 0 on most systems.
    let gives_root = match &mapping {
        Mapping::Fixed { uid, gid, gids } => *uid == 0 || *gid == 0 || gids.contains(&0),
        Mapping::Table { uids, gids } => {
            uids.values().any(|&u| u == 0) || gids.values().any(|&g| g == 0)
        }
    } || a.squash_uid == 0
        || a.squash_gid == 0;
    if gives_root && !a.allow_root {
        return Err(bad(
            "server.account.allow_root",
            "the mapping gives uid or gid 0; set allow_root = true if that is meant".into(),
        ));
    }
    let map_auth_none = match a.auth_none.as_str() {
        "map" => true,
        "refuse" => false,
        other => {
            return Err(bad(
                "server.account.auth_none",
                format!("`{other}`: use \"map\" or \"refuse\""),
            ));
        }
    };
    Ok(Account {
        name: a.name,
        keys: a.keys,
        mapping,
        squash_uid: a.squash_uid,
        squash_gid: a.squash_gid,
        allow_root: a.allow_root,
        map_auth_none,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::from_toml(s, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("[upstream]\nnfs = \"127.0.0.1:20490\"\n").unwrap();
        assert_eq!(c.listen.addr, "127.0.0.1:2049".parse().unwrap());
        assert_eq!(c.listen.max_io, 1 << 20);
        assert_eq!(c.upstream.mount, c.upstream.nfs);
        assert_eq!(c.log.format, LogFormat::Human);
    }

    #[test]
    fn unknown_keys_rejected() {
        let e = parse("[upstream]\nnfs = \"127.0.0.1:1\"\nnsf = 3\n").unwrap_err();
        assert!(e.to_string().contains("nsf"), "{e}");
        let e = parse("[upstream]\nnfs = \"127.0.0.1:1\"\n[cache]\n").unwrap_err();
        assert!(e.to_string().contains("cache"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e =
            parse("[listen]\naddr = \"nowhere\"\n[upstream]\nnfs = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(e.to_string().contains("listen.addr"), "{e}");
        let e = parse("[upstream]\nnfs = \"ftp://x:1\"\n").unwrap_err();
        assert!(e.to_string().contains("upstream.nfs"), "{e}");
        let e = parse(
            "[listen]\nmax_io = \"8MiB\"\nmax_record = \"4MiB\"\n[upstream]\nnfs = \"h:1\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("listen.max_io"), "{e}");
    }

    #[test]
    fn cache_section_validated() {
        let ok = parse("[upstream]\nnfs = \"h:1\"\n[cache]\ndir = \"/tmp/c\"\nsize = \"1GiB\"\n")
            .unwrap();
        let c = ok.cache.unwrap();
        assert_eq!((c.block_size, c.ways, c.banks), (65536, 16, 64));
        let e = parse("[upstream]\nnfs = \"h:1\"\n[cache]\ndir = \"/tmp/c\"\nsize = \"1GiB\"\nblock_size = 5000\n")
            .unwrap_err();
        assert!(e.to_string().contains("cache"), "{e}");
        let e = parse("[upstream]\nnfs = \"h:1\"\n[cache]\ndir = \"/tmp/c\"\nsize = \"1MiB\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("fewer than one set"), "{e}");
    }

    #[test]
    fn record_working_set_defaults_off_and_needs_a_cache() {
        let cache = "[cache]\ndir = \"/tmp/c\"\nsize = \"1GiB\"\n";
        let c = parse(&format!("[upstream]\nnfs = \"h:1\"\n{cache}")).unwrap();
        assert!(!c.record_working_set);
        let on = "[meta]\nrecord_working_set = true\n";
        let c = parse(&format!("[upstream]\nnfs = \"h:1\"\n{cache}{on}")).unwrap();
        assert!(c.record_working_set);
        // Without sidecars the recording still works (it is on the cache layer).
        let c = parse(&format!(
            "[upstream]\nnfs = \"h:1\"\n{cache}{on}sidecars = false\n"
        ))
        .unwrap();
        assert!(c.record_working_set && c.meta.is_none());
        let e = parse(&format!("[upstream]\nnfs = \"h:1\"\n{on}")).unwrap_err();
        assert!(
            e.to_string()
                .contains("meta.record_working_set: needs a [cache] section"),
            "{e}"
        );
    }

    #[test]
    fn example_configs_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 1, "no example configs in {}", dir.display());
    }
}
