//! Export: a layer's exact original tar, rebuilt from its tar-split record
//! and the files on disk, verified against the DiffID while streaming.

use std::fs::File;
use std::io::{self, Read};
use std::sync::{Arc, Weak};

use graphdriver::{CacheId, IoContext, TarReader};

use super::{Inner, blocking};
use crate::checkpoint::{ParallelVerifier, Segments};
use crate::digest::{ChainId, VerifyingReader};
use crate::error::{LayerStoreError, Result};
use crate::pipelined;
use crate::tarsplit::{Assembler, DirGetter};

impl Inner {
    pub(super) async fn tar_stream(self: &Arc<Self>, chain: &ChainId) -> Result<TarReader> {
        let meta = {
            let g = self.layers.lock();
            g.get(chain).map(|(m, _)| m.clone()).ok_or_else(|| self.not_found(chain))?
        };
        let (dir, put) = match self.driver.diff_getter(&meta.cache_id).await? {
            Some(dir) => (dir, None),
            None => {
                let dir = self.driver.get(&meta.cache_id, "").await?;
                (dir, Some(PutOnDrop { driver: self.driver.clone(), id: meta.cache_id.clone() }))
            }
        };
        let path = self.db.tar_split_path(chain);
        let (db, c) = (self.db.clone(), chain.clone());
        let (file, checkpoints) =
            blocking(move || Ok((File::open(&path).ctx("open", &path)?, db.read_checkpoints(&c)))).await?;
        let asm = Assembler::new(Box::new(file), DirGetter::new(dir));
        // The assembler (file reads, CRC-64) runs on its own thread, a few
        // chunks ahead; the SHA-256 check against the DiffID runs on the
        // others. A mismatch reaches the caller as the error of its last
        // read, never as a clean end of stream.
        let verified: TarReader = match checkpoints {
            // Segments verified on every core (see `checkpoint`), handed
            // over whole from the assembler's thread.
            Some(cp) => {
                let chunks = pipelined::spawn_chunked(asm, cp.segment());
                Box::new(ParallelVerifier::new(chunks, cp, meta.diff_id.0.clone()))
            }
            // A layer without checkpoints (Docker's): one sequential check.
            None => Box::new(VerifyingReader::new(pipelined::spawn(asm), meta.diff_id.0.clone())),
        };
        let owner = Arc::downgrade(self);
        Ok(Box::new(Guarded {
            inner: verified,
            _put: put,
            owner,
            chain: chain.clone(),
            cache_id: meta.cache_id.clone(),
        }))
    }
}

/// Whole chunks for the parallel verifier: no copy into segment buffers.
impl Segments for graphdriver::pipe::PipeReader {
    fn next_segment(&mut self, _size: usize) -> io::Result<Vec<u8>> {
        self.next_chunk()
    }
}

/// Calls the driver's `put` when an export that needed `get` is dropped.
struct PutOnDrop {
    driver: Arc<dyn graphdriver::Driver>,
    id: CacheId,
}

impl Drop for PutOnDrop {
    fn drop(&mut self) {
        let (driver, id) = (self.driver.clone(), self.id.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = driver.put(&id).await;
            });
        }
    }
}

/// The export's reader. An export does not pin its layer: a release may
/// delete the files under it. Then the read fails (a file is missing, the
/// DiffID does not match) and that failure is reported as what it is —
/// "layer released" — not as damage to a stored layer.
struct Guarded<R> {
    inner: R,
    _put: Option<PutOnDrop>,
    owner: Weak<Inner>,
    chain: ChainId,
    cache_id: CacheId,
}

impl<R> Guarded<R> {
    /// The layer is no longer the one this export started on.
    fn released(&self) -> bool {
        let Some(inner) = self.owner.upgrade() else { return true };
        let g = inner.layers.lock();
        g.get(&self.chain).is_none_or(|(m, _)| m.cache_id != self.cache_id)
    }
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::Interrupted || !self.released() {
                return e;
            }
            tracing::debug!(chain_id = %self.chain, error = %e, "export cut off: the layer was released");
            io::Error::new(io::ErrorKind::NotFound, LayerStoreError::Released(self.chain.to_string()))
        })
    }
}
