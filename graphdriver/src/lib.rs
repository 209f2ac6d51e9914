//! The graph driver contract.
//!
//! This crate is deliberately thin: the [`Driver`] trait (whose doc comment is
//! the spec), the error types and the closed [`ErrorKind`] set, validated
//! driver ids, and the archive helpers every driver shares (naive diff, apply
//! with whiteouts, export). It never depends on a concrete driver, so a third
//! party can implement a driver — or the conformance suite can test one —
//! against this crate alone.

pub mod archive;
mod driver;
mod error;
mod id;
pub mod keyed;
pub mod naive;
pub mod pipe;

pub use driver::{Capabilities, Change, ChangeKind, CreateOpts, Driver, TarReader};
pub use error::{ArchiveError, DriverError, ErrorKind, IoContext, IoError, Result};
pub use id::CacheId;
