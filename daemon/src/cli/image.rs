//! `layerctl image ...`: images — load and save archives, list, inspect, tag
//! and remove.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ::images::archive::LoadReport;
use ::images::{ImageInfo, RemoveReport};
use hyper::Method;
use serde_json::Value;

use super::client::{CliError, CliResult, Client, encode};
use super::{Format, ImageCmd, from_value, output, print_json, progress};
use crate::api::TagRequest;

pub async fn run(client: &Client, cmd: ImageCmd) -> CliResult<ExitCode> {
    match cmd {
        ImageCmd::Pull { reference, platform, format } => {
            super::distribution::pull(client, reference, platform, format).await?
        }
        ImageCmd::Push { reference, format } => super::distribution::push(client, reference, format).await?,
        ImageCmd::Load { input } => load(client, input.as_deref()).await?,
        ImageCmd::Save { names, output, format } => {
            let names: Vec<String> = names.iter().map(|n| encode(n)).collect();
            let path = format!("/v1/images/save?names={}&format={}", names.join(","), format.as_str());
            super::layer::save(client, &path, output.as_deref()).await?;
        }
        ImageCmd::Ls { format } => ls(client, format).await?,
        ImageCmd::Inspect { reference } => {
            let v: Value = client.call(Method::GET, &format!("/v1/images/{}", encode(&reference))).await?;
            print_json(&v)?;
        }
        ImageCmd::Tag { source, target } => {
            let _: Value = client.call_json(Method::POST, "/v1/images/tag", &TagRequest { source, target }).await?;
        }
        ImageCmd::Rm { references } => return Ok(rm(client, &references).await),
    }
    Ok(ExitCode::SUCCESS)
}

/// A file or a directory is indexed here and sent in load order (read in
/// place, so the daemon spools nothing); stdin is sent as it comes.
async fn load(client: &Client, input: Option<&Path>) -> CliResult<()> {
    let report: LoadReport = match input.filter(|p| *p != Path::new("-")) {
        None => {
            let bar = progress::transfer("load", None);
            client.upload("/v1/images/load", bar.wrap_async_read(tokio::io::stdin())).await?
        }
        Some(path) => {
            let p: PathBuf = path.to_path_buf();
            let src = tokio::task::spawn_blocking(move || ::images::archive::order::Seekable::open(&p))
                .await
                .map_err(|e| CliError::other("index the archive", e))?
                .map_err(|e| CliError::other(&format!("read {}", path.display()), e))?;
            let (tx, rx) = tokio::io::duplex(1 << 20);
            let writing = tokio::task::spawn_blocking(move || src.write_ordered(tokio_util::io::SyncIoBridge::new(tx)));
            let bar = progress::transfer("load", None);
            let sent = client.upload("/v1/images/load", bar.wrap_async_read(rx)).await;
            let written = writing.await.map_err(|e| CliError::other("send the archive", e))?;
            // The daemon's answer says more than a broken pipe here.
            let report = sent?;
            written.map_err(|e| CliError::other(&format!("read {}", path.display()), e))?;
            report
        }
    };
    for img in &report.images {
        if img.names.is_empty() {
            outln!("Loaded image ID: {}", img.id);
        }
        for n in &img.names {
            outln!("Loaded image: {n}");
        }
    }
    Ok(())
}

async fn ls(client: &Client, format: Format) -> CliResult<()> {
    let v: Value = client.call(Method::GET, "/v1/images").await?;
    if format == Format::Json {
        return print_json(&v);
    }
    let images: Vec<ImageInfo> = from_value(v)?;
    let mut rows: Vec<Vec<String>> = Vec::new();
    for i in &images {
        let names = if i.names.is_empty() { vec!["<none>".to_owned()] } else { i.names.clone() };
        for n in names {
            rows.push(vec![
                n,
                output::short_id(&i.id.to_string()),
                i.diff_ids.len().to_string(),
                output::human_size(i.size),
            ]);
        }
    }
    rows.sort();
    output::text(&output::table(&["NAME", "IMAGE ID", "LAYERS", "SIZE"], &rows));
    Ok(())
}

/// Remove each reference in turn; a line per name untagged and image
/// deleted, exit 1 if any failed (3 if the daemon could not be reached).
async fn rm(client: &Client, references: &[String]) -> ExitCode {
    let mut code = 0u8;
    for r in references {
        match client.call::<RemoveReport>(Method::DELETE, &format!("/v1/images/{}", encode(r))).await {
            Ok(rep) => {
                for n in rep.untagged {
                    outln!("Untagged: {n}");
                }
                for id in rep.deleted {
                    outln!("Deleted: {id}");
                }
            }
            Err(e) => {
                eprintln!("layerctl: {r}: {e}");
                code = code.max(e.exit_code());
            }
        }
    }
    ExitCode::from(code)
}
