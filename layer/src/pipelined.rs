//! A reader run on its own thread, a few chunks ahead of its consumer: the
//! export's assembler (file reads, CRC-64) ahead of the DiffID check, and a
//! registration's decompression ahead of the extractor and the recorder.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Bytes per chunk unless the caller picks a size.
pub(crate) const CHUNK: usize = 256 * 1024;
/// Chunks the producer may run ahead.
pub(crate) const DEPTH: usize = 4;

/// The consumer's end. It yields exactly the source's bytes, then the
/// source's error or its end. The producer says which explicitly (an empty
/// chunk is the end), so a producer that dies without saying (a panic in
/// the source) is an error, never an early clean end. Buffers go back to
/// the producer once read, so nothing is allocated or zeroed per chunk.
/// Dropping it stops the producer at its next send; a producer blocked in
/// its source's `read` (a request body that sends nothing) stops when that
/// read returns, which the body's idle timeout bounds.
pub(crate) struct Pipelined {
    rx: Receiver<io::Result<Vec<u8>>>,
    back: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    state: State,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Reading,
    /// The producer said the source ended.
    Ended,
    /// The source's error was returned (once); later reads fail too.
    Failed,
}

impl Pipelined {
    pub(crate) fn spawn<R: Read + Send + 'static>(src: R) -> Self {
        Self::spawn_chunked(src, CHUNK)
    }

    /// Chunks of exactly `chunk_len` bytes but the last.
    pub(crate) fn spawn_chunked<R: Read + Send + 'static>(src: R, chunk_len: usize) -> Self {
        let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(DEPTH);
        let (back, spare) = sync_channel::<Vec<u8>>(DEPTH + 2);
        std::thread::spawn(move || produce(src, chunk_len, &tx, &spare));
        Pipelined { rx, back, buf: Vec::new(), pos: 0, state: State::Reading }
    }

    /// The rest of the current chunk, else the next whole chunk; empty at
    /// the end.
    pub(crate) fn next_chunk(&mut self) -> io::Result<Vec<u8>> {
        if self.pos < self.buf.len() {
            // Part of a chunk was read through `Read`: hand out the rest.
            let rest = self.buf.split_off(self.pos);
            self.pos = 0;
            self.buf.clear();
            return Ok(rest);
        }
        self.receive()
    }

    /// The next chunk from the producer, or the end (empty), or the error.
    fn receive(&mut self) -> io::Result<Vec<u8>> {
        match self.state {
            State::Ended => return Ok(Vec::new()),
            State::Failed => return Err(io::Error::other("the input failed before")),
            State::Reading => {}
        }
        match self.rx.recv() {
            Ok(Ok(b)) => {
                if b.is_empty() {
                    self.state = State::Ended;
                }
                Ok(b)
            }
            Ok(Err(e)) => {
                self.state = State::Failed;
                Err(e)
            }
            Err(_) => {
                self.state = State::Failed;
                Err(io::Error::other("the reading thread stopped before the end of its input"))
            }
        }
    }
}

