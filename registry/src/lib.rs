//! The OCI distribution client: pull images from registries into a
//! [`layer::Store`] and push them back.
//!
//! Shape and why:
//! - **reqwest + a small protocol layer of our own**, not `oci-client`:
//!   oci-client's `push_blob` takes the whole blob as one `&[u8]` (a 1 GB
//!   layer in memory), it reads no Docker `config.json`, and it gives no
//!   hold on what a hostile registry can make it do (manifest size caps,
//!   index nesting, where credentials go on a redirect). reqwest (rustls
//!   with the system's roots) gives streamed bodies both ways, connection
//!   pooling and redirects that drop `Authorization` when they leave the
//!   host; the distribution API on top of it is a few requests.
//! - `oci-spec` parses and normalises image references; manifests and
//!   configs are read into small serde views (`manifest`) that accept
//!   Docker schema 2 and OCI alike, and kept as the registry's exact bytes.
//! - Blobs go **straight into registration** (`blob`): no temp copy, digest
//!   and size checked while streaming, DiffID stated up front so the
//!   store's duplicate suppression keys on the ChainID; downloads of one
//!   ChainID are single-flighted across pulls (`flight`).
//! - Pushes compress once per ChainID and remember the result (`known`).

pub mod auth;
mod blob;
pub mod client;
mod error;
mod flight;
pub mod known;
pub mod manifest;
pub mod progress;
mod pull;
mod push;
pub mod reference;

use std::path::PathBuf;
use std::sync::Arc;

pub use auth::Credentials;
pub use client::{Client, ClientOptions};
pub use error::{RegistryError, Result};
pub use manifest::Platform;
pub use progress::{Progress, Reporter};
pub use pull::{Pulled, Resolved};
pub use push::{PushImage, Pushed};
pub use reference::Reference;

/// Pulls and pushes for one layer store. Cheap to share (`Arc`); every
/// pull through one `Registry` shares its downloads.
pub struct Registry {
    client: Client,
    store: layer::Store,
    flights: Arc<flight::Flights<layer::ChainId>>,
    /// Whole pulls in flight, per top layer.
    images: Arc<flight::Flights<layer::ChainId>>,
    /// Resolves in flight, per (reference, platform).
    resolves: Arc<flight::Flights<(String, String), Arc<pull::Resolved>>>,
    known: known::Known,
}

impl Registry {
    /// `state_dir` keeps what we know of pushed and pulled blobs (`None`:
    /// in memory only).
    pub fn new(client: Client, store: layer::Store, state_dir: Option<PathBuf>) -> Registry {
        Registry {
            client,
            store,
            flights: Arc::default(),
            images: Arc::default(),
            resolves: Arc::default(),
            known: known::Known::open(state_dir),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn store(&self) -> &layer::Store {
        &self.store
    }

    /// Downloads and resolves in flight (zero when idle).
    pub fn downloads_in_flight(&self) -> usize {
        self.flights.len() + self.images.len() + self.resolves.len()
    }
}
