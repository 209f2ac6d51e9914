//! A blob streamed from the registry straight into a layer registration:
//! an async task reads the HTTP body, hashes it and counts it, and hands
//! the chunks through a small bounded channel to a blocking [`Read`] that
//! the layer store decompresses and unpacks on its own thread. No temp
//! file, no whole-blob buffer: at most `CHUNKS` chunks sit in memory.
//!
//! The task checks the digest and the size the manifest states. A blob
//! that is longer, shorter or different fails the reader (so the unpack
//! stops and the store throws the layer away), and the task's verdict
//! says why, which the pull reports.

use std::io::{self, Read};

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::IDLE_TIMEOUT;
use crate::error::{RegistryError, Result};
use crate::progress::Reporter;

/// Chunks in flight between the download and the unpack.
const CHUNKS: usize = 32;
/// Report progress every this many bytes.
const REPORT_EVERY: u64 = 512 * 1024;

enum Msg {
    Data(Bytes),
    End,
}

/// The blocking end: what the layer store reads.
pub struct BlobReader {
    rx: mpsc::Receiver<io::Result<Msg>>,
    cur: Bytes,
    ended: bool,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(Msg::Data(b))) => self.cur = b,
                Some(Ok(Msg::End)) => self.ended = true,
                Some(Err(e)) => return Err(e),
                None => return Err(io::Error::other("blob download stopped before its end")),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        bytes::Buf::advance(&mut self.cur, n);
        Ok(n)
    }
}

/// How a download ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every byte arrived and matched the digest and size.
    Verified,
    /// The reader was dropped before the end (the store found the layer
    /// present and read nothing, or the unpack failed first).
    Abandoned,
}

/// Start streaming `resp` (the body of blob `digest`, `size` bytes) into a
/// reader. The handle's result is the download's verdict.
pub fn stream(
    resp: reqwest::Response,
    digest: &str,
    size: u64,
    progress: Reporter,
    id: String,
) -> (BlobReader, JoinHandle<Result<Verdict>>) {
    let (tx, rx) = mpsc::channel(CHUNKS);
    let digest = digest.to_owned();
    let task = tokio::spawn(async move {
        let res = pump(resp, &digest, size, &tx, &progress, &id).await;
        if let Err(e) = &res {
            // Fail the reader with the same words the pull reports.
            let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
        }
        res
    });
    (BlobReader { rx, cur: Bytes::new(), ended: false }, task)
}

async fn pump(
    resp: reqwest::Response,
    digest: &str,
    size: u64,
    tx: &mpsc::Sender<io::Result<Msg>>,
    progress: &Reporter,
    id: &str,
) -> Result<Verdict> {
    let mut body = resp.bytes_stream();
    let mut hasher = Sha256::new();
    let (mut n, mut reported) = (0u64, 0u64);
    loop {
        let next = tokio::time::timeout(IDLE_TIMEOUT, body.next()).await.map_err(|_| {
            RegistryError::BadResponse(format!("blob {digest}: no data for {}s", IDLE_TIMEOUT.as_secs()))
        })?;
        let chunk = match next {
            None => break,
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(RegistryError::BadResponse(format!("blob {digest}: download broke: {e}"))),
        };
        n += chunk.len() as u64;
        if n > size {
            return Err(RegistryError::Digest(format!(
                "blob {digest} is longer than the {size} bytes its manifest states"
            )));
        }
        hasher.update(&chunk);
        if tx.send(Ok(Msg::Data(chunk))).await.is_err() {
            return Ok(Verdict::Abandoned);
        }
        if n - reported >= REPORT_EVERY {
            reported = n;
            progress.bytes(id, "Downloading", n, size);
        }
    }
    if n != size {
        return Err(RegistryError::Digest(format!(
            "blob {digest} is truncated: {n} of the {size} bytes its manifest states"
        )));
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if got != digest {
        return Err(RegistryError::Digest(format!("blob {digest} does not match its digest: got {got}")));
    }
    progress.bytes(id, "Downloading", n, size);
    if tx.send(Ok(Msg::End)).await.is_err() {
        return Ok(Verdict::Abandoned);
    }
    Ok(Verdict::Verified)
}

/// Check `bytes` (a whole small blob or manifest) against `digest`.
pub fn verify(what: &str, digest: &str, bytes: &[u8]) -> Result<()> {
    let got = sha256_of(bytes);
    if got != digest {
        return Err(RegistryError::Digest(format!("{what} {digest} does not match its digest: got {got}")));
    }
    Ok(())
}

pub fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Validate a digest from a manifest before it goes into a URL.
pub fn check_digest(d: &str) -> Result<()> {
    match d.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        Some((alg, _)) if alg != "sha256" => Err(RegistryError::Unsupported(format!("digest algorithm of {d:?}"))),
        _ => Err(RegistryError::BadResponse(format!("malformed digest {d:?}"))),
    }
}
