//! Wire types of the REST API that are not the store's own views
//! ([`layer::LayerInfo`], [`layer::RwInfo`], [`layer::StoreInfo`] are sent as
//! they are). Field names are a public contract: add, never rename.
//!
//! Request types carry plain strings: the server parses them into validated
//! types itself so a malformed value gets a precise 400 message.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The base path of every route.
pub const PREFIX: &str = "/v1";

/// The trailer in which layerd names why a streamed tar body failed after
/// its head was sent. Sent only to clients that ask for trailers
/// (`TE: trailers`, as layerctl does) and announced by a `Trailer` header;
/// other clients see the body aborted (no final chunk).
pub const ERROR_TRAILER: &str = "layerd-error";

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    /// The error's class: an `ErrorKind` name (`not_found`, `already_exists`,
    /// `invalid_argument`, `conflict`, `unsupported`, `data_loss`,
    /// `internal`). Always sent by layerd; optional for readers, so a body
    /// without it still parses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// The [`ErrorKind`](graphdriver::ErrorKind) an error body's `kind` names.
pub fn parse_kind(name: &str) -> Option<graphdriver::ErrorKind> {
    use graphdriver::ErrorKind as K;
    [K::NotFound, K::AlreadyExists, K::InvalidArgument, K::Conflict, K::Unsupported, K::DataLoss, K::Internal]
        .into_iter()
        .find(|k| k.as_str() == name)
}

/// Query of `POST /v1/layers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
}

/// Body of `POST /v1/images/tag`: give the image `source` (a name, id or id
/// prefix) the name `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRequest {
    pub source: String,
    pub target: String,
}

/// Query of `GET /v1/images/save`: `names` comma-separated; `format`
/// `docker` (default) or `oci`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaveQuery {
    pub names: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// Answer of `DELETE /v1/layers/{chain}`: the layers the release freed (empty
/// when the layer is still held by a child, an RW layer or another reference).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedResponse {
    pub deleted: Vec<String>,
}

/// Body of `POST /v1/rw`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRwRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default)]
    pub init: bool,
}

/// Answer of `POST /v1/rw/{name}/mount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountResponse {
    pub path: PathBuf,
}

/// Body of `POST /v1/rw/delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkDeleteRequest {
    pub names: Vec<String>,
}

/// Answer of `POST /v1/rw/delete`: one result per requested name, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkDeleteResponse {
    pub results: Vec<BulkDeleteResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkDeleteResult {
    pub name: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Body of `POST /v1/images/pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// An image reference as Docker writes it (`busybox`, `host:5000/a/b:tag`,
    /// `name@sha256:…`).
    pub reference: String,
    /// `os/arch[/variant]`; the host's by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

/// The `result` of a pull's last progress line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullResult {
    pub image: images::ImageInfo,
    /// The digest the registry knows the image by (the index's, when the
    /// manifest was picked from one).
    pub digest: String,
}

/// Body of `POST /v1/images/push`: the local image of that name goes to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    pub reference: String,
}

/// The `result` of a push's last progress line: the pushed manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushResult {
    pub digest: String,
    pub size: u64,
}
