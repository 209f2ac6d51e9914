//! The unix socket the daemon listens on.
//!
//! The socket is bound under a temporary name, given mode 0660, then renamed
//! over the final path: no client can connect before the mode is right, and a
//! stale socket file is replaced atomically. A socket a live daemon still
//! answers on is never replaced.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::net::UnixListener;

/// Mode of the socket file: owner and group may connect.
pub const SOCKET_MODE: u32 = 0o660;

/// A bound socket and the identity of its file, so only our own file is
/// removed at exit.
pub struct BoundSocket {
    pub listener: UnixListener,
    path: PathBuf,
    dev_ino: (u64, u64),
}

impl BoundSocket {
    pub fn bind(path: &Path) -> anyhow::Result<BoundSocket> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir).with_context(|| format!("create socket directory {}", dir.display()))?;
        check_replaceable(path)?;
        let file_name = path.file_name().with_context(|| format!("socket path {} has no file name", path.display()))?;
        let tmp = dir.join(format!(".{}.{}", std::process::id(), file_name.to_string_lossy()));
        let _ = fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).with_context(|| format!("bind unix socket {}", tmp.display()))?;
        let placed = fs::set_permissions(&tmp, fs::Permissions::from_mode(SOCKET_MODE))
            .with_context(|| format!("chmod socket {}", tmp.display()))
            .and_then(|()| {
                fs::rename(&tmp, path).with_context(|| format!("move socket into place at {}", path.display()))
            })
            .and_then(|()| fs::metadata(path).with_context(|| format!("stat socket {}", path.display())));
        match placed {
            Ok(meta) => Ok(BoundSocket { listener, path: path.to_owned(), dev_ino: (meta.dev(), meta.ino()) }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Split off the listener; the returned guard removes the socket file.
    pub fn into_parts(self) -> (UnixListener, SocketFile) {
        (self.listener, SocketFile { path: self.path, dev_ino: self.dev_ino })
    }
}

/// The socket file; [`SocketFile::remove`] deletes it if it is still ours.
pub struct SocketFile {
    path: PathBuf,
    dev_ino: (u64, u64),
}

impl SocketFile {
    pub fn remove(self) {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.dev_ino => {
                if let Err(e) = fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not remove the socket");
                }
            }
            _ => {
                tracing::debug!(path = %self.path.display(), "socket file is gone or not ours; left alone")
            }
        }
    }
}

/// A missing path or a stale socket may be replaced; a live socket or any
/// other kind of file may not.
fn check_replaceable(path: &Path) -> anyhow::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!("{} exists and is not a socket; refusing to replace it", path.display());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another daemon is listening on {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_with_mode_0660_and_replaces_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/layerd.sock");
        // A stale socket: bound, then its listener dropped.
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let bound = BoundSocket::bind(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        // Live now: a second bind refuses.
        let err = BoundSocket::bind(&path).err().unwrap().to_string();
        assert!(err.contains("another daemon is listening"), "{err}");
        let (_listener, file) = bound.into_parts();
        file.remove();
        assert!(!path.exists());
    }

    #[test]
    fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-socket");
        fs::write(&path, b"data").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let err = rt.block_on(async { BoundSocket::bind(&path).err().unwrap().to_string() });
        assert!(err.contains("is not a socket"), "{err}");
    }
}
