//! Pull: resolve the manifest (through an index, for a platform) and the
//! config, then download every layer straight into the layer store.
//!
//! Each layer is one future: it opens its blob's download at once (so
//! downloads overlap), then waits for **its own parent** only, then
//! registers the stream with its DiffID stated, so the store's duplicate
//! suppression keys on the ChainID. Across concurrent pulls, [`Flights`]
//! makes one pull the leader of each ChainID; the others wait for it and
//! take a reference — each layer is fetched and unpacked once.
//!
//! A pull holds one store **lease** (a reference in memory only: a crash
//! drops it and start-up collects what nothing else holds) per layer while
//! it runs; at the end it keeps only the top layer's (the image record
//! takes its own) and drops the rest (children hold their parents). On
//! failure it drops all of them, so nothing it registered outlives it.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;
use layer::{ChainId, DiffId, LayerStoreError, RegisterOpts};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::Registry;
use crate::blob;
use crate::client::{Scope, check_status, read_capped};
use crate::error::{RegistryError, Result};
use crate::flight::{self, Join};
use crate::manifest::{self, Descriptor, Document, MAX_CONFIG, MAX_MANIFEST, Manifest, Platform};
use crate::progress::{Reporter, short};
use crate::reference::{Reference, tag_or_digest};

/// A manifest and config, fetched and verified; nothing registered yet.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub reference: Reference,
    /// Digest of the image manifest (the platform's, under an index).
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest: Bytes,
    /// Digest of the index (manifest list) the manifest was picked from, if any.
    pub index_digest: Option<String>,
    pub config_digest: String,
    pub config: Bytes,
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<DiffId>,
}

/// A pulled image: every layer registered.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub resolved: Resolved,
    /// The top layer, with one lease held for the caller, who gives it back
    /// with `Store::unlease` (`None` for an image without layers).
    pub top_layer: Option<ChainId>,
    /// Every layer's ChainID, base first.
    pub chain_ids: Vec<ChainId>,
}

impl Registry {
    /// Resolve and pull `reference` for `platform` (the host's by default).
    pub async fn pull(
        &self,
        reference: &Reference,
        platform: Option<&Platform>,
        progress: &Reporter,
    ) -> Result<Pulled> {
        let resolved = self.resolve(reference, platform, progress).await?;
        self.pull_layers(resolved, progress).await
    }

    /// Fetch and verify the manifest and config of `reference`. Concurrent
    /// resolves of one reference and platform share one set of requests.
    pub async fn resolve(
        &self,
        reference: &Reference,
        platform: Option<&Platform>,
        progress: &Reporter,
    ) -> Result<Resolved> {
        let want = platform.cloned().unwrap_or_else(Platform::host);
        let key = (reference.to_string(), want.to_string());
        loop {
            match self.resolves.join(&key) {
                Join::Follower(rx) => match flight::wait(rx).await {
                    Some(Ok(r)) => {
                        progress.status(&short(&r.manifest_digest), format!("Resolved {}", r.manifest_digest));
                        return Ok((*r).clone());
                    }
                    // Failures are cheap to repeat, and repeating keeps the
                    // error's kind (a missing tag stays a 404 for every puller).
                    Some(Err(_)) => return self.resolve_now(reference, &want, progress).await,
                    None => continue,
                },
                Join::Leader(leader) => {
                    let res = self.resolve_now(reference, &want, progress).await;
                    match &res {
                        Ok(r) => leader.finish(Ok(Arc::new(r.clone()))),
                        Err(e) => leader.finish(Err(e.to_string())),
                    }
                    return res;
                }
            }
        }
    }

