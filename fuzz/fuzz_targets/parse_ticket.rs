//! Fuzz target: see `murmur::fuzzing::parse_ticket`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur::fuzzing::parse_ticket(data));
