//! The one test kit every crate's tests share: tar builders ([`tars`]),
//! tree manifests and dumps ([`manifest`], [`tree`]), the
//! daemon-under-test guard ([`daemon`]) and an HTTP client over a unix
//! socket ([`http`]). Nearly a leaf: of the workspace it depends on
//! `graphdriver` only (for its xattr listing), so every crate above it —
//! `drivers`' unit tests included — can use the kit without a cycle.

// Test support: its helpers panic on any unexpected failure by design.
#![allow(clippy::unwrap_used)]

pub mod daemon;
pub mod http;
pub mod manifest;
pub mod mounts;
pub mod registry;
pub mod tars;
pub mod tree;

pub use daemon::DaemonUnderTest;
pub use http::Reply;
