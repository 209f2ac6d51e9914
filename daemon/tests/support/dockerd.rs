//! A private dockerd 20.10 for tests: its own data root, exec root, socket,
//! pidfile and config (so nothing is written under `/etc/docker` or
//! `/var/lib/docker`), no iptables, no bridge. Stopped by its PID (SIGTERM,
//! then SIGKILL) and everything it mounted under its dirs is unmounted when
//! the guard is dropped, also when the test fails.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Debian's dockerd 20.10 and its matching client (`/usr/local/bin/docker`
/// may be a newer client that 20.10 refuses).
pub const DOCKERD: &str = "/usr/sbin/dockerd";
pub const DOCKER: &str = "/usr/bin/docker";

/// `Err(why)` when this host has no dockerd to test against. In CI
/// (`$CI` set) that is a failure: `.ci/run` installs `docker.io`.
pub fn available() -> Result<(), String> {
    for bin in [DOCKERD, DOCKER] {
        if !Path::new(bin).exists() {
            let why = format!("{bin} is not installed (Debian package docker.io)");
            assert!(std::env::var_os("CI").is_none(), "{why}; .ci/run installs it");
            return Err(why);
        }
    }
    Ok(())
}

pub struct Dockerd {
    pub dir: PathBuf,
    pub data_root: PathBuf,
    pub socket: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
    starts: u32,
}

impl Dockerd {
    /// Start dockerd with its dirs under `dir` and `extra` flags; waits
    /// until it answers.
    pub fn start(dir: &Path, extra: &[&str]) -> Dockerd {
        let mut d = Dockerd {
            dir: dir.to_owned(),
            data_root: dir.join("data"),
            socket: dir.join("docker.sock"),
            extra: extra.iter().map(ToString::to_string).collect(),
            child: None,
            starts: 0,
        };
        d.launch();
        d
    }

    fn launch(&mut self) {
        let config = self.dir.join("daemon.json");
        let key = self.dir.join("key.json");
        std::fs::write(&config, format!("{{\"deprecated-key-path\": {:?}}}\n", key.display().to_string()))
            .expect("write daemon.json");
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("dockerd-{}.log", self.starts))).expect("log file");
        let child = Command::new(DOCKERD)
            .arg("--data-root")
            .arg(&self.data_root)
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .arg("--config-file")
            .arg(&config)
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-forward=false", "--ip-masq=false"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if self.docker(&["version", "--format", "{{.Server.Version}}"]).status.success() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("dockerd exited early ({status}):\n{}", self.log_tail());
            }
            assert!(Instant::now() < deadline, "dockerd did not answer in time:\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of the current run's log.
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join(format!("dockerd-{}.log", self.starts))) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn docker_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER);
        c.env_remove("DOCKER_CONTEXT").env("DOCKER_CONFIG", self.dir.join("client"));
        c.arg("-H").arg(format!("unix://{}", self.socket.display())).args(args);
        c
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_cmd(args).stdin(Stdio::null()).output().expect("run docker")
    }

    /// Run docker, expect success, return stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}\n--- dockerd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stop dockerd by its PID: SIGTERM, then SIGKILL after 60 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        kill_processes_under(&self.dir);
        unmount_under(&self.dir);
    }
}

/// SIGKILL any process whose command line names `dir` (the containerd and
/// shims a killed dockerd may leave).
pub fn kill_processes_under(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid == std::process::id() as i32 {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Lazily unmount every mount at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Mounts at or below `dir` still present.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .map(String::from)
        .collect()
}
