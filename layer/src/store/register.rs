//! Registration: staged creation with no store lock held, duplicate
//! suppression, publish under the layer's key lock; and the exact tar export.

use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};

use graphdriver::{CacheId, CreateOpts, IoContext, TarReader};
use tracing::{debug, info, warn};

use super::graph::{LayerMeta, Published};
use super::release::Freed;
use super::{FlightKey, Inner, blocking, blocking_shared, layer_info};
use crate::checkpoint::CheckpointHasher;
use crate::compress::{Compression, decompressed};
use crate::digest::{ChainId, DiffId, Digest};
use crate::error::{LayerStoreError, Result};
use crate::flight::Role;
use crate::metadata::{LayerDb, LayerRecord, TAR_SPLIT, remove_any};
use crate::pipelined;
use crate::tarsplit;
use crate::types::{LayerInfo, RegisterOpts};

/// A layer unpacked into its driver dir, metadata written in a tx dir.
struct Staged {
    meta: Arc<LayerMeta>,
    tx: PathBuf,
    /// The caller takes a lease, not a reference.
    lease: bool,
}

impl Inner {
    pub(super) async fn register(self: &Arc<Self>, tar: TarReader, opts: RegisterOpts) -> Result<LayerInfo> {
        let parent = match &opts.parent {
            Some(p) => Some(self.layers.lock().pin_child(p)?),
            None => None,
        };
        // From here on the parent pin is ours: drop it on every path that
        // does not hand it to a new layer.
        match self.register_pinned(tar, &opts, parent.as_ref()).await {
            Ok((info, pin_consumed)) => {
                if !pin_consumed {
                    self.unpin_child(parent.as_ref()).await;
                }
                Ok(info)
            }
            Err(e) => {
                self.unpin_child(parent.as_ref()).await;
                Err(e)
            }
        }
    }

    /// Returns the layer and whether the parent pin moved to a new layer.
    async fn register_pinned(
        self: &Arc<Self>,
        tar: TarReader,
        opts: &RegisterOpts,
        parent: Option<&Arc<LayerMeta>>,
    ) -> Result<(LayerInfo, bool)> {
        if let Some(p) = parent
            && p.depth >= crate::MAX_DEPTH
        {
            return Err(LayerStoreError::MaxDepthExceeded { max: crate::MAX_DEPTH });
        }
        let parent_chain = parent.map(|p| &p.chain_id);
        let key = match (&opts.diff_id, &opts.blob_digest) {
            (Some(d), _) => FlightKey::Chain(ChainId::of(parent_chain, d)),
            (None, Some(b)) => FlightKey::Blob(parent_chain.cloned(), b.clone()),
            (None, None) => return self.unpack_and_publish(tar, opts, parent).await,
        };
        let mut tar = Some(tar);
        loop {
            if let FlightKey::Chain(chain) = &key {
                // Already here: a new reference, no unpack (like a pull that
                // finds the layer present).
                if self.layers.lock().get(chain).is_some()
                    && let Ok(info) = self.take(chain, opts.lease).await
                {
                    return Ok((info, false));
                }
            }
            match self.flights.join(&key).await {
                Role::Leader(leader) => {
                    let tar = tar.take().ok_or_else(|| LayerStoreError::Internal("tar consumed twice".into()))?;
                    let res = self.unpack_and_publish(tar, opts, parent).await;
                    if let Ok((info, _)) = &res {
                        leader.succeed(info.chain_id.clone());
                    }
                    return res;
                }
                Role::Joined(chain) => match self.take(&chain, opts.lease).await {
                    Ok(info) => {
                        debug!(chain_id = %chain, "registration merged with a concurrent identical one");
                        return Ok((info, false));
                    }
                    // Released between the leader's publish and our retain.
                    Err(LayerStoreError::LayerNotFound(_)) => continue,
                    Err(e) => return Err(e),
                },
            }
        }
    }

