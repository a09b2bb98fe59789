#![no_main]
use std::io::Read;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = std::io::BufReader::new(data);
    if let Ok(framing) = dr::source::redis::rdb::read_preamble(&mut r) {
        let mut s = dr::source::redis::rdb::RdbStream::new(r, framing);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
});
