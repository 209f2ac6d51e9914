//! The small API cases are written against: a [`Cx`] per case (the driver,
//! its fresh `root/`, a `work/` play area, and the layers and dirs to dump
//! if the case fails), tree edits ([`ops`]), manifests ([`manifest`]), tars
//! ([`tars`]) and the commit-path chain checker ([`chain`]).

pub mod chain;
pub mod ops;

// Tars and manifests live in the shared test kit.
pub use testkit::{manifest, tars};

use std::fmt::Write as _;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use graphdriver::{CacheId, CreateOpts, Driver, ErrorKind};

use self::manifest::{Manifest, ScanOpts};
use self::ops::Op;

/// The result of a case: `Ok` passes; an error fails, unless it is (or
/// wraps) a [`Skip`].
pub type CaseResult = anyhow::Result<()>;

/// Why a case did not run. Only for a capability the driver does not
/// advertise or a host fact the suite cannot change.
#[derive(Debug)]
pub struct Skip(pub String);

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped: {}", self.0)
    }
}

impl std::error::Error for Skip {}

/// Return this from a case to skip it, saying why.
pub fn skip(reason: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Skip(reason.into()))
}

enum Tracked {
    Layer(CacheId),
    Dir(PathBuf),
}

struct Inner {
    driver: Arc<dyn Driver>,
    root: PathBuf,
    work: PathBuf,
    tracked: Mutex<Vec<(String, Tracked)>>,
}

/// One case's context. Cheap to clone into spawned tasks.
#[derive(Clone)]
pub struct Cx(Arc<Inner>);

impl Cx {
    pub(crate) fn new(driver: Arc<dyn Driver>, root: PathBuf, work: PathBuf) -> Cx {
        Cx(Arc::new(Inner { driver, root, work, tracked: Mutex::new(Vec::new()) }))
    }

    pub fn driver(&self) -> &dyn Driver {
        &*self.0.driver
    }

    pub fn driver_arc(&self) -> Arc<dyn Driver> {
        self.0.driver.clone()
    }

    /// The driver's root as given to the factory.
    pub fn root(&self) -> &Path {
        &self.0.root
    }