    async fn unpack_and_publish(
        self: &Arc<Self>,
        tar: TarReader,
        opts: &RegisterOpts,
        parent: Option<&Arc<LayerMeta>>,
    ) -> Result<(LayerInfo, bool)> {
        let cache_id = CacheId::random();
        let db = self.db.clone();
        let tx = blocking(move || db.begin_tx()).await?;
        self.layers.lock().busy.mark([&cache_id]);
        match self.stage(&cache_id, &tx, tar, opts, parent).await {
            // `publish` unmarks the id as it inserts the layer, or hands it to
            // `discard`, which unmarks it once the driver dir is gone.
            Ok(staged) => self.publish(staged).await,
            Err(e) => {
                // `stage` removed the driver dir before returning.
                self.layers.lock().busy.unmark([&cache_id]);
                self.discard(None, tx).await;
                Err(e)
            }
        }
    }

    /// Throw away staged work in the background: the driver dir and the tx dir.
    async fn discard(self: &Arc<Self>, cache_id: Option<CacheId>, tx: PathBuf) {
        let inner = self.clone();
        self.defer(async move {
            if let Some(id) = cache_id {
                if let Err(e) = inner.driver.remove(&id).await {
                    warn!(cache_id = %id, error = %e, "removing staged driver layer failed");
                }
                inner.layers.lock().busy.unmark([&id]);
            }
            let _ = blocking(move || remove_any(&tx)).await;
        })
        .await;
    }

    /// Create the driver dir and unpack into it; no store lock is held.
    async fn stage(
        &self,
        cache_id: &CacheId,
        tx: &Path,
        tar: TarReader,
        opts: &RegisterOpts,
        parent: Option<&Arc<LayerMeta>>,
    ) -> Result<Staged> {
        let parent_cache = parent.map(|p| &p.cache_id);
        self.driver.create(cache_id, parent_cache, &CreateOpts::default()).await?;
        let res = async {
            let (diff_id, size) = self.apply(cache_id, parent_cache, tar, tx).await?;
            if let Some(stated) = &opts.diff_id
                && *stated != diff_id
            {
                return Err(LayerStoreError::DiffIdMismatch { stated: stated.to_string(), got: diff_id.to_string() });
            }
            let chain_id = ChainId::of(parent.map(|p| &p.chain_id), &diff_id);
            let meta = Arc::new(LayerMeta {
                chain_id,
                diff_id: diff_id.clone(),
                parent: parent.cloned(),
                cache_id: cache_id.clone(),
                size,
                chain_size: size + parent.map_or(0, |p| p.chain_size),
                depth: parent.map_or(1, |p| p.depth + 1),
            });
            let rec = LayerRecord {
                diff_id,
                size,
                cache_id: cache_id.clone(),
                parent: parent.map(|p| p.chain_id.clone()),
                refs: Some(if opts.lease { 0 } else { 1 }),
            };
            let (db, txp) = (self.db.clone(), tx.to_path_buf());
            blocking(move || db.write_layer_record(&txp, &rec)).await?;
            Ok(meta)
        }
        .await;
        match res {
            Ok(meta) => Ok(Staged { meta, tx: tx.to_path_buf(), lease: opts.lease }),
            Err(e) => {
                // Nothing partial may remain: remove the driver dir now.
                if let Err(re) = self.driver.remove(cache_id).await {
                    warn!(cache_id = %cache_id, error = %re, "removing failed layer's driver dir failed");
                }
                Err(e)
            }
        }
    }

