//! `layerctl layer ...`: read-only layers.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hyper::Method;
use layer::LayerInfo;
use serde_json::Value;
use tokio::task::JoinSet;

use super::client::{CliError, CliResult, Client, copy_body, encode};
use super::{Format, LayerCmd, from_value, output, print_json, progress};
use crate::api::DeletedResponse;

pub async fn run(client: &Client, cmd: LayerCmd) -> CliResult<ExitCode> {
    match cmd {
        LayerCmd::Import { parent, diff_id, file } => import(client, parent, diff_id, &file).await?,
        LayerCmd::Export { chain, output } => {
            save(client, &format!("/v1/layers/{}/tar", encode(&chain)), output.as_deref()).await?;
        }
        LayerCmd::Ls { format } => ls(client, format).await?,
        LayerCmd::Inspect { chain } => {
            let v: Value = client.call(Method::GET, &format!("/v1/layers/{}", encode(&chain))).await?;
            print_json(&v)?;
        }
        LayerCmd::Rm { chains } => return Ok(rm(client, chains).await),
    }
    Ok(ExitCode::SUCCESS)
}

/// `/v1/layers?parent=..&diff_id=..`, leaving out what is not given.
pub fn import_path(parent: Option<&str>, diff_id: Option<&str>) -> String {
    let query: Vec<String> = [("parent", parent), ("diff_id", diff_id)]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v))))
        .collect();
    if query.is_empty() { "/v1/layers".to_owned() } else { format!("/v1/layers?{}", query.join("&")) }
}

async fn import(client: &Client, parent: Option<String>, diff_id: Option<String>, file: &Path) -> CliResult<()> {
    let path = import_path(parent.as_deref(), diff_id.as_deref());
    let v: Value = if file == Path::new("-") {
        let bar = progress::transfer("import", None);
        client.upload(&path, bar.wrap_async_read(tokio::io::stdin())).await?
    } else {
        let f =
            tokio::fs::File::open(file).await.map_err(|e| CliError::other(&format!("open {}", file.display()), e))?;
        let len = f.metadata().await.ok().filter(std::fs::Metadata::is_file).map(|m| m.len());
        let bar = progress::transfer("import", len);
        client.upload(&path, bar.wrap_async_read(f)).await?
    };
    let info: LayerInfo = from_value(v)?;
    outln!("{}", info.chain_id);
    Ok(())
}

async fn ls(client: &Client, format: Format) -> CliResult<()> {
    let v: Value = client.call(Method::GET, "/v1/layers").await?;
    if format == Format::Json {
        return print_json(&v);
    }
    let mut layers: Vec<LayerInfo> = from_value(v)?;
    layers.sort_by_cached_key(|l| (l.depth, l.chain_id.to_string()));
    let rows: Vec<Vec<String>> = layers
        .iter()
        .map(|l| {
            vec![
                output::short_id(&l.chain_id.to_string()),
                l.parent.as_ref().map_or_else(|| "-".to_owned(), |p| output::short_id(&p.to_string())),
                l.depth.to_string(),
                output::human_size(l.size),
                l.references.to_string(),
                l.children.to_string(),
                l.rw_layers.to_string(),
            ]
        })
        .collect();
    output::text(&output::table(&["CHAIN ID", "PARENT", "DEPTH", "SIZE", "REFS", "CHILDREN", "RW"], &rows));
    Ok(())
}

/// Release every layer at once; a line per layer, exit 1 if any failed
/// (3 if the daemon could not be reached).
async fn rm(client: &Client, chains: Vec<String>) -> ExitCode {
    let mut set = JoinSet::new();
    for (i, chain) in chains.iter().enumerate() {
        let client = client.clone();
        let path = format!("/v1/layers/{}", encode(chain));
        set.spawn(async move { (i, client.call::<DeletedResponse>(Method::DELETE, &path).await) });
    }
    let mut results: Vec<Option<CliResult<DeletedResponse>>> = chains.iter().map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, r)) => results[i] = Some(r),
            Err(e) => eprintln!("layerctl: task failed: {e}"),
        }
    }
    let mut code = 0u8;
    for (chain, result) in chains.iter().zip(results) {
        match result {
            Some(Ok(d)) => {
                outln!("Released: {chain}");
                for id in d.deleted {
                    outln!("Deleted: {id}");
                }
            }
            Some(Err(e)) => {
                eprintln!("layerctl: {chain}: {e}");
                code = code.max(e.exit_code());
            }
            None => code = code.max(1),
        }
    }
    ExitCode::from(code)
}

/// Stream a tar from `path` to `output` (stdout when absent or `-`). A file
/// is written under a temporary name and renamed into place only when the
/// whole tar arrived, so a failed transfer leaves nothing behind.
pub async fn save(client: &Client, path: &str, output: Option<&Path>) -> CliResult<()> {
    let resp = client.open(path).await?;
    let len = resp.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    let bar = progress::transfer("export", len);
    let Some(file) = output.filter(|f| *f != Path::new("-")) else {
        let mut out = tokio::io::stdout();
        copy_body(resp, &mut out, &bar).await?;
        return Ok(());
    };
    let tmp = partial_name(file);
    let mut out =
        tokio::fs::File::create(&tmp).await.map_err(|e| CliError::other(&format!("create {}", tmp.display()), e))?;
    let copied = copy_body(resp, &mut out, &bar).await;
    let synced = match copied {
        Ok(_) => out.sync_all().await.map_err(|e| CliError::other(&format!("write {}", tmp.display()), e)),
        Err(e) => Err(e),
    };
    drop(out);
    let placed = synced.and_then(|()| {
        std::fs::rename(&tmp, file).map_err(|e| CliError::other(&format!("rename to {}", file.display()), e))
    });
    if placed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    placed
}

fn partial_name(file: &Path) -> PathBuf {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    file.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_paths() {
        assert_eq!(import_path(None, None), "/v1/layers");
        assert_eq!(import_path(Some("sha256:ab"), None), "/v1/layers?parent=sha256:ab");
        assert_eq!(import_path(Some("a"), Some("b c")), "/v1/layers?parent=a&diff_id=b%20c");
    }

    #[test]
    fn partial_files_sit_next_to_the_target() {
        let p = partial_name(Path::new("/tmp/out.tar"));
        assert_eq!(p.parent(), Some(Path::new("/tmp")));
        assert!(p.file_name().unwrap().to_string_lossy().starts_with(".out.tar."));
    }
}
