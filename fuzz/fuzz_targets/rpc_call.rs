//! Any bytes as a call record through the front door's routing: RPC header, program and
//! version checks, NFSv3/MOUNT argument decoding, the portmapper. Must never panic, and
//! every reply it builds must itself be a well-formed RPC reply.
#![no_main]

use gridvfs::metrics::Metrics;
use gridvfs::proxy::dispatch::{Route, route};
use gridvfs::rpc::parse_reply;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let m = Metrics::default();
    if let Route::Reply(r) = route(data, 2049, "127.0.0.1".parse().unwrap(), &m) {
        parse_reply(&r).expect("the proxy built a malformed reply");
    }
});
