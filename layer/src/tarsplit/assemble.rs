//! [`Assembler`]: rebuild the tar from a record plus the extracted files, as a
//! pull-based `Read` (no threads, memory bounded by one record line).

use std::io::{self, Read};

use super::names::show;
use super::record::{Entry, Unpacker};
use super::{FileGetter, TarSplitError};

/// Yields segment bytes verbatim and file contents from the getter, checking
/// each file's size and CRC-64 as it streams. A mismatch fails the read with
/// `io::ErrorKind::InvalidData` naming the file; a malformed record fails it
/// with `InvalidData` too; the [`TarSplitError`] behind any failure is
/// reachable with [`TarSplitError::from_io`]. After a failure every further
/// read fails. The caller verifies the whole stream against the DiffID.
pub struct Assembler<G: FileGetter> {
    entries: Unpacker,
    getter: G,
    state: State,
}

enum State {
    /// Between entries.
    Idle,
    /// Copying out a segment's bytes.
    Segment {
        bytes: Vec<u8>,
        at: usize,
    },
    /// Streaming a file's content.
    File {
        name: Vec<u8>,
        src: Box<dyn Read + Send>,
        left: u64,
        size: u64,
        want: [u8; 8],
        crc: super::Crc64,
    },
    Done,
    /// A read failed; this says why, for the reads after it.
    Failed(io::ErrorKind, String),
}

impl<G: FileGetter> Assembler<G> {
    pub fn new(tarsplit_gz: Box<dyn Read + Send>, getter: G) -> Self {
        Assembler { entries: Unpacker::new(tarsplit_gz), getter, state: State::Idle }
    }

    fn step(&mut self, buf: &mut [u8]) -> Result<usize, TarSplitError> {
        loop {
            match &mut self.state {
                // `read` answers for a failed assembler before calling us.
                State::Done | State::Failed(..) => return Ok(0),
                State::Segment { bytes, at } => {
                    let n = buf.len().min(bytes.len() - *at);
                    buf[..n].copy_from_slice(&bytes[*at..*at + n]);
                    *at += n;
                    if *at == bytes.len() {
                        self.state = State::Idle;
                    }
                    if n > 0 {
                        return Ok(n);
                    }
                }
                State::File { name, src, left, size, want, crc } => {
                    if *left == 0 {
                        let mut probe = [0u8; 1];
                        if read_retrying(src.as_mut(), &mut probe).map_err(|e| read_error(name, e))? != 0 {
                            return Err(mismatch(name, format!("larger than its recorded {size} bytes")));
                        }
                        let got = crc.clone().finalize().to_be_bytes();
                        if got != *want {
                            return Err(mismatch(name, "content does not match its recorded checksum".into()));
                        }
                        self.state = State::Idle;
                        continue;
                    }
                    let max = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let n = read_retrying(src.as_mut(), &mut buf[..max]).map_err(|e| read_error(name, e))?;
                    if n == 0 {
                        return Err(mismatch(name, format!("shorter than its recorded {size} bytes")));
                    }
                    crc.update(&buf[..n]);
                    *left -= n as u64;
                    return Ok(n);
                }
                State::Idle => match self.entries.next_entry()? {
                    None => self.state = State::Done,
                    Some(Entry::Segment(bytes)) => self.state = State::Segment { bytes, at: 0 },
                    Some(Entry::File { size: 0, .. }) => {}
                    Some(Entry::File { name, size, crc }) => {
                        let want = crc.ok_or_else(|| mismatch(&name, "no checksum recorded".into()))?;
                        let src = self.getter.open(&name).map_err(|e| open_error(&name, e))?;
                        self.state = State::File { name, src, left: size, size, want, crc: super::Crc64::new() };
                    }
                },
            }
        }
    }
}

impl<G: FileGetter> Read for Assembler<G> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let State::Failed(kind, msg) = &self.state {
            return Err(io::Error::new(*kind, format!("tar-split assembly already failed: {msg}")));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        self.step(buf).map_err(|e| {
            let e = e.into_io();
            self.state = State::Failed(e.kind(), e.to_string());
            e
        })
    }
}

fn read_retrying(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match src.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

fn mismatch(name: &[u8], why: String) -> TarSplitError {
    TarSplitError::Mismatch { name: show(name), why }
}

fn open_error(name: &[u8], e: io::Error) -> TarSplitError {
    // The getter may already have explained the failure (an unsafe name).
    if !e.get_ref().is_some_and(|inner| inner.is::<TarSplitError>()) {
        return TarSplitError::Open { name: show(name), source: e };
    }
    match e.into_inner().map(|inner| inner.downcast::<TarSplitError>()) {
        Some(Ok(ts)) => *ts,
        Some(Err(other)) => TarSplitError::Open { name: show(name), source: io::Error::other(other) },
        None => TarSplitError::Open { name: show(name), source: io::Error::other("open failed") },
    }
}

fn read_error(name: &[u8], source: io::Error) -> TarSplitError {
    TarSplitError::Io {
        op: "read file content",
        source: io::Error::new(source.kind(), format!("{}: {source}", show(name))),
    }
}
