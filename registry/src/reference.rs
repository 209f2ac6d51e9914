//! Image references as Docker writes them (`busybox`, `localhost:5000/a/b:tag`,
//! `name@sha256:…`), parsed and normalised by `oci_spec`'s [`Reference`].

pub use oci_spec::distribution::Reference;

use crate::error::{RegistryError, Result};

/// Parse and normalise a reference: Docker Hub is the default registry,
/// `library/` its default namespace, `latest` the default tag.
pub fn parse(s: &str) -> Result<Reference> {
    let r: Reference =
        s.parse().map_err(|e| RegistryError::InvalidArgument(format!("invalid image reference {s:?}: {e}")))?;
    if let Some(d) = r.digest() {
        crate::blob::check_digest(d).map_err(|_| {
            RegistryError::InvalidArgument(format!("invalid image reference {s:?}: want a sha256 digest"))
        })?;
    }
    Ok(r)
}

/// The tag or digest to ask the registry for.
pub fn tag_or_digest(r: &Reference) -> &str {
    r.digest().or(r.tag()).unwrap_or("latest")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_as_docker_does() {
        let r = parse("busybox").unwrap();
        assert_eq!((r.registry(), r.repository(), tag_or_digest(&r)), ("docker.io", "library/busybox", "latest"));
        let r = parse("localhost:5000/a/b:v1").unwrap();
        assert_eq!((r.registry(), r.repository(), tag_or_digest(&r)), ("localhost:5000", "a/b", "v1"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("127.0.0.1:5000/x@{d}")).unwrap();
        assert_eq!(tag_or_digest(&r), d);
        for bad in ["", "Upper", "a:b:c", "x@sha256:zz"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
