//! Fuzz target: see `murmur::fuzzing::election`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur::fuzzing::election(data));