    async fn resolve_now(&self, reference: &Reference, want: &Platform, progress: &Reporter) -> Result<Resolved> {
        let host = reference.registry();
        let repo = reference.repository();
        let (mut digest, mut media_type, mut body) = self.fetch_manifest(host, repo, tag_or_digest(reference)).await?;
        let mut doc = manifest::parse(&media_type, &body)?;
        let mut index_digest = None;
        if let Document::Index(index) = &doc {
            index_digest = Some(digest.clone());
            let entry = index.pick(want)?.clone();
            blob::check_digest(&entry.digest)?;
            debug!(platform = %want, digest = %entry.digest, "index entry picked");
            (digest, media_type, body) = self.fetch_manifest(host, repo, &entry.digest).await?;
            doc = manifest::parse(&media_type, &body)?;
        }
        let m = match doc {
            Document::Manifest(m) => m,
            // An index inside an index (or one naming itself): Docker pulls
            // none of these, and following them could loop.
            Document::Index(_) => {
                return Err(RegistryError::BadResponse(format!(
                    "{reference}: an index entry names another index; nested indexes are not pulled"
                )));
            }
        };
        progress.status(&short(&digest), format!("Resolved {digest}"));
        let (config, diff_ids) = self.fetch_config(host, repo, &m).await?;
        let media_type = if media_type.is_empty() { m.media_type.clone().unwrap_or_default() } else { media_type };
        Ok(Resolved {
            reference: reference.clone(),
            manifest_digest: digest,
            manifest_media_type: media_type,
            manifest: body,
            index_digest,
            config_digest: m.config.digest.clone(),
            config,
            layers: m.layers,
            diff_ids,
        })
    }

    /// GET a manifest (capped at 4 MiB, like distribution's client) and check
    /// it against the digest when asked by digest. Returns (digest, type, body).
    async fn fetch_manifest(&self, host: &str, repo: &str, reference: &str) -> Result<(String, String, Bytes)> {
        let what = format!("manifest {repo}:{reference}");
        let resp = self
            .client
            .send(host, &Scope::pull(repo), |http, base| {
                http.get(format!("{base}/v2/{repo}/manifests/{reference}")).header(ACCEPT, manifest::ACCEPT)
            })
            .await?;
        let resp = check_status(resp, &what).await?;
        let ct = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let body = read_capped(resp, MAX_MANIFEST, &what).await?;
        let digest = if reference.contains(':') {
            blob::verify("manifest", reference, &body)?;
            reference.to_owned()
        } else {
            blob::sha256_of(&body)
        };
        Ok((digest, ct, body))
    }

