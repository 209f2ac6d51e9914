//! Serve any [`Driver`] to dockerd as a v1 graphdriver plugin.
//!
//! dockerd sends `Plugin.Activate`, then `GraphDriver.Init` with the home
//! it wants the driver in, then the per-layer calls — concurrently, with no
//! timeout. The server holds the driver in one slot that a call only reads
//! (an `Arc` clone under a lock held for that clone), so no call waits on
//! another; the driver serialises nothing across ids either.
//!
//! dockerd never re-sends `Init` when the plugin restarts, so what `Init`
//! said is written to a state file (atomically: temp file, fsync, rename,
//! fsync the dir) and a restarted server opens the same driver from it
//! before it answers its first call.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use futures_util::TryStreamExt;
use graphdriver::{CacheId, CreateOpts, Driver, DriverError, ErrorKind, TarReader};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tracing::{Instrument, info, warn};

use crate::wire::{self, InitRequest, LayerRequest, WireError};

/// Opens the served driver with its home at the given directory and the
/// `--storage-opt`s dockerd passed. Runs on the blocking pool.
pub type Opener = Arc<dyn Fn(&Path, &[String]) -> graphdriver::Result<Arc<dyn Driver>> + Send + Sync>;

/// Bytes per chunk of a streamed `Diff`.
const CHUNK: usize = 64 * 1024;

/// Bytes of an `ApplyDiff` body still read and discarded after the driver
/// stopped reading it.
const DRAIN_LIMIT: u64 = 256 << 20;

/// A reader shared between the driver and the drain after it.
struct Shared<R>(Arc<std::sync::Mutex<R>>);

impl<R: Read> Read for Shared<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).read(buf)
    }
}

/// The persisted `Init` (`state.json`), versioned.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SavedInit {
    version: u32,
    init: InitRequest,
}

struct Active {
    init: InitRequest,
    driver: Arc<dyn Driver>,
}

/// One plugin: the driver dockerd initialised (if any) and how to open one.
pub struct PluginServer {
    opener: Opener,
    state_file: Option<PathBuf>,
    active: RwLock<Option<Arc<Active>>>,
    /// Serialises `Init` calls only; no other call takes it.
    init_lock: tokio::sync::Mutex<()>,
}

/// Why a call failed, and which status it answers with.
#[derive(Debug)]
struct CallError {
    kind: ErrorKind,
    message: String,
}

impl From<DriverError> for CallError {
    fn from(e: DriverError) -> Self {
        CallError { kind: e.kind(), message: e.to_string() }
    }
}

impl From<WireError> for CallError {
    fn from(e: WireError) -> Self {
        CallError { kind: ErrorKind::InvalidArgument, message: e.0 }
    }
}

impl CallError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CallError { kind, message: message.into() }
    }
}

type CallResult = Result<Response, CallError>;

impl PluginServer {
    /// A server that opens drivers with `opener` and remembers `Init` in
    /// `state_file` (`None`: remember nothing; a restart then needs a new
    /// `Init`).
    pub fn new(opener: Opener, state_file: Option<PathBuf>) -> Arc<PluginServer> {
        Arc::new(PluginServer { opener, state_file, active: RwLock::new(None), init_lock: Default::default() })
    }

