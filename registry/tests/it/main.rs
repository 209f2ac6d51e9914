//! The registry client against real peers: Debian's `docker-registry`
//! (distribution 2.8) started per test, and a small in-test HTTP server
//! that answers as a hostile or odd registry would.

#![allow(clippy::unwrap_used)]

mod distribution;
mod docker;
mod hostile;
mod support;
mod token;
