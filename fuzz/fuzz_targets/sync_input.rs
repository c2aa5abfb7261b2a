//! Fuzz target: see `murmur::fuzzing::sync_input`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur::fuzzing::sync_input(data));
