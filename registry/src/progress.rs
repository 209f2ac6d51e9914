//! Progress of a pull or push, one event per state change of a layer (and
//! byte counts while it moves), as `docker pull` shows it. The daemon sends
//! them to the client as JSON lines; the shape is a public contract.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

/// One event. `id` is the first 12 hex digits of the blob's digest (or
/// a word like `manifest` for the image as a whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub id: String,
    /// `Waiting`, `Downloading`, `Extracting`, `Pull complete`,
    /// `Already exists`, `Preparing`, `Pushing`, `Pushed`, `Mounted from
    /// <repo>`, `Layer already exists`, `Resolved <digest>`...
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// Where a pull or push reports; a no-op without a receiver.
#[derive(Debug, Clone, Default)]
pub struct Reporter(Option<UnboundedSender<Progress>>);

impl Reporter {
    pub fn new(tx: UnboundedSender<Progress>) -> Reporter {
        Reporter(Some(tx))
    }

    pub fn none() -> Reporter {
        Reporter(None)
    }

    pub fn status(&self, id: &str, status: impl Into<String>) {
        self.send(Progress { id: id.to_owned(), status: status.into(), current: None, total: None });
    }

    pub fn bytes(&self, id: &str, status: &str, current: u64, total: u64) {
        self.send(Progress {
            id: id.to_owned(),
            status: status.to_owned(),
            current: Some(current),
            total: Some(total),
        });
    }

    fn send(&self, p: Progress) {
        if let Some(tx) = &self.0 {
            // A client that went away stops listening; the work goes on.
            let _ = tx.send(p);
        }
    }
}

/// The short id of a digest (`sha256:0123456789abcdef…` → `0123456789ab`).
pub fn short(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.chars().take(12).collect()
}
