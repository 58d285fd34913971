#![no_main]
//! Fuzz target `command`: see `smtpsink::fuzzing::command`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpsink::fuzzing::command(data));
