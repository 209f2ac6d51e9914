//! Tar bodies in both directions, never buffered whole.
//!
//! - Upload: a task forwards the request body through a bounded channel to
//!   the store's blocking [`TarReader`], which the store reads on tokio's
//!   blocking pool. A body that sends nothing for the idle timeout fails
//!   the read ("request body idle"), so a stalled client can't hold a
//!   registration — or the duplicate-suppressed registrations waiting on
//!   it, which then take over — for longer than that. At most
//!   [`MAX_UPLOADS`] run at once; past that, 503.
//!   With `Expect: 100-continue` the body is not touched before the store's
//!   first read: a registration that finds its layer present, or joins one
//!   in flight, never reads it.
//! - Every request body is wrapped in [`DrainOnDrop`]: a handler that answers
//!   without reading the whole body (bad parent, hostile tar, JSON over the
//!   limit) leaves the rest to be read and discarded, up to [`DRAIN_LIMIT`],
//!   so the client can finish sending and read the error. Without it the
//!   connection is closed with unread data and the client sees a reset
//!   instead of the answer.
//! - `Expect: 100-continue`: hyper sends `100 Continue` when the body is
//!   first polled, so a body nobody polls is never asked for. A request
//!   answered with its body unpolled (a duplicate upload, a 4xx) is
//!   answered with `Connection: close` and no `100 Continue`; its body is
//!   kept (see [`expect_continue`]) until the response head is written and
//!   only then drained, so a client that sends the body anyway still reads
//!   the answer, and one that waits sends nothing.
//! - Download: blocking hops read the store's [`TarReader`] a few chunks at
//!   a time, and an async task sends them through a bounded channel into the
//!   response body, so a client that stops reading holds no blocking
//!   thread; one that takes nothing for the idle timeout is dropped (the
//!   reader, and any key it holds, with it). A read error is
//!   sent as a body error, which makes hyper abort the response (no final
//!   chunk), so a client never mistakes a failed export for a short tar. A
//!   client that accepts trailers (`TE: trailers`) gets the reason instead,
//!   in the [`ERROR_TRAILER`] trailer.

use std::io::{self, Read};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use graphdriver::TarReader;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::api::ERROR_TRAILER;

use super::metrics::ByteCounter;

/// Bytes read per chunk of a streamed tar.
const CHUNK: usize = 64 * 1024;
/// Chunks buffered between the reading thread and the connection.
const CHANNEL_DEPTH: usize = 8;

/// How long a tar body may stall, unless `--idle-timeout` says otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Uploads that may run at once.
pub const MAX_UPLOADS: usize = 1024;

/// Bytes of a request body still read and discarded after the handler gave
/// up on it.
pub const DRAIN_LIMIT: u64 = 256 << 20;

/// How long a body being drained may send nothing before it is dropped (a
/// client that was answered early and neither sends nor closes).
pub const DRAIN_IDLE: Duration = Duration::from_secs(10);

/// The request body as a blocking reader. Must be created inside the runtime
/// and read outside of it (on the blocking pool), as the store does. With
/// `lazy` (the client sent `Expect: 100-continue`) the body is first polled
/// on the reader's first read, so the client is asked for it only then, and
/// a reader dropped unread leaves it untouched; without, it is read from
/// the start (a client that sends at once is watched for stalls at once).
/// Every byte received is counted in `received`; a body that sends nothing
/// for `idle` fails with `TimedOut`. `permit` (an upload slot) is held until
/// the body is done.
pub fn body_reader(
    body: Body,
    received: ByteCounter,
    idle: Duration,
    permit: tokio::sync::OwnedSemaphorePermit,
    lazy: bool,
) -> TarReader {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
    let chunks: ChunkStream =
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }));
    let pump = BodyPump { body, tx, received, idle, permit, rt: tokio::runtime::Handle::current() };
    let pump = if lazy {
        Some(pump)
    } else {
        pump.start();
        None
    };
    Box::new(LazyBody { pump, bridge: SyncIoBridge::new(StreamReader::new(chunks)) })
}

type ChunkStream = Pin<Box<dyn futures_util::Stream<Item = io::Result<Bytes>> + Send>>;

/// What forwards a request body into a [`LazyBody`], once started.
struct BodyPump {
    body: Body,
    tx: mpsc::Sender<io::Result<Bytes>>,
    received: ByteCounter,
    idle: Duration,
    permit: tokio::sync::OwnedSemaphorePermit,
    rt: tokio::runtime::Handle,
}

