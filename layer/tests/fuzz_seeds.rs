//! The fuzz targets' bodies (`layer::fuzzing`, run by `cargo fuzz` from
//! `fuzz/`) over their checked-in seed corpus (`fuzz/corpus/<target>/`),
//! so every `cargo test` runs them even where `cargo fuzz` cannot (it needs
//! a nightly compiler or `RUSTC_BOOTSTRAP=1`).

use std::path::Path;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.expect("seed entry");
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("read seed"))
        })
        .collect();
    out.sort();
    assert!(out.len() >= 20, "{target}: only {} seeds", out.len());
    out
}

fn run(target: &str, body: fn(&[u8])) {
    for (name, data) in seeds(target) {
        let res = std::panic::catch_unwind(|| body(&data));
        assert!(res.is_ok(), "{target}: seed {name} broke an invariant");
    }
}

#[test]
fn tar_headers_seeds() {
    run("tar_headers", layer::fuzzing::tar_headers);
}

#[test]
fn pax_records_seeds() {
    run("pax_records", layer::fuzzing::pax_records);
}

#[test]
fn tar_split_record_seeds() {
    run("tar_split_record", layer::fuzzing::tar_split_record);
}
