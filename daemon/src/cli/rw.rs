//! `layerctl rw ...`: writable (container) layers.

use std::process::ExitCode;

use graphdriver::{Change, ChangeKind};
use hyper::Method;
use layer::{LayerInfo, RwInfo};
use serde_json::Value;

use super::client::{CliResult, Client, encode};
use super::layer::save;
use super::{Format, RwCmd, from_value, output, print_json};
use crate::api::{BulkDeleteRequest, BulkDeleteResponse, CreateRwRequest, MountResponse};

pub async fn run(client: &Client, cmd: RwCmd) -> CliResult<ExitCode> {
    match cmd {
        RwCmd::Create { name, parent, init } => {
            let req = CreateRwRequest { name, parent, init };
            let info: RwInfo = client.call_json(Method::POST, "/v1/rw", &req).await?;
            outln!("{}", info.name);
        }
        RwCmd::Ls { format } => ls(client, format).await?,
        RwCmd::Inspect { name } => {
            let v: Value = client.call(Method::GET, &rw_path(&name, "")).await?;
            print_json(&v)?;
        }
        RwCmd::Mount { name } => {
            let m: MountResponse = client.call(Method::POST, &rw_path(&name, "/mount")).await?;
            outln!("{}", m.path.display());
        }
        RwCmd::Unmount { name } => client.call_unit(Method::POST, &rw_path(&name, "/unmount")).await?,
        RwCmd::Changes { name, format } => {
            let v: Value = client.call(Method::GET, &rw_path(&name, "/changes")).await?;
            if format == Format::Json {
                print_json(&v)?;
            } else {
                let changes: Vec<Change> = from_value(v)?;
                for c in changes {
                    outln!("{}", change_line(&c));
                }
            }
        }
        RwCmd::Diff { name, output } => save(client, &rw_path(&name, "/tar"), output.as_deref()).await?,
        RwCmd::Commit { name } => {
            let info: LayerInfo = client.call(Method::POST, &rw_path(&name, "/commit")).await?;
            outln!("{}", info.chain_id);
        }
        RwCmd::Rm { names } => return rm(client, names).await,
    }
    Ok(ExitCode::SUCCESS)
}

fn rw_path(name: &str, suffix: &str) -> String {
    format!("/v1/rw/{}{suffix}", encode(name))
}

/// Docker's `diff` notation: `A /path`, `C /path`, `D /path`.
pub fn change_line(c: &Change) -> String {
    let letter = match c.kind {
        ChangeKind::Add => 'A',
        ChangeKind::Modify => 'C',
        ChangeKind::Delete => 'D',
    };
    format!("{letter} {}", c.path)
}

async fn ls(client: &Client, format: Format) -> CliResult<()> {
    let v: Value = client.call(Method::GET, "/v1/rw").await?;
    if format == Format::Json {
        return print_json(&v);
    }
    let mut rws: Vec<RwInfo> = from_value(v)?;
    rws.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    let rows: Vec<Vec<String>> = rws
        .iter()
        .map(|r| {
            vec![
                r.name.to_string(),
                r.parent.as_ref().map_or_else(|| "-".to_owned(), |p| output::short_id(&p.to_string())),
                r.mount_count.to_string(),
                r.mount_path.as_ref().map_or_else(|| "-".to_owned(), |p| p.display().to_string()),
            ]
        })
        .collect();
    output::text(&output::table(&["NAME", "PARENT", "MOUNTS", "PATH"], &rows));
    Ok(())
}

/// One bulk request; the names removed on stdout, failures on stderr.
async fn rm(client: &Client, names: Vec<String>) -> CliResult<ExitCode> {
    let req = BulkDeleteRequest { names };
    let resp: BulkDeleteResponse = client.call_json(Method::POST, "/v1/rw/delete", &req).await?;
    let mut failed = false;
    for r in resp.results {
        if r.ok {
            outln!("{}", r.name);
        } else {
            failed = true;
            eprintln!("layerctl: {}: {}", r.name, r.error.as_deref().unwrap_or("failed"));
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_lines() {
        let c = |path: &str, kind| Change { path: path.into(), kind };
        assert_eq!(change_line(&c("/etc/passwd", ChangeKind::Modify)), "C /etc/passwd");
        assert_eq!(change_line(&c("/new", ChangeKind::Add)), "A /new");
        assert_eq!(change_line(&c("/gone", ChangeKind::Delete)), "D /gone");
    }

    #[test]
    fn names_are_encoded_in_paths() {
        assert_eq!(rw_path("web", "/mount"), "/v1/rw/web/mount");
        assert_eq!(rw_path("a/b", ""), "/v1/rw/a%2Fb");
    }
}
