#![no_main]
//! Fuzz target `client`: see `smtpsink::fuzzing::client`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpsink::fuzzing::client(data));
