//! Helpers of the integration tests: `layerd` under test (the shared
//! [`testkit::DaemonUnderTest`]) driven by the real `layerctl`, and the
//! small fixtures the topic files share.

pub mod exposition;

use std::io::Write;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;
pub use testkit::tars::files_tar as make_tar;
use testkit::{DaemonUnderTest, Reply};

pub const LAYERD: &str = env!("CARGO_BIN_EXE_layerd");
pub const LAYERCTL: &str = env!("CARGO_BIN_EXE_layerctl");
pub const UNKNOWN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

/// A running daemon with `layerctl` at hand; stopped (SIGTERM, then
/// SIGKILL) when dropped, so a failing test never leaves one behind.
pub struct Daemon(DaemonUnderTest);

impl Deref for Daemon {
    type Target = DaemonUnderTest;
    fn deref(&self) -> &DaemonUnderTest {
        &self.0
    }
}

impl DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut DaemonUnderTest {
        &mut self.0
    }
}

impl Daemon {
    /// On a fresh temp root and socket (deleted on drop), driver vfs.
    pub fn start() -> Daemon {
        Daemon(DaemonUnderTest::start_in_temp(LAYERD.as_ref()))
    }

    pub fn start_at(root: &Path, socket: &Path) -> Daemon {
        Daemon::start_with(root, socket, &[])
    }

    pub fn start_with(root: &Path, socket: &Path, extra: &[&str]) -> Daemon {
        Daemon(DaemonUnderTest::start(LAYERD.as_ref(), root, socket, extra))
    }

    /// Guard a daemon the test spawned with its own command line.
    pub fn adopt(child: Child, root: &Path, socket: &Path) -> Daemon {
        Daemon(DaemonUnderTest::adopt(child, root, socket))
    }

    /// Run layerctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl_with(&self.host(), args, None)
    }

    /// Run layerctl, expect success, return stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(out.status.success(), "layerctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run layerctl, expect exit code `code`, return stderr.
    pub fn fails(&self, code: i32, args: &[&str]) -> String {
        let out = self.ctl(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "layerctl {args:?}: {err}");
        err
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// One raw HTTP request, with an optional `Content-Type`.
    pub fn request(&self, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
        try_request(self.socket(), method, path, content_type, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Expect a JSON error with `status`; returns the message.
    pub fn rejects(&self, status: u16, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> String {
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
}

/// `layerd` on `root` and `socket` (driver vfs), not waited for: for the
/// daemons that are expected to refuse to start.
pub fn spawn_layerd(root: &Path, socket: &Path) -> Child {
    DaemonUnderTest::command(LAYERD.as_ref(), root, socket, &[]).spawn().unwrap()
}

/// One request through the kit's client, with an optional `Content-Type`.
pub fn try_request(
    socket: &Path,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> std::io::Result<Reply> {
    let headers: Vec<(&str, &str)> = content_type.map(|ct| ("Content-Type", ct)).into_iter().collect();
    testkit::http::request(socket, method, path, &headers, body)
}

/// Run layerctl against `host`, feeding `stdin` from a thread.
pub fn ctl_with(host: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
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

pub fn sha256(bytes: &[u8]) -> String {
    layer::Digest::of(bytes).to_string()
}

pub fn chain_of(parent: &str, diff: &str) -> String {
    let parent = layer::ChainId::parse(parent).unwrap();
    let diff = layer::DiffId::parse(diff).unwrap();
    layer::ChainId::of(Some(&parent), &diff).to_string()
}

pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

pub fn chain_ids(ls: &Value) -> Vec<String> {
    let mut v: Vec<String> =
        ls.as_array().unwrap().iter().map(|l| l["chain_id"].as_str().unwrap().to_owned()).collect();
    v.sort();
    v
}

/// `len` bytes of xorshift noise: incompressible content.
pub fn big_content(len: usize) -> Vec<u8> {
    testkit::noise(0x1234_5678, len)
}

/// Lazily unmounts whatever is still mounted under a dir, even when the test
/// panics (the killed daemon of the crash case can't clean up after itself).
pub struct UnmountOnDrop(pub PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        for m in mounts_under(&self.0).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// Mount points under `dir`, from this process's mount table.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    testkit::mounts::mounts_under(dir).unwrap().iter().map(|m| m.display().to_string()).collect()
}
