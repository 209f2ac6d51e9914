//! The `--driver` flag: which graph driver the store runs on.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, bail};
use graphdriver::Driver;

/// A parsed `--driver` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverSpec {
    /// dockerd's choice: the driver whose layers are already in the root,
    /// else the first this host supports (overlay2, btrfs, vfs).
    Auto,
    Vfs,
    /// Docker's overlay2 (flag `overlay2`, or its alias `overlay`).
    Overlay,
    Btrfs,
    /// A Docker graphdriver plugin, by name.
    Plugin(String),
}

impl DriverSpec {
    /// The driver's name, which is also its home directory under the root.
    pub fn name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for DriverSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverSpec::Auto => f.write_str("auto"),
            DriverSpec::Vfs => f.write_str("vfs"),
            DriverSpec::Overlay => f.write_str("overlay2"),
            DriverSpec::Btrfs => f.write_str("btrfs"),
            DriverSpec::Plugin(name) => write!(f, "plugin:{name}"),
        }
    }
}

impl FromStr for DriverSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DriverSpec::Auto),
            "vfs" => Ok(DriverSpec::Vfs),
            "overlay" | "overlay2" => Ok(DriverSpec::Overlay),
            "btrfs" => Ok(DriverSpec::Btrfs),
            _ => match s.strip_prefix("plugin:") {
                Some(name) if valid_plugin_name(name) => Ok(DriverSpec::Plugin(name.to_owned())),
                Some(name) => Err(format!("invalid plugin name {name:?}: want [A-Za-z0-9_.-]+")),
                None => {
                    Err(format!("unknown driver {s:?}: want auto, vfs, overlay2 (or overlay), btrfs or plugin:NAME"))
                }
            },
        }
    }
}

fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

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
            let name = builtin.name();
            if !drivers::registry::BUILTIN.contains(&name.as_str()) {
                bail!("driver {name} is not available yet (built in: {})", drivers::registry::BUILTIN.join(", "));
            }
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

    #[test]
    fn parses_every_driver_form() {
        assert_eq!("vfs".parse(), Ok(DriverSpec::Vfs));
        assert_eq!("overlay".parse(), Ok(DriverSpec::Overlay));
        assert_eq!("overlay2".parse(), Ok(DriverSpec::Overlay));
        assert_eq!("btrfs".parse(), Ok(DriverSpec::Btrfs));
        assert_eq!("plugin:my-drv".parse(), Ok(DriverSpec::Plugin("my-drv".into())));
        assert_eq!(DriverSpec::Plugin("x".into()).to_string(), "plugin:x");
        assert_eq!(DriverSpec::Overlay.name(), "overlay2", "the home and layerdb use Docker's name");
    }

    #[test]
    fn rejects_unknown_and_malformed_drivers() {
        assert!("zfs".parse::<DriverSpec>().unwrap_err().contains("unknown driver"));
        assert!("plugin:".parse::<DriverSpec>().is_err());
        assert!("plugin:../x".parse::<DriverSpec>().is_err());
        assert!("plugin:a/b".parse::<DriverSpec>().is_err());
    }

    #[tokio::test]
    async fn a_missing_plugin_says_where_it_was_looked_for() {
        let dir = std::path::Path::new("/nonexistent");
        let name = format!("layerd-test-absent-{}", std::process::id());
        let msg = format!("{:#}", open(&DriverSpec::Plugin(name.clone()), dir).await.err().unwrap());
        assert!(msg.contains(&name) && msg.contains("/run/docker/plugins"), "{msg}");
    }
}
