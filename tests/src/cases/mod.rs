//! The cases, one file per group. Each is `pub async fn name(cx: Cx) ->
//! CaseResult` and is registered in `__for_each_case!` in `lib.rs`.
//!
//! - `graphtest`: moby's graphtest (create, snapshot, deep chains, diff/apply,
//!   changes, diff size).
//! - `snapshots`: containerd's snapshotter testsuite, in driver terms.
//! - `lifecycle`: the per-method contract of the `Driver` trait doc.
//! - `parents`: parents and children (isolation, removal order, read-only).
//! - `archive`: what must survive diff → apply, and hostile tars.
//! - `concurrency`: many tasks on one layer, many layers at once.
//! - `store`: the layer store on top of the driver (exact tar export).

pub mod archive;
pub mod concurrency;
pub mod graphtest;
pub mod lifecycle;
pub mod parents;
pub mod snapshots;
pub mod store;
