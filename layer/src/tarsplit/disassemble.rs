//! Disassembly: parse a tar with the workspace's one tar reader
//! (`graphdriver::archive::reader`, Go's rules — the parser the graph driver
//! extracts with, so both see the same members) through a recording reader,
//! and write everything but regular-file content to the record.
//!
//! Byte accounting: the recorder sees every byte the parser consumes. Bytes
//! outside a regular file's content region go to `pending` and become
//! segments; content bytes `[data_pos, +size)` are only CRC'd. The reader
//! consumes exactly what it needs and never reads ahead, so at each member
//! `pending` holds the previous member's padding (and any data the reader
//! skipped) plus all of this member's headers (GNU `L`/`K`, PAX `x`, the
//! header itself).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};
use std::io::{self, Read, Write};

use graphdriver::archive::reader::{Member, ReadError, Reader};

use super::TarSplitError;
use super::names::{descendant_prefix, key, relative_components, show, whiteout_target};
use super::record::Packer;

/// Segments are flushed once this many bytes are pending, bounding memory.
const CHUNK: usize = 1 << 20;

/// What [`disassemble`] consumed and wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DisassembleSummary {
    /// Bytes of tar read, trailing padding included.
    pub bytes: u64,
    /// JSON entries written (segments and files).
    pub entries: u64,
    /// Type-1 (file) entries written: one per tar member, except repeated
    /// names, which are stored inline.
    pub files: u64,
}

/// Read ALL of `input` (a plain tar, including the end-of-archive blocks and
/// anything after them) and write the gzipped tar-split record to `out`.
///
/// Regular files (`0`, `\0`, `7`) with content are recorded by name, size and
/// CRC-64; every other byte is stored verbatim. Members whose content does not
/// land on disk as-is (GNU and PAX sparse files, data carried by non-regular
/// members) are stored inline, with a size-0 file entry. Fails on a malformed
/// or truncated tar, on a member that would replace content recorded for an
/// earlier member, and on a content-bearing name that is absolute or has `..`.
pub fn disassemble<R: Read, W: Write>(input: R, out: W) -> Result<DisassembleSummary, TarSplitError> {
    let state = RefCell::new(Recorder::new(Packer::new(out)));
    let mut rd = Reader::new(Tap { inner: input, state: &state });
    let explain = |e: ReadError| state.borrow_mut().explain(e);
    {
        let mut paths = PathTracker::default();
        let mut buf = vec![0u8; 64 << 10];
        while let Some(m) = rd.next_member().map_err(explain)? {
            let kind = classify(&m);
            let record = paths.admit(&m.name, &kind)?;
            state.borrow_mut().flush().map_err(write_error)?;
            match (record, kind.content) {
                (true, Some(size)) => {
                    let crc = crc_content(&state, &mut rd, &m, size, &mut buf)?;
                    state.borrow_mut().packer.file(&m.name, size, Some(crc)).map_err(write_error)?;
                }
                (true, None) => state.borrow_mut().packer.file(&m.name, 0, None).map_err(write_error)?,
                // A repeated name: Go's reader refuses a second file entry
                // with one name, so this member is left to the segments.
                (false, _) => {}
            }
        }
    }
    // Everything after the end of the archive: the second zero block,
    // record padding, trailing bytes. The recorder chunks it into segments.
    // (An archive may also end at end of input on a member boundary, as
    // Go's reader allows; then there is nothing more.)
    let mut tap = rd.into_inner();
    io::copy(&mut tap, &mut io::sink()).map_err(|e| explain(ReadError::Input(e)))?;
    drop(tap);

    let mut rec = state.into_inner();
    rec.region = None;
    rec.flush().map_err(write_error)?;
    let summary = DisassembleSummary { bytes: rec.consumed, entries: rec.packer.entries(), files: rec.packer.files() };
    rec.packer.finish().map_err(write_error)?;
    tracing::debug!(bytes = summary.bytes, entries = summary.entries, files = summary.files, "tar-split recorded");
    Ok(summary)
}

fn write_error(source: io::Error) -> TarSplitError {
    TarSplitError::Io { op: "write tar-split record", source }
}

/// Read a regular member's content through the recorder, which CRCs it
/// instead of storing it.
fn crc_content<R: Read, W: Write>(
    state: &RefCell<Recorder<W>>,
    rd: &mut Reader<R>,
    m: &Member,
    size: u64,
    buf: &mut [u8],
) -> Result<[u8; 8], TarSplitError> {
    let start = m.data_pos;
    {
        let mut st = state.borrow_mut();
        if st.consumed != start {
            return Err(TarSplitError::InvalidTar(format!(
                "parser desynchronised at {}: {} content starts at {start}",
                st.consumed,
                show(&m.name)
            )));
        }
        st.region = Some(Region { end: start + size, digest: super::Crc64::new() });
    }
    let mut copied = 0u64;
    loop {
        let n = match rd.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(state.borrow_mut().explain(ReadError::Input(e))),
        };
        if n == 0 {
            break;
        }
        copied += n as u64;
    }
    let mut st = state.borrow_mut();
    let region = st.region.take();
    match region {
        Some(region) if copied == size && st.consumed == region.end => Ok(region.digest.finalize().to_be_bytes()),
        _ => Err(TarSplitError::InvalidTar(format!("truncated: {} has {copied} of {size} bytes", show(&m.name)))),
    }
}

