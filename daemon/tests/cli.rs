//! End-to-end tests: the real `layerd` on a temp root and socket, driven by
//! the real `layerctl` and by raw HTTP for input the CLI would never send.

// A test harness: its helpers panic on any unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;
use support::exposition;

const LAYERD: &str = env!("CARGO_BIN_EXE_layerd");
const LAYERCTL: &str = env!("CARGO_BIN_EXE_layerctl");
const UNKNOWN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

/// A running daemon; killed (SIGTERM, then SIGKILL) when dropped, so a failing
/// test never leaves one behind.
struct Daemon {
    child: Option<Child>,
    root: PathBuf,
    socket: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let socket = dir.path().join("run/layerd.sock");
        let mut d = Daemon::start_at(&root, &socket);
        d._dir = Some(dir);
        d
    }

    fn start_at(root: &Path, socket: &Path) -> Daemon {
        Daemon::start_with(root, socket, &[])
    }

    fn start_with(root: &Path, socket: &Path, extra: &[&str]) -> Daemon {
        let child = spawn_layerd_with(root, socket, extra);
        let mut d = Daemon { child: Some(child), root: root.to_owned(), socket: socket.to_owned(), _dir: None };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = try_request(&self.socket, "GET", "/v1/_ping", None, b"") {
                assert_eq!(r.status, 200);
                assert_eq!(r.body, b"OK");
                return;
            }
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                panic!("layerd exited early ({status}): {err}");
            }
            assert!(Instant::now() < deadline, "layerd did not answer _ping in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Run layerctl against this daemon.
    fn ctl(&self, args: &[&str]) -> Output {
        ctl_with(&self.host(), args, None)
    }

    /// Run layerctl, expect success, return stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(out.status.success(), "layerctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run layerctl, expect exit code `code`, return stderr.
    fn fails(&self, code: i32, args: &[&str]) -> String {
        let out = self.ctl(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "layerctl {args:?}: {err}");
        err
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn request(&self, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
        try_request(&self.socket, method, path, content_type, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Expect a JSON error with `status`; returns the message.
    fn rejects(&self, status: u16, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> String {
        let r = self.request(method, path, content_type, body);
        let text = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, status, "{method} {path}: {text}");
        let v: Value =
            serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        let msg = v["message"].as_str().unwrap_or_else(|| panic!("{method} {path}: no message: {text}"));
        assert!(!msg.is_empty());
        // The error's class travels beside the message, consistent with the status.
        let kind = v["kind"].as_str().unwrap_or_else(|| panic!("{method} {path}: no kind: {text}"));
        let want: &[&str] = match status {
            404 => &["not_found"],
            409 => &["conflict", "already_exists"],
            501 => &["unsupported"],
            400..=499 => &["invalid_argument"],
            _ => &["internal", "data_loss"],
        };
        assert!(want.contains(&kind), "{method} {path}: kind {kind:?} for status {status}: {text}");
        msg.to_owned()
    }

    /// SIGTERM and wait for the exit.
    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        signal(&child, "TERM");
        wait_timeout(&mut child, Duration::from_secs(30)).expect("layerd did not stop on SIGTERM")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn spawn_layerd(root: &Path, socket: &Path) -> Child {
    spawn_layerd_with(root, socket, &[])
}

fn spawn_layerd_with(root: &Path, socket: &Path, extra: &[&str]) -> Child {
    let driver: &[&str] = if extra.contains(&"--driver") { &[] } else { &["--driver", "vfs"] };
    Command::new(LAYERD)
        .args(["--root", root.to_str().unwrap(), "--socket", socket.to_str().unwrap()])
        .args(driver)
        .args(["--log-level", "warn"])
        .args(extra)
        // Hermetic: never pick up the host's /etc/layerd/config.toml.
        .env("LAYERD_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status();
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ctl_with(host: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(LAYERCTL)
        .arg("--host")
        .arg(host)
        .args(args)
        .env_remove("LAYERD_HOST")
        .env_remove("LAYERD_TOKEN")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        });
    }
    child.wait_with_output().unwrap()
}

struct Reply {
    status: u16,
    /// The status line and headers, lower case.
    head: String,
    body: Vec<u8>,
}

/// One HTTP/1.1 request with `Connection: close`. The body is written from a
/// thread so a server that answers before reading all of it is fine.
fn try_request(
    socket: &Path,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: layerd\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    let mut writer = stream.try_clone()?;
    let mut payload = head.into_bytes();
    payload.extend_from_slice(body);
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&payload);
    });
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let _ = sender.join();
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> std::io::Result<Reply> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("no status"))?;
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body).ok_or_else(|| bad("bad or truncated chunked body"))?;
    }
    Ok(Reply { status, head, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).ok()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// A tar with the given regular files (path, content).
fn make_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *content).unwrap();
    }
    b.into_inner().unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    layer::Digest::of(bytes).to_string()
}

