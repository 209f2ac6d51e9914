//! `/v1/rw`: containers' writable layers.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use graphdriver::Change;
use layer::{LayerInfo, RwInfo, RwName, RwOpts, Store};

use super::error::{ApiError, ApiResult};
use super::extract::{AcceptsTrailers, ApiJson, NamePath, resolve_parent};
use super::routes::AppState;
use super::stream::tar_response;
use crate::api::{BulkDeleteRequest, BulkDeleteResponse, BulkDeleteResult, CreateRwRequest, MountResponse};

pub async fn list(State(state): State<AppState>) -> Json<Vec<RwInfo>> {
    Json(state.store.list_rw())
}

pub async fn create(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateRwRequest>,
) -> ApiResult<(StatusCode, Json<RwInfo>)> {
    let name = RwName::parse(&req.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let parent =
        req.parent.as_deref().filter(|s| !s.is_empty()).map(|p| resolve_parent(&state.store, p)).transpose()?;
    let opts = RwOpts { init: req.init, ..RwOpts::default() };
    let store = state.store.clone();
    let info = state.detached(async move { Ok(store.create_rw(&name, parent.as_ref(), opts).await?) }).await?;
    tracing::info!(name = %info.name, "rw layer created");
    Ok((StatusCode::CREATED, Json(info)))
}

pub async fn inspect(State(state): State<AppState>, NamePath(name): NamePath) -> ApiResult<Json<RwInfo>> {
    Ok(Json(state.store.get_rw(&name)?))
}

pub async fn mount(State(state): State<AppState>, NamePath(name): NamePath) -> ApiResult<Json<MountResponse>> {
    let store = state.store.clone();
    let path = state.detached(async move { Ok(store.mount(&name).await?) }).await?;
    Ok(Json(MountResponse { path }))
}

pub async fn unmount(State(state): State<AppState>, NamePath(name): NamePath) -> ApiResult<StatusCode> {
    let store = state.store.clone();
    state.detached(async move { Ok(store.unmount(&name).await?) }).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn changes(State(state): State<AppState>, NamePath(name): NamePath) -> ApiResult<Json<Vec<Change>>> {
    Ok(Json(state.store.changes(&name).await?))
}

pub async fn tar(
    State(state): State<AppState>,
    NamePath(name): NamePath,
    AcceptsTrailers(trailers): AcceptsTrailers,
) -> ApiResult<Response> {
    let reader = state.store.diff(&name).await?;
    Ok(tar_response(reader, state.metrics.exported.clone(), state.idle_timeout, trailers))
}

pub async fn commit(
    State(state): State<AppState>,
    NamePath(name): NamePath,
) -> ApiResult<(StatusCode, Json<LayerInfo>)> {
    let store = state.store.clone();
    let info = state.detached(async move { Ok(store.commit(&name).await?) }).await?;
    tracing::info!(chain_id = %info.chain_id, "rw layer committed");
    Ok((StatusCode::CREATED, Json(info)))
}

pub async fn release(State(state): State<AppState>, NamePath(name): NamePath) -> ApiResult<StatusCode> {
    let store = state.store.clone();
    state.detached(async move { Ok(store.release_rw(&name).await?) }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/rw/delete {"names":[...]}`: remove many RW layers at once.
/// Each name gets its own result; one failure does not stop the others.
/// Every layer is unpublished before any deletion starts, and the answer
/// comes once they are all unpublished: the data is deleted behind it.
pub async fn bulk_delete(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<BulkDeleteRequest>,
) -> ApiResult<Json<BulkDeleteResponse>> {
    let store = state.store.clone();
    let results = state.detached(async move { delete_all(store, req.names).await }).await?;
    Ok(Json(BulkDeleteResponse { results }))
}

async fn delete_all(store: Store, names: Vec<String>) -> ApiResult<Vec<BulkDeleteResult>> {
    let mut results: Vec<BulkDeleteResult> =
        names.iter().map(|name| BulkDeleteResult { name: name.clone(), ok: false, error: None }).collect();
    let mut valid = Vec::new();
    for (i, raw) in names.iter().enumerate() {
        match RwName::parse(raw) {
            Ok(name) => valid.push((i, name)),
            Err(e) => results[i].error = Some(e.to_string()),
        }
    }
    let (slots, names): (Vec<usize>, Vec<RwName>) = valid.into_iter().unzip();
    let outcomes = store.release_rw_many(names).await?;
    for (i, outcome) in slots.into_iter().zip(outcomes) {
        match outcome {
            Ok(()) => results[i].ok = true,
            Err(e) => {
                let e = ApiError::from(e);
                e.log();
                results[i].error = Some(e.public_message().to_owned());
            }
        }
    }
    Ok(results)
}
