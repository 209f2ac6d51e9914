//! Extractors that turn axum's own rejections (bad JSON, wrong content type,
//! body too large, undecodable path or query) into the API's JSON errors, and
//! parse path values into the store's validated types.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use bytes::Bytes;
use layer::{ChainId, RwName};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// `Json<T>` whose rejection is an [`ApiError`].
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(&rej)),
        }
    }
}

fn json_rejection(rej: &JsonRejection) -> ApiError {
    ApiError::new(rej.status(), rej.body_text())
}

/// `Query<T>` whose rejection is an [`ApiError`].
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|rej: QueryRejection| ApiError::new(rej.status(), rej.body_text()))
    }
}

async fn path_string<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<String, ApiError> {
    axum::extract::Path::<String>::from_request_parts(parts, state)
        .await
        .map(|p| p.0)
        .map_err(|rej: PathRejection| ApiError::new(rej.status(), rej.body_text()))
}

/// The `{chain}` path value, parsed.
pub struct ChainPath(pub ChainId);

impl<S: Send + Sync> FromRequestParts<S> for ChainPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let s = path_string(parts, state).await?;
        ChainId::parse(&s).map(ChainPath).map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

/// The `{name}` path value, parsed.
pub struct NamePath(pub RwName);

impl<S: Send + Sync> FromRequestParts<S> for NamePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let s = path_string(parts, state).await?;
        RwName::parse(&s).map(NamePath).map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

/// Like [`ApiJson`], but a request with neither a body nor a
/// `Content-Type` gets `T::default()`.
pub struct JsonOrDefault<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for JsonOrDefault<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if req.headers().contains_key(header::CONTENT_TYPE) {
            return ApiJson::<T>::from_request(req, state).await.map(|ApiJson(v)| JsonOrDefault(v));
        }
        let body = Bytes::from_request(req, state).await.map_err(|rej| ApiError::new(rej.status(), rej.body_text()))?;
        if body.is_empty() {
            Ok(JsonOrDefault(T::default()))
        } else {
            Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Expected request with `Content-Type: application/json`",
            ))
        }
    }
}
