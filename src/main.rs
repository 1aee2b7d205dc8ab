//! The `corral` command: parses arguments, loads the config, installs logging,
//! binds the listeners, and runs until SIGTERM or Ctrl-C. No proxy logic lives here.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use corral::Corral;
use corral::config::{self, Config};
use corral::logging::{self, LogSink, LogWriterGuard};
use corral::testing::{demo, fleet_demo};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// A caching reverse proxy that stops thundering herds.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Run from this config file.
    #[arg(long, env = "CORRAL_CONFIG", conflicts_with_all = ["origin", "listen", "admin_listen", "ttl", "stale_if_error"])]
    config: Option<PathBuf>,

    /// Run without a file, in front of this origin (http:// or https://host[:port]).
    #[arg(long, env = "CORRAL_ORIGIN")]
    origin: Option<String>,

    /// Proxy listen address (with --origin).
    #[arg(long, default_value = config::DEFAULT_LISTEN)]
    listen: SocketAddr,

    /// Admin listen address for /metrics and health (with --origin).
    #[arg(long, default_value = config::DEFAULT_ADMIN_LISTEN)]
    admin_listen: SocketAddr,

    /// Freshness of cached 200 responses (with --origin), e.g. 30s, 5m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    ttl: Duration,

    /// Serve a stored answer up to this long past its freshness when the
    /// origin fails or answers 5xx (with --origin), e.g. 5m. Without it, only
    /// an unreachable origin is covered (stale_if_disconnected, 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    stale_if_error: Option<Duration>,

    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "CORRAL_LOG_FORMAT", global = true)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config file: exit 0, or print every problem as
    /// file:line:col: reason, one per line, and exit 1.
    Check {
        /// The config file to validate.
        file: PathBuf,
    },
    /// Run the flash-sale demonstration on loopback: the same burst against
    /// the origin directly, then through corral. With --fleet N: the burst
    /// over N instances, alone and then sharing one Redis.
    Demo {
        /// Concurrent clients per burst (all connected first, then released at once).
        #[arg(long, default_value_t = 800)]
        clients: usize,
        /// Origin response time, e.g. 120ms.
        #[arg(long, default_value = "120ms", value_parser = humantime::parse_duration)]
        origin_delay: Duration,
        /// Requests the origin answers at once; it answers 429 to any more (0: no limit).
        #[arg(long, default_value_t = 100)]
        origin_limit: usize,
        /// Do not draw the progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Run N corral instances (2 to 64) and spread the burst over them,
        /// once alone and once as a fleet sharing one Redis.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(2..=64))]
        fleet: Option<u16>,
        /// The Redis the fleet shares (redis://host:port/); without it the demo
        /// starts redis-server from PATH on a free loopback port.
        #[arg(long, value_name = "URL", requires = "fleet")]
        redis: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { file }) => check(&file),
        Some(Command::Demo {
            clients,
            origin_delay,
            origin_limit,
            no_progress,
            fleet,
            redis,
        }) => {
            let _logging = install_logging(cli.log_format, "warn");
            let options = demo::DemoOptions {
                clients,
                origin_delay,
                origin_limit,
                progress: !no_progress,
            };
            if let Some(instances) = fleet {
                let options = fleet_demo::FleetDemoOptions {
                    instances: usize::from(instances),
                    redis,
                    demo: options,
                };
                return block_on(fleet_demo_until_signal(options));
            }
            block_on(async move {
                match demo::run(&options).await {
                    Ok(report) => {
                        print!("{}", demo::render(&options, &report, None));
                        ExitCode::SUCCESS
                    }
                    Err(error) => {
                        eprintln!("corral demo: {error}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        None => {
            let _logging = install_logging(cli.log_format, "info");
            let config = match (&cli.config, &cli.origin) {
                (Some(path), _) => Config::load(path),
                (None, Some(origin)) => {
                    Config::for_origin(origin, cli.listen, cli.admin_listen, cli.ttl).map(
                        |config| match cli.stale_if_error {
                            Some(window) => config.with_stale_if_error(window),
                            None => config,
                        },
                    )
                }
                (None, None) => {
                    eprintln!("corral: give --config FILE or --origin URL (see --help)");
                    return ExitCode::from(2);
                }
            };
            match config {
                Ok(config) => block_on(serve(config, cli.config)),
                Err(error) => {
                    eprintln!("{error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs `corral demo --fleet` until it ends or SIGTERM/Ctrl-C arrives;
/// either way the redis-server it may have started is stopped (dropping the
/// run stops it).
async fn fleet_demo_until_signal(options: fleet_demo::FleetDemoOptions) -> ExitCode {
    tokio::select! {
        result = fleet_demo::run(&options) => match result {
            Ok(report) => {
                print!("{}", fleet_demo::render(&options, &report));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::FAILURE
            }
        },
        () = shutdown_signal() => {
            eprintln!("corral demo --fleet: interrupted");
            ExitCode::from(130)
        }
    }
}

/// Validates the file and every file it names (certificates, keys, CA
/// bundles), as starting would.
fn check(file: &Path) -> ExitCode {
    match Config::load(file).and_then(|config| corral::check_files(&config).map(|()| config)) {
        Ok(config) => {
            println!("{}: ok ({} routes)", file.display(), config.routes.len());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// How long the runtime waits for leftover blocking tasks once serving ended.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

fn block_on<F: std::future::Future<Output = ExitCode>>(future: F) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => {
            let code = runtime.block_on(future);
            // Connections were drained within shutdown_timeout already; don't
            // let a stuck blocking task (a DNS lookup, say) hold the exit.
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
            code
        }
        Err(error) => {
            eprintln!("corral: cannot start the runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, path: Option<PathBuf>) -> ExitCode {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|error| format!("cannot listen on {addr}: {error}"))
    };
    let listeners = match (
        bind(config.server.listen).await,
        bind(config.server.admin_listen).await,
    ) {
        (Ok(listener), Ok(admin)) => (listener, admin),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("corral: {error}");
            return ExitCode::FAILURE;
        }
    };
    let corral = match Corral::new(&config) {
        Ok(corral) => match path {
            Some(path) => corral.with_config_file(&config, path),
            None => corral,
        },
        Err(error) => {
            eprintln!("corral: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The bound addresses, not the configured ones: port 0 means "pick one".
    let bound = |listener: &TcpListener, configured: SocketAddr| {
        listener.local_addr().unwrap_or(configured)
    };
    tracing::info!(
        listen = %bound(&listeners.0, config.server.listen),
        admin = %bound(&listeners.1, config.server.admin_listen),
        origin = %config.origin.url.get_ref(),
        routes = config.routes.len(),
        "corral is serving"
    );
    let reloads = tokio::spawn(reload_on_sighup(corral.reloader()));
    corral
        .serve(listeners.0, listeners.1, shutdown_signal())
        .await;
    reloads.abort();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Re-reads the config file on every SIGHUP. A refused file is logged with
/// its position and reason, and the running config stays.
async fn reload_on_sighup(reloader: corral::reload::Reloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGHUP; reload with POST /reload");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            match reloader.reload() {
                Ok(report) => {
                    tracing::info!(routes = report.routes, ignored = ?report.ignored, "config reloaded (SIGHUP)");
                }
                Err(error) => {
                    tracing::error!(%error, "config reload refused; the running config stays")
                }
            }
        }
    }
    #[cfg(not(unix))]
    drop(reloader);
}

/// Resolves on the first SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// Installs the global subscriber and, when its filter lets
/// `corral::access` through at info, the access log. Both write to stderr
/// through one batched writer thread ([`corral::logging`]), so a request never
/// waits on a terminal or a log pipe and lines never interleave; the returned
/// guard flushes what is pending when dropped at exit.
fn install_logging(format: LogFormat, default_level: &str) -> Option<LogWriterGuard> {
    let layout = match format {
        LogFormat::Text => logging::LogFormat::Text,
        LogFormat::Json => logging::LogFormat::Json,
    };
    let (sink, guard) = match LogSink::spawn(std::io::stderr(), layout) {
        Ok(spawned) => spawned,
        Err(error) => {
            eprintln!("corral: cannot start the log writer thread: {error}");
            return None;
        }
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // The verifier logs every refused origin certificate itself; corral logs
    // each one once, with the origin and the reason (`proxy::error`).
    let filter = match "rustls_platform_verifier=off".parse() {
        Ok(quiet) => filter.add_directive(quiet),
        Err(_) => filter,
    };
    // Colour only for a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(sink.clone());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    // Decided once: the filter does not change while corral runs.
    if tracing::enabled!(target: "corral::access", tracing::Level::INFO) {
        logging::install_access_log(sink);
    }
    Some(guard)
}
