//! Overlay mounts: the option string, the page-size fallback, mount and
//! unmount, and the `/proc/self/mountinfo` scan that finds our mounts.
//!
//! mount(2) copies at most one page of option data; a longer string is cut
//! and the kernel fails with a misleading `ENOENT`. The option string is
//! therefore built with absolute paths when it fits (and the home has no
//! `,`, `:` or `\`, which overlay would parse), else with paths relative
//! to the driver home — `l/<short>`, `<id>/diff` — and mounted from a
//! dedicated thread that first unshares its filesystem context
//! (`CLONE_FS`) so its `chdir` to the home touches no other thread.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use graphdriver::{CacheId, DriverError, IoContext, IoError, Result};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::layout::Layout;

/// The per-mount options the kernel offers, from `/sys/module/overlay/parameters`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelOpts {
    /// `index=off` (kernel ≥ 4.13): avoids `EBUSY` when a lower is in use as an upper.
    pub index: bool,
    /// `redirect_dir=off` (≥ 4.10): renamed directories are copied, not redirected.
    pub redirect_dir: bool,
    /// `metacopy=off` (≥ 4.19): a metadata change copies the whole file up.
    pub metacopy: bool,
}

pub const PARAMS: &str = "/sys/module/overlay/parameters";

impl KernelOpts {
    pub fn detect(params: &Path) -> KernelOpts {
        let has = |name: &str| params.join(name).exists();
        KernelOpts { index: has("index"), redirect_dir: has("redirect_dir"), metacopy: has("metacopy") }
    }

    /// The option prefix every mount of the driver starts with.
    pub fn prefix(self) -> String {
        let mut s = String::new();
        for (on, opt) in
            [(self.index, "index=off,"), (self.redirect_dir, "redirect_dir=off,"), (self.metacopy, "metacopy=off,")]
        {
            if on {
                s.push_str(opt);
            }
        }
        s
    }
}

/// What to stack: paths relative to the driver home.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Lower dirs, topmost first (`l/<short>`, or `<id>/diff` for a read-only mount).
    pub lowers: Vec<String>,
    /// `(upperdir, workdir)`; `None`: a read-only mount.
    pub upper: Option<(String, String)>,
}

/// How a mount is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Absolute paths, mounted from any thread.
    Absolute(String),
    /// Paths relative to the home, mounted from a thread whose cwd is the home.
    Relative(String),
}

impl Plan {
    pub fn data(&self) -> &str {
        match self {
            Plan::Absolute(d) | Plan::Relative(d) => d,
        }
    }
}

/// The option string for `stack`; `root`: prefix every path with it.
pub fn data(prefix: &str, stack: &Stack, root: Option<&str>, label: &str) -> String {
    let p = |rel: &str| match root {
        Some(root) => format!("{root}/{rel}"),
        None => rel.to_string(),
    };
    let lowers: Vec<String> = stack.lowers.iter().map(|l| p(l)).collect();
    let mut s = format!("{prefix}lowerdir={}", lowers.join(":"));
    if let Some((upper, work)) = &stack.upper {
        s += &format!(",upperdir={},workdir={}", p(upper), p(work));
    }
    if !label.is_empty() {
        s += &format!(",context=\"{label}\"");
    }
    s
}

/// Absolute when it fits in a page and the home is safe to spell out,
/// else relative; `Err` when even that is too long.
pub fn plan(prefix: &str, stack: &Stack, home: &Path, label: &str, page: usize) -> Result<Plan, String> {
    let root = home.to_str().filter(|h| !h.contains([',', ':', '\\']));
    if let Some(root) = root {
        let abs = data(prefix, stack, Some(root), label);
        if abs.len() < page {
            return Ok(Plan::Absolute(abs));
        }
    }
    let rel = data(prefix, stack, None, label);
    if rel.len() < page {
        return Ok(Plan::Relative(rel));
    }
    Err(format!("mount options are {} bytes, more than a page ({page}) even with relative paths", rel.len()))
}

/// The smallest page size Linux runs on: data shorter than this is never cut.
pub const PAGE: usize = 4096;

