//! The router: every route of DESIGN §4 and the JSON fallbacks.

use std::future::Future;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use axum::{Json, response::IntoResponse};
use layer::{Store, StoreInfo};
use tokio_util::task::TaskTracker;

use super::error::{ApiError, ApiResult};
use super::{layers, rw, stream, trace};

/// Largest JSON request body accepted. The tar upload has no limit: it is
/// streamed into the store and never buffered.
pub const JSON_BODY_LIMIT: usize = 1 << 20;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// Mutating store calls run as tracked tasks, so a client hanging up
    /// cannot cancel one half-way, and shutdown waits for them.
    pub tasks: TaskTracker,
}

impl AppState {
    pub fn new(store: Store) -> Self {
        AppState { store, tasks: TaskTracker::new() }
    }

    /// Run `fut` to completion even if the request is dropped.
    pub async fn detached<T, F>(&self, fut: F) -> ApiResult<T>
    where
        F: Future<Output = ApiResult<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.tasks.spawn(fut).await.map_err(|e| ApiError::internal(format!("request task failed: {e}")))?
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/_ping", get(ping))
        .route("/v1/info", get(info))
        .route("/v1/layers", get(layers::list).post(layers::register))
        .route("/v1/layers/{chain}", get(layers::inspect).delete(layers::release))
        .route("/v1/layers/{chain}/tar", get(layers::tar))
        .route("/v1/rw", get(rw::list).post(rw::create))
        .route("/v1/rw/delete", post(rw::bulk_delete))
        .route("/v1/rw/{name}", get(rw::inspect).delete(rw::release))
        .route("/v1/rw/{name}/mount", post(rw::mount))
        .route("/v1/rw/{name}/unmount", post(rw::unmount))
        .route("/v1/rw/{name}/changes", get(rw::changes))
        .route("/v1/rw/{name}/tar", get(rw::tar))
        .route("/v1/rw/{name}/commit", post(rw::commit))
        .fallback(no_route)
        .method_not_allowed_fallback(bad_method)
        // Consulted by the JSON extractor only; the tar upload takes the raw
        // body, which this limit does not apply to.
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(middleware::map_request(stream::drain_unread_bodies))
        .layer(middleware::from_fn(trace::trace_request))
        .with_state(state)
}

async fn ping() -> &'static str {
    "OK"
}

async fn info(State(state): State<AppState>) -> Json<StoreInfo> {
    Json(state.store.info().await)
}

async fn no_route(req: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no such endpoint: {} {}", req.method(), req.uri().path()))
}

async fn bad_method(req: Request) -> impl IntoResponse {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {} is not allowed on {}", req.method(), req.uri().path()),
    )
}
