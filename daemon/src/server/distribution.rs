//! `POST /v1/images/pull` and `POST /v1/images/push`: images to and from
//! OCI registries (the `registry` crate does the protocol).
//!
//! The manifest and config are fetched (or the local image looked up)
//! before the answer starts, so a bad name, a missing tag or a refused
//! login gets its own status and `{message, kind}` body. Then the answer
//! is `200` with `application/x-ndjson`: one [`registry::Progress`] object
//! per line while layers move, and a last line that is either
//! `{"result": ...}` or `{"error": {"message", "kind"}}`.
//!
//! The work runs as a tracked task: a client that hangs up does not stop a
//! pull half-way (the image is recorded all the same) and shutdown waits.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream;
use graphdriver::ErrorKind;
use images::{ImageStore, ManifestBlob, NewImage};
use layer::{ChainId, DiffId};
use registry::{Platform, Progress, PushImage, Registry, RegistryError, Reporter, reference};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::error::{ApiError, ApiResult, status_of};
use super::extract::ApiJson;
use super::routes::AppState;
use crate::api::{ErrorBody, PullRequest, PullResult, PushRequest, PushResult};

/// The content type of a progress stream.
pub const NDJSON: &str = "application/x-ndjson";

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        // A registry's words name no path on this host: clients see them,
        // 5xx included. The store's own errors keep the usual rule.
        match e {
            RegistryError::Store(e) => e.into(),
            RegistryError::Internal(_) => ApiError::internal(e.to_string()),
            e => ApiError::exposed(status_of(e.kind()), e.kind(), e.to_string()),
        }
    }
}

fn parse_ref(s: &str) -> ApiResult<reference::Reference> {
    Ok(reference::parse(s)?)
}

pub async fn pull(State(state): State<AppState>, ApiJson(req): ApiJson<PullRequest>) -> ApiResult<Response> {
    let r = parse_ref(&req.reference)?;
    let platform = req.platform.as_deref().filter(|p| !p.is_empty()).map(Platform::parse).transpose()?;
    let reg = registry_of(&state)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let reporter = Reporter::new(tx);
    let (r2, rep2) = (r.clone(), reporter.clone());
    let resolved = state.detached(async move { Ok(reg.resolve(&r2, platform.as_ref(), &rep2).await?) }).await?;
    let (reg, images) = (registry_of(&state)?, state.images.clone());
    let (done_tx, done_rx) = oneshot::channel();
    state.tasks.spawn(async move {
        let res = pull_and_record(&reg, &images, resolved, &r, &reporter).await;
        drop(reporter);
        let _ = done_tx.send(res.map(|v| serde_json::json!({ "result": v })));
    });
    Ok(progress_response(rx, done_rx))
}

async fn pull_and_record(
    reg: &Registry,
    images: &ImageStore,
    resolved: registry::Resolved,
    r: &reference::Reference,
    progress: &Reporter,
) -> ApiResult<PullResult> {
    let pulled = reg.pull_layers(resolved, progress).await?;
    let res = &pulled.resolved;
    let digest_str = res.index_digest.as_ref().unwrap_or(&res.manifest_digest);
    let new = NewImage {
        config: res.config.clone(),
        manifest: Some(ManifestBlob { media_type: res.manifest_media_type.clone(), bytes: res.manifest.clone() }),
        registry_digest: layer::Digest::parse(digest_str).ok(),
    };
    let recorded = images.put(new, std::slice::from_ref(r)).await;
    // The image took its own reference; drop the pull's.
    if let Some(top) = &pulled.top_layer {
        let _ = reg.store().unlease(top).await;
    }
    let image = recorded?;
    progress.status("image", format!("Digest: {digest_str}"));
    Ok(PullResult { image, digest: digest_str.clone() })
}

pub async fn push(State(state): State<AppState>, ApiJson(req): ApiJson<PushRequest>) -> ApiResult<Response> {
    let r = parse_ref(&req.reference)?;
    let image = state.images.get(&req.reference)?;
    let config = state.images.config(&image.id).await?;
    let top = top_layer(&config)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let reporter = Reporter::new(tx);
    let reg = registry_of(&state)?;
    let (done_tx, done_rx) = oneshot::channel();
    state.tasks.spawn(async move {
        let res = reg.push(&r, &PushImage { config, top_layer: top }, &reporter).await;
        drop(reporter);
        let res = res
            .map(|p| serde_json::json!({ "result": PushResult { digest: p.digest, size: p.size } }))
            .map_err(ApiError::from);
        let _ = done_tx.send(res);
    });
    Ok(progress_response(rx, done_rx))
}

/// The top layer named by a config's `rootfs.diff_ids`.
fn top_layer(config: &[u8]) -> ApiResult<Option<ChainId>> {
    #[derive(serde::Deserialize)]
    struct C {
        rootfs: R,
    }
    #[derive(serde::Deserialize)]
    struct R {
        diff_ids: Vec<String>,
    }
    let c: C = serde_json::from_slice(config).map_err(|e| ApiError::internal(format!("stored config: {e}")))?;
    let diffs = c.rootfs.diff_ids.iter().map(|d| DiffId::parse(d)).collect::<Result<Vec<_>, _>>()?;
    Ok(ChainId::of_stack(&diffs))
}

/// Lines of progress, then the outcome.
fn progress_response(
    rx: mpsc::UnboundedReceiver<Progress>,
    done: oneshot::Receiver<ApiResult<serde_json::Value>>,
) -> Response {
    enum St {
        Progress(mpsc::UnboundedReceiver<Progress>, oneshot::Receiver<ApiResult<serde_json::Value>>),
        Done,
    }
    let lines = stream::unfold(St::Progress(rx, done), |st| async move {
        match st {
            St::Done => None,
            St::Progress(mut rx, done) => match rx.recv().await {
                Some(p) => Some((Ok::<_, std::io::Error>(line(&p)), St::Progress(rx, done))),
                None => {
                    let last = match done.await {
                        Ok(Ok(v)) => line(&v),
                        Ok(Err(e)) => error_line(&e),
                        Err(_) => error_line(&ApiError::internal("the task ended without an outcome")),
                    };
                    Some((Ok(last), St::Done))
                }
            },
        }
    });
    let mut resp = Response::new(Body::from_stream(lines));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(NDJSON));
    resp
}

fn line<T: Serialize>(v: &T) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn error_line(e: &ApiError) -> Bytes {
    e.log();
    let body = ErrorBody { message: e.public_message().to_owned(), kind: Some(e.kind().as_str().to_owned()) };
    line(&serde_json::json!({ "error": body }))
}

/// The registry client the daemon shares across requests.
pub fn registry_for(
    store: &layer::Store,
    insecure: &[String],
    credentials: Option<&std::path::Path>,
) -> anyhow::Result<Arc<Registry>> {
    let path = credentials.map(std::path::Path::to_path_buf).or_else(registry::Credentials::default_path);
    let credentials = match path {
        Some(p) => registry::Credentials::load(&p)?,
        None => registry::Credentials::none(),
    };
    let client = registry::Client::new(registry::ClientOptions { insecure: insecure.to_vec(), credentials })?;
    // Beside the layerdb, as Docker keeps `image/<driver>/distribution`.
    let state_dir = store.layerdb().parent().map(|p| p.join("distribution"));
    Ok(Arc::new(Registry::new(client, store.clone(), state_dir)))
}

fn registry_of(state: &AppState) -> ApiResult<Arc<Registry>> {
    state.registry.clone().ok_or_else(|| {
        ApiError::exposed(StatusCode::NOT_IMPLEMENTED, ErrorKind::Unsupported, "this server has no registry client")
    })
}
