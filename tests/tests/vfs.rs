//! The conformance suite on vfs, the oracle: every case must pass here.

conformance::stamp!(vfs, conformance::BuiltinFactory::new("vfs"));

/// `run_suite`, as `layerctl conformance` calls it: one line per case, the
/// summary line last, nothing failed on the oracle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_suite_reports_every_case() {
    let factory = conformance::BuiltinFactory::new("vfs");
    let mut seen = 0;
    let report = conformance::run_suite_with(&factory, Some("lifecycle::"), &mut |_| seen += 1).await;
    let want = conformance::cases().iter().filter(|c| c.group == "lifecycle").count();
    assert_eq!((report.cases.len(), seen), (want, want));
    let text = report.to_string();
    assert_eq!(text.lines().count(), want + 1, "{text}");
    assert_eq!(text.lines().last(), Some(format!("{want} passed, 0 failed, 0 skipped").as_str()), "{text}");
    assert!(report.success(), "{}", report.details());
}