impl BodyPump {
    fn start(self) {
        let rt = self.rt.clone();
        rt.spawn(self.run());
    }

    async fn run(self) {
        let BodyPump { body, tx, received, idle, permit, rt: _ } = self;
        let _permit = permit;
        let mut stream = body.into_data_stream();
        loop {
            let item = match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => return,
                Err(_) => {
                    let msg = format!("request body idle for {}s; giving up", idle.as_secs());
                    tracing::info!("{msg}");
                    let _ = tx.send(Err(io::Error::new(io::ErrorKind::TimedOut, msg))).await;
                    return;
                }
            };
            if let Ok(chunk) = &item {
                received.inc_by(chunk.len() as u64);
            }
            if tx.send(item.map_err(io::Error::other)).await.is_err() {
                // The store stopped reading; dropping the body drains it.
                return;
            }
        }
    }
}

/// A blocking reader of a request body that starts forwarding it on the
/// first read.
struct LazyBody {
    pump: Option<BodyPump>,
    bridge: SyncIoBridge<StreamReader<ChunkStream, Bytes>>,
}

impl Read for LazyBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(pump) = self.pump.take() {
            pump.start();
        }
        self.bridge.read(buf)
    }
}

/// Whether a request asks for `100 Continue` before it sends its body.
pub fn expects_continue(headers: &header::HeaderMap) -> bool {
    headers.get_all(header::EXPECT).iter().any(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// An unpolled request body parked by [`DrainOnDrop`] for [`expect_continue`].
type Parked = Arc<Mutex<Option<Body>>>;

/// A body kept in the response's extensions: hyper drops them while it
/// writes the response head, and only then is the body drained.
#[derive(Clone)]
struct DrainAfterHead {
    _body: Arc<Mutex<Option<DrainOnDrop>>>,
}

/// Middleware: wrap the request body in [`DrainOnDrop`], and answer an
/// `Expect: 100-continue` request whose body the handler never polled
/// without asking for the body.
///
/// hyper sends `100 Continue` when the body is first polled while no
/// response has been written. A handler that answers without polling it (a
/// duplicate upload answered from the store, a 4xx) drops it unpolled: it is
/// parked here, the response gets `Connection: close` (the client, which
/// sent no body, must not reuse the connection) and carries the body in its
/// extensions until hyper has written the head; then the body is drained, so
/// a client that sent it anyway (after its own wait ran out) still reads the
/// answer, while one that waits sends nothing and closes.
pub async fn expect_continue(req: Request, next: Next) -> Response {
    let parked: Option<Parked> = expects_continue(req.headers()).then(Parked::default);
    let park = parked.clone();
    let req = req.map(|body| Body::new(DrainOnDrop { inner: Some(body), finished: false, polled: false, park }));
    let mut resp = next.run(req).await;
    let unread = parked.and_then(|p| p.lock().unwrap_or_else(PoisonError::into_inner).take());
    if let Some(body) = unread {
        tracing::debug!(status = %resp.status(), "answered without reading the body; no 100 Continue");
        resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        let held = DrainOnDrop { inner: Some(body), finished: false, polled: true, park: None };
        resp.extensions_mut().insert(DrainAfterHead { _body: Arc::new(Mutex::new(Some(held))) });
    }
    resp
}

/// A request body that, dropped before its end, is read to its end (at most
/// [`DRAIN_LIMIT`] more bytes, each chunk within [`DRAIN_IDLE`]) by a
/// background task; or, never polled and `park` set, handed back to
/// [`expect_continue`] instead.
pub struct DrainOnDrop {
    inner: Option<Body>,
    finished: bool,
    polled: bool,
    park: Option<Parked>,
}

impl HttpBody for DrainOnDrop {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.polled = true;
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.finished = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(HttpBody::size_hint).unwrap_or_default()
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else { return };
        if self.finished || body.is_end_stream() {
            return;
        }
        if !self.polled
            && let Some(park) = self.park.take()
        {
            *park.lock().unwrap_or_else(PoisonError::into_inner) = Some(body);
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut stream = body.into_data_stream();
                let mut drained = 0u64;
                while let Ok(Some(Ok(chunk))) = tokio::time::timeout(DRAIN_IDLE, stream.next()).await {
                    drained += chunk.len() as u64;
                    if drained > DRAIN_LIMIT {
                        tracing::debug!("stopped draining an abandoned request body");
                        return;
                    }
                }
            });
        }
    }
}

