//! End-to-end tests: the real `layerd` on a temp root and socket, driven by
//! the real `layerctl` and by raw HTTP for input the CLI would never send.
//! One test binary, one module per topic, sharing `support` (`layerctl` at
//! hand) on top of the shared test kit (`testkit::DaemonUnderTest`, its
//! hyper client and tar builders).

// A test harness: its helpers panic on any unexpected failure by design.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod check;
mod errors;
mod expect;
mod images;
mod layers;
mod pull_push;
mod rw;
mod server;
