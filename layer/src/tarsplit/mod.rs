//! tar-split: record a tar stream's headers and padding so the exact original
//! bytes can be rebuilt later from that record plus the extracted files.
//!
//! The record is tar-split's JSON entry format (newline-delimited JSON,
//! gzipped as `tar-split.json.gz`), so Docker reads ours and we read Docker's:
//! - type 1 (file): `{"type":1,"name":"a/b","size":N,"payload":"<base64 CRC-64/ISO, big-endian>","position":P}`
//!   (`name_raw` holds the name's bytes, base64, when they are not UTF-8)
//! - type 2 (segment): `{"type":2,"payload":"<base64 raw bytes>","position":P}`

use graphdriver::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum TarSplitError {
    #[error("{0}")]
    Invalid(String),
}

impl TarSplitError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}
