//! The naive diff: compare a layer's tree with its parent's, both reached
//! through `get`/`put`. Used by drivers without a native diff.

use std::path::PathBuf;

use crate::archive::{self, ApplyOptions, WhiteoutFormat};
use crate::driver::{Change, Driver, TarReader};
use crate::error::{DriverError, IoContext, Result};
use crate::id::CacheId;

/// Run `f` on the mounted trees of `id` and `parent`, always putting them back.
async fn with_trees<D, T, F>(d: &D, id: &CacheId, parent: Option<&CacheId>, f: F) -> Result<T>
where
    D: Driver + ?Sized,
    T: Send + 'static,
    F: FnOnce(PathBuf, Option<PathBuf>) -> Result<T> + Send + 'static,
{
    let layer = d.get(id, "").await?;
    let parent_dir = match parent {
        Some(p) => match d.get(p, "").await {
            Ok(dir) => Some(dir),
            Err(e) => {
                let _ = d.put(id).await;
                return Err(e);
            }
        },
        None => None,
    };
    let res = tokio::task::spawn_blocking(move || f(layer, parent_dir))
        .await
        .map_err(|e| DriverError::Other(format!("blocking task failed: {e}")))
        .and_then(|r| r);
    if let Some(p) = parent {
        let _ = d.put(p).await;
    }
    let _ = d.put(id).await;
    res
}

pub async fn changes<D: Driver + ?Sized>(d: &D, id: &CacheId, parent: Option<&CacheId>) -> Result<Vec<Change>> {
    with_trees(d, id, parent, |layer, parent| Ok(archive::changes_dirs(&layer, parent.as_deref())?)).await
}

pub async fn diff_size<D: Driver + ?Sized>(d: &D, id: &CacheId, parent: Option<&CacheId>) -> Result<u64> {
    with_trees(d, id, parent, |layer, parent| {
        let changes = archive::changes_dirs(&layer, parent.as_deref())?;
        Ok(archive::changes_size(&layer, &changes))
    })
    .await
}

/// The tar is spooled to an unlinked scratch file so the trees can be put
/// back before the caller reads it.
pub async fn diff<D: Driver + ?Sized>(d: &D, id: &CacheId, parent: Option<&CacheId>) -> Result<TarReader> {
    let scratch = d.scratch_dir();
    with_trees(d, id, parent, move |layer, parent| {
        let mut file = tempfile::tempfile_in(&scratch).ctx("create scratch file in", &scratch)?;
        let changes = archive::changes_dirs(&layer, parent.as_deref())?;
        archive::export_changes(&layer, &changes, &mut file)?;
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(0)).ctx("rewind scratch file in", &scratch)?;
        Ok(Box::new(file) as TarReader)
    })
    .await
}

pub async fn apply_diff<D: Driver + ?Sized>(
    d: &D,
    id: &CacheId,
    _parent: Option<&CacheId>,
    mut tar: TarReader,
) -> Result<u64> {
    let layer = d.get(id, "").await?;
    let res = tokio::task::spawn_blocking(move || {
        let opts = ApplyOptions { whiteouts: WhiteoutFormat::Remove };
        archive::apply_tar(&layer, &mut tar, &opts)
    })
    .await
    .map_err(|e| DriverError::Other(format!("blocking task failed: {e}")));
    let _ = d.put(id).await;
    Ok(res??)
}
