#![no_main]
//! Fuzz target `control`: see `smtpsink::fuzzing::control_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpsink::fuzzing::control_request(data));