/// Mount an overlay at `home/target` (`target` relative to `home`).
pub fn mount(home: &Path, target: &str, plan: &Plan, flags: MsFlags) -> io::Result<()> {
    match plan {
        Plan::Absolute(data) => {
            let target = home.join(target);
            Ok(nix::mount::mount(Some("overlay"), &target, Some("overlay"), flags, Some(data.as_str()))?)
        }
        Plan::Relative(data) => {
            let (home, target, data) = (home.to_path_buf(), target.to_string(), data.clone());
            std::thread::Builder::new()
                .name("overlay-mount".into())
                .spawn(move || -> io::Result<()> {
                    // Per-thread cwd from here on; the thread ends after the mount.
                    nix::sched::unshare(CloneFlags::CLONE_FS)?;
                    std::env::set_current_dir(&home)?;
                    Ok(nix::mount::mount(
                        Some("overlay"),
                        target.as_str(),
                        Some("overlay"),
                        flags,
                        Some(data.as_str()),
                    )?)
                })?
                .join()
                .map_err(|_| io::Error::other("the mount thread panicked"))?
        }
    }
}

/// Bind `src` onto `target`, read-only.
pub fn bind_read_only(src: &Path, target: &Path) -> io::Result<()> {
    let none: Option<&str> = None;
    nix::mount::mount(Some(src), target, none, MsFlags::MS_BIND, none)?;
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Err(e) = nix::mount::mount(none, target, none, ro, none) {
        let _ = unmount(target);
        return Err(e.into());
    }
    Ok(())
}

/// Lazily unmount `path`. `Ok(false)`: nothing was mounted there.
pub fn unmount(path: &Path) -> io::Result<bool> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether something is mounted on the directory `path` (its device
/// differs from its parent's).
pub fn is_mountpoint(path: &Path) -> io::Result<bool> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let parent = path.parent().unwrap_or(path);
    Ok(md.dev() != fs::symlink_metadata(parent)?.dev())
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub fs_type: String,
}

/// Parse mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &[u8]) -> Vec<MountInfo> {
    let mut out = Vec::new();
    for line in text.split(|b| *b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == b"-") else { continue };
        if fields.len() < 5 || sep < 6 || fields.len() < sep + 2 {
            continue;
        }
        out.push(MountInfo {
            mount_point: PathBuf::from(OsStr::from_bytes(&unescape(fields[4]))),
            fs_type: String::from_utf8_lossy(fields[sep + 1]).into_owned(),
        });
    }
    out
}

/// Undo the kernel's octal escapes (`\040` for a space, ...).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() && field[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = field[i + 1..i + 4].iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// Mount points strictly below `root`, deepest (latest) first.
pub fn mounts_under(root: &Path) -> io::Result<Vec<PathBuf>> {
    let text = fs::read("/proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = parse_mountinfo(&text)
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p != root && p.starts_with(root))
        .collect();
    found.reverse();
    found.dedup();
    Ok(found)
}

/// Unmount everything below `root`; returns how many mounts were undone.
pub fn unmount_all_under(root: &Path) -> io::Result<usize> {
    let mut n = 0;
    // A stacked mount shows once per layer of stacking; loop until clear.
    for _ in 0..16 {
        let found = mounts_under(root)?;
        if found.is_empty() {
            return Ok(n);
        }
        for p in found {
            if unmount(&p)? {
                n += 1;
            }
        }
    }
    Err(io::Error::other(format!("mounts under {} keep coming back", root.display())))
}

/// `mkdir` that finds the directory already there is fine.
pub fn exists_ok(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) }
}

/// The SELinux label to mount with: only where SELinux is on.
pub fn label(mount_label: &str) -> &str {
    if !mount_label.is_empty() && Path::new("/sys/fs/selinux/enforce").exists() { mount_label } else { "" }
}

/// Mount layer `id`. Returns `(path, mounted, relative)`.
pub fn mount_layer(layout: &Layout, prefix: &str, id: &CacheId, label: &str) -> Result<(PathBuf, bool, bool)> {
    let dir = layout.dir(id);
    if !dir.is_dir() {
        return Err(DriverError::NotFound(id.to_string()));
    }
    let lowers = layout.read_lowers(id)?;
    let readonly = fs::symlink_metadata(dir.join("committed")).is_ok();
    if lowers.is_empty() && !readonly {
        return Ok((layout.diff(id), false, false));
    }
    let bind = lowers.is_empty();
    let own = |sub: &str| format!("{id}/{sub}");
    let stack = if readonly {
        Stack { lowers: std::iter::once(own("diff")).chain(lowers).collect(), upper: None }
    } else {
        Stack { lowers, upper: Some((own("diff"), own("work"))) }
    };
    let plan = plan(prefix, &stack, &layout.home, label, PAGE)
        .map_err(|why| DriverError::InvalidArgument(format!("cannot mount layer {id}: {why}")))?;
    let merged = layout.merged(id);
    fs::DirBuilder::new().mode(0o700).create(&merged).or_else(exists_ok).ctx("create", &merged)?;
    if is_mountpoint(&merged).ctx("stat", &merged)? {
        // A stale mount (made by someone else, or left by a cleanup race).
        unmount_all_under(&dir).ctx("unmount stale mounts under", &dir)?;
    }
    let flags = if readonly { MsFlags::MS_RDONLY } else { MsFlags::empty() };
    let res = if bind {
        // A committed base layer: overlay wants two lowers, so a read-only bind.
        bind_read_only(&layout.diff(id), &merged)
    } else {
        mount(&layout.home, &own("merged"), &plan, flags)
    };
    if let Err(e) = res {
        tracing::warn!(driver = "overlay", %id, data = plan.data(), error = %e, "overlay mount failed");
        let _ = fs::remove_dir(&merged);
        return Err(IoError::new("mount overlay on", merged, e).into());
    }
    tracing::debug!(driver = "overlay", %id, readonly, len = plan.data().len(), "mounted");
    Ok((merged, true, matches!(plan, Plan::Relative(_))))
}

