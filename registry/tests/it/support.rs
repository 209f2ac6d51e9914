//! Fixtures: a store on vfs in a temp dir, images built from tars, and a
//! scriptable fake registry (axum on 127.0.0.1).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use layer::{ChainId, DiffId, Store};
use registry::{Client, ClientOptions, Credentials, Progress, Registry, Reporter};
use sha2::{Digest as _, Sha256};

pub fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

pub fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// A store on vfs in its own temp dir.
pub struct TestStore {
    pub store: Store,
    pub dir: tempfile::TempDir,
}

impl TestStore {
    pub async fn new() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let driver = Arc::new(drivers::vfs::Vfs::new(dir.path().join("vfs")).unwrap());
        let store = Store::open(dir.path(), driver).await.unwrap();
        TestStore { store, dir }
    }

    pub fn registry(&self, creds: &str) -> Registry {
        let credentials = Credentials::parse(creds.as_bytes()).unwrap();
        let client = Client::new(ClientOptions { credentials, ..Default::default() }).unwrap();
        Registry::new(client, self.store.clone(), Some(self.dir.path().join("registry")))
    }

    /// Nothing registered, nothing staged.
    pub async fn assert_empty(&self) {
        self.store.settle().await;
        assert_eq!(self.store.list(), vec![], "layers left behind");
        let tmp = self.store.layerdb().join("tmp");
        let left: Vec<_> = std::fs::read_dir(&tmp).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "transactions left behind: {left:?}");
    }
}

/// Layer tars of a small image (`n` layers, each a few files).
pub fn layer_tars(n: usize, tag: &str) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let name = format!("layer{i}/file-{tag}");
            let body = format!("{tag} layer {i} ").repeat(1000 * (i + 1));
            testkit::tars::files_tar(&[(name.as_str(), body.as_bytes()), ("etc/which", format!("{i}").as_bytes())])
        })
        .collect()
}

/// An image config for these layers (Docker's field names).
pub fn config_for(tars: &[Vec<u8>], arch: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = tars.iter().map(|t| sha(t)).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// Register `tars` as a chain in `store`; returns the top with one reference.
pub async fn register_chain(store: &Store, tars: &[Vec<u8>]) -> Option<ChainId> {
    let mut parent: Option<ChainId> = None;
    for t in tars {
        let opts = layer::RegisterOpts { parent: parent.clone(), ..Default::default() };
        let info = store.register(Box::new(std::io::Cursor::new(t.clone())), opts).await.unwrap();
        if let Some(p) = &parent {
            store.release(p).await.unwrap();
        }
        parent = Some(info.chain_id);
    }
    parent
}

pub fn chain_of(tars: &[Vec<u8>]) -> Vec<ChainId> {
    let mut out: Vec<ChainId> = Vec::new();
    for t in tars {
        let d = DiffId::parse(&sha(t)).unwrap();
        out.push(ChainId::of(out.last(), &d));
    }
    out
}

/// Collects progress events.
pub fn reporter() -> (Reporter, tokio::sync::mpsc::UnboundedReceiver<Progress>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (Reporter::new(tx), rx)
}

pub fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Progress>) -> Vec<Progress> {
    let mut out = Vec::new();
    while let Ok(p) = rx.try_recv() {
        out.push(p);
    }
    out
}

/// A canned answer of the fake registry.
#[derive(Clone)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Canned {
    pub fn ok(content_type: &str, body: Vec<u8>) -> Canned {
        Canned { status: 200, headers: vec![("content-type".into(), content_type.into())], body }
    }
}

#[derive(Default)]
pub struct FakeState {
    pub routes: HashMap<String, Canned>,
    /// Every request seen: (path, Authorization header).
    pub seen: Vec<(String, Option<String>)>,
    /// When set, every path but these needs `Authorization: <value>`, else
    /// a 401 with this challenge.
    pub require: Option<(String, String)>,
    pub open_paths: Vec<String>,
    /// Every answer waits this long (to make concurrent clients overlap).
    pub delay: std::time::Duration,
}

