//! The streaming loader: reads an archive tar once, in whatever member order
//! it comes, and registers each layer straight from the stream when its
//! parent is ready; a member that arrives before it can be used is kept —
//! in memory up to [`INLINE_BYTES`], else spooled to a file under the image
//! store's `tmp/` — and registered as soon as it can be. `docker save`
//! (20.10) writes `manifest.json` last, so its layers are all spooled when
//! streamed; [`super::order`] turns a file or dir into load order first.
//!
//! Every layer is registered with its DiffID stated (so concurrent loads of
//! the same layer unpack once and a wrong DiffID fails) and an OCI blob is
//! checked against its digest. A layer already in the store is not read at
//! all. On any failure, every reference the load took is released: no
//! image, no layer is left behind.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use graphdriver::pipe::{CHUNK, SendError, pipe};
use graphdriver::{IoContext, TarReader};
use layer::digest::VerifyingReader;
use layer::{ChainId, Digest, RegisterOpts};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tracing::{debug, warn};

use super::plan::{self, Built, Lookup, Plan, PlannedLayer};
use super::{INLINE_BYTES, MAX_INLINE_TOTAL, MAX_METADATA_BYTES, alias_target, bad, clean_member};
use crate::error::{ImageStoreError, Result};
use crate::names;
use crate::store::ImageStore;
use crate::types::{ImageId, NewImage};

/// Members an archive may hold at most (bounds the loader's indexes).
const MAX_MEMBERS: usize = 1_000_000;

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    pub images: Vec<LoadedImage>,
    /// Layers unpacked by this load.
    pub layers_registered: u64,
    /// Layers the store had already (not read).
    pub layers_existing: u64,
    /// Bytes written to the spool because they came before they could be used.
    pub bytes_spooled: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedImage {
    pub id: ImageId,
    pub names: Vec<String>,
}

/// A member kept for later.
enum Kept {
    Inline(Bytes),
    Spooled { path: PathBuf, size: u64, digest: Digest },
}

struct Loader<'a> {
    store: &'a ImageStore,
    rt: Handle,
    spool: Spool,
    kept: HashMap<String, Kept>,
    inline_total: u64,
    aliases: HashMap<String, String>,
    /// Members read once straight into a registration.
    consumed: HashSet<String>,
    members: usize,
    plan: Option<Plan>,
    dirty: bool,
    /// Layers this load holds a reference on, in the order taken.
    held: Vec<ChainId>,
    held_set: HashSet<ChainId>,
    report: LoadReport,
}

/// A private spool dir, removed on drop.
struct Spool {
    dir: PathBuf,
    next: u64,
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(dir = %self.dir.display(), error = %e, "removing load spool failed");
        }
    }
}

