//! Routes about the daemon and the store as a whole: `_ping`, `info` and
//! `check`.

use axum::Json;
use axum::extract::State;
use layer::{CheckOpts, CheckReport, StoreInfo};

use super::error::ApiResult;
use super::extract::JsonOrDefault;
use super::routes::AppState;

pub async fn ping() -> &'static str {
    "OK"
}

pub async fn info(State(state): State<AppState>) -> Json<StoreInfo> {
    Json(state.store.info().await)
}

/// `POST /v1/check {"repair", "verify_content"}`; an empty body checks
/// without repairing or reading content.
pub async fn check(
    State(state): State<AppState>,
    JsonOrDefault(opts): JsonOrDefault<CheckOpts>,
) -> ApiResult<Json<CheckReport>> {
    tracing::info!(repair = opts.repair, verify_content = opts.verify_content, "check");
    let store = state.store.clone();
    let report = state.detached(async move { Ok(store.fsck(opts).await?) }).await?;
    let unrepaired = report.problems.iter().filter(|p| !p.repaired).count();
    tracing::info!(problems = report.problems.len(), unrepaired, "check done");
    Ok(Json(report))
}
