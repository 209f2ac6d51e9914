//! The daemon as a process and a server: one daemon per root, SIGTERM and
//! restart, flags and config file, drivers (auto, overlay mounts, migration),
//! TCP with a token, info, metrics and the served OpenAPI document.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;
use testkit::daemon::wait_timeout;

#[test]
fn a_second_daemon_on_the_same_root_refuses() {
    let d = Daemon::start();
    let other_socket = d.socket().with_file_name("other.sock");
    let mut second = spawn_layerd(d.root(), &other_socket);
    let status = wait_timeout(&mut second, Duration::from_secs(30)).expect("second daemon kept running");
    assert!(!status.success());
    let mut err = String::new();
    second.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("layerd: "), "{err}");
    assert!(err.to_lowercase().contains("lock"), "the store's reason is shown: {err}");
    assert!(!other_socket.exists(), "the refused daemon bound a socket");

    // Same socket, another root: refused too, and the live socket survives.
    let other_root = d.root().with_file_name("root2");
    let mut third = spawn_layerd(&other_root, d.socket());
    let status = wait_timeout(&mut third, Duration::from_secs(30)).expect("third daemon kept running");
    assert!(!status.success());
    let mut err = String::new();
    third.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("another daemon is listening"), "{err}");
    assert_eq!(d.request("GET", "/v1/_ping", None, b"").status, 200);
}

#[test]
fn sigterm_stops_cleanly_and_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let socket = dir.path().join("layerd.sock");
    let mut d = Daemon::start_at(&root, &socket);
    let tar = make_tar(&[("x", b"y")]);
    let f = write_file(dir.path(), "x.tar", &tar);
    let chain = d.ok(&["layer", "import", f.to_str().unwrap()]).trim().to_owned();
    let info = d.json(&["info", "--format", "json"]);
    assert_eq!(info["driver"], json!("vfs"));
    assert_eq!(info["layers"], json!(1));
    assert!(d.ok(&["info"]).contains("Driver:"));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660);

    let status = d.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(!socket.exists(), "socket left behind");

    // A stale socket file does not stop a restart; the layer and its reference survive.
    std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let d = Daemon::start_at(&root, &socket);
    let info = d.json(&["layer", "inspect", &chain]);
    assert_eq!(info["references"], json!(1));
    let r = d.request("GET", "/v1/info", None, b"");
    assert_eq!(r.status, 200);
}

#[test]
fn unavailable_drivers_and_bad_flags_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(LAYERD)
        .args(["--root", dir.path().to_str().unwrap(), "--socket", dir.path().join("s").to_str().unwrap()])
        .args(["--driver", "plugin:nosuch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plugin nosuch: no socket or spec file") && err.contains("/run/docker/plugins"), "{err}");
    let out = Command::new(LAYERD).args(["--driver", "zfs"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown driver"));
}

#[test]
fn tcp_needs_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_file(dir.path(), "token", b"s3cret-token\n");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("tcp://127.0.0.1:{port}");
    let d = Daemon::start_with(
        &dir.path().join("root"),
        &dir.path().join("layerd.sock"),
        &["--listen", &listen, "--token-file", token_file.to_str().unwrap()],
    );

    let raw = |auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        testkit::http::request_tcp(&format!("127.0.0.1:{port}"), "GET", "/v1/layers", &headers, b"").unwrap()
    };
    for auth in [None, Some("Bearer wrong"), Some("Basic s3cret-token"), Some("Bearer s3cret-token2")] {
        let r = raw(auth);
        assert_eq!(r.status, 401, "{auth:?}");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["message"], json!("missing or invalid bearer token"));
    }
    assert_eq!(raw(Some("Bearer s3cret-token")).status, 200);

    let tar = make_tar(&[("t", b"cp")]);
    let f = write_file(dir.path(), "t.tar", &tar);
    let args = ["--token-file", token_file.to_str().unwrap(), "layer", "import", f.to_str().unwrap()];
    let out = ctl_with(&listen, &args, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), sha256(&tar));
    // The unix socket needs no token and sees the same store.
    assert_eq!(chain_ids(&d.json(&["layer", "ls", "--format", "json"])), vec![sha256(&tar)]);

    let out =
        Command::new(LAYERCTL).args(["--host", &listen, "layer", "ls"]).env("LAYERD_TOKEN", "wrong").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("layerctl: missing or invalid bearer token"));
    let out = Command::new(LAYERCTL)
        .args(["--host", &listen, "layer", "ls", "--format", "json"])
        .env("LAYERD_TOKEN", "s3cret-token")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn info_shows_the_driver_status_counts_and_size() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let f = write_file(work.path(), "i.tar", &make_tar(&[("a", &big_content(5000))]));
    let chain = d.ok(&["layer", "import", f.to_str().unwrap()]).trim().to_owned();
    d.ok(&["rw", "create", "i", "--parent", &chain]);
    let info = d.json(&["info", "--format", "json"]);
    assert_eq!(info["layers"], json!(1));
    assert_eq!(info["rw_layers"], json!(1));
    let size = info["layers_size"].as_u64().unwrap();
    assert!(size >= 5000, "{info}");
    let status = info["driver_status"].as_array().unwrap();
    assert!(!status.is_empty(), "vfs reports its status: {info}");

    let text = d.ok(&["info"]);
    let row = |key: &str| -> String {
        let line = text.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {text}"));
        line[key.len()..].trim().to_owned()
    };
    assert_eq!(row("Driver:"), "vfs");
    assert_eq!(row("Layers:"), "1");
    assert_eq!(row("RW layers:"), "1");
    assert_eq!(row("Layers size:"), daemon::cli::output::human_size(size));
    assert_eq!(row("Root:"), d.root().display().to_string());
    // The driver's status pairs, as an indented block in the driver's order.
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| *l == "Driver status:").unwrap_or_else(|| panic!("{text}"));
    for (i, pair) in status.iter().enumerate() {
        let (k, v) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        let line = lines[at + 1 + i];
        assert!(line.starts_with(&format!("  {k}:")) && line.ends_with(v), "{line:?} for {k}={v}");
    }
}

