//! Differential test against Go's `archive/tar` itself (issue 14): the
//! reader Docker extracts layers with. A small Go program
//! (`tests/go/tarlist/main.go`, standard library only) is built into a temp
//! dir and lists every tar of a generated corpus (`tarcorpus`); our reader
//! (`graphdriver::archive::reader`, which both the extractor and the
//! tar-split recorder read through) lists the same tars. Both must make the
//! same accept/refuse decision and see the same members with the same
//! attributes (type, name, link, size, mode, owner, names, times, devices,
//! xattrs, PAX records, and the content a consumer reads).
//!
//! Needs `go` (Debian's `golang-go`, installed by `.ci/run`); skips with a
//! printed reason only when it is absent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tarcorpus;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use graphdriver::archive::reader::{Member, Reader};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn build_tarlist(tmp: &Path) -> Option<std::path::PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go/tarlist/main.go");
    let bin = tmp.join("tarlist");
    let out = match Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .env("GOCACHE", tmp.join("gocache"))
        .env("GOPATH", tmp.join("gopath"))
        .env("GOFLAGS", "")
        .env("GO111MODULE", "off")
        .env("CGO_ENABLED", "0")
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIP go differential: `go` is not available ({e}); install golang-go");
            return None;
        }
    };
    assert!(out.status.success(), "go build failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(bin)
}

fn hx(b: &[u8]) -> String {
    hex::encode(b)
}

/// Read the member's content as a consumer of Go's reader gets it (sparse
/// files expanded); an error is a refusal, as it is for Go.
fn content(m: &Member, rd: &mut Reader<&[u8]>) -> Result<String, String> {
    let mut h = Sha256::new();
    let copy = |rd: &mut Reader<&[u8]>, len: u64, h: &mut Sha256| -> Result<(), String> {
        let mut buf = vec![0u8; 8192];
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = rd.read(&mut buf[..want]).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("short".into());
            }
            h.update(&buf[..n]);
            left -= n as u64;
        }
        Ok(())
    };
    match &m.sparse {
        None => copy(rd, m.data_len, &mut h)?,
        Some(frags) => {
            if m.fragments_len() != Some(m.data_len) {
                return Err("sparse data does not match the map".into());
            }
            let zeros = |h: &mut Sha256, n: u64| {
                let z = [0u8; 4096];
                let mut left = n;
                while left > 0 {
                    let k = left.min(z.len() as u64);
                    h.update(&z[..k as usize]);
                    left -= k;
                }
            };
            let mut pos = 0u64;
            for &(off, len) in frags {
                zeros(&mut h, off - pos);
                copy(rd, len, &mut h)?;
                pos = off + len;
            }
            zeros(&mut h, m.size as u64 - pos);
        }
    }
    Ok(hex::encode(h.finalize()))
}

fn hex_map(m: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>) -> Value {
    Value::Object(m.iter().map(|(k, v)| (hx(k), Value::String(hx(v)))).collect())
}

/// Our reader's view in the Go program's shape.
fn our_view(tar: &[u8]) -> Value {
    let mut rd = Reader::new(tar);
    let mut members = Vec::new();
    loop {
        let m = match rd.next_member() {
            Ok(None) => return json!({"accepted": true, "members": members}),
            Err(e) => return json!({"accepted": false, "error": e.to_string(), "members": members}),
            Ok(Some(m)) => m,
        };
        let data = match content(&m, &mut rd) {
            Ok(d) => d,
            Err(e) => return json!({"accepted": false, "error": e, "members": members}),
        };
        // A global header is returned with a zero time, as Go's reader does.
        let mtime =
            if m.typeflag == b'g' { json!([-62_135_596_800i64, 0]) } else { json!([m.mtime.secs, m.mtime.nanos]) };
        members.push(json!({
            "typeflag": m.typeflag,
            "name": hx(&m.name),
            "linkname": hx(&m.linkname),
            "size": m.size,
            "mode": m.mode,
            "uid": m.uid,
            "gid": m.gid,
            "uname": hx(&m.uname),
            "gname": hx(&m.gname),
            "mtime": mtime,
            "atime": m.atime.map(|t| json!([t.secs, t.nanos])),
            "devmajor": m.devmajor,
            "devminor": m.devminor,
            "xattrs": hex_map(&m.xattrs),
            "pax": hex_map(&m.pax),
            "data": data,
        }));
    }
}

#[test]
fn our_reader_reads_exactly_what_gos_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(bin) = build_tarlist(tmp.path()) else { return };
    let corpus = tarcorpus::corpus();
    let dir = tmp.path().join("corpus");
    std::fs::create_dir(&dir).unwrap();
    let paths: Vec<_> = corpus
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let p = dir.join(format!("{i:04}.tar"));
            std::fs::write(&p, &c.tar).unwrap();
            p
        })
        .collect();
    let out = Command::new(&bin).args(&paths).output().unwrap();
    assert!(out.status.success(), "tarlist failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), corpus.len());
    let (mut accepted, mut refused, mut failures) = (0, 0, Vec::new());
    for (c, go) in corpus.iter().zip(lines) {
        let ours = our_view(&c.tar);
        let strip = |v: &Value| json!({"accepted": v["accepted"], "members": v["members"]});
        if strip(&ours) != strip(&go) {
            failures.push(format!("{}:\n  go:   {}\n  ours: {}", c.name, go, ours));
        } else if go["accepted"] == json!(true) {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    eprintln!("go differential: {} cases, {accepted} accepted and {refused} refused by both", corpus.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Go:\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n")
    );
    assert!(accepted > 50 && refused > 30, "the corpus should exercise both outcomes");
}

/// Writes the checked-in seed corpus of the fuzz targets (`fuzz/corpus/`)
/// from this corpus: run by hand after changing it
/// (`cargo test -p conformance --test go_tar -- --ignored write_fuzz_seeds`).
#[test]
#[ignore = "a generator, not a check: rewrites the checked-in fuzz seeds; run by hand"]
fn write_fuzz_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        std::fs::write(dir.join(clean), bytes).unwrap();
    };
    for c in tarcorpus::corpus() {
        if c.tar.len() > 64 << 10 {
            continue;
        }
        write("tar_headers", &c.name, &c.tar);
        // The PAX bodies of its `x` headers.
        let mut pos = 0;
        while pos + 512 <= c.tar.len() {
            let h = &c.tar[pos..pos + 512];
            let size = graphdriver::archive::reader::numeric(&h[124..136]).unwrap_or(0).max(0) as usize;
            if h[156] == b'x' && pos + 512 + size <= c.tar.len() {
                write("pax_records", &format!("{}-{pos}", c.name), &c.tar[pos + 512..pos + 512 + size]);
            }
            if h.iter().all(|b| *b == 0) {
                break;
            }
            pos += 512 + size.next_multiple_of(512);
        }
        let mut rec = Vec::new();
        if layer::tarsplit::disassemble(&c.tar[..], &mut rec).is_ok() {
            let mut json = Vec::new();
            flate2::read::GzDecoder::new(&rec[..]).read_to_end(&mut json).unwrap();
            write("tar_split_record", &c.name, &json);
        }
    }
}
