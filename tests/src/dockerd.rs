//! A private `dockerd` for tests that need the real Docker on the other
//! side: its own data root, exec root, unix socket, pidfile and config file
//! (so nothing is read from or written to `/etc/docker`, `/var/lib/docker`
//! or `/run/docker*`), no iptables and no bridge. dockerd 20.10 starts its
//! own containerd under the exec root; stopping the daemon stops it too.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use conformance::dockerd::{Dockerd, DockerdOpts};
//! let Some(bin) = conformance::dockerd::binary_or_skip("my_test") else { return Ok(()) };
//! let data = tempfile::tempdir_in("/var/tmp")?;
//! let mut d = Dockerd::start(DockerdOpts::new(bin, data.path()).arg("--storage-driver=overlay2"))?;
//! d.docker(&["info"])?;
//! d.stop()?; // also on drop, failed test or not
//! # Ok(()) }
//! ```
//!
//! Stopping is by PID: SIGTERM, then SIGKILL after a grace period, then
//! the containerd dockerd started (by the pid file under the exec root) the
//! same way; then every mount under the data root and the exec root is
//! detached, and the exec root removed. The data root is the caller's: it
//! stays, so a test can reopen or copy it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where Debian's `docker.io` puts the daemon.
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// The client of the same package (not a `/usr/local/bin/docker`).
pub const DOCKER: &str = "/usr/bin/docker";

/// The dockerd binary, or `None` after printing why the calling test is
/// skipped (`<test>: skipped: ...` on stderr, the conformance suite's
/// convention). With `$CONFORMANCE_NO_SKIP` set a missing dockerd panics.
pub fn binary_or_skip(test: &str) -> Option<PathBuf> {
    let missing: Vec<&str> = [DOCKERD, DOCKER].into_iter().filter(|p| !Path::new(p).exists()).collect();
    if missing.is_empty() {
        return Some(PathBuf::from(DOCKERD));
    }
    let why = format!("{} not found (install Debian's docker.io)", missing.join(" and "));
    assert!(std::env::var_os("CONFORMANCE_NO_SKIP").is_none(), "{test} skipped ($CONFORMANCE_NO_SKIP is set): {why}");
    eprintln!("{test}: skipped: {why}");
    None
}

/// How to start a private dockerd.
#[derive(Debug, Clone)]
pub struct DockerdOpts {
    pub binary: PathBuf,
    /// `--data-root`; created if missing; kept after the stop.
    pub data_root: PathBuf,
    /// Extra flags (`--storage-driver=vfs`, `--experimental`, ...).
    pub args: Vec<String>,
    /// Extra top-level keys of `daemon.json`, as JSON text without braces
    /// (`"debug": true`); `deprecated-key-path` is always set.
    pub config: Vec<String>,
    /// How long to wait for the socket to answer.
    pub ready_timeout: Duration,
}