#[test]
fn metrics_parse_strictly_and_count_what_happened() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let tar = make_tar(&[("m.txt", b"metrics"), ("big.bin", &big_content(300_000))]);
    let f = write_file(work.path(), "m.tar", &tar);
    let chain = d.ok(&["layer", "import", f.to_str().unwrap()]).trim().to_owned();
    d.ok(&["rw", "create", "m", "--parent", &chain]);
    assert!(d.ctl(&["layer", "export", &chain]).stdout == tar);
    d.rejects(404, "GET", &format!("/v1/layers/{UNKNOWN}"), None, b"");
    d.rejects(404, "GET", "/v1/nothing/here", None, b"");
    let layers_size = d.json(&["info", "--format", "json"])["layers_size"].as_f64().unwrap();

    let r = d.request("GET", "/metrics", None, b"");
    assert_eq!(r.status, 200);
    assert!(r.head.contains("content-type: application/openmetrics-text; version=1.0.0"), "{}", r.head);
    let text = String::from_utf8(r.body).unwrap();
    let m = crate::support::exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    assert_eq!(m.value("layerd_layers", &[]), Some(1.0), "{text}");
    assert_eq!(m.value("layerd_rw_layers", &[]), Some(1.0));
    assert_eq!(m.value("layerd_layers_size_bytes", &[]), Some(layers_size));
    assert_eq!(m.value("layerd_import_bytes_total", &[]), Some(tar.len() as f64));
    assert_eq!(m.value("layerd_export_bytes_total", &[]), Some(tar.len() as f64));

    let requests = |method, route, status| {
        m.value("layerd_http_requests_total", &[("method", method), ("route", route), ("status", status)])
    };
    assert_eq!(requests("POST", "/v1/layers", "2xx"), Some(1.0));
    assert_eq!(requests("POST", "/v1/rw", "2xx"), Some(1.0));
    assert_eq!(requests("GET", "/v1/layers/{chain}/tar", "2xx"), Some(1.0));
    assert_eq!(requests("GET", "/v1/layers/{chain}", "4xx"), Some(1.0));
    assert_eq!(requests("GET", "unmatched", "4xx"), Some(1.0));
    let duration = m.value(
        "layerd_http_request_duration_seconds_count",
        &[("method", "POST"), ("route", "/v1/layers"), ("status", "2xx")],
    );
    assert_eq!(duration, Some(1.0));
    // Route labels are templates, never raw paths.
    for f in &m.families {
        for s in &f.samples {
            if let Some(route) = s.labels.get("route") {
                assert!(route == "unmatched" || !route.contains("sha256") && !route.contains("nothing"), "{route}");
            }
        }
    }

    for (family, kind) in [
        ("layerd_lock_wait_seconds", "histogram"),
        ("layerd_lock_hold_seconds", "histogram"),
        ("layerd_http_request_duration_seconds", "histogram"),
        ("layerd_http_requests", "counter"),
        ("layerd_store_key_entries", "gauge"),
    ] {
        assert_eq!(m.family(family).map(|f| f.kind.as_str()), Some(kind), "{family}");
    }
    for lock in ["layers_map", "mounts_map", "chain_keys", "name_keys"] {
        for family in ["layerd_lock_wait_seconds", "layerd_lock_hold_seconds"] {
            let count = m.value(&format!("{family}_count"), &[("lock", lock)]);
            assert!(count.is_some(), "{family}{{lock={lock}}} missing");
            if lock.ends_with("_map") {
                assert!(count.is_some_and(|c| c > 0.0), "{family}{{lock={lock}}}: {count:?}");
            }
            let inf = m.value(&format!("{family}_bucket"), &[("lock", lock), ("le", "+Inf")]);
            assert_eq!(inf, count);
        }
    }
    for kind in ["chain_keys", "name_keys", "flights"] {
        assert_eq!(m.value("layerd_store_key_entries", &[("kind", kind)]), Some(0.0), "idle store: {kind}");
    }
}

