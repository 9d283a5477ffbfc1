//! The `sandgate` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sandgate::config::Source;
use sandgate::sandbox::Sandbox;
use sandgate::telemetry::LogFormat;
use sandgate::{Overrides, start};

/// mimalloc instead of glibc's allocator: memory allocated on a worker and
/// freed on another thread (a decision trace, a usage observation) is
/// handed back without taking the owning arena's lock, which under glibc
/// turned into futex calls and context switches on the workers' cores.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Replay an API's examples and fixtures against a target; check the answers
    ///
    /// Each operation of the API's contract gets one case per documented
    /// request example (or, with none, one request built from the
    /// contract), and each fixture one case. An answer passes when its
    /// status is documented for the operation (a fixture case: exactly the
    /// fixture's status; 401/403 fail, as nothing was exercised), its
    /// Content-Type is documented for that status, and its body is valid
    /// against the documented schema. Every violation is printed with its
    /// JSON pointer.
    ///
    /// Exit status: 0 every case that ran passed, 1 a case failed (or none
    /// ran), 2 usage or configuration error.
    ///
    /// Example, against a gateway serving the API under /payments:
    ///
    ///   sandgate contract-test -c sandbox/ --api payments \
    ///     --target http://127.0.0.1:8080/payments \
    ///     --api-key "$SANDBOX_KEY" --junit contract-test.xml
    ///
    /// --target is the URL the contract's paths are appended to. See
    /// docs/contract-test.md for how requests are built and what is checked.
    #[command(verbatim_doc_comment)]
    ContractTest {
        /// Sandbox directory containing sandgate.yaml (default: the bundled demo).
        #[arg(long, short = 'c', value_name = "DIR")]
        config: Option<PathBuf>,
        /// Name of the API in sandgate.yaml.
        #[arg(long, value_name = "NAME")]
        api: String,
        /// Base URL the contract's paths are appended to: a backend's base
        /// URL, or a gateway's address plus the API's prefix
        /// (http://127.0.0.1:8080/payments).
        #[arg(long, value_name = "URL")]
        target: String,
        /// Request header sent with every case, e.g. 'Authorization: Bearer
        /// sk_sandbox_…' (repeatable; values are never printed).
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// API key sent as `Authorization: Bearer KEY` (or in
        /// --api-key-header); never printed.
        #[arg(
            long,
            env = "SANDGATE_API_KEY",
            hide_env_values = true,
            value_name = "KEY"
        )]
        api_key: Option<String>,
        /// Send --api-key as is in this header (e.g. X-Api-Key) instead of
        /// `Authorization: Bearer`.
        #[arg(long, value_name = "NAME", requires = "api_key")]
        api_key_header: Option<String>,
        /// Write a JUnit XML report here (one test case per case).
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Longest wait for one complete answer.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Only the cases of this operation (operationId; repeatable).
        #[arg(long, value_name = "OPERATION_ID")]
        only: Vec<String>,
        /// Cases in flight at once (1: one after another, in contract order).
        #[arg(long, value_name = "N", default_value = "1")]
        concurrency: std::num::NonZeroUsize,
        /// Extra CA certificates (PEM) to trust for an HTTPS target.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// One line per case even on a terminal (no progress bar).
        #[arg(long)]
        no_progress: bool,
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
            Command::ContractTest {
                config,
                api,
                target,
                headers,
                api_key,
                api_key_header,
                junit,
                timeout,
                only,
                concurrency,
                ca,
                no_progress,
            } => {
                use std::io::IsTerminal;
                let options = sandgate::contract_test::Options {
                    source: source_of(config),
                    api,
                    target,
                    headers,
                    api_key,
                    api_key_header,
                    junit,
                    timeout,
                    only,
                    concurrency,
                    ca,
                    progress_bar: !no_progress && std::io::stderr().is_terminal(),
                };
                match sandgate::contract_test::run(options).await {
                    Ok(summary) => ExitCode::from(summary.exit_status()),
                    Err(e) => {
                        eprintln!("sandgate contract-test: {e}");
                        ExitCode::from(2)
                    }
                }
            }
            Command::Serve {
                config,
                listen,
                admin_listen,
                log_format,
            } => {
                sandgate::telemetry::init_logging(log_format);
                #[cfg(feature = "otlp")]
                sandgate::otel::init();
                let code = serve(
                    config,
                    Overrides {
                        listen,
                        admin_listen,
                        check_only: false,
                    },
                )
                .await;
                #[cfg(feature = "otlp")]
                sandgate::otel::shutdown();
                code
            }
        }
    })
}

fn check(source: Source) -> ExitCode {
    let validate_only = Overrides {
        check_only: true,
        ..Overrides::default()
    };
    match Sandbox::load(&source, &validate_only) {
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

/// Creates the demo tenant and returns its credentials.
async fn demo_tenant(
    running: &sandgate::Running,
) -> Result<sandgate::tenants::Credentials, sandgate::store::StoreError> {
    let sb = running.gateway.sandbox();
    let prefix = sb
        .api_keys
        .as_ref()
        .map_or("sk_sandbox_", |k| k.prefix.as_str());
    let (mut tenant, creds) = sandgate::tenants::new_tenant(
        "Demo Company",
        "demo@example.com",
        sandgate::tenants::now_secs(),
        sandgate::tenants::days(u64::from(sb.tenants.default_expiry_days)),
        prefix,
    )?;
    tenant.id = sandgate::demo::TENANT.to_owned();
    running.gateway.registry().put(&tenant).await?;
    Ok(creds)
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
        let base = format!("{}://{addr}", if *tls { "https" } else { "http" });
        match demo_tenant(&running).await {
            Ok(creds) => {
                println!(
                    "\nServing the bundled demo sandbox (a payments API) with the demo tenant `{}`.",
                    sandgate::demo::TENANT
                );
                println!("Its credentials (in memory, new at every start):\n");
                println!("  API key:       {}", creds.api_key);
                println!("  client_id:     {}", creds.client_id);
                println!("  client_secret: {}\n", creds.client_secret);
                println!("Try it:\n");
                println!(
                    "  curl -s -H 'Authorization: Bearer {}' {base}/payments/v1/customers/cus_NffrFeUfNV2Hib\n",
                    creds.api_key
                );
                println!(
                    "Or get a token from the built-in issuer and use it as the Bearer credential:\n"
                );
                println!(
                    "  curl -s -u '{}:{}' -d grant_type=client_credentials {base}/oauth/token\n",
                    creds.client_id, creds.client_secret
                );
            }
            Err(e) => eprintln!("sandgate: the demo tenant could not be created: {e}"),
        }
    }
    match running.run_until_signal(signals).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandgate: signal handling failed: {e}");
            ExitCode::FAILURE
        }
    }
}
