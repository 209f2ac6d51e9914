//! `layerd`: the layer store served over HTTP on a unix socket.
//!
//! Start-up order matters: the store is opened (and its root locked) before
//! the socket is touched, so a second daemon on the same root fails without
//! disturbing the first one's socket. Shutdown runs the other way: stop
//! accepting, let in-flight requests and tracked store tasks finish, shut the
//! store down, remove the socket.

pub mod config;
pub mod distribution;
pub mod driver;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod images;
pub mod layers;
pub mod metrics;
pub mod openapi;
pub mod plugin;
pub mod routes;
pub mod rw;
pub mod socket;
pub mod stream;
pub mod system;
pub mod tcp;
pub mod trace;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use axum::middleware;
use clap::Parser;
use layer::Store;
use tokio_util::sync::CancellationToken;

pub use driver::DriverSpec;
pub use routes::{AppState, router};

/// Command-line flags of `layerd`; [`Config::load_from`] merges the config
/// file into them.
#[derive(Debug, Clone, Parser)]
#[command(name = "layerd", version, about = "Serve a layer store over a REST API on a unix socket")]
pub struct Config {
    /// TOML file with the flags' values (keys: root, driver, socket, listen,
    /// token_file, log_level); flags win. Default: /etc/layerd/config.toml
    /// if it exists.
    #[arg(long, value_name = "FILE", env = "LAYERD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data root: the store's metadata and the driver's layers live here.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/layerd")]
    pub root: PathBuf,
    /// Graph driver: auto, vfs, overlay2 (alias overlay), btrfs or
    /// plugin:NAME. auto keeps the driver whose layers the root holds (a
    /// Docker root's too), else takes the first this host supports:
    /// overlay2, btrfs, vfs.
    #[arg(long, value_name = "DRIVER", default_value = "auto")]
    pub driver: DriverSpec,
    /// Unix socket to listen on (created with mode 0660).
    #[arg(long, value_name = "PATH", default_value = "/run/layerd/layerd.sock")]
    pub socket: PathBuf,
    /// Also listen on TCP, e.g. tcp://127.0.0.1:2375. Requires --token-file.
    #[arg(long, value_name = "tcp://HOST:PORT")]
    pub listen: Option<String>,
    /// File holding the bearer token every TCP request must carry.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Log filter: a level (error, warn, info, debug, trace) or env-filter directives.
    #[arg(long, value_name = "FILTER", env = "LAYERD_LOG", default_value = "info")]
    pub log_level: String,
    /// Seconds a tar upload may send nothing, or a tar download's client
    /// take nothing, before the request is given up (a stalled client must
    /// not hold a registration, a duplicate-suppressed flight or an RW
    /// layer's key forever).
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,
    /// A registry (HOST[:PORT]; a bare host means every port) reached over
    /// plain HTTP when HTTPS fails, as dockerd's flag. Repeatable. Loopback
    /// registries (localhost, 127.0.0.0/8, ::1) always are.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Docker config.json with registry credentials. Default:
    /// $DOCKER_CONFIG/config.json, else ~/.docker/config.json.
    #[arg(long, value_name = "FILE")]
    pub registry_config: Option<PathBuf>,
}

/// Blocking threads of the daemon's runtime. A stalled upload holds two
/// (its body's reader and the tar-split recorder) until its idle timeout,
/// so the pool is sized well above [`stream::MAX_UPLOADS`] × 2; the store's
/// own metadata work has a pool of its own.
const MAX_BLOCKING_THREADS: usize = 4096;

/// The `layerd` binary.
pub fn main() -> ExitCode {
    raise_open_file_limit();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "plugin") {
        return plugin::main(args.into_iter().skip(1).collect());
    }
    let config = match Config::load_from(args, Path::new(config::DEFAULT_PATH)) {
        Ok(c) => c,
        Err(config::LoadError::Flags(e)) => e.exit(),
        Err(config::LoadError::Config(e)) => {
            eprintln!("layerd: {e:#}");
            return ExitCode::from(2);
        }
    };
    run_to_exit(&config.log_level.clone(), "layerd", run(config))
}

