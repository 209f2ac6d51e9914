//! Host probe: can the kernel stack overlays on the home's filesystem, and
//! is the native diff valid with the options we mount with?
//!
//! The facts are gathered with real syscalls (`/proc/filesystems`, statfs,
//! a directory read for d_type, and a test mount in `<home>/tmp/probe-*`
//! that copies up an opaque directory, renames a lower directory and
//! changes a lower file's mode); the decisions are plain functions of those
//! facts ([`decide_support`], [`decide_native`]) so they are tested on
//! synthetic inputs too.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use graphdriver::archive::OVERLAY_OPAQUE_XATTR;
use nix::mount::MsFlags;
use rustix::fs::XattrFlags;

use super::mount::{self, KernelOpts, PAGE, Plan, Stack};

const OVERLAYFS_MAGIC: i64 = crate::fsmagic::OVERLAYFS;

/// What the probe found; `status()` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub backing_fs: String,
    pub d_type: bool,
    /// The options every mount turns off.
    pub opts: KernelOpts,
    /// `Err(why)`: diffs fall back to the naive comparison.
    pub native_diff: Result<(), String>,
    /// The test mount copied a chmod'ed file up as metadata only.
    pub metacopy_in_use: bool,
    /// The kernel's defaults, `name=value` from its module parameters.
    pub kernel_defaults: String,
}

impl HostInfo {
    /// `status()`'s lines; `prefix`: the mount options in use.
    pub fn status(&self, prefix: &str) -> Vec<(String, String)> {
        let native = match &self.native_diff {
            Ok(()) => "true".to_string(),
            Err(why) => format!("false, because {why}"),
        };
        let opt = |on: bool, name: &str| {
            if on { "off (mount option)".to_string() } else { format!("kernel default ({name})") }
        };
        vec![
            ("Backing Filesystem".into(), self.backing_fs.clone()),
            ("Supports d_type".into(), self.d_type.to_string()),
            ("Native Overlay Diff".into(), native),
            ("Using metacopy".into(), self.metacopy_in_use.to_string()),
            ("Index".into(), opt(self.opts.index, "index")),
            ("Redirect Dir".into(), opt(self.opts.redirect_dir, "redirect_dir")),
            ("Metacopy".into(), opt(self.opts.metacopy, "metacopy")),
            ("Kernel Defaults".into(), self.kernel_defaults.clone()),
            ("Mount Options".into(), prefix.trim_end_matches(',').to_string()),
            ("userxattr".into(), "false".into()),
        ]
    }
}

/// Facts that decide whether overlay can run at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportFacts {
    /// `overlay` is listed in `/proc/filesystems`.
    pub listed: bool,
    pub backing_magic: i64,
    /// `None`: could not tell.
    pub d_type: Option<bool>,
    /// The test mount; `None`: not tried (an earlier check failed).
    pub test_mount: Option<Result<(), String>>,
}

/// `Err(why)` when overlay cannot run on this host.
pub fn decide_support(f: &SupportFacts) -> Result<(), String> {
    if f.backing_magic == OVERLAYFS_MAGIC {
        return Err("the driver home is itself on overlayfs, which cannot hold an overlay's upper dir; \
                    put the root on a disk filesystem (or a volume)"
            .into());
    }
    match f.d_type {
        Some(true) => {}
        Some(false) => {
            return Err(format!(
                "the backing filesystem ({}) does not report d_type, which overlay needs \
                 (on xfs, reformat with ftype=1)",
                fs_name(f.backing_magic)
            ));
        }
        None => return Err("could not tell whether the backing filesystem reports d_type".into()),
    }
    match &f.test_mount {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) if !f.listed => {
            Err(format!("the kernel has no overlay filesystem (not in /proc/filesystems; try modprobe overlay): {e}"))
        }
        Some(Err(e)) => Err(format!("a test overlay mount on {} failed: {e}", fs_name(f.backing_magic))),
        None => Err("the test overlay mount was not tried".into()),
    }
}

/// What the test mount showed about copy-up and rename.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffFacts {
    pub opts: KernelOpts,
    /// Copying up an opaque directory copied the opaque flag (kernel < 4.8).
    pub opaque_copied_up: bool,
    /// Renaming a lower directory worked and left a redirect xattr.
    pub redirect_used: bool,
    /// A chmod copied up only metadata.
    pub metacopy_used: bool,
}

/// `Err(why)` when the native diff would be wrong on this kernel.
pub fn decide_native(f: &DiffFacts) -> Result<(), String> {
    if f.opaque_copied_up {
        return Err("the kernel copies the opaque flag up with a directory (a bug fixed in 4.8)".into());
    }
    if f.redirect_used {
        return Err(if f.opts.redirect_dir {
            "the kernel still redirects renamed directories with redirect_dir=off".into()
        } else {
            "the kernel redirects renamed directories (redirect_dir) and has no redirect_dir mount option".into()
        });
    }
    if f.metacopy_used {
        return Err(if f.opts.metacopy {
            "the kernel still copies up metadata only with metacopy=off".into()
        } else {
            "the kernel copies up metadata only (metacopy) and has no metacopy mount option".into()
        });
    }
    Ok(())
}