/// Unmount layer `id` and remove its `merged` dir.
pub fn unmount_layer(layout: &Layout, id: &CacheId) -> Result<()> {
    let merged = layout.merged(id);
    unmount(&merged).ctx("unmount", &merged)?;
    match fs::remove_dir(&merged) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(driver = "overlay", %id, error = %e, "cannot remove merged dir; removed at next start")
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(n: usize, rw: bool) -> Stack {
        let id = "a".repeat(64);
        Stack {
            lowers: (0..n).map(|i| format!("l/{:026}", i)).collect(),
            upper: rw.then(|| (format!("{id}/diff"), format!("{id}/work"))),
        }
    }

    #[test]
    fn option_strings() {
        let k = KernelOpts { index: true, redirect_dir: true, metacopy: false };
        assert_eq!(k.prefix(), "index=off,redirect_dir=off,");
        assert_eq!(KernelOpts::default().prefix(), "");
        let s = Stack { lowers: vec!["l/A".into(), "l/B".into()], upper: Some(("i/diff".into(), "i/work".into())) };
        assert_eq!(
            data("index=off,", &s, Some("/h"), ""),
            "index=off,lowerdir=/h/l/A:/h/l/B,upperdir=/h/i/diff,workdir=/h/i/work"
        );
        assert_eq!(data("", &s, None, "sys_u"), "lowerdir=l/A:l/B,upperdir=i/diff,workdir=i/work,context=\"sys_u\"");
        let ro = Stack { lowers: vec!["i/diff".into(), "l/A".into()], upper: None };
        assert_eq!(data("", &ro, Some("/h"), ""), "lowerdir=/h/i/diff:/h/l/A");
    }

    #[test]
    fn plan_falls_back_to_relative_paths_then_refuses() {
        let prefix = "index=off,redirect_dir=off,metacopy=off,";
        let short = Path::new("/var/lib/layerd/overlay");
        assert!(matches!(plan(prefix, &stack(10, true), short, "", 4096), Ok(Plan::Absolute(_))));
        // 128 lowers never fit with absolute paths, always with relative ones.
        let p = plan(prefix, &stack(128, true), short, "", 4096).unwrap();
        assert!(matches!(p, Plan::Relative(_)));
        assert!(p.data().len() < 4000, "{}", p.data().len());
        let mut ro = stack(128, false);
        ro.lowers.insert(0, format!("{}/diff", "a".repeat(64)));
        assert!(matches!(plan(prefix, &ro, short, "", 4096), Ok(Plan::Relative(_))));
        // A home overlay would misparse is never spelled out.
        assert!(matches!(plan(prefix, &stack(1, true), Path::new("/a,b"), "", 4096), Ok(Plan::Relative(_))));
        assert!(matches!(plan(prefix, &stack(1, true), Path::new("/a:b"), "", 4096), Ok(Plan::Relative(_))));
        assert!(plan(prefix, &stack(128, true), short, &"x".repeat(600), 4096).is_err());
    }

    #[test]
    fn mountinfo_is_parsed_and_unescaped() {
        let text = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
            99 22 0:50 / /tmp/a\\040b/merged rw,relatime shared:5 master:2 - overlay overlay rw,lowerdir=x\n\
            bogus line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mount_point, PathBuf::from("/tmp/a b/merged"));
        assert_eq!(m[1].fs_type, "overlay");
        assert_eq!(unescape(b"a\\134b\\011"), b"a\\b\t");
        assert_eq!(unescape(b"end\\04"), b"end\\04");
        let here = mounts_under(Path::new("/proc")).unwrap();
        assert!(!here.contains(&PathBuf::from("/proc")));
    }
}
