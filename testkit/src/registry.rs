//! A private Docker registry for tests: Debian's `docker-registry`
//! (distribution 2.8) on 127.0.0.1 and a free port, with its own config
//! and storage in a temp dir, optionally behind htpasswd basic auth.
//! Stopped by PID (SIGTERM, then SIGKILL) and its dir removed when the
//! guard drops, whatever the test did.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs it (`apt-get install docker-registry`).
pub const BINARY: &str = "/usr/bin/docker-registry";

pub struct DistributionRegistry {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// Why the registry can't run here, if it can't (the binary is missing).
pub fn unavailable() -> Option<String> {
    if Path::new(BINARY).exists() {
        None
    } else {
        Some(format!("{BINARY} is not installed (apt-get install docker-registry)"))
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl DistributionRegistry {
    /// Start one; `login` adds htpasswd basic auth for that user.
    pub fn start(login: Option<(&str, &str)>) -> DistributionRegistry {
        DistributionRegistry::start_with(login, |_| String::new())
    }

    /// Start one whose config ends with `extra(dir)` (YAML; `dir` is the
    /// registry's temp dir, for files the config names).
    pub fn start_with(login: Option<(&str, &str)>, extra: impl FnOnce(&Path) -> String) -> DistributionRegistry {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let auth = match login {
            Some((user, pass)) => {
                let hash = bcrypt::hash(pass, 4).expect("bcrypt");
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("write htpasswd");
                format!("auth:\n  htpasswd:\n    realm: test\n    path: {}\n", htpasswd.display())
            }
            None => extra(dir.path()),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: layerd-test\n{auth}",
            dir.path().join("data").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let mut r = DistributionRegistry { child: Some(child), addr, dir };
        r.wait_ready();
        r
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect(self.addr).is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("docker-registry exited ({status}) before it was ready:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("docker-registry not ready on {} within 30 s:\n{}", self.addr, self.log());
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The registry's storage dir.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(self.dir.path().join("registry.log")).and_then(|mut f| f.read_to_string(&mut s));
        s
    }
}

impl Drop for DistributionRegistry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = rustix::process::Pid::from_raw(c.id() as i32);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
