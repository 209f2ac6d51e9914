//! `cargo fuzz run pax_records`: see `layer::fuzzing::pax_records`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| layer::fuzzing::pax_records(data));
