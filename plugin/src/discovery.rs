//! Finding a plugin by name, as dockerd 20.10 finds v1 plugins
//! (`pkg/plugins/discovery.go`): first a socket, `<sockets>/NAME.sock` then
//! `<sockets>/NAME/NAME.sock`; then, in each spec dir in turn,
//! `NAME.spec`, `NAME/NAME.spec`, `NAME.json`, `NAME/NAME.json`. A `.spec`
//! holds one URL; a `.json` is `{"Name","Addr","TLSConfig"}`.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use graphdriver::DriverError;

use crate::wire::GoObject;

/// Where dockerd looks for plugin sockets (fixed; it does not follow
/// `--exec-root`).
pub const SOCKETS_DIR: &str = "/run/docker/plugins";
/// Where dockerd looks for `.spec`/`.json` files, in order.
pub const SPEC_DIRS: &[&str] = &["/etc/docker/plugins", "/usr/lib/docker/plugins"];

/// Longest spec file read (they hold one address).
const MAX_SPEC: u64 = 64 * 1024;

/// A plugin's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Unix(p) => write!(f, "unix://{}", p.display()),
            Addr::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

impl Addr {
    /// `unix:///abs/path` or `tcp://host:port` (Go's URL forms dockerd
    /// accepts in spec files; `http://` is read as tcp, as dockerd does).
    pub fn parse(url: &str) -> Result<Addr, DriverError> {
        let url = url.trim();
        let bad = |why: &str| DriverError::InvalidArgument(format!("plugin address {url:?}: {why}"));
        if let Some(path) = url.strip_prefix("unix://") {
            if !path.starts_with('/') || path.contains('\0') {
                return Err(bad("want unix:///absolute/path"));
            }
            return Ok(Addr::Unix(PathBuf::from(path)));
        }
        if url.starts_with("https://") {
            return Err(DriverError::Unsupported {
                driver: "plugin".into(),
                why: format!("plugin address {url:?}: TLS plugin connections are not supported"),
            });
        }
        let hostport = url.strip_prefix("tcp://").or_else(|| url.strip_prefix("http://"));
        match hostport {
            Some(hp) => {
                let hp = hp.trim_end_matches('/');
                let ok = !hp.is_empty()
                    && !hp.contains(['/', '?', '#', '@', ' '])
                    && hp.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if ok { Ok(Addr::Tcp(hp.to_string())) } else { Err(bad("want tcp://HOST:PORT")) }
            }
            None if !url.contains("://") => Err(bad("no protocol (want unix:// or tcp://)")),
            None => Err(bad("unknown protocol (want unix:// or tcp://)")),
        }
    }
}

/// Where to look: dockerd's dirs by default, others in tests.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub sockets: PathBuf,
    pub specs: Vec<PathBuf>,
}

impl Default for Dirs {
    fn default() -> Self {
        Dirs { sockets: SOCKETS_DIR.into(), specs: SPEC_DIRS.iter().map(PathBuf::from).collect() }
    }
}

/// Valid plugin names: what can name a file in the dirs above.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Find plugin `name`'s address the way dockerd does.
pub fn discover(name: &str, dirs: &Dirs) -> Result<Addr, DriverError> {
    if !valid_name(name) {
        return Err(DriverError::InvalidArgument(format!("invalid plugin name {name:?}: want [A-Za-z0-9_.-]+")));
    }
    for p in candidates(&dirs.sockets, name, "sock") {
        if std::fs::metadata(&p).is_ok_and(|m| m.file_type().is_socket()) {
            return Ok(Addr::Unix(p));
        }
    }
    for dir in &dirs.specs {
        let specs = candidates(dir, name, "spec").into_iter().chain(candidates(dir, name, "json"));
        for p in specs {
            if std::fs::metadata(&p).is_ok() {
                return read_spec(&p);
            }
        }
    }
    let mut looked: Vec<String> =
        candidates(&dirs.sockets, name, "sock").iter().map(|p| p.display().to_string()).collect();
    looked.extend(dirs.specs.iter().map(|d| format!("{}/{name}.{{spec,json}}", d.display())));
    Err(DriverError::NotFound(format!("plugin {name}: no socket or spec file (looked at {})", looked.join(", "))))
}

