//! Image names: [`Reference`] (oci-spec's, with Docker's normalization:
//! `busybox` is `docker.io/library/busybox:latest`) and the "familiar" short
//! form Docker writes into `repositories.json` (`busybox:latest`).

pub use oci_spec::distribution::Reference;

use crate::error::{ImageStoreError, Result};

const HUB: &str = "docker.io";
const OFFICIAL: &str = "library/";

/// Parse a user-given name (`busybox`, `localhost:5000/a/b:v1`,
/// `repo@sha256:…`) into its normalized [`Reference`].
pub fn parse(name: &str) -> Result<Reference> {
    // oci-spec accepts both a tag and a digest; Docker's stores keep one.
    let r: Reference = name.parse().map_err(|e: oci_spec::distribution::ParseError| {
        ImageStoreError::InvalidReference { name: name.to_string(), why: e.to_string() }
    })?;
    if r.tag().is_some() && r.digest().is_some() {
        return Err(ImageStoreError::InvalidReference {
            name: name.to_string(),
            why: "a name carries a tag or a digest, not both".into(),
        });
    }
    Ok(r)
}

/// The full normalized string (`docker.io/library/busybox:latest`): the key
/// the store uses and what the API shows.
pub fn full(r: &Reference) -> String {
    r.whole()
}

/// The repository part in Docker's familiar form (`busybox`,
/// `localhost:5000/a/b`).
pub fn familiar_repo(r: &Reference) -> String {
    if r.registry() == HUB {
        r.repository().strip_prefix(OFFICIAL).unwrap_or(r.repository()).to_string()
    } else {
        format!("{}/{}", r.registry(), r.repository())
    }
}

/// The whole name in Docker's familiar form (`busybox:latest`).
pub fn familiar(r: &Reference) -> String {
    let mut s = familiar_repo(r);
    if let Some(t) = r.tag() {
        s.push(':');
        s.push_str(t);
    } else if let Some(d) = r.digest() {
        s.push('@');
        s.push_str(d);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_normalization() {
        let r = parse("busybox").unwrap();
        assert_eq!(full(&r), "docker.io/library/busybox:latest");
        assert_eq!(familiar(&r), "busybox:latest");
        let r = parse("localhost:5000/a/b:v1").unwrap();
        assert_eq!(full(&r), "localhost:5000/a/b:v1");
        assert_eq!(familiar(&r), "localhost:5000/a/b:v1");
        assert_eq!(familiar_repo(&r), "localhost:5000/a/b");
        let r = parse("user/app:2").unwrap();
        assert_eq!(full(&r), "docker.io/user/app:2");
        assert_eq!(familiar(&r), "user/app:2");
        let d = format!("busybox@sha256:{}", "a".repeat(64));
        assert_eq!(familiar(&parse(&d).unwrap()), d);
        assert_eq!(parse(&familiar(&parse("quay.io/x/y:z").unwrap())).unwrap(), parse("quay.io/x/y:z").unwrap());
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", "UPPER", "a:b:c", "-x", "x@sha256:12", &format!("x:t@sha256:{}", "a".repeat(64))] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
