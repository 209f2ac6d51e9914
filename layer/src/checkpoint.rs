//! SHA-256 checkpoints: verify a layer's export on every core.
//!
//! SHA-256 of one stream is sequential, and at ~1.4 GB/s (SHA extensions)
//! it bounds how fast an export can be verified against its DiffID. So
//! registration, which hashes every byte anyway, also records the hash's
//! internal state every [`SEGMENT`] bytes. Export then checks each segment
//! on its own: from the recorded state where it starts, the segment's bytes
//! must lead to the recorded state where it ends, and the last segment must
//! finish at the DiffID. By induction from SHA-256's initial state that is
//! exactly the sequential check — forging a stream would need a preimage of
//! the final digest — but the segments verify in parallel.
//!
//! The states are the `sha2` crate's own serialized hasher states
//! (`SerializableState`): nothing of SHA-256 is written here by hand.
//!
//! The record is `sha256-checkpoints.json` in the layer's metadata dir
//! (ours; Docker ignores it), version 2. A layer without one (written by
//! Docker), or with a version-1 record (raw state words, written before the
//! crate's serialization was used), is verified sequentially.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// Bytes between checkpoints (a multiple of SHA-256's 64-byte block).
pub const SEGMENT: usize = 1 << 20;
pub const FILE: &str = "sha256-checkpoints.json";

/// The record version this code writes and reads.
const VERSION: u32 = 2;

/// A hasher's complete state (chaining value, length, buffer), as the crate
/// serializes it.
type State = SerializedState<Sha256>;

/// The persisted record (versioned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub segment: usize,
    pub length: u64,
    /// States after each full segment strictly inside the stream, as hex.
    pub states: Vec<String>,
}

/// Where the parallel verifier gets the stream: whole segments of `size`
/// bytes (only the last may be shorter; empty at the end).
pub trait Segments {
    fn next_segment(&mut self, size: usize) -> io::Result<Vec<u8>>;
}

/// Any reader, read into segment-sized buffers.
pub struct ReadSegments<R>(pub R);

impl<R: Read> Segments for ReadSegments<R> {
    fn next_segment(&mut self, size: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; size];
        let mut filled = 0;
        while filled < size {
            match self.0.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }
}

/// Checkpoints of one stream, ready to verify with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoints {
    segment: usize,
    length: u64,
    states: Vec<State>,
}

fn state_hex(s: &State) -> String {
    hex::encode(s.as_slice())
}

fn parse_state(h: &str) -> Option<State> {
    let bytes = hex::decode(h).ok()?;
    let state = State::try_from(bytes.as_slice()).ok()?;
    // Only states the crate itself accepts.
    Sha256::deserialize(&state).ok()?;
    Some(state)
}

fn resume(s: &State) -> Option<Sha256> {
    Sha256::deserialize(s).ok()
}

impl Checkpoints {
    /// Bytes of the stream the checkpoints cover.
    pub fn length(&self) -> u64 {
        self.length
    }

    pub fn segment(&self) -> usize {
        self.segment
    }

    pub fn to_record(&self) -> Record {
        Record {
            version: VERSION,
            segment: self.segment,
            length: self.length,
            states: self.states.iter().map(state_hex).collect(),
        }
    }

    /// Validate a record read from disk; `None` if it can't be used.
    pub fn from_record(r: &Record) -> Option<Checkpoints> {
        if r.version != VERSION || r.segment == 0 || !r.segment.is_multiple_of(64) {
            return None;
        }
        let full = if r.length == 0 { 0 } else { (r.length - 1) / r.segment as u64 };
        if r.states.len() as u64 != full {
            return None;
        }
        let states = r.states.iter().map(|h| parse_state(h)).collect::<Option<Vec<_>>>()?;
        Some(Checkpoints { segment: r.segment, length: r.length, states })
    }
}

/// SHA-256 (the crate's), recording the hasher's state at every multiple
/// of the segment size strictly inside the stream.
pub struct CheckpointHasher {
    hasher: Sha256,
    total: u64,
    segment: usize,
    states: Vec<State>,
}

impl Default for CheckpointHasher {
    fn default() -> Self {
        Self::with_segment(SEGMENT)
    }
}

