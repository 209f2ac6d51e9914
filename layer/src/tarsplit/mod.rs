//! tar-split: record a tar stream's headers and padding so the exact original
//! bytes can be rebuilt later from that record plus the extracted files.
//!
//! The record is tar-split's JSON entry format (newline-delimited JSON,
//! gzipped as `tar-split.json.gz`), so Docker reads ours and we read Docker's:
//! - type 1 (file): `{"type":1,"name":"a/b","size":N,"payload":"<base64 CRC-64/ISO, big-endian>","position":P}`
//!   (`name_raw` holds the name's bytes, base64, when they are not UTF-8)
//! - type 2 (segment): `{"type":2,"payload":"<base64 raw bytes>","position":P}`
//!
//! Shape and why:
//! - [`disassemble`] parses with `graphdriver::archive::reader` (Go's
//!   rules), the parser the graph driver extracts with, so the record and
//!   the extracted tree describe the same members (no parser differential). A recording
//!   reader under the parser splits the stream into segments and content.
//! - Content that does not land on disk byte for byte (sparse files, data
//!   carried by non-regular members, a repeated name) is kept inline in
//!   segments behind a size-0 file entry, which Docker's assembler skips, so
//!   Docker rebuilds our records exactly too.
//! - [`Assembler`] is a pull-based `Read`: bounded memory, no threads, each
//!   file checked for size and CRC-64 as it streams. The caller still checks
//!   the whole stream against the DiffID.
//! - [`DirGetter`] opens files beneath a root without following symlinks out
//!   of it (`openat2(RESOLVE_IN_ROOT)`, else a no-follow walk).

mod assemble;
mod disassemble;
mod getter;
mod names;
mod record;
#[cfg(test)]
mod roundtrip_tests;

use std::io;

use graphdriver::ErrorKind;

pub use assemble::Assembler;
pub use disassemble::{DisassembleSummary, disassemble};
pub use getter::DirGetter;
pub use record::FORMAT;

/// The CRC-64 tar-split stores per file: Go's `crc64.ISO` table, i.e. the
/// catalogue's CRC-64/GO-ISO, computed with SIMD carry-less multiplication.
#[derive(Clone)]
pub(crate) struct Crc64(Box<crc_fast::Digest>);

impl Crc64 {
    pub(crate) fn new() -> Self {
        static PARAMS: std::sync::OnceLock<crc_fast::CrcParams> = std::sync::OnceLock::new();
        let params = PARAMS.get_or_init(|| {
            crc_fast::CrcParams::new("CRC-64/GO-ISO", 64, 0x1b, u64::MAX, true, u64::MAX, 0xb909_56c7_75a4_1001)
        });
        Crc64(Box::new(crc_fast::Digest::new_with_params(*params)))
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub(crate) fn finalize(self) -> u64 {
        self.0.finalize()
    }

    /// The CRC of one buffer.
    #[cfg(test)]
    pub(crate) fn checksum(bytes: &[u8]) -> u64 {
        let mut c = Crc64::new();
        c.update(bytes);
        c.finalize()
    }
}

/// Where reassembly gets file contents, by their tar name (raw bytes).
pub trait FileGetter: Send {
    fn open(&self, name: &[u8]) -> io::Result<Box<dyn io::Read + Send>>;
}

#[derive(Debug, thiserror::Error)]
pub enum TarSplitError {
    #[error("{0}")]
    Invalid(String),
    /// The tar stream is malformed or truncated.
    #[error("invalid tar stream: {0}")]
    InvalidTar(String),
    /// A member would replace content recorded for an earlier member, so the
    /// original bytes could not be rebuilt from disk.
    #[error(
        "invalid tar stream: member {name} replaces the content of an earlier member (duplicate paths are not supported)"
    )]
    Overwrite { name: String },
    /// Reading the tar stream failed.
    #[error("read tar stream: {0}")]
    Read(#[source] io::Error),
    /// The tar-split record is malformed.
    #[error("malformed tar-split record at entry {index}: {why}")]
    Malformed { index: u64, why: String },
    /// A file entry names something outside the root.
    #[error("unsafe file name {name} in tar-split record: {why}")]
    UnsafeName { name: String, why: &'static str },
    /// A file on disk does not match its record.
    #[error("file {name}: {why}")]
    Mismatch { name: String, why: String },
    /// A file named by the record could not be opened.
    #[error("open {name}: {source}")]
    Open {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl TarSplitError {
    pub fn kind(&self) -> ErrorKind {
        use TarSplitError::*;
        match self {
            Invalid(_) | InvalidTar(_) | Overwrite { .. } | Malformed { .. } | UnsafeName { .. } => {
                ErrorKind::InvalidArgument
            }
            // A decompressor under us saying the data is bad, or a short body.
            Read(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof
                ) =>
            {
                ErrorKind::InvalidArgument
            }
            Mismatch { .. } => ErrorKind::DataLoss,
            // A missing file, or a symlink or special file where the record
            // has a regular file: the layer's content does not match.
            Open { source, .. }
                if matches!(source.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
                    || source.raw_os_error() == Some(libc::ELOOP)
                    || source.get_ref().is_some_and(|i| i.is::<NotRegular>()) =>
            {
                ErrorKind::DataLoss
            }
            Read(_) | Open { .. } | Io { .. } => ErrorKind::Internal,
        }
    }

    /// The tar-split error behind an io error returned by [`Assembler`]'s
    /// `read`, if there is one.
    pub fn from_io(e: &io::Error) -> Option<&TarSplitError> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<TarSplitError>())
    }

    /// This error as an io error (kind `InvalidData` for bad data), keeping
    /// it reachable through [`TarSplitError::from_io`].
    pub(crate) fn into_io(self) -> io::Error {
        let kind = match &self {
            TarSplitError::Open { source, .. } => source.kind(),
            TarSplitError::Io { source, .. } | TarSplitError::Read(source) => source.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

/// The file named by a record is not a regular file.
#[derive(Debug, thiserror::Error)]
#[error("not a regular file")]
pub(crate) struct NotRegular;
