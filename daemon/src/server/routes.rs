//! The router: every route of DESIGN §4, built from one table ([`routes`])
//! that the OpenAPI test also reads, so the served API and the checked-in
//! document (`daemon/openapi.json`) cannot drift apart.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{MethodFilter, MethodRouter, on};
use layer::Store;
use tokio_util::task::TaskTracker;

use super::error::{ApiError, ApiResult};
use super::idempotency::{self, Idempotency};
use super::metrics::{self, Metrics};
use super::{distribution, images, layers, openapi, rw, stream, system, trace};

/// Largest JSON request body accepted. The tar upload has no limit: it is
/// streamed into the store and never buffered.
pub const JSON_BODY_LIMIT: usize = 1 << 20;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// The image store over `store`.
    pub images: ::images::ImageStore,
    /// The registry client (pull, push), shared by every request; set by
    /// [`AppState::with_registry`] (without it, pull and push answer 501).
    pub registry: Option<Arc<registry::Registry>>,
    /// Mutating store calls run as tracked tasks, so a client hanging up
    /// cannot cancel one half-way, and shutdown waits for them.
    pub tasks: TaskTracker,
    pub metrics: Arc<Metrics>,
    /// Outcomes of requests that carried an `Idempotency-Key`.
    pub idempotency: Arc<Idempotency>,
    /// How long a tar body may stall (see `stream`).
    pub idle_timeout: std::time::Duration,
    /// Uploads in progress, bounded (see `stream::MAX_UPLOADS`).
    pub uploads: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(store: Store, images: ::images::ImageStore) -> Self {
        AppState {
            images,
            registry: None,
            metrics: Arc::new(Metrics::new(store.clone())),
            store,
            tasks: TaskTracker::new(),
            idempotency: Arc::new(Idempotency::default()),
            idle_timeout: stream::DEFAULT_IDLE_TIMEOUT,
            uploads: Arc::new(tokio::sync::Semaphore::new(stream::MAX_UPLOADS)),
        }
    }

    /// The registry client (the daemon's flags: insecure registries,
    /// credentials; its state dir beside the layerdb).
    pub fn with_registry(mut self, registry: Arc<registry::Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    pub fn with_idle_timeout(mut self, idle: std::time::Duration) -> Self {
        self.idle_timeout = idle;
        self
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

/// An HTTP method a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    Get,
    Post,
    Delete,
}

impl Verb {
    /// The method's name, upper case.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Delete => "DELETE",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Delete => MethodFilter::DELETE,
        }
    }
}

/// One row of the route table.
pub struct Route {
    pub verb: Verb,
    /// The path template, axum syntax (`/v1/layers/{chain}`), which is also
    /// OpenAPI's.
    pub path: &'static str,
    handler: MethodRouter<AppState>,
}

impl Route {
    fn new<H, T>(verb: Verb, path: &'static str, handler: H) -> Route
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        Route { verb, path, handler: on(verb.filter(), handler) }
    }
}

/// Every route the daemon serves.
pub fn routes() -> Vec<Route> {
    use Verb::{Delete, Get, Post};
    vec![
        Route::new(Get, "/v1/_ping", system::ping),
        Route::new(Get, "/v1/info", system::info),
        Route::new(Post, "/v1/check", system::check),
        Route::new(Get, "/v1/openapi.json", openapi::serve),
        Route::new(Get, "/metrics", metrics::serve),
        Route::new(Get, "/v1/layers", layers::list),
        Route::new(Post, "/v1/layers", layers::register),
        Route::new(Get, "/v1/layers/{chain}", layers::inspect),
        Route::new(Delete, "/v1/layers/{chain}", layers::release),
        Route::new(Get, "/v1/layers/{chain}/tar", layers::tar),
        Route::new(Get, "/v1/rw", rw::list),
        Route::new(Post, "/v1/rw", rw::create),
        Route::new(Post, "/v1/rw/delete", rw::bulk_delete),
        Route::new(Get, "/v1/rw/{name}", rw::inspect),
        Route::new(Delete, "/v1/rw/{name}", rw::release),
        Route::new(Post, "/v1/rw/{name}/mount", rw::mount),
        Route::new(Post, "/v1/rw/{name}/unmount", rw::unmount),
        Route::new(Get, "/v1/rw/{name}/changes", rw::changes),
        Route::new(Get, "/v1/rw/{name}/tar", rw::tar),
        Route::new(Post, "/v1/rw/{name}/commit", rw::commit),
        Route::new(Get, "/v1/images", images::list),
        Route::new(Post, "/v1/images/load", images::load),
        Route::new(Get, "/v1/images/save", images::save),
        Route::new(Post, "/v1/images/tag", images::tag),
        Route::new(Get, "/v1/images/{reference}", images::inspect),
        Route::new(Delete, "/v1/images/{reference}", images::remove),
        Route::new(Post, "/v1/images/pull", distribution::pull),
        Route::new(Post, "/v1/images/push", distribution::push),
    ]
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for route in routes() {
        // Routes on one path merge into one method router.
        router = router.route(route.path, route.handler);
    }
    router
        .fallback(no_route)
        .method_not_allowed_fallback(bad_method)
        // Consulted by the JSON extractor only; the tar upload takes the raw
        // body, which this limit does not apply to.
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.idempotency.clone(), idempotency::middleware))
        .layer(middleware::from_fn(stream::expect_continue))
        .layer(middleware::from_fn(trace::trace_request))
        .layer(middleware::from_fn_with_state(state.metrics.clone(), metrics::track))
        .with_state(state)
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
