//! The one list of driver kinds: what `--driver` accepts, what the automatic
//! choice tries and in which order, what the conformance suite and
//! `layer plugin serve` name. Docker's names: `vfs`, `overlay2` (alias
//! `overlay`, the name earlier layerd versions used), `btrfs`; `auto` is
//! dockerd's choice; `plugin:NAME` is a graphdriver plugin, used through the
//! plugin client.

use std::fmt;
use std::str::FromStr;

/// A driver kind, as `--driver` names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DriverKind {
    /// dockerd's choice: the driver whose state the root already holds,
    /// else the first of [`DriverKind::PRIORITY`] this host supports.
    Auto,
    Vfs,
    /// Docker's overlay2 (also accepted as `overlay`).
    Overlay2,
    Btrfs,
    /// A Docker graphdriver plugin, by name (`plugin:NAME`).
    Plugin(String),
}

impl DriverKind {
    /// The built-in drivers, in the order the docs list them.
    pub const BUILTIN: &'static [DriverKind] = &[DriverKind::Vfs, DriverKind::Overlay2, DriverKind::Btrfs];

    /// The order the automatic choice tries them in (dockerd's: overlay2
    /// first; btrfs only works on a btrfs root, and says so; vfs always works).
    pub const PRIORITY: &'static [DriverKind] = &[DriverKind::Overlay2, DriverKind::Btrfs, DriverKind::Vfs];

    /// A built-in driver's name (its home's and its layerdb's dir name).
    pub fn builtin_name(&self) -> Option<&'static str> {
        match self {
            DriverKind::Vfs => Some("vfs"),
            DriverKind::Overlay2 => Some("overlay2"),
            DriverKind::Btrfs => Some("btrfs"),
            DriverKind::Auto | DriverKind::Plugin(_) => None,
        }
    }

    /// The built-in drivers' names, comma-separated, for messages.
    pub fn builtin_list() -> String {
        DriverKind::BUILTIN.iter().filter_map(DriverKind::builtin_name).collect::<Vec<_>>().join(", ")
    }

    /// The built-in driver `name` stands for (itself or through an alias).
    pub fn builtin(name: &str) -> Option<DriverKind> {
        match name {
            "vfs" => Some(DriverKind::Vfs),
            "overlay2" | "overlay" => Some(DriverKind::Overlay2),
            "btrfs" => Some(DriverKind::Btrfs),
            _ => None,
        }
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverKind::Auto => f.write_str("auto"),
            DriverKind::Plugin(name) => write!(f, "plugin:{name}"),
            builtin => f.write_str(builtin.builtin_name().unwrap_or("?")),
        }
    }
}

/// Plugin names: what can name a socket or spec file (dockerd's rule).
pub fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl FromStr for DriverKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(DriverKind::Auto);
        }
        if let Some(kind) = DriverKind::builtin(s) {
            return Ok(kind);
        }
        match s.strip_prefix("plugin:") {
            Some(name) if valid_plugin_name(name) => Ok(DriverKind::Plugin(name.to_owned())),
            Some(name) => Err(format!("invalid plugin name {name:?}: want [A-Za-z0-9_.-]+")),
            None => Err(format!("unknown driver {s:?}: want auto, vfs, overlay2 (or overlay), btrfs or plugin:NAME")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_prints_docker_names() {
        assert_eq!("vfs".parse(), Ok(DriverKind::Vfs));
        assert_eq!("overlay".parse(), Ok(DriverKind::Overlay2));
        assert_eq!("overlay2".parse(), Ok(DriverKind::Overlay2));
        assert_eq!("btrfs".parse(), Ok(DriverKind::Btrfs));
        assert_eq!("auto".parse(), Ok(DriverKind::Auto));
        assert_eq!("plugin:my-drv".parse(), Ok(DriverKind::Plugin("my-drv".into())));
        assert_eq!(DriverKind::Overlay2.to_string(), "overlay2");
        assert_eq!(DriverKind::Plugin("x".into()).to_string(), "plugin:x");
        assert_eq!(DriverKind::builtin_list(), "vfs, overlay2, btrfs");
        for k in DriverKind::BUILTIN.iter().chain(DriverKind::PRIORITY) {
            assert_eq!(k.to_string().parse::<DriverKind>().as_ref(), Ok(k));
        }
    }

    #[test]
    fn rejects_unknown_and_malformed_names() {
        assert!("zfs".parse::<DriverKind>().unwrap_err().contains("unknown driver"));
        for bad in ["plugin:", "plugin:../x", "plugin:a/b", "plugin:.h", "plugin:a b"] {
            assert!(bad.parse::<DriverKind>().is_err(), "{bad}");
        }
    }
}
