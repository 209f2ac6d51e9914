//! Any v1 graphdriver plugin as a [`Driver`].
//!
//! - One HTTP/1 connection per call, so calls for different ids never queue
//!   behind each other (dockerd pools connections; a pool would only add a
//!   shared queue).
//! - Connecting retries with exponential backoff until
//!   [`ClientOptions::connect_timeout`] (a plugin being restarted comes back);
//!   a request that reached the plugin is never re-sent.
//! - Every JSON call is bounded by [`ClientOptions::call_timeout`]; tar
//!   streams (`Diff`, `ApplyDiff`) by the same time without progress.
//! - Error replies keep their class ([`crate::wire::decode_error`]).

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use graphdriver::{CacheId, Capabilities, Change, CreateOpts, Driver, DriverError, Result, TarReader};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ACCEPT, HOST};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tracing::{debug, warn};

use crate::discovery::{self, Addr, Dirs};
use crate::wire::{self, GoObject, InitRequest, LayerRequest};

type ReqBody = UnsyncBoxBody<Bytes, io::Error>;

/// Bytes per chunk of an `ApplyDiff` upload.
const CHUNK: usize = 256 * 1024;

/// How the client connects and how long it waits.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Keep retrying a refused or missing socket this long (dockerd: 30 s).
    pub connect_timeout: Duration,
    /// Longest wait for a JSON call's answer, and for progress on a stream.
    pub call_timeout: Duration,
    /// `--storage-opt`s passed to the plugin's `Init`.
    pub opts: Vec<String>,
    /// Where discovery looks.
    pub dirs: Dirs,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(300),
            opts: Vec::new(),
            dirs: Dirs::default(),
        }
    }
}

/// A graphdriver plugin, used as a driver.
pub struct PluginDriver {
    name: String,
    addr: Addr,
    opts: ClientOptions,
    warned_no_ids: AtomicBool,
}

impl std::fmt::Debug for PluginDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginDriver").field("name", &self.name).field("addr", &self.addr).finish()
    }
}

impl PluginDriver {
    /// Discover plugin `name`, activate it and initialise it with `home`
    /// (dockerd's choice is `<data-root>/<name>`).
    pub async fn connect(name: &str, home: &Path, opts: ClientOptions) -> Result<Arc<PluginDriver>> {
        let addr = discovery::discover(name, &opts.dirs)?;
        PluginDriver::connect_addr(name, addr, home, opts).await
    }

    /// Use the plugin at `addr` under the name `name`.
    pub async fn connect_addr(name: &str, addr: Addr, home: &Path, opts: ClientOptions) -> Result<Arc<PluginDriver>> {
        let d = PluginDriver { name: name.to_string(), addr, opts, warned_no_ids: AtomicBool::new(false) };
        let o = d.call("Plugin.Activate", Vec::new(), "").await?;
        let implements = o.strings("Implements").map_err(|e| d.bad_reply("Plugin.Activate", e))?;
        if !implements.iter().any(|i| i == wire::GRAPH_DRIVER) {
            return Err(DriverError::Unsupported {
                driver: d.name.clone(),
                why: format!("plugin at {} implements {implements:?}, not {}", d.addr, wire::GRAPH_DRIVER),
            });
        }
        let home = home.to_str().ok_or_else(|| DriverError::InvalidArgument(format!("home {home:?} is not UTF-8")))?;
        let init = InitRequest { home: home.to_string(), opts: d.opts.opts.clone(), ..Default::default() };
        d.call("GraphDriver.Init", init.encode(), "").await?;
        Ok(Arc::new(d))
    }

    /// The plugin's address.
    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    fn bad_reply(&self, method: &str, e: impl std::fmt::Display) -> DriverError {
        DriverError::Other(format!("plugin {} sent a malformed {method} reply: {e}", self.name))
    }

