//! Push: every layer's blob (skipped when the target has it, mounted from
//! another repository of the registry when one is known to hold it, else
//! gzip-compressed once from the store's exact tar and streamed up), then
//! the config, then the manifest — last, so a registry never names a
//! manifest whose blobs it lacks.
//!
//! Uploads stream: a blocking thread reads the layer's tar from the store
//! and gzips it into a bounded channel that is the body of one `PATCH`;
//! the digest, known only at the end, goes in the closing `PUT`. No temp
//! file. The digest and size are remembered per ChainID ([`Known`]), so a
//! re-push does a HEAD per layer and uploads nothing.
//!
//! [`Known`]: crate::known::Known

use std::io::{self, Write};

use bytes::Bytes;
use futures_util::future::try_join_all;
use layer::{ChainId, DiffId};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Body, StatusCode, Url};
use sha2::{Digest as _, Sha256};
use tokio::sync::{Semaphore, mpsc};
use tracing::debug;

use crate::Registry;
use crate::blob::sha256_of;
use crate::client::{Scope, check_status};
use crate::error::{RegistryError, Result};
use crate::known::source_of;
use crate::manifest::{self, DOCKER_LAYER_GZIP, Descriptor};
use crate::progress::{Reporter, short};
use crate::reference::Reference;

/// Layers uploaded at once (Docker's default max-concurrent-uploads is 5;
/// compression is CPU-bound, so fewer).
const PARALLEL_UPLOADS: usize = 3;
/// Bytes per chunk handed from the compressor to the upload.
const CHUNK: usize = 256 * 1024;

/// What to push: the image's config (exact bytes) and its top layer.
#[derive(Debug, Clone)]
pub struct PushImage {
    pub config: Bytes,
    pub top_layer: Option<ChainId>,
}

/// The pushed manifest.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: String,
    pub size: u64,
    pub manifest: Bytes,
}

impl Registry {
    pub async fn push(&self, target: &Reference, image: &PushImage, progress: &Reporter) -> Result<Pushed> {
        // Hold the chain while we read it.
        if let Some(top) = &image.top_layer {
            self.store.lease(top)?;
        }
        let res = self.push_held(target, image, progress).await;
        if let Some(top) = &image.top_layer {
            let _ = self.store.unlease(top).await;
        }
        res
    }

