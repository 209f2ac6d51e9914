//! Optional TCP listener (`--listen tcp://ADDR --token-file F`). Every TCP
//! request must carry `Authorization: Bearer <token>`; the unix socket relies
//! on its file mode instead.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

use super::error::ApiError;

/// Bind `tcp://HOST:PORT`.
pub async fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    let Some(addr) = listen.strip_prefix("tcp://") else {
        bail!("invalid --listen {listen:?}: want tcp://HOST:PORT");
    };
    TcpListener::bind(addr).await.with_context(|| format!("listen on {listen}"))
}

/// The token: the file's content without surrounding whitespace.
pub fn read_token(path: &Path) -> anyhow::Result<Arc<str>> {
    let raw = std::fs::read_to_string(path).with_context(|| format!("read token file {}", path.display()))?;
    let token = raw.trim();
    if token.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    if HeaderValue::from_str(token).is_err() || token.contains(char::is_whitespace) {
        bail!("token file {} holds characters a header cannot carry", path.display());
    }
    Ok(Arc::from(token))
}

/// Middleware: answer 401 unless the request carries the bearer token.
pub async fn require_token(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    let given =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if same(given.as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => {
            let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid bearer token").into_response();
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

/// Compare in time independent of where the inputs differ (the length
/// is not secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }

    #[test]
    fn reads_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(&*read_token(&f).unwrap(), "s3cret");
        std::fs::write(&f, "  \n").unwrap();
        assert!(read_token(&f).is_err());
        std::fs::write(&f, "two words").unwrap();
        assert!(read_token(&f).is_err());
    }

    #[tokio::test]
    async fn listen_wants_tcp_urls() {
        assert!(bind("127.0.0.1:0").await.is_err());
        assert!(bind("tcp://127.0.0.1:0").await.is_ok());
    }
}
