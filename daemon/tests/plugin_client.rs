//! The client half with real processes: `layerd --driver plugin:NAME` runs
//! the store on a plugin found in `/run/docker/plugins` (here `layerd plugin
//! serve`), and `layerctl conformance --driver plugin:NAME` holds that
//! plugin to the suite.

// A test harness: its helpers panic on any unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

const LAYERD: &str = env!("CARGO_BIN_EXE_layerd");
const LAYERCTL: &str = env!("CARGO_BIN_EXE_layerctl");

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
struct Proc(Child, Option<PathBuf>);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(p) = &self.1 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn wait_for_socket(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("process exited early: {st}");
        }
        assert!(Instant::now() < deadline, "{} never answered", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn serve_plugin(name: &str, driver: &str, state: &Path) -> Proc {
    let sock = PathBuf::from(format!("/run/docker/plugins/{name}.sock"));
    let mut child = Command::new(LAYERD)
        .args(["plugin", "serve", "--name", name, "--driver", driver, "--state-dir"])
        .arg(state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(&sock, &mut child);
    Proc(child, Some(sock))
}

fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(LAYERCTL).arg("--host").arg(format!("unix://{}", socket.display())).args(args).output().unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn layer_tar() -> Vec<u8> {
    testkit::tars::files_tar(&[("etc/hosts", b"127.0.0.1 localhost\n"), ("bin/tool", &[7u8; 70_000])])
}

#[test]
fn layerd_runs_its_store_on_a_plugin() {
    let dir = tempfile::Builder::new().prefix("layerd-pc").tempdir_in("/var/tmp").unwrap();
    let name = format!("layerd-client-{}", std::process::id());
    let _plugin = serve_plugin(&name, "vfs", &dir.path().join("state"));
    let root = dir.path().join("root");
    let socket = dir.path().join("layerd.sock");
    let mut child = Command::new(LAYERD)
        .arg("--root")
        .arg(&root)
        .arg("--driver")
        .arg(format!("plugin:{name}"))
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(&socket, &mut child);
    let _daemon = Proc(child, None);

    // Import and export exactly, through the plugin.
    let tar = layer_tar();
    let file = dir.path().join("l.tar");
    std::fs::write(&file, &tar).unwrap();
    let chain = ok(ctl(&socket, &["layer", "import", file.to_str().unwrap()]), "import").trim().to_string();
    assert_eq!(chain, format!("sha256:{}", hex::encode(Sha256::digest(&tar))));
    let out = dir.path().join("out.tar");
    ok(ctl(&socket, &["layer", "export", &chain, "-o", out.to_str().unwrap()]), "export");
    assert_eq!(std::fs::read(&out).unwrap(), tar);
    // Docker's layout: metadata under image/<plugin name>, the plugin's home
    // at <root>/<plugin name>.
    assert!(root.join("image").join(&name).join("layerdb/sha256").join(&chain[7..]).is_dir());
    assert!(root.join(&name).join("dir").is_dir(), "the plugin's vfs home is not <root>/<name>");
    let info = ok(ctl(&socket, &["info", "--format", "json"]), "info");
    assert!(info.contains(&name), "{info}");

    // An RW layer: mount, write, commit.
    ok(ctl(&socket, &["rw", "create", "c1", "--parent", &chain, "--init"]), "rw create");
    let mnt = ok(ctl(&socket, &["rw", "mount", "c1"]), "rw mount");
    std::fs::write(Path::new(mnt.trim()).join("new"), b"written through the plugin").unwrap();
    let changes = ok(ctl(&socket, &["rw", "changes", "c1"]), "rw changes");
    assert!(changes.contains("/new"), "{changes}");
    ok(ctl(&socket, &["rw", "unmount", "c1"]), "rw unmount");
    let committed = ok(ctl(&socket, &["rw", "commit", "c1"]), "rw commit").trim().to_string();
    assert!(committed.starts_with("sha256:"), "{committed}");
    ok(ctl(&socket, &["rw", "rm", "c1"]), "rw rm");
    ok(ctl(&socket, &["layer", "rm", &committed]), "layer rm");
    ok(ctl(&socket, &["layer", "rm", &chain]), "layer rm");
    let left = ok(ctl(&socket, &["layer", "ls", "--format", "json"]), "ls");
    assert_eq!(left.trim(), "[]");
}

#[test]
fn layerctl_conformance_runs_through_a_plugin() {
    let dir = tempfile::Builder::new().prefix("layerd-pcc").tempdir_in("/var/tmp").unwrap();
    let name = format!("layerd-conf-{}", std::process::id());
    let _plugin = serve_plugin(&name, "overlay", &dir.path().join("state"));
    let out = Command::new(LAYERCTL)
        .args(["conformance", "--driver", &format!("plugin:{name}"), "--root"])
        .arg(dir.path().join("cases"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    let total = conformance::cases().len();
    assert_eq!(last, format!("{total} passed, 0 failed, 0 skipped"));
}