    async fn push_held(&self, target: &Reference, image: &PushImage, progress: &Reporter) -> Result<Pushed> {
        let layers = self.chain_of(image.top_layer.as_ref())?;
        check_config(&image.config, &layers)?;
        let limit = Semaphore::new(PARALLEL_UPLOADS);
        let descs = try_join_all(layers.iter().map(|(chain, diff)| async {
            let _permit = limit.acquire().await.map_err(|e| RegistryError::Internal(e.to_string()))?;
            self.push_layer(target, chain, diff, progress).await
        }))
        .await?;
        let config_digest = sha256_of(&image.config);
        let (host, repo) = (target.registry(), target.repository());
        if !self.blob_exists(host, repo, &config_digest).await? {
            self.upload_whole(host, repo, &config_digest, image.config.clone()).await?;
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::DOCKER_MANIFEST,
            "config": {"mediaType": manifest::DOCKER_CONFIG, "size": image.config.len(), "digest": config_digest},
            "layers": descs,
        });
        let body = Bytes::from(serde_json::to_vec(&manifest).map_err(|e| RegistryError::Internal(e.to_string()))?);
        let digest = sha256_of(&body);
        let tag = match (target.tag(), target.digest()) {
            (_, Some(d)) if d != digest => {
                return Err(RegistryError::InvalidArgument(format!(
                    "push by digest {d}: the manifest built has digest {digest}"
                )));
            }
            (Some(t), _) => t.to_owned(),
            (None, _) => digest.clone(),
        };
        let url_tag = tag.clone();
        let put_body = body.clone();
        let resp = self
            .client
            .send(host, &Scope::push(repo), move |http, base| {
                http.put(format!("{base}/v2/{repo}/manifests/{url_tag}"))
                    .header(CONTENT_TYPE, manifest::DOCKER_MANIFEST)
                    .body(put_body.clone())
            })
            .await?;
        check_status(resp, &format!("manifest {repo}:{tag}")).await?;
        progress.status(&tag, format!("digest: {digest} size: {}", body.len()));
        Ok(Pushed { digest, size: body.len() as u64, manifest: body })
    }

    /// The chain below `top`, base first, with each layer's DiffID.
    fn chain_of(&self, top: Option<&ChainId>) -> Result<Vec<(ChainId, DiffId)>> {
        let mut out = Vec::new();
        let mut cur = top.cloned();
        while let Some(c) = cur {
            let info = self.store.get(&c)?;
            cur = info.parent.clone();
            out.push((c, info.diff_id));
        }
        out.reverse();
        Ok(out)
    }

    async fn push_layer(
        &self,
        target: &Reference,
        chain: &ChainId,
        diff: &DiffId,
        progress: &Reporter,
    ) -> Result<Descriptor> {
        let (host, repo) = (target.registry(), target.repository());
        let id = short(&diff.to_string());
        let here = source_of(target);
        progress.status(&id, "Preparing");
        let known = self.known.candidates(chain);
        for kb in &known {
            if self.blob_exists(host, repo, &kb.digest).await? {
                self.known.remember(chain, &kb.digest, kb.size, &here).await;
                progress.status(&id, "Layer already exists");
                return Ok(layer_desc(&kb.digest, kb.size));
            }
        }
        for kb in &known {
            let from = kb.sources.iter().filter_map(|s| s.strip_prefix(&format!("{host}/"))).find(|r| *r != repo);
            if let Some(from) = from
                && self.mount(host, repo, from, &kb.digest).await?
            {
                self.known.remember(chain, &kb.digest, kb.size, &here).await;
                progress.status(&id, format!("Mounted from {from}"));
                return Ok(layer_desc(&kb.digest, kb.size));
            }
        }
        progress.status(&id, "Pushing");
        let (digest, size) = self.upload_layer(host, repo, chain, progress, &id).await?;
        self.known.remember(chain, &digest, size, &here).await;
        progress.bytes(&id, "Pushed", size, size);
        Ok(layer_desc(&digest, size))
    }

    pub(crate) async fn blob_exists(&self, host: &str, repo: &str, digest: &str) -> Result<bool> {
        let resp = self
            .client
            .send(host, &Scope::push(repo), |http, base| http.head(format!("{base}/v2/{repo}/blobs/{digest}")))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => check_status(resp, &format!("HEAD blob {digest}")).await.map(|_| false),
        }
    }

    /// Cross-repository mount; `false` when the registry would not.
    async fn mount(&self, host: &str, repo: &str, from: &str, digest: &str) -> Result<bool> {
        let scope = Scope::push(repo).and_pull(from);
        let resp = self
            .client
            .send(host, &scope, |http, base| {
                http.post(format!("{base}/v2/{repo}/blobs/uploads/"))
                    .query(&[("mount", digest), ("from", from)])
                    .header(CONTENT_LENGTH, 0)
            })
            .await?;
        debug!(status = %resp.status(), digest, from, "mount attempt");
        Ok(resp.status() == StatusCode::CREATED)
    }

    /// Start an upload session: its absolute location.
    async fn start_upload(&self, host: &str, repo: &str) -> Result<Url> {
        let resp = self
            .client
            .send(host, &Scope::push(repo), |http, base| {
                http.post(format!("{base}/v2/{repo}/blobs/uploads/")).header(CONTENT_LENGTH, 0)
            })
            .await?;
        let resp = check_status(resp, &format!("starting an upload to {repo}")).await?;
        location(&resp)
    }

    async fn upload_whole(&self, host: &str, repo: &str, digest: &str, body: Bytes) -> Result<()> {
        let mut url = self.start_upload(host, repo).await?;
        url.query_pairs_mut().append_pair("digest", digest);
        let req = self.client.http(host).put(url).header(CONTENT_TYPE, "application/octet-stream").body(body);
        let resp = self.client.send_once(host, &Scope::push(repo), req).await?;
        check_status(resp, &format!("uploading blob {digest}")).await?;
        Ok(())
    }

    /// Compress the layer's tar and stream it up: one PATCH, then the PUT
    /// that names the digest. Returns (digest, size) of the gzip blob.
    async fn upload_layer(
        &self,
        host: &str,
        repo: &str,
        chain: &ChainId,
        progress: &Reporter,
        id: &str,
    ) -> Result<(String, u64)> {
        let url = self.start_upload(host, repo).await?;
        // Progress counts the tar read (its length is known when the store
        // recorded checkpoints; compressed sizes are known only at the end).
        let total = self.store.tar_length(chain).await.ok().flatten();
        let tar = Counting {
            inner: self.store.tar_stream(chain).await?,
            n: 0,
            reported: 0,
            total,
            progress: progress.clone(),
            id: id.to_owned(),
        };
        let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(8);
        let compressor = tokio::task::spawn_blocking(move || {
            let mut tar = tar;
            let w = ChanWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK), hasher: Sha256::new(), n: 0 };
            let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::fast());
            let res = io::copy(&mut tar, &mut gz).and_then(|_| gz.finish()).and_then(|mut w| {
                w.send()?;
                Ok((format!("sha256:{}", hex::encode(w.hasher.finalize())), w.n))
            });
            if let Err(e) = &res {
                let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            res
        });
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let req = self
            .client
            .http(host)
            .patch(url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(Body::wrap_stream(stream));
        let sent = self.client.send_once(host, &Scope::push(repo), req).await;
        let compressed = compressor.await.map_err(|e| RegistryError::Internal(format!("compressor: {e}")))?;
        let (digest, size) = compressed.map_err(|e| RegistryError::Internal(format!("reading layer {chain}: {e}")))?;
        let resp = check_status(sent?, &format!("uploading layer {chain}")).await?;
        let mut url = location(&resp)?;
        url.query_pairs_mut().append_pair("digest", &digest);
        let req = self.client.http(host).put(url).header(CONTENT_LENGTH, 0);
        let resp = self.client.send_once(host, &Scope::push(repo), req).await?;
        check_status(resp, &format!("closing the upload of layer {chain}")).await?;
        Ok((digest, size))
    }
}