fn candidates(dir: &Path, name: &str, ext: &str) -> [PathBuf; 2] {
    [dir.join(format!("{name}.{ext}")), dir.join(name).join(format!("{name}.{ext}"))]
}

fn read_spec(path: &Path) -> Result<Addr, DriverError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SPEC + 1).read_to_end(&mut bytes))
        .map_err(|e| DriverError::Other(format!("read plugin spec {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_SPEC {
        return Err(DriverError::InvalidArgument(format!("plugin spec {} is over {MAX_SPEC} bytes", path.display())));
    }
    let in_file = |e: DriverError| DriverError::InvalidArgument(format!("plugin spec {}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "json") {
        let o = GoObject::parse(&bytes).map_err(|e| in_file(DriverError::InvalidArgument(e.0)))?;
        let addr = o.string("Addr").map_err(|e| in_file(DriverError::InvalidArgument(e.0)))?;
        if o.get("TLSConfig").is_some() {
            return Err(DriverError::Unsupported {
                driver: "plugin".into(),
                why: format!("plugin spec {}: TLS plugin connections are not supported", path.display()),
            });
        }
        return Addr::parse(&addr).map_err(in_file);
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| in_file(DriverError::InvalidArgument("not UTF-8".into())))?;
    Addr::parse(text).map_err(in_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(t: &Path) -> Dirs {
        Dirs { sockets: t.join("run"), specs: vec![t.join("etc"), t.join("lib")] }
    }

    #[test]
    fn sockets_win_then_specs_in_dockerd_order() {
        let t = tempfile::tempdir().unwrap();
        let d = dirs(t.path());
        for p in ["run/p", "etc/p", "lib"] {
            std::fs::create_dir_all(t.path().join(p)).unwrap();
        }
        assert_eq!(discover("p", &d).unwrap_err().kind(), graphdriver::ErrorKind::NotFound);
        std::fs::write(t.path().join("lib/p.spec"), "tcp://127.0.0.1:9\n").unwrap();
        assert_eq!(discover("p", &d).unwrap(), Addr::Tcp("127.0.0.1:9".into()));
        std::fs::write(t.path().join("etc/p/p.json"), r#"{"Name":"p","Addr":"unix:///x/j.sock"}"#).unwrap();
        assert_eq!(discover("p", &d).unwrap(), Addr::Unix("/x/j.sock".into()));
        std::fs::write(t.path().join("etc/p.spec"), "unix:///x/s.sock").unwrap();
        assert_eq!(discover("p", &d).unwrap(), Addr::Unix("/x/s.sock".into()));
        // A regular file named like the socket is not a socket.
        std::fs::write(t.path().join("run/p.sock"), "").unwrap();
        assert_eq!(discover("p", &d).unwrap(), Addr::Unix("/x/s.sock".into()));
        let nested = t.path().join("run/p/p.sock");
        let _l = std::os::unix::net::UnixListener::bind(&nested).unwrap();
        assert_eq!(discover("p", &d).unwrap(), Addr::Unix(nested));
    }

    #[test]
    fn hostile_names_and_specs_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = dirs(t.path());
        for name in ["", "../x", "a/b", ".hidden", "a\0b", &"n".repeat(300)] {
            assert!(discover(name, &d).is_err(), "{name:?}");
        }
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        for (file, body) in [
            ("a.spec", "ftp://x"),
            ("b.spec", "localhost:80"),
            ("c.spec", "unix://relative.sock"),
            ("d.spec", "tcp://host"),
            ("e.spec", "tcp://:80"),
            ("f.json", "{\"Addr\":5}"),
            ("g.json", "[]"),
            ("h.spec", "\u{fffd}\u{0}"),
            ("i.json", r#"{"Addr":"tcp://h:1","TLSConfig":{"CAFile":"x"}}"#),
            ("j.spec", "https://h:1"),
        ] {
            std::fs::write(t.path().join("etc").join(file), body).unwrap();
            let name = file.split('.').next().unwrap();
            assert!(discover(name, &d).is_err(), "{file}: {body:?} accepted");
        }
        std::fs::write(t.path().join("etc/big.spec"), "x".repeat(MAX_SPEC as usize + 1)).unwrap();
        assert!(discover("big", &d).unwrap_err().to_string().contains("over"));
    }
}
