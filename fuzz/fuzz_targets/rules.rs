#![no_main]
//! Fuzz target `rules`: see `smtpsink::fuzzing::rules_file`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpsink::fuzzing::rules_file(data));
