//! A bounded in-process pipe of byte chunks between two threads, for a
//! producer that writes (a tar being built, an archive being saved) or that
//! reads ahead (decompression, an export's assembler).
//!
//! The writer ends the stream explicitly — [`PipeWriter::finish`] or
//! [`PipeWriter::fail`] — so a producer that stops any other way (a panic, an
//! early return that drops its writer) reaches the reader as an error, never
//! as a clean, truncated end. Buffers the reader is done with go back to the
//! writer, so a steady stream allocates nothing per chunk.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Bytes the writer gathers before it sends a chunk.
pub const CHUNK: usize = 256 * 1024;

enum Msg {
    Data(Vec<u8>),
    End,
    Fail(io::Error),
}

/// A pipe holding at most `depth` chunks in flight.
pub fn pipe(depth: usize) -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(depth.max(1));
    let (back, spare) = sync_channel(depth.max(1) + 2);
    (PipeWriter { tx, spare, buf: Vec::new() }, PipeReader { rx, back, cur: Vec::new(), pos: 0, state: State::Open })
}

/// The writing end. `Write` gathers [`CHUNK`] bytes per message; a reader
/// that went away makes writes fail with `BrokenPipe`.
pub struct PipeWriter {
    tx: SyncSender<Msg>,
    spare: Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

/// Why [`PipeWriter::send_from`] stopped.
#[derive(Debug)]
pub enum SendError {
    /// The reader is gone.
    ReaderGone,
    /// The source failed; nothing was sent for it (the caller ends the pipe,
    /// usually with [`PipeWriter::fail`]).
    Read(io::Error),
}

impl PipeWriter {
    fn gone() -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, "the pipe's reader went away")
    }

    /// An empty buffer, recycled from the reader when one came back.
    fn fresh(&self) -> Vec<u8> {
        let mut b = self.spare.try_recv().unwrap_or_default();
        b.clear();
        b
    }

    /// Send `chunk` as it is (no copy); an empty one sends nothing.
    pub fn send_chunk(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        self.send_buffered()?;
        if chunk.is_empty() {
            return Ok(());
        }
        self.tx.send(Msg::Data(chunk)).map_err(|_| Self::gone())
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self.fresh();
        let chunk = std::mem::replace(&mut self.buf, next);
        self.tx.send(Msg::Data(chunk)).map_err(|_| Self::gone())
    }

    /// Send all of `src`, in chunks of exactly `chunk_len` bytes but the
    /// last, read straight into the chunks. Does not end the pipe.
    pub fn send_from(&mut self, src: &mut dyn Read, chunk_len: usize) -> Result<(), SendError> {
        self.send_buffered().map_err(|_| SendError::ReaderGone)?;
        loop {
            let mut chunk = self.fresh();
            chunk.resize(chunk_len.max(1), 0);
            let mut filled = 0;
            let res = loop {
                match src.read(&mut chunk[filled..]) {
                    Ok(0) => break Ok(true),
                    Ok(n) => {
                        filled += n;
                        if filled == chunk.len() {
                            break Ok(false);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            chunk.truncate(filled);
            // The bytes before an error or the end are the source's too: first.
            self.send_chunk(chunk).map_err(|_| SendError::ReaderGone)?;
            match res {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(SendError::Read(e)),
            }
        }
    }

    /// End the stream: what is buffered, then the end.
    pub fn finish(mut self) -> io::Result<()> {
        self.send_buffered()?;
        self.tx.send(Msg::End).map_err(|_| Self::gone())
    }

    /// End the stream with `e`, after what is buffered. A reader that went
    /// away needs no error.
    pub fn fail(mut self, e: io::Error) {
        if self.send_buffered().is_ok() {
            let _ = self.tx.send(Msg::Fail(e));
        }
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.capacity() == 0 {
            self.buf.reserve(CHUNK);
        }
        let n = data.len().min(CHUNK - self.buf.len().min(CHUNK));
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    /// Sends what is buffered; it does not end the stream.
    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Open,
    Ended,
    Failed,
}

/// The reading end: exactly the bytes written, then the writer's end or its
/// error; a writer gone without either is an error.
pub struct PipeReader {
    rx: Receiver<Msg>,
    back: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    state: State,
}

impl PipeReader {
    /// The rest of the current chunk, else the next whole chunk (as sent);
    /// empty at the end.
    pub fn next_chunk(&mut self) -> io::Result<Vec<u8>> {
        if self.pos < self.cur.len() {
            let rest = self.cur.split_off(self.pos);
            self.pos = 0;
            self.cur.clear();
            return Ok(rest);
        }
        self.receive()
    }

    fn receive(&mut self) -> io::Result<Vec<u8>> {
        match self.state {
            State::Ended => return Ok(Vec::new()),
            State::Failed => return Err(io::Error::other("the pipe's writer failed before")),
            State::Open => {}
        }
        match self.rx.recv() {
            Ok(Msg::Data(b)) => Ok(b),
            Ok(Msg::End) => {
                self.state = State::Ended;
                Ok(Vec::new())
            }
            Ok(Msg::Fail(e)) => {
                self.state = State::Failed;
                Err(e)
            }
            Err(_) => {
                self.state = State::Failed;
                Err(io::Error::other("the pipe's writer stopped before the end of its stream"))
            }
        }
    }
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.cur.len() {
            let b = self.receive()?;
            if b.is_empty() {
                return Ok(0);
            }
            let used = std::mem::replace(&mut self.cur, b);
            let _ = self.back.try_send(used);
            self.pos = 0;
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_then_the_writers_error() {
        let (mut w, mut r) = pipe(2);
        let t = std::thread::spawn(move || {
            w.write_all(&vec![7u8; CHUNK + 10]).unwrap();
            w.fail(io::Error::other("boom"));
        });
        let mut got = vec![0u8; CHUNK + 10];
        r.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|b| *b == 7));
        assert_eq!(r.read(&mut [0u8; 10]).unwrap_err().to_string(), "boom");
        assert!(r.read(&mut [0u8; 10]).is_err(), "and it stays failed");
        t.join().unwrap();
    }

    #[test]
    fn data_then_the_end_and_a_dropped_reader_is_a_broken_pipe() {
        let (mut w, mut r) = pipe(2);
        let t = std::thread::spawn(move || {
            w.write_all(b"hello").unwrap();
            w.finish().unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello");
        assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 0, "the end stays the end");
        t.join().unwrap();
        let (mut w, r) = pipe(1);
        drop(r);
        w.write_all(&[1]).unwrap();
        assert_eq!(w.flush().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_writer_gone_without_an_end_is_an_error_not_a_truncated_stream() {
        let (mut w, mut r) = pipe(4);
        let t = std::thread::spawn(move || {
            w.write_all(&[3u8; 1000]).unwrap();
            w.flush().unwrap();
            // Dropped here: no finish, no fail (as a panic would leave it).
        });
        let mut got = vec![0u8; 1000];
        r.read_exact(&mut got).unwrap();
        let e = r.read(&mut [0u8; 10]).unwrap_err();
        assert!(e.to_string().contains("stopped before the end"), "{e}");
        t.join().unwrap();
    }

    #[test]
    fn send_from_sends_whole_chunks_and_leaves_the_read_error_to_the_caller() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "idle"));
                }
                let n = out.len().min(self.0);
                out[..n].fill(9);
                self.0 -= n;
                Ok(n)
            }
        }
        let (mut w, mut r) = pipe(8);
        let res = w.send_from(&mut Failing(2500), 1000);
        assert!(matches!(res, Err(SendError::Read(ref e)) if e.kind() == io::ErrorKind::TimedOut), "{res:?}");
        w.fail(io::Error::other("the source failed"));
        let sizes: Vec<usize> = (0..3).map(|_| r.next_chunk().unwrap().len()).collect();
        assert_eq!(sizes, vec![1000, 1000, 500]);
        assert_eq!(r.next_chunk().unwrap_err().to_string(), "the source failed");
    }
}