/// Set up logging and a multi-threaded runtime, run `work` to its end and
/// turn its outcome into the exit code (2: bad logging flags; 1: failed).
pub(crate) fn run_to_exit(
    log_level: &str,
    what: &str,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    if let Err(e) = trace::init(log_level) {
        eprintln!("layerd: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("layerd: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{what} failed");
            eprintln!("layerd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raise the soft limit on open files to the hard one, as every Go program
/// (dockerd included) does since Go 1.19: extracting and removing a tree
/// holds a descriptor per directory level, and a layer may be two thousand
/// levels deep (the 4095-byte path limit), more than the usual soft 1024.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, soft, hard, "could not raise the open-file limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the open-file limit"),
    }
}

/// Open the store, serve until SIGTERM/SIGINT, shut down cleanly.
pub async fn run(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    let token = config.token_file.as_deref().map(tcp::read_token).transpose()?;
    // Lock the root before the driver exists: its constructor cleans crash
    // leftovers in its home, which must never happen under a live daemon.
    let lock = layer::RootLock::acquire(&config.root)?;
    let driver = driver::open(&config.driver, &config.root).await?;
    // The images' top layers, which the image store leases when it opens:
    // the layer store's start-up must not collect them first.
    let keep = ::images::ImageStore::layers_to_keep(&config.root, driver.name())
        .with_context(|| format!("read the image store in {}", config.root.display()))?;
    let store = Store::open_locked(lock, driver, layer::StoreOptions::keeping(keep))
        .await
        .with_context(|| format!("open the layer store in {}", config.root.display()))?;
    let images = match ::images::ImageStore::open(store.clone()).await {
        Ok(i) => i,
        Err(e) => {
            shutdown_store(&store).await;
            return Err(anyhow::anyhow!("open the image store in {}: {e}", config.root.display()));
        }
    };
    let registry =
        match distribution::registry_for(&store, &config.insecure_registries, config.registry_config.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                shutdown_store(&store).await;
                return Err(e.context("set up the registry client"));
            }
        };
    let listeners = bind_all(&config).await;
    let (bound, tcp_listener) = match listeners {
        Ok(l) => l,
        Err(e) => {
            shutdown_store(&store).await;
            return Err(e);
        }
    };
    tracing::info!(
        root = %config.root.display(),
        driver = %config.driver,
        socket = %bound.path().display(),
        tcp = ?tcp_listener.as_ref().and_then(|l| l.local_addr().ok()),
        "layerd listening"
    );
    let (listener, socket_file) = bound.into_parts();
    let state = AppState::new(store.clone(), images)
        .with_idle_timeout(std::time::Duration::from_secs(config.idle_timeout))
        .with_registry(registry);
    let app = router(state.clone());
    let stop = CancellationToken::new();
    let unix = async {
        let r = axum::serve(listener, app.clone()).with_graceful_shutdown(stop.clone().cancelled_owned()).await;
        stop.cancel();
        r
    };
    let tcp = async {
        let (Some(l), Some(token)) = (tcp_listener, token) else { return Ok(()) };
        let app = app.clone().layer(middleware::from_fn_with_state(token, tcp::require_token));
        let r = axum::serve(l, app).with_graceful_shutdown(stop.clone().cancelled_owned()).await;
        stop.cancel();
        r
    };
    let signal = async {
        tokio::select! {
            () = shutdown_signal() => stop.cancel(),
            () = stop.cancelled() => {}
        }
    };
    let index = keep_index(store.clone(), stop.clone());
    let (unix_served, tcp_served, (), ()) = tokio::join!(unix, tcp, signal, index);
    tracing::info!("no longer accepting; finishing store work");
    state.tasks.close();
    state.tasks.wait().await;
    shutdown_store(&store).await;
    socket_file.remove();
    unix_served.context("serve the unix socket")?;
    tcp_served.context("serve tcp")?;
    tracing::info!("layerd stopped");
    Ok(())
}

/// How often a quiet store's layerdb index is brought up to date.
const INDEX_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Keep the layerdb index current while the store is quiet, so a start
/// after a crash reads it too (it is written only when no operation runs,
/// a no-op while the one on disk is current, and the first change removes
/// it; see `layer`'s `indexing`). Ends when the daemon stops.
async fn keep_index(store: Store, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(INDEX_EVERY) => {}
        }
        if let Err(e) = store.write_index().await {
            tracing::warn!(error = %e, "writing the layerdb index failed; retried later");
        }
    }
}

/// The TCP listener first: binding it has no side effect to undo.
async fn bind_all(config: &Config) -> anyhow::Result<(socket::BoundSocket, Option<tokio::net::TcpListener>)> {
    let tcp_listener = match &config.listen {
        Some(listen) => Some(tcp::bind(listen).await?),
        None => None,
    };
    Ok((socket::BoundSocket::bind(&config.socket)?, tcp_listener))
}

async fn shutdown_store(store: &Store) {
    if let Err(e) = store.shutdown().await {
        tracing::error!(error = %e, "store shutdown failed");
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    let int = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot watch SIGINT");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = term => tracing::info!("SIGTERM received; shutting down"),
        () = int => tracing::info!("SIGINT received; shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_have_defaults() {
        let c = Config::try_parse_from(["layerd"]).unwrap();
        assert_eq!(c.root, PathBuf::from("/var/lib/layerd"));
        assert_eq!(c.driver, DriverSpec::Auto);
        assert_eq!(c.socket, PathBuf::from("/run/layerd/layerd.sock"));
    }

    #[test]
    fn flags_parse() {
        let c =
            Config::try_parse_from(["layerd", "--root", "/r", "--driver", "plugin:p", "--socket", "/s.sock"]).unwrap();
        assert_eq!(c.root, PathBuf::from("/r"));
        assert_eq!(c.driver, DriverSpec::Plugin("p".into()));
        assert!(Config::try_parse_from(["layerd", "--driver", "zfs"]).is_err());
        let c = Config::try_parse_from(["layerd", "--listen", "tcp://127.0.0.1:1"]).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("needs --token-file"));
        let c = Config::try_parse_from(["layerd", "--listen", "tcp://127.0.0.1:1", "--token-file", "/t"]).unwrap();
        assert_eq!(c.listen.as_deref(), Some("tcp://127.0.0.1:1"));
        c.validate().unwrap();
    }
}
