//! A real dockerd 20.10 on `layerd plugin serve`: every image and container
//! of a private dockerd lives on our overlay driver through the v1
//! graphdriver plugin protocol. Covers `docker info`, `load`, `run`, `diff`,
//! `commit`, `save` (every layer tar's sha256 equals its DiffID), 20
//! parallel `docker rm`, `rmi`, a plugin restart (dockerd never re-sends
//! `Init`) and a dockerd restart with a stopped container that still starts.

// A test harness: its helpers panic on any unexpected failure by design.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use conformance::dockerd::{self, DOCKER, Dockerd, DockerdOpts};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const LAYERD: &str = env!("CARGO_BIN_EXE_layerd");
const BUSYBOX: &str = "/bin/busybox";

/// Run docker against `d`, expect success, return stdout.
fn ok(d: &Dockerd, args: &[&str]) -> String {
    d.docker(args).unwrap_or_else(|e| panic!("{e:#}\n--- dockerd log:\n{}", d.log()))
}

/// `layerd plugin serve`, stopped with SIGTERM when dropped.
struct PluginProc {
    child: Option<Child>,
    name: String,
    socket: PathBuf,
    state: PathBuf,
    log: PathBuf,
    starts: u32,
}

impl PluginProc {
    fn start(name: &str, dir: &Path) -> PluginProc {
        let mut p = PluginProc {
            child: None,
            name: name.into(),
            socket: PathBuf::from(format!("/run/docker/plugins/{name}.sock")),
            state: dir.join("plugin-state"),
            log: dir.join("plugin.log"),
            starts: 0,
        };
        p.launch();
        p
    }

    fn launch(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log.with_extension(format!("{}.log", self.starts))).unwrap();
        let child = Command::new(LAYERD)
            .args(["plugin", "serve", "--name", &self.name, "--driver", "overlay", "--state-dir"])
            .arg(&self.state)
            .env("LAYERD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(Instant::now() < deadline, "plugin socket {} never appeared", self.socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log.with_extension(format!("{}.log", self.starts))) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for PluginProc {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn tar_of(entries: &[(&str, TarEntry)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, e) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            TarEntry::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            TarEntry::File(data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, &data[..]).unwrap();
            }
            TarEntry::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

enum TarEntry {
    Dir,
    File(Vec<u8>, u32),
    Symlink(&'static str),
}

/// A docker-archive (what `docker save` writes) of a two-layer busybox image.
fn image_archive(tag: &str) -> (Vec<u8>, Vec<String>) {
    let busybox = std::fs::read(BUSYBOX).unwrap();
    let base = tar_of(&[
        ("bin", TarEntry::Dir),
        ("bin/busybox", TarEntry::File(busybox, 0o755)),
        ("bin/sh", TarEntry::Symlink("busybox")),
        ("etc", TarEntry::Dir),
        ("etc/gone", TarEntry::File(b"deleted by the next layer\n".to_vec(), 0o644)),
    ]);
    let top = tar_of(&[
        ("etc", TarEntry::Dir),
        ("etc/.wh.gone", TarEntry::File(Vec::new(), 0o644)),
        ("etc/hello", TarEntry::File(b"hello from layer two\n".to_vec(), 0o644)),
    ]);
    let diff_ids: Vec<String> = [&base, &top].iter().map(|t| format!("sha256:{}", sha256_hex(t))).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "layerd test base"}, {"created_by": "layerd test top"}],
    }))
    .unwrap();
    let config_name = format!("{}.json", sha256_hex(&config));
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": [tag],
        "Layers": ["base/layer.tar", "top/layer.tar"],
    }]))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("base/layer.tar", &base),
        ("top/layer.tar", &top),
        (config_name.as_str(), &config),
        ("manifest.json", &manifest),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    (b.into_inner().unwrap(), diff_ids)
}

/// `docker save` an image and check every layer tar against the config's
/// DiffIDs; returns them.
fn save_and_verify(d: &Dockerd, image: &str, dir: &Path) -> Vec<String> {
    let out = dir.join(format!("save-{}.tar", sha256_hex(image.as_bytes())));
    ok(d, &["save", "-o", out.to_str().unwrap(), image]);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut a = tar::Archive::new(std::fs::File::open(&out).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.insert(path, data);
    }
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let config: Value = serde_json::from_slice(&files[manifest[0]["Config"].as_str().unwrap()]).unwrap();
    let diff_ids: Vec<String> =
        config["rootfs"]["diff_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let layers = manifest[0]["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len(), "{image}: layer count");
    for (layer, want) in layers.iter().zip(&diff_ids) {
        let got = format!("sha256:{}", sha256_hex(&files[layer.as_str().unwrap()]));
        assert_eq!(&got, want, "{image}: layer {layer} is not byte-exact");
    }
    diff_ids
}

