//! The `ricochet` command: `run` the bridge, `check` a configuration, or send one test
//! `request` over NATS.

/// The configuration file every command reads unless `--config` names another. A macro, so
/// that the help texts below can name it in `concat!`.
macro_rules! default_config {
    () => {
        "config/ricochet.toml"
    };
}

/// The environment overrides of the configuration, as every command's help states them.
macro_rules! environment_help {
    () => {
        concat!(
            "Environment:\n",
            "  RICOCHET__<SECTION>__<KEY>  overrides a key of the configuration: its path in upper case with\n",
            "                              \"__\" between parts, list entries by index, e.g.\n",
            "                              RICOCHET__UPSTREAM__BASE_URL=http://127.0.0.1:9000\n",
            "                              RICOCHET__ROUTES__0__TIMEOUT=2s\n",
            "                              RICOCHET__NATS__PASSWORD=...\n",
        )
    };
}

mod request_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ricochet::config::{RuntimeThreads, EXIT_INVALID_CONFIG};
use ricochet::settings;

/// mimalloc: with glibc's allocator, malloc and free took about 12% of ricochet's CPU per
/// message at saturation. Transparent huge pages are off (`no_thp`): with them the peak RSS
/// grew by 6 MB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ricochet",
    version,
    about = "A sidecar that answers NATS, JetStream, Kafka and AMQP requests by calling a REST service",
    after_help = concat!(
        "Configuration: ", default_config!(), " unless --config FILE names another (docs/configuration.md).\n\n",
        environment_help!(),
        "  RUST_LOG                    overrides log.level\n",
        "  NATS_URL                    the server of `ricochet request`, before the configuration's nats.url\n\n",
        "Examples:\n",
        "  ricochet check --config ", default_config!(), "\n",
        "  ricochet run --config /etc/ricochet/ricochet.toml\n",
        "  ricochet request orders.42.get --timeout 2s\n",
    )
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge until SIGTERM or SIGINT; SIGHUP reloads the configuration; exit 64 when
    /// the configuration is invalid.
    #[command(after_help = concat!(
        environment_help!(),
        "  RUST_LOG                    overrides log.level\n",
        "\nExamples:\n",
        "  ricochet run\n",
        "  ricochet run --config /etc/ricochet/ricochet.toml\n",
        "  RICOCHET__UPSTREAM__BASE_URL=http://127.0.0.1:9000 ricochet run --config ", default_config!(), "\n",
    ))]
    Run {
        /// The configuration file (TOML).
        #[arg(long, short, default_value = default_config!())]
        config: PathBuf,
    },
    /// Validate a configuration and print every problem; exit 64 when invalid.
    #[command(after_help = concat!(
        environment_help!(),
        "  RUST_LOG                    overrides log.level\n",
        "\nExamples:\n",
        "  ricochet check --config ", default_config!(), "\n",
        "  RICOCHET__ROUTES__0__TIMEOUT=2s ricochet check --config /etc/ricochet/ricochet.toml --print\n",
    ))]
    Check {
        /// The configuration file (TOML), with the environment overrides applied.
        #[arg(long, short, default_value = default_config!())]
        config: PathBuf,
        /// Print the effective configuration (file, environment and defaults), secrets
        /// redacted.
        #[arg(long)]
        print: bool,
    },
    /// Send one NATS request and print the reply's status, headers and body.
    #[command(after_help = concat!(
        environment_help!(),
        "  NATS_URL                    the server, when --nats-url is not given (before nats.url of --config)\n",
        "\nExamples:\n",
        "  ricochet request orders.42.get\n",
        "  ricochet request orders.create --data '{\"item\":\"book\"}' -H Content-Type=application/json\n",
        "  ricochet request orders.42.get --config /etc/ricochet/ricochet.toml --timeout 2s\n",
    ))]
    Request(request_cmd::RequestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, print } => match settings::load(&config) {
            Ok(loaded) => {
                if print {
                    match loaded.printable() {
                        Ok(text) => print!("{text}"),
                        Err(e) => {
                            eprintln!("cannot print the configuration: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                let valid = format!(
                    "{}: valid ({} routes)",
                    config.display(),
                    loaded.config.routes.len()
                );
                // With --print, stdout is the configuration alone.
                if print {
                    eprintln!("{valid}");
                } else {
                    println!("{valid}");
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprint!("{}: {errors}", config.display());
                ExitCode::from(EXIT_INVALID_CONFIG as u8)
            }
        },
        Command::Run { config } => {
            let loaded = match settings::load(&config) {
                Ok(loaded) => loaded,
                Err(errors) => {
                    eprint!("{}: {errors}", config.display());
                    return ExitCode::from(EXIT_INVALID_CONFIG as u8);
                }
            };
            ricochet::telemetry::logging::init(
                &loaded.config.log,
                ricochet::source::nats::drops::layer(),
            );
            let mut builder = match loaded.config.runtime_threads() {
                RuntimeThreads::Single => tokio::runtime::Builder::new_current_thread(),
                RuntimeThreads::Multi(threads) => {
                    let mut builder = tokio::runtime::Builder::new_multi_thread();
                    if let Some(threads) = threads {
                        builder.worker_threads(threads);
                    }
                    builder
                }
            };
            let runtime = match builder.enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let running = async move {
                // SIGHUP (and, with reload.watch, the file's changes) reload the file.
                let reloads = ricochet::reload::Triggers::new(config, &loaded.config.reload)?;
                ricochet::run(loaded, Some(reloads), shutdown_signal()).await
            };
            let code = match runtime.block_on(running) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            };
            // `run` kept to the grace period; a task still blocked (a span export that
            // timed out) must not hold the exit past it, as dropping the runtime would.
            runtime.shutdown_background();
            code
        }
        Command::Request(args) => request_cmd::run(args),
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