    /// Connect, retrying a plugin that is not (yet) listening.
    async fn connect_once(&self) -> Result<SendRequest<ReqBody>> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let attempt = match &self.addr {
                Addr::Unix(p) => UnixStream::connect(p).await.map(Conn::Unix),
                Addr::Tcp(a) => TcpStream::connect(a.as_str()).await.map(Conn::Tcp),
            };
            match attempt {
                Ok(conn) => {
                    let h = match conn {
                        Conn::Unix(s) => handshake(s).await,
                        Conn::Tcp(s) => handshake(s).await,
                    };
                    return h.map_err(|e| DriverError::Other(format!("plugin {}: handshake: {e}", self.name)));
                }
                Err(e) if start.elapsed() + pause < self.opts.connect_timeout && retryable(&e) => {
                    debug!(plugin = %self.name, addr = %self.addr, error = %e, ?pause, "plugin not reachable; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    return Err(DriverError::Unsupported {
                        driver: self.name.clone(),
                        why: format!("cannot reach the plugin at {}: {e}", self.addr),
                    });
                }
            }
        }
    }

    /// Send one request; a non-200 answer becomes a typed error.
    async fn send(&self, method: &str, query: &str, body: ReqBody, id: &str) -> Result<Response<Incoming>> {
        let mut sender = self.connect_once().await?;
        let uri = if query.is_empty() { format!("/{method}") } else { format!("/{method}?{query}") };
        let req = Request::post(uri)
            .header(HOST, "plugin")
            .header(ACCEPT, wire::MEDIA_TYPE)
            .body(body)
            .map_err(|e| DriverError::Other(format!("build {method} request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| DriverError::Other(format!("plugin {}: {method}: {e}", self.name)))?;
        if resp.status().as_u16() == 200 {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = read_limited(resp.into_body(), wire::MAX_ERR as u64 * 4).await.unwrap_or_default();
        Err(wire::decode_error(status, &body, method, id))
    }

    /// A JSON call, bounded in time. A 200 answer carrying `Err` is an error.
    async fn call(&self, method: &str, body: Vec<u8>, id: &str) -> Result<GoObject> {
        let work = async {
            let body = Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync();
            let resp = self.send(method, "", body, id).await?;
            let bytes = read_limited(resp.into_body(), wire::MAX_REPLY as u64)
                .await
                .map_err(|e| DriverError::Other(format!("plugin {}: {method}: {e}", self.name)))?;
            let o = GoObject::parse(&bytes).map_err(|e| self.bad_reply(method, e))?;
            match o.string("Err").map_err(|e| self.bad_reply(method, e))? {
                err if err.is_empty() => Ok(o),
                _ => Err(wire::decode_error(200, &bytes, method, id)),
            }
        };
        match tokio::time::timeout(self.opts.call_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(DriverError::Other(format!(
                "plugin {}: {method} did not answer within {:?}",
                self.name, self.opts.call_timeout
            ))),
        }
    }

    async fn layer_call(&self, method: &str, id: &CacheId, parent: Option<&CacheId>) -> Result<GoObject> {
        let req = LayerRequest {
            id: id.to_string(),
            parent: parent.map(ToString::to_string).unwrap_or_default(),
            ..Default::default()
        };
        self.call(method, req.encode(), id.as_str()).await
    }

    async fn create_call(&self, method: &str, id: &CacheId, parent: Option<&CacheId>, opts: &CreateOpts) -> Result<()> {
        let req = LayerRequest {
            id: id.to_string(),
            parent: parent.map(ToString::to_string).unwrap_or_default(),
            mount_label: opts.mount_label.clone(),
            storage_opt: opts.storage_opt.clone(),
        };
        self.call(method, req.encode(), id.as_str()).await.map(drop)
    }
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

fn retryable(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused)
}

async fn handshake<S>(stream: S) -> std::result::Result<SendRequest<ReqBody>, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "plugin connection ended with an error");
        }
    });
    Ok(sender)
}