/// Load an archive tar from `input` into `store`. Blocking: run it on a
/// blocking thread of a tokio runtime (it calls into the store through
/// `rt`). `spool_root` is a dir on the store's filesystem.
pub fn load(store: &ImageStore, input: impl Read, rt: Handle, spool_root: &Path) -> Result<LoadReport> {
    let dir = spool_root.join(format!("load-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).ctx("create dir", &dir)?;
    let mut l = Loader {
        store,
        rt,
        spool: Spool { dir, next: 0 },
        kept: HashMap::new(),
        inline_total: 0,
        aliases: HashMap::new(),
        consumed: HashSet::new(),
        members: 0,
        plan: None,
        dirty: false,
        held: Vec::new(),
        held_set: HashSet::new(),
        report: LoadReport::default(),
    };
    let res = l.run(input);
    // Whatever happened, drop the load's own leases: on success the images
    // hold theirs; on failure this frees everything the load added. (A
    // crash drops them too: leases live in memory only, and start-up
    // collects the layers nothing else holds.)
    for c in l.held.iter().rev() {
        let layers = l.store.layers().clone();
        if let Err(e) = l.rt.block_on(layers.unlease(c)) {
            warn!(chain_id = %c, error = %e, "dropping a load's lease failed");
        }
    }
    res.map(|()| l.report)
}

impl Lookup for Loader<'_> {
    fn metadata(&mut self, name: &str) -> Result<Option<Bytes>> {
        let name = self.resolve(name)?;
        match self.kept.get(&name) {
            None => Ok(None),
            Some(Kept::Inline(b)) => Ok(Some(b.clone())),
            Some(Kept::Spooled { path, size, .. }) => {
                if *size > MAX_METADATA_BYTES {
                    return Err(bad(format!("{name}: {size} bytes, more than the limit of {MAX_METADATA_BYTES}")));
                }
                Ok(Some(Bytes::from(std::fs::read(path).ctx("read", path)?)))
            }
        }
    }

    fn resolve(&self, name: &str) -> Result<String> {
        super::resolve(&self.aliases, name)
    }
}

impl Loader<'_> {
    fn run(&mut self, input: impl Read) -> Result<()> {
        let mut ar = tar::Archive::new(input);
        let entries = ar.entries().map_err(|e| bad(format!("reading the archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(format!("reading the archive: {e}")))?;
            self.members += 1;
            if self.members > MAX_MEMBERS {
                return Err(bad(format!("more than {MAX_MEMBERS} members")));
            }
            let path = entry.path().map_err(|e| bad(format!("member name: {e}")))?.into_owned();
            let name = clean_member(&path)?;
            let kind = entry.header().entry_type();
            match kind {
                tar::EntryType::Directory => continue,
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name()
                        .map_err(|e| bad(format!("link {name:?}: {e}")))?
                        .ok_or_else(|| bad(format!("link {name:?} has no target")))?;
                    let to = alias_target(&name, &target, kind == tar::EntryType::Link)?;
                    self.aliases.insert(name, to);
                    // Names resolve differently now: read the plan again.
                    self.plan = None;
                    self.dirty = true;
                    continue;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {}
                other => return Err(bad(format!("member {name:?} is a {other:?}: an image archive holds files only"))),
            }
            if self.kept.contains_key(&name) || self.consumed.contains(&name) {
                return Err(bad(format!("member {name:?} appears twice")));
            }
            let size = entry.size();
            self.try_plan(false)?;
            if let Some(plan) = &self.plan {
                let positions = plan.positions(&name);
                if positions.is_empty() && size > INLINE_BYTES {
                    debug!(member = %name, "not used by any image; skipped");
                    continue;
                }
                if !positions.is_empty() && self.stream_layer(&name, &mut entry, positions)? {
                    self.consumed.insert(name);
                    self.advance()?;
                    continue;
                }
            }
            self.keep(name, &mut entry, size)?;
            if self.plan.is_some() {
                self.advance()?;
            }
        }
        self.try_plan(true)?;
        self.advance()?;
        self.finish()
    }

    fn try_plan(&mut self, final_: bool) -> Result<()> {
        if self.plan.is_some() || !(self.dirty || final_) {
            return Ok(());
        }
        self.dirty = false;
        match plan::build(self, final_)? {
            Built::Ready(p) => self.plan = Some(p),
            Built::Missing(m) if final_ => return Err(bad(format!("the archive lacks {m}"))),
            Built::Missing(_) => {}
        }
        Ok(())
    }

    fn keep(&mut self, name: String, entry: &mut impl Read, size: u64) -> Result<()> {
        let kept = if size <= INLINE_BYTES && self.inline_total + size <= MAX_INLINE_TOTAL {
            let mut v = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut v).map_err(|e| bad(format!("reading member {name:?}: {e}")))?;
            self.inline_total += v.len() as u64;
            Kept::Inline(Bytes::from(v))
        } else {
            self.spool.next += 1;
            let path = self.spool.dir.join(self.spool.next.to_string());
            let mut f = File::create(&path).ctx("create", &path)?;
            let mut h = layer::digest::Hasher::new();
            let mut buf = vec![0u8; 256 << 10];
            let mut n_total = 0u64;
            loop {
                let n = entry.read(&mut buf).map_err(|e| bad(format!("reading member {name:?}: {e}")))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                f.write_all(&buf[..n]).ctx("write", &path)?;
                n_total += n as u64;
            }
            self.report.bytes_spooled += n_total;
            Kept::Spooled { path, size: n_total, digest: h.finish() }
        };
        self.kept.insert(name, kept);
        self.dirty = true;
        Ok(())
    }

    /// Take a lease on `chain` if the store has it.
    fn retain_existing(&mut self, chain: &ChainId) -> Result<bool> {
        if self.held_set.contains(chain) {
            return Ok(true);
        }
        match self.store.layers().lease(chain) {
            Ok(_) => {
                self.hold(chain.clone());
                self.report.layers_existing += 1;
                Ok(true)
            }
            Err(layer::LayerStoreError::LayerNotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn hold(&mut self, chain: ChainId) {
        if self.held_set.insert(chain.clone()) {
            self.held.push(chain);
        } else {
            // A second lease on a chain we hold: give it back now.
            let layers = self.store.layers().clone();
            if let Err(e) = self.rt.block_on(layers.unlease(&chain)) {
                warn!(chain_id = %chain, error = %e, "dropping a duplicate lease failed");
            }
        }
    }

    /// Positions of `member` still to obtain, after taking what the store has.
    fn needed(
        &mut self,
        positions: Vec<(Option<ChainId>, PlannedLayer)>,
    ) -> Result<Vec<(Option<ChainId>, PlannedLayer)>> {
        let mut out = Vec::new();
        for (parent, l) in positions {
            // A position on a parent not held yet can't be looked up (its
            // layer may exist on another parent); else the store may have it.
            let parent_held = parent.as_ref().is_none_or(|p| self.held_set.contains(p));
            if !parent_held || !self.retain_existing(&l.chain_id)? {
                out.push((parent, l));
            }
        }
        Ok(out)
    }

    /// Register `member` straight from the stream if every position still
    /// needing it is the same layer on a parent we hold. `false`: keep it.
    fn stream_layer(
        &mut self,
        member: &str,
        entry: &mut impl Read,
        positions: Vec<(Option<ChainId>, PlannedLayer)>,
    ) -> Result<bool> {
        let needed = self.needed(positions)?;
        let Some((parent, first)) = needed.first().cloned() else {
            debug!(member, "layer already in the store; not read");
            return Ok(true);
        };
        let ready = parent.as_ref().is_none_or(|p| self.held_set.contains(p));
        if !ready || needed.iter().any(|(_, l)| l.chain_id != first.chain_id) {
            return Ok(false);
        }
        let (mut w, r) = pipe(8);
        let task = self.spawn_register(Box::new(r), parent, &first);
        match w.send_from(entry, CHUNK) {
            Ok(()) => {
                // An error here: the registration gave up; its error says why.
                let _ = w.finish();
            }
            Err(SendError::Read(e)) => {
                w.fail(io::Error::new(e.kind(), format!("archive truncated or unreadable: {e}")));
            }
            // The registration gave up; its error says why.
            Err(SendError::ReaderGone) => {}
        }
        self.join_register(task, member, &first)?;
        Ok(true)
    }

    fn spawn_register(
        &self,
        reader: TarReader,
        parent: Option<ChainId>,
        l: &PlannedLayer,
    ) -> tokio::task::JoinHandle<layer::Result<layer::LayerInfo>> {
        let reader: TarReader = match &l.blob_digest {
            Some(d) => Box::new(VerifyingReader::new(reader, d.clone())),
            None => reader,
        };
        let opts =
            RegisterOpts { parent, diff_id: Some(l.diff_id.clone()), blob_digest: l.blob_digest.clone(), lease: true };
        let layers = self.store.layers().clone();
        self.rt.spawn(async move { layers.register(reader, opts).await })
    }

    fn join_register(
        &mut self,
        task: tokio::task::JoinHandle<layer::Result<layer::LayerInfo>>,
        member: &str,
        l: &PlannedLayer,
    ) -> Result<()> {
        let info =
            self.rt.block_on(task).map_err(|e| ImageStoreError::Internal(format!("register task: {e}")))?.map_err(
                |e| match e.kind() {
                    graphdriver::ErrorKind::InvalidArgument => bad(format!("layer {member}: {e}")),
                    _ => e.into(),
                },
            )?;
        if info.chain_id != l.chain_id {
            return Err(ImageStoreError::Internal(format!("registered {} for {}", info.chain_id, l.chain_id)));
        }
        self.report.layers_registered += 1;
        self.hold(info.chain_id);
        Ok(())
    }

    /// Register kept layers whose parents are now held, until none is left
    /// that can go.
    fn advance(&mut self) -> Result<()> {
        let Some(plan) = self.plan.clone() else { return Ok(()) };
        loop {
            let mut progressed = false;
            for img in &plan.images {
                let mut parent: Option<ChainId> = None;
                for l in &img.layers {
                    if !self.held_set.contains(&l.chain_id) {
                        if parent.as_ref().is_some_and(|p| !self.held_set.contains(p)) {
                            break;
                        }
                        if self.retain_existing(&l.chain_id)? {
                            progressed = true;
                        } else if self.kept.contains_key(&l.member) {
                            self.register_kept(parent.clone(), l)?;
                            progressed = true;
                        } else {
                            break;
                        }
                    }
                    parent = Some(l.chain_id.clone());
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    fn register_kept(&mut self, parent: Option<ChainId>, l: &PlannedLayer) -> Result<()> {
        let reader: TarReader = match self.kept.get(&l.member) {
            Some(Kept::Inline(b)) => {
                check_blob(&l.member, l.blob_digest.as_ref(), &Digest::of(b))?;
                Box::new(io::Cursor::new(b.clone()))
            }
            Some(Kept::Spooled { path, digest, .. }) => {
                check_blob(&l.member, l.blob_digest.as_ref(), digest)?;
                Box::new(File::open(path).ctx("open", path)?)
            }
            None => return Err(bad(format!("the archive lacks {}", l.member))),
        };
        let task = self.spawn_register(reader, parent, l);
        self.join_register(task, &l.member.clone(), l)
    }

    /// The end of the archive: every layer of every image must now be held.
    fn finish(&mut self) -> Result<()> {
        let plan = self.plan.clone().ok_or_else(|| bad("no images in the archive"))?;
        for img in &plan.images {
            let mut parent: Option<ChainId> = None;
            for l in &img.layers {
                if !self.held_set.contains(&l.chain_id) {
                    if !self.consumed.contains(&l.member) {
                        return Err(bad(format!("the archive lacks {}", l.member)));
                    }
                    // Read once straight into another position (the same
                    // layer on another parent): its exact bytes are in the
                    // store under any held chain with the same DiffID.
                    self.register_again(parent.clone(), l)?;
                }
                parent = Some(l.chain_id.clone());
            }
        }
        for img in &plan.images {
            let new = NewImage { config: img.config.clone(), manifest: img.manifest.clone(), registry_digest: None };
            let info = self.rt.block_on(self.store.put(new, &img.names))?;
            self.report.images.push(LoadedImage { id: info.id, names: img.names.iter().map(names::full).collect() });
        }
        Ok(())
    }

    fn register_again(&mut self, parent: Option<ChainId>, l: &PlannedLayer) -> Result<()> {
        let layers = self.store.layers().clone();
        let source = self
            .held
            .iter()
            .find(|c| layers.get(c).is_ok_and(|i| i.diff_id == l.diff_id))
            .cloned()
            .ok_or_else(|| bad(format!("the archive lacks {}", l.member)))?;
        let reader = self.rt.block_on(layers.tar_stream(&source))?;
        let mut l = l.clone();
        l.blob_digest = None; // the stored bytes are the uncompressed tar
        let task = self.spawn_register(reader, parent, &l);
        self.join_register(task, &l.member.clone(), &l)
    }
}

fn check_blob(member: &str, want: Option<&Digest>, got: &Digest) -> Result<()> {
    match want {
        Some(w) if w != got => Err(bad(format!("blob {member} does not match its digest: it is {got}"))),
        _ => Ok(()),
    }
}
