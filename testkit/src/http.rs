//! A blocking HTTP/1.1 client over a unix socket, built on hyper: one
//! connection per request, for tests that talk to a daemon directly (input
//! the CLI would never send, headers the CLI hides).

use std::io;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// How long one request may take, answer included.
const LIMIT: Duration = Duration::from_secs(120);

/// A whole answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The status line and the headers, lower case, one per line
    /// (`name: value`): for `contains` assertions.
    pub head: String,
    pub body: Vec<u8>,
}

/// `method path` with `headers` and `body` to the daemon on `socket`;
/// the body is de-chunked. Errors are connection or protocol failures, not
/// HTTP error statuses.
pub fn request(socket: &Path, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Reply> {
    block_on(method, path, async {
        send(tokio::net::UnixStream::connect(socket).await?, method, path, headers, body).await
    })
}

/// [`request`] over TCP to `addr` (`host:port`).
pub fn request_tcp(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Reply> {
    block_on(method, path, async {
        send(tokio::net::TcpStream::connect(addr).await?, method, path, headers, body).await
    })
}

fn block_on(method: &str, path: &str, fut: impl Future<Output = io::Result<Reply>>) -> io::Result<Reply> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        tokio::time::timeout(LIMIT, fut)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("{method} {path}: no answer in {LIMIT:?}")))?
    })
}

async fn send<S>(stream: S, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<Reply>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(other)?;
    let driver = tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path).header("host", "layerd");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).map_err(other)?;
    let res = sender.send_request(req).await.map_err(other)?;
    let mut head = format!("http/1.1 {}", res.status()).to_ascii_lowercase();
    for (k, v) in res.headers() {
        head.push_str(&format!("\r\n{}: {}", k.as_str(), String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase()));
    }
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.map_err(other)?.to_bytes().to_vec();
    drop(sender);
    driver.abort();
    Ok(Reply { status, head, body })
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}
