//! The one place an error becomes an HTTP response.
//!
//! Store and driver errors cross the boundary as their [`ErrorKind`];
//! [`status_of`] maps a kind to a status. Every error body is
//! `{"message": "...", "kind": "<ErrorKind name>"}`, so clients get the
//! error's class back, not only its status. A 5xx body's message says only
//! "internal error": the detail, which may name paths on the host, goes to
//! the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use graphdriver::ErrorKind;
use layer::LayerStoreError;

use crate::api::ErrorBody;

/// The message of every 5xx response.
pub const INTERNAL_MESSAGE: &str = "internal error";

/// The HTTP status for an error kind.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::AlreadyExists | ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
        ErrorKind::DataLoss | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The kind an error made with a bare status has.
fn kind_of_status(status: StatusCode) -> ErrorKind {
    match status.as_u16() {
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        501 => ErrorKind::Unsupported,
        400..=499 => ErrorKind::InvalidArgument,
        _ => ErrorKind::Internal,
    }
}

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: ErrorKind,
    message: String,
    /// A 5xx whose message is meant for the client (it names no host path):
    /// a layer or RW layer kept damaged says why.
    expose: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, kind: kind_of_status(status), message: message.into(), expose: false }
    }

    /// An error whose message the client sees whatever its status (it
    /// names nothing of the host: a registry's answer, say).
    pub fn exposed(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError { status, kind, message: message.into(), expose: true }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message a client sees: the detail for 4xx, a generic one for 5xx.
    pub fn public_message(&self) -> &str {
        if self.status.is_server_error() && !self.expose { INTERNAL_MESSAGE } else { &self.message }
    }
}

impl From<LayerStoreError> for ApiError {
    fn from(e: LayerStoreError) -> Self {
        let expose = matches!(e, LayerStoreError::Corrupt { .. } | LayerStoreError::RwCorrupt { .. });
        ApiError { expose, kind: e.kind(), ..ApiError::new(status_of(e.kind()), e.to_string()) }
    }
}

impl From<images::ImageStoreError> for ApiError {
    fn from(e: images::ImageStoreError) -> Self {
        let expose = matches!(e, images::ImageStoreError::Corrupt { .. })
            || matches!(&e, images::ImageStoreError::Layer(l) if matches!(l, LayerStoreError::Corrupt { .. }));
        ApiError { expose, kind: e.kind(), ..ApiError::new(status_of(e.kind()), e.to_string()) }
    }
}

impl ApiError {
    /// Log the detail: 5xx as errors, 4xx at debug level.
    pub fn log(&self) {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), error = %self.message, "request failed");
        } else {
            tracing::debug!(status = self.status.as_u16(), error = %self.message, "request rejected");
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let body = ErrorBody { message: self.public_message().to_owned(), kind: Some(self.kind.as_str().to_owned()) };
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn every_kind_has_its_status() {
        let cases = [
            (ErrorKind::NotFound, 404),
            (ErrorKind::AlreadyExists, 409),
            (ErrorKind::Conflict, 409),
            (ErrorKind::InvalidArgument, 400),
            (ErrorKind::Unsupported, 501),
            (ErrorKind::DataLoss, 500),
            (ErrorKind::Internal, 500),
        ];
        for (kind, status) in cases {
            assert_eq!(status_of(kind).as_u16(), status, "{kind:?}");
        }
    }

    #[test]
    fn store_errors_map_through_their_kind() {
        let e: ApiError = LayerStoreError::LayerNotFound("sha256:ab".into()).into();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.public_message(), "no such layer sha256:ab");
        let e: ApiError = LayerStoreError::ParentNotFound("sha256:ab".into()).into();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e: ApiError = LayerStoreError::NameInUse("web".into()).into();
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert_eq!(e.kind(), LayerStoreError::NameInUse("web".into()).kind());
        assert_eq!(ApiError::bad_request("x").kind(), ErrorKind::InvalidArgument);
    }

    #[tokio::test]
    async fn server_errors_hide_their_detail() {
        let e: ApiError = LayerStoreError::Internal("open /var/lib/secret: denied".into()).into();
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body.message, INTERNAL_MESSAGE);
        assert_eq!(body.kind.as_deref(), Some("internal"));
    }

    #[test]
    fn damaged_layers_say_why() {
        let e: ApiError = LayerStoreError::Corrupt { chain_id: "sha256:ab".into(), why: "missing size".into() }.into();
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(e.public_message().contains("missing size"), "{}", e.public_message());
    }

    #[tokio::test]
    async fn client_errors_keep_their_message() {
        let resp = ApiError::bad_request("invalid digest \"x\"").into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body.message, "invalid digest \"x\"");
    }
}