/// Read a whole body, refusing one over `limit` bytes.
async fn read_limited(mut body: Incoming, limit: u64) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reply broke off: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if out.len() as u64 + data.len() as u64 > limit {
                return Err(format!("reply is over {limit} bytes"));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

#[async_trait]
impl Driver for PluginDriver {
    fn name(&self) -> &str {
        &self.name
    }

    async fn create(&self, id: &CacheId, parent: Option<&CacheId>, opts: &CreateOpts) -> Result<()> {
        self.create_call("GraphDriver.Create", id, parent, opts).await
    }

    async fn create_rw(&self, id: &CacheId, parent: Option<&CacheId>, opts: &CreateOpts) -> Result<()> {
        self.create_call("GraphDriver.CreateReadWrite", id, parent, opts).await
    }

    async fn remove(&self, id: &CacheId) -> Result<()> {
        self.layer_call("GraphDriver.Remove", id, None).await.map(drop)
    }

    async fn get(&self, id: &CacheId, mount_label: &str) -> Result<PathBuf> {
        let req = LayerRequest { id: id.to_string(), mount_label: mount_label.to_string(), ..Default::default() };
        let o = self.call("GraphDriver.Get", req.encode(), id.as_str()).await?;
        let dir = o.string("Dir").map_err(|e| self.bad_reply("GraphDriver.Get", e))?;
        if !dir.starts_with('/') || dir.contains('\0') {
            return Err(self.bad_reply("GraphDriver.Get", format!("directory {dir:?} is not an absolute path")));
        }
        Ok(PathBuf::from(dir))
    }

    async fn put(&self, id: &CacheId) -> Result<()> {
        self.layer_call("GraphDriver.Put", id, None).await.map(drop)
    }

    async fn exists(&self, id: &CacheId) -> bool {
        // dockerd's rule: a failed call means "no".
        match self.layer_call("GraphDriver.Exists", id, None).await {
            Ok(o) => o.bool("Exists").unwrap_or(false),
            Err(e) => {
                debug!(plugin = %self.name, error = %e, "Exists failed; reading it as false");
                false
            }
        }
    }

    async fn status(&self) -> Vec<(String, String)> {
        let mut status = vec![("Plugin address".to_string(), self.addr.to_string())];
        match self.call("GraphDriver.Status", b"{}\n".to_vec(), "").await {
            Ok(o) => match wire::decode_status(&o) {
                Ok(s) => status.extend(s),
                Err(e) => status.push(("Status error".into(), e.0)),
            },
            Err(e) => status.push(("Status error".into(), e.to_string())),
        }
        status
    }

    async fn metadata(&self, id: &CacheId) -> Result<BTreeMap<String, String>> {
        let o = self.layer_call("GraphDriver.GetMetadata", id, None).await?;
        o.string_map("Metadata").map_err(|e| self.bad_reply("GraphDriver.GetMetadata", e))
    }

    async fn cleanup(&self) -> Result<()> {
        self.call("GraphDriver.Cleanup", b"{}\n".to_vec(), "").await.map(drop)
    }

    /// Our extension; a plugin without it lists nothing, so start-up
    /// reconciliation never removes a plugin's dir it cannot see.
    async fn ids(&self) -> Result<Vec<CacheId>> {
        match self.call(wire::IDS_METHOD, b"{}\n".to_vec(), "").await {
            Ok(o) => {
                let ids = o.strings("Ids").map_err(|e| self.bad_reply(wire::IDS_METHOD, e))?;
                Ok(ids
                    .iter()
                    .filter_map(|s| match CacheId::parse(s) {
                        Ok(id) => Some(id),
                        Err(_) => {
                            warn!(plugin = %self.name, id = %s, "plugin listed an invalid id; ignored");
                            None
                        }
                    })
                    .collect())
            }
            Err(DriverError::Unsupported { why, .. }) if why.contains("does not implement") => {
                if !self.warned_no_ids.swap(true, Ordering::Relaxed) {
                    warn!(plugin = %self.name, "the plugin cannot list its layers; orphaned dirs are not collected");
                }
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    async fn diff(&self, id: &CacheId, parent: Option<&CacheId>) -> Result<TarReader> {
        let req = LayerRequest {
            id: id.to_string(),
            parent: parent.map(ToString::to_string).unwrap_or_default(),
            ..Default::default()
        };
        let body = Full::new(Bytes::from(req.encode())).map_err(|never| match never {}).boxed_unsync();
        let resp = tokio::time::timeout(self.opts.call_timeout, self.send("GraphDriver.Diff", "", body, id.as_str()))
            .await
            .map_err(|_| DriverError::Other(format!("plugin {}: Diff did not answer in time", self.name)))??;
        let idle = self.opts.call_timeout;
        let frames = futures_util::stream::try_unfold(resp.into_body(), move |mut body| async move {
            loop {
                match tokio::time::timeout(idle, body.frame()).await {
                    Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "plugin Diff stalled")),
                    Ok(None) => return Ok(None),
                    Ok(Some(Err(e))) => return Err(io::Error::other(format!("plugin Diff broke off: {e}"))),
                    Ok(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            return Ok(Some((data, body)));
                        }
                    }
                }
            }
        });
        Ok(Box::new(SyncIoBridge::new(StreamReader::new(Box::pin(frames)))))
    }

    async fn changes(&self, id: &CacheId, parent: Option<&CacheId>) -> Result<Vec<Change>> {
        let o = self.layer_call("GraphDriver.Changes", id, parent).await?;
        wire::decode_changes(&o).map_err(|e| self.bad_reply("GraphDriver.Changes", e))
    }

    async fn apply_diff(&self, id: &CacheId, parent: Option<&CacheId>, mut diff: TarReader) -> Result<u64> {
        let query = format!(
            "id={}&parent={}",
            encode_query(id.as_str()),
            parent.map(|p| encode_query(p.as_str())).unwrap_or_default()
        );
        // The tar is read on the blocking pool and fed to the request body.
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
        let progress = Arc::new(AtomicU64::new(0));
        let seen = progress.clone();
        let read_failed: Arc<std::sync::Mutex<Option<io::Error>>> = Default::default();
        let failure = read_failed.clone();
        let reader = tokio::task::spawn_blocking(move || {
            loop {
                let mut buf = vec![0u8; CHUNK];
                match diff.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        seen.fetch_add(n as u64, Ordering::Relaxed);
                        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let copy = io::Error::new(e.kind(), e.to_string());
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        let _ = tx.blocking_send(Err(copy));
                        return;
                    }
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
        let body = BodyExt::boxed_unsync(StreamBody::new(stream.map_ok(Frame::data)));
        let work = async {
            let resp = self.send("GraphDriver.ApplyDiff", &query, body, id.as_str()).await?;
            let bytes = read_limited(resp.into_body(), wire::MAX_REQUEST as u64)
                .await
                .map_err(|e| DriverError::Other(format!("plugin {}: ApplyDiff: {e}", self.name)))?;
            let o = GoObject::parse(&bytes).map_err(|e| self.bad_reply("GraphDriver.ApplyDiff", e))?;
            if !o.string("Err").unwrap_or_default().is_empty() {
                return Err(wire::decode_error(200, &bytes, "GraphDriver.ApplyDiff", id.as_str()));
            }
            wire::decode_size(&o).map_err(|e| self.bad_reply("GraphDriver.ApplyDiff", e))
        };
        let result = tokio::select! {
            r = work => r,
            () = stalled(&progress, self.opts.call_timeout) => Err(DriverError::Other(format!(
                "plugin {}: ApplyDiff made no progress for {:?}", self.name, self.opts.call_timeout
            ))),
        };
        let _ = reader.await;
        // The caller's own reader failing is the caller's error, whatever
        // the plugin made of the cut body.
        if let Some(e) = read_failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(DriverError::Io(graphdriver::IoError::new("read diff", "", e)));
        }
        result
    }

    async fn diff_size(&self, id: &CacheId, parent: Option<&CacheId>) -> Result<u64> {
        let o = self.layer_call("GraphDriver.DiffSize", id, parent).await?;
        wire::decode_size(&o).map_err(|e| self.bad_reply("GraphDriver.DiffSize", e))
    }
}

/// Resolves once `progress` has not moved for `idle`.
async fn stalled(progress: &AtomicU64, idle: Duration) {
    let mut last = progress.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(idle).await;
        let now = progress.load(Ordering::Relaxed);
        if now == last {
            return;
        }
        last = now;
    }
}

fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
