//! `Expect: 100-continue` on `POST /v1/layers` (issue 15, point 3): an
//! upload whose layer is present or being registered is answered without
//! its body being read; a follower whose leader fails sends its body after
//! all; idempotency keys and clients that send the body anyway still work.
//! Raw HTTP over the socket, so the test sees exactly what goes over the
//! wire (a `100 Continue` or not), and the real `layerctl`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// Bytes the daemon has received in tar uploads.
fn imported(d: &Daemon) -> f64 {
    let text = String::from_utf8(d.request("GET", "/metrics", None, b"").body).unwrap();
    text.lines()
        .filter(|l| l.starts_with("layerd_import_bytes_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn refs(d: &Daemon, chain: &str) -> u64 {
    d.json(&["layer", "inspect", chain])["references"].as_u64().unwrap()
}

/// An upload's head: `Content-Length: len`, plus `headers`.
fn upload_head(query: &str, len: usize, headers: &[&str]) -> String {
    let mut head = format!("POST /v1/layers{query} HTTP/1.1\r\nHost: layerd\r\nContent-Length: {len}\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head + "\r\n"
}

/// A raw connection that reads one response head (and its body) at a time.
struct Conn {
    s: UnixStream,
    buf: Vec<u8>,
}

/// One response: status, lower-case head, body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Conn {
    fn open(socket: &Path, head: &str) -> Conn {
        let mut s = UnixStream::connect(socket).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        Conn { s, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// The next response (an informational one included), or `None` if
    /// nothing complete arrived within `limit`.
    fn next(&mut self, limit: Duration) -> Option<Answer> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let body = self.buf[end + 4..end + 4 + len].to_vec();
                    self.buf.drain(..end + 4 + len);
                    return Some(Answer { status, head, body });
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.s.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return None;
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The final response, skipping (and counting) `100 Continue`s.
    fn final_answer(&mut self, limit: Duration) -> (Answer, usize) {
        let mut continues = 0;
        loop {
            let a = self.next(limit).expect("no answer in time");
            if a.status == 100 {
                continues += 1;
                continue;
            }
            return (a, continues);
        }
    }
}

fn chain_of_answer(a: &Answer) -> String {
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    v["chain_id"].as_str().unwrap().to_owned()
}

/// `layerctl layer import --diff-id D -` with a stdin nobody writes to:
/// if layerctl tried to send its body it would wait for good.
struct SilentImport {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl SilentImport {
    fn start(d: &Daemon, diff: &str) -> SilentImport {
        let mut child = Command::new(LAYERCTL)
            .args(["--host", &d.host(), "layer", "import", "--diff-id", diff, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        SilentImport { child, stdin }
    }

    /// Its stdout, once it exited 0 (killed and failed after [`LIMIT`]).
    fn finish(mut self) -> String {
        let status = testkit::daemon::wait_timeout(&mut self.child, LIMIT);
        if status.is_none() {
            let _ = self.child.kill();
        }
        self.stdin.take();
        let out = self.child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(status.is_some_and(|s| s.success()), "layerctl: {status:?} {err}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

const EXPECT: &str = "Expect: 100-continue";
const LIMIT: Duration = Duration::from_secs(20);

/// A present layer: the answer comes without `100 Continue`, without the
/// body, on a connection the daemon closes; `layerctl` sends nothing either
/// (its stdin is a pipe nobody writes to).
#[test]
fn an_upload_of_a_present_layer_is_answered_without_its_body() {
    let d = Daemon::start();
    let tar = make_tar(&[("etc/hostname", b"present"), ("bin/sh", &big_content(200_000))]);
    let diff = sha256(&tar);
    let dir = tempfile::tempdir().unwrap();
    let tar_file = write_file(dir.path(), "present.tar", &tar);
    let chain = d.ok(&["layer", "import", "--diff-id", &diff, tar_file.to_str().unwrap()]).trim().to_owned();
    assert_eq!(chain, diff, "a base layer's ChainID is its DiffID");
    let before = imported(&d);
    assert_eq!(before, tar.len() as f64);

    let mut c = Conn::open(d.socket(), &upload_head(&format!("?diff_id={diff}"), tar.len(), &[EXPECT]));
    let a = c.next(LIMIT).expect("no answer");
    assert_eq!(a.status, 201, "{}", a.head);
    assert!(a.head.contains("connection: close"), "{}", a.head);
    assert_eq!(chain_of_answer(&a), chain);
    assert_eq!(refs(&d, &chain), 2);

    // layerctl: a stdin nobody writes to; reading it would block for good.
    let out = SilentImport::start(&d, &diff).finish();
    assert_eq!(out, chain);
    assert_eq!(refs(&d, &chain), 3);
    assert_eq!(imported(&d), before, "a byte of a duplicate upload was read");
}

/// A registration in flight and a follower of it: the leader (no `Expect`)
/// has sent half its body and stalls; the follower has sent its head with
/// `Expect: 100-continue` for the same DiffID.
struct InFlight {
    tar: Vec<u8>,
    diff: String,
    leader: Conn,
    follower: Conn,
}

fn in_flight(d: &Daemon) -> InFlight {
    let tar = make_tar(&[("data", &big_content(300_000))]);
    let diff = sha256(&tar);
    let query = format!("?diff_id={diff}");
    let mut leader = Conn::open(d.socket(), &upload_head(&query, tar.len(), &[]));
    leader.send(&tar[..tar.len() / 2]);
    std::thread::sleep(Duration::from_millis(300));
    let follower = Conn::open(d.socket(), &upload_head(&query, tar.len(), &[EXPECT]));
    InFlight { tar, diff, leader, follower }
}

/// A follower of a registration in flight waits for the leader, gets its
/// result and never sends its body; the same with `layerctl`, whose wait for
/// `100 Continue` runs out first (it then starts reading its stdin, gets the
/// answer and stops).
#[test]
fn a_follower_waits_for_the_leader_and_sends_nothing() {
    let d = Daemon::start();
    let InFlight { tar, diff, mut leader, mut follower } = in_flight(&d);
    let ctl = SilentImport::start(&d, &diff);
    // Longer than layerctl waits for 100 Continue.
    let early = follower.next(Duration::from_millis(1500));
    assert!(early.is_none(), "the follower was answered before the leader finished: {}", early.unwrap().head);
    leader.send(&tar[tar.len() / 2..]);
    let (a, continues) = leader.final_answer(LIMIT);
    assert_eq!((a.status, continues), (201, 0), "leader: {}", String::from_utf8_lossy(&a.body));
    let chain = chain_of_answer(&a);
    let (b, continues) = follower.final_answer(LIMIT);
    assert_eq!(b.status, 201, "follower: {}", String::from_utf8_lossy(&b.body));
    assert_eq!(continues, 0, "the follower was asked for its body");
    assert!(b.head.contains("connection: close"), "{}", b.head);
    assert_eq!(chain_of_answer(&b), chain);

    assert_eq!(ctl.finish(), chain);
    assert_eq!(refs(&d, &chain), 3);
    assert_eq!(imported(&d), tar.len() as f64, "only the leader's body was read");
}

/// The leader's client goes away mid-body: the waiting follower becomes the
/// leader, is sent `100 Continue`, sends its body and gets the layer.
#[test]
fn a_follower_uploads_its_body_when_the_leader_fails() {
    let d = Daemon::start();
    let InFlight { tar, diff, leader, mut follower } = in_flight(&d);
    assert!(follower.next(Duration::from_millis(300)).is_none(), "the follower was answered early");
    drop(leader);
    let a = follower.next(LIMIT).expect("no answer after the leader failed");
    assert_eq!(a.status, 100, "want 100 Continue, got {}", a.head);
    follower.send(&tar);
    let (b, _) = follower.final_answer(LIMIT);
    assert_eq!(b.status, 201, "{}", String::from_utf8_lossy(&b.body));
    let chain = chain_of_answer(&b);
    assert_eq!(chain, diff);
    assert_eq!(refs(&d, &chain), 1, "the failed leader holds no reference");
}

/// Clients that don't wait: one sends `Expect` and its body at once (the
/// layer present: answered, the body drained; the layer new: registered),
/// one sends no `Expect` at all.
#[test]
fn a_client_that_sends_the_body_anyway_is_answered() {
    let d = Daemon::start();
    let tar = make_tar(&[("data", &big_content(400_000))]);
    let diff = sha256(&tar);
    let query = format!("?diff_id={diff}");
    for (round, want_refs) in [(0, 1), (1, 2)] {
        let mut c = Conn::open(d.socket(), &upload_head(&query, tar.len(), &[EXPECT]));
        c.send(&tar);
        let (a, _) = c.final_answer(LIMIT);
        assert_eq!(a.status, 201, "round {round}: {}", String::from_utf8_lossy(&a.body));
        assert_eq!(refs(&d, &diff), want_refs);
    }
    let r = d.request("POST", &format!("/v1/layers{query}"), Some("application/x-tar"), &tar);
    assert_eq!(r.status, 201);
    assert_eq!(refs(&d, &diff), 3);
}

/// An `Idempotency-Key` upload with `Expect`: the first sends its body when
/// asked; the repeat is replayed without a `100 Continue`. A bad parent is
/// refused without asking for the body either.
#[test]
fn expect_works_with_idempotency_keys_and_early_errors() {
    let d = Daemon::start();
    let tar = make_tar(&[("data", &big_content(100_000))]);
    let head = upload_head("", tar.len(), &[EXPECT, "Idempotency-Key: expect-1"]);
    let mut c = Conn::open(d.socket(), &head);
    let a = c.next(LIMIT).expect("no 100 Continue");
    assert_eq!(a.status, 100, "{}", a.head);
    c.send(&tar);
    let (first, _) = c.final_answer(LIMIT);
    assert_eq!(first.status, 201, "{}", String::from_utf8_lossy(&first.body));
    let mut again = Conn::open(d.socket(), &head);
    let b = again.next(LIMIT).expect("no answer to the repeat");
    assert_eq!(b.status, 201, "{}", b.head);
    assert!(b.head.contains("idempotent-replayed: true"), "{}", b.head);
    assert_eq!(b.body, first.body);
    assert_eq!(refs(&d, &chain_of_answer(&first)), 1);

    let mut bad = Conn::open(d.socket(), &upload_head(&format!("?parent={UNKNOWN}"), tar.len(), &[EXPECT]));
    let e = bad.next(LIMIT).expect("no answer");
    assert_eq!(e.status, 400, "{}", e.head);
    assert!(String::from_utf8_lossy(&e.body).contains("parent"), "{}", String::from_utf8_lossy(&e.body));
    assert_eq!(imported(&d), tar.len() as f64);
}
