//! A reader run on its own thread, a few chunks ahead of its consumer, over
//! [`graphdriver::pipe`]: the export's assembler (file reads, CRC-64) ahead
//! of the DiffID check, and a registration's decompression ahead of the
//! extractor and the recorder.

use std::io::Read;

use graphdriver::pipe::{PipeReader, SendError, pipe};

pub(crate) use graphdriver::pipe::CHUNK;

/// Chunks the producer may run ahead.
pub(crate) const DEPTH: usize = 4;

/// `src` read on its own thread, up to [`DEPTH`] chunks of [`CHUNK`] bytes
/// ahead. The reader yields exactly the source's bytes, then its error or
/// its end; a producer that dies (a panic in the source) is an error, never
/// an early end (see [`graphdriver::pipe`]). Dropping the reader stops the
/// producer at its next send; a producer blocked in its source's `read` (a
/// request body that sends nothing) stops when that read returns, which the
/// body's idle timeout bounds.
pub(crate) fn spawn<R: Read + Send + 'static>(src: R) -> PipeReader {
    spawn_chunked(src, CHUNK)
}

/// Chunks of exactly `chunk_len` bytes but the last.
pub(crate) fn spawn_chunked<R: Read + Send + 'static>(mut src: R, chunk_len: usize) -> PipeReader {
    let (mut w, r) = pipe(DEPTH);
    std::thread::spawn(move || match w.send_from(&mut src, chunk_len) {
        Ok(()) => {
            let _ = w.finish();
        }
        Err(SendError::Read(e)) => w.fail(e),
        Err(SendError::ReaderGone) => {}
    });
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

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
            let mut r = spawn(choppy(&data, None));
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert!(out == data, "{len} bytes in, {} out", out.len());
            assert_eq!(r.read(&mut [0; 8]).unwrap(), 0, "the end stays the end");
        }
    }

    #[test]
    fn whole_chunks_of_the_asked_size_then_an_empty_one() {
        let data = noise(5 * 1000 + 17);
        let mut r = spawn_chunked(choppy(&data, None), 1000);
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
        let mut r = spawn(choppy(&data, Some(io::ErrorKind::TimedOut)));
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
        let err = spawn(Panics(0)).read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("stopped"), "{err}");
        let mut p = spawn_chunked(Panics(0), 2);
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
        let mut r = spawn(Endless(reads.clone(), Some(dropped_tx)));
        r.read_exact(&mut [0; 1000]).unwrap();
        drop(r);
        dropped.recv_timeout(std::time::Duration::from_secs(10)).expect("the producer ends once its reader is gone");
        let n = reads.load(Ordering::SeqCst);
        assert!(n <= DEPTH + 3, "it ran at most its depth ahead: {n} chunks read");
    }
}
