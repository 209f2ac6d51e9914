//! The extractor's directory-fd cache: the directories of the last path it
//! opened, from the layer root down, kept open across members.
//!
//! A tar lists a directory's members together, so consecutive members share
//! their parent. Reopening every component from the root (`O_NOFOLLOW`,
//! one `openat` and one `close` per component per member) was most of the
//! extractor's system calls on small files; with the cache a member in the
//! same directory as the one before costs no `openat` at all.
//!
//! **Why it is safe.** Every cached fd was reached from the layer root one
//! component at a time with `O_NOFOLLOW | O_DIRECTORY` (so it is a directory
//! below the root, never reached through a symlink), and the extractor never
//! renames, so a directory below the root stays below it. What a cached fd
//! could get wrong is only *which* path it stands for, once a later member
//! replaces a cached directory (by a file, a symlink, a whiteout device) or
//! removes it (a whiteout, an opaque marker, a replaced ancestor). Two
//! independent rules keep that from happening:
//!
//! 1. The chain only ever holds a prefix of the path looked up last:
//!    [`DirCache::reuse`] cuts it to the part the new path shares. A member
//!    can only replace or remove *children* of the directory it looked up
//!    (its parent; an opaque marker prunes below its directory), and those
//!    are never in the chain.
//! 2. Every removal also calls [`DirCache::forget`] (or
//!    [`DirCache::forget_below`]) before it happens, dropping the removed
//!    path and everything below it, should rule 1 ever be bent (a lookup
//!    made between a member's own lookup and its removal).
//!
//! The next member naming a removed path walks it again from the deepest
//! surviving ancestor, with `O_NOFOLLOW`, exactly as without the cache, and
//! so meets the new symlink or file (refused: not a directory) or nothing
//! (created anew) as before. An fd handed out before a removal (an `Rc` the
//! caller holds) is the parent of the removed path, never the path itself.
//! `apply.rs`'s tests replay symlink swaps, replacements, whiteouts, opaque
//! markers, hardlinks into replaced trees and `..` games against a cached
//! directory; they give the same outcomes with the cache as the extractor
//! without it did (checked against the previous extractor).

use std::os::fd::OwnedFd;
use std::rc::Rc;

use super::pathset::{Node, ROOT};

/// How many levels stay open. Deeper paths (rare: a path may have 2,048
/// components) are walked below the last cached level with one fd at a
/// time, so the cache never holds more than this many descriptors.
const MAX_LEVELS: usize = 64;

pub(super) struct DirCache {
    root: Rc<OwnedFd>,
    /// `chain[i]` is the directory at the path `chain[..=i]`'s names.
    chain: Vec<Level>,
}

struct Level {
    name: Vec<u8>,
    fd: Rc<OwnedFd>,
    /// The path's node in the extractor's `PathSet`.
    node: Node,
}

/// An open directory and its node in the extractor's `PathSet`.
pub(super) struct Dir {
    pub(super) fd: Rc<OwnedFd>,
    pub(super) node: Node,
}

impl DirCache {
    pub(super) fn new(root: OwnedFd) -> DirCache {
        DirCache { root: Rc::new(root), chain: Vec::new() }
    }

    /// Keep the cached levels `rel` starts with, drop the rest; returns how
    /// many components of `rel` are open and the deepest of them (the
    /// root for none).
    pub(super) fn reuse(&mut self, rel: &[Vec<u8>]) -> (usize, Dir) {
        let n = self.chain.iter().zip(rel).take_while(|(l, c)| l.name == **c).count();
        self.chain.truncate(n);
        (n, self.top())
    }

    fn top(&self) -> Dir {
        match self.chain.last() {
            Some(l) => Dir { fd: l.fd.clone(), node: l.node },
            None => Dir { fd: self.root.clone(), node: ROOT },
        }
    }

    /// `fd` was opened as component `depth` (0-based) of the path, below
    /// the deepest cached level; cache it if the chain ends just above it.
    pub(super) fn push(&mut self, depth: usize, name: &[u8], fd: OwnedFd, node: Node) -> Dir {
        let fd = Rc::new(fd);
        if depth == self.chain.len() && depth < MAX_LEVELS {
            self.chain.push(Level { name: name.to_vec(), fd: fd.clone(), node });
        }
        Dir { fd, node }
    }

    /// `rel` was removed or replaced: forget it and everything below it.
    pub(super) fn forget(&mut self, rel: &[Vec<u8>]) {
        if self.holds(rel) {
            self.chain.truncate(rel.len().saturating_sub(1));
        }
    }

    /// Anything below the directory `dir` may have been removed: forget
    /// what is cached below it (`dir` itself stays).
    pub(super) fn forget_below(&mut self, dir: &[Vec<u8>]) {
        if self.holds(dir) {
            self.chain.truncate(dir.len());
        }
    }

    /// Whether the chain runs through `rel`.
    fn holds(&self, rel: &[Vec<u8>]) -> bool {
        rel.len() <= self.chain.len() && self.chain.iter().zip(rel).all(|(l, c)| l.name == *c)
    }

    #[cfg(test)]
    pub(super) fn depth(&self) -> usize {
        self.chain.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<Vec<u8>> {
        s.split('/').filter(|c| !c.is_empty()).map(|c| c.as_bytes().to_vec()).collect()
    }

    fn cache_of(path: &str) -> (tempfile::TempDir, DirCache) {
        let t = tempfile::tempdir().unwrap();
        let root = super::super::fs::open_dir(t.path()).unwrap();
        let mut c = DirCache::new(root);
        for (i, comp) in p(path).iter().enumerate() {
            let fd = super::super::fs::open_dir(t.path()).unwrap();
            c.push(i, comp, fd, i + 1);
        }
        (t, c)
    }

    #[test]
    fn reuse_keeps_the_common_prefix() {
        let (_t, mut c) = cache_of("a/b/c");
        let (n, d) = c.reuse(&p("a/b/x/y"));
        assert_eq!((n, d.node, c.depth()), (2, 2, 2));
        let (n, d) = c.reuse(&p("z"));
        assert_eq!((n, d.node, c.depth()), (0, ROOT, 0));
    }

    #[test]
    fn forget_drops_the_path_and_below_only() {
        let (_t, mut c) = cache_of("a/b/c");
        c.forget(&p("a/x"));
        c.forget(&p("a/b/c/d"));
        assert_eq!(c.depth(), 3);
        c.forget(&p("a/b"));
        assert_eq!(c.depth(), 1);
        let (_t, mut c) = cache_of("a/b/c");
        c.forget_below(&p("a/b"));
        assert_eq!(c.depth(), 2);
        c.forget_below(&p("q"));
        assert_eq!(c.depth(), 2);
        c.forget_below(&p(""));
        assert_eq!(c.depth(), 0);
    }

    #[test]
    fn holds_at_most_max_levels() {
        let deep = "d/".repeat(MAX_LEVELS + 10);
        let (_t, c) = cache_of(&deep);
        assert_eq!(c.depth(), MAX_LEVELS);
    }
}
