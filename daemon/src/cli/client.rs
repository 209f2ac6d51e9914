//! A small HTTP/1 client for the daemon's unix socket (or TCP with a bearer
//! token): one connection per
//! request (requests of one `layerctl` run go out concurrently), JSON in and
//! out, tar bodies streamed in both directions.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, EXPECT, HOST, TE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use indicatif::ProgressBar;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Notify;
use tokio_util::io::ReaderStream;

use crate::api::ErrorBody;
use graphdriver::ErrorKind;

/// Where `layerctl` looks for the daemon by default.
pub const DEFAULT_HOST: &str = "unix:///run/layerd/layerd.sock";

pub type ReqBody = UnsyncBoxBody<Bytes, io::Error>;

/// Bytes read per chunk of an upload.
const UPLOAD_CHUNK: usize = 64 * 1024;

/// Why a command failed; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or a host we cannot use (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The daemon could not be reached (exit 3).
    #[error("cannot reach layerd at {host}: {source}")]
    Unreachable { host: String, source: io::Error },
    /// The daemon answered with an error (exit 1); `kind` is the error's
    /// class from the body's `kind` (else read from the status).
    #[error("{message}")]
    Server { status: StatusCode, kind: ErrorKind, message: String },
    /// Anything else: local files, a broken connection, a bad reply (exit 1).
    #[error("{0}")]
    Other(String),
    /// The request was sent and its answer lost (exit 1).
    #[error("{0}")]
    Lost(String),
    /// Stdout is a pipe whose reader went away: stop quietly (exit 0).
    #[error("stdout closed")]
    StdoutClosed,
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Unreachable { .. } => 3,
            CliError::Server { .. } | CliError::Other(_) | CliError::Lost(_) => 1,
            CliError::StdoutClosed => 0,
        }
    }

    pub fn other(context: &str, e: impl std::fmt::Display) -> Self {
        CliError::Other(format!("{context}: {e}"))
    }
}

pub type CliResult<T> = Result<T, CliError>;

/// A handle on one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
}

#[derive(Debug, Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tcp { addr: String, token: String },
}