impl crate::common::HostProbe for HostInfo {
    /// Refuses (saying why) a host whose kernel, backing filesystem or test
    /// mount cannot carry overlay.
    fn probe(home: &Path) -> graphdriver::Result<HostInfo> {
        probe(home, &home.join("tmp"))
            .map_err(|why| graphdriver::DriverError::Unsupported { driver: super::NAME.into(), why })
    }
}

/// Probe the host for a driver at `home`, with scratch space `tmp` (below home).
fn probe(home: &Path, tmp: &Path) -> Result<HostInfo, String> {
    let listed = fs::read_to_string("/proc/filesystems").map(|s| s.lines().any(|l| l.ends_with("\toverlay")));
    let backing_magic = match rustix::fs::statfs(home) {
        // `f_type`'s width differs between architectures.
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => st.f_type as i64,
        Err(e) => return Err(format!("statfs {}: {e}", home.display())),
    };
    let opts = KernelOpts::detect(Path::new(mount::PARAMS));
    let mut facts =
        SupportFacts { listed: listed.unwrap_or(false), backing_magic, d_type: d_type(tmp), test_mount: None };
    decide_support(&SupportFacts { test_mount: Some(Ok(())), ..facts.clone() })?;
    let diff = test_mount(home, tmp, opts);
    facts.test_mount = Some(diff.as_ref().map(|_| ()).map_err(Clone::clone));
    decide_support(&facts)?;
    let diff = diff.unwrap_or_default();
    Ok(HostInfo {
        backing_fs: fs_name(backing_magic),
        d_type: true,
        opts,
        native_diff: decide_native(&diff),
        metacopy_in_use: diff.metacopy_used,
        kernel_defaults: kernel_defaults(Path::new(mount::PARAMS)),
    })
}

fn kernel_defaults(params: &Path) -> String {
    let mut out = Vec::new();
    for name in ["index", "redirect_dir", "metacopy"] {
        if let Ok(v) = fs::read_to_string(params.join(name)) {
            out.push(format!("{name}={}", v.trim()));
        }
    }
    if out.is_empty() { "unknown".into() } else { out.join(",") }
}

/// Moby's name for a filesystem magic ([`crate::fsmagic`]).
pub fn fs_name(magic: i64) -> String {
    crate::fsmagic::describe(magic)
}

