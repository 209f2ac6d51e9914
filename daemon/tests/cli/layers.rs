//! Layers end to end: import (file, stdin, compressed), inspect, export,
//! release, short ids, and the CLI's terminal manners.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::json;

use crate::support::*;

#[test]
fn layers_import_export_and_release() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    assert_eq!(d.json(&["layer", "ls", "--format", "json"]), json!([]));
    assert_eq!(d.ok(&["layer", "ls"]).lines().count(), 1, "only the header");

    // Base layer, big enough to need several reads on both sides and more
    // than the JSON body limit.
    let big = big_content(3 << 20);
    let base_tar = make_tar(&[("etc/hostname", b"box\n"), ("big.bin", &big)]);
    let base_file = write_file(work.path(), "base.tar", &base_tar);
    let base = d.ok(&["layer", "import", base_file.to_str().unwrap()]).trim().to_owned();
    assert_eq!(base, sha256(&base_tar), "a base layer's ChainID is its DiffID");

    let ls = d.json(&["layer", "ls", "--format", "json"]);
    assert_eq!(chain_ids(&ls), vec![base.clone()]);
    let table = d.ok(&["layer", "ls"]);
    assert!(table.starts_with("CHAIN ID"), "{table}");
    assert!(table.contains(&base[..19]), "short id in {table}");

    let info = d.json(&["layer", "inspect", &base]);
    assert_eq!(info["chain_id"], json!(base));
    assert_eq!(info["diff_id"], json!(base));
    assert_eq!(info["references"], json!(1));
    assert!(info.get("parent").is_none());

    // Export: byte-identical, to a file and to stdout.
    let out = work.path().join("out.tar");
    d.ok(&["layer", "export", &base, "-o", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == base_tar, "export -o differs from the import");
    let stdout = d.ctl(&["layer", "export", &base]);
    assert!(stdout.status.success());
    assert!(stdout.stdout == base_tar, "export to stdout differs from the import");

    // A child through stdin, with its DiffID stated.
    let child_tar = make_tar(&[("etc/hostname", b"child\n"), ("new.txt", b"new")]);
    let child_diff = sha256(&child_tar);
    let out =
        ctl_with(&d.host(), &["layer", "import", "--parent", &base, "--diff-id", &child_diff, "-"], Some(&child_tar));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let child = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(child, chain_of(&base, &child_diff));
    let info = d.json(&["layer", "inspect", &child]);
    assert_eq!(info["parent"], json!(base));
    assert_eq!(info["depth"], json!(2));
    assert_eq!(d.json(&["layer", "inspect", &base])["children"], json!(1));

    // A gzip of the same base is the same layer, one more reference.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&base_tar).unwrap();
    let gz_file = write_file(work.path(), "base.tar.gz", &gz.finish().unwrap());
    assert_eq!(d.ok(&["layer", "import", gz_file.to_str().unwrap()]).trim(), base);
    assert_eq!(d.json(&["layer", "inspect", &base])["references"], json!(2));

    // Releasing the base twice drops our references but keeps it: the child holds it.
    let rm = d.ok(&["layer", "rm", &base]);
    assert_eq!(rm.trim(), format!("Released: {base}"));
    let rm = d.ok(&["layer", "rm", &base]);
    assert!(!rm.contains("Deleted"), "{rm}");
    assert_eq!(chain_ids(&d.json(&["layer", "ls", "--format", "json"])).len(), 2);
    let err = d.fails(1, &["layer", "rm", &base]);
    assert!(err.starts_with(&format!("layerctl: {base}: ")), "{err}");

    // Releasing the child frees the whole chain.
    let rm = d.ok(&["layer", "rm", &child]);
    assert!(rm.contains(&format!("Deleted: {child}")), "{rm}");
    assert!(rm.contains(&format!("Deleted: {base}")), "{rm}");
    assert_eq!(d.json(&["layer", "ls", "--format", "json"]), json!([]));
    let err = d.fails(1, &["layer", "inspect", &base]);
    assert!(err.starts_with("layerctl: no such layer"), "{err}");
}

#[test]
fn layer_rm_reports_each_name() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        let f = write_file(work.path(), &format!("{i}.tar"), &make_tar(&[(&format!("f{i}"), b"x")]));
        ids.push(d.ok(&["layer", "import", f.to_str().unwrap()]).trim().to_owned());
    }
    let mut args = vec!["layer", "rm"];
    args.extend(ids.iter().map(String::as_str));
    args.push(UNKNOWN);
    args.push("garbage");
    let out = d.ctl(&args);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    for id in &ids {
        assert!(stdout.contains(&format!("Deleted: {id}")), "{stdout}");
    }
    assert!(stderr.contains(&format!("layerctl: {UNKNOWN}: no such layer")), "{stderr}");
    assert!(stderr.contains("layerctl: garbage: invalid layer id"), "{stderr}");
    assert_eq!(d.json(&["layer", "ls", "--format", "json"]), json!([]));
}

/// Stderr of a successful layerctl run: must be empty when it is a pipe.
fn quiet(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}: {err}");
    assert!(!out.stderr.contains(&0x1b), "{what}: escape codes on a piped stderr: {err:?}");
    assert!(out.stderr.is_empty(), "{what}: unexpected stderr: {err:?}");
}