impl Client {
    /// `unix:///path/to.sock`, or `tcp://HOST:PORT` with a bearer token.
    pub fn from_host(host: &str, token: Option<String>) -> CliResult<Client> {
        if let Some(path) = host.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(CliError::Usage(format!("invalid host {host:?}: want unix:///absolute/path")));
            }
            return Ok(Client { endpoint: Endpoint::Unix(PathBuf::from(path)) });
        }
        if let Some(addr) = host.strip_prefix("tcp://") {
            if addr.is_empty() || addr.contains('/') {
                return Err(CliError::Usage(format!("invalid host {host:?}: want tcp://HOST:PORT")));
            }
            let Some(token) = token else {
                return Err(CliError::Usage(format!(
                    "host {host} needs a token: pass --token-file FILE or set LAYERD_TOKEN"
                )));
            };
            return Ok(Client { endpoint: Endpoint::Tcp { addr: addr.to_owned(), token } });
        }
        Err(CliError::Usage(format!("invalid host {host:?}: want unix:///path/to/layerd.sock or tcp://HOST:PORT")))
    }

    /// The daemon's address, as given.
    pub fn host(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(p) => format!("unix://{}", p.display()),
            Endpoint::Tcp { addr, .. } => format!("tcp://{addr}"),
        }
    }

    async fn connect(&self) -> CliResult<SendRequest<ReqBody>> {
        let unreachable = |source| CliError::Unreachable { host: self.host(), source };
        match &self.endpoint {
            Endpoint::Unix(path) => handshake(UnixStream::connect(path).await.map_err(unreachable)?).await,
            Endpoint::Tcp { addr, .. } => handshake(TcpStream::connect(addr).await.map_err(unreachable)?).await,
        }
    }

    /// Send one request; a non-2xx answer becomes [`CliError::Server`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: ReqBody,
    ) -> CliResult<Response<Incoming>> {
        self.send_keyed(method, path, content_type, body, None).await
    }

    async fn send_keyed(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: ReqBody,
        key: Option<&str>,
    ) -> CliResult<Response<Incoming>> {
        let mut req = self.request(method, path, content_type);
        if let Some(k) = key {
            req = req.header(IDEMPOTENCY_KEY, k);
        }
        let req = req.body(body).map_err(|e| CliError::other("build request", e))?;
        self.dispatch(req).await
    }

    /// A request's head: host, `TE: trailers` (a streamed body that fails
    /// says why in a trailer), content type and, over TCP, the token.
    fn request(&self, method: Method, path: &str, content_type: Option<&str>) -> hyper::http::request::Builder {
        let mut req = Request::builder().method(method).uri(path).header(HOST, "layerd").header(TE, "trailers");
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        if let Endpoint::Tcp { token, .. } = &self.endpoint {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        req
    }

    /// Send `req` on a new connection; a non-2xx answer becomes [`CliError::Server`].
    async fn dispatch(&self, req: Request<ReqBody>) -> CliResult<Response<Incoming>> {
        let mut sender = self.connect().await?;
        let resp = sender.send_request(req).await.map_err(|e| CliError::Lost(format!("request to layerd: {e}")))?;
        if resp.status().is_success() { Ok(resp) } else { Err(server_error(resp).await) }
    }

    /// Send a request whose body is in memory. A `POST` or `DELETE` carries
    /// an `Idempotency-Key`; if its answer is lost (the connection broke
    /// after the request went out), it is sent again with the same key, and
    /// the daemon, which ran it once, answers with the first outcome. A
    /// repeat that finds the first still running (409) asks again a little
    /// later.
    async fn send_retrying(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> CliResult<Response<Incoming>> {
        let key = matches!(method, Method::POST | Method::DELETE).then(idempotency_key);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let body = Full::new(body.clone()).map_err(|never| match never {}).boxed_unsync();
            let res = self.send_keyed(method.clone(), path, content_type, body, key.as_deref()).await;
            let again = key.is_some()
                && attempt < ATTEMPTS
                && match &res {
                    Err(CliError::Lost(_)) => true,
                    Err(CliError::Server { status, kind, message }) => {
                        *status == StatusCode::CONFLICT
                            && *kind == ErrorKind::Conflict
                            && message.contains("is still running")
                    }
                    _ => false,
                };
            if !again {
                return res;
            }
            tracing::debug!(attempt, path, "answer lost; sending the request again with its idempotency key");
            tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
        }
    }

    /// A request without a body, answering JSON.
    pub async fn call<T: DeserializeOwned>(&self, method: Method, path: &str) -> CliResult<T> {
        let resp = self.send_retrying(method, path, None, Bytes::new()).await?;
        read_json(resp).await
    }

    /// A request without a body whose answer (2xx, possibly empty) is ignored.
    pub async fn call_unit(&self, method: Method, path: &str) -> CliResult<()> {
        let resp = self.send_retrying(method, path, None, Bytes::new()).await?;
        resp.into_body().collect().await.map_err(|e| CliError::other("read reply", e))?;
        Ok(())
    }

    /// A request with a JSON body, answering JSON.
    pub async fn call_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> CliResult<T> {
        let bytes = serde_json::to_vec(body).map_err(|e| CliError::other("encode request", e))?;
        let resp = self.send_retrying(method, path, Some("application/json"), Bytes::from(bytes)).await?;
        read_json(resp).await
    }

    /// POST `reader` as a streamed tar body, answering JSON. The request
    /// says `Expect: 100-continue`, and the body goes out only once the
    /// daemon answers `100 Continue` (it does when the store starts reading
    /// it), or after [`EXPECT_TIMEOUT`] without an answer. A final answer
    /// that comes first (a layer already present or registered meanwhile, an
    /// error) ends the request without sending the body.
    pub async fn upload<R, T>(&self, path: &str, reader: R) -> CliResult<T>
    where
        R: AsyncRead + Send + 'static,
        T: DeserializeOwned,
    {
        let gate = Arc::new(ExpectGate::default());
        let body = gated_body(reader, gate.clone());
        let req = self.request(Method::POST, path, Some("application/x-tar")).header(EXPECT, "100-continue");
        let mut req = req.body(body).map_err(|e| CliError::other("build request", e))?;
        let on_continue = gate.clone();
        hyper::ext::on_informational(&mut req, move |res| {
            if res.status() == StatusCode::CONTINUE {
                on_continue.send.notify_one();
            }
        });
        let resp = self.dispatch(req).await;
        // Answered: a body still waiting to start is never sent.
        gate.answered.notify_one();
        read_json(resp?).await
    }

    /// GET a streamed body; the status has been checked, the body not read.
    pub async fn open(&self, path: &str) -> CliResult<Response<Incoming>> {
        self.send(Method::GET, path, None, empty()).await
    }
}

/// How long an upload waits for `100 Continue` before it sends the body
/// anyway, for a server or proxy that ignores `Expect` (curl waits as long).
pub const EXPECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The two events an upload's body waits for.
#[derive(Default)]
struct ExpectGate {
    /// `100 Continue` arrived: send.
    send: Notify,
    /// The final answer arrived.
    answered: Notify,
}