    /// Re-open the driver a previous run was initialised with, if any.
    /// Returns the home it serves.
    pub async fn restore(&self) -> Result<Option<PathBuf>, String> {
        let Some(path) = self.state_file.clone() else { return Ok(None) };
        let saved = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("read plugin state {}: {e}", path.display())),
        };
        let saved: SavedInit =
            serde_json::from_slice(&saved).map_err(|e| format!("plugin state {} is not valid: {e}", path.display()))?;
        if saved.version != 1 {
            return Err(format!("plugin state {} has version {}, want 1", path.display(), saved.version));
        }
        let home = PathBuf::from(&saved.init.home);
        let driver =
            self.open(&saved.init).await.map_err(|e| format!("reopen the driver in {}: {e}", home.display()))?;
        info!(home = %home.display(), driver = driver.name(), "driver reopened from saved Init");
        self.set_active(Some(Arc::new(Active { init: saved.init, driver })));
        Ok(Some(home))
    }

    /// The served driver, if dockerd (or a saved state) initialised one.
    pub fn driver(&self) -> Option<Arc<dyn Driver>> {
        self.current().map(|a| a.driver.clone())
    }

    fn current(&self) -> Option<Arc<Active>> {
        self.active.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_active(&self, a: Option<Arc<Active>>) -> Option<Arc<Active>> {
        std::mem::replace(&mut *self.active.write().unwrap_or_else(|p| p.into_inner()), a)
    }

    async fn open(&self, init: &InitRequest) -> graphdriver::Result<Arc<dyn Driver>> {
        let (opener, home, opts) = (self.opener.clone(), PathBuf::from(&init.home), init.opts.clone());
        tokio::task::spawn_blocking(move || opener(&home, &opts))
            .await
            .map_err(|e| DriverError::Other(format!("driver constructor panicked: {e}")))?
    }

    async fn init(&self, body: &[u8]) -> CallResult {
        let init = InitRequest::parse(body)?;
        if !Path::new(&init.home).is_absolute() {
            return Err(CallError::new(ErrorKind::InvalidArgument, format!("home {:?} is not absolute", init.home)));
        }
        if !init.uid_maps.is_empty() || !init.gid_maps.is_empty() {
            return Err(CallError::new(
                ErrorKind::Unsupported,
                "user namespace remapping (userns-remap) is not supported by this plugin",
            ));
        }
        let _serial = self.init_lock.lock().await;
        if self.current().is_some_and(|a| a.init == init) {
            return Ok(json_reply(Map::new()));
        }
        let driver = self.open(&init).await?;
        if let Err(e) = self.save(&init).await {
            let _ = driver.cleanup().await;
            return Err(CallError::new(ErrorKind::Internal, e));
        }
        info!(home = %init.home, driver = driver.name(), "initialised");
        if let Some(old) = self.set_active(Some(Arc::new(Active { init, driver }))) {
            // A new home: the old driver's mounts are no longer dockerd's.
            if let Err(e) = old.driver.cleanup().await {
                warn!(error = %e, "cleanup of the previous driver failed");
            }
        }
        Ok(json_reply(Map::new()))
    }

    async fn save(&self, init: &InitRequest) -> Result<(), String> {
        let Some(path) = self.state_file.clone() else { return Ok(()) };
        let bytes = serde_json::to_vec_pretty(&SavedInit { version: 1, init: init.clone() })
            .map_err(|e| format!("encode plugin state: {e}"))?;
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(|e| format!("save plugin state: {e}"))?
    }

    fn require(&self) -> Result<Arc<dyn Driver>, CallError> {
        self.driver().ok_or_else(|| {
            CallError::new(ErrorKind::Conflict, "the plugin is not initialised: dockerd has not sent GraphDriver.Init")
        })
    }

    async fn dispatch(&self, method: &str, query: Option<String>, body: Body) -> CallResult {
        match method {
            "Plugin.Activate" => {
                let mut m = Map::new();
                m.insert("Implements".into(), json!([wire::GRAPH_DRIVER]));
                Ok(json_reply(m))
            }
            "GraphDriver.Init" => self.init(&read_json(body).await?).await,
            "GraphDriver.Capabilities" => {
                // Diff rebuilds a tar from the tree: not the applied bytes.
                let mut m = Map::new();
                m.insert("Capabilities".into(), json!({"ReproducesExactDiffs": false}));
                Ok(json_reply(m))
            }
            "GraphDriver.ApplyDiff" => self.apply_diff(query.as_deref().unwrap_or(""), body).await,
            "GraphDriver.Status" => {
                let Some(d) = self.driver() else {
                    return Ok(raw_json(wire::encode_status(&[("Plugin".into(), "not initialised".into())])));
                };
                let mut status = d.status().await;
                status.push(("Served by".into(), format!("layerd {} driver", d.name())));
                Ok(raw_json(wire::encode_status(&status)))
            }
            "GraphDriver.Cleanup" => {
                if let Some(d) = self.driver() {
                    d.cleanup().await?;
                }
                Ok(json_reply(Map::new()))
            }
            wire::IDS_METHOD => {
                let ids = self.require()?.ids().await?;
                let mut m = Map::new();
                m.insert("Ids".into(), Value::Array(ids.iter().map(|i| Value::String(i.to_string())).collect()));
                Ok(json_reply(m))
            }
            _ => {
                let req = LayerRequest::parse(&read_json(body).await?)?;
                self.layer_call(method, req).await
            }
        }
    }

    async fn layer_call(&self, method: &str, req: LayerRequest) -> CallResult {
        let d = self.require()?;
        let id = CacheId::parse(&req.id)?;
        let parent = optional_id(&req.parent)?;
        let parent = parent.as_ref();
        let mut m = Map::new();
        match method {
            "GraphDriver.Create" | "GraphDriver.CreateReadWrite" => {
                let opts = CreateOpts { mount_label: req.mount_label, storage_opt: req.storage_opt };
                if method == "GraphDriver.Create" {
                    d.create(&id, parent, &opts).await?;
                } else {
                    d.create_rw(&id, parent, &opts).await?;
                }
            }
            "GraphDriver.Remove" => d.remove(&id).await?,
            "GraphDriver.Get" => {
                let dir = d.get(&id, &req.mount_label).await?;
                m.insert("Dir".into(), Value::String(dir.to_string_lossy().into_owned()));
            }
            "GraphDriver.Put" => d.put(&id).await?,
            "GraphDriver.Exists" => {
                m.insert("Exists".into(), Value::Bool(d.exists(&id).await));
            }
            "GraphDriver.GetMetadata" => {
                let meta = d.metadata(&id).await?;
                m.insert("Metadata".into(), json!(meta));
            }
            "GraphDriver.Changes" => return Ok(raw_json(wire::encode_changes(&d.changes(&id, parent).await?))),
            "GraphDriver.DiffSize" => {
                m.insert("Size".into(), json!(d.diff_size(&id, parent).await?));
            }
            "GraphDriver.Diff" => return Ok(stream_tar(d.diff(&id, parent).await?)),
            other => return Err(CallError::new(ErrorKind::NotFound, format!("unknown method {other}"))),
        }
        Ok(json_reply(m))
    }

    async fn apply_diff(&self, query: &str, body: Body) -> CallResult {
        let d = self.require()?;
        let (mut id, mut parent) = (String::new(), String::new());
        for (k, v) in form_pairs(query)? {
            match k.as_str() {
                "id" => id = v,
                "parent" => parent = v,
                _ => {}
            }
        }
        let id = CacheId::parse(&id)?;
        let parent = optional_id(&parent)?;
        let stream = body.into_data_stream().map_err(io::Error::other);
        let shared = Arc::new(std::sync::Mutex::new(SyncIoBridge::new(StreamReader::new(stream))));
        let applied = d.apply_diff(&id, parent.as_ref(), Box::new(Shared(shared.clone()))).await;
        // Read what the extractor left (end blocks, record padding; or the
        // rest of a refused tar, up to a bound) so dockerd can finish
        // sending and read the answer instead of a reset connection.
        let _ = tokio::task::spawn_blocking(move || {
            let mut r = shared.lock().unwrap_or_else(|p| p.into_inner());
            io::copy(&mut (&mut *r).take(DRAIN_LIMIT), &mut io::sink())
        })
        .await;
        let size = applied?;
        let mut m = Map::new();
        m.insert("Size".into(), json!(size));
        Ok(json_reply(m))
    }
}

