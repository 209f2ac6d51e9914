//! Bad input, end to end: clear 4xx answers (with `kind`), clear CLI errors,
//! and nothing changed or left behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::support::*;

#[test]
fn bad_input_is_rejected_and_changes_nothing() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let base_tar = make_tar(&[("a.txt", b"a")]);
    let base_file = write_file(work.path(), "base.tar", &base_tar);
    let base = d.ok(&["layer", "import", base_file.to_str().unwrap()]).trim().to_owned();
    d.ok(&["rw", "create", "keep", "--parent", &base]);
    let layers_before = d.json(&["layer", "ls", "--format", "json"]);
    let rw_before = d.json(&["rw", "ls", "--format", "json"]);

    // Malformed digests and names in paths.
    for path in ["/v1/layers/nothex", "/v1/layers/sha256:", "/v1/layers/md5:00/tar", "/v1/layers/SHA256:x/tar"] {
        let msg = d.rejects(400, "GET", path, None, b"");
        assert!(msg.contains("invalid layer id"), "{path}: {msg}");
    }
    d.rejects(400, "DELETE", "/v1/layers/nothex", None, b"");
    d.rejects(404, "GET", &format!("/v1/layers/{UNKNOWN}"), None, b"");
    d.rejects(404, "GET", &format!("/v1/layers/{UNKNOWN}/tar"), None, b"");
    d.rejects(404, "DELETE", &format!("/v1/layers/{UNKNOWN}"), None, b"");
    for (method, suffix) in [
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/mount"),
        ("POST", "/unmount"),
        ("GET", "/changes"),
        ("GET", "/tar"),
        ("POST", "/commit"),
    ] {
        let msg = d.rejects(400, method, &format!("/v1/rw/-bad{suffix}"), None, b"");
        assert!(msg.contains("invalid name"), "{msg}");
        d.rejects(400, method, &format!("/v1/rw/a%20b{suffix}"), None, b"");
        d.rejects(404, method, &format!("/v1/rw/nosuch{suffix}"), None, b"");
    }
    d.rejects(409, "POST", "/v1/rw/keep/unmount", None, b"");

    // Registration: bad query values, unknown parent, hostile bodies.
    let tar = make_tar(&[("b.txt", b"b")]);
    let msg = d.rejects(400, "POST", "/v1/layers?parent=nothex", Some("application/x-tar"), &tar);
    assert!(msg.starts_with("parent: invalid layer id"), "{msg}");
    d.rejects(400, "POST", "/v1/layers?diff_id=sha256:12", Some("application/x-tar"), &tar);
    let msg = d.rejects(400, "POST", &format!("/v1/layers?parent={UNKNOWN}"), None, &tar);
    assert!(msg.contains("parent"), "{msg}");
    let msg = d.rejects(400, "POST", &format!("/v1/layers?diff_id={UNKNOWN}"), None, &tar);
    assert!(msg.contains("diff_id") || msg.contains("does not match"), "{msg}");
    d.rejects(400, "POST", "/v1/layers", None, b"this is not a tar archive, not even close, but long enough.");
    d.rejects(400, "POST", "/v1/layers", None, &big_content(4096));
    // Truncated inside a header or inside data (a cut inside the padding
    // after the last member is an archive Go's reader accepts).
    d.rejects(400, "POST", "/v1/layers", None, &tar[..300]);
    d.rejects(400, "POST", "/v1/layers", None, &tar[..512]);
    let mut bad_sum = tar.clone();
    bad_sum[148] ^= 0x01;
    d.rejects(400, "POST", "/v1/layers", None, &bad_sum);
    let hostile = {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &b"x"[..]).unwrap();
        b.into_inner().unwrap()
    };
    d.rejects(400, "POST", "/v1/layers", None, &hostile);
    // A corrupt gzip stream, and a 1 MiB gzip holding a 512 MiB GNU long
    // name: 400s with short messages (issue 14).
    let gz = |parts: &[&[u8]], fill: usize| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        for p in parts {
            enc.write_all(p).unwrap();
        }
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..fill {
            enc.write_all(&chunk).unwrap();
        }
        enc.finish().unwrap()
    };
    let mut corrupt = gz(&[&make_tar(&[("big.bin", &big_content(1 << 20))])], 0);
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    let msg = d.rejects(400, "POST", "/v1/layers", None, &corrupt);
    assert!(msg.len() < 1024, "{msg}");
    let mut long_name = tar::Header::new_gnu();
    long_name.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    long_name.set_entry_type(tar::EntryType::GNULongName);
    long_name.set_size(512 << 20);
    long_name.set_cksum();
    let bomb = gz(&[long_name.as_bytes()], 512);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let msg = d.rejects(400, "POST", "/v1/layers", None, &bomb);
    assert!(msg.contains("1 MiB") && msg.len() < 1024, "{msg}");
    // The daemon answers before reading the whole upload; the client still
    // gets the answer, not a broken pipe.
    let big_file = write_file(work.path(), "big.tar", &make_tar(&[("big.bin", &big_content(8 << 20))]));
    for file in [&base_file, &big_file] {
        let err = d.fails(1, &["layer", "import", "--parent", UNKNOWN, file.to_str().unwrap()]);
        assert!(err.starts_with("layerctl: ") && err.contains("parent"), "{err}");
    }
    let garbage_file = write_file(work.path(), "garbage.tar", &big_content(8 << 20));
    let err = d.fails(1, &["layer", "import", garbage_file.to_str().unwrap()]);
    assert!(err.starts_with("layerctl: "), "{err}");

    // JSON bodies: malformed, wrong type, missing fields, too large, bad values.
    let msg = d.rejects(400, "POST", "/v1/rw", Some("application/json"), b"{not json");
    assert!(!msg.is_empty());
    d.rejects(415, "POST", "/v1/rw", Some("text/plain"), br#"{"name":"x"}"#);
    d.rejects(415, "POST", "/v1/rw", None, br#"{"name":"x"}"#);
    d.rejects(422, "POST", "/v1/rw", Some("application/json"), br#"{"parent":null}"#);
    let huge = format!(r#"{{"names":["{}"]}}"#, "a".repeat(2 << 20));
    d.rejects(413, "POST", "/v1/rw/delete", Some("application/json"), huge.as_bytes());
    d.rejects(400, "POST", "/v1/rw/delete", Some("application/json"), br#"{"names":["#);
    d.rejects(422, "POST", "/v1/rw/delete", Some("application/json"), b"[1,2]");
    let msg = d.rejects(400, "POST", "/v1/rw", Some("application/json"), br#"{"name":"../x"}"#);
    assert!(msg.contains("invalid name"), "{msg}");
    d.rejects(400, "POST", "/v1/rw", Some("application/json"), br#"{"name":"x","parent":"nothex"}"#);
    let r = d.request(
        "POST",
        "/v1/rw",
        Some("application/json"),
        format!(r#"{{"name":"x","parent":"{UNKNOWN}"}}"#).as_bytes(),
    );
    assert!(matches!(r.status, 400 | 404), "{}", r.status);
    d.rejects(409, "POST", "/v1/rw", Some("application/json"), br#"{"name":"keep"}"#);

    // Unknown routes and methods.
    d.rejects(404, "GET", "/v1/nothing", None, b"");
    d.rejects(404, "GET", "/v2/layers", None, b"");
    d.rejects(405, "PUT", "/v1/layers", None, b"");
    d.rejects(405, "GET", "/v1/rw/delete", None, b"");

    // CLI errors: server errors exit 1, usage 2, unreachable 3.
    let err = d.fails(1, &["layer", "inspect", "nothex"]);
    assert!(err.starts_with("layerctl: invalid layer id"), "{err}");
    d.fails(2, &["layer", "frobnicate"]);
    d.fails(2, &["rw", "mount"]);
    let out = ctl_with("unix:///nonexistent/layerd.sock", &["layer", "ls"], None);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/layerd.sock"));
    let out = ctl_with("tcp://127.0.0.1:1", &["layer", "ls"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a token"));

    assert_eq!(d.json(&["layer", "ls", "--format", "json"]), layers_before);
    assert_eq!(d.json(&["rw", "ls", "--format", "json"]), rw_before);
}

#[test]
fn a_failed_export_is_an_error_and_leaves_no_file() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let big = big_content(2 << 20);
    let f = write_file(work.path(), "l.tar", &make_tar(&[("big.bin", &big)]));
    let chain = d.ok(&["layer", "import", f.to_str().unwrap()]).trim().to_owned();

    // Damage the stored file behind the store's back (same size, new bytes).
    let stored: Vec<PathBuf> =
        walk(d.root()).into_iter().filter(|p| p.file_name().is_some_and(|n| n == "big.bin")).collect();
    assert!(!stored.is_empty(), "big.bin not found under the root");
    for p in &stored {
        let mut data = std::fs::read(p).unwrap();
        data[1 << 20] ^= 0xff;
        std::fs::write(p, data).unwrap();
    }

    let out = work.path().join("out.tar");
    let err = d.fails(1, &["layer", "export", &chain, "-o", out.to_str().unwrap()]);
    assert!(err.starts_with("layerctl: export failed after "), "{err}");
    // It says why, as `check --verify` does, not just "transfer broke off".
    assert!(err.contains("damaged — re-import it") && !err.contains("broke off"), "{err}");
    assert!(!out.exists(), "a partial export was left behind");
    let leftovers: Vec<_> = std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    let stdout = d.ctl(&["layer", "export", &chain]);
    assert_eq!(stdout.status.code(), Some(1));
    // The raw response must not end like a complete chunked body.
    let r = try_request(d.socket(), "GET", &format!("/v1/layers/{chain}/tar"), None, b"");
    assert!(r.is_err() || r.is_ok_and(|r| r.status >= 500), "a damaged layer was served as a clean tar");
    d.request("GET", "/v1/_ping", None, b"");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}
