//! Images end to end: `layerctl image load` of a docker-archive in docker's
//! member order (file, directory, stdin), ls/inspect/tag/rm, save in both
//! formats and load into a second daemon with equal ids; hostile archives
//! and bad references as 4xx over raw HTTP, leaving nothing behind.

use serde_json::{Value, json};

use crate::support::*;

/// A docker-archive of one two-layer image, members in `docker save`
/// (20.10)'s order: layer dirs and config first, `manifest.json` last.
fn docker_archive(tag: &str) -> (Vec<u8>, String) {
    archive_with(tag, None)
}

/// With `lie`, the config states that DiffID for the second layer.
fn archive_with(tag: &str, lie: Option<&str>) -> (Vec<u8>, String) {
    let l1 = make_tar(&[("etc/os-release", b"ID=test\n"), ("bin/big", &big_content(2 << 20))]);
    let l2 = make_tar(&[("app/run.sh", b"#!/bin/sh\necho hi\n")]);
    let (d1, d2) = (sha256(&l1), lie.map_or_else(|| sha256(&l2), str::to_owned));
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/app/run.sh"]}},"rootfs":{{"type":"layers","diff_ids":["{d1}","{d2}"]}}}}"#
    );
    let id = sha256(config.as_bytes());
    let cfg_name = format!("{}.json", &id[7..]);
    let manifest =
        format!(r#"[{{"Config":"{cfg_name}","RepoTags":["{tag}"],"Layers":["aaa/layer.tar","bbb/layer.tar"]}}]"#);
    let t = make_tar(&[
        ("aaa/layer.tar", &l1),
        ("bbb/layer.tar", &l2),
        (&cfg_name, config.as_bytes()),
        ("manifest.json", manifest.as_bytes()),
    ]);
    (t, id)
}