impl CheckpointHasher {
    pub fn with_segment(segment: usize) -> Self {
        assert!(segment > 0 && segment.is_multiple_of(64), "segment must be a multiple of 64");
        CheckpointHasher { hasher: Sha256::new(), total: 0, segment, states: Vec::new() }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let seg = self.segment as u64;
            let to_boundary = (seg - self.total % seg) as usize;
            let take = data.len().min(to_boundary);
            self.hasher.update(&data[..take]);
            self.total += take as u64;
            if self.total.is_multiple_of(seg) {
                self.states.push(self.hasher.serialize());
            }
            data = &data[take..];
        }
    }

    /// The digest of everything hashed, and the checkpoints inside it.
    pub fn finish(mut self) -> (Digest, Checkpoints) {
        // A state at the very end is not "inside": the last segment
        // finishes at the digest instead.
        if self.total > 0 && self.total.is_multiple_of(self.segment as u64) {
            self.states.pop();
        }
        let digest = Digest::from_bytes(self.hasher.finalize().into());
        (digest, Checkpoints { segment: self.segment, length: self.total, states: self.states })
    }
}

enum Expect {
    State(State),
    Final(Digest),
}

struct Job {
    index: usize,
    start: State,
    data: Arc<Vec<u8>>,
    expect: Expect,
}

fn run_job(job: &Job) -> bool {
    let Some(mut h) = resume(&job.start) else { return false };
    h.update(job.data.as_slice());
    match &job.expect {
        // The serialized state holds the length too: a segment of another
        // size never matches.
        Expect::State(end) => h.serialize() == *end,
        Expect::Final(digest) => Digest::from_bytes(h.finalize().into()) == *digest,
    }
}

/// Reads `inner` (the rebuilt tar) through, verifying it segment by segment
/// on worker threads. Every byte is passed on as soon as it is read; a
/// mismatch anywhere makes the last read fail (never a clean end of stream),
/// as the sequential `VerifyingReader` does.
pub struct ParallelVerifier<S> {
    inner: S,
    cp: Checkpoints,
    digest: Digest,
    index: usize,
    offset: u64,
    ahead: Option<Vec<u8>>,
    cur: Option<Arc<Vec<u8>>>,
    pos: usize,
    jobs: Option<SyncSender<Job>>,
    results: Receiver<(usize, bool)>,
    outstanding: usize,
    read_all: bool,
    failure: Option<String>,
}

/// Segments verified at once per export (bounds memory to a few segments).
const IN_FLIGHT: usize = 4;

impl<S: Segments> ParallelVerifier<S> {
    pub fn new(inner: S, cp: Checkpoints, digest: Digest) -> Self {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
        let (jobs, jobs_rx) = sync_channel::<Job>(IN_FLIGHT);
        let (results_tx, results) = sync_channel::<(usize, bool)>(IN_FLIGHT * 2);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        for _ in 0..workers {
            let (rx, tx) = (jobs_rx.clone(), results_tx.clone());
            std::thread::spawn(move || {
                loop {
                    let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok(job) = job else { return };
                    if tx.send((job.index, run_job(&job))).is_err() {
                        return;
                    }
                }
            });
        }
        ParallelVerifier {
            inner,
            cp,
            digest,
            index: 0,
            offset: 0,
            ahead: None,
            cur: None,
            pos: 0,
            jobs: Some(jobs),
            results,
            outstanding: 0,
            read_all: false,
            failure: None,
        }
    }

    /// The next segment; a short read that is not the end is an error.
    fn fill(&mut self) -> io::Result<Vec<u8>> {
        self.inner.next_segment(self.cp.segment)
    }

    fn fail(&mut self, why: String) -> io::Error {
        let msg = format!(
            "could not verify layer data against {}: {why}; the stored layer is damaged — re-import it",
            self.digest
        );
        self.failure = Some(msg.clone());
        io::Error::new(io::ErrorKind::InvalidData, msg)
    }

    fn take_result(&mut self, blocking: bool) -> io::Result<bool> {
        let r = if blocking { self.results.recv().ok() } else { self.results.try_recv().ok() };
        match r {
            None if blocking => Err(self.fail("a verifier thread died".into())),
            None => Ok(false),
            Some((i, ok)) => {
                self.outstanding -= 1;
                if ok {
                    Ok(true)
                } else {
                    Err(self.fail(format!("segment {i} (bytes from {}) differs", i * self.cp.segment)))
                }
            }
        }
    }

    /// Read the next segment, queue its verification, return it.
    fn advance(&mut self) -> io::Result<Arc<Vec<u8>>> {
        let cur = match self.ahead.take() {
            Some(b) => b,
            None => self.fill()?,
        };
        let next = if cur.len() == self.cp.segment { self.fill()? } else { Vec::new() };
        let last = next.is_empty();
        let k = self.index;
        self.index += 1;
        let start = match k {
            0 => Sha256::new().serialize(),
            _ => match self.cp.states.get(k - 1) {
                Some(s) => *s,
                None => return Err(self.fail("the stream is longer than recorded".into())),
            },
        };
        self.offset += cur.len() as u64;
        let expect = if last {
            if self.cp.states.len() != k || self.offset != self.cp.length {
                return Err(self.fail(format!("{} bytes, {} recorded", self.offset, self.cp.length)));
            }
            Expect::Final(self.digest.clone())
        } else {
            match self.cp.states.get(k) {
                Some(s) => Expect::State(*s),
                None => return Err(self.fail("the stream is longer than recorded".into())),
            }
        };
        if !last {
            self.ahead = Some(next);
        }
        self.read_all = last;
        let data = Arc::new(cur);
        let job = Job { index: k, start, data: data.clone(), expect };
        match self.jobs.as_ref().map(|j| j.send(job).is_ok()) {
            Some(true) => self.outstanding += 1,
            _ => return Err(self.fail("the verifier threads stopped".into())),
        }
        Ok(data)
    }
}

