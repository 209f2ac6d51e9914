//! [`LayerRef`]: how a user names a layer — its ChainID, or (as with
//! Docker's CLI) any unique prefix of one, with or without `sha256:`.
//! [`Store::resolve`](crate::Store::resolve) turns it into a [`ChainId`].

use std::fmt;

use crate::digest::{ChainId, Digest};
use crate::error::LayerStoreError;

/// Candidates an ambiguity error lists at most.
const SHOWN: usize = 10;

/// A parsed layer name: a full ChainID or a prefix of its hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerRef {
    Full(ChainId),
    /// 1 to 63 lowercase hex digits.
    Prefix(String),
}

impl LayerRef {
    /// `sha256:<hex>` or `<hex>`, where `<hex>` is 1 to 64 lowercase hex
    /// digits (64: a full ChainID).
    pub fn parse(s: &str) -> Result<LayerRef, LayerStoreError> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(LayerStoreError::InvalidLayerRef(s.chars().take(80).collect()));
        }
        Ok(match Digest::parse_hex(hex) {
            Some(d) => LayerRef::Full(ChainId(d)),
            None => LayerRef::Prefix(hex.to_owned()),
        })
    }

    /// Whether `chain` is named by this reference.
    pub fn matches(&self, chain: &ChainId) -> bool {
        match self {
            LayerRef::Full(c) => c == chain,
            LayerRef::Prefix(p) => chain.digest().has_hex_prefix(p),
        }
    }

    /// Pick the one ChainID of `candidates` this names: none is
    /// `LayerNotFound`, several is `AmbiguousLayerRef` listing them.
    pub fn choose(&self, mut candidates: Vec<ChainId>) -> Result<ChainId, LayerStoreError> {
        match candidates.len() {
            0 => Err(LayerStoreError::LayerNotFound(self.to_string())),
            1 => Ok(candidates.remove(0)),
            n => {
                candidates.sort();
                let mut shown: Vec<String> = candidates.iter().take(SHOWN).map(ToString::to_string).collect();
                if n > SHOWN {
                    shown.push(format!("and {} more", n - SHOWN));
                }
                Err(LayerStoreError::AmbiguousLayerRef { prefix: self.to_string(), candidates: shown })
            }
        }
    }
}

impl fmt::Display for LayerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerRef::Full(c) => c.fmt(f),
            LayerRef::Prefix(p) => write!(f, "sha256:{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "2f23c1aa7d7f0000000000000000000000000000000000000000000000000001";
    const B: &str = "2f23c1aa7d7f0000000000000000000000000000000000000000000000000002";

    fn chain(hex: &str) -> ChainId {
        ChainId::parse(&format!("sha256:{hex}")).unwrap()
    }

    #[test]
    fn parses_full_ids_and_prefixes_with_or_without_the_algorithm() {
        assert_eq!(LayerRef::parse(&format!("sha256:{A}")).unwrap(), LayerRef::Full(chain(A)));
        assert_eq!(LayerRef::parse(A).unwrap(), LayerRef::Full(chain(A)));
        assert_eq!(LayerRef::parse("sha256:2f23c1aa7d7f").unwrap(), LayerRef::Prefix("2f23c1aa7d7f".into()));
        assert_eq!(LayerRef::parse("2f2").unwrap(), LayerRef::Prefix("2f2".into()));
        for bad in ["", "sha256:", "2F23", "xyz", "sha512:2f23", &format!("{A}0"), "md5:00"] {
            let err = LayerRef::parse(bad).unwrap_err();
            assert_eq!(err.kind(), graphdriver::ErrorKind::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn a_prefix_names_one_layer_or_says_which_it_could_be() {
        let r = LayerRef::parse("2f23c1aa7d7f").unwrap();
        assert!(r.matches(&chain(A)) && r.matches(&chain(B)));
        assert!(LayerRef::parse("2f23c1ab").unwrap().choose(vec![]).is_err());
        let odd = LayerRef::parse("2f23c").unwrap();
        assert!(odd.matches(&chain(A)) && !LayerRef::parse("2f23d").unwrap().matches(&chain(A)));
        assert_eq!(r.choose(vec![chain(A)]).unwrap(), chain(A));
        let err = r.choose(vec![chain(B), chain(A)]).unwrap_err();
        assert_eq!(err.kind(), graphdriver::ErrorKind::InvalidArgument);
        let msg = err.to_string();
        assert!(msg.contains(A) && msg.contains(B) && msg.contains("ambiguous"), "{msg}");
        let err = r.choose(vec![]).unwrap_err();
        assert_eq!(err.kind(), graphdriver::ErrorKind::NotFound);
        assert!(err.to_string().contains("sha256:2f23c1aa7d7f"), "{err}");
    }
}
