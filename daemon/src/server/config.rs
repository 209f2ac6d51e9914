//! `layerd --config FILE`: the flags' values from a TOML file.
//!
//! Keys mirror the flags (`root`, `driver`, `socket`, `listen`, `token_file`,
//! `log_level`, `idle_timeout`). A flag given on the command line (or through its
//! environment variable) wins over the file; the file wins over the flag's
//! default. An unknown key is an error naming it, so a typo never silently
//! falls back to a default. Relative paths in the file are relative to the
//! file's directory. Without `--config`, [`DEFAULT_PATH`] is read if it exists.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use serde::Deserialize;

use super::{Config, DriverSpec};

/// Read when `--config` is not given, if it exists.
pub const DEFAULT_PATH: &str = "/etc/layerd/config.toml";

/// The file's content: every key optional.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub root: Option<PathBuf>,
    #[serde(default, deserialize_with = "driver")]
    pub driver: Option<DriverSpec>,
    pub socket: Option<PathBuf>,
    pub listen: Option<String>,
    pub token_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub idle_timeout: Option<u64>,
}

impl FileConfig {
    /// Parse `text`, read from `path` (named in errors; relative paths in
    /// the file are resolved against its directory).
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<FileConfig> {
        let mut file: FileConfig =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for p in [&mut file.root, &mut file.socket, &mut file.token_file].into_iter().flatten() {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        Ok(file)
    }

    /// Read `path`.
    pub fn read(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read config file {}", path.display()))?;
        FileConfig::parse(&text, path)
    }
}

fn driver<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<DriverSpec>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

/// Why the configuration could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// Bad flags, `--help` or `--version`: clap prints and exits.
    Flags(clap::Error),
    /// A bad config file or an inconsistent result.
    Config(anyhow::Error),
}

