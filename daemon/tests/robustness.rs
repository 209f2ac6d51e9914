//! Robustness of the real daemon (issue 11): safe retries with
//! `Idempotency-Key`, slow clients that must not stall it, and `kill -9` at
//! random points of a mixed workload on a journaled ext4 loop filesystem.

// A test harness: its helpers panic on any unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::http::request;
use testkit::tars::files_tar as make_tar;
use testkit::{DaemonUnderTest, Reply};

const LAYERD: &str = env!("CARGO_BIN_EXE_layerd");

/// A daemon on a root and socket, stderr logged beside the root;
/// SIGKILLed (and waited for) when dropped.
struct Daemon(DaemonUnderTest);

impl Daemon {
    fn start(root: &Path, socket: &Path, extra: &[&str]) -> Daemon {
        Daemon(DaemonUnderTest::start_logged(LAYERD.as_ref(), root, socket, extra))
    }

    fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        self.0.request(method, path, headers, body)
    }

    fn json(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8], want: u16) -> Value {
        let r = self.req(method, path, headers, body);
        let text = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, want, "{method} {path}: {text}");
        if r.body.is_empty() { Value::Null } else { serde_json::from_slice(&r.body).unwrap() }
    }

    fn socket(&self) -> PathBuf {
        self.0.socket().to_owned()
    }

    fn kill9(&mut self) {
        self.0.kill9();
    }
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
    // The same key with another JSON body is another request.
    d.json("POST", "/v1/rw", &[k, JSON], br#"{"name":"c2"}"#, 422);
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
        stalled.push(stalled_upload(&d.socket(), &query, &big, prefix));
    }
    // A whole upload of the same content waits on the stalled leader.
    let waiter = {
        let (socket, big, digest) = (d.socket(), big.clone(), digest.clone());
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

/// A throwaway journaled ext4 on a loop device, mounted; unmounted,
/// detached and deleted on drop, also when a test panics. Needs root,
/// `mkfs.ext4` (e2fsprogs) and `losetup` (util-linux).
struct Ext4Loop {
    dir: Option<tempfile::TempDir>,
    mnt: PathBuf,
    mounted: bool,
}

fn sh(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Ext4Loop {
    fn new(size_mb: u64) -> Result<Ext4Loop, String> {
        let base = if Path::new("/var/tmp").is_dir() { PathBuf::from("/var/tmp") } else { std::env::temp_dir() };
        let dir = tempfile::Builder::new().prefix("layerd-ext4").tempdir_in(base).map_err(|e| e.to_string())?;
        let image = dir.path().join("ext4.img");
        let mnt = dir.path().join("mnt");
        let mut lo = Ext4Loop { mnt: mnt.clone(), dir: Some(dir), mounted: false };
        let f = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        f.set_len(size_mb << 20).map_err(|e| e.to_string())?;
        drop(f);
        // ext4's default: a journal, data=ordered.
        sh(Command::new("mkfs.ext4").args(["-q", "-F", "-O", "has_journal"]).arg(&image))?;
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        let dev = sh(Command::new("losetup").args(["--find", "--show"]).arg(&image))?.trim().to_owned();
        if let Err(e) = sh(Command::new("mount").args(["-t", "ext4", &dev]).arg(&mnt)) {
            let _ = sh(Command::new("losetup").args(["-d", &dev]));
            return Err(e);
        }
        lo.mounted = true;
        // Busy now: this only sets auto-clear, so the device goes with the mount.
        sh(Command::new("losetup").args(["-d", &dev]))?;
        Ok(lo)
    }

    fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for Ext4Loop {
    fn drop(&mut self) {
        if self.mounted && sh(Command::new("umount").arg(&self.mnt)).is_err() {
            let _ = sh(Command::new("umount").arg("-l").arg(&self.mnt));
        }
        let still = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|m| m.contains(&self.mnt.display().to_string()))
            .unwrap_or(true);
        if still {
            // Never delete the dir of a live mount; leave it for the operator.
            if let Some(d) = self.dir.take() {
                let _ = d.keep();
            }
        }
    }
}

/// A small xorshift generator: no dependency, and a seed to print.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RwState {
    Present,
    /// A request on it is in flight (create, remove or commit): either way.
    InFlight,
}

/// What the daemon acknowledged, and what was in flight when it died.
#[derive(Debug, Default)]
struct Ledger {
    /// References acknowledged and not being released.
    refs: BTreeMap<String, u64>,
    /// Releases in flight, per layer.
    releasing: BTreeMap<String, u64>,
    /// Registrations and commits in flight (their layer is known only from
    /// the answer).
    adding: u64,
    rws: BTreeMap<String, RwState>,
    acked: u64,
    server_errors: Vec<String>,
}

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

fn contents() -> Vec<Vec<u8>> {
    (0..8u8)
        .map(|k| {
            let big = vec![k; 4096 * (1 + 60 * (k as usize % 3))];
            make_tar(&[(&format!("d{k}/small"), &[k; 100][..]), (&format!("d{k}/big"), &big[..])])
        })
        .collect()
}

/// One client of the mixed workload; returns when the daemon is gone.
fn crash_client(socket: PathBuf, ledger: Arc<Mutex<Ledger>>, seed: u64, tars: Arc<Vec<Vec<u8>>>) {
    let mut rng = Rng(seed | 1);
    loop {
        let op = rng.below(100);
        let mut l = ledger.lock().unwrap();
        let held: Vec<String> = l.refs.iter().filter(|(_, n)| **n > 0).map(|(c, _)| c.clone()).collect();
        let pick = |rng: &mut Rng, v: &[String]| (!v.is_empty()).then(|| v[rng.below(v.len() as u64) as usize].clone());
        let res = match op {
            // Register, on a held parent half the time.
            0..=34 => {
                let tar = tars[rng.below(tars.len() as u64) as usize].clone();
                let parent = if rng.below(2) == 0 { pick(&mut rng, &held) } else { None };
                l.adding += 1;
                drop(l);
                let q = parent.map(|p| format!("?parent={p}")).unwrap_or_default();
                let r = request(&socket, "POST", &format!("/v1/layers{q}"), &[], &tar);
                let mut l = ledger.lock().unwrap();
                if let Ok(r) = &r {
                    l.adding -= 1;
                    if r.status == 201 {
                        let v: Value = serde_json::from_slice(&r.body).unwrap();
                        *l.refs.entry(v["chain_id"].as_str().unwrap().to_owned()).or_default() += 1;
                        l.acked += 1;
                    }
                }
                r
            }
            // Release a held reference.
            35..=59 => {
                let Some(c) = pick(&mut rng, &held) else { continue };
                *l.refs.get_mut(&c).unwrap() -= 1;
                *l.releasing.entry(c.clone()).or_default() += 1;
                drop(l);
                let r = request(&socket, "DELETE", &format!("/v1/layers/{c}"), &[], b"");
                let mut l = ledger.lock().unwrap();
                if let Ok(r) = &r {
                    *l.releasing.get_mut(&c).unwrap() -= 1;
                    if r.status == 200 {
                        l.acked += 1;
                    } else {
                        *l.refs.get_mut(&c).unwrap() += 1;
                    }
                }
                r
            }
            // Create an RW layer.
            60..=74 => {
                let name = format!("rw{}", rng.below(12));
                if l.rws.contains_key(&name) {
                    continue;
                }
                let parent = pick(&mut rng, &held);
                l.rws.insert(name.clone(), RwState::InFlight);
                drop(l);
                let body = match parent {
                    Some(p) => format!(r#"{{"name":"{name}","parent":"{p}","init":true}}"#),
                    None => format!(r#"{{"name":"{name}"}}"#),
                };
                let r = request(&socket, "POST", "/v1/rw", &[JSON], body.as_bytes());
                let mut l = ledger.lock().unwrap();
                if let Ok(r) = &r {
                    if r.status == 201 {
                        l.rws.insert(name, RwState::Present);
                        l.acked += 1;
                    } else {
                        l.rws.remove(&name);
                    }
                }
                r
            }
            // Bulk removal of a few RW layers.
            75..=79 => {
                let present: Vec<String> =
                    l.rws.iter().filter(|(_, s)| **s == RwState::Present).map(|(n, _)| n.clone()).collect();
                let names: Vec<String> = present.into_iter().take(1 + rng.below(3) as usize).collect();
                if names.is_empty() {
                    continue;
                }
                for n in &names {
                    l.rws.insert(n.clone(), RwState::InFlight);
                }
                drop(l);
                let body = serde_json::json!({ "names": names }).to_string();
                let r = request(&socket, "POST", "/v1/rw/delete", &[JSON], body.as_bytes());
                let mut l = ledger.lock().unwrap();
                if let Ok(r) = &r {
                    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                    let results = v["results"].as_array().cloned().unwrap_or_default();
                    for n in &names {
                        let ok = results.iter().any(|x| x["name"] == n.as_str() && x["ok"] == true);
                        if ok {
                            l.rws.remove(n);
                            l.acked += 1;
                        } else {
                            l.rws.insert(n.clone(), RwState::Present);
                        }
                    }
                }
                r
            }
            // Remove or commit an RW layer.
            80..=94 => {
                let present: Vec<String> =
                    l.rws.iter().filter(|(_, s)| **s == RwState::Present).map(|(n, _)| n.clone()).collect();
                let Some(name) = pick(&mut rng, &present) else { continue };
                let commit = op >= 88;
                l.rws.insert(name.clone(), RwState::InFlight);
                if commit {
                    l.adding += 1;
                }
                drop(l);
                let r = if commit {
                    request(&socket, "POST", &format!("/v1/rw/{name}/commit"), &[], b"")
                } else {
                    request(&socket, "DELETE", &format!("/v1/rw/{name}"), &[], b"")
                };
                let mut l = ledger.lock().unwrap();
                if let Ok(r) = &r {
                    if commit {
                        l.adding -= 1;
                        l.rws.insert(name.clone(), RwState::Present);
                        if r.status == 201 {
                            let v: Value = serde_json::from_slice(&r.body).unwrap();
                            *l.refs.entry(v["chain_id"].as_str().unwrap().to_owned()).or_default() += 1;
                            l.acked += 1;
                        }
                    } else if r.status == 204 {
                        l.rws.remove(&name);
                        l.acked += 1;
                    } else {
                        l.rws.insert(name.clone(), RwState::Present);
                    }
                }
                r
            }
            // check --repair beside the work: it must find nothing.
            _ => {
                drop(l);
                let r = request(&socket, "POST", "/v1/check", &[JSON], br#"{"repair":true}"#);
                if let Ok(r) = &r
                    && r.status == 200
                {
                    let v: Value = serde_json::from_slice(&r.body).unwrap();
                    if !v["problems"].as_array().unwrap().is_empty() {
                        ledger.lock().unwrap().server_errors.push(format!("check --repair during work: {v}"));
                    }
                }
                r
            }
        };
        match res {
            Ok(r) if r.status >= 500 => {
                ledger.lock().unwrap().server_errors.push(String::from_utf8_lossy(&r.body).into_owned());
            }
            Ok(_) => {}
            // The daemon is gone: what was in flight stays uncertain.
            Err(_) => return,
        }
    }
}

/// After a restart: every acknowledged reference and RW layer is there,
/// nothing appeared that no request could have made, and `check` is clean.
/// Then the ledger takes what the daemon shows (the uncertain resolved).
fn verify_after_restart(d: &Daemon, l: &mut Ledger, round: usize) {
    let layers = d.json("GET", "/v1/layers", &[], b"", 200);
    let shown: BTreeMap<String, u64> = layers
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["chain_id"].as_str().unwrap().to_owned(), v["references"].as_u64().unwrap()))
        .collect();
    let mut unexplained = 0;
    for (c, &n) in &shown {
        let acked = l.refs.get(c).copied().unwrap_or(0);
        let maybe_released = l.releasing.get(c).copied().unwrap_or(0);
        unexplained += n.saturating_sub(acked + maybe_released);
    }
    for (c, &acked) in &l.refs {
        let n = shown.get(c).copied().unwrap_or(0);
        assert!(n >= acked, "kill {round}: {c} has {n} references, {acked} were acknowledged and not released");
    }
    assert!(
        unexplained <= l.adding,
        "kill {round}: {unexplained} references no request made ({} registrations were in flight)",
        l.adding
    );
    let rws = d.json("GET", "/v1/rw", &[], b"", 200);
    let names: Vec<String> = rws.as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap().to_owned()).collect();
    for (name, s) in &l.rws {
        if *s == RwState::Present {
            assert!(names.contains(name), "kill {round}: acknowledged rw layer {name} is gone");
        }
    }
    for name in &names {
        assert!(l.rws.contains_key(name), "kill {round}: rw layer {name} appeared from nowhere");
    }
    let report = d.json("POST", "/v1/check", &[JSON], br#"{"repair":false,"verify_content":false}"#, 200);
    assert!(report["problems"].as_array().unwrap().is_empty(), "kill {round}: check after restart: {report}");
    // One layer's export, verified against its DiffID by the daemon.
    if let Some(c) = shown.keys().nth(round % shown.len().max(1)) {
        let r = d.req("GET", &format!("/v1/layers/{c}/tar"), &[], b"");
        assert_eq!(r.status, 200, "kill {round}: export of {c}");
    }
    l.refs = shown.into_iter().filter(|(_, n)| *n > 0).collect();
    l.releasing.clear();
    l.adding = 0;
    l.rws = names.into_iter().map(|n| (n, RwState::Present)).collect();
    assert!(l.server_errors.is_empty(), "kill {round}: 5xx answers: {:?}", l.server_errors);
}

/// `kill -9` at random points of a mixed workload (imports on parents,
/// releases, RW creates with init layers, removals, bulk removals, commits,
/// `check --repair`), on a journaled ext4 loop filesystem. After each restart the
/// ledger of acknowledged operations is checked. `LAYERD_CRASH_KILLS` sets
/// the number of kills (default 20), `LAYERD_CRASH_SEED` the seed.
#[test]
fn kill_9_at_random_points_loses_nothing_acknowledged() {
    let kills: usize = std::env::var("LAYERD_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("LAYERD_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("crash test: seed {seed} (LAYERD_CRASH_SEED), {kills} kills (LAYERD_CRASH_KILLS)");
    let fs = Ext4Loop::new(512).expect("a journaled ext4 loop fs (root, e2fsprogs and util-linux needed)");
    let sock_dir = tempfile::tempdir().unwrap();
    let root = fs.path().join("root");
    let socket = sock_dir.path().join("layerd.sock");
    let tars = Arc::new(contents());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let mut restart_ms = Vec::new();
    for round in 0..kills {
        let t = Instant::now();
        let mut d = Daemon::start(&root, &socket, &[]);
        restart_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if round > 0 {
            verify_after_restart(&d, &mut ledger.lock().unwrap(), round);
        }
        let clients: Vec<_> = (0..4)
            .map(|i| {
                let (socket, ledger, tars) = (socket.clone(), ledger.clone(), tars.clone());
                let s = rng.next() ^ i;
                std::thread::spawn(move || crash_client(socket, ledger, s, tars))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50 + rng.below(700)));
        d.kill9();
        for c in clients {
            c.join().unwrap();
        }
    }
    let d = Daemon::start(&root, &socket, &[]);
    verify_after_restart(&d, &mut ledger.lock().unwrap(), kills);
    let acked = ledger.lock().unwrap().acked;
    restart_ms.sort_by(f64::total_cmp);
    eprintln!(
        "crash test: {kills} kills, {acked} acknowledged operations, nothing lost; restart median {:.0} ms, max {:.0} ms; {:.1} s",
        restart_ms[restart_ms.len() / 2],
        restart_ms[restart_ms.len() - 1],
        started.elapsed().as_secs_f64()
    );
    assert!(acked > kills as u64, "the workload barely ran: {acked} operations");
    drop(d);
    drop(fs);
}

/// A unix-socket proxy in front of the daemon that forwards every request
/// but loses the answer on the first `lose` connections: once the daemon
/// has answered (so it did the work), the client's connection is closed
/// without it. Returns the number of connections seen.
fn lossy_proxy(daemon: PathBuf, listen: &Path, lose: usize) -> Arc<std::sync::atomic::AtomicUsize> {
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = UnixListener::bind(listen).unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let daemon = daemon.clone();
            std::thread::spawn(move || {
                let Ok(mut upstream) = UnixStream::connect(&daemon) else { return };
                let (mut from_client, mut to_upstream) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_client, &mut to_upstream);
                    let _ = to_upstream.shutdown(std::net::Shutdown::Write);
                });
                let mut client = client;
                if n < lose {
                    // Wait for the daemon's answer, then lose it.
                    let mut buf = [0u8; 1];
                    let _ = upstream.read(&mut buf);
                    let _ = client.shutdown(std::net::Shutdown::Both);
                } else {
                    let _ = std::io::copy(&mut upstream, &mut client);
                    let _ = client.shutdown(std::net::Shutdown::Both);
                }
            });
        }
    });
    seen
}

