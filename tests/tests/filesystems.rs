//! The suite holds on the filesystems users run Docker on: every case on
//! vfs and overlay2 with the case dirs on a loop-mounted ext4 and on a
//! loop-mounted XFS (RHEL's default). Each filesystem is made fresh and torn
//! down (unmounted, detached, deleted) also when a case fails.

// A test harness: its helpers panic on any unexpected failure by design.
#![allow(clippy::unwrap_used)]

use drivers::testing::{LoopFs, LoopKind};

/// Sparse image size: room for a case's largest files a few times over.
const IMAGE_MB: u64 = 2048;

fn suite_on(kind: LoopKind) {
    let lo = LoopFs::with_fs(kind, IMAGE_MB).unwrap_or_else(|e| panic!("cannot make a loop-mounted {kind:?}: {e}"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut failures = Vec::new();
    for driver in ["vfs", "overlay2"] {
        let factory = conformance::BuiltinFactory::new(driver).in_dir(lo.path());
        let report = rt.block_on(conformance::run_suite(&factory, None));
        eprintln!("{driver} on {}: {}", kind.name(), report.summary());
        if !report.success() {
            failures.push(format!("{driver} on {}:\n{}", kind.name(), report.details()));
        }
        let skipped: Vec<String> = report
            .cases
            .iter()
            .filter_map(|c| match &c.outcome {
                conformance::Outcome::Skipped(why) => Some(format!("{}: {why}", c.name)),
                _ => None,
            })
            .collect();
        assert!(skipped.is_empty(), "{driver} on {}: cases skipped: {skipped:?}", kind.name());
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(10));
    lo.close().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_suite_holds_on_ext4() {
    suite_on(LoopKind::Ext4);
}

#[test]
fn the_suite_holds_on_xfs() {
    suite_on(LoopKind::Xfs);
}
