//! The `sandgate` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sandgate::config::Source;
use sandgate::sandbox::Sandbox;
use sandgate::telemetry::LogFormat;
use sandgate::{Overrides, start};

/// sandgate: an edge gateway for API sandboxes.
///
/// Serves a sandbox directory (sandgate.yaml, contracts/, fixtures/,
/// policies/) in front of real sandbox backends and OpenAPI contracts. With
/// no --config it serves the bundled demo payments sandbox.
#[derive(Parser)]
#[command(name = "sandgate", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a sandbox (the bundled demo when --config is not given).
    ///
    /// SIGHUP reloads the configuration (a broken one is refused and the
    /// running one keeps serving); SIGTERM or SIGINT drains in-flight
    /// requests and exits 0. Log filter: SANDGATE_LOG (default `info`).
    Serve {
        /// Sandbox directory containing sandgate.yaml.
        #[arg(long, short = 'c', value_name = "DIR")]
        config: Option<PathBuf>,
        /// Override the address of the first public listener (e.g. 0.0.0.0:8080).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Override the address of the admin listener.
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<SocketAddr>,
        /// Log format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Check a sandbox directory: YAML, references, files, contracts.
    ///
    /// Exits 0 when everything is valid; otherwise prints every problem as
    /// `file:line: message` and exits 1.
    Check {
        /// Sandbox directory containing sandgate.yaml (default: the bundled demo).
        #[arg(long, short = 'c', value_name = "DIR")]
        config: Option<PathBuf>,
    },
}

fn source_of(config: Option<PathBuf>) -> Source {
    match config {
        Some(dir) => Source::Dir(dir),
        None => sandgate::demo::source(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The control runtime: signals, reloads and the admin listener. The
    // public listeners get their own worker threads (see `run::start`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Check { config } => check(source_of(config)),
            Command::Serve {
                config,
                listen,
                admin_listen,
                log_format,
            } => {
                sandgate::telemetry::init_logging(log_format);
                serve(
                    config,
                    Overrides {
                        listen,
                        admin_listen,
                    },
                )
                .await
            }
        }
    })
}

fn check(source: Source) -> ExitCode {
    match Sandbox::load(&source, &Overrides::default()) {
        Ok(sb) => {
            let ops: usize = sb
                .apis
                .iter()
                .filter_map(|a| a.contract.as_ref())
                .map(|c| c.operations.len())
                .sum();
            println!(
                "ok: {} API(s), {} documented operation(s), {} public listener(s)",
                sb.apis.len(),
                ops,
                sb.listeners.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                println!("{e}");
            }
            eprintln!("{} problem(s) found", errors.0.len());
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Option<PathBuf>, overrides: Overrides) -> ExitCode {
    let demo = config.is_none();
    // Before anything is announced: a SIGTERM sent as soon as the address is
    // printed must drain, not kill.
    let signals = match sandgate::run::Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sandgate: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let running = match start(source_of(config), overrides).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sandgate: not started:\n{e}");
            return ExitCode::FAILURE;
        }
    };
    for (addr, tls) in &running.public {
        println!(
            "listening public {}://{addr}",
            if *tls { "https" } else { "http" }
        );
    }
    println!(
        "listening admin http://{} (/healthz /readyz /metrics)",
        running.admin
    );
    if demo && let Some((addr, tls)) = running.public.first() {
        let scheme = if *tls { "https" } else { "http" };
        println!("\nServing the bundled demo sandbox (a payments API). Try it:\n");
        println!("  curl -s {scheme}://{addr}/payments/v1/customers/cus_NffrFeUfNV2Hib\n");
    }
    match running.run_until_signal(signals).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandgate: signal handling failed: {e}");
            ExitCode::FAILURE
        }
    }
}
