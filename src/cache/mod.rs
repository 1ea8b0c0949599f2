//! The on-disk block cache (paper §3.2.1; issue 3), built bottom-up. Knows nothing of
//! sockets or RPC: blocks of files, identified by opaque file handles, go in and out.
//!
//! In place so far: the geometry (`layout`: banks, sets, ways; consecutive blocks of a
//! file in consecutive sets) and the frame tag format (`tag`: checksummed, versioned).
//! The store that uses them, and its crash-safety rules, are specified in
//! `docs/cache-design.md`.

pub mod layout;
pub mod tag;