/// A scriptable registry on 127.0.0.1.
pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
    _server: tokio::task::JoinHandle<()>,
}

async fn answer(State(st): State<Arc<Mutex<FakeState>>>, req: Request) -> Response {
    let path = match req.uri().query() {
        Some(q) if req.uri().path().starts_with("/token") => format!("{}?{q}", req.uri().path()),
        _ => req.uri().path().to_owned(),
    };
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let delay = st.lock().unwrap().delay;
    tokio::time::sleep(delay).await;
    let mut st = st.lock().unwrap();
    st.seen.push((path.clone(), auth.clone()));
    let plain_path = req.uri().path().to_owned();
    if let Some((want, challenge)) = &st.require
        && !st.open_paths.contains(&plain_path)
        && auth.as_deref() != Some(want.as_str())
    {
        let mut r =
            Response::new(Body::from(r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut().insert("www-authenticate", HeaderValue::from_str(challenge).unwrap());
        return r;
    }
    let canned = st.routes.get(&plain_path).cloned().unwrap_or(Canned {
        status: 404,
        headers: vec![],
        body: br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"not here"}]}"#.to_vec(),
    });
    let mut r = Response::new(Body::from(canned.body));
    *r.status_mut() = StatusCode::from_u16(canned.status).unwrap();
    let h: &mut HeaderMap = r.headers_mut();
    for (k, v) in canned.headers {
        h.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(&v).unwrap());
    }
    r
}

impl Fake {
    pub async fn start() -> Fake {
        let state: Arc<Mutex<FakeState>> = Arc::default();
        let app = axum::Router::new().fallback(answer).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Fake { addr, state, _server: server }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn route(&self, path: &str, c: Canned) {
        self.state.lock().unwrap().routes.insert(path.to_owned(), c);
    }

    pub fn seen(&self) -> Vec<(String, Option<String>)> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Serve a whole image under `repo:tag`; returns its manifest digest.
    pub fn serve_image(&self, repo: &str, tag: &str, img: &FakeImage) -> String {
        for (blob, _) in &img.blobs {
            self.route(
                &format!("/v2/{repo}/blobs/{}", sha(blob)),
                Canned::ok("application/octet-stream", blob.clone()),
            );
        }
        self.route(
            &format!("/v2/{repo}/blobs/{}", sha(&img.config)),
            Canned::ok("application/octet-stream", img.config.clone()),
        );
        let m = img.manifest();
        self.route(&format!("/v2/{repo}/manifests/{tag}"), Canned::ok(registry::manifest::DOCKER_MANIFEST, m.clone()));
        self.route(
            &format!("/v2/{repo}/manifests/{}", sha(&m)),
            Canned::ok(registry::manifest::DOCKER_MANIFEST, m.clone()),
        );
        sha(&m)
    }
}

/// An image as a registry holds it: gzip blobs (with their tars), config.
pub struct FakeImage {
    pub blobs: Vec<(Vec<u8>, Vec<u8>)>,
    pub config: Vec<u8>,
}

impl FakeImage {
    pub fn new(tars: Vec<Vec<u8>>, arch: &str) -> FakeImage {
        let config = config_for(&tars, arch);
        FakeImage { blobs: tars.into_iter().map(|t| (gzip(&t), t)).collect(), config }
    }

    pub fn manifest(&self) -> Vec<u8> {
        let layers: Vec<_> = self
            .blobs
            .iter()
            .map(|(b, _)| serde_json::json!({"mediaType": registry::manifest::DOCKER_LAYER_GZIP, "size": b.len(), "digest": sha(b)}))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": registry::manifest::DOCKER_MANIFEST,
            "config": {"mediaType": registry::manifest::DOCKER_CONFIG, "size": self.config.len(), "digest": sha(&self.config)},
            "layers": layers,
        }))
        .unwrap()
    }

    pub fn tars(&self) -> Vec<Vec<u8>> {
        self.blobs.iter().map(|(_, t)| t.clone()).collect()
    }
}
