//! Fuzz target: see `murmur::fuzzing::open_store`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur::fuzzing::open_store(data));