#[test]
fn the_served_openapi_document_is_the_checked_in_one_and_every_operation_answers() {
    let d = Daemon::start();
    let r = d.request("GET", "/v1/openapi.json", None, b"");
    assert_eq!(r.status, 200);
    assert!(r.head.contains("content-type: application/json"), "{}", r.head);
    let checked_in = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json")).unwrap();
    assert!(r.body == checked_in, "the daemon serves another document than daemon/openapi.json");
    let doc: Value = serde_json::from_slice(&r.body).unwrap();

    // Call every documented operation on things that do not exist: each must
    // reach its handler (no 405, no "no such endpoint") and answer a status
    // the document lists for it.
    let mut calls = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap().iter().filter(|(k, _)| *k != "parameters") {
            let method = method.to_uppercase();
            let concrete = path.replace("{chain}", UNKNOWN).replace("{name}", "openapi-probe");
            let json_body = op["requestBody"]["content"].get("application/json").is_some();
            let (ct, body): (Option<&str>, &[u8]) =
                if json_body { (Some("application/json"), b"{}") } else { (None, b"") };
            let r = d.request(&method, &concrete, ct, body);
            let text = String::from_utf8_lossy(&r.body);
            assert_ne!(r.status, 405, "{method} {path}: {text}");
            if r.status == 404 {
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                let msg = v["message"].as_str().unwrap();
                assert!(!msg.starts_with("no such endpoint"), "{method} {path} is documented but not routed");
            }
            assert!(
                op["responses"].get(r.status.to_string()).is_some(),
                "{method} {path} answered {}, which the document does not list: {text}",
                r.status
            );
            if r.status >= 400 {
                let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("{method} {path}: {text}"));
                assert!(v["message"].is_string(), "{method} {path}: {text}");
            }
            calls += 1;
        }
    }
    assert!(calls >= 20, "{calls}");
    // The empty body sent to `POST /v1/layers` is an empty layer, as Go's
    // reader (and Docker) take it: its DiffID is the sha256 of nothing.
    let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    d.ok(&["layer", "rm", empty]);
    assert_eq!(d.json(&["layer", "ls", "--format", "json"]), json!([]));
    assert_eq!(d.json(&["rw", "ls", "--format", "json"]), json!([]));
}