/// `reader` as a request body that starts once `gate` says send (or after
/// [`EXPECT_TIMEOUT`]), and ends with an error, sending nothing, if the
/// answer comes first: hyper then closes the connection.
fn gated_body<R: AsyncRead + Send + 'static>(reader: R, gate: Arc<ExpectGate>) -> ReqBody {
    let wait = async move {
        tokio::select! {
            () = gate.send.notified() => Ok(()),
            () = tokio::time::sleep(EXPECT_TIMEOUT) => {
                tracing::debug!("no 100 Continue within {EXPECT_TIMEOUT:?}; sending the body anyway");
                Ok(())
            }
            () = gate.answered.notified() => Err(io::Error::other("answered before the body was sent")),
        }
    };
    let start = futures_util::stream::once(wait).try_filter_map(|()| async { Ok::<Option<Bytes>, io::Error>(None) });
    let stream = start.chain(ReaderStream::with_capacity(reader, UPLOAD_CHUNK)).map_ok(Frame::data);
    BodyExt::boxed_unsync(StreamBody::new(stream))
}

/// Copy a streamed body into `out`, advancing `progress`. Fails if the body
/// breaks off, which is how the daemon reports an error after the head was
/// sent.
pub async fn copy_body<W: AsyncWrite + Unpin>(
    resp: Response<Incoming>,
    out: &mut W,
    progress: &ProgressBar,
) -> CliResult<u64> {
    let write_err = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::BrokenPipe => CliError::StdoutClosed,
        _ => CliError::other("write output", e),
    };
    let mut body = resp.into_body();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            CliError::other(
                "transfer broke off (the daemon's log says why; `layerctl check --verify` checks every layer)",
                e,
            )
        })?;
        match frame.into_data() {
            Ok(data) => {
                out.write_all(&data).await.map_err(write_err)?;
                total += data.len() as u64;
                progress.inc(data.len() as u64);
            }
            Err(frame) => {
                // The daemon names a failure after the head in a trailer.
                if let Some(why) = frame.trailers_ref().and_then(|t| t.get(crate::api::ERROR_TRAILER)) {
                    let why = String::from_utf8_lossy(why.as_bytes()).into_owned();
                    return Err(CliError::Other(format!("export failed after {total} bytes: {why}")));
                }
            }
        }
    }
    out.flush().await.map_err(write_err)?;
    Ok(total)
}

async fn handshake<S>(stream: S) -> CliResult<SendRequest<ReqBody>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| CliError::other("connect to layerd", e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
    Ok(sender)
}

/// The header that makes a retry safe (see the daemon's `idempotency`).
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Tries of a request whose answer may be lost (see `send_retrying`).
const ATTEMPTS: u32 = 5;

/// A key no other request uses: this process, this moment, a counter.
fn idempotency_key() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("layerctl-{}-{nanos:x}-{n}", std::process::id())
}

pub fn empty() -> ReqBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

async fn read_json<T: DeserializeOwned>(resp: Response<Incoming>) -> CliResult<T> {
    let bytes = resp.into_body().collect().await.map_err(|e| CliError::other("read reply", e))?.to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| CliError::other("unexpected reply from layerd", e))
}

async fn server_error(resp: Response<Incoming>) -> CliError {
    let status = resp.status();
    let (message, kind) = match resp.into_body().collect().await {
        Ok(body) => match serde_json::from_slice::<ErrorBody>(&body.to_bytes()) {
            Ok(e) => (e.message, e.kind.as_deref().and_then(crate::api::parse_kind)),
            Err(_) => (format!("layerd answered {status}"), None),
        },
        Err(e) => (format!("layerd answered {status} ({e})"), None),
    };
    let kind = kind.unwrap_or(match status.as_u16() {
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        501 => ErrorKind::Unsupported,
        400..=499 => ErrorKind::InvalidArgument,
        _ => ErrorKind::Internal,
    });
    CliError::Server { status, kind, message }
}

/// Percent-encode a path segment or query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let c = Client::from_host("unix:///run/x.sock", None).unwrap();
        assert_eq!(c.host(), "unix:///run/x.sock");
        let c = Client::from_host("tcp://127.0.0.1:2375", Some("t".into())).unwrap();
        assert_eq!(c.host(), "tcp://127.0.0.1:2375");
        let e = Client::from_host("tcp://127.0.0.1:2375", None).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("needs a token"), "{e}");
        for bad in ["unix://rel.sock", "/run/x.sock", "tcp://", "http://x"] {
            assert_eq!(Client::from_host(bad, None).unwrap_err().exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn idempotency_keys_are_unique_and_valid_header_values() {
        let (a, b) = (idempotency_key(), idempotency_key());
        assert_ne!(a, b);
        assert!(a.len() <= 255 && a.bytes().all(|c| c.is_ascii_graphic()), "{a}");
    }

    #[test]
    fn encodes_reserved_characters() {
        assert_eq!(encode("sha256:abc"), "sha256:abc");
        assert_eq!(encode("a b/c?d&e%"), "a%20b%2Fc%3Fd%26e%25");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[tokio::test]
    async fn an_absent_daemon_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let client = Client::from_host(&format!("unix://{}", sock.display()), None).unwrap();
        let e = client.call::<serde_json::Value>(Method::GET, "/v1/_ping").await.unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().contains(&sock.display().to_string()), "{e}");
    }
}