/// `layerctl` sends an `Idempotency-Key` with every POST and DELETE and
/// sends the request again when its answer is lost: the daemon ran it once
/// and answers the repeat with the first outcome, so a lost answer neither
/// drops a second reference nor fails a creation that happened.
#[test]
fn layerctl_retries_a_request_whose_answer_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("root"), &dir.path().join("layerd.sock"), &[]);
    let tar = make_tar(&[("f", b"twice")]);
    let v = d.json("POST", "/v1/layers", &[], &tar, 201);
    d.json("POST", "/v1/layers", &[], &tar, 201);
    let chain = v["chain_id"].as_str().unwrap().to_owned();
    assert_eq!(refs(&d, &chain), 2);

    let ctl = |proxy: &Path, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_layerctl"))
            .arg("--host")
            .arg(format!("unix://{}", proxy.display()))
            .args(args)
            .env_remove("LAYERD_HOST")
            .output()
            .unwrap()
    };
    let proxy = dir.path().join("lossy-rm.sock");
    let seen = lossy_proxy(d.socket(), &proxy, 1);
    let out = ctl(&proxy, &["layer", "rm", &chain]);
    assert!(out.status.success(), "layer rm: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2, "one lost answer, one retry");
    assert_eq!(refs(&d, &chain), 1, "the retry must not drop the other reference");

    let proxy = dir.path().join("lossy-create.sock");
    let seen = lossy_proxy(d.socket(), &proxy, 1);
    let out = ctl(&proxy, &["rw", "create", "once", "--parent", &chain]);
    assert!(out.status.success(), "rw create: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(d.json("GET", "/v1/rw", &[], b"", 200).as_array().unwrap().len(), 1);
}
