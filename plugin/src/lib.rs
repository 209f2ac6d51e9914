//! Docker's v1 graphdriver plugin protocol, both ways.
//!
//! - [`server`]: serve any [`graphdriver::Driver`] to dockerd
//!   (`layerd plugin serve`), so `dockerd --experimental --storage-driver NAME`
//!   keeps every image and container on one of our drivers.
//! - [`client`]: use any such plugin — ours or a third party's — as a
//!   [`graphdriver::Driver`] (`layerd --driver plugin:NAME`), found the way
//!   dockerd finds it ([`discovery`]).
//! - [`wire`]: the messages, read the way Go's decoder reads them.
//!
//! Why a crate of its own: the contract crate (`graphdriver`) stays free of
//! HTTP, and this crate depends on the contract alone — the server is handed
//! a function that opens a driver, so it never names one.

pub mod client;
pub mod discovery;
pub mod server;
pub mod wire;

pub use client::{ClientOptions, PluginDriver};
pub use discovery::{Addr, Dirs, discover};
pub use server::{Opener, PluginServer, router};