/// A `200 application/x-tar` response streaming `reader`; every byte sent
/// is counted in `sent`. With `trailers` (the client sent `TE: trailers`)
/// a failure ends the body with an [`ERROR_TRAILER`] saying why; without,
/// it aborts the body. A client that takes nothing for `idle` is dropped.
pub fn tar_response(reader: TarReader, sent: ByteCounter, idle: Duration, trailers: bool) -> Response {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHANNEL_DEPTH);
    tokio::spawn(pump(reader, tx, sent, idle));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let frames = stream.map(move |item| match item {
        Ok(data) => Ok(Frame::data(data)),
        Err(e) if trailers => Ok(Frame::trailers(error_trailer(&e))),
        Err(e) => Err(e),
    });
    let body = Body::new(http_body_util::StreamBody::new(frames));
    let mut resp = ([(header::CONTENT_TYPE, "application/x-tar")], body).into_response();
    if trailers {
        resp.headers_mut().insert(header::TRAILER, header::HeaderValue::from_static(ERROR_TRAILER));
    }
    resp
}

/// `layerd-error: <why>`, the message (UTF-8) made a valid header value.
fn error_trailer(e: &io::Error) -> header::HeaderMap {
    // UTF-8 passes as obs-text bytes; control characters become spaces.
    let why: String = e.to_string().chars().map(|c| if c.is_control() { ' ' } else { c }).take(2048).collect();
    let mut map = header::HeaderMap::new();
    if let Ok(v) = header::HeaderValue::from_bytes(why.as_bytes()) {
        map.insert(ERROR_TRAILER, v);
    }
    map
}

/// What one blocking hop read: chunks, then the end or an error.
struct Hop {
    reader: TarReader,
    chunks: Vec<Bytes>,
    end: Option<io::Result<()>>,
}

