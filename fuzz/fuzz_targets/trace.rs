#![no_main]
//! Fuzz target `trace`: see `smtpsink::fuzzing::trace_round_trip`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtpsink::fuzzing::trace_round_trip(data));
