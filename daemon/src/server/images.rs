//! `/v1/images`: list, inspect, tag, remove, load (a streamed archive body)
//! and save (a streamed archive response) images. An image reference in a
//! path is one segment, percent-encoded (`docker.io%2Flibrary%2Fbusybox:latest`);
//! ids and id prefixes need no encoding.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use images::archive::{Format, LoadReport};
use images::{ImageInfo, RemoveReport};

use super::error::{ApiError, ApiResult};
use super::extract::{AcceptsTrailers, ApiJson, ApiQuery};
use super::routes::AppState;
use super::stream::{body_reader, tar_response};
use crate::api::{SaveQuery, TagRequest};

pub async fn list(State(state): State<AppState>) -> Json<Vec<ImageInfo>> {
    Json(state.images.list())
}

pub async fn inspect(State(state): State<AppState>, Path(reference): Path<String>) -> ApiResult<Json<ImageInfo>> {
    Ok(Json(state.images.get(&reference)?))
}

/// `POST /v1/images/tag {source, target}`: answers the image, with its new name.
pub async fn tag(State(state): State<AppState>, ApiJson(req): ApiJson<TagRequest>) -> ApiResult<Json<ImageInfo>> {
    let target = images::names::parse(&req.target)?;
    let store = state.images.clone();
    let source = req.source.clone();
    state.detached(async move { Ok(store.tag(&source, &target).await?) }).await?;
    Ok(Json(state.images.get(&req.target)?))
}

pub async fn remove(State(state): State<AppState>, Path(reference): Path<String>) -> ApiResult<Json<RemoveReport>> {
    let store = state.images.clone();
    Ok(Json(state.detached(async move { Ok(store.remove(&reference).await?) }).await?))
}

/// `POST /v1/images/load`: the body is a docker-archive or OCI layout tar,
/// streamed into the store (see `images::archive::load`).
pub async fn load(State(state): State<AppState>, body: Body) -> ApiResult<Json<LoadReport>> {
    let permit = state.uploads.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many uploads in progress ({}); retry later", super::stream::MAX_UPLOADS),
        )
    })?;
    let reader = body_reader(body, state.metrics.imported.clone(), state.idle_timeout, permit, false);
    let store = state.images.clone();
    let report = state.detached(async move { Ok(store.load(reader).await?) }).await?;
    tracing::info!(images = report.images.len(), layers = report.layers_registered, "images loaded");
    Ok(Json(report))
}

/// `GET /v1/images/save?names=A,B&format=docker|oci`: the archive, streamed.
/// Unknown names fail before anything is sent.
pub async fn save(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<SaveQuery>,
    AcceptsTrailers(trailers): AcceptsTrailers,
) -> ApiResult<Response> {
    let refs: Vec<String> = q.names.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect();
    let format: Format = q.format.as_deref().unwrap_or("docker").parse()?;
    // Every name is resolved before anything is sent: a bad one is a 4xx,
    // not a broken stream; a failure later ends the body with an error.
    let reader = state.images.save_reader(&refs, format).await?;
    Ok(tar_response(reader, state.metrics.exported.clone(), state.idle_timeout, trailers))
}
