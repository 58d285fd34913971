#![no_main]
//! Fuzz target `session`: see `smtpsink::fuzzing::session`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpsink::fuzzing::session(data));
