#![no_main]
//! Fuzz target `auth`: see `smtpsink::fuzzing::auth_response`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpsink::fuzzing::auth_response(data));
