//! Fuzzes `tether::decoders::checkpoint` (see its doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tether::decoders::checkpoint(data);
});
