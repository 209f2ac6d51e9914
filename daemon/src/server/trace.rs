//! Logging: the subscriber set-up and a span per request.

use std::io::IsTerminal;
use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

/// Log to stderr at `level` (an env-filter directive such as `info` or
/// `daemon=debug,layer=trace`).
pub fn init(level: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(level).map_err(|e| anyhow::anyhow!("invalid --log-level {level:?}: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| anyhow::anyhow!("set up logging: {e}"))
}

/// A span per request with its method and path; one line when the response
/// head is ready with its status and duration (a streamed body may go on).
pub async fn trace_request(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path());
    let resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    let duration = start.elapsed();
    span.in_scope(|| tracing::info!(status, ?duration, "request"));
    resp
}