/// Send `src` as chunks of `chunk_len` (the last shorter), then an empty
/// chunk for its end, or its error.
fn produce<R: Read>(mut src: R, chunk_len: usize, tx: &SyncSender<io::Result<Vec<u8>>>, spare: &Receiver<Vec<u8>>) {
    loop {
        let mut chunk = spare.try_recv().unwrap_or_default();
        chunk.resize(chunk_len, 0);
        let mut filled = 0;
        let end = loop {
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
        if filled > 0 && tx.send(Ok(chunk)).is_err() {
            return; // the consumer is gone
        }
        match end {
            Ok(false) => {}
            Ok(true) => {
                let _ = tx.send(Ok(Vec::new()));
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

impl Read for Pipelined {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            let b = self.receive()?;
            if b.is_empty() {
                return Ok(0);
            }
            let used = std::mem::replace(&mut self.buf, b);
            let _ = self.back.try_send(used);
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out `data` in odd-sized pieces, interrupted now
    /// and then, and then fails with `fail` if given.
    struct Choppy {
        data: Vec<u8>,
        pos: usize,
        calls: usize,
        fail: Option<io::ErrorKind>,
    }

    impl Read for Choppy {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(7) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            if self.pos == self.data.len() {
                return match self.fail {
                    Some(kind) => Err(io::Error::new(kind, "the body broke")),
                    None => Ok(0),
                };
            }
            let n = out.len().min(self.data.len() - self.pos).min(1 + self.calls * 4093 % 70_000);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn noise(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    fn choppy(data: &[u8], fail: Option<io::ErrorKind>) -> Choppy {
        Choppy { data: data.to_vec(), pos: 0, calls: 0, fail }
    }

    #[test]
    fn yields_exactly_the_input_then_its_end() {
        for len in [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 12_345] {
            let data = noise(len);
            let mut r = Pipelined::spawn(choppy(&data, None));
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert!(out == data, "{len} bytes in, {} out", out.len());
            assert_eq!(r.read(&mut [0; 8]).unwrap(), 0, "the end stays the end");
        }
    }

    #[test]
    fn whole_chunks_of_the_asked_size_then_an_empty_one() {
        let data = noise(5 * 1000 + 17);
        let mut r = Pipelined::spawn_chunked(choppy(&data, None), 1000);
        let mut sizes = Vec::new();
        loop {
            let c = r.next_chunk().unwrap();
            if c.is_empty() {
                break;
            }
            sizes.push(c.len());
        }
        assert_eq!(sizes, vec![1000, 1000, 1000, 1000, 1000, 17]);
    }

    #[test]
    fn the_bytes_before_an_error_then_the_error() {
        let data = noise(CHUNK + 1000);
        let mut r = Pipelined::spawn(choppy(&data, Some(io::ErrorKind::TimedOut)));
        let mut got = Vec::new();
        let mut buf = vec![0; 10_000];
        let err = loop {
            match r.read(&mut buf) {
                Ok(0) => panic!("an input that failed must not end cleanly"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert!(got == data, "every byte before the error arrives");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "the body broke");
        assert!(r.read(&mut buf).is_err(), "and it stays failed");
    }

    #[test]
    fn a_source_that_panics_is_an_error_never_an_early_end() {
        struct Panics(usize);
        impl Read for Panics {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                assert!(self.0 < 3, "the decoder panics");
                self.0 += 1;
                out[0] = 1;
                Ok(1)
            }
        }
        let err = Pipelined::spawn(Panics(0)).read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("stopped"), "{err}");
        let mut p = Pipelined::spawn_chunked(Panics(0), 2);
        let res = (|| {
            while !p.next_chunk()?.is_empty() {}
            Ok::<_, io::Error>(())
        })();
        assert!(res.is_err(), "chunks too: no clean end after a panic");
    }

    #[test]
    fn dropping_the_reader_stops_the_producer() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Endless(Arc<AtomicUsize>, Option<std::sync::mpsc::Sender<()>>);
        impl Read for Endless {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Ok(out.len())
            }
        }
        impl Drop for Endless {
            fn drop(&mut self) {
                if let Some(tx) = self.1.take() {
                    let _ = tx.send(());
                }
            }
        }
        let reads = Arc::new(AtomicUsize::new(0));
        let (dropped_tx, dropped) = std::sync::mpsc::channel();
        let mut r = Pipelined::spawn(Endless(reads.clone(), Some(dropped_tx)));
        r.read_exact(&mut [0; 1000]).unwrap();
        drop(r);
        dropped.recv_timeout(std::time::Duration::from_secs(10)).expect("the producer ends once its reader is gone");
        let n = reads.load(Ordering::SeqCst);
        assert!(n <= DEPTH + 3, "it ran at most its depth ahead: {n} chunks read");
    }
}
