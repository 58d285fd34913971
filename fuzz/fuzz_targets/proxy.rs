#![no_main]
//! Fuzz target `proxy`: see `smtpsink::fuzzing::proxy_header`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpsink::fuzzing::proxy_header(data));