    /// A play area on the same filesystem, removed after the case.
    pub fn work(&self) -> &Path {
        &self.0.work
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, Vec<(String, Tracked)>> {
        self.0.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh random id, dumped under `label` if the case fails.
    pub fn id(&self, label: &str) -> CacheId {
        let id = CacheId::random();
        self.tracked().push((label.to_string(), Tracked::Layer(id.clone())));
        id
    }

    /// Dump the layer `id` (made elsewhere, e.g. by the layer store) under
    /// `label` if the case fails.
    pub fn track_layer(&self, label: &str, id: CacheId) {
        self.tracked().push((label.to_string(), Tracked::Layer(id)));
    }

    /// Dump `dir` under `label` if the case fails.
    pub fn track_dir(&self, label: &str, dir: &Path) {
        self.tracked().push((label.to_string(), Tracked::Dir(dir.to_path_buf())));
    }

    /// A fresh flat directory under `work/` (0755, root-owned), tracked.
    pub fn flat(&self, label: &str) -> anyhow::Result<PathBuf> {
        let dir = ops::flat_dir(self.work().join(label))?;
        self.track_dir(label, &dir);
        Ok(dir)
    }

    /// `create(id, parent)` under a new tracked id.
    pub async fn create(&self, label: &str, parent: Option<&CacheId>) -> anyhow::Result<CacheId> {
        let id = self.id(label);
        self.driver()
            .create(&id, parent, &CreateOpts::default())
            .await
            .with_context(|| format!("create {label} ({id})"))?;
        Ok(id)
    }

    /// `create_rw(id, parent)` under a new tracked id.
    pub async fn create_rw(&self, label: &str, parent: Option<&CacheId>) -> anyhow::Result<CacheId> {
        let id = self.id(label);
        self.driver()
            .create_rw(&id, parent, &CreateOpts::default())
            .await
            .with_context(|| format!("create_rw {label} ({id})"))?;
        Ok(id)
    }

    /// `get`, run `f` on the path on the blocking pool, `put` (always).
    pub async fn with_mounted<T, F>(&self, id: &CacheId, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(PathBuf) -> anyhow::Result<T> + Send + 'static,
    {
        let path = self.driver().get(id, "").await.with_context(|| format!("get {id}"))?;
        let res = blocking(move || f(path)).await;
        let put = self.driver().put(id).await.with_context(|| format!("put {id}"));
        let out = res?;
        put?;
        Ok(out)
    }

    /// Apply `ops` to the layer's tree through `get`/`put`.
    pub async fn write(&self, id: &CacheId, ops: Vec<Op>) -> anyhow::Result<()> {
        self.with_mounted(id, move |p| ops::apply(&p, &ops)).await
    }

    /// The layer's tree, read through `get`/`put`.
    pub async fn manifest(&self, id: &CacheId) -> anyhow::Result<Manifest> {
        self.scan(id, ScanOpts::default()).await
    }

    pub async fn scan(&self, id: &CacheId, opts: ScanOpts) -> anyhow::Result<Manifest> {
        self.with_mounted(id, move |p| manifest::scan(&p, opts)).await
    }

    /// `diff(id, parent)`, read to the end.
    pub async fn diff_bytes(&self, id: &CacheId, parent: Option<&CacheId>) -> anyhow::Result<Vec<u8>> {
        let mut r = self.driver().diff(id, parent).await.with_context(|| format!("diff {id}"))?;
        blocking(move || {
            let mut out = Vec::new();
            r.read_to_end(&mut out).context("read diff")?;
            Ok(out)
        })
        .await
    }

    /// `apply_diff(id, parent, tar)`.
    pub async fn apply(&self, id: &CacheId, parent: Option<&CacheId>, tar: Vec<u8>) -> anyhow::Result<u64> {
        let n = self
            .driver()
            .apply_diff(id, parent, Box::new(Cursor::new(tar)))
            .await
            .with_context(|| format!("apply_diff {id}"))?;
        Ok(n)
    }

    /// The last tracked layers and dirs, rendered (for failure reports).
    pub(crate) async fn dump(&self) -> String {
        const LAST: usize = 8;
        const LINES: usize = 120;
        let items: Vec<(String, Tracked)> = {
            let t = self.tracked();
            let start = t.len().saturating_sub(LAST);
            t[start..]
                .iter()
                .map(|(l, x)| {
                    let x = match x {
                        Tracked::Layer(id) => Tracked::Layer(id.clone()),
                        Tracked::Dir(d) => Tracked::Dir(d.clone()),
                    };
                    (l.clone(), x)
                })
                .collect()
        };
        let mut out = String::new();
        for (label, item) in items {
            let body = match item {
                Tracked::Layer(id) if !self.driver().exists(&id).await => {
                    let _ = writeln!(out, "== layer {label} ({id}): does not exist");
                    continue;
                }
                Tracked::Layer(id) => {
                    let _ = writeln!(out, "== layer {label} ({id}):");
                    self.manifest(&id).await
                }
                Tracked::Dir(d) => {
                    let _ = writeln!(out, "== dir {label} ({}):", d.display());
                    blocking(move || manifest::scan(&d, ScanOpts::default())).await
                }
            };
            match body {
                Ok(m) => out += &m.render(LINES),
                Err(e) => {
                    let _ = writeln!(out, "cannot read: {e:#}");
                }
            }
        }
        out
    }
}

/// Wait for the filesystem clock to tick (25 ms: one jiffy at HZ >= 100).
///
/// A naive diff sees a rewrite only by size or mtime, and file times come
/// from a coarse clock, so a same-size rewrite in the tick the lower file
/// was written in is invisible to it. Cases that rewrite a lower file with
/// the same size wait a tick first: they test change detection, not that
/// race (`docs/conformance.md`, known gaps).
pub async fn next_tick() {
    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
}

/// Run blocking filesystem work on tokio's blocking pool.
pub async fn blocking<T, F>(f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.context("blocking task panicked")?
}

/// Fail unless `res` is an error of `kind`.
pub fn expect_kind<T: std::fmt::Debug>(res: graphdriver::Result<T>, kind: ErrorKind, what: &str) -> anyhow::Result<()> {
    match res {
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => bail!("{what}: want a {} error, got {} ({e})", kind.as_str(), e.kind().as_str()),
        Ok(v) => bail!("{what}: want a {} error, got success ({v:?})", kind.as_str()),
    }
}

/// Mount points at or below `dir`, from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    testkit::mounts::mounts_under(dir).context("read /proc/self/mountinfo")
}

/// Whether `path` is itself a mount point.
pub fn is_mount_point(path: &Path) -> anyhow::Result<bool> {
    testkit::mounts::is_mount_point(path).context("read /proc/self/mountinfo")
}