#[test]
fn transfers_show_no_progress_when_stderr_is_not_a_terminal() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let tar = make_tar(&[("big.bin", &big_content(1 << 20))]);
    let f = write_file(work.path(), "p.tar", &tar);
    let out = d.ctl(&["layer", "import", f.to_str().unwrap()]);
    quiet(&out, "import FILE");
    let chain = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    quiet(&ctl_with(&d.host(), &["layer", "import", "-"], Some(&tar)), "import -");
    let exported = work.path().join("e.tar");
    quiet(&d.ctl(&["layer", "export", &chain, "-o", exported.to_str().unwrap()]), "export -o");
    let out = d.ctl(&["layer", "export", &chain]);
    quiet(&out, "export to stdout");
    assert!(out.stdout == tar);
    d.ok(&["rw", "create", "p", "--parent", &chain]);
    let path = PathBuf::from(d.ok(&["rw", "mount", "p"]).trim());
    std::fs::write(path.join("new.txt"), b"new").unwrap();
    quiet(&d.ctl(&["rw", "diff", "p", "-o", work.path().join("d.tar").to_str().unwrap()]), "rw diff -o");
}

/// Issue 10: Docker's short ids. Any unique prefix of a ChainID, with or
/// without `sha256:`, names the layer in every verb and REST path; an
/// ambiguous one is a 400 naming the candidates, an unknown one a 404.
#[test]
fn short_ids_name_layers_everywhere_and_ambiguity_names_the_candidates() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    // 17 layers: two of them share their first hex digit (pigeonhole).
    let mut ids = Vec::new();
    for i in 0..17 {
        let f = write_file(work.path(), &format!("{i}.tar"), &make_tar(&[(&format!("f{i}"), b"x")]));
        ids.push(d.ok(&["layer", "import", f.to_str().unwrap()]).trim().to_owned());
    }
    let hex = |id: &str| id.trim_start_matches("sha256:").to_owned();
    let base = ids[0].clone();
    let short = format!("sha256:{}", &hex(&base)[..12]);
    assert!(d.ok(&["layer", "ls"]).contains(&short), "ls prints the short id");
    for name in [short.clone(), hex(&base)[..12].to_owned(), hex(&base)[..6].to_owned()] {
        assert_eq!(d.json(&["layer", "inspect", &name])["chain_id"], json!(base), "{name}");
        let r = d.request("GET", &format!("/v1/layers/{name}"), None, b"");
        assert_eq!(r.status, 200, "{name}");
    }
    let out = work.path().join("out.tar");
    d.ok(&["layer", "export", &short, "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(work.path().join("0.tar")).unwrap());

    // --parent by short id, for import and rw create.
    let child_tar = write_file(work.path(), "child.tar", &make_tar(&[("c", b"c")]));
    let child =
        d.ok(&["layer", "import", "--parent", &hex(&base)[..10], child_tar.to_str().unwrap()]).trim().to_owned();
    assert_eq!(child, chain_of(&base, &sha256(&std::fs::read(&child_tar).unwrap())));
    d.ok(&["rw", "create", "web", "--parent", &short]);
    assert_eq!(d.json(&["rw", "inspect", "web"])["parent"], json!(base));

    // Ambiguous: a one-digit prefix that two layers share.
    let mut by_digit: std::collections::BTreeMap<char, Vec<String>> = Default::default();
    for id in d.json(&["layer", "ls", "--format", "json"]).as_array().unwrap() {
        let id = id["chain_id"].as_str().unwrap().to_owned();
        by_digit.entry(hex(&id).chars().next().unwrap()).or_default().push(id);
    }
    let (digit, shared) = by_digit.iter().find(|(_, v)| v.len() > 1).unwrap();
    let err = d.fails(1, &["layer", "inspect", &digit.to_string()]);
    assert!(err.contains("ambiguous"), "{err}");
    for id in shared {
        assert!(err.contains(id.as_str()), "{id} not named in {err}");
    }
    let msg = d.rejects(400, "DELETE", &format!("/v1/layers/sha256:{digit}"), None, b"");
    assert!(msg.contains("ambiguous"), "{msg}");
    let msg = d.rejects(400, "POST", &format!("/v1/layers?parent={digit}"), None, &make_tar(&[("z", b"z")]));
    assert!(msg.starts_with("parent: ") && msg.contains("ambiguous"), "{msg}");
    // Unknown: a 12-digit prefix no layer has.
    let all: Vec<String> = by_digit.values().flatten().map(|id| hex(id)).collect();
    let unknown = ('0'..='9')
        .chain('a'..='f')
        .map(|c| format!("{}{c}", &hex(&base)[..11]))
        .find(|p| !all.iter().any(|id| id.starts_with(p.as_str())))
        .unwrap();
    let msg = d.rejects(404, "GET", &format!("/v1/layers/{unknown}/tar"), None, b"");
    assert!(msg.contains("no such layer sha256:"), "{msg}");
    let body = format!(r#"{{"name":"x","parent":"{unknown}"}}"#);
    let msg = d.rejects(400, "POST", "/v1/rw", Some("application/json"), body.as_bytes());
    assert!(msg.contains("no such parent"), "{msg}");

    // rm by short id (the child first: the base still has it).
    d.ok(&["rw", "rm", "web"]);
    assert!(d.ok(&["layer", "rm", &format!("sha256:{}", &hex(&child)[..12])]).contains("Deleted"));
    assert!(d.ok(&["layer", "rm", &hex(&base)[..12]]).contains("Deleted"));
    assert_eq!(d.json(&["layer", "ls", "--format", "json"]).as_array().unwrap().len(), 16);
}

/// Issue 10: `layerctl … | head` exits quietly when the reader goes away.
#[test]
fn a_closed_stdout_ends_layerctl_quietly() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let f = write_file(work.path(), "l.tar", &make_tar(&[("big.bin", &big_content(1 << 20))]));
    let chain = d.ok(&["layer", "import", f.to_str().unwrap()]).trim().to_owned();
    for args in [&["layer", "ls"][..], &["layer", "export", &chain], &["info"], &["layer", "inspect", &chain]] {
        let mut child = Command::new(LAYERCTL)
            .arg("--host")
            .arg(d.host())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before anything is written
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}
