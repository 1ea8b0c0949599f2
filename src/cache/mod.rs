//! The on-disk block cache (paper §3.2.1; issue 3), built bottom-up. Knows nothing of
//! sockets or RPC: blocks of files, identified by opaque file handles, go in and out.
//!
//! - `layout`: banks, sets, ways; consecutive blocks of a file in consecutive sets.
//! - `tag`: the checksummed, versioned frame tag.
//! - `store`: frames on disk, CLOCK replacement, copy-on-write of durable dirty data,
//!   `sync` as the durable point, recovery by sequence number and checksum.
//!
//! Not yet wired into the proxy (READ/WRITE/COMMIT interception, write-back, signals):
//! see `docs/cache-design.md` for the rules the rest follows.

pub mod layout;
pub mod store;
pub mod tag;
