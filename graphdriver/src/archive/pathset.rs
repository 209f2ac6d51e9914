//! The set of paths a tar wrote, as a tree of components: adding a path
//! `depth` deep costs `depth` steps and stores each component once, so a
//! deep tree costs memory linear in its size (a set of whole paths would
//! store every prefix again: quadratic in depth).

use std::collections::HashMap;

/// A node of the tree; `ROOT` is the layer root.
pub(super) type Node = usize;
pub(super) const ROOT: Node = 0;

pub(super) struct PathSet {
    children: HashMap<(Node, Vec<u8>), Node>,
    /// Per node: whether the path itself is in the set.
    marked: Vec<bool>,
}

impl Default for PathSet {
    fn default() -> Self {
        PathSet { children: HashMap::new(), marked: vec![false] }
    }
}

impl PathSet {
    /// The node of `name` below `node`, created if new (unmarked).
    pub(super) fn child(&mut self, node: Node, name: &[u8]) -> Node {
        let next = self.marked.len();
        let id = *self.children.entry((node, name.to_vec())).or_insert(next);
        if id == next {
            self.marked.push(false);
        }
        id
    }

    pub(super) fn mark(&mut self, node: Node) {
        self.marked[node] = true;
    }

    fn find(&self, path: &[Vec<u8>]) -> Option<Node> {
        let mut node = ROOT;
        for c in path {
            node = *self.children.get(&(node, c.clone()))?;
        }
        Some(node)
    }

    pub(super) fn insert(&mut self, path: &[Vec<u8>]) {
        let mut node = ROOT;
        for c in path {
            node = self.child(node, c);
        }
        self.mark(node);
    }

    pub(super) fn remove(&mut self, path: &[Vec<u8>]) {
        if let Some(n) = self.find(path) {
            self.marked[n] = false;
        }
    }

    pub(super) fn contains(&self, path: &[Vec<u8>]) -> bool {
        self.find(path).is_some_and(|n| self.marked[n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_paths_not_their_prefixes() {
        let p = |s: &str| s.split('/').map(|c| c.as_bytes().to_vec()).collect::<Vec<_>>();
        let mut set = PathSet::default();
        set.insert(&p("a/b/c"));
        assert!(set.contains(&p("a/b/c")));
        assert!(!set.contains(&p("a/b")));
        assert!(!set.contains(&p("x")));
        let a = set.child(ROOT, b"a");
        set.mark(a);
        assert!(set.contains(&p("a")));
        set.remove(&p("a/b/c"));
        assert!(!set.contains(&p("a/b/c")));
        assert_eq!(set.marked.len(), 4);
    }
}
