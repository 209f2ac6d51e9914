//! `layerd plugin serve --name NAME [--driver D] [--socket PATH]`: serve one
//! of our drivers to dockerd as a v1 graphdriver plugin.
//!
//! The socket defaults to `/run/docker/plugins/NAME.sock`, where dockerd
//! looks; the driver's home is whatever dockerd's `Init` says
//! (`<data-root>/NAME`). What `Init` said is kept in `--state-dir`, so a
//! restarted server keeps serving (dockerd never re-sends `Init`).
//! Shutdown (SIGTERM/SIGINT) stops accepting and lets calls in flight
//! finish; mounts stay, as dockerd still uses them — dockerd's own
//! `Cleanup` at its shutdown undoes them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use graphdriver::{Driver, DriverError};
use plugin::PluginServer;
use tokio_util::sync::CancellationToken;

use super::{DriverSpec, socket, trace};

#[derive(Debug, Parser)]
#[command(
    name = "layerd plugin",
    bin_name = "layerd plugin",
    about = "Serve a layerd driver as a Docker graphdriver plugin"
)]
struct PluginCli {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Serve a driver to dockerd (`dockerd --experimental --storage-driver NAME`).
    Serve(ServeArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The plugin's name: dockerd's `--storage-driver` value.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// The driver to serve: auto, vfs, overlay or btrfs. auto keeps the
    /// driver whose layout the home holds, else the first this host
    /// supports (overlay, btrfs, vfs).
    #[arg(long, value_name = "DRIVER", default_value = "auto")]
    pub driver: DriverSpec,
    /// Unix socket to listen on. Default: /run/docker/plugins/NAME.sock.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Where the server keeps what dockerd's Init said. Default:
    /// /var/lib/layerd/plugins/NAME.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log filter: a level or env-filter directives.
    #[arg(long, value_name = "FILTER", env = "LAYERD_LOG", default_value = "info")]
    pub log_level: String,
}

/// `layerd plugin ...`; `args` starts with the program name.
pub fn main(args: Vec<std::ffi::OsString>) -> ExitCode {
    let cli = match PluginCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let PluginCommand::Serve(args) = cli.command;
    super::run_to_exit(&args.log_level.clone(), "layerd plugin", serve(args))
}

/// The function that opens the served driver in the home `Init` names.
pub fn opener(spec: &DriverSpec) -> anyhow::Result<plugin::Opener> {
    let kind = match spec {
        DriverSpec::Auto => None,
        DriverSpec::Vfs => Some("vfs"),
        DriverSpec::Overlay2 => Some("overlay2"),
        DriverSpec::Btrfs => Some("btrfs"),
        DriverSpec::Plugin(_) => bail!("a plugin cannot serve another plugin; choose auto, vfs, overlay or btrfs"),
    };
    Ok(Arc::new(move |home: &Path, opts: &[String]| -> graphdriver::Result<Arc<dyn Driver>> {
        if !opts.is_empty() {
            return Err(DriverError::InvalidArgument(format!(
                "unknown storage options {opts:?}: this plugin takes none"
            )));
        }
        match kind {
            Some(k) => drivers::registry::open_in(k, home),
            None => drivers::registry::select_in(home).map(|(_, d)| d),
        }
    }))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if !plugin::discovery::valid_name(&args.name) {
        bail!("invalid plugin name {:?}: want [A-Za-z0-9_.-]+", args.name);
    }
    let socket_path = args
        .socket
        .clone()
        .unwrap_or_else(|| Path::new(plugin::discovery::SOCKETS_DIR).join(format!("{}.sock", args.name)));
    let state_dir = args.state_dir.clone().unwrap_or_else(|| Path::new("/var/lib/layerd/plugins").join(&args.name));
    let server = PluginServer::new(opener(&args.driver)?, Some(state_dir.join("init.json")));
    let restored = server.restore().await.map_err(anyhow::Error::msg)?;
    let bound = socket::BoundSocket::bind(&socket_path)?;
    tracing::info!(
        name = %args.name,
        driver = %args.driver,
        socket = %bound.path().display(),
        home = ?restored,
        "graphdriver plugin listening"
    );
    let (listener, socket_file) = bound.into_parts();
    let stop = CancellationToken::new();
    let app = plugin::router(server.clone()).layer(axum::middleware::from_fn(trace::trace_request));
    let served = async {
        let r = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned()).await;
        stop.cancel();
        r
    };
    let signal = async {
        tokio::select! {
            () = super::shutdown_signal() => stop.cancel(),
            () = stop.cancelled() => {}
        }
    };
    let (served, ()) = tokio::join!(served, signal);
    socket_file.remove();
    served.context("serve the plugin socket")?;
    tracing::info!("layerd plugin stopped");
    Ok(())
}
