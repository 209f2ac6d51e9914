//! Robustness of the real daemon (issue 11): safe retries with
//! `Idempotency-Key`, slow clients that must not stall it, and `kill -9` at
//! random points of a mixed workload on a journaled ext4 loop filesystem.

// A test harness: its helpers panic on any unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const LAYERD: &str = env!("CARGO_BIN_EXE_layerd");

/// A daemon on a root and socket; SIGKILLed (and waited for) when dropped.
struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(root: &Path, socket: &Path, extra: &[&str]) -> Daemon {
        let log = root.with_extension("log");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(LAYERD)
            .args(["--root", root.to_str().unwrap(), "--socket", socket.to_str().unwrap(), "--driver", "vfs"])
            .args(["--log-level", "warn"])
            .args(extra)
            .env("LAYERD_CONFIG", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut d = Daemon { child: Some(child), socket: socket.to_owned(), log };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = request(&self.socket, "GET", "/v1/_ping", &[], b"") {
                assert_eq!(r.status, 200);
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("layerd exited early ({status}): {log}");
            }
            assert!(Instant::now() < deadline, "layerd did not answer _ping in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        request(&self.socket, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn json(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8], want: u16) -> Value {
        let r = self.req(method, path, headers, body);
        let text = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, want, "{method} {path}: {text}");
        if r.body.is_empty() { Value::Null } else { serde_json::from_slice(&r.body).unwrap() }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Reply {
    status: u16,
    /// Status line and headers, lower case.
    head: String,
    body: Vec<u8>,
}

/// One HTTP/1.1 request with `Connection: close`.
fn request(socket: &Path, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Reply> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: layerd\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
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

fn make_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *content).unwrap();
    }
    b.into_inner().unwrap()
}