#[test]
fn a_config_file_supplies_the_flags_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    // Paths relative to the file's directory.
    let cfg = write_file(
        dir.path(),
        "layerd.toml",
        b"# layerd settings\nroot = \"data\"\nsocket = \"run/cfg.sock\"\ndriver = \"vfs\"\nlog_level = \"warn\"\n",
    );
    let spawn = |extra: &[&str]| {
        Command::new(LAYERD)
            .arg("--config")
            .arg(&cfg)
            .args(extra)
            .env_remove("LAYERD_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let root = dir.path().join("data");
    let socket = dir.path().join("run/cfg.sock");
    let mut d = Daemon::adopt(spawn(&[]), &root, &socket);
    let info = d.json(&["info", "--format", "json"]);
    assert_eq!(info["root"], json!(root.to_str().unwrap()));
    assert_eq!(info["driver"], json!("vfs"));
    assert!(d.terminate().success());

    let flag_socket = dir.path().join("flag.sock");
    let mut d = Daemon::adopt(spawn(&["--socket", flag_socket.to_str().unwrap()]), &root, &flag_socket);
    assert!(!socket.exists(), "the file's socket was used although --socket was given");
    assert!(d.terminate().success());

    // A typo is an error naming the key, before anything is touched.
    let fresh_root = dir.path().join("never");
    let bad = write_file(
        dir.path(),
        "bad.toml",
        format!("root = \"{}\"\nsokcet = \"/tmp/x.sock\"\n", fresh_root.display()).as_bytes(),
    );
    let out = Command::new(LAYERD).arg("--config").arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown field") && err.contains("sokcet") && err.contains("bad.toml"), "{err}");
    assert!(!fresh_root.exists());
    let out = Command::new(LAYERD).arg("--config").arg(dir.path().join("missing.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

/// Issue 3: the daemon on the real kernel overlay driver — mounts counted,
/// undone on SIGTERM, and undone at start-up after a `kill -9` left them.
#[test]
fn overlay_daemon_undoes_its_mounts_on_shutdown_and_after_a_crash() {
    let dir = tempfile::Builder::new().prefix("layerd-ovl").tempdir_in("/var/tmp").unwrap();
    let (root, socket) = (dir.path().join("root"), dir.path().join("s.sock"));
    let _unmount = UnmountOnDrop(root.clone());
    let work = tempfile::tempdir().unwrap();
    let base_tar = make_tar(&[("etc/hostname", b"box\n"), ("bin/tool", b"#!/bin/sh\n")]);
    let base_file = write_file(work.path(), "base.tar", &base_tar);

    let mut d = Daemon::start_with(&root, &socket, &["--driver", "overlay"]);
    assert!(d.ok(&["info"]).contains("overlay"));
    let base = d.ok(&["layer", "import", base_file.to_str().unwrap()]).trim().to_owned();
    d.ok(&["rw", "create", "c1", "--parent", &base, "--init"]);
    let path = PathBuf::from(d.ok(&["rw", "mount", "c1"]).trim());
    assert_eq!(std::fs::read(path.join("etc/hostname")).unwrap(), b"box\n");
    std::fs::write(path.join("etc/hostname"), b"c1\n").unwrap();
    std::fs::remove_file(path.join("bin/tool")).unwrap();
    assert!(!mounts_under(&root).is_empty(), "the rw layer must be a real overlay mount");
    let changes = d.ok(&["rw", "changes", "c1"]);
    assert!(changes.contains("C /etc/hostname") && changes.contains("D /bin/tool"), "{changes}");
    let child = d.ok(&["rw", "commit", "c1"]).trim().to_owned();
    let out = work.path().join("base.out");
    d.ok(&["layer", "export", &base, "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), base_tar, "overlay export is byte-exact");
    d.ok(&["layer", "export", &child, "-o", out.to_str().unwrap()]);
    let mut a = tar::Archive::new(std::fs::File::open(&out).unwrap());
    let names: Vec<String> = a.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    assert!(names.iter().any(|n| n.ends_with(".wh.tool")), "deletion exported as a whiteout: {names:?}");
    assert!(d.terminate().success());
    assert_eq!(mounts_under(&root), Vec::<String>::new(), "mounts left after SIGTERM");

    // A crash with a mount in place: the next start undoes it.
    let mut d = Daemon::start_with(&root, &socket, &["--driver", "overlay"]);
    let path = PathBuf::from(d.ok(&["rw", "mount", "c1"]).trim());
    assert_eq!(std::fs::read(path.join("etc/hostname")).unwrap(), b"c1\n", "rw data survives a restart");
    d.kill9();
    assert!(!mounts_under(&root).is_empty(), "kill -9 leaves the mount (as a crash would)");
    let mut d = Daemon::start_with(&root, &socket, &["--driver", "overlay"]);
    assert_eq!(mounts_under(&root), Vec::<String>::new(), "start-up must undo a crashed daemon's mounts");
    let rw = d.json(&["rw", "inspect", "c1"]);
    assert_eq!(rw["mount_count"], json!(0));
    let report = d.ok(&["check", "--verify"]);
    assert!(report.contains("no problems"), "{report}");
    d.ok(&["rw", "rm", "c1"]);
    d.ok(&["layer", "rm", &child]);
    d.ok(&["layer", "rm", &base]);
    assert!(d.terminate().success());
    assert_eq!(mounts_under(&root), Vec::<String>::new());
}

/// The default `--driver auto`: a fresh root gets overlay on this host; a
/// root holding another driver's layers keeps that driver (dockerd's rule).
#[test]
fn auto_driver_prefers_the_roots_own_then_overlay() {
    let dir = tempfile::Builder::new().prefix("layerd-auto").tempdir_in("/var/tmp").unwrap();
    let fresh = dir.path().join("fresh");
    let _unmount = UnmountOnDrop(dir.path().to_owned());
    let mut d = Daemon::start_with(&fresh, &dir.path().join("a.sock"), &["--driver", "auto"]);
    assert_eq!(d.json(&["info", "--format", "json"])["driver"], json!("overlay2"));
    assert!(d.terminate().success());

    let used = dir.path().join("used");
    let socket = dir.path().join("b.sock");
    let mut d = Daemon::start_with(&used, &socket, &["--driver", "vfs"]);
    let work = tempfile::tempdir().unwrap();
    let f = write_file(work.path(), "l.tar", &make_tar(&[("x", b"x")]));
    let chain = d.ok(&["layer", "import", f.to_str().unwrap()]).trim().to_owned();
    assert!(d.terminate().success());
    let mut d = Daemon::start_with(&used, &socket, &["--driver", "auto"]);
    let info = d.json(&["info", "--format", "json"]);
    assert_eq!(info["driver"], json!("vfs"), "a root with vfs layers keeps vfs: {info}");
    assert_eq!(chain_ids(&d.json(&["layer", "ls", "--format", "json"])), vec![chain]);
    assert!(d.terminate().success());
}

/// Issue 10: a root an earlier layerd wrote under the name `overlay` is
/// moved to Docker's `overlay2` once, at start-up, and keeps its layers and
/// RW layers; `overlay` stays a flag alias.
#[test]
fn an_earlier_layerd_overlay_root_migrates_to_overlay2_at_start_up() {
    let dir = tempfile::Builder::new().prefix("layerd-mig").tempdir_in("/var/tmp").unwrap();
    let (root, socket) = (dir.path().join("root"), dir.path().join("s.sock"));
    let _unmount = UnmountOnDrop(root.clone());
    let work = tempfile::tempdir().unwrap();
    let tar = make_tar(&[("etc/hostname", b"box\n")]);
    let f = write_file(work.path(), "l.tar", &tar);
    let mut d = Daemon::start_with(&root, &socket, &["--driver", "overlay"]);
    assert_eq!(d.json(&["info", "--format", "json"])["driver"], json!("overlay2"));
    let chain = d.ok(&["layer", "import", f.to_str().unwrap()]).trim().to_owned();
    d.ok(&["rw", "create", "c1", "--parent", &chain]);
    assert!(d.terminate().success());
    assert!(root.join("overlay2").is_dir() && root.join("image/overlay2/layerdb").is_dir());
    // What an earlier layerd left: the same dirs under the name `overlay`.
    std::fs::rename(root.join("overlay2"), root.join("overlay")).unwrap();
    std::fs::rename(root.join("image/overlay2"), root.join("image/overlay")).unwrap();

    let mut d = Daemon::start_with(&root, &socket, &["--driver", "auto"]);
    assert_eq!(d.json(&["info", "--format", "json"])["driver"], json!("overlay2"));
    assert_eq!(chain_ids(&d.json(&["layer", "ls", "--format", "json"])), vec![chain.clone()]);
    assert_eq!(d.json(&["rw", "inspect", "c1"])["parent"], json!(chain));
    let out = work.path().join("out.tar");
    d.ok(&["layer", "export", &chain, "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), tar);
    assert!(d.terminate().success());
    let mut top: Vec<String> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    top.sort();
    assert_eq!(top, ["image", "layerd.lock", "overlay2"], "no `overlay` dir left beside `overlay2`");
    let image: Vec<_> = std::fs::read_dir(root.join("image")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(image, ["overlay2"]);
}
