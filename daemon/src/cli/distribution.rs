//! `layerctl image pull` and `image push`: send the request, then follow
//! the daemon's progress lines — one bar per layer on a terminal, like
//! `docker pull`; plain `id: status` lines otherwise — until the last
//! line, the result or the error.

use std::collections::HashMap;
use std::io::IsTerminal;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Response, StatusCode};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;

use super::client::{CliError, CliResult, Client};
use super::{Format, print_json};
use crate::api::{ErrorBody, PullRequest, PushRequest};

const BAR: &str = "{prefix}: {msg} [{bar:30}] {bytes}/{total_bytes}";

pub async fn pull(client: &Client, reference: String, platform: Option<String>, format: Format) -> CliResult<()> {
    let body = serde_json::to_vec(&PullRequest { reference, platform }).map_err(|e| CliError::other("encode", e))?;
    let resp = post(client, "/v1/images/pull", body).await?;
    let result = follow(resp, format).await?;
    match format {
        Format::Json => print_json(&result),
        Format::Table => {
            let digest = result["digest"].as_str().unwrap_or_default();
            let names = result["image"]["names"].as_array().cloned().unwrap_or_default();
            outln!("Digest: {digest}");
            for n in names.iter().filter_map(Value::as_str) {
                outln!("Pulled {n}");
            }
            Ok(())
        }
    }
}

pub async fn push(client: &Client, reference: String, format: Format) -> CliResult<()> {
    let body =
        serde_json::to_vec(&PushRequest { reference: reference.clone() }).map_err(|e| CliError::other("encode", e))?;
    let resp = post(client, "/v1/images/push", body).await?;
    let result = follow(resp, format).await?;
    match format {
        Format::Json => print_json(&result),
        Format::Table => {
            outln!(
                "{reference}: digest: {} size: {}",
                result["digest"].as_str().unwrap_or_default(),
                result["size"].as_u64().unwrap_or_default()
            );
            Ok(())
        }
    }
}

async fn post(client: &Client, path: &str, body: Vec<u8>) -> CliResult<Response<Incoming>> {
    let body = Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync();
    client.send(Method::POST, path, Some("application/json"), body).await
}

/// Show progress lines until the last one; its `result`, or its error.
async fn follow(resp: Response<Incoming>, format: Format) -> CliResult<Value> {
    let mut view = View::new(format);
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    loop {
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line = buf.split_to(pos + 1);
            let v: Value =
                serde_json::from_slice(&line).map_err(|e| CliError::other("unexpected reply from layerd", e))?;
            if let Some(r) = v.get("result") {
                view.finish();
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                view.finish();
                let e: ErrorBody =
                    serde_json::from_value(e.clone()).map_err(|e| CliError::other("unexpected reply", e))?;
                let kind =
                    e.kind.as_deref().and_then(crate::api::parse_kind).unwrap_or(graphdriver::ErrorKind::Internal);
                return Err(CliError::Server { status: StatusCode::OK, kind, message: e.message });
            }
            view.show(&v);
        }
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    buf.extend_from_slice(&d);
                }
            }
            Some(Err(e)) => return Err(CliError::Lost(format!("the progress stream broke: {e}"))),
            None => return Err(CliError::Lost("the progress stream ended without a result".into())),
        }
    }
}

/// Bars on a terminal; plain lines (on stderr, so stdout keeps the result) otherwise.
struct View {
    bars: Option<(MultiProgress, HashMap<String, ProgressBar>)>,
    quiet: bool,
}

impl View {
    fn new(format: Format) -> View {
        let tty = std::io::stderr().is_terminal();
        View {
            bars: tty.then(|| (MultiProgress::new(), HashMap::new())),
            quiet: matches!(format, Format::Json) && !tty,
        }
    }

    fn show(&mut self, p: &Value) {
        let id = p["id"].as_str().unwrap_or_default().to_owned();
        let status = p["status"].as_str().unwrap_or_default().to_owned();
        let (current, total) = (p["current"].as_u64(), p["total"].as_u64());
        match &mut self.bars {
            Some((multi, bars)) => {
                let bar = bars.entry(id.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(0));
                    b.set_style(
                        ProgressStyle::with_template("{prefix}: {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    b.set_prefix(id.clone());
                    b
                });
                if let (Some(c), Some(t)) = (current, total) {
                    if bar.length() != Some(t) {
                        bar.set_length(t);
                        if let Ok(s) = ProgressStyle::with_template(BAR) {
                            bar.set_style(s.progress_chars("=> "));
                        }
                    }
                    bar.set_position(c);
                } else if let Ok(s) = ProgressStyle::with_template("{prefix}: {msg}") {
                    bar.set_style(s);
                }
                bar.set_message(status);
            }
            None if self.quiet => {}
            None => {
                // Byte counts only at the end of a transfer: a log, not a film.
                if current.is_some() && current != total {
                    return;
                }
                eprintln!("{id}: {status}");
            }
        }
    }

    fn finish(&mut self) {
        if let Some((_, bars)) = &self.bars {
            for b in bars.values() {
                b.finish();
            }
        }
    }
}
