//! Parents and children.
//!
//! A child mounts its ancestors' `diff` dirs, so overlay cannot delete a
//! layer that still has children. `remove` of such a parent takes it out of
//! view — `exists` is false and the id may be created anew — but keeps its
//! files under a hidden name, `<home>/.removed-<id>-…`, and points its
//! `l/<short>` link there, so the children read exactly as before. A kept
//! dir is deleted when its last child goes, which may free its own kept
//! parent in turn.
//!
//! Child counts live in memory, keyed by layer dir name; they are rebuilt
//! from the `lower` files at start-up, and the lock around them is never
//! held across I/O. Counts of kept dirs may dip below zero for a moment
//! when a child's removal overtakes its parent's; they settle when the
//! parent's removal ends.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use graphdriver::{CacheId, DriverError, IoContext, IoError, Result};

use super::layout::{self, KEPT_PREFIX, Layout, is_kept, is_layer_name};
use super::mount;

/// How a removal ended.
#[derive(Debug)]
pub enum Removal {
    Failed,
    /// The layer is gone; it had this parent.
    Deleted {
        parent: Option<String>,
    },
    /// The layer had children; its files are kept under `name`.
    Kept {
        name: String,
    },
}

/// Child counts per layer dir name, and the ids being removed.
#[derive(Debug, Default)]
pub struct Family {
    children: HashMap<String, i64>,
    removing: HashSet<CacheId>,
    /// Removed layers kept for their children: id -> kept dir name. A
    /// child whose removal read its parent's name before the parent was
    /// kept disowns the id; this sends it to the kept dir.
    kept_as: HashMap<String, String>,
}

impl Family {
    /// Read every layer's parent. Also returns the kept dirs no child needs.
    pub fn scan(layout: &Layout) -> Result<(Family, Vec<String>)> {
        let mut f = Family::default();
        let mut kept = Vec::new();
        for entry in fs::read_dir(&layout.home).ctx("read dir", &layout.home)? {
            let name = entry.ctx("read dir", &layout.home)?.file_name();
            let Some(name) = name.to_str().filter(|n| is_layer_name(n)) else { continue };
            if is_kept(name) {
                kept.push(name.to_string());
            }
            match layout.parent_at(&layout.home.join(name)) {
                Ok(Some(parent)) => *f.children.entry(parent).or_default() += 1,
                Ok(None) => {}
                Err(e) => tracing::warn!(driver = "overlay", name, error = %e, "cannot tell the parent of a layer"),
            }
        }
        kept.retain(|k| f.children(k) <= 0);
        Ok((f, kept))
    }

    pub fn children(&self, name: &str) -> i64 {
        self.children.get(name).copied().unwrap_or(0)
    }

    /// A child of `parent` is being made.
    pub fn adopt(&mut self, parent: &CacheId) -> Result<()> {
        if self.removing.contains(parent) {
            return Err(DriverError::NotFound(parent.to_string()));
        }
        let name = self.current_name(parent.as_str());
        *self.children.entry(name).or_default() += 1;
        Ok(())
    }

    /// A layer `id` is being made anew: its name is its own again.
    pub fn made(&mut self, id: &CacheId) {
        self.kept_as.remove(id.as_str());
    }

    /// Where the layer once named `name` lives now.
    fn current_name(&self, name: &str) -> String {
        self.kept_as.get(name).cloned().unwrap_or_else(|| name.to_string())
    }

    /// A child of `parent` failed to be made, or was removed. Returns the
    /// parent's name if it is a kept dir that no child needs any more.
    pub fn disown(&mut self, parent: &str) -> Option<String> {
        let parent = self.current_name(parent);
        let n = self.children.entry(parent.clone()).or_default();
        *n -= 1;
        if *n == 0 || (*n < 0 && !is_kept(&parent)) {
            self.children.remove(&parent);
            if is_kept(&parent) {
                self.kept_as.retain(|_, k| *k != parent);
                return Some(parent);
            }
        }
        None
    }

    /// `id` is about to be removed; returns whether it has children.
    pub fn begin_remove(&mut self, id: &CacheId) -> Result<bool> {
        if !self.removing.insert(id.clone()) {
            return Err(DriverError::Busy { id: id.to_string(), why: "it is being removed".into() });
        }
        Ok(self.children(id.as_str()) > 0)
    }

    /// The removal of `id` ended. Returns kept dirs no child needs.
    pub fn end_remove(&mut self, id: &CacheId, how: Removal) -> Vec<String> {
        self.removing.remove(id);
        match how {
            Removal::Failed => Vec::new(),
            Removal::Deleted { parent } => parent.and_then(|p| self.disown(&p)).into_iter().collect(),
            Removal::Kept { name } => {
                let n = self.children.remove(id.as_str()).unwrap_or(0);
                let total = self.children.entry(name.clone()).or_default();
                *total += n;
                if *total <= 0 {
                    self.children.remove(&name);
                    return vec![name];
                }
                self.kept_as.insert(id.to_string(), name);
                Vec::new()
            }
        }
    }
}

/// `remove`'s work on disk: undo the layer's mounts, then keep it (it has
/// children) or take it out of view for deletion (returns the trash path).
pub fn take_out(
    layout: &Layout,
    id: &CacheId,
    mounted: bool,
    has_children: bool,
) -> Result<(Removal, Option<PathBuf>)> {
    let dir = layout.dir(id);
    let merged = layout.merged(id);
    if mounted || mount::is_mountpoint(&merged).ctx("stat", &merged)? {
        mount::unmount_all_under(&dir).ctx("unmount mounts under", &dir)?;
    }
    if has_children {
        return Ok((Removal::Kept { name: keep(layout, id)? }, None));
    }
    let parent = layout.parent(id).unwrap_or_else(|e| {
        tracing::warn!(driver = "overlay", %id, error = %e, "cannot tell the parent of a removed layer");
        None
    });
    let trash = layout::unpublish(layout, id.as_str())?;
    Ok((Removal::Deleted { parent }, Some(trash)))
}

