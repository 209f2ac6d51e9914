//! `cargo fuzz run tar_headers`: see `layer::fuzzing::tar_headers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| layer::fuzzing::tar_headers(data));
