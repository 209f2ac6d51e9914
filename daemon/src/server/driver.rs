//! The `--driver` flag: which graph driver the store runs on.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use graphdriver::Driver;

/// A parsed `--driver` value: the one list of driver kinds,
/// [`drivers::DriverKind`].
pub use drivers::DriverKind as DriverSpec;

/// Construct the driver, its home being `<root>/<driver name>` (for a
/// plugin, `<root>/<plugin name>`, as dockerd does it).
pub async fn open(spec: &DriverSpec, root: &Path) -> anyhow::Result<Arc<dyn Driver>> {
    match spec {
        DriverSpec::Auto => {
            let (name, driver, passed) =
                drivers::registry::select(root).with_context(|| format!("choose a driver for {}", root.display()))?;
            for why in passed {
                tracing::info!(why, "driver passed over");
            }
            tracing::info!(driver = name, "driver chosen automatically");
            Ok(driver)
        }
        DriverSpec::Plugin(name) => {
            let home = root.join(name);
            let d = plugin::PluginDriver::connect(name, &home, plugin::ClientOptions::default())
                .await
                .with_context(|| format!("use graphdriver plugin {name} (home {})", home.display()))?;
            tracing::info!(plugin = %name, addr = %d.addr(), "graphdriver plugin activated and initialised");
            Ok(d)
        }
        builtin => {
            let name = builtin.to_string();
            let others: Vec<&str> = drivers::registry::prior_drivers(root).into_iter().filter(|p| *p != name).collect();
            if !others.is_empty() {
                tracing::warn!(
                    driver = %name,
                    others = others.join(", "),
                    "the root already holds another driver's state; a default dockerd refuses a root with several"
                );
            }
            drivers::registry::open(&name, root)
                .with_context(|| format!("start the {name} driver in {}", root.join(&name).display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_plugin_says_where_it_was_looked_for() {
        let dir = std::path::Path::new("/nonexistent");
        let name = format!("layerd-test-absent-{}", std::process::id());
        let msg = format!("{:#}", open(&DriverSpec::Plugin(name.clone()), dir).await.err().unwrap());
        assert!(msg.contains(&name) && msg.contains("/run/docker/plugins"), "{msg}");
    }
}
