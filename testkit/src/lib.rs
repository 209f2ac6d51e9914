//! The one test kit every crate's tests share: tar builders ([`tars`]),
//! tree manifests and dumps ([`manifest`], [`tree`], [`xattr`]), the
//! daemon-under-test guard ([`daemon`]) and an HTTP client over a unix
//! socket ([`http`]). A leaf crate: it depends on none of the workspace's
//! crates, so `graphdriver`'s and `drivers`' own unit tests can use it too.

// Test support: its helpers panic on any unexpected failure by design.
#![allow(clippy::unwrap_used)]

pub mod daemon;
pub mod http;
pub mod manifest;
pub mod tars;
pub mod tree;
pub mod xattr;

pub use daemon::DaemonUnderTest;
pub use http::Reply;
