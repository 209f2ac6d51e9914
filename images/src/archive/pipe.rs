//! A bounded in-process pipe whose writer can end the stream with an error:
//! a failure on the producing side reaches the reader as a read error, never
//! as a clean (truncated) end of stream.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Chunks in flight between the two ends.
const DEPTH: usize = 8;
/// Bytes the writer gathers before it sends a chunk.
const CHUNK: usize = 256 << 10;

/// The reading end: chunks until the writers are gone (the end) or one sent
/// an error (returned by `read`).
pub struct ChanReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl ChanReader {
    pub fn new(rx: Receiver<io::Result<Vec<u8>>>) -> ChanReader {
        ChanReader { rx, cur: Vec::new(), pos: 0 }
    }
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(v)) => {
                    self.cur = v;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The writing end: buffers, sends on flush and on drop. A reader that went
/// away makes writes fail with `BrokenPipe`.
pub struct ChanWriter {
    tx: SyncSender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl ChanWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.send(Ok(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "reader went away"))
    }
}

impl Write for ChanWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl Drop for ChanWriter {
    fn drop(&mut self) {
        let _ = self.send();
    }
}

/// A pipe, and a sender to end it with an error.
pub fn pipe() -> (ChanWriter, ChanReader, SyncSender<io::Result<Vec<u8>>>) {
    let (tx, rx) = sync_channel(DEPTH);
    (ChanWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) }, ChanReader::new(rx), tx)
}
