//! The suite holds on the filesystems users run Docker on: every case on
//! vfs and overlay2 with the case dirs on a loop-mounted ext4 and on a
//! loop-mounted XFS (RHEL's default). Each filesystem is made fresh and torn
//! down (unmounted, detached, deleted) also when a case fails.

// A test harness: its helpers panic on any unexpected failure by design.
#![allow(clippy::unwrap_used)]

use drivers::testing::{LoopFs, LoopKind};

/// Sparse image size: room for a case's largest files a few times over.
const IMAGE_MB: u64 = 2048;

/// A device number the filesystem cannot hold is the tar's fault: a clear
/// `InvalidArgument` naming the member, on every driver, nothing left.
async fn unholdable_device_is_a_client_error(dir: &std::path::Path, driver: &str) {
    let d = drivers::registry::open(driver, dir).unwrap();
    let id = graphdriver::CacheId::random();
    d.create(&id, None, &Default::default()).await.unwrap();
    let mut t = testkit::tars::TarMaker::new();
    t.dir("dev", 0o755).unwrap();
    t.char_dev("dev/big", 511, 1_048_575, 0o600).unwrap();
    let tar = t.finish().unwrap();
    let e = d.apply_diff(&id, None, Box::new(std::io::Cursor::new(tar))).await.unwrap_err();
    assert_eq!(e.kind(), graphdriver::ErrorKind::InvalidArgument, "{driver}: {e}");
    assert!(e.to_string().contains("dev/big"), "{driver}: the error does not name the member: {e}");
    d.remove(&id).await.unwrap();
    assert!(d.ids().await.unwrap().is_empty());
    d.cleanup().await.unwrap();
}

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
    if kind == LoopKind::Xfs {
        for driver in ["vfs", "overlay2"] {
            let dir = lo.path().join(format!("device-{driver}"));
            rt.block_on(unholdable_device_is_a_client_error(&dir, driver));
        }
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
