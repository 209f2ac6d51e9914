//! The vfs driver: every layer is a full copy of its parent.
