//! `layerd`, the REST daemon over the layer store, and `layerctl`, its CLI.
//!
//! Shape and why:
//! - The binaries are thin: `layerd` calls [`server::main`], `layerctl` calls
//!   [`cli::main`]. Everything testable lives in this library.
//! - [`api`] holds the wire types both sides share (beyond the store's own
//!   `LayerInfo`/`RwInfo`/`StoreInfo`), so the client and the server cannot
//!   drift apart on a field name: the names are a public contract (DESIGN §4).
//! - The server never buffers a tar: uploads are bridged from the request body
//!   into the store's blocking `Read`, downloads from the store's `Read` into
//!   the response body through a bounded channel, and an error mid-stream
//!   aborts the response rather than ending it cleanly.
//! - [`server::error`] is the one place an [`graphdriver::ErrorKind`] becomes an
//!   HTTP status; 5xx bodies stay generic, the detail goes to the log.
//! - One route table ([`server::routes::routes`]) builds the router and is
//!   what the tests hold the checked-in OpenAPI document (`openapi.json`,
//!   served at `/v1/openapi.json`) against, so neither can change alone.
//! - Metrics ([`server::metrics`]) label requests by route template, never by
//!   raw path, and read the store's own lock histograms at scrape time.

pub mod api;
pub mod cli;
pub mod server;
