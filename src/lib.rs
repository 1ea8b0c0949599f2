//! gridvfs: a user-level NFSv3 proxy for on-demand VM image data across sites
//! (after GVFS, Zhao, Zhang and Figueiredo, HPDC 2004).
//!
//! # The path of a request
//! ```text
//!  client socket ──► proxy::conn      record marking (rpc::record), bounded by listen.max_record
//!                    proxy::dispatch  RPC header (rpc::msg) → program/version/procedure;
//!                                     arguments decoded (nfs3) → GARBAGE_ARGS if malformed;
//!                                     portmapper and RPC errors answered here
//!                    upstream         xid remapped, pipelined on a few long-lived links to
//!                                     the next hop (transport), re-sent after a reconnect
//!  client socket ◄── proxy::conn      reply with the client's xid (FSINFO sizes clamped)
//! ```
//! File handles pass through opaque and unchanged, so proxies cascade without growth.
//!
//! # Modules
//! - `config`: TOML → validated `Config` (also used by `gridvfs check-config`).
//! - `xdr`, `rpc`, `nfs3`: bounded, zero-copy wire codecs. Arrows run one way:
//!   `xdr` ← `rpc` ← `nfs3` ← `proxy`.
//! - `transport`: byte streams to the next hop (TCP, or a channel of an SSH session);
//!   knows nothing of NFS.
//! - `ssh`: the SSH tunnel on russh: client sessions and channels, the built-in server,
//!   keys, and the fixes that keep russh sessions from stalling (`decouple`, `pump`).
//! - `server`: the server role: identity mapping and export confinement (issued handles).
//! - `upstream`: the pipelined RPC client to the next hop.
//! - `proxy`: listener, connections, routing, portmapper.
//! - `cache`: the on-disk block cache: geometry, tags, the store (issue 3).
//! - `metrics`: counters.
//! - `control`: the control socket (`gridvfs status`, `gridvfs flush`).
//! - `daemon`: wires it together for `gridvfs run`: signals, logging, ready file.

pub mod cache;
pub mod config;
pub mod control;
pub mod daemon;
pub mod meta;
pub mod metrics;
pub mod nfs3;
pub mod proxy;
pub mod rpc;
pub mod server;
pub mod ssh;
pub mod transport;
pub mod upstream;
pub mod xdr;
