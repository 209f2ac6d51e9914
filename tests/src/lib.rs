//! The driver conformance suite (issue 4) and end-to-end tests.
