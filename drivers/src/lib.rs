//! Graph drivers: `vfs` (a full copy per layer; the reference driver and the
//! conformance oracle). overlay and btrfs follow the same module anatomy:
//! `mod.rs` (the Driver impl), `check.rs` (host support probe), `copy.rs`/
//! `mount.rs`/`diff.rs` for the effects. [`registry::open`] picks one by name
//! (Docker's names: `vfs`, `overlay2`, `btrfs`); [`legacy`] moves what an
//! earlier layerd wrote under `overlay` to `overlay2`.

pub mod btrfs;
mod common;
pub mod fsmagic;
pub mod kind;
pub mod legacy;
pub mod overlay;
pub mod registry;
pub mod testing;
pub mod tree;
pub mod vfs;

pub use kind::DriverKind;
