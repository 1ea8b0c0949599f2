//! Metadata sidecars (paper §3.2.2): what middleware knows about a file that the block
//! protocol cannot see. A sidecar sits beside its data file (`.NAME.gvfsmeta`) and holds
//! the file's size, mtime and digest (to tell when it is stale), a zero-block map, and
//! the actions to take: fetch the file whole and compressed, write it back the same way.
//!
//! - `format`: the on-disk format, parsed with every field bounds-checked.
//! - `generate`: `gridvfs meta generate|show|verify` (scans files, writes sidecars
//!   atomically).
//! - `workset`: the working set as text (`gridvfs workset` prints it, `gridvfs meta
//!   workset` reads it into a sidecar).

pub mod channel;
pub mod format;
pub mod generate;
pub mod workset;

pub use format::{
    Actions, Codec, Fetch, FileTime, Sidecar, SidecarError, Stale, Writeback, ZeroMap,
    is_sidecar_name, sidecar_name,
};