    /// Decompress, hash, record tar-split and apply through the driver, all in
    /// one pass over the input. Returns the DiffID and the applied size.
    async fn apply(
        &self,
        cache_id: &CacheId,
        parent_cache: Option<&CacheId>,
        tar: TarReader,
        tx: &Path,
    ) -> Result<(DiffId, u64)> {
        let (compression, plain) = blocking_shared(move || {
            decompressed(tar).map_err(|e| LayerStoreError::InvalidInput(format!("reading layer data: {e}")))
        })
        .await?;
        // Decompression on its own thread, a few chunks ahead, overlapping
        // with the extractor and the recorder instead of taking turns with
        // the extraction on one thread (7% off a gzip chain import).
        let plain: Box<dyn Read + Send> = match compression {
            Compression::None => plain,
            Compression::Gzip | Compression::Zstd => Box::new(pipelined::spawn(plain)),
        };
        let (chunks_tx, chunks_rx) = sync_channel::<Vec<u8>>(16);
        let ts_path = tx.join(TAR_SPLIT);
        let db = self.db.clone();
        let recorder = tokio::task::spawn_blocking(move || record_tar_split(&db, chunks_rx, &ts_path));
        let tee = Arc::new(Mutex::new(Tee {
            inner: plain,
            sink: Some(chunks_tx),
            recorder_stopped: false,
            input_error: None,
        }));
        // Buffer in front of the tee so the recorder (which also hashes, on
        // the other core) gets large chunks however small the extractor's
        // reads are. Bytes the buffer reads ahead are sent once, and the
        // drain below continues after them.
        let buffered = std::io::BufReader::with_capacity(256 * 1024, SharedTee(tee.clone()));
        let applied = self.driver.apply_diff(cache_id, parent_cache, Box::new(buffered)).await;
        // Drain what the extractor left (the end blocks and record padding
        // belong to the DiffID and the tar-split too), then close the channel.
        let ok = applied.is_ok();
        let drained = blocking_shared(move || {
            let mut t = tee.lock().unwrap_or_else(PoisonError::into_inner);
            let res = if ok { io::copy(&mut *t, &mut io::sink()).map(|_| ()) } else { Ok(()) };
            t.sink = None;
            Ok((res, t.recorder_stopped, t.input_error.take()))
        })
        .await?;
        // The caller's stream failed (a client gone or idle, bad compression):
        // that is the reason, whatever the extractor made of it.
        if let Some(why) = drained.2 {
            let _ = recorder.await;
            return Err(LayerStoreError::InvalidInput(format!("reading layer data: {why}")));
        }
        let recorded = recorder.await.map_err(|e| LayerStoreError::Internal(format!("tar-split task: {e}")))?;
        let (size, digest) = match (applied, recorded) {
            (Ok(size), Ok(digest)) => (size, digest),
            (Ok(_), Err(e)) => return Err(e),
            // The extractor failed because the recorder rejected the stream:
            // the recorder's reason is the precise one.
            (Err(_), Err(e)) if drained.1 => return Err(e),
            (Err(e), _) => return Err(e.into()),
        };
        drained.0.map_err(|e| LayerStoreError::InvalidInput(format!("reading layer data: {e}")))?;
        Ok((DiffId(digest), size))
    }

    /// Make the staged layer visible, under its ChainID's key lock.
    async fn publish(self: &Arc<Self>, staged: Staged) -> Result<(LayerInfo, bool)> {
        let chain = staged.meta.chain_id.clone();
        let key = self.chain_keys.lock(&chain).await;
        loop {
            let found = self.layers.lock().publish(&chain, staged.lease);
            match found {
                Published::Removing(old) => match self.unpublish_locked(old).await {
                    Ok(done) => {
                        self.delete_in_background(super::release::RwDirs::default(), done.into_iter().collect()).await;
                    }
                    Err(e) => {
                        // The freed layer's metadata is still in the way.
                        drop(key);
                        self.discard(Some(staged.meta.cache_id.clone()), staged.tx).await;
                        return Err(e);
                    }
                },
                Published::Existing(existing, generation) => {
                    // We hold the key: persist now (covering any retains
                    // waiting for it); a lease persists nothing.
                    let res = if staged.lease { Ok(()) } else { self.persist_refs_locked(&chain, generation).await };
                    drop(key);
                    self.discard(Some(staged.meta.cache_id.clone()), staged.tx).await;
                    if let Err((e, freed)) = res {
                        self.finish_freeing(freed).await;
                        return Err(e);
                    }
                    info!(chain_id = %chain, "registered content already present; new reference");
                    return Ok((self.info_of(&existing.chain_id)?, false));
                }
                Published::Absent => {
                    let (db, tx, c) = (self.db.clone(), staged.tx.clone(), chain.clone());
                    // An error means nothing was published; `Ok`, that the
                    // rename happened (a failed fsync after it included).
                    if let Err(e) = blocking(move || db.commit_layer(&tx, &c)).await {
                        drop(key);
                        self.discard(Some(staged.meta.cache_id.clone()), staged.tx).await;
                        return Err(e);
                    }
                    let meta = staged.meta.clone();
                    let info = {
                        let mut g = self.layers.lock();
                        g.insert(meta.clone(), staged.lease);
                        g.busy.unmark([&meta.cache_id]);
                        layer_info(&meta, g.get(&chain).map(|(_, c)| c).unwrap_or_default())
                    };
                    info!(chain_id = %chain, diff_id = %meta.diff_id, size = meta.size, "registered layer");
                    return Ok((info, true));
                }
            }
        }
    }