impl Config {
    /// Parse `args` (the first is the program name) and merge the config
    /// file: `--config`, else `default_file` if it exists.
    pub fn load_from<I, T>(args: I, default_file: &Path) -> Result<Config, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Config::command().try_get_matches_from(args).map_err(LoadError::Flags)?;
        let mut config = Config::from_arg_matches(&matches).map_err(LoadError::Flags)?;
        let file = match &config.config {
            Some(path) => Some(FileConfig::read(path).map_err(LoadError::Config)?),
            None if default_file.exists() => Some(FileConfig::read(default_file).map_err(LoadError::Config)?),
            None => None,
        };
        if let Some(file) = file {
            config.merge(file, &matches);
        }
        config.validate().map_err(LoadError::Config)?;
        Ok(config)
    }

    /// Take each value from `file` unless the command line (or the flag's
    /// environment variable) gave it.
    fn merge(&mut self, file: FileConfig, matches: &ArgMatches) {
        let given =
            |id: &str| matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable));
        if let (Some(v), false) = (file.root, given("root")) {
            self.root = v;
        }
        if let (Some(v), false) = (file.driver, given("driver")) {
            self.driver = v;
        }
        if let (Some(v), false) = (file.socket, given("socket")) {
            self.socket = v;
        }
        if let (Some(v), false) = (file.listen, given("listen")) {
            self.listen = Some(v);
        }
        if let (Some(v), false) = (file.token_file, given("token_file")) {
            self.token_file = Some(v);
        }
        if let (Some(v), false) = (file.log_level, given("log_level")) {
            self.log_level = v;
        }
        if let (Some(v), false) = (file.idle_timeout, given("idle_timeout")) {
            self.idle_timeout = v;
        }
    }

    /// Checks across values, which may come from the flags and the file.
    pub fn validate(&self) -> anyhow::Result<()> {
        match (&self.listen, &self.token_file) {
            (Some(_), None) => {
                bail!("--listen (listen) needs --token-file (token_file): TCP requests must carry a token")
            }
            (None, Some(_)) => bail!("--token-file (token_file) is only used with --listen (listen)"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str], default_file: &Path) -> Result<Config, LoadError> {
        Config::load_from(std::iter::once("layerd").chain(args.iter().copied()), default_file)
    }

    fn message(e: LoadError) -> String {
        match e {
            LoadError::Flags(e) => e.to_string(),
            LoadError::Config(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn file_values_apply_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("layerd.toml");
        std::fs::write(
            &file,
            "root = \"/data/layers\"\ndriver = \"overlay\"\nsocket = \"run/l.sock\"\n\
             listen = \"tcp://127.0.0.1:2375\"\ntoken_file = \"/etc/layerd/token\"\nlog_level = \"debug\"\n\
             idle_timeout = 5\n",
        )
        .unwrap();
        let none = dir.path().join("absent.toml");
        let f = file.to_str().unwrap();
        let c = load(&["--config", f], &none).unwrap();
        assert_eq!(c.root, PathBuf::from("/data/layers"));
        assert_eq!(c.driver, DriverSpec::Overlay2);
        assert_eq!(c.socket, dir.path().join("run/l.sock"), "relative to the file's directory");
        assert_eq!(c.listen.as_deref(), Some("tcp://127.0.0.1:2375"));
        assert_eq!(c.token_file, Some(PathBuf::from("/etc/layerd/token")));
        assert_eq!(c.idle_timeout, 5);
        if std::env::var_os("LAYERD_LOG").is_none() {
            assert_eq!(c.log_level, "debug");
        }

        let c = load(&["--config", f, "--root", "/r", "--driver", "vfs", "--socket", "/s.sock"], &none).unwrap();
        assert_eq!(c.root, PathBuf::from("/r"));
        assert_eq!(c.driver, DriverSpec::Vfs, "a flag equal to the default still wins");
        assert_eq!(c.socket, PathBuf::from("/s.sock"));
        assert_eq!(c.listen.as_deref(), Some("tcp://127.0.0.1:2375"));
        assert_eq!(load(&["--config", f, "--idle-timeout", "9"], &none).unwrap().idle_timeout, 9);
        assert!(load(&["--idle-timeout", "0"], &none).is_err(), "0 would give up every upload at once");
    }

    #[test]
    fn the_default_file_is_read_only_if_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let default_file = dir.path().join("config.toml");
        let c = load(&[], &default_file).unwrap();
        assert_eq!(c.root, PathBuf::from("/var/lib/layerd"));
        std::fs::write(&default_file, "root = \"/srv/layerd\"\n").unwrap();
        let c = load(&[], &default_file).unwrap();
        assert_eq!(c.root, PathBuf::from("/srv/layerd"));
        // An explicit --config replaces the default file.
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "socket = \"/x.sock\"\n").unwrap();
        let c = load(&["--config", other.to_str().unwrap()], &default_file).unwrap();
        assert_eq!(c.root, PathBuf::from("/var/lib/layerd"));
        assert_eq!(c.socket, PathBuf::from("/x.sock"));
    }

    #[test]
    fn bad_files_are_errors_that_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("absent.toml");
        let file = dir.path().join("c.toml");
        let f = file.to_str().unwrap();
        let cases: [(&str, &[&str]); 6] = [
            ("root = \"/r\"\nsokcet = \"/s\"\n", &["unknown field", "sokcet", "c.toml"]),
            ("[server]\nroot = \"/r\"\n", &["unknown field", "server"]),
            ("root = 5\n", &["invalid type"]),
            ("root = \n", &["c.toml"]),
            ("driver = \"zfs\"\n", &["line 1", "unknown driver"]),
            ("listen = \"tcp://127.0.0.1:1\"\n", &["needs --token-file"]),
        ];
        for (text, wants) in cases {
            std::fs::write(&file, text).unwrap();
            let msg = message(load(&["--config", f], &none).unwrap_err());
            for want in wants {
                assert!(msg.contains(want), "{text:?}: {want:?} not in {msg:?}");
            }
        }
        let msg = message(load(&["--config", dir.path().join("missing.toml").to_str().unwrap()], &none).unwrap_err());
        assert!(msg.contains("missing.toml"), "{msg}");
        // The token file may come from the file and the listen flag from the command line.
        std::fs::write(&file, "token_file = \"/t\"\n").unwrap();
        let c = load(&["--config", f, "--listen", "tcp://127.0.0.1:1"], &none).unwrap();
        assert_eq!(c.token_file, Some(PathBuf::from("/t")));
    }
}
