//! Fuzz target: see `murmur::fuzzing::data_frame`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur::fuzzing::data_frame(data));
