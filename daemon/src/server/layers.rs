//! `/v1/layers`: register, list, inspect, export and release read-only layers.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use layer::{DiffId, LayerInfo, RegisterOpts, Store};

use super::error::{ApiError, ApiResult};
use super::extract::{AcceptsTrailers, ApiQuery, ChainPath, resolve_parent};
use super::routes::AppState;
use super::stream::{body_reader, tar_response};
use crate::api::{DeletedResponse, RegisterQuery};

pub async fn list(State(state): State<AppState>) -> Json<Vec<LayerInfo>> {
    Json(state.store.list())
}

/// `POST /v1/layers?parent=&diff_id=`: the body is the tar, streamed.
pub async fn register(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<RegisterQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<LayerInfo>)> {
    let opts = register_opts(&state.store, &query)?;
    tracing::debug!(parent = ?opts.parent, diff_id = ?opts.diff_id, "register");
    let permit = state.uploads.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many uploads in progress ({}); retry later", super::stream::MAX_UPLOADS),
        )
    })?;
    // An `Expect: 100-continue` body is asked for only when the store reads it.
    let lazy = super::stream::expects_continue(&headers);
    let reader = body_reader(body, state.metrics.imported.clone(), state.idle_timeout, permit, lazy);
    let store = state.store.clone();
    let info = state.detached(async move { Ok(store.register(reader, opts).await?) }).await?;
    tracing::info!(chain_id = %info.chain_id, "layer registered");
    Ok((StatusCode::CREATED, Json(info)))
}

/// An empty `parent=` or `diff_id=` means "not given".
fn register_opts(store: &Store, query: &RegisterQuery) -> ApiResult<RegisterOpts> {
    let given = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let parent = given(&query.parent).map(|s| resolve_parent(store, &s)).transpose()?;
    let diff_id = given(&query.diff_id)
        .map(|s| DiffId::parse(&s))
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("diff_id: {e}")))?;
    Ok(RegisterOpts { parent, diff_id, blob_digest: None, lease: false })
}

pub async fn inspect(State(state): State<AppState>, ChainPath(layer): ChainPath) -> ApiResult<Json<LayerInfo>> {
    let chain = state.store.resolve(&layer)?;
    Ok(Json(state.store.get(&chain)?))
}

pub async fn tar(
    State(state): State<AppState>,
    ChainPath(layer): ChainPath,
    AcceptsTrailers(trailers): AcceptsTrailers,
) -> ApiResult<Response> {
    let chain = state.store.resolve(&layer)?;
    let reader = state.store.tar_stream(&chain).await?;
    Ok(tar_response(reader, state.metrics.exported.clone(), state.idle_timeout, trailers))
}

/// Drop the reference a registration gave. Answers the layers this freed.
pub async fn release(State(state): State<AppState>, ChainPath(layer): ChainPath) -> ApiResult<Json<DeletedResponse>> {
    let chain = state.store.resolve(&layer)?;
    let store = state.store.clone();
    let deleted = state.detached(async move { Ok(store.release(&chain).await?) }).await?;
    Ok(Json(DeletedResponse { deleted: deleted.iter().map(ToString::to_string).collect() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_query_values_mean_absent() {
        let q = RegisterQuery { parent: Some(String::new()), diff_id: None };
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let store = rt.block_on(async {
            let driver = drivers::registry::open("vfs", dir.path()).unwrap();
            Store::open(dir.path(), driver).await.unwrap()
        });
        let opts = register_opts(&store, &q).unwrap();
        assert!(opts.parent.is_none() && opts.diff_id.is_none());
        let q = RegisterQuery { parent: None, diff_id: Some("md5:00".into()) };
        assert!(register_opts(&store, &q).unwrap_err().public_message().starts_with("diff_id: "));
    }

    // Parent resolution (prefixes, unknown, ambiguous) is exercised
    // against a live daemon in daemon/tests/cli.rs.
}