/// Read up to `n` chunks (fewer if the reader ends or fails).
fn read_hop(mut reader: TarReader, n: usize) -> Hop {
    let mut chunks = Vec::with_capacity(n);
    while chunks.len() < n {
        let mut buf = BytesMut::zeroed(CHUNK);
        match reader.read(&mut buf) {
            Ok(0) => return Hop { reader, chunks, end: Some(Ok(())) },
            Ok(k) => {
                buf.truncate(k);
                chunks.push(buf.freeze());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Hop { reader, chunks, end: Some(Err(e)) },
        }
    }
    Hop { reader, chunks, end: None }
}

/// Read `reader` to its end into `tx`, a hop of as many chunks as the
/// channel has room for at a time; stops when the receiver is gone (the
/// client hung up) or takes nothing for `idle`. A read error is logged and
/// forwarded.
async fn pump(mut reader: TarReader, tx: mpsc::Sender<io::Result<Bytes>>, sent: ByteCounter, idle: Duration) {
    loop {
        // Wait (without a thread) until the client has taken something.
        let permit = match tokio::time::timeout(idle, tx.reserve()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => {
                tracing::debug!("client went away during a tar download");
                return;
            }
            Err(_) => {
                tracing::info!(idle_secs = idle.as_secs(), "tar download client idle; giving up");
                return;
            }
        };
        let room = tx.capacity() + 1;
        drop(permit);
        let hop = match tokio::task::spawn_blocking(move || read_hop(reader, room)).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "tar stream task failed");
                return;
            }
        };
        reader = hop.reader;
        for chunk in hop.chunks {
            let n = chunk.len() as u64;
            // `room` slots were free; a slow client only shrinks them by reading less.
            match tokio::time::timeout(idle, tx.send(Ok(chunk))).await {
                Ok(Ok(())) => {
                    sent.inc_by(n);
                }
                _ => return,
            }
        }
        match hop.end {
            None => {}
            Some(Ok(())) => return,
            Some(Err(e)) => {
                tracing::error!(error = %e, "tar stream failed; ending the response with the reason");
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// Yields `good` bytes, then fails.
    struct Failing {
        good: Vec<u8>,
        pos: usize,
    }

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.good.len() {
                return Err(io::Error::other("checksum mismatch — re-import"));
            }
            let n = buf.len().min(self.good.len() - self.pos);
            buf[..n].copy_from_slice(&self.good[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn permit() -> tokio::sync::OwnedSemaphorePermit {
        std::sync::Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().unwrap()
    }

    #[tokio::test]
    async fn an_idle_body_fails_the_read() {
        let stalled = futures_util::stream::pending::<io::Result<Bytes>>();
        let mut reader = body_reader(
            Body::from_stream(futures_util::stream::iter([Ok(Bytes::from_static(b"abc"))]).chain(stalled)),
            ByteCounter::default(),
            Duration::from_millis(50),
            permit(),
            false,
        );
        let err = tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            reader.read_to_end(&mut v).unwrap_err()
        })
        .await
        .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("idle"), "{err}");
    }

    #[tokio::test]
    async fn a_whole_stream_arrives_intact() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = ByteCounter::default();
        let resp = tar_response(Box::new(io::Cursor::new(data.clone())), sent.clone(), DEFAULT_IDLE_TIMEOUT, true);
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got.as_ref(), data.as_slice());
        assert_eq!(sent.get(), data.len() as u64);
    }

    #[tokio::test]
    async fn a_failing_stream_errors_the_body() {
        let resp = tar_response(
            Box::new(Failing { good: vec![7; 100_000], pos: 0 }),
            ByteCounter::default(),
            DEFAULT_IDLE_TIMEOUT,
            false,
        );
        assert!(resp.into_body().collect().await.is_err());
    }

    #[tokio::test]
    async fn a_failing_stream_says_why_in_a_trailer_to_who_asks() {
        let resp = tar_response(
            Box::new(Failing { good: vec![7; 100_000], pos: 0 }),
            ByteCounter::default(),
            DEFAULT_IDLE_TIMEOUT,
            true,
        );
        assert_eq!(resp.headers()[header::TRAILER], ERROR_TRAILER);
        let got = resp.into_body().collect().await.unwrap();
        let trailers = got.trailers().cloned().unwrap();
        assert_eq!(trailers[ERROR_TRAILER].as_bytes(), "checksum mismatch — re-import".as_bytes());
        assert_eq!(got.to_bytes().len(), 100_000);
    }

    #[tokio::test]
    async fn a_body_error_reaches_the_reader() {
        let chunks: Vec<io::Result<Bytes>> = vec![Ok(Bytes::from_static(b"abc")), Err(io::Error::other("reset"))];
        let mut reader = body_reader(
            Body::from_stream(futures_util::stream::iter(chunks)),
            ByteCounter::default(),
            DEFAULT_IDLE_TIMEOUT,
            permit(),
            false,
        );
        let got = tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            reader.read_to_end(&mut v)
        })
        .await
        .unwrap();
        assert!(got.is_err());
    }

    /// A body that records whether anyone polled it.
    fn watched_body(polled: &Arc<std::sync::atomic::AtomicBool>) -> Body {
        let polled = polled.clone();
        Body::from_stream(futures_util::stream::poll_fn(move |_| {
            polled.store(true, std::sync::atomic::Ordering::SeqCst);
            Poll::Ready(None::<io::Result<Bytes>>)
        }))
    }

    #[tokio::test]
    async fn a_reader_dropped_unread_never_polls_the_body() {
        let polled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let received = ByteCounter::default();
        let reader = body_reader(watched_body(&polled), received.clone(), DEFAULT_IDLE_TIMEOUT, permit(), true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(reader);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!polled.load(std::sync::atomic::Ordering::SeqCst), "the body was polled");
        // The same body is polled as soon as the reader is read.
        let mut reader = body_reader(watched_body(&polled), received, DEFAULT_IDLE_TIMEOUT, permit(), true);
        let n = tokio::task::spawn_blocking(move || reader.read(&mut [0u8; 8])).await.unwrap().unwrap();
        assert_eq!(n, 0);
        assert!(polled.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn expect_headers_are_recognised() {
        let mut h = header::HeaderMap::new();
        assert!(!expects_continue(&h));
        h.insert(header::EXPECT, header::HeaderValue::from_static("100-Continue"));
        assert!(expects_continue(&h));
    }

    #[tokio::test]
    async fn the_request_body_is_readable_from_a_blocking_thread() {
        let chunks: Vec<io::Result<Bytes>> =
            vec![Ok(Bytes::from_static(b"abc")), Ok(Bytes::new()), Ok(Bytes::from_static(b"defgh"))];
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let received = ByteCounter::default();
        let mut reader = body_reader(body, received.clone(), DEFAULT_IDLE_TIMEOUT, permit(), false);
        let got = tokio::task::spawn_blocking(move || {
            let mut small = [0u8; 2];
            let n = reader.read(&mut small).unwrap();
            let mut s = String::from_utf8(small[..n].to_vec()).unwrap();
            reader.read_to_string(&mut s).map(|_| s)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got, "abcdefgh");
        assert_eq!(received.get(), 8);
    }
}