fn refs(d: &Daemon, chain: &str) -> u64 {
    d.json("GET", &format!("/v1/layers/{chain}"), &[], b"", 200)["references"].as_u64().unwrap()
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// A client that lost a response and sends the request again with the same
/// `Idempotency-Key` gets the first outcome; nothing runs twice.
#[test]
fn retried_requests_with_an_idempotency_key_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("root"), &dir.path().join("layerd.sock"), &[]);
    let tar = make_tar(&[("f", b"content")]);

    let key = ("Idempotency-Key", "reg-1");
    let first = d.req("POST", "/v1/layers", &[key], &tar);
    assert_eq!(first.status, 201, "{}", String::from_utf8_lossy(&first.body));
    assert!(!first.head.contains("idempotent-replayed"));
    let again = d.req("POST", "/v1/layers", &[key], &tar);
    assert_eq!(again.status, 201);
    assert!(again.head.contains("idempotent-replayed: true"), "{}", again.head);
    assert_eq!(again.body, first.body, "a repeat gets the first outcome");
    let chain = serde_json::from_slice::<Value>(&first.body).unwrap()["chain_id"].as_str().unwrap().to_owned();
    assert_eq!(refs(&d, &chain), 1, "the retried registration took no second reference");
    // A second reference, taken on purpose (no key).
    d.json("POST", "/v1/layers", &[], &tar, 201);
    assert_eq!(refs(&d, &chain), 2);

    // A retried release drops one reference, not two.
    let rel = ("Idempotency-Key", "rel-1");
    let path = format!("/v1/layers/{chain}");
    d.json("DELETE", &path, &[rel], b"", 200);
    let again = d.req("DELETE", &path, &[rel], b"");
    assert_eq!(again.status, 200);
    assert!(again.head.contains("idempotent-replayed: true"));
    assert_eq!(refs(&d, &chain), 1, "the other client's reference survives the retry");
    // The same key on another request is refused.
    let msg = d.json("POST", "/v1/layers", &[rel], &tar, 422);
    assert!(msg["message"].as_str().unwrap().contains("another request"), "{msg}");

    // RW layers: create, commit and remove, each retried.
    let create = format!(r#"{{"name":"c1","parent":"{chain}"}}"#);
    let k = ("Idempotency-Key", "create-1");
    d.json("POST", "/v1/rw", &[k, JSON], create.as_bytes(), 201);
    d.json("POST", "/v1/rw", &[k, JSON], create.as_bytes(), 201);
    d.json("POST", "/v1/rw", &[JSON], create.as_bytes(), 409);
    let k = ("Idempotency-Key", "commit-1");
    let c1 = d.json("POST", "/v1/rw/c1/commit", &[k], b"", 201);
    let c2 = d.json("POST", "/v1/rw/c1/commit", &[k], b"", 201);
    assert_eq!(c1, c2);
    assert_eq!(refs(&d, c1["chain_id"].as_str().unwrap()), 1, "the retried commit took no second reference");
    let k = ("Idempotency-Key", "rm-1");
    d.json("DELETE", "/v1/rw/c1", &[k], b"", 204);
    d.json("DELETE", "/v1/rw/c1", &[k], b"", 204);
    d.json("DELETE", "/v1/rw/c1", &[], b"", 404);

    // A failure is not remembered: the same request with the same key runs
    // again once it can succeed.
    let k = ("Idempotency-Key", "rm-2");
    d.json("DELETE", "/v1/rw/late", &[k], b"", 404);
    d.json("POST", "/v1/rw", &[JSON], br#"{"name":"late"}"#, 201);
    d.json("DELETE", "/v1/rw/late", &[k], b"", 204);

    // Bad keys are a clear 400.
    let msg = d.json("DELETE", "/v1/rw/x", &[("Idempotency-Key", "has space")], b"", 400);
    assert!(msg["message"].as_str().unwrap().contains("idempotency-key"), "{msg}");
}

/// Open a `POST /v1/layers` upload of `tar` (its full length announced),
/// send its first `sent` bytes, and leave it stalled.
fn stalled_upload(socket: &Path, query: &str, tar: &[u8], sent: usize) -> UnixStream {
    let mut s = UnixStream::connect(socket).unwrap();
    let head = format!(
        "POST /v1/layers{query} HTTP/1.1\r\nHost: layerd\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        tar.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&tar[..sent]).unwrap();
    s
}

/// Read one response (head and a `Content-Length` body); the connection
/// may stay open, since the daemon still drains the unsent request body.
fn read_response(mut s: UnixStream, limit: Duration) -> String {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if raw.len() >= end + 4 + len {
                return String::from_utf8_lossy(&raw).into_owned();
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&raw).into_owned(),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

fn metric(d: &Daemon, name: &str) -> f64 {
    let text = String::from_utf8(d.req("GET", "/metrics", &[], b"").body).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Hundreds of uploads that stall part-way — one of them leading a
/// duplicate-suppressed registration others wait on — must not stall the
/// daemon: listing, importing and releasing still answer (a liveness bound,
/// not a benchmark), the stalled uploads are given up after the idle
/// timeout, and a waiter of the stalled leader takes over and succeeds.
#[test]
fn slow_clients_do_not_stall_the_daemon() {
    const STALLED: usize = 300;
    const IDLE: u64 = 10;
    // Generous: a liveness check on a shared 2-core CI machine, not a timing claim.
    const LIVE: Duration = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("root"),
        &dir.path().join("layerd.sock"),
        &["--idle-timeout", &IDLE.to_string()],
    );
    let base = d.json("POST", "/v1/layers", &[], &make_tar(&[("base", b"base")]), 201);
    let base = base["chain_id"].as_str().unwrap().to_owned();
    d.json("POST", "/v1/layers", &[], &make_tar(&[("base", b"base")]), 201);

    let big = make_tar(&[("big", &vec![7u8; 1 << 20])]);
    let digest = {
        use std::fmt::Write as _;
        let out = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let mut stdin = out.stdin.as_ref().unwrap();
        stdin.write_all(&big).unwrap();
        let out = out.wait_with_output().unwrap();
        let hex = String::from_utf8(out.stdout).unwrap();
        let mut s = String::from("sha256:");
        write!(s, "{}", &hex[..64]).unwrap();
        s
    };
    let prefix = 16 * 1024;
    let before = metric(&d, "layerd_import_bytes_total");
    let started = Instant::now();
    let mut stalled = Vec::new();
    for i in 0..STALLED {
        // Every tenth states the same DiffID: the first leads, the others wait on it.
        let query = if i % 10 == 0 { format!("?diff_id={digest}") } else { String::new() };
        stalled.push(stalled_upload(&d.socket, &query, &big, prefix));
    }
    // A whole upload of the same content waits on the stalled leader.
    let waiter = {
        let (socket, big, digest) = (d.socket.clone(), big.clone(), digest.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = request(&socket, "POST", &format!("/v1/layers?diff_id={digest}"), &[], &big).unwrap();
            (r, t.elapsed())
        })
    };
    // Every stalled body has reached the daemon.
    let want = before + (STALLED * prefix) as f64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&d, "layerd_import_bytes_total") < want {
        assert!(Instant::now() < deadline, "the stalled uploads never all arrived");
        std::thread::sleep(Duration::from_millis(50));
    }

    let timed = |what: &str, f: &dyn Fn()| {
        let t = Instant::now();
        f();
        let e = t.elapsed();
        eprintln!("slow clients: {what} answered in {:.1} ms with {STALLED} uploads stalled", e.as_secs_f64() * 1e3);
        assert!(e < LIVE, "{what} took {e:?} with {STALLED} uploads stalled");
    };
    timed("layer ls", &|| {
        d.json("GET", "/v1/layers", &[], b"", 200);
    });
    timed("import", &|| {
        d.json("POST", "/v1/layers", &[], &make_tar(&[("fresh", b"fresh")]), 201);
    });
    timed("release", &|| {
        d.json("DELETE", &format!("/v1/layers/{base}"), &[], b"", 200);
    });
    timed("rw create", &|| {
        d.json("POST", "/v1/rw", &[JSON], br#"{"name":"live"}"#, 201);
    });
    assert!(
        started.elapsed() < Duration::from_secs(IDLE),
        "the checks ran after the idle timeout, so they did not test stalled uploads; raise IDLE"
    );

    // The stalled uploads are given up after the idle timeout, each with a clear error.
    // (The others stating the DiffID wait on the leader of the moment; once
    // the layer exists they get a reference to it, without their bodies.)
    for (i, s) in stalled.drain(..).enumerate() {
        if i == 0 || (i % 10 != 0 && i % 29 == 0) {
            let text = read_response(s, Duration::from_secs(IDLE + 60));
            assert!(text.starts_with("HTTP/1.1 400"), "upload {i}: {text}");
            assert!(text.contains("idle"), "upload {i}: {text}");
        }
    }
    // The waiter took over from the stalled leader.
    let (r, took) = waiter.join().unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["diff_id"], Value::String(digest));
    eprintln!("slow clients: the waiter of the stalled leader succeeded after {:.1} s", took.as_secs_f64());
    assert!(took < Duration::from_secs(IDLE + 60));
}
