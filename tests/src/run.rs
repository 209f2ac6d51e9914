//! Running cases: a fresh temp dir (`root/` for the driver, `work/` to play
//! in) and a fresh driver per case, a time limit, the tree dump on failure,
//! and a teardown that holds the driver to `cleanup()` and `remove()`.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use graphdriver::{Driver, ErrorKind};

use crate::factory::{Factory, default_parent_dir};
use crate::harness::{CaseResult, Cx, Skip, mounts_under};
use crate::report::{CaseReport, Outcome, Report};

/// A case body.
pub type CaseFn = fn(Cx) -> Pin<Box<dyn Future<Output = CaseResult> + Send>>;

/// One named case of the suite.
#[derive(Clone, Copy)]
pub struct Case {
    /// The file in `src/cases/` it lives in.
    pub group: &'static str,
    pub name: &'static str,
    pub run: CaseFn,
}

impl Case {
    /// `group::name`, what a filter matches against.
    pub fn full_name(&self) -> String {
        format!("{}::{}", self.group, self.name)
    }
}

/// Every case, in run order.
pub fn cases() -> &'static [Case] {
    crate::CASES
}

/// Run every case whose `group::name` contains `filter` (all if `None`).
pub async fn run_suite(factory: &dyn Factory, filter: Option<&str>) -> Report {
    run_suite_with(factory, filter, &mut |_| {}).await
}

/// [`run_suite`], calling `progress` as each case finishes.
pub async fn run_suite_with(
    factory: &dyn Factory,
    filter: Option<&str>,
    progress: &mut (dyn FnMut(&CaseReport) + Send),
) -> Report {
    let mut report = Report { driver: factory.driver_name(), cases: Vec::new() };
    for case in cases().iter().filter(|c| filter.is_none_or(|f| c.full_name().contains(f))) {
        let r = run_case(factory, case).await;
        progress(&r);
        report.cases.push(r);
    }
    report
}

/// Run one case.
pub async fn run_case(factory: &dyn Factory, case: &Case) -> CaseReport {
    let start = Instant::now();
    let outcome = attempt(factory, case).await;
    CaseReport { group: case.group, name: case.name, outcome, elapsed: start.elapsed() }
}

/// Each case's time limit: `$CONFORMANCE_CASE_TIMEOUT` seconds, default 300.
fn case_timeout() -> Duration {
    let secs = std::env::var("CONFORMANCE_CASE_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    Duration::from_secs(secs)
}

async fn attempt(factory: &dyn Factory, case: &Case) -> Outcome {
    if !nix::unistd::geteuid().is_root() {
        return Outcome::Skipped("the suite needs root (mknod, chown, trusted.* xattrs, mounts)".into());
    }
    let parent = factory.parent_dir().unwrap_or_else(default_parent_dir);
    let prefix: String = format!("conformance-{}-{}-", factory.driver_name(), case.name)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    let tmp = match tempfile::Builder::new().prefix(&prefix).tempdir_in(&parent) {
        Ok(t) => t,
        Err(e) => return Outcome::Failed(format!("cannot make a temp dir in {}: {e}", parent.display())),
    };
    let (root, work) = (tmp.path().join("root"), tmp.path().join("work"));
    for dir in [&root, &work] {
        if let Err(e) = std::fs::create_dir(dir) {
            return Outcome::Failed(format!("cannot make {}: {e}", dir.display()));
        }
    }
    let driver = match factory.open(&root).await {
        Ok(d) => d,
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            return Outcome::Skipped(format!("driver unsupported on this host: {e}"));
        }
        Err(e) => return Outcome::Failed(format!("cannot open the driver: {e}")),
    };
    let cx = Cx::new(driver.clone(), root.clone(), work);
    let limit = case_timeout();
    let task = tokio::spawn((case.run)(cx.clone()));
    let abort = task.abort_handle();
    let res = match tokio::time::timeout(limit, task).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => Err(anyhow::anyhow!("the case panicked: {}", panic_message(e))),
        Err(_) => {
            abort.abort();
            Err(anyhow::anyhow!("timed out after {}s (a deadlock?)", limit.as_secs()))
        }
    };
    let mut outcome = match res {
        Ok(()) => Outcome::Passed,
        Err(e) => match e.downcast_ref::<Skip>() {
            Some(s) => Outcome::Skipped(s.0.clone()),
            None => {
                let dump = match tokio::time::timeout(Duration::from_secs(60), cx.dump()).await {
                    Ok(d) => d,
                    Err(_) => "(dumping the trees timed out)".into(),
                };
                Outcome::Failed(format!("{e:#}\n\ntrees of the relevant layers and dirs:\n{dump}"))
            }
        },
    };
    let problems = match tokio::time::timeout(Duration::from_secs(120), teardown(&driver, &root)).await {
        Ok(p) => p,
        Err(_) => vec!["teardown timed out".into()],
    };
    if !problems.is_empty() {
        let text = format!("teardown: {}", problems.join("; "));
        outcome = match outcome {
            Outcome::Failed(why) => Outcome::Failed(format!("{why}\n{text}")),
            _ => Outcome::Failed(text),
        };
    }
    drop(cx);
    drop(driver);
    if let Err(e) = tmp.close()
        && let Outcome::Failed(why) = &mut outcome
    {
        why.push_str(&format!("\n(could not remove the case's temp dir: {e})"));
    }
    outcome
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(no message)".into()),
        Err(e) => e.to_string(),
    }
}

/// `cleanup()` must leave no mount below `root`; then every layer is
/// removed (children first where the driver answers `Conflict`).
async fn teardown(d: &Arc<dyn Driver>, root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = d.cleanup().await {
        problems.push(format!("cleanup(): {e}"));
    }
    match mounts_under(root) {
        Ok(m) if !m.is_empty() => problems.push(format!("cleanup() left mounts: {m:?}")),
        Ok(_) => {}
        Err(e) => problems.push(format!("{e:#}")),
    }
    for pass in 0..8 {
        let ids = match d.ids().await {
            Ok(ids) => ids,
            Err(e) => {
                problems.push(format!("ids(): {e}"));
                return problems;
            }
        };
        if ids.is_empty() {
            return problems;
        }
        for id in ids {
            match d.remove(&id).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) if e.kind() == ErrorKind::Conflict && pass < 7 => {}
                Err(e) => problems.push(format!("remove {id}: {e}")),
            }
        }
    }
    problems.push("layers left after removing every id eight times".into());
    problems
}

/// Run one case by name on a fresh multi-threaded runtime and panic if it
/// fails; what [`stamp!`](crate::stamp) expands to. A skip prints its reason
/// to stderr and passes, unless `$CONFORMANCE_NO_SKIP` is set.
pub fn stamp_run(factory: &dyn Factory, name: &str) {
    let Some(case) = cases().iter().find(|c| c.name == name) else {
        panic!("no conformance case named {name}");
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime");
    let report = rt.block_on(run_case(factory, case));
    rt.shutdown_timeout(Duration::from_secs(10));
    match report.outcome {
        Outcome::Passed => {}
        Outcome::Skipped(why) => {
            eprintln!("{}: skipped: {why}", case.full_name());
            if std::env::var_os("CONFORMANCE_NO_SKIP").is_some() {
                panic!("{} skipped ($CONFORMANCE_NO_SKIP is set): {why}", case.full_name());
            }
        }
        Outcome::Failed(why) => panic!("{} failed on {}:\n{why}", case.full_name(), factory.driver_name()),
    }
}
