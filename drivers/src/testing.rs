//! Test support, not for production: a throwaway filesystem (btrfs, ext4 or
//! XFS) on a loop device, for the btrfs driver's tests and for running the
//! conformance suite on the filesystems users run Docker on.
//!
//! [`LoopFs::with_fs`] (btrfs: [`BtrfsLoop::new`]) makes a sparse image
//! file in a fresh directory under `/var/tmp` (a disk filesystem; the system
//! temp dir if that is missing), formats it with `mkfs.<fs>`, attaches it
//! with `losetup`, and mounts it.
//! Dropping it — also while a test panics — unmounts (lazily, as a last
//! resort), detaches the loop device and deletes the image. Right after the
//! mount the loop device is also marked auto-clear, so even a killed test
//! frees it as soon as its mount goes away.
//!
//! Needs root, `mkfs.btrfs` (btrfs-progs), `losetup` (util-linux), the loop
//! driver and a kernel with btrfs; [`available`] says which is missing.
//! Tests should not skip when it is: call [`BtrfsLoop::new`] and fail.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};

/// A filesystem a [`LoopFs`] can be made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopKind {
    Btrfs,
    Ext4,
    Xfs,
}

impl LoopKind {
    /// The kernel's name for it (`mount -t`).
    pub fn name(self) -> &'static str {
        match self {
            LoopKind::Btrfs => "btrfs",
            LoopKind::Ext4 => "ext4",
            LoopKind::Xfs => "xfs",
        }
    }

    /// `mkfs` and the Debian package it comes in.
    fn mkfs(self) -> (&'static str, &'static [&'static str], &'static str) {
        match self {
            LoopKind::Btrfs => ("mkfs.btrfs", &["-q", "-f"], "btrfs-progs"),
            LoopKind::Ext4 => ("mkfs.ext4", &["-q", "-F"], "e2fsprogs"),
            LoopKind::Xfs => ("mkfs.xfs", &["-q", "-f"], "xfsprogs"),
        }
    }
}

/// Why a [`BtrfsLoop`] cannot be made on this host, or `Ok(())`.
pub fn available() -> Result<(), String> {
    available_fs(LoopKind::Btrfs)
}

