//! Fuzz target: see `murmur::fuzzing::control_frame`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur::fuzzing::control_frame(data));
