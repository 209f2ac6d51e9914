//! A daemon under test: `layerd` started on a temp root and socket, ready
//! once `/v1/_ping` answers, stopped when the guard drops, so a failing
//! test never leaves one behind.
//!
//! The binary path is a parameter: `CARGO_BIN_EXE_layerd` exists only in the
//! daemon crate's own integration tests, which pass it in.

use std::fs::OpenOptions;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::http::{self, Reply};

/// How long a daemon may take to answer its first `_ping`.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A running `layerd`. Dropping it stops it: SIGTERM then (after 10 s)
/// SIGKILL, or SIGKILL at once for a [`DaemonUnderTest::start_logged`] one
/// (the crash tests want no orderly shutdown).
pub struct DaemonUnderTest {
    child: Option<Child>,
    root: PathBuf,
    socket: PathBuf,
    log: Option<PathBuf>,
    hard_stop: bool,
    _dir: Option<tempfile::TempDir>,
}

impl DaemonUnderTest {
    /// The hermetic command line: `--root`, `--socket`, `--driver vfs`
    /// unless `extra` names a driver, `--log-level warn`, then `extra`;
    /// `LAYERD_CONFIG=/dev/null` so the host's config file is never read;
    /// stderr piped (shown if the daemon dies before it is ready).
    pub fn command(bin: &Path, root: &Path, socket: &Path, extra: &[&str]) -> Command {
        let driver: &[&str] = if extra.contains(&"--driver") { &[] } else { &["--driver", "vfs"] };
        let mut cmd = Command::new(bin);
        cmd.arg("--root")
            .arg(root)
            .arg("--socket")
            .arg(socket)
            .args(driver)
            .args(["--log-level", "warn"])
            .args(extra)
            .env("LAYERD_CONFIG", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Start on a fresh temp dir (`root/`, `run/layerd.sock`), deleted on drop.
    pub fn start_in_temp(bin: &Path) -> DaemonUnderTest {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut d = DaemonUnderTest::start(bin, &dir.path().join("root"), &dir.path().join("run/layerd.sock"), &[]);
        d._dir = Some(dir);
        d
    }

    /// Start [`DaemonUnderTest::command`] and wait until it is ready.
    pub fn start(bin: &Path, root: &Path, socket: &Path, extra: &[&str]) -> DaemonUnderTest {
        let child = DaemonUnderTest::command(bin, root, socket, extra).spawn().expect("spawn layerd");
        DaemonUnderTest::adopt(child, root, socket)
    }

    /// Like [`DaemonUnderTest::start`], stderr appended to `<root>.log`
    /// (read back if it dies early), killed with SIGKILL on drop.
    pub fn start_logged(bin: &Path, root: &Path, socket: &Path, extra: &[&str]) -> DaemonUnderTest {
        let log = root.with_extension("log");
        let stderr = OpenOptions::new().create(true).append(true).open(&log).expect("open the daemon log");
        let child = DaemonUnderTest::command(bin, root, socket, extra).stderr(stderr).spawn().expect("spawn layerd");
        let mut d = DaemonUnderTest::unready(child, root, socket);
        d.log = Some(log);
        d.hard_stop = true;
        d.wait_ready();
        d
    }

    /// Guard a daemon the test spawned itself (its own command line), and
    /// wait until it is ready.
    pub fn adopt(child: Child, root: &Path, socket: &Path) -> DaemonUnderTest {
        let mut d = DaemonUnderTest::unready(child, root, socket);
        d.wait_ready();
        d
    }

    fn unready(child: Child, root: &Path, socket: &Path) -> DaemonUnderTest {
        DaemonUnderTest {
            child: Some(child),
            root: root.to_owned(),
            socket: socket.to_owned(),
            log: None,
            hard_stop: false,
            _dir: None,
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(r) = http::request(&self.socket, "GET", "/v1/_ping", &[], b"") {
                assert_eq!(r.status, 200, "_ping: {}", String::from_utf8_lossy(&r.body));
                assert_eq!(r.body, b"OK");
                return;
            }
            let child = self.child.as_mut().expect("a daemon being started");
            if let Some(status) = child.try_wait().expect("wait for layerd") {
                let mut err = String::new();
                if let Some(log) = &self.log {
                    err = std::fs::read_to_string(log).unwrap_or_default();
                } else if let Some(mut pipe) = child.stderr.take() {
                    let _ = pipe.read_to_string(&mut err);
                }
                panic!("layerd exited early ({status}): {err}");
            }
            assert!(Instant::now() < deadline, "layerd did not answer _ping in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The `--host` value for `layerctl`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// One request; panics on a connection or protocol failure.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        http::request(&self.socket, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// SIGTERM and wait (30 s at most) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a running daemon");
        signal(&child, "TERM");
        wait_timeout(&mut child, Duration::from_secs(30)).expect("layerd did not stop on SIGTERM")
    }

    /// SIGKILL and reap: a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for DaemonUnderTest {
    fn drop(&mut self) {
        if self.hard_stop {
            self.kill9();
        } else if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Send `sig` (`TERM`, `INT`, ...) with kill(1).
pub fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status();
}

/// The exit status within `limit`, or `None` if still running.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("wait for a child") {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
