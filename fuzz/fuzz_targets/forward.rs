#![no_main]
//! Fuzz target `forward`: see `smtpsink::fuzzing::forward_attributes`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpsink::fuzzing::forward_attributes(data));
