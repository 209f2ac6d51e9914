//! `layerctl check` (the store's fsck) and `layerctl conformance`, end to end.

use serde_json::{Value, json};

use crate::support::*;

#[test]
fn check_reports_repairs_and_verifies() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let f = write_file(work.path(), "c.tar", &make_tar(&[("big.bin", &big_content(1 << 20))]));
    let chain = d.ok(&["layer", "import", f.to_str().unwrap()]).trim().to_owned();
    d.ok(&["rw", "create", "c1", "--parent", &chain]);
    assert_eq!(d.ok(&["check"]), "1 layers, 1 rw layers checked: no problems\n");
    let report = d.json(&["check", "--format", "json"]);
    assert_eq!(report, json!({"layers_checked": 1, "rw_layers_checked": 1, "problems": []}));

    // An orphaned driver dir and a stray layerdb entry: reported, exit 1.
    let orphan = "ab".repeat(32);
    let orphan_dir = d.root().join("vfs/dir").join(&orphan);
    std::fs::create_dir_all(orphan_dir.join("etc")).unwrap();
    let stray = d.root().join("image/vfs/layerdb/sha256").join("cd".repeat(32));
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("diff"), b"sha256:nothing").unwrap();
    let out = d.ctl(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("orphaned_driver_dir {orphan}: ")) && !l.ends_with("[repaired]"))
    );
    assert!(lines.iter().any(|l| l.starts_with(&format!("stray_layerdb_entry {}: ", stray.display()))), "{text}");
    assert_eq!(lines[2], "1 layers, 1 rw layers checked: 2 problems");
    let out = d.ctl(&["check", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["problems"].as_array().unwrap().len(), 2);
    assert!(report["problems"].as_array().unwrap().iter().all(|p| p["repaired"] == json!(false)));

    // --repair fixes both: exit 0, and a later check is clean.
    let out = d.ctl(&["check", "--repair"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(text.lines().filter(|l| l.ends_with(" [repaired]")).count(), 2, "{text}");
    assert!(text.ends_with("1 layers, 1 rw layers checked: 2 problems, 2 repaired\n"), "{text}");
    assert!(!orphan_dir.exists() && !stray.exists());
    assert_eq!(d.ok(&["check"]), "1 layers, 1 rw layers checked: no problems\n");

    // Damaged content is found only with --verify, and never "repaired".
    let cache_id = d.json(&["layer", "inspect", &chain])["cache_id"].as_str().unwrap().to_owned();
    let stored = d.root().join("vfs/dir").join(cache_id).join("big.bin");
    let mut data = std::fs::read(&stored).unwrap();
    data[1000] ^= 0xff;
    std::fs::write(&stored, data).unwrap();
    assert_eq!(d.ok(&["check"]), "1 layers, 1 rw layers checked: no problems\n");
    for args in [&["check", "--verify"][..], &["check", "--verify", "--repair"]] {
        let out = d.ctl(args);
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        assert!(text.starts_with(&format!("content_mismatch {chain}: ")), "{text}");
        assert!(!text.lines().next().unwrap().ends_with("[repaired]"), "{text}");
    }
    assert!(stored.exists(), "a damaged layer is never deleted");

    // The route takes its options as JSON, or no body at all.
    let r = d.request("POST", "/v1/check", None, b"");
    assert_eq!(r.status, 200);
    let r = d.request("POST", "/v1/check", Some("application/json"), br#"{"repair":false}"#);
    assert_eq!(r.status, 200);
    d.rejects(400, "POST", "/v1/check", Some("application/json"), b"{nope");
    d.rejects(422, "POST", "/v1/check", Some("application/json"), br#"{"repair":"yes"}"#);
    // A body that is not an object (serde would read `[]` as `{}`).
    for not_object in [&b"[]"[..], b"[true]", b"null", b"7", b"\"x\""] {
        let msg = d.rejects(422, "POST", "/v1/check", Some("application/json"), not_object);
        assert!(msg.contains("JSON object"), "{msg}");
    }
    d.rejects(415, "POST", "/v1/check", Some("text/plain"), b"{}");
    d.rejects(415, "POST", "/v1/check", None, b"{}");
    d.rejects(405, "GET", "/v1/check", None, b"");
}

/// `layerctl conformance`: runs the suite in-process, one line per case, the
/// contract's last line, exit 0 on success and 2 for an unknown driver.
#[test]
fn conformance_verb_runs_the_suite_and_ends_with_the_summary_line() {
    let dir = tempfile::Builder::new().prefix("layerd-conf").tempdir_in("/var/tmp").unwrap();
    let out = ctl_with(
        "unix:///nonexistent",
        &["conformance", "--driver", "overlay", "--root", dir.path().to_str().unwrap(), "--filter", "lifecycle::"],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().unwrap();
    let parts: Vec<&str> = last.split(", ").collect();
    assert_eq!(parts.len(), 3, "{last}");
    assert!(parts[0].ends_with(" passed") && parts[1] == "0 failed" && parts[2] == "0 skipped", "{last}");
    let passed: usize = parts[0].trim_end_matches(" passed").parse().unwrap();
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), passed);
    assert!(passed >= 10);
    assert_eq!(mounts_under(dir.path()), Vec::<String>::new());
    let out = ctl_with("unix:///nonexistent", &["conformance", "--driver", "zfs"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown driver \"zfs\""));
}
