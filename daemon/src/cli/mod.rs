//! `layerctl`: the command-line client of `layerd`.
//!
//! Exit codes: 0 success, 1 the daemon (or a local file) reported an error,
//! 2 usage error, 3 the daemon could not be reached. Errors go to stderr as
//! `layerctl: <message>`; with `--format json` stdout carries exactly the JSON
//! the API returned. A closed stdout (`layerctl … | head`) ends the command
//! quietly with exit 0, as ripgrep does.

/// `println!` for command output, through [`output::line`]: a closed
/// stdout ends the process quietly instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::line(::std::format_args!($($arg)*))
    };
}

pub mod check;
pub mod client;
pub mod conformance;
pub mod distribution;
pub mod image;
pub mod layer;
pub mod output;
pub mod progress;
pub mod rw;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hyper::Method;
use serde_json::Value;

pub use client::{CliError, CliResult, Client, DEFAULT_HOST};

/// Command-line interface of `layerctl`.
#[derive(Debug, Parser)]
#[command(name = "layerctl", version, about = "Manage image layers in a layerd store")]
pub struct Cli {
    /// Daemon address: unix:///path/to/layerd.sock or tcp://HOST:PORT.
    #[arg(long, global = true, env = "LAYERD_HOST", default_value = DEFAULT_HOST)]
    pub host: String,
    /// File holding the bearer token for a tcp:// host (else env LAYERD_TOKEN).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read-only image layers.
    #[command(subcommand)]
    Layer(LayerCmd),
    /// Writable (container) layers.
    #[command(subcommand)]
    Rw(RwCmd),
    /// Images: pull, push, load, save, list, inspect, tag, remove.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Show the store's root, driver and counts.
    Info {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Run the driver conformance suite against a built-in driver, in this
    /// process (no daemon needed; run as root). Ends with the line
    /// `N passed, M failed, K skipped`; exit 1 if any case failed.
    Conformance {
        /// The driver to test: vfs, overlay2 (alias overlay) or btrfs.
        #[arg(long, value_name = "NAME")]
        driver: String,
        /// Where the per-case temp dirs go (btrfs: a dir on a btrfs filesystem).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Only cases whose `group::name` contains this.
        #[arg(long, value_name = "SUBSTRING")]
        filter: Option<String>,
    },
    /// Check the store against the disk; exit 1 if a problem remains.
    Check {
        /// Fix what is safe to fix (orphaned driver dirs, stray metadata).
        #[arg(long)]
        repair: bool,
        /// Also read every layer and verify its content against its DiffID.
        #[arg(long)]
        verify: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum LayerCmd {
    /// Register a tar (plain, gzip or zstd) as a layer; prints its ChainID.
    Import {
        /// ChainID of the parent layer.
        #[arg(long, value_name = "C")]
        parent: Option<String>,
        /// The DiffID the content must have (lets concurrent imports merge).
        #[arg(long, value_name = "D")]
        diff_id: Option<String>,
        /// The tar file, or - for stdin.
        #[arg(value_name = "FILE|-")]
        file: PathBuf,
    },
    /// Write a layer's exact original tar.
    Export {
        #[arg(value_name = "C")]
        chain: String,
        /// Write to FILE instead of stdout (removed again if the export fails).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// List layers.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show a layer as JSON.
    Inspect {
        #[arg(value_name = "C")]
        chain: String,
    },
    /// Release layers (concurrently); a layer no longer used is deleted.
    Rm {
        #[arg(value_name = "C", required = true)]
        chains: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RwCmd {
    /// Create a writable layer on top of a layer (or empty).
    Create {
        name: String,
        /// ChainID of the parent layer.
        #[arg(long, value_name = "C")]
        parent: Option<String>,
        /// Put an init layer between the parent and the writable layer.
        #[arg(long)]
        init: bool,
    },
    /// List writable layers.
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show a writable layer as JSON.
    Inspect { name: String },
    /// Mount a writable layer; prints the path of its tree.
    Mount { name: String },
    /// Release one mount of a writable layer.
    Unmount { name: String },
    /// List changed paths: A added, C changed, D deleted.
    Changes {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Write the tar of a writable layer's changes.
    Diff {
        name: String,
        /// Write to FILE instead of stdout (removed again if it fails).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Register a writable layer's changes as a new layer; prints its ChainID.
    Commit { name: String },
    /// Remove writable layers (concurrently, in one request).
    Rm {
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Load a docker-archive or an OCI image layout (a tar, or a directory).
    Load {
        /// The archive (tar file or directory); stdin when absent or -.
        #[arg(short, long, value_name = "FILE")]
        input: Option<PathBuf>,
    },
    /// Write images as an archive.
    Save {
        #[arg(value_name = "REF", required = true)]
        names: Vec<String>,
        /// Write to FILE instead of stdout (removed again if the save fails).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        format: ArchiveFormat,
    },
    /// List images (a line per name).
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show an image as JSON.
    Inspect {
        #[arg(value_name = "REF")]
        reference: String,
    },
    /// Give the image SRC the name DST.
    Tag {
        #[arg(value_name = "SRC")]
        source: String,
        #[arg(value_name = "DST")]
        target: String,
    },
    /// Remove names (and images by id); an image whose last name goes is deleted.
    Rm {
        #[arg(value_name = "REF", required = true)]
        references: Vec<String>,
    },
    /// Pull an image from a registry (progress per layer, as docker pull).
    Pull {
        /// An image reference: busybox, host:5000/team/app:v1, name@sha256:…
        #[arg(value_name = "REF")]
        reference: String,
        /// os/arch[/variant] to pick from a multi-platform image (default: the host's).
        #[arg(long, value_name = "OS/ARCH")]
        platform: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Push the local image REF to the registry it names.
    Push {
        #[arg(value_name = "REF")]
        reference: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// `image save --format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ArchiveFormat {
    /// docker-archive, what `docker load` reads.
    #[default]
    Docker,
    /// OCI image layout.
    Oci,
}

impl ArchiveFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveFormat::Docker => "docker",
            ArchiveFormat::Oci => "oci",
        }
    }
}

/// `--format`: a human table, or the API's JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// The `layerctl` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The conformance suite runs drivers in-process and wants real parallelism.
    let builder = match cli.command {
        Command::Conformance { .. } => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let mut builder = builder;
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("layerctl: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    // Don't wait for blocking reads still running: an upload answered
    // before its body was sent may have a read of stdin pending for good.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => code,
        Err(CliError::StdoutClosed) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("layerctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Run one command. `Ok` carries the exit code of a command that reports
/// failures in its output itself (`rm`, `check`).
pub async fn run(cli: Cli) -> CliResult<ExitCode> {
    if let Command::Conformance { driver, root, filter } = cli.command {
        // In-process: no daemon, so no client.
        return conformance::run(&driver, root, filter.as_deref()).await;
    }
    let client = Client::from_host(&cli.host, token(cli.token_file.as_deref())?)?;
    match cli.command {
        Command::Layer(cmd) => layer::run(&client, cmd).await,
        Command::Rw(cmd) => rw::run(&client, cmd).await,
        Command::Image(cmd) => image::run(&client, cmd).await,
        Command::Info { format } => info(&client, format).await.map(|()| ExitCode::SUCCESS),
        Command::Check { repair, verify, format } => {
            check::run(&client, ::layer::CheckOpts { repair, verify_content: verify }, format).await
        }
        Command::Conformance { driver, root, filter } => conformance::run(&driver, root, filter.as_deref()).await,
    }
}

/// The bearer token: from `--token-file`, else `LAYERD_TOKEN`.
fn token(file: Option<&std::path::Path>) -> CliResult<Option<String>> {
    let raw = match file {
        Some(f) => {
            std::fs::read_to_string(f).map_err(|e| CliError::Usage(format!("read token file {}: {e}", f.display())))?
        }
        None => match std::env::var("LAYERD_TOKEN") {
            Ok(t) => t,
            Err(_) => return Ok(None),
        },
    };
    let t = raw.trim();
    Ok((!t.is_empty()).then(|| t.to_owned()))
}

async fn info(client: &Client, format: Format) -> CliResult<()> {
    let v: Value = client.call(Method::GET, "/v1/info").await?;
    if format == Format::Json {
        return print_json(&v);
    }
    let info: ::layer::StoreInfo = from_value(v)?;
    let mut rows = vec![
        vec!["Root:".to_owned(), info.root.display().to_string()],
        vec!["Driver:".to_owned(), info.driver],
        vec!["Layers:".to_owned(), info.layers.to_string()],
        vec!["RW layers:".to_owned(), info.rw_layers.to_string()],
        vec!["Layers size:".to_owned(), output::human_size(info.layers_size)],
    ];
    if !info.driver_status.is_empty() {
        rows.push(vec!["Driver status:".to_owned()]);
        rows.extend(info.driver_status.into_iter().map(|(k, v)| vec![format!("  {k}:"), v]));
    }
    let table = output::table(&["Host:", &client.host()], &rows);
    output::text(&table);
    Ok(())
}

/// Print a JSON value as the API returned it, pretty.
pub fn print_json(v: &Value) -> CliResult<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| CliError::other("format JSON", e))?;
    outln!("{s}");
    Ok(())
}

pub fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> CliResult<T> {
    serde_json::from_value(v).map_err(|e| CliError::other("unexpected reply from layerd", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("layerctl").chain(args.iter().copied()))
    }

    #[test]
    fn verbs_parse() {
        let cli = parse(&["layer", "import", "--parent", "sha256:x", "--diff-id", "sha256:y", "-"]).unwrap();
        match cli.command {
            Command::Layer(LayerCmd::Import { parent, diff_id, file }) => {
                assert_eq!(parent.as_deref(), Some("sha256:x"));
                assert_eq!(diff_id.as_deref(), Some("sha256:y"));
                assert_eq!(file, PathBuf::from("-"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["layer", "ls", "--format", "json"]).unwrap().command,
            Command::Layer(LayerCmd::Ls { format: Format::Json })
        ));
        assert!(matches!(
            parse(&["rw", "create", "web", "--init"]).unwrap().command,
            Command::Rw(RwCmd::Create { init: true, .. })
        ));
        assert!(matches!(
            parse(&["rw", "diff", "web", "-o", "f.tar"]).unwrap().command,
            Command::Rw(RwCmd::Diff { output: Some(_), .. })
        ));
        let cli = parse(&["--host", "unix:///tmp/s", "rw", "rm", "a", "b"]).unwrap();
        assert_eq!(cli.host, "unix:///tmp/s");
        assert!(matches!(cli.command, Command::Rw(RwCmd::Rm { names }) if names.len() == 2));
        assert!(parse(&["info", "--host", "unix:///x"]).is_ok());
        assert!(matches!(
            parse(&["image", "save", "a", "b:1", "-o", "x.tar", "--format", "oci"]).unwrap().command,
            Command::Image(ImageCmd::Save { ref names, format: ArchiveFormat::Oci, .. }) if names.len() == 2
        ));
        assert!(matches!(parse(&["image", "load"]).unwrap().command, Command::Image(ImageCmd::Load { input: None })));
        assert!(matches!(
            parse(&["image", "ls", "--format", "json"]).unwrap().command,
            Command::Image(ImageCmd::Ls { format: Format::Json })
        ));
        assert!(matches!(
            parse(&["check", "--repair", "--verify", "--format", "json"]).unwrap().command,
            Command::Check { repair: true, verify: true, format: Format::Json }
        ));
        assert!(matches!(
            parse(&["check"]).unwrap().command,
            Command::Check { repair: false, verify: false, format: Format::Table }
        ));
    }

    #[test]
    fn usage_errors_exit_2() {
        for args in [
            &["layer", "rm"][..],
            &["rw", "rm"],
            &["image", "rm"],
            &["image", "save"],
            &["image", "tag", "a"],
            &["layer", "ls", "--format", "xml"],
            &["bogus"],
            &["layer", "import"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }
}
