//! ONC RPC v2 (RFC 5531) over TCP: record marking (`record`), call and reply headers
//! (`msg`). Knows nothing of NFS: bytes in, parsed headers and framed replies out.

pub mod msg;
pub mod record;

pub use msg::{AcceptStat, CallError, CallHeader, OpaqueAuth, ReplyKind, parse_reply};
pub use record::{RecordError, RecordReader, read_record, write_record, write_record_with_xid};