    pub(super) async fn persist_refs(&self, chain: &ChainId, refs: u64) -> Result<()> {
        let (db, c) = (self.db.clone(), chain.clone());
        blocking(move || db.write_refs(&c, refs)).await
    }

    /// Make a reference of generation `want` durable; caller holds the key.
    /// Group commit: one write covers every reference taken before it, so
    /// twenty concurrent retains of one layer cost one or two fsyncs, not
    /// twenty. On failure the caller's reference is taken back; what that
    /// frees is returned for the caller to hand to `finish_freeing` once it
    /// has dropped the key (only the holder of a chain's key unpublishes
    /// that chain).
    async fn persist_refs_locked(self: &Arc<Self>, chain: &ChainId, want: u64) -> Result<(), (LayerStoreError, Freed)> {
        let Some((refs, generation)) = self.layers.lock().refs_to_persist(chain, want) else {
            return Ok(());
        };
        match self.persist_refs(chain, refs).await {
            Ok(()) => {
                self.layers.lock().mark_persisted(chain, generation);
                Ok(())
            }
            Err(e) => {
                let freed = self.layers.lock().undo_retain(chain);
                Err((e, self.unpublish_own(chain, freed).await))
            }
        }
    }

    /// A reference, or a lease, on a layer that exists.
    async fn take(self: &Arc<Self>, chain: &ChainId, lease: bool) -> Result<LayerInfo> {
        if !lease {
            return self.retain(chain).await;
        }
        self.layers.lock().lease(chain)?;
        self.info_of(chain)
    }

    pub(super) async fn retain(self: &Arc<Self>, chain: &ChainId) -> Result<LayerInfo> {
        // The reference is taken in memory first (so the layer can't be
        // freed), then made durable under the key, possibly by someone else.
        let (_, want) = self.layers.lock().retain(chain)?;
        let key = self.chain_keys.lock(chain).await;
        let res = self.persist_refs_locked(chain, want).await;
        drop(key);
        if let Err((e, freed)) = res {
            self.finish_freeing(freed).await;
            return Err(e);
        }
        self.info_of(chain)
    }
}

/// The recorder thread: hash every byte (the DiffID, with checkpoints for a
/// parallel export check) and record the tar-split. The disassembler reads
/// its input to the end, so on success the digest covers the whole stream.
fn record_tar_split(db: &LayerDb, chunks: Receiver<Vec<u8>>, path: &Path) -> Result<Digest> {
    let file = db.create_file(path)?;
    let mut w = BufWriter::new(file);
    let mut input = ChannelReader { rx: chunks, buf: Vec::new(), pos: 0, hasher: CheckpointHasher::default() };
    tarsplit::disassemble(&mut input, &mut w)?;
    let file = w.into_inner().map_err(|e| e.into_error()).ctx("write", path)?;
    db.sync_file(&file, path)?;
    let (digest, checkpoints) = input.hasher.finish();
    if let Some(dir) = path.parent() {
        db.write_checkpoints(dir, &checkpoints.to_record())?;
    }
    Ok(digest)
}

/// Copies to the tar-split recorder every byte the extractor reads.
struct Tee {
    inner: TarReader,
    sink: Option<SyncSender<Vec<u8>>>,
    recorder_stopped: bool,
    /// The first error reading the caller's stream.
    input_error: Option<String>,
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.input_error.get_or_insert_with(|| e.to_string());
                return Err(e);
            }
        };
        if n > 0
            && let Some(sink) = &self.sink
            && sink.send(buf[..n].to_vec()).is_err()
        {
            self.recorder_stopped = true;
            return Err(io::Error::new(io::ErrorKind::InvalidData, "tar-split recorder stopped"));
        }
        Ok(n)
    }
}

struct SharedTee(Arc<Mutex<Tee>>);

impl Read for SharedTee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).read(buf)
    }
}

struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    hasher: CheckpointHasher,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.recv() {
                Ok(b) => {
                    self.hasher.update(&b);
                    self.buf = b;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