/// The router dockerd talks to: `POST /<Method>` for every method.
pub fn router(server: Arc<PluginServer>) -> Router {
    Router::new().route("/{method}", post(handle)).with_state(server)
}

async fn handle(
    State(server): State<Arc<PluginServer>>,
    UrlPath(method): UrlPath<String>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    let span = tracing::info_span!("plugin call", method = %method);
    match server.dispatch(&method, query, body).instrument(span).await {
        Ok(r) => r,
        Err(e) => {
            if e.kind == ErrorKind::Internal {
                warn!(method, error = %e.message, "plugin call failed");
            } else {
                tracing::debug!(method, error = %e.message, "plugin call refused");
            }
            let status = StatusCode::from_u16(wire::status_of(e.kind)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, media_type(), wire::encode_error(e.kind, &e.message)).into_response()
        }
    }
}

fn media_type() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CONTENT_TYPE, HeaderValue::from_static(wire::MEDIA_TYPE))]
}

fn json_reply(m: Map<String, Value>) -> Response {
    raw_json(wire::encode_object(m))
}

fn raw_json(bytes: Vec<u8>) -> Response {
    (StatusCode::OK, media_type(), bytes).into_response()
}

async fn read_json(body: Body) -> Result<Bytes, CallError> {
    axum::body::to_bytes(body, wire::MAX_REQUEST).await.map_err(|e| {
        CallError::new(
            ErrorKind::InvalidArgument,
            format!("request body unreadable or over {} bytes: {e}", wire::MAX_REQUEST),
        )
    })
}

fn optional_id(s: &str) -> Result<Option<CacheId>, CallError> {
    if s.is_empty() { Ok(None) } else { Ok(Some(CacheId::parse(s)?)) }
}

/// `a=b&c=d`, percent-decoded (`+` is a space, as Go's `url.ParseQuery`).
fn form_pairs(query: &str) -> Result<Vec<(String, String)>, CallError> {
    let decode = |s: &str| -> Result<String, CallError> {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' => {
                    let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                    let b = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| {
                        CallError::new(ErrorKind::InvalidArgument, format!("bad escape in query {query:?}"))
                    })?;
                    out.push(b);
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| CallError::new(ErrorKind::InvalidArgument, "query is not UTF-8"))
    };
    query
        .split(['&', ';'])
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// A tar from the driver as a streamed body. A read error aborts the body
/// (no final chunk), so dockerd never takes a cut tar for a whole one.
fn stream_tar(mut reader: TarReader) -> Response {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut buf = vec![0u8; CHUNK];
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!(error = %e, "diff stream failed; aborting the response");
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    resp
}

/// Write `bytes` to `path` so that a crash leaves the old or the new file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let write = || -> io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("write {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_decode_as_go_does() {
        let p = form_pairs("id=abc&parent=").unwrap();
        assert_eq!(p, [("id".into(), "abc".into()), ("parent".into(), String::new())]);
        let p = form_pairs("id=a%2Fb+c").unwrap();
        assert_eq!(p, [("id".into(), "a/b c".into())]);
        assert!(form_pairs("id=%zz").is_err());
        assert!(form_pairs("id=%4").is_err());
        assert!(form_pairs("id=%ff").is_err());
    }

    #[test]
    fn state_is_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "temp file left behind");
    }
}
