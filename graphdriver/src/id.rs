//! Driver-side layer ids ("cache-id", "mount-id"): 64 lowercase hex digits,
//! optionally followed by `-init`, exactly as moby writes them.

use std::fmt;

use crate::error::DriverError;

/// A validated driver id. Parsed once; drivers take this type, never `&str`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheId(String);

impl CacheId {
    /// A fresh random id.
    pub fn random() -> Self {
        let bytes: [u8; 32] = rand::random();
        CacheId(hex::encode(bytes))
    }

    /// The id of the init layer that sits below this RW layer.
    pub fn init(&self) -> Self {
        CacheId(format!("{}-init", self.0.trim_end_matches("-init")))
    }

    pub fn parse(s: &str) -> Result<Self, DriverError> {
        let hexpart = s.strip_suffix("-init").unwrap_or(s);
        if hexpart.len() == 64 && hexpart.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(CacheId(s.to_string()))
        } else {
            Err(DriverError::InvalidArgument(format!(
                "invalid driver id {s:?}: want 64 lowercase hex digits, optionally with -init"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CacheId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_moby_ids() {
        let id = CacheId::random();
        assert_eq!(CacheId::parse(id.as_str()).unwrap(), id);
        let init = id.init();
        assert!(init.as_str().ends_with("-init"));
        assert_eq!(CacheId::parse(init.as_str()).unwrap(), init);
        assert_eq!(init.init(), init);
    }

    #[test]
    fn parse_rejects_hostile_ids() {
        for bad in [
            "",
            "../../etc",
            "ABCDEF",
            &"a".repeat(63),
            &"a".repeat(65),
            &format!("{}-init-init", "a".repeat(64)),
            &format!("{}/x", "a".repeat(62)),
            &"A".repeat(64),
            &format!("{}\0", "a".repeat(63)),
        ] {
            assert!(CacheId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