fn ids(ls: &Value) -> Vec<String> {
    ls.as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn images_load_ls_tag_save_rm() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    assert_eq!(d.json(&["image", "ls", "--format", "json"]), json!([]));
    let (archive, id) = docker_archive("example/app:1");
    let file = write_file(work.path(), "app.tar", &archive);
    let out = d.ok(&["image", "load", "-i", file.to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: docker.io/example/app:1");
    let ls = d.json(&["image", "ls", "--format", "json"]);
    assert_eq!(ids(&ls), vec![id.clone()]);
    let info = d.json(&["image", "inspect", "example/app:1"]);
    assert_eq!(info["id"], json!(id));
    assert_eq!(info["diff_ids"].as_array().unwrap().len(), 2);
    // Only the image holds the layers: a lease on the top, the base held by
    // its child; no persisted reference.
    let top = info["chain_id"].as_str().unwrap().to_owned();
    let l = d.json(&["layer", "inspect", &top]);
    assert_eq!((&l["references"], &l["leases"]), (&json!(0), &json!(1)));
    assert_eq!(d.json(&["layer", "ls", "--format", "json"]).as_array().unwrap().len(), 2);

    // Loading again, from stdin and from a directory, adds nothing.
    let out = ctl_with(&d.host(), &["image", "load"], Some(&archive));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = work.path().join("unpacked");
    tar::Archive::new(&archive[..]).unpack(&dir).unwrap();
    d.ok(&["image", "load", "-i", dir.to_str().unwrap()]);
    assert_eq!(d.json(&["layer", "inspect", &top])["leases"], json!(1));

    // Tag, by id prefix, and a name with a registry and a path.
    d.ok(&["image", "tag", &id[7..19], "localhost:5000/team/app:v2"]);
    let info = d.json(&["image", "inspect", "localhost:5000/team/app:v2"]);
    assert_eq!(info["names"], json!(["docker.io/example/app:1", "localhost:5000/team/app:v2"]));
    let table = d.ok(&["image", "ls"]);
    assert!(table.starts_with("NAME") && table.contains("localhost:5000/team/app:v2"), "{table}");

    // Save in both formats; each loads into a second daemon with equal ids.
    for format in ["docker", "oci"] {
        let out = work.path().join(format!("{format}.tar"));
        d.ok(&[
            "image",
            "save",
            "example/app:1",
            "localhost:5000/team/app:v2",
            "-o",
            out.to_str().unwrap(),
            "--format",
            format,
        ]);
        let e = Daemon::start();
        let loaded = ctl_with(&e.host(), &["image", "load"], Some(&std::fs::read(&out).unwrap()));
        assert!(loaded.status.success(), "{format}: {}", String::from_utf8_lossy(&loaded.stderr));
        assert_eq!(e.json(&["image", "inspect", "localhost:5000/team/app:v2"])["id"], json!(id), "{format}");
        assert_eq!(e.json(&["image", "inspect", "example/app:1"])["id"], json!(id), "{format}");
    }

    // By id with two names: refused; by name, one at a time.
    let err = d.fails(1, &["image", "rm", &id]);
    assert!(err.contains("remove the names"), "{err}");
    let out = d.ok(&["image", "rm", "example/app:1"]);
    assert_eq!(out.trim(), "Untagged: docker.io/example/app:1");
    let out = d.ok(&["image", "rm", "localhost:5000/team/app:v2"]);
    assert!(out.contains("Deleted: ") && out.contains(&id), "{out}");
    assert_eq!(layers_when_settled(&d), json!([]));
    assert_eq!(d.json(&["image", "ls", "--format", "json"]), json!([]));
}

/// `layer ls` once deferred deletions are done (polled, 10 s at most).
fn layers_when_settled(d: &Daemon) -> Value {
    let mut ls = d.json(&["layer", "ls", "--format", "json"]);
    for _ in 0..200 {
        if ls == json!([]) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        ls = d.json(&["layer", "ls", "--format", "json"]);
    }
    ls
}

#[test]
fn bad_archives_and_references_are_4xx_and_leave_nothing() {
    let d = Daemon::start();
    // DiffID mismatch: the config states other DiffIDs.
    let (bad, _) = archive_with("x:1", Some(UNKNOWN));
    let msg = d.rejects(400, "POST", "/v1/images/load", Some("application/x-tar"), &bad);
    assert!(msg.contains("diff_id"), "{msg}");
    assert_eq!(layers_when_settled(&d), json!([]), "the first layer, registered, was released");
    assert_eq!(d.json(&["image", "ls", "--format", "json"]), json!([]));
    // Not an archive; garbage; an empty body.
    d.rejects(400, "POST", "/v1/images/load", Some("application/x-tar"), &make_tar(&[("x", b"y")]));
    d.rejects(400, "POST", "/v1/images/load", Some("application/x-tar"), b"");
    // References.
    d.rejects(404, "GET", "/v1/images/nope", None, b"");
    d.rejects(400, "GET", "/v1/images/Bad%20Name", None, b"");
    d.rejects(404, "DELETE", "/v1/images/sha256%3Aabcd", None, b"");
    d.rejects(400, "POST", "/v1/images/tag", Some("application/json"), br#"{"source":"x","target":"UP"}"#);
    d.rejects(404, "POST", "/v1/images/tag", Some("application/json"), br#"{"source":"x","target":"y"}"#);
    d.rejects(404, "GET", "/v1/images/save?names=nope", None, b"");
    d.rejects(400, "GET", "/v1/images/save?names=", None, b"");
    let (archive, id) = docker_archive("x:1");
    d.request("POST", "/v1/images/load", Some("application/x-tar"), &archive);
    d.rejects(400, "GET", &format!("/v1/images/save?names={id}&format=zip"), None, b"");
    // A name with slashes, percent-encoded as one segment.
    let r = d.request("GET", "/v1/images/docker.io%2Flibrary%2Fx%3A1", None, b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// Images survive a restart, even a `kill -9`: the image's hold is a lease
/// re-taken at start-up, and the layers it holds are kept; a second
/// daemon start after `image rm` collects nothing it should keep.
#[test]
fn images_and_their_layers_survive_kill_9() {
    let work = tempfile::tempdir().unwrap();
    let (root, socket) = (work.path().join("root"), work.path().join("s.sock"));
    let mut d = Daemon::start_at(&root, &socket);
    let (archive, id) = docker_archive("keep:1");
    let out = ctl_with(&d.host(), &["image", "load"], Some(&archive));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    d.kill9();
    drop(d);
    let d = Daemon::start_at(&root, &socket);
    assert_eq!(d.json(&["image", "inspect", "keep:1"])["id"], json!(id));
    let layers = d.json(&["layer", "ls", "--format", "json"]);
    assert_eq!(layers.as_array().unwrap().len(), 2, "{layers}");
    d.ok(&["image", "rm", "keep:1"]);
    assert_eq!(layers_when_settled(&d), json!([]));
}

/// `Idempotency-Key` works on the image routes as on the others: a repeated
/// load or removal runs once and replays its outcome.
#[test]
fn image_posts_and_deletes_are_idempotent_with_a_key() {
    let d = Daemon::start();
    let (archive, _) = docker_archive("idem:1");
    let key = [("Idempotency-Key", "load-1"), ("Content-Type", "application/x-tar")];
    let first = (*d).request("POST", "/v1/images/load", &key, &archive);
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    let again = (*d).request("POST", "/v1/images/load", &key, &archive);
    assert_eq!(again.status, 200);
    assert!(again.head.contains("idempotent-replayed: true"), "{}", again.head);
    assert_eq!(again.body, first.body);
    let del = [("Idempotency-Key", "rm-1")];
    let first = (*d).request("DELETE", "/v1/images/idem:1", &del, b"");
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    let again = (*d).request("DELETE", "/v1/images/idem:1", &del, b"");
    assert_eq!((again.status, again.body), (200, first.body), "replayed, not a 404");
}