fn unique(dir: &Path, what: &str) -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    dir.join(format!("{what}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// Whether a directory read on `tmp`'s filesystem reports entry types.
fn d_type(tmp: &Path) -> Option<bool> {
    let dir = unique(tmp, "dtype");
    let res = (|| -> io::Result<bool> {
        fs::create_dir(&dir)?;
        fs::write(dir.join("f"), b"")?;
        let fd = graphdriver::archive::fs::open_dir(&dir)?;
        for entry in rustix::fs::Dir::read_from(&fd)? {
            let entry = entry?;
            if entry.file_name().to_bytes() == b"f" {
                return Ok(entry.file_type() == rustix::fs::FileType::RegularFile);
            }
        }
        Ok(false)
    })();
    let _ = fs::remove_dir_all(&dir);
    res.ok()
}

/// Unmounts and deletes the probe dir however the probe ends.
struct ProbeDir {
    dir: std::path::PathBuf,
    mounted: bool,
}

impl Drop for ProbeDir {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = mount::unmount(&self.dir.join("merged"))
        {
            tracing::warn!(driver = "overlay", error = %e, "cannot unmount the probe mount");
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Mount `lowerdir=l2:l1,upperdir=up` with our options and watch copy-up.
fn test_mount(home: &Path, tmp: &Path, opts: KernelOpts) -> Result<DiffFacts, String> {
    let mut pd = ProbeDir { dir: unique(tmp, "probe"), mounted: false };
    let td = pd.dir.clone();
    fn io(what: &'static str) -> impl Fn(io::Error) -> String {
        move |e| format!("{what}: {e}")
    }
    for d in ["l1/d", "l1/d1", "l2/d", "up", "work", "merged"] {
        fs::DirBuilder::new().recursive(true).mode(0o755).create(td.join(d)).map_err(io("create probe dirs"))?;
    }
    fs::write(td.join("l1/f"), b"").map_err(io("create probe file"))?;
    fs::set_permissions(td.join("l1/f"), fs::Permissions::from_mode(0o700)).map_err(io("chmod probe file"))?;
    rustix::fs::lsetxattr(td.join("l2/d"), OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
        .map_err(|e| format!("cannot set trusted.* xattrs (not root in the initial user namespace?): {e}"))?;
    let rel = td.strip_prefix(home).map_err(|_| "the probe dir is not below the home".to_string())?;
    let rel = rel.to_str().ok_or("the probe dir is not UTF-8")?;
    let stack = Stack {
        lowers: vec![format!("{rel}/l2"), format!("{rel}/l1")],
        upper: Some((format!("{rel}/up"), format!("{rel}/work"))),
    };
    let plan: Plan = mount::plan(&opts.prefix(), &stack, home, "", PAGE)?;
    mount::mount(home, &format!("{rel}/merged"), &plan, MsFlags::empty())
        .map_err(|e| format!("mount -t overlay -o {}: {e}", plan.data()))?;
    pd.mounted = true;
    let merged = td.join("merged");
    let mut facts = DiffFacts { opts, ..DiffFacts::default() };
    fs::write(merged.join("d/f"), b"").map_err(io("write through the probe mount"))?;
    facts.opaque_copied_up = xattr(&td.join("up/d"), "trusted.overlay.opaque").as_deref() == Some(b"y");
    match fs::rename(merged.join("d1"), merged.join("d2")) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
        Err(e) => return Err(format!("rename in the probe mount: {e}")),
        Ok(()) => facts.redirect_used = xattr(&td.join("up/d2"), "trusted.overlay.redirect").is_some(),
    }
    fs::set_permissions(merged.join("f"), fs::Permissions::from_mode(0o600)).map_err(io("chmod in the probe mount"))?;
    facts.metacopy_used = xattr(&td.join("up/f"), "trusted.overlay.metacopy").is_some();
    Ok(facts)
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::lgetxattr(path, name, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_facts() -> SupportFacts {
        SupportFacts { listed: true, backing_magic: 0xEF53, d_type: Some(true), test_mount: Some(Ok(())) }
    }

    #[test]
    fn support_decisions() {
        assert_eq!(decide_support(&ok_facts()), Ok(()));
        let why = |f: SupportFacts| decide_support(&f).unwrap_err();
        assert!(why(SupportFacts { backing_magic: OVERLAYFS_MAGIC, ..ok_facts() }).contains("itself on overlayfs"));
        let w = why(SupportFacts { backing_magic: 0x5846_5342, d_type: Some(false), ..ok_facts() });
        assert!(w.contains("xfs") && w.contains("d_type") && w.contains("ftype=1"), "{w}");
        assert!(why(SupportFacts { d_type: None, ..ok_facts() }).contains("d_type"));
        let nodev = || Some(Err("No such device".to_string()));
        let w = why(SupportFacts { listed: false, test_mount: nodev(), ..ok_facts() });
        assert!(w.contains("no overlay filesystem") && w.contains("No such device"), "{w}");
        let w = why(SupportFacts { backing_magic: 0x6969, test_mount: nodev(), ..ok_facts() });
        assert!(w.contains("test overlay mount on nfs failed"), "{w}");
        // Overlay loads on demand: unlisted but mountable is fine.
        assert_eq!(decide_support(&SupportFacts { listed: false, ..ok_facts() }), Ok(()));
    }

    #[test]
    fn native_diff_decisions() {
        let all = KernelOpts { index: true, redirect_dir: true, metacopy: true };
        assert_eq!(decide_native(&DiffFacts { opts: all, ..DiffFacts::default() }), Ok(()));
        let w = decide_native(&DiffFacts { redirect_used: true, ..DiffFacts::default() }).unwrap_err();
        assert!(w.contains("redirect_dir") && w.contains("no redirect_dir mount option"), "{w}");
        let w = decide_native(&DiffFacts { opts: all, redirect_used: true, ..DiffFacts::default() }).unwrap_err();
        assert!(w.contains("redirect_dir=off"), "{w}");
        let w = decide_native(&DiffFacts { metacopy_used: true, ..DiffFacts::default() }).unwrap_err();
        assert!(w.contains("metacopy"), "{w}");
        let w = decide_native(&DiffFacts { opaque_copied_up: true, ..DiffFacts::default() }).unwrap_err();
        assert!(w.contains("opaque"), "{w}");
    }

    /// The real probe on this host, in a home on the disk filesystem.
    #[test]
    fn probe_this_host() {
        let t = super::super::testutil::disk_tempdir();
        let tmp = t.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        let info = probe(t.path(), &tmp).unwrap();
        assert!(info.d_type);
        assert_eq!(info.native_diff, Ok(()), "{info:?}");
        assert!(!info.metacopy_in_use);
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "probe leftovers");
        assert!(mount::mounts_under(t.path()).unwrap().is_empty());
    }
}