    async fn fetch_config(&self, host: &str, repo: &str, m: &Manifest) -> Result<(Bytes, Vec<DiffId>)> {
        let d = &m.config;
        blob::check_digest(&d.digest)?;
        if !matches!(d.media_type.as_str(), manifest::DOCKER_CONFIG | manifest::OCI_CONFIG | "") {
            return Err(RegistryError::Unsupported(format!(
                "config media type {:?}: not a container image",
                d.media_type
            )));
        }
        if d.size > MAX_CONFIG {
            return Err(RegistryError::BadResponse(format!(
                "config of {} bytes is over the {MAX_CONFIG}-byte limit",
                d.size
            )));
        }
        let resp = self.get_blob(host, repo, &d.digest).await?;
        let body = read_capped(resp, d.size, &format!("config {}", d.digest)).await?;
        if body.len() as u64 != d.size {
            return Err(RegistryError::Digest(format!(
                "config {} is {} bytes, its manifest says {}",
                d.digest,
                body.len(),
                d.size
            )));
        }
        blob::verify("config", &d.digest, &body)?;
        let config: manifest::Config = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::BadResponse(format!("malformed image config {}: {e}", d.digest)))?;
        if config.rootfs.kind != "layers" {
            return Err(RegistryError::BadResponse(format!(
                "config rootfs type {:?}, want \"layers\"",
                config.rootfs.kind
            )));
        }
        if config.rootfs.diff_ids.len() != m.layers.len() {
            return Err(RegistryError::BadResponse(format!(
                "the manifest has {} layers but the config {} diff_ids",
                m.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        if m.layers.len() > layer::MAX_DEPTH {
            return Err(RegistryError::BadResponse(format!(
                "{} layers: more than the {} a chain may hold",
                m.layers.len(),
                layer::MAX_DEPTH
            )));
        }
        let diff_ids = config
            .rootfs
            .diff_ids
            .iter()
            .map(|s| {
                DiffId::parse(s).map_err(|_| RegistryError::BadResponse(format!("config diff_id {s:?} is malformed")))
            })
            .collect::<Result<Vec<_>>>()?;
        for l in &m.layers {
            blob::check_digest(&l.digest)?;
            manifest::check_layer_media_type(&l.media_type)?;
        }
        Ok((body, diff_ids))
    }

    pub(crate) async fn get_blob(&self, host: &str, repo: &str, digest: &str) -> Result<reqwest::Response> {
        let resp = self
            .client
            .send(host, &Scope::pull(repo), |http, base| http.get(format!("{base}/v2/{repo}/blobs/{digest}")))
            .await?;
        check_status(resp, &format!("blob {digest}")).await
    }

    /// Register every layer of `resolved`, each waiting only for its parent.
    pub async fn pull_layers(&self, resolved: Resolved, progress: &Reporter) -> Result<Pulled> {
        let mut chains: Vec<ChainId> = Vec::with_capacity(resolved.diff_ids.len());
        for d in &resolved.diff_ids {
            chains.push(ChainId::of(chains.last(), d));
        }
        let Some(top) = chains.last().cloned() else {
            return Ok(Pulled { resolved, top_layer: None, chain_ids: chains });
        };
        // The whole chain is what a pull needs a reference on: when another
        // pull is already bringing in this top layer, wait for it and take
        // one reference, instead of one per layer taken and dropped again.
        loop {
            if self.store.get(&top).is_ok() {
                match self.store.lease(&top) {
                    Ok(_) => {
                        for l in &resolved.layers {
                            progress.status(&short(&l.digest), "Already exists");
                        }
                        return Ok(Pulled { resolved, top_layer: Some(top), chain_ids: chains });
                    }
                    Err(LayerStoreError::LayerNotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            match self.images.join(&top) {
                Join::Follower(rx) => match flight::wait(rx).await {
                    Some(Ok(())) => continue,
                    // The leader failed: do the work ourselves (per-layer
                    // suppression still shares what it can).
                    Some(Err(_)) | None => break,
                },
                Join::Leader(leader) => {
                    let res = self.pull_chain(resolved, chains, progress).await;
                    leader.finish(res.as_ref().map(|_| ()).map_err(ToString::to_string));
                    return res;
                }
            }
        }
        self.pull_chain(resolved, chains, progress).await
    }

    async fn pull_chain(&self, resolved: Resolved, chains: Vec<ChainId>, progress: &Reporter) -> Result<Pulled> {
        for l in &resolved.layers {
            progress.status(&short(&l.digest), "Waiting");
        }
        let mut futures = Vec::new();
        let mut parent_rx: Option<oneshot::Receiver<bool>> = None;
        for i in 0..chains.len() {
            let (tx, rx) = oneshot::channel();
            let job = LayerJob {
                resolved: &resolved,
                index: i,
                chain: &chains[i],
                parent: i.checked_sub(1).map(|p| &chains[p]),
                progress,
            };
            futures.push(self.pull_layer(job, parent_rx.take(), tx));
            parent_rx = Some(rx);
        }
        let results = join_all(futures).await;
        let held: Vec<ChainId> = results.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
        if let Some(e) = results.into_iter().filter_map(Result::err).find(|e| !is_parent_failure(e)) {
            self.release_all(&held).await;
            return Err(e);
        }
        if held.len() != chains.len() {
            self.release_all(&held).await;
            return Err(RegistryError::Internal("a layer failed without a reason".into()));
        }
        // Keep the top layer's reference; the chain holds the rest.
        if let Some((_, below)) = held.split_last() {
            self.release_all(below).await;
        }
        Ok(Pulled { resolved, top_layer: chains.last().cloned(), chain_ids: chains })
    }

    async fn release_all(&self, chains: &[ChainId]) {
        for c in chains.iter().rev() {
            if let Err(e) = self.store.unlease(c).await {
                warn!(chain_id = %c, error = %e, "releasing a pull's reference failed");
            }
        }
    }

    /// One layer: its result is the ChainID with a reference held.
    async fn pull_layer(
        &self,
        job: LayerJob<'_>,
        parent_done: Option<oneshot::Receiver<bool>>,
        done: oneshot::Sender<bool>,
    ) -> Result<ChainId> {
        let res = self.pull_layer_inner(&job, parent_done).await;
        let _ = done.send(res.is_ok());
        res.map(|()| job.chain.clone())
    }

    async fn pull_layer_inner(
        &self,
        job: &LayerJob<'_>,
        mut parent_done: Option<oneshot::Receiver<bool>>,
    ) -> Result<()> {
        let id = short(&job.desc().digest);
        loop {
            // Present already (another pull, a load, an earlier pull): a reference, no download.
            if self.store.get(job.chain).is_ok() {
                match self.store.lease(job.chain) {
                    Ok(_) => {
                        job.progress.status(&id, "Already exists");
                        return Ok(());
                    }
                    Err(LayerStoreError::LayerNotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            match self.flights.join(job.chain) {
                Join::Follower(rx) => match flight::wait(rx).await {
                    // Registered by the leader: loop to take our reference.
                    Some(Ok(())) => continue,
                    Some(Err(why)) => return Err(relabel(&why, &id)),
                    None => continue,
                },
                Join::Leader(leader) => {
                    let res = self.download_and_register(job, &id, parent_done.take()).await;
                    match &res {
                        Ok(()) => leader.finish(Ok(())),
                        // Not this layer's fault: let a follower (whose own
                        // parent may be fine) take over.
                        Err(e) if is_parent_failure(e) => drop(leader),
                        Err(e) => leader.finish(Err(e.to_string())),
                    }
                    return res;
                }
            }
        }
    }

    async fn download_and_register(
        &self,
        job: &LayerJob<'_>,
        id: &str,
        parent_done: Option<oneshot::Receiver<bool>>,
    ) -> Result<()> {
        let desc = job.desc();
        let reference = &job.resolved.reference;
        // Open the download now; the bounded channel holds it back until
        // the parent is in and the unpack reads.
        let resp = self.get_blob(reference.registry(), reference.repository(), &desc.digest).await?;
        let (reader, verdict) = blob::stream(resp, &desc.digest, desc.size, job.progress.clone(), id.to_owned());
        if let Some(rx) = parent_done
            && !rx.await.unwrap_or(false)
        {
            return Err(RegistryError::Internal(PARENT_FAILED.into()));
        }
        job.progress.status(id, "Extracting");
        let opts = RegisterOpts {
            parent: job.parent.cloned(),
            diff_id: Some(job.resolved.diff_ids[job.index].clone()),
            blob_digest: layer::Digest::parse(&desc.digest).ok(),
            lease: true,
        };
        let registered = self.store.register(Box::new(reader), opts).await;
        let verdict = verdict.await.map_err(|e| RegistryError::Internal(format!("download task: {e}")))?;
        match (registered, verdict) {
            (Ok(info), Ok(_)) => {
                debug!(chain_id = %info.chain_id, blob = %desc.digest, "layer pulled");
                self.known.remember_pulled(&info.chain_id, desc, reference).await;
                job.progress.status(id, "Pull complete");
                Ok(())
            }
            (Ok(info), Err(e)) => {
                let _ = self.store.unlease(&info.chain_id).await;
                Err(e)
            }
            // The download's reason is the precise one (the store saw only a broken stream).
            (Err(_), Err(e)) => Err(e),
            (Err(LayerStoreError::DiffIdMismatch { stated, got }), Ok(_)) => Err(RegistryError::Digest(format!(
                "layer {} unpacks to {got}, but the image config says its diff_id is {stated}",
                desc.digest
            ))),
            (Err(e), Ok(_)) => Err(e.into()),
        }
    }
}

const PARENT_FAILED: &str = "the parent layer failed";

fn is_parent_failure(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Internal(m) if m == PARENT_FAILED)
}

/// A follower reports the leader's failure as its own.
fn relabel(why: &str, id: &str) -> RegistryError {
    RegistryError::BadResponse(format!("layer {id} (pulled concurrently by another pull): {why}"))
}

struct LayerJob<'a> {
    resolved: &'a Resolved,
    index: usize,
    chain: &'a ChainId,
    parent: Option<&'a ChainId>,
    progress: &'a Reporter,
}

impl LayerJob<'_> {
    fn desc(&self) -> &Descriptor {
        &self.resolved.layers[self.index]
    }
}
