//! Any bytes as a sidecar file (`.NAME.gvfsmeta`, written by anyone with write access to
//! the export): parsing never panics nor allocates past the bytes given, and whatever
//! parses encodes to bytes that parse to the same value. Each input is tried twice: as
//! is, and with its last 4 bytes replaced by the right CRC32, so that mutations reach
//! the section parsers instead of stopping at the checksum.
#![no_main]

use gridvfs::meta::Sidecar;
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    if let Ok(s) = Sidecar::parse(bytes) {
        let again = Sidecar::parse(&s.encode()).expect("re-encoded sidecar does not parse");
        assert_eq!(again, s);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= 16 {
        let mut fixed = data[..data.len() - 4].to_vec();
        fixed.extend_from_slice(&crc32fast::hash(&fixed).to_be_bytes());
        check(&fixed);
    }
});
