//! Read-write layers end to end: create, mount, changes, diff, commit, remove.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::support::*;

#[test]
fn rw_layers_lifecycle() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let base_file = write_file(work.path(), "base.tar", &make_tar(&[("etc/hostname", b"box\n"), ("old.txt", b"old")]));
    let base = d.ok(&["layer", "import", base_file.to_str().unwrap()]).trim().to_owned();

    assert_eq!(d.ok(&["rw", "create", "web", "--parent", &base, "--init"]).trim(), "web");
    let ls = d.json(&["rw", "ls", "--format", "json"]);
    assert_eq!(ls.as_array().unwrap().len(), 1);
    assert_eq!(ls[0]["name"], json!("web"));
    assert_eq!(ls[0]["parent"], json!(base));
    assert!(d.ok(&["rw", "ls"]).contains("web"));
    let err = d.fails(1, &["rw", "create", "web"]);
    assert!(err.contains("already in use"), "{err}");

    let path = PathBuf::from(d.ok(&["rw", "mount", "web"]).trim());
    assert!(path.is_absolute(), "{path:?}");
    assert_eq!(std::fs::read(path.join("etc/hostname")).unwrap(), b"box\n");
    std::fs::write(path.join("hello.txt"), b"hello").unwrap();
    std::fs::write(path.join("etc/hostname"), b"web\n").unwrap();
    std::fs::remove_file(path.join("old.txt")).unwrap();
    let rw = d.json(&["rw", "inspect", "web"]);
    assert_eq!(rw["mount_count"], json!(1));

    let changes = d.ok(&["rw", "changes", "web"]);
    let lines: Vec<&str> = changes.lines().collect();
    for want in ["A /hello.txt", "C /etc/hostname", "D /old.txt"] {
        assert!(lines.contains(&want), "{want} missing in {changes}");
    }
    let json_changes = d.json(&["rw", "changes", "web", "--format", "json"]);
    assert!(json_changes.as_array().unwrap().iter().any(|c| c["path"] == json!("/hello.txt")));

    let diff = work.path().join("diff.tar");
    d.ok(&["rw", "diff", "web", "-o", diff.to_str().unwrap()]);
    let mut names = Vec::new();
    for e in tar::Archive::new(std::fs::File::open(&diff).unwrap()).entries().unwrap() {
        names.push(e.unwrap().path().unwrap().to_string_lossy().into_owned());
    }
    assert!(names.iter().any(|n| n == "hello.txt"), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with(".wh.old.txt")), "{names:?}");

    let committed = d.ok(&["rw", "commit", "web"]).trim().to_owned();
    let info = d.json(&["layer", "inspect", &committed]);
    assert_eq!(info["parent"], json!(base));
    let exported = d.ctl(&["layer", "export", &committed]).stdout;
    let mut names = Vec::new();
    for e in tar::Archive::new(exported.as_slice()).entries().unwrap() {
        names.push(e.unwrap().path().unwrap().to_string_lossy().into_owned());
    }
    assert!(names.iter().any(|n| n == "hello.txt"), "{names:?}");

    d.ok(&["rw", "unmount", "web"]);
    assert_eq!(d.json(&["rw", "inspect", "web"])["mount_count"], json!(0));
    assert_eq!(d.ok(&["rw", "rm", "web"]).trim(), "web");
    assert_eq!(d.json(&["rw", "ls", "--format", "json"]), json!([]));
    let err = d.fails(1, &["rw", "mount", "web"]);
    assert!(err.contains("no such rw layer"), "{err}");
}

#[test]
fn rw_rm_removes_many_and_reports_each() {
    let d = Daemon::start();
    let names: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
    for n in &names {
        d.ok(&["rw", "create", n]);
    }
    let mut args = vec!["rw", "rm"];
    args.extend(names.iter().map(String::as_str));
    args.extend(["missing", "bad!"]);
    let out = d.ctl(&args);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), names.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(stderr.contains("layerctl: missing: no such rw layer"), "{stderr}");
    assert!(stderr.contains("layerctl: bad!: invalid name"), "{stderr}");
    assert_eq!(d.json(&["rw", "ls", "--format", "json"]), json!([]));

    let r = d.request("POST", "/v1/rw/delete", Some("application/json"), br#"{"names":["nope","x/y"]}"#);
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["results"][0]["name"], json!("nope"));
    assert_eq!(v["results"][0]["ok"], json!(false));
    assert!(v["results"][1]["error"].as_str().unwrap().contains("invalid name"));
}
