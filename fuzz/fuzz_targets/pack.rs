#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dr::repo::pack::parse_pack(&dr::repo::ids::PackId([0; 32]), data);
});
