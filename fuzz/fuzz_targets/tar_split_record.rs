//! `cargo fuzz run tar_split_record`: see `layer::fuzzing::tar_split_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| layer::fuzzing::tar_split_record(data));
