//! `check`: compare the store's view with the disk and the driver.
//! Runs with no store-wide lock; what is created or deleted meanwhile is
//! recognised and skipped, never reported or "repaired".

use std::sync::Arc;

use super::Inner;
use crate::error::Result;
use crate::types::{CheckOpts, CheckReport};

impl Inner {
    pub(super) async fn check(self: &Arc<Self>, _opts: CheckOpts) -> Result<CheckReport> {
        todo!("Store::check")
    }
}
