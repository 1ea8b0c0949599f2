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
}

impl Endpoint {
    fn parse(s: &str) -> Result<Endpoint, String> {
        let rest = s.strip_prefix("tcp://").unwrap_or(s);
        if rest.contains("://") {
            return Err(format!(
                "`{s}`: unsupported scheme (this build supports tcp://host:port)"
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
        }
    }
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
    /// Long-lived connections per endpoint; requests are spread over them.
    pub connections: usize,
    /// Requests in flight to one endpoint at once; callers wait beyond it (backpressure).
    pub max_in_flight: usize,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
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
    pub write_policy: WritePolicy,
    /// SIGTERM/SIGINT write back all dirty data before the proxy exits.
    pub flush_on_exit: bool,
    /// WRITEs in flight to the next hop during a write-back.
    pub writeback_in_flight: usize,
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

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenConfig,
    pub upstream: UpstreamConfig,
    pub log: LogConfig,
    pub cache: Option<CacheConfig>,
    /// The control socket (`gridvfs status`, `gridvfs flush`), if any.
    pub control_socket: Option<PathBuf>,
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
                Some(CacheConfig {
                    consistency,
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
        Ok(Config {
            control_socket: self.control.map(|c| c.socket),
            cache,
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
                connections: u.connections,
                max_in_flight: u.max_in_flight,
                connect_timeout: u.connect_timeout.0,
                backoff_min: u.backoff_min.0,
                backoff_max: u.backoff_max.0,
            },
            log: LogConfig {
                format,
                level: self.log.level,
            },
        })
    }
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
