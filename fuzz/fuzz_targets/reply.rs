#![no_main]
//! Fuzz target `reply`: see `smtpsink::fuzzing::reply_parser`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpsink::fuzzing::reply_parser(data));
