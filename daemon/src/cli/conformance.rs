//! `layerctl conformance --driver NAME [--root DIR] [--filter S]`: run the
//! driver conformance suite in this process against a built-in driver, or
//! through the plugin protocol against a running plugin (`plugin:NAME`). It
//! needs no daemon (and must not share a root with one): every case gets
//! fresh temp dirs under `--root` (default: the system's temp dir on disk).
//! Prints one line per case as it finishes, the failures' details on
//! stderr, and ends with `N passed, M failed, K skipped`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use conformance::{BuiltinFactory, Factory, run_suite_with};
use drivers::DriverKind;
use plugin::{ClientOptions, PluginDriver};

use super::{CliError, CliResult};

pub async fn run(driver: &str, root: Option<PathBuf>, filter: Option<&str>) -> CliResult<ExitCode> {
    if let Some(dir) = &root {
        std::fs::create_dir_all(dir).map_err(|e| CliError::Usage(format!("create --root {}: {e}", dir.display())))?;
    }
    let kind: DriverKind = driver.parse().map_err(CliError::Usage)?;
    let name = match kind {
        DriverKind::Plugin(name) => {
            let factory = ThroughPlugin { name, parent: root };
            return run_with(&factory, filter).await;
        }
        DriverKind::Auto => {
            return Err(CliError::Usage(format!(
                "the suite runs one named driver: {} or plugin:NAME",
                DriverKind::builtin_list()
            )));
        }
        builtin => builtin.to_string(),
    };
    let mut factory = BuiltinFactory::new(name);
    if let Some(dir) = root {
        factory = factory.in_dir(dir);
    }
    run_with(&factory, filter).await
}

/// A running plugin, found as dockerd finds it; every case initialises it
/// with a fresh home of its own (`<case root>/<name>`).
struct ThroughPlugin {
    name: String,
    parent: Option<PathBuf>,
}

#[async_trait::async_trait]
impl Factory for ThroughPlugin {
    fn driver_name(&self) -> String {
        format!("plugin:{}", self.name)
    }

    fn parent_dir(&self) -> Option<PathBuf> {
        self.parent.clone()
    }

    async fn open(&self, root: &Path) -> graphdriver::Result<Arc<dyn graphdriver::Driver>> {
        let d = PluginDriver::connect(&self.name, &root.join(&self.name), ClientOptions::default()).await?;
        Ok(d)
    }
}

async fn run_with(factory: &dyn Factory, filter: Option<&str>) -> CliResult<ExitCode> {
    let mut print = |case: &conformance::CaseReport| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{case}");
        let _ = out.flush();
    };
    let report = run_suite_with(factory, filter, &mut print).await;
    let details = report.details();
    if !details.is_empty() {
        eprintln!("{details}");
    }
    outln!("{}", report.summary());
    Ok(if report.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