fn layer_desc(digest: &str, size: u64) -> Descriptor {
    Descriptor { media_type: DOCKER_LAYER_GZIP.to_owned(), digest: digest.to_owned(), size, platform: None, urls: None }
}

/// The upload location a registry answered, made absolute.
fn location(resp: &reqwest::Response) -> Result<Url> {
    let loc = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| RegistryError::BadResponse("upload answer without a Location".into()))?;
    resp.url().join(loc).map_err(|e| RegistryError::BadResponse(format!("upload location {loc:?}: {e}")))
}

/// The config must describe the chain being pushed.
fn check_config(config: &[u8], layers: &[(ChainId, DiffId)]) -> Result<()> {
    let c: manifest::Config = serde_json::from_slice(config)
        .map_err(|e| RegistryError::InvalidArgument(format!("the image's config is malformed: {e}")))?;
    let ours: Vec<String> = layers.iter().map(|(_, d)| d.to_string()).collect();
    if c.rootfs.diff_ids != ours {
        return Err(RegistryError::InvalidArgument(
            "the image's config rootfs.diff_ids do not match its layers".into(),
        ));
    }
    Ok(())
}

/// The layer's tar as the compressor reads it, reporting progress.
struct Counting {
    inner: graphdriver::TarReader,
    n: u64,
    reported: u64,
    total: Option<u64>,
    progress: Reporter,
    id: String,
}

impl io::Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        if let Some(total) = self.total
            && (self.n - self.reported >= 512 * 1024 || (k == 0 && self.n != self.reported))
        {
            self.reported = self.n;
            self.progress.bytes(&self.id, "Pushing", self.n, total);
        }
        Ok(k)
    }
}

/// The compressor's output: hashed, counted and sent in chunks.
struct ChanWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    hasher: Sha256,
    n: u64,
}

impl ChanWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.hasher.update(&chunk);
        self.n += chunk.len() as u64;
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChanWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