#[test]
fn dockerd_runs_on_layerd_plugin() {
    let Some(bin) = dockerd::binary_or_skip("dockerd_runs_on_layerd_plugin") else { return };
    assert!(Path::new(BUSYBOX).exists(), "{BUSYBOX} missing (Debian package busybox-static; .ci/run installs it)");
    let tmp = tempfile::Builder::new().prefix("layerd-dk").tempdir_in("/var/tmp").unwrap();
    let dir = tmp.path();
    let name = format!("layerd-test-{}", std::process::id());
    let mut plugin = PluginProc::start(&name, dir);
    let data_root = dir.join("data");
    let opts = DockerdOpts::new(bin, &data_root).arg("--experimental").arg(format!("--storage-driver={name}"));
    let mut d = Dockerd::start(opts.clone()).unwrap();

    // The plugin is the storage driver, and says what it serves.
    let info = ok(&d, &["info", "--format", "{{.Driver}} {{json .DriverStatus}}"]);
    assert!(info.starts_with(&format!("{name} ")), "docker info: {info}");
    assert!(info.contains("layerd overlay2 driver"), "docker info: {info}");

    // docker load: both layers go through Create + ApplyDiff.
    let (archive, loaded_ids) = image_archive("layerd/test:1");
    let archive_path = dir.join("image.tar");
    std::fs::write(&archive_path, &archive).unwrap();
    ok(&d, &["load", "-i", archive_path.to_str().unwrap()]);
    assert_eq!(save_and_verify(&d, "layerd/test:1", dir), loaded_ids);

    // docker run, diff, commit, save.
    let out = ok(
        &d,
        &[
            "run",
            "--network",
            "none",
            "--name",
            "c1",
            "layerd/test:1",
            "/bin/sh",
            "-c",
            "cat /etc/hello; test ! -e /etc/gone && echo gone; echo hi > /newfile; rm /etc/hello",
        ],
    );
    assert_eq!(out, "hello from layer two\ngone\n");
    let diff = ok(&d, &["diff", "c1"]);
    for want in ["A /newfile", "D /etc/hello", "C /etc"] {
        assert!(diff.lines().any(|l| l == want), "docker diff lacks {want:?}:\n{diff}");
    }
    ok(&d, &["commit", "c1", "layerd/committed:1"]);
    let committed = save_and_verify(&d, "layerd/committed:1", dir);
    assert_eq!(committed.len(), 3);
    assert_eq!(committed[..2], loaded_ids[..]);
    let out = ok(
        &d,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "layerd/committed:1",
            "/bin/sh",
            "-c",
            "cat /newfile; test -e /etc/hello || echo hello-gone",
        ],
    );
    assert_eq!(out, "hi\nhello-gone\n");

    // 20 containers removed by 20 parallel `docker rm`.
    let names: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    for n in &names {
        ok(&d, &["create", "--network", "none", "--name", n, "layerd/test:1", "/bin/true"]);
    }
    let children: Vec<Child> = names
        .iter()
        .map(|n| {
            Command::new(DOCKER)
                .env("DOCKER_CONFIG", dir.join("client"))
                .args(["-H", &d.host(), "rm", n])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (n, c) in names.iter().zip(children) {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "docker rm {n} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let left = ok(&d, &["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!left.lines().any(|l| l.starts_with('r')), "containers left after rm: {left}");

    // docker rmi: the committed layer leaves the plugin's home.
    let home = data_root.join(&name);
    let layer_dirs = || std::fs::read_dir(&home).unwrap().filter(|e| e.as_ref().unwrap().file_name() != "l").count();
    ok(&d, &["rm", "c1"]);
    let before = layer_dirs();
    ok(&d, &["rmi", "layerd/committed:1"]);
    let after = layer_dirs();
    assert!(after < before, "rmi freed nothing in {}: {before} -> {after}", home.display());

    // The plugin restarts; dockerd goes on without a new Init.
    plugin.stop();
    plugin.launch();
    assert!(plugin.log().contains("reopened from saved Init"), "plugin log:\n{}", plugin.log());
    let out = ok(&d, &["run", "--rm", "--network", "none", "layerd/test:1", "/bin/sh", "-c", "cat /etc/hello"]);
    assert_eq!(out, "hello from layer two\n");

    // dockerd restarts; a stopped container still starts, its data kept.
    ok(
        &d,
        &[
            "create",
            "--network",
            "none",
            "--name",
            "keep",
            "layerd/test:1",
            "/bin/sh",
            "-c",
            "echo run >> /state; cat /state",
        ],
    );
    assert_eq!(ok(&d, &["start", "-a", "keep"]), "run\n");
    d.stop().unwrap();
    let mut d = Dockerd::start(opts).unwrap();
    assert_eq!(ok(&d, &["start", "-a", "keep"]), "run\nrun\n");
    ok(&d, &["rm", "keep"]);
    ok(&d, &["rmi", "layerd/test:1"]);

    // dockerd's Cleanup at shutdown undid every mount the plugin made.
    d.stop().unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&data_root.to_string_lossy().into_owned())).collect();
    assert!(left.is_empty(), "mounts left under the data root: {left:#?}");
    plugin.stop();
}