impl DockerdOpts {
    pub fn new(binary: impl Into<PathBuf>, data_root: impl Into<PathBuf>) -> DockerdOpts {
        DockerdOpts {
            binary: binary.into(),
            data_root: data_root.into(),
            args: Vec::new(),
            config: Vec::new(),
            ready_timeout: Duration::from_secs(60),
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> DockerdOpts {
        self.args.push(arg.into());
        self
    }

    pub fn config(mut self, key_value: impl Into<String>) -> DockerdOpts {
        self.config.push(key_value.into());
        self
    }
}

/// A running private dockerd. Stopped and cleaned up on drop.
#[derive(Debug)]
pub struct Dockerd {
    child: Option<Child>,
    pid: u32,
    /// Exec root, socket, pidfile, config and log live here (a short path
    /// under /tmp: unix socket paths are limited to 108 bytes).
    run: Option<tempfile::TempDir>,
    run_path: PathBuf,
    data_root: PathBuf,
}

impl Dockerd {
    /// Start dockerd and wait until `docker version` answers on its socket.
    pub fn start(opts: DockerdOpts) -> Result<Dockerd> {
        fs::create_dir_all(&opts.data_root).with_context(|| format!("create {}", opts.data_root.display()))?;
        let run = tempfile::Builder::new().prefix("dkd").tempdir_in("/tmp").context("make a run dir")?;
        let r = run.path().to_path_buf();
        let mut config = vec![format!("\"deprecated-key-path\": \"{}\"", r.join("key.json").display())];
        config.extend(opts.config.iter().cloned());
        fs::write(r.join("daemon.json"), format!("{{{}}}\n", config.join(", "))).context("write daemon.json")?;
        let log = fs::File::create(r.join("dockerd.log")).context("create dockerd.log")?;
        let child = Command::new(&opts.binary)
            .arg("--data-root")
            .arg(&opts.data_root)
            .arg("--exec-root")
            .arg(r.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", r.join("d.sock").display()))
            .arg("--pidfile")
            .arg(r.join("dockerd.pid"))
            .arg("--config-file")
            .arg(r.join("daemon.json"))
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .args(&opts.args)
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", opts.binary.display()))?;
        let pid = child.id();
        let mut d = Dockerd { child: Some(child), pid, run: Some(run), run_path: r, data_root: opts.data_root.clone() };
        d.wait_ready(opts.ready_timeout)?;
        Ok(d)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("wait for dockerd")?
            {
                bail!("dockerd exited early ({status}):\n{}", self.log());
            }
            if self.socket().exists() && self.run_docker(&["version"]).is_ok_and(|o| o.status.success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.run_path.join("d.sock")
    }

    /// `-H unix://...` for a docker client.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn data_root(&self) -> &Path {
        &self.data_root
    }

    pub fn exec_root(&self) -> PathBuf {
        self.run_path.join("exec")
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.run_path.join("dockerd.log")).unwrap_or_default()
    }

    fn run_docker(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new(DOCKER)
            .arg("-H")
            .arg(self.host())
            .args(args)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env("DOCKER_CONFIG", self.run_path.join("client"))
            .stdin(Stdio::null())
            .output()
    }

    /// Run the docker client against this daemon; its stdout, or an error
    /// with its stderr.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let out = self.run_docker(args).with_context(|| format!("run docker {args:?}"))?;
        if !out.status.success() {
            bail!("docker {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        String::from_utf8(out.stdout).with_context(|| format!("docker {args:?}: stdout is not UTF-8"))
    }

    /// Stop the daemon (and its containerd) and clean up; see the module
    /// docs. Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let containerd = fs::read_to_string(self.exec_root().join("containerd/containerd.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let mut errors = Vec::new();
        if let Err(e) = terminate(&mut child, self.pid) {
            errors.push(e.to_string());
        }
        if let Some(pid) = containerd
            && let Err(e) = terminate_pid(pid)
        {
            errors.push(e.to_string());
        }
        for dir in [self.data_root.clone(), self.run_path.clone()] {
            if let Err(e) = unmount_all_under(&dir) {
                errors.push(format!("unmount under {}: {e}", dir.display()));
            }
        }
        if let Some(run) = self.run.take()
            && let Err(e) = run.close()
        {
            errors.push(format!("remove {}: {e}", self.run_path.display()));
        }
        if errors.is_empty() { Ok(()) } else { bail!("stopping dockerd: {}", errors.join("; ")) }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("{e}");
        }
    }
}

const GRACE: Duration = Duration::from_secs(20);

fn kill(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// SIGTERM our child, then SIGKILL after [`GRACE`]; reap it.
fn terminate(child: &mut Child, pid: u32) -> Result<()> {
    kill(pid, "TERM");
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(pid, "KILL");
    child.wait()?;
    bail!("dockerd (pid {pid}) ignored SIGTERM for {GRACE:?} and was killed")
}

/// The same for a process that is not our child (containerd): poll until
/// its pid is gone (or reused by something that is not containerd).
fn terminate_pid(pid: u32) -> Result<()> {
    let alive = || fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.contains("containerd"));
    if !alive() {
        return Ok(());
    }
    kill(pid, "TERM");
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline {
        if !alive() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(pid, "KILL");
    bail!("containerd (pid {pid}) outlived dockerd and was killed")
}

/// Detach every mount strictly below `dir`, deepest first.
pub fn unmount_all_under(dir: &Path) -> Result<usize> {
    let Ok(dir) = fs::canonicalize(dir) else { return Ok(0) };
    let mut n = 0;
    for _ in 0..8 {
        let info = fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
        let mut points: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(testkit::mounts::unescape_mountinfo(p)))
            .filter(|p| p != &dir && p.starts_with(&dir))
            .collect();
        if points.is_empty() {
            return Ok(n);
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        points.dedup();
        for p in points {
            if nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH).is_ok() {
                n += 1;
            }
        }
    }
    bail!("mounts under {} would not go away", dir.display())
}
