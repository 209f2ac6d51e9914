//! The conformance suite on the overlay driver (kernel overlayfs), its
//! per-case roots on the disk filesystem of the system temp dir.

conformance::stamp!(overlay, conformance::BuiltinFactory::new("overlay2"));
