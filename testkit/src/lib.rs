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

/// `len` bytes of xorshift64 noise from `seed`: deterministic and
/// incompressible, like the binaries and compressed assets of a real image.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
