//! The native diff: read a layer's own `diff/` dir without mounting.
//!
//! Valid only when the `parent` asked about is the layer's real parent and
//! the kernel writes plain upper dirs (no redirects, no metacopy) — the
//! driver checks both before calling in here. The work itself is
//! `graphdriver::archive::overlay`; this module adds the layout and the
//! streaming: [`diff`] writes the tar from a thread into a bounded channel,
//! so the caller reads it while it is made and an error mid-way reaches the
//! reader as an io error, never as a silently short tar.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use graphdriver::archive::{self, ApplyOptions, WhiteoutFormat};
use graphdriver::{CacheId, Change, DriverError, IoContext, Result, TarReader};
use nix::mount::MsFlags;

use super::layout::{self, Layout};
use super::mount::{self, PAGE, Stack};

/// Whether `parent` is `id`'s real parent (both `None` for a base layer).
pub fn is_parent(layout: &Layout, id: &CacheId, parent: Option<&CacheId>) -> Result<bool> {
    Ok(layout.parent(id)?.as_deref() == parent.map(CacheId::as_str))
}

/// The layer's changes relative to its parent.
pub fn changes(layout: &Layout, id: &CacheId) -> Result<Vec<Change>> {
    let lowers = layout.lower_dirs(id)?;
    Ok(archive::overlay::changes(&layout.diff(id), &lowers)?)
}

/// Bytes of regular-file content the layer changed relative to its parent.
pub fn size(layout: &Layout, id: &CacheId) -> Result<u64> {
    let lowers = layout.lower_dirs(id)?;
    Ok(archive::overlay::size(&layout.diff(id), &lowers)?)
}

/// The size Docker's overlay2 records for a layer applied natively: its
/// `diff/` dir as `lstat` sees it (moby's `directory.Size`).
pub fn applied_size(layout: &Layout, id: &CacheId) -> Result<u64> {
    Ok(archive::dir_size(&layout.diff(id))?)
}

/// Extract `tar` into the layer's `diff/`, whiteouts as overlay reads them.
/// Returns the tar's size and, when counted exactly while extracting, the
/// [`applied_size`].
pub fn apply(layout: &Layout, id: &CacheId, tar: &mut dyn Read) -> Result<archive::Applied> {
    let opts = ApplyOptions { whiteouts: WhiteoutFormat::Overlay };
    Ok(archive::apply_tar_measured(&layout.diff(id), tar, &opts)?)
}

/// Extract `tar` into `dir` (a merged view), deleting whited-out paths.
pub fn apply_naive(dir: &Path, tar: &mut dyn Read) -> Result<u64> {
    let opts = ApplyOptions { whiteouts: WhiteoutFormat::Remove };
    Ok(archive::apply_tar(dir, tar, &opts)?)
}

/// Apply a diff made against another parent onto the merged view of `id`,
/// through a private writable mount under `tmp/`.
pub fn apply_through_mount(layout: &Layout, prefix: &str, id: &CacheId, tar: &mut dyn Read) -> Result<u64> {
    let lowers = layout.read_lowers(id)?;
    if lowers.is_empty() {
        return apply_naive(&layout.diff(id), tar);
    }
    let stack = Stack { lowers, upper: Some((format!("{id}/diff"), format!("{id}/work"))) };
    let plan = mount::plan(prefix, &stack, &layout.home, "", PAGE).map_err(DriverError::InvalidArgument)?;
    let rel = format!("tmp/{}", layout::unique("apply"));
    let target = layout.home.join(&rel);
    fs::create_dir(&target).ctx("create", &target)?;
    /// Unmounts (if mounted) and removes the apply view however we leave.
    struct Undo(PathBuf);
    impl Drop for Undo {
        fn drop(&mut self) {
            if let Err(e) = mount::unmount(&self.0) {
                tracing::warn!(driver = "overlay", path = %self.0.display(), error = %e, "cannot unmount apply view");
            }
            let _ = fs::remove_dir(&self.0);
        }
    }
    let _undo = Undo(target.clone());
    mount::mount(&layout.home, &rel, &plan, MsFlags::empty()).ctx("mount overlay on", &target)?;
    apply_naive(&target, tar)
}

/// A tar of the layer's `diff/`, streamed from a thread.
pub fn diff(layout: &Layout, id: &CacheId) -> Result<TarReader> {
    let upper = layout.diff(id);
    std::fs::symlink_metadata(&upper).ctx("lstat", &upper)?;
    let (tx, rx) = sync_channel(8);
    let writer_upper = upper.clone();
    std::thread::Builder::new()
        .name("overlay-diff".into())
        .spawn(move || {
            let mut w = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
            let res = archive::overlay::export(&writer_upper, &mut w).and_then(|()| {
                w.flush().ctx("write tar of", &writer_upper)?;
                Ok(())
            });
            if let Err(e) = res {
                tracing::warn!(driver = "overlay", upper = %writer_upper.display(), error = %e, "native diff failed");
                // The reader may be gone already; then nobody needs the error.
                let _ = tx.send(Err(e.to_string()));
            }
        })
        .ctx("spawn diff thread for", &upper)
        .map_err(DriverError::from)?;
    Ok(Box::new(ChannelReader { rx, chunk: Vec::new(), pos: 0 }))
}

const CHUNK: usize = 256 * 1024;

struct ChannelWriter {
    tx: SyncSender<Result<Vec<u8>, String>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.send(Ok(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "diff reader went away"))
    }
}

struct ChannelReader {
    rx: Receiver<Result<Vec<u8>, String>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(io::Error::other(e)),
                // The writer finished (or died, having sent its error first).
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_reader_passes_data_and_errors() {
        let (tx, rx) = sync_channel(2);
        let mut w = ChannelWriter { tx: tx.clone(), buf: Vec::new() };
        let t = std::thread::spawn(move || {
            w.write_all(&vec![7u8; CHUNK + 10]).unwrap();
            w.flush().unwrap();
            tx.send(Err("boom".into())).unwrap();
        });
        let mut r = ChannelReader { rx, chunk: Vec::new(), pos: 0 };
        let mut got = vec![0u8; CHUNK + 10];
        r.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|b| *b == 7));
        assert_eq!(r.read(&mut [0u8; 10]).unwrap_err().to_string(), "boom");
        t.join().unwrap();
        // A dropped reader stops the writer with BrokenPipe.
        let (tx, rx) = sync_channel(0);
        drop(rx);
        let mut w = ChannelWriter { tx, buf: vec![1] };
        assert_eq!(w.flush().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