fn chain_of(parent: &str, diff: &str) -> String {
    let parent = layer::ChainId::parse(parent).unwrap();
    let diff = layer::DiffId::parse(diff).unwrap();
    layer::ChainId::of(Some(&parent), &diff).to_string()
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn chain_ids(ls: &Value) -> Vec<String> {
    let mut v: Vec<String> =
        ls.as_array().unwrap().iter().map(|l| l["chain_id"].as_str().unwrap().to_owned()).collect();
    v.sort();
    v
}

fn big_content(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x & 0xff) as u8
        })
        .collect()
}

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
        walk(&d.root).into_iter().filter(|p| p.file_name().is_some_and(|n| n == "big.bin")).collect();
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
    let r = try_request(&d.socket, "GET", &format!("/v1/layers/{chain}/tar"), None, b"");
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

#[test]
fn a_second_daemon_on_the_same_root_refuses() {
    let d = Daemon::start();
    let other_socket = d.socket.with_file_name("other.sock");
    let mut second = spawn_layerd(&d.root, &other_socket);
    let status = wait_timeout(&mut second, Duration::from_secs(30)).expect("second daemon kept running");
    assert!(!status.success());
    let mut err = String::new();
    second.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("layerd: "), "{err}");
    assert!(err.to_lowercase().contains("lock"), "the store's reason is shown: {err}");
    assert!(!other_socket.exists(), "the refused daemon bound a socket");

    // Same socket, another root: refused too, and the live socket survives.
    let other_root = d.root.with_file_name("root2");
    let mut third = spawn_layerd(&other_root, &d.socket);
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
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        write!(s, "GET /v1/layers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n").unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        parse_reply(&out).unwrap()
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
    assert_eq!(row("Root:"), d.root.display().to_string());
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
    let m = exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

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
    let orphan_dir = d.root.join("vfs/dir").join(&orphan);
    std::fs::create_dir_all(orphan_dir.join("etc")).unwrap();
    let stray = d.root.join("image/vfs/layerdb/sha256").join("cd".repeat(32));
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
    let stored = d.root.join("vfs/dir").join(cache_id).join("big.bin");
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
    let mut d = Daemon { child: Some(spawn(&[])), root: root.clone(), socket: socket.clone(), _dir: None };
    d.wait_ready();
    let info = d.json(&["info", "--format", "json"]);
    assert_eq!(info["root"], json!(root.to_str().unwrap()));
    assert_eq!(info["driver"], json!("vfs"));
    assert!(d.terminate().success());

    let flag_socket = dir.path().join("flag.sock");
    let mut d = Daemon {
        child: Some(spawn(&["--socket", flag_socket.to_str().unwrap()])),
        root: root.clone(),
        socket: flag_socket.clone(),
        _dir: None,
    };
    d.wait_ready();
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

/// Lazily unmounts whatever is still mounted under a dir, even when the test
/// panics (the killed daemon of the crash case can't clean up after itself).
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        for m in mounts_under(&self.0).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// Mount points under `dir`, from this process's mount table.
fn mounts_under(dir: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = dir.display().to_string();
    table.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&prefix)).map(str::to_owned).collect()
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
    let mut child_proc = d.child.take().unwrap();
    child_proc.kill().unwrap();
    child_proc.wait().unwrap();
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
