//! Any byte stream through record marking: never panics, never returns a record over the
//! limit, and the records it returns add up to no more than the input.
#![no_main]

use std::sync::OnceLock;

use gridvfs::rpc::RecordReader;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    rt().block_on(async {
        let mut input = data;
        let mut rr = RecordReader::new(MAX);
        let mut total = 0;
        while let Ok(Some(rec)) = rr.next(&mut input).await {
            assert!(rec.len() <= MAX);
            total += rec.len();
        }
        assert!(total <= data.len());
    });
});