/// How a member is recorded.
struct Kind {
    /// `Some(size)`: a regular file whose content comes from disk.
    content: Option<u64>,
    /// A directory (replaces nothing beneath its name).
    dir: bool,
    /// A PAX global header: the extractor makes nothing from it.
    global: bool,
}

/// Regular files (`0`, `7`, and `\0` without a trailing `/`, as the reader
/// already decided) with data take their content from disk; sparse files
/// (GNU `S`, PAX `GNU.sparse.*`) carry a map and chunks, so stay inline.
fn classify(m: &Member) -> Kind {
    let regular = matches!(m.typeflag, b'0' | b'7');
    let content = if regular && m.sparse.is_none() && m.data_len > 0 { Some(m.data_len) } else { None };
    Kind { content, dir: m.typeflag == b'5', global: m.typeflag == b'g' }
}

/// Names seen so far, to keep the record rebuildable and readable by Go.
#[derive(Default)]
struct PathTracker {
    /// Cleaned names that have a file entry.
    seen: HashSet<Vec<u8>>,
    /// Cleaned names whose content is taken from disk.
    content: BTreeSet<Vec<u8>>,
}

impl PathTracker {
    /// Check a member against earlier ones; `Ok(true)` if it gets a file entry.
    fn admit(&mut self, name: &[u8], kind: &Kind) -> Result<bool, TarSplitError> {
        let c = key(name);
        if !kind.global && self.replaces_content(&c, kind.dir) {
            return Err(TarSplitError::Overwrite { name: show(name) });
        }
        if kind.content.is_some() {
            relative_components(name)
                .map_err(|why| TarSplitError::InvalidTar(format!("member {}: {why}", show(name))))?;
        }
        if self.seen.contains(&c) {
            return Ok(false);
        }
        if kind.content.is_some() {
            self.content.insert(c.clone());
        }
        self.seen.insert(c);
        Ok(true)
    }

    /// Would extracting `c` destroy content recorded for an earlier member?
    fn replaces_content(&self, c: &[u8], dir: bool) -> bool {
        let has_below = |p: &[u8]| {
            let prefix = descendant_prefix(p);
            self.content.range(prefix.clone()..).next().is_some_and(|k| k.starts_with(&prefix))
        };
        // The same name, or a non-directory where recorded files live below.
        if self.content.contains(c) || (!dir && has_below(c)) {
            return true;
        }
        // A directory (or anything) where a recorded file is an ancestor.
        let mut end = c.len();
        while let Some(i) = c[..end].iter().rposition(|&b| b == b'/') {
            if i > 0 && self.content.contains(&c[..i]) {
                return true;
            }
            end = i;
        }
        // A whiteout removing a recorded file or a directory holding some.
        whiteout_target(c).is_some_and(|t| self.content.contains(&t) || has_below(&t))
    }
}

/// The recorder behind [`Tap`].
struct Recorder<W: Write> {
    packer: Packer<W>,
    pending: Vec<u8>,
    consumed: u64,
    /// A content region being CRC'd instead of stored; starts at the position
    /// it was set at.
    region: Option<Region>,
    /// The input reported end of stream.
    eof: bool,
    input_error: Option<io::Error>,
    write_error: Option<io::Error>,
}

struct Region {
    end: u64,
    digest: super::Crc64,
}

impl<W: Write> Recorder<W> {
    fn new(packer: Packer<W>) -> Self {
        Recorder {
            packer,
            pending: Vec::new(),
            consumed: 0,
            region: None,
            eof: false,
            input_error: None,
            write_error: None,
        }
    }

    fn record(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.region.as_mut() {
                Some(r) if self.consumed < r.end => {
                    let n = bytes.len().min(usize::try_from(r.end - self.consumed).unwrap_or(usize::MAX));
                    r.digest.update(&bytes[..n]);
                    self.consumed += n as u64;
                    bytes = &bytes[n..];
                }
                _ => {
                    self.pending.extend_from_slice(bytes);
                    self.consumed += bytes.len() as u64;
                    bytes = &[];
                }
            }
        }
        // While a file entry is owed, segments must wait behind it.
        if self.region.is_none() && self.pending.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.packer.segment(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Turn an error surfaced by the parser into ours, preferring the
    /// underlying input or output failure the parser only relayed.
    fn explain(&mut self, e: ReadError) -> TarSplitError {
        if let Some(source) = self.write_error.take() {
            return write_error(source);
        }
        if let Some(source) = self.input_error.take() {
            return TarSplitError::Read(source);
        }
        match e {
            ReadError::Format(m) => TarSplitError::InvalidTar(m),
            ReadError::Input(e) => TarSplitError::Read(e),
        }
    }
}

/// The recording reader handed to the parser.
struct Tap<'a, R, W: Write> {
    inner: R,
    state: &'a RefCell<Recorder<W>>,
}

impl<R: Read, W: Write> Read for Tap<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = loop {
            match self.inner.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let relay = io::Error::new(e.kind(), e.to_string());
                    self.state.borrow_mut().input_error.get_or_insert(e);
                    return Err(relay);
                }
            }
        };
        let mut st = self.state.borrow_mut();
        if n == 0 {
            st.eof = true;
        }
        if let Err(e) = st.record(&buf[..n]) {
            let relay = io::Error::other(e.to_string());
            st.write_error.get_or_insert(e);
            return Err(relay);
        }
        Ok(n)
    }
}
