//! `layerctl conformance --driver NAME [--root DIR] [--filter S]`: run the
//! driver conformance suite in this process against a built-in driver. It
//! needs no daemon (and must not share a root with one): every case gets
//! fresh temp dirs under `--root` (default: the system's temp dir on disk).
//! Prints one line per case as it finishes, the failures' details on
//! stderr, and ends with `N passed, M failed, K skipped`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use conformance::{Registry, run_suite_with};

use super::{CliError, CliResult};

pub async fn run(driver: &str, root: Option<PathBuf>, filter: Option<&str>) -> CliResult<ExitCode> {
    if drivers::registry::canonical(driver).is_none() {
        return Err(CliError::Usage(format!(
            "driver {driver} is not available (built in: {})",
            drivers::registry::BUILTIN.join(", ")
        )));
    }
    let mut factory = Registry::new(driver);
    if let Some(dir) = root {
        std::fs::create_dir_all(&dir).map_err(|e| CliError::Usage(format!("create --root {}: {e}", dir.display())))?;
        factory = factory.in_dir(dir);
    }
    let mut print = |case: &conformance::CaseReport| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{case}");
        let _ = out.flush();
    };
    let report = run_suite_with(&factory, filter, &mut print).await;
    let details = report.details();
    if !details.is_empty() {
        eprintln!("{details}");
    }
    outln!("{}", report.summary());
    Ok(if report.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