impl<S: Segments> Read for ParallelVerifier<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(f) = &self.failure {
            return Err(io::Error::new(io::ErrorKind::InvalidData, f.clone()));
        }
        loop {
            if let Some(c) = &self.cur
                && self.pos < c.len()
            {
                let n = out.len().min(c.len() - self.pos);
                out[..n].copy_from_slice(&c[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.read_all {
                self.jobs = None;
                while self.outstanding > 0 {
                    self.take_result(true)?;
                }
                return Ok(0);
            }
            while self.take_result(false)? {}
            while self.outstanding >= IN_FLIGHT {
                self.take_result(true)?;
            }
            self.cur = Some(self.advance()?);
            self.pos = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn hash(d: &[u8], seg: usize, chunk: usize) -> (Digest, Checkpoints) {
        let mut h = CheckpointHasher::with_segment(seg);
        for c in d.chunks(chunk.max(1)) {
            h.update(c);
        }
        h.finish()
    }

    fn export(d: &[u8], cp: Checkpoints, digest: Digest, read: usize) -> io::Result<Vec<u8>> {
        let mut v = ParallelVerifier::new(ReadSegments(d), cp, digest);
        let mut out = Vec::new();
        let mut buf = vec![0u8; read];
        loop {
            let n = v.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    proptest! {
        #[test]
        fn same_digest_as_the_crates_sha256(len in 0usize..5000, chunk in 1usize..300, seg in 1usize..8) {
            let d = data(len, 7);
            let (digest, cp) = hash(&d, seg * 64, chunk);
            prop_assert_eq!(digest.clone(), Digest::of(&d));
            let full = if len == 0 { 0 } else { (len - 1) / (seg * 64) };
            prop_assert_eq!(cp.states.len(), full);
            prop_assert_eq!(Checkpoints::from_record(&cp.to_record()), Some(cp.clone()));
            prop_assert_eq!(export(&d, cp, digest, chunk).unwrap(), d);
        }

        #[test]
        fn any_flipped_byte_fails_verification(len in 1usize..3000, at in any::<prop::sample::Index>(), seg in 1usize..6) {
            let d = data(len, 3);
            let (digest, cp) = hash(&d, seg * 64, 97);
            let mut bad = d.clone();
            bad[at.index(len)] ^= 0x40;
            let err = export(&bad, cp, digest, 1000).unwrap_err();
            prop_assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            prop_assert!(err.to_string().contains("could not verify layer data"));
        }
    }

    #[test]
    fn length_changes_and_forged_checkpoints_fail() {
        let d = data(10_000, 1);
        let (digest, cp) = hash(&d, 1024, 333);
        assert!(export(&d[..9_000], cp.clone(), digest.clone(), 512).is_err(), "truncated");
        let mut longer = d.clone();
        longer.extend_from_slice(b"extra");
        assert!(export(&longer, cp.clone(), digest.clone(), 512).is_err(), "extended");
        let mut forged = cp.to_record();
        forged.states[3] = forged.states[4].clone();
        let forged = Checkpoints::from_record(&forged).unwrap();
        assert!(export(&d, forged, digest.clone(), 512).is_err(), "forged state");
        assert!(export(&d, cp, Digest::of(b"other"), 512).is_err(), "wrong digest");
    }

    #[test]
    fn unusable_records_are_refused() {
        let (_, cp) = hash(&data(5000, 2), 1024, 100);
        let good = cp.to_record();
        let mut r = good.clone();
        r.version = 1;
        assert!(Checkpoints::from_record(&r).is_none(), "version 1 records are verified sequentially");
        let mut r = good.clone();
        r.segment = 100;
        assert!(Checkpoints::from_record(&r).is_none());
        let mut r = good.clone();
        r.states.pop();
        assert!(Checkpoints::from_record(&r).is_none());
        let mut r = good.clone();
        r.states[0] = "xyz".into();
        assert!(Checkpoints::from_record(&r).is_none());
        let mut r = good;
        r.states[0] = "0".repeat(64);
        assert!(Checkpoints::from_record(&r).is_none(), "a state of the wrong size");
    }
}