/// Why a [`LoopFs`] of `kind` cannot be made on this host, or `Ok(())`.
pub fn available_fs(kind: LoopKind) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root: attaching loop devices and mounting need root".into());
    }
    let (mkfs, _, package) = kind.mkfs();
    for (tool, package) in [(mkfs, package), ("losetup", "util-linux")] {
        if find_tool(tool).is_none() {
            return Err(format!("no {tool} on PATH or in /sbin, /usr/sbin (install {package})"));
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err("no /dev/loop-control: the loop module is not loaded (modprobe loop)".into());
    }
    let name = kind.name();
    let known = || fs::read_to_string("/proc/filesystems").map(|s| s.contains(&format!("\t{name}\n"))).unwrap_or(false);
    if !known() {
        let _ = Command::new("modprobe").arg(name).output();
        if !known() {
            return Err(format!("the kernel has no {name} (not in /proc/filesystems, modprobe {name} failed)"));
        }
    }
    Ok(())
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A mounted throwaway btrfs (the name the btrfs tests know it by).
pub type BtrfsLoop = LoopFs;

/// A mounted throwaway filesystem; see the module docs.
#[derive(Debug)]
pub struct LoopFs {
    kind: LoopKind,
    dir: PathBuf,
    image: PathBuf,
    mnt: PathBuf,
    device: Option<PathBuf>,
    mounted: bool,
}

impl LoopFs {
    /// Make, attach and mount a btrfs image of `size_mb` MiB (sparse;
    /// mkfs.btrfs wants at least 114). Anything made before a failure is
    /// undone.
    pub fn new(size_mb: u64) -> io::Result<LoopFs> {
        LoopFs::with_fs(LoopKind::Btrfs, size_mb)
    }

    /// The same with another filesystem (XFS wants at least 300 MiB).
    pub fn with_fs(kind: LoopKind, size_mb: u64) -> io::Result<LoopFs> {
        available_fs(kind).map_err(|why| io::Error::new(io::ErrorKind::Unsupported, why))?;
        let name = kind.name();
        static N: AtomicU64 = AtomicU64::new(0);
        let base = if Path::new("/var/tmp").is_dir() { PathBuf::from("/var/tmp") } else { std::env::temp_dir() };
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir =
            base.join(format!("layerd-{name}-{}-{}-{nanos:x}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| annotate(e, "create", &dir))?;
        // The kernel reports loop backing files by their resolved path.
        let dir = match fs::canonicalize(&dir) {
            Ok(real) => real,
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                return Err(annotate(e, "resolve", &dir));
            }
        };
        // From here on, Drop undoes whatever was done.
        let mut lo = LoopFs {
            kind,
            image: dir.join(format!("{name}.img")),
            mnt: dir.join("mnt"),
            dir,
            device: None,
            mounted: false,
        };
        let image = fs::File::create_new(&lo.image).map_err(|e| annotate(e, "create", &lo.image))?;
        image.set_len(size_mb * 1024 * 1024).map_err(|e| annotate(e, "truncate", &lo.image))?;
        drop(image);
        let (mkfs, args, _) = kind.mkfs();
        run(Command::new(mkfs).args(args).arg(&lo.image))?;
        let out = run(Command::new("losetup").arg("--find").arg("--show").arg(&lo.image))?;
        let device = PathBuf::from(out.trim());
        lo.device = Some(device.clone());
        fs::DirBuilder::new().mode(0o755).create(&lo.mnt).map_err(|e| annotate(e, "create", &lo.mnt))?;
        nix::mount::mount(Some(&device), &lo.mnt, Some(name), MsFlags::empty(), None::<&str>)
            .map_err(|e| annotate(e.into(), "mount", &lo.mnt))?;
        lo.mounted = true;
        // On a busy device this only sets auto-clear: it detaches by itself
        // once unmounted, even if we never get to run Drop.
        run(Command::new("losetup").arg("-d").arg(&device))?;
        Ok(lo)
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// The loop device it is attached to.
    pub fn device(&self) -> Option<&Path> {
        self.device.as_deref()
    }

    /// Tear down now, and check that no mount and no loop device of ours is
    /// left; Drop does the same but can only log.
    pub fn close(mut self) -> io::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> io::Result<()> {
        let mut first_err = None;
        let mut keep = |r: io::Result<()>| {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        };
        if self.mounted {
            keep(unmount(&self.mnt));
            self.mounted = false;
        }
        if self.device.take().is_some() {
            keep(detach(&self.image));
        }
        if mounted_at(&self.mnt) {
            keep(Err(io::Error::other(format!("{} is still mounted", self.mnt.display()))));
        } else {
            // Never remove_dir_all: if the unmount failed, that would wipe a live fs.
            for (r, p) in [(fs::remove_dir(&self.mnt), &self.mnt), (fs::remove_file(&self.image), &self.image)] {
                keep(r.or_else(ignore_missing).map_err(|e| annotate(e, "remove", p)));
            }
            keep(fs::remove_dir(&self.dir).or_else(ignore_missing).map_err(|e| annotate(e, "remove", &self.dir)));
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            let fs = self.kind.name();
            tracing::error!(image = %self.image.display(), fs, error = %e, "cannot tear down the loop harness");
        }
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) }
}

fn annotate(e: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

fn run(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.output().map_err(|e| io::Error::new(e.kind(), format!("run {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Unmount, retrying while busy, then detach lazily as a last resort.
fn unmount(mnt: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match nix::mount::umount2(mnt, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(nix::errno::Errno::EBUSY) => {
                tracing::warn!(mnt = %mnt.display(), "loop harness still busy; unmounting lazily");
                return nix::mount::umount2(mnt, MntFlags::MNT_DETACH).map_err(|e| annotate(e.into(), "unmount", mnt));
            }
            Err(e) => return Err(annotate(e.into(), "unmount", mnt)),
        }
    }
}

/// Detach every loop device backed by `image` and wait until they are gone
/// (auto-clear runs when the last user closes the device).
fn detach(image: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let devices = loops_backed_by(image);
        if devices.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!("loop devices {devices:?} still hold {}", image.display())));
        }
        for dev in &devices {
            // Fails harmlessly if auto-clear got there first.
            let _ = Command::new("losetup").arg("-d").arg(dev).output();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The loop devices (`/dev/loopN`) whose backing file is `image`.
pub fn loops_backed_by(image: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/block") else { return Vec::new() };
    let want = image.as_os_str().to_string_lossy().into_owned();
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter(|e| {
            fs::read_to_string(e.path().join("loop/backing_file"))
                .map(|b| {
                    let b = b.trim_end_matches('\n');
                    b == want || b.strip_suffix(" (deleted)") == Some(want.as_str())
                })
                .unwrap_or(false)
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect()
}

/// Whether `/proc/self/mountinfo` lists a mount at `mnt`.
pub fn mounted_at(mnt: &Path) -> bool {
    let want = mnt.as_os_str().to_string_lossy().replace('\\', "\\134").replace(' ', "\\040");
    fs::read_to_string("/proc/self/mountinfo")
        .map(|s| s.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str())))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn this_host_can_run_the_harness() {
        available().unwrap();
    }

    #[test]
    fn close_leaves_nothing_behind() {
        let lo = BtrfsLoop::new(128).unwrap();
        let (mnt, image, dev) = (lo.path().to_path_buf(), lo.image.clone(), lo.device().unwrap().to_path_buf());
        assert!(mounted_at(&mnt));
        assert_eq!(rustix::fs::statfs(&mnt).unwrap().f_type as i64, crate::btrfs::BTRFS_SUPER_MAGIC);
        fs::write(mnt.join("f"), b"x").unwrap();
        assert_eq!(loops_backed_by(&image), vec![dev]);
        lo.close().unwrap();
        assert!(!mounted_at(&mnt));
        assert!(loops_backed_by(&image).is_empty());
        assert!(!image.exists());
        assert!(!image.parent().unwrap().exists());
    }

    #[test]
    fn drop_cleans_up_even_when_the_test_panics() {
        let seen = Mutex::new(None);
        let res = std::panic::catch_unwind(|| {
            let lo = BtrfsLoop::new(128).unwrap();
            fs::write(lo.path().join("f"), b"x").unwrap();
            *seen.lock().unwrap() = Some((lo.path().to_path_buf(), lo.image.clone()));
            panic!("test failure inside the harness");
        });
        assert!(res.is_err());
        let (mnt, image) = seen.into_inner().unwrap().unwrap();
        assert!(!mounted_at(&mnt), "{} still mounted", mnt.display());
        assert!(loops_backed_by(&image).is_empty(), "loop device left for {}", image.display());
        assert!(!image.parent().unwrap().exists());
    }
}
