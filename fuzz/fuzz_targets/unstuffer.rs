#![no_main]
//! Fuzz target `unstuffer`: see `smtpsink::fuzzing::unstuffer`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpsink::fuzzing::unstuffer(data));