/// Keep removed layer `id` for its children: rename its dir to a kept
/// name, then point its link there. Returns the kept name.
pub fn keep(layout: &Layout, id: &CacheId) -> Result<String> {
    let dir = layout.dir(id);
    let short = layout.read_link(&dir)?;
    let name = format!("{KEPT_PREFIX}{}", layout::unique(id.as_str()));
    let kept = layout.home.join(&name);
    match fs::rename(&dir, &kept) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(DriverError::NotFound(id.to_string())),
        Err(e) => return Err(IoError::new("rename", &dir, e).into()),
    }
    // A crash here leaves the link dangling; `retarget_links` mends it.
    point_link(layout, &short, &name)?;
    Ok(name)
}

/// Atomically point `l/<short>` at `../<name>/diff`.
fn point_link(layout: &Layout, short: &str, name: &str) -> Result<(), IoError> {
    let link = layout.links().join(short);
    let tmp = layout.links().join(format!(".{short}.{}", layout::unique("tmp")));
    std::os::unix::fs::symlink(Path::new("..").join(name).join("diff"), &tmp).ctx("symlink", &tmp)?;
    fs::rename(&tmp, &link).ctx("rename", &tmp)
}

/// Delete the kept dir `name`; returns its parent.
pub fn delete_kept(layout: &Layout, name: &str) -> Result<Option<String>> {
    let parent = layout.parent_at(&layout.home.join(name)).unwrap_or_else(|e| {
        tracing::warn!(driver = "overlay", name, error = %e, "cannot tell the parent of a kept layer");
        None
    });
    let trash = layout::unpublish(layout, name)?;
    tracing::debug!(driver = "overlay", name, "deleted a removed layer its last child no longer needs");
    if let Err(e) = layout::remove_path(&trash) {
        tracing::warn!(driver = "overlay", error = %e, "cannot delete a kept layer; retried at next start");
    }
    Ok(parent)
}

/// At start-up, before dangling links are removed: point the links of kept
/// dirs (a crash between `keep`'s two steps) at them.
pub fn retarget_links(layout: &Layout) -> Result<()> {
    for entry in fs::read_dir(&layout.home).ctx("read dir", &layout.home)? {
        let name = entry.ctx("read dir", &layout.home)?.file_name();
        let Some(name) = name.to_str().filter(|n| is_kept(n)) else { continue };
        let Ok(short) = layout.read_link(&layout.home.join(name)) else { continue };
        let link = layout.links().join(&short);
        if fs::metadata(&link).is_err() {
            tracing::info!(driver = "overlay", name, "pointing the link of a kept layer at it");
            point_link(layout, &short, name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_removals_and_kept_dirs() {
        let (p, c) = (CacheId::random(), CacheId::random());
        let mut f = Family::default();
        f.adopt(&p).unwrap();
        assert!(f.begin_remove(&p).unwrap());
        assert_eq!(f.adopt(&p).unwrap_err().kind(), graphdriver::ErrorKind::NotFound);
        assert_eq!(f.begin_remove(&p).unwrap_err().kind(), graphdriver::ErrorKind::Conflict);
        let kept = format!("{KEPT_PREFIX}x-1");
        assert_eq!(f.end_remove(&p, Removal::Kept { name: kept.clone() }), Vec::<String>::new());
        assert_eq!(f.children(&kept), 1);
        assert!(!f.begin_remove(&c).unwrap());
        assert_eq!(f.end_remove(&c, Removal::Deleted { parent: Some(kept.clone()) }), vec![kept.clone()]);
        assert!(f.children.is_empty() && f.removing.is_empty());

        // A child's removal that overtakes its parent's.
        f.adopt(&p).unwrap();
        assert!(f.begin_remove(&p).unwrap());
        assert_eq!(f.disown(&kept), None);
        assert_eq!(f.end_remove(&p, Removal::Kept { name: kept.clone() }), vec![kept.clone()]);
        // Unknown parents never go negative.
        assert_eq!(f.disown(p.as_str()), None);
        f.end_remove(&c, Removal::Failed);
        assert!(f.children.is_empty() && f.removing.is_empty());
    }

    #[test]
    fn a_child_that_named_its_parent_before_it_was_kept_still_frees_the_kept_dir() {
        let mut f = Family::default();
        let (p, c) = (CacheId::random(), CacheId::random());
        f.adopt(&p).unwrap();
        assert!(f.begin_remove(&p).unwrap(), "p has a child");
        let kept = format!("{KEPT_PREFIX}{}-1", p.as_str());
        assert!(f.end_remove(&p, Removal::Kept { name: kept.clone() }).is_empty());
        // The child's removal read the parent's old name, then ended.
        assert!(!f.begin_remove(&c).unwrap());
        let freed = f.end_remove(&c, Removal::Deleted { parent: Some(p.to_string()) });
        assert_eq!(freed, vec![kept]);
        assert!(f.children.is_empty() && f.kept_as.is_empty());
        // A layer made anew under the old id counts its own children.
        f.made(&p);
        f.adopt(&p).unwrap();
        assert_eq!(f.children(p.as_str()), 1);
    }
}
