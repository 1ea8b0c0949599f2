//! The config file exactly as written: serde structs with defaults, unknown keys rejected.
//! Nothing here is trusted; `Config::validate` turns it into a `Config`.

use std::path::PathBuf;

use serde::Deserialize;

use super::units::{ByteSize, Millis};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub listen: RawListen,
    pub upstream: RawUpstream,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub cache: Option<RawCache>,
    #[serde(default)]
    pub control: Option<RawControl>,
    #[serde(default)]
    pub server: Option<RawServer>,
    #[serde(default)]
    pub meta: Option<RawMeta>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMeta {
    pub sidecars: bool,
    pub whole_file_dir: Option<PathBuf>,
    pub whole_file_max: ByteSize,
    pub wait_ahead: ByteSize,
    pub record_working_set: bool,
}

impl Default for RawMeta {
    fn default() -> Self {
        RawMeta {
            sidecars: true,
            whole_file_dir: None,
            whole_file_max: ByteSize(4 << 30),
            wait_ahead: ByteSize(256 << 20),
            record_working_set: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub exports: Vec<String>,
    pub state_dir: PathBuf,
    #[serde(default)]
    pub tcp_account: Option<String>,
    #[serde(default)]
    pub ssh: Option<RawSshServer>,
    #[serde(default)]
    pub account: Vec<RawAccount>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSshServer {
    pub listen: String,
    pub host_key: PathBuf,
    pub authorized_keys: PathBuf,
    #[serde(default = "default_window")]
    pub window: ByteSize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccount {
    pub name: String,
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    #[serde(default)]
    pub gids: Vec<u32>,
    #[serde(default)]
    pub uid_map: Option<std::collections::BTreeMap<String, u32>>,
    #[serde(default)]
    pub gid_map: Option<std::collections::BTreeMap<String, u32>>,
    #[serde(default = "default_squash")]
    pub squash_uid: u32,
    #[serde(default = "default_squash")]
    pub squash_gid: u32,
    #[serde(default)]
    pub allow_root: bool,
    #[serde(default = "default_auth_none")]
    pub auth_none: String,
}

fn default_squash() -> u32 {
    65534
}
fn default_auth_none() -> String {
    "refuse".into()
}
fn default_window() -> ByteSize {
    ByteSize(32 << 20)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSshClient {
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    #[serde(default = "default_host_key_policy")]
    pub host_key_policy: String,
    #[serde(default)]
    pub forward_to: Option<String>,
    #[serde(default = "default_window")]
    pub window: ByteSize,
    #[serde(default = "default_keepalive")]
    pub keepalive: Millis,
    #[serde(default)]
    pub compression: bool,
}

fn default_host_key_policy() -> String {
    "strict".into()
}
fn default_keepalive() -> Millis {
    Millis(std::time::Duration::from_secs(15))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    pub socket: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub dir: PathBuf,
    pub size: ByteSize,
    #[serde(default = "default_block_size")]
    pub block_size: ByteSize,
    #[serde(default = "default_ways")]
    pub ways: u32,
    #[serde(default = "default_banks")]
    pub banks: u32,
    #[serde(default = "default_consistency")]
    pub consistency: String,
    #[serde(default = "default_metadata")]
    pub metadata: String,
    #[serde(default = "default_write_policy")]
    pub write_policy: String,
    #[serde(default = "default_true")]
    pub flush_on_exit: bool,
    #[serde(default = "default_writeback_in_flight")]
    pub writeback_in_flight: usize,
    #[serde(default)]
    pub shared: bool,
}

fn default_write_policy() -> String {
    "write-back".into()
}
fn default_true() -> bool {
    true
}
fn default_writeback_in_flight() -> usize {
    64
}

fn default_metadata() -> String {
    "forward".into()
}

fn default_consistency() -> String {
    "session".into()
}

fn default_block_size() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_ways() -> u32 {
    16
}
fn default_banks() -> u32 {
    64
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawListen {
    pub addr: String,
    pub max_record: ByteSize,
    pub max_io: ByteSize,
    pub max_requests_per_conn: usize,
    pub max_connections: usize,
    pub max_buffered: ByteSize,
    pub register_rpcbind: bool,
    pub rpcbind_socket: PathBuf,
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            addr: "127.0.0.1:2049".into(),
            max_record: ByteSize(2 << 20),
            max_io: ByteSize(1 << 20),
            max_requests_per_conn: 128,
            max_connections: 1024,
            max_buffered: ByteSize(32 << 20),
            register_rpcbind: false,
            rpcbind_socket: PathBuf::from("/run/rpcbind.sock"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub nfs: String,
    #[serde(default)]
    pub mount: Option<String>,
    #[serde(default = "default_connections")]
    pub connections: usize,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Millis,
    #[serde(default = "default_backoff_min")]
    pub backoff_min: Millis,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: Millis,
    #[serde(default = "default_resend_limit")]
    pub resend_limit: u32,
    #[serde(default)]
    pub ssh: Option<RawSshClient>,
}

fn default_connections() -> usize {
    2
}
fn default_max_in_flight() -> usize {
    256
}
fn default_connect_timeout() -> Millis {
    Millis(std::time::Duration::from_secs(5))
}
fn default_backoff_min() -> Millis {
    Millis(std::time::Duration::from_millis(50))
}
fn default_backoff_max() -> Millis {
    Millis(std::time::Duration::from_secs(5))
}
fn default_resend_limit() -> u32 {
    6
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    pub format: String,
    pub level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: "human".into(),
            level: "info".into(),
        }
    }
}
