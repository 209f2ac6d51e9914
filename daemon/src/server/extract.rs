//! Extractors that turn axum's own rejections (bad JSON, wrong content type,
//! body too large, undecodable path or query) into the API's JSON errors, and
//! parse path values into the store's validated types.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use bytes::Bytes;
use layer::{ChainId, LayerRef, LayerStoreError, RwName, Store};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// `Json<T>` whose rejection is an [`ApiError`].
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Every request body is a JSON object: serde would otherwise read a
        // struct from an array (`[]` as `{}`), so check the shape first.
        let value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => v,
            Err(rej) => return Err(json_rejection(&rej)),
        };
        if !value.is_object() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Failed to deserialize the JSON body into the target type: the body must be a JSON object",
            ));
        }
        serde_json::from_value(value).map(ApiJson).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("Failed to deserialize the JSON body into the target type: {e}"),
            )
        })
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

/// The `{chain}` path value: a ChainID or a unique prefix of one, with or
/// without `sha256:` (Docker's short ids). Handlers resolve it with
/// [`Store::resolve`](layer::Store::resolve).
pub struct ChainPath(pub LayerRef);

impl<S: Send + Sync> FromRequestParts<S> for ChainPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let s = path_string(parts, state).await?;
        LayerRef::parse(&s).map(ChainPath).map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

/// A `parent` given by ChainID or unique prefix, resolved to the ChainID
/// of a live layer. Unknown or malformed: 400 `parent: ...`; ambiguous:
/// 400 naming the candidates.
pub fn resolve_parent(store: &Store, parent: &str) -> Result<ChainId, ApiError> {
    let bad = |e: LayerStoreError| {
        let e = match e {
            LayerStoreError::LayerNotFound(id) => LayerStoreError::ParentNotFound(id),
            other => other,
        };
        let api = ApiError::from(e);
        ApiError::new(api.status(), format!("parent: {}", api.public_message()))
    };
    LayerRef::parse(parent).and_then(|r| store.resolve(&r)).map_err(bad)
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

/// Whether the client accepts trailers (`TE: trailers`): a streamed tar
/// that fails then says why in a trailer rather than just breaking off.
pub struct AcceptsTrailers(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for AcceptsTrailers {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let te = parts.headers.get_all(header::TE).iter();
        let yes = te
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.split(';').next().is_some_and(|name| name.trim().eq_ignore_ascii_case("trailers")));
        Ok(AcceptsTrailers(yes))
    }
}
