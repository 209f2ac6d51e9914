//! Content digests: `sha256:<64 hex>`, parsed once into [`DiffId`] and
//! [`ChainId`], and the ChainID fold Docker uses.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::LayerStoreError;

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether the hex form starts with `prefix` (lowercase hex digits),
    /// without formatting the digest.
    pub fn has_hex_prefix(&self, prefix: &str) -> bool {
        prefix.len() <= 64
            && prefix.bytes().enumerate().all(|(i, c)| {
                let byte = self.0[i / 2];
                let nibble = if i % 2 == 0 { byte >> 4 } else { byte & 0xf };
                char::from_digit(u32::from(nibble), 16).is_some_and(|d| d as u8 == c)
            })
    }

    pub fn parse(s: &str) -> Result<Self, LayerStoreError> {
        let bad = || LayerStoreError::InvalidDigest(truncate_for_error(s));
        let hexpart = s.strip_prefix("sha256:").ok_or_else(bad)?;
        Self::parse_hex(hexpart).ok_or_else(bad)
    }

    /// Parse a bare 64-hex string (a layerdb directory name).
    pub fn parse_hex(hexpart: &str) -> Option<Self> {
        if hexpart.len() != 64 || !hexpart.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hexpart, &mut out).ok()?;
        Some(Digest(out))
    }
}

fn truncate_for_error(s: &str) -> String {
    let mut t: String = s.chars().take(80).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

macro_rules! digest_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Digest);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, LayerStoreError> {
                Digest::parse(s).map($name)
            }
            pub fn hex(&self) -> String {
                self.0.hex()
            }
            pub fn digest(&self) -> &Digest {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl FromStr for $name {
            type Err = LayerStoreError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

digest_newtype!(
    /// SHA-256 of a layer's uncompressed tar, trailing padding included.
    DiffId
);
digest_newtype!(
    /// Identity of a layer together with all its ancestors.
    ChainId
);

impl ChainId {
    /// Docker's fold: a base layer's ChainID is its DiffID; otherwise
    /// `sha256(parent_chain_id + " " + diff_id)` over the `sha256:<hex>` strings.
    pub fn of(parent: Option<&ChainId>, diff: &DiffId) -> ChainId {
        match parent {
            None => ChainId(diff.0.clone()),
            Some(p) => ChainId(Digest::of(format!("{p} {diff}").as_bytes())),
        }
    }

    /// The ChainID of a whole stack of DiffIDs, base first.
    pub fn of_stack<'a>(diffs: impl IntoIterator<Item = &'a DiffId>) -> Option<ChainId> {
        diffs.into_iter().fold(None, |acc, d| Some(ChainId::of(acc.as_ref(), d)))
    }
}

/// A streaming SHA-256.
#[derive(Default, Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn new() -> Self {
        Hasher(Sha256::new())
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

/// A reader that hashes what passes through it and, at end of stream,
/// fails with `InvalidData` unless the digest equals `expected`.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Option<Hasher>,
    expected: Digest,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest) -> Self {
        VerifyingReader { inner, hasher: Some(Hasher::new()), expected }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(hasher) = self.hasher.as_mut() else {
            return Ok(0);
        };
        let n = self.inner.read(buf)?;
        if n > 0 {
            hasher.update(&buf[..n]);
            return Ok(n);
        }
        let got = self.hasher.take().map(Hasher::finish);
        match got {
            Some(got) if got != self.expected => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "could not verify layer data: got {got}, want {}; the stored layer is damaged — re-import it",
                    self.expected
                ),
            )),
            _ => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The empty layer Docker knows: 1024 NUL bytes.
    const EMPTY_LAYER: &str = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

    #[test]
    fn empty_layer_digest_matches_docker() {
        let d = DiffId(Digest::of(&[0u8; 1024]));
        assert_eq!(d.to_string(), EMPTY_LAYER);
        assert_eq!(ChainId::of(None, &d).to_string(), EMPTY_LAYER);
    }

    #[test]
    fn chain_id_of_child_matches_formula() {
        let a = DiffId(Digest::of(b"a"));
        let b = DiffId(Digest::of(b"b"));
        let ca = ChainId::of(None, &a);
        let cb = ChainId::of(Some(&ca), &b);
        let want = Digest::of(format!("{a} {b}").as_bytes());
        assert_eq!(cb.0, want);
        assert_eq!(ChainId::of_stack([&a, &b]), Some(cb));
        assert_eq!(ChainId::of_stack([]), None);
    }

    #[test]
    fn parse_rejects_hostile_digests() {
        let good = format!("sha256:{}", "ab".repeat(32));
        assert!(Digest::parse(&good).is_ok());
        for bad in [
            String::new(),
            "sha256:".into(),
            "sha512:".to_string() + &"a".repeat(64),
            "sha256:".to_string() + &"A".repeat(64),
            "sha256:".to_string() + &"a".repeat(63),
            "sha256:".to_string() + &"a".repeat(65),
            "sha256:".to_string() + &"g".repeat(64),
            "SHA256:".to_string() + &"a".repeat(64),
            " sha256:".to_string() + &"a".repeat(64),
            "sha256:".to_string() + &"a".repeat(62) + "é",
            "a".repeat(64),
            "sha256:../../../../etc/passwd".into(),
            "sha256:".to_string() + &"a".repeat(10_000),
        ] {
            let err = Digest::parse(&bad).unwrap_err();
            assert!(err.to_string().len() < 200, "error echoes unbounded input");
        }
    }

    #[test]
    fn verifying_reader_detects_mismatch() {
        let data = b"hello world".to_vec();
        let mut ok = VerifyingReader::new(&data[..], Digest::of(&data));
        let mut out = Vec::new();
        ok.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        let mut bad = VerifyingReader::new(&data[..], Digest::of(b"other"));
        let err = bad.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("could not verify layer data"));
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(bytes in proptest::array::uniform32(any::<u8>())) {
            let d = Digest(bytes);
            prop_assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        }

        #[test]
        fn chain_fold_is_incremental(stack in proptest::collection::vec(any::<[u8; 8]>(), 1..20)) {
            let diffs: Vec<DiffId> = stack.iter().map(|b| DiffId(Digest::of(b))).collect();
            let mut acc: Option<ChainId> = None;
            for d in &diffs {
                acc = Some(ChainId::of(acc.as_ref(), d));
            }
            prop_assert_eq!(acc, ChainId::of_stack(&diffs));
        }

        #[test]
        fn parse_never_panics(s in ".{0,100}") {
            let _ = Digest::parse(&s);
        }
    }
}
