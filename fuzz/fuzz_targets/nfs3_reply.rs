//! Any bytes as the result of any NFSv3 procedure (as a next hop could send): decoding
//! never panics, and whatever decodes re-encodes to bytes that decode to the same value.
#![no_main]

use bytes::BytesMut;
use gridvfs::nfs3::{Proc, Res};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&p, body)) = data.split_first() else {
        return;
    };
    let proc_ = Proc(u32::from(p % 22));
    if let Ok(res) = Res::decode(proc_, body) {
        let mut out = BytesMut::new();
        res.encode(&mut out);
        let again = Res::decode(proc_, &out).expect("re-encoded reply does not decode");
        assert_eq!(again, res);
    }
});
