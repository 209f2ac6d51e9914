//! RW layer names: what users call a container's writable layer.

use std::fmt;

use crate::error::LayerStoreError;

/// A validated RW layer name: 1–128 bytes of `[A-Za-z0-9_.-]`, starting with
/// an alphanumeric (Docker's container-name rule, which keeps the name usable
/// as a single path component).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RwName(String);

impl RwName {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Self, LayerStoreError> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(RwName(s.to_string()))
        } else {
            let shown: String = s.chars().take(64).collect();
            Err(LayerStoreError::InvalidName(shown))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RwName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RwName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_container_style_names() {
        for good in ["a", "web-1", "db_2.primary", &"a".repeat(128), "0abc"] {
            assert!(RwName::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn rejects_hostile_names() {
        for bad in
            ["", ".", "..", "-x", "_x", ".hidden", "a/b", "../x", "a b", "a\0b", "ä", &"a".repeat(129), "a\n", "x:y"]
        {
            assert!(RwName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
