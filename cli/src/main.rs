//! `concord`: one binary for every Concord process and tool (one binary keeps release builds
//! short: each binary linking the tonic stack costs release codegen time).
//!
//! `main` only parses flags, installs tracing and dispatches; servers bind their listener here
//! and hand it to the libraries' `serve` functions, which never bind sockets themselves.

mod bench;
mod chaos;
mod demo;
mod local;
mod servers;
mod txn;
mod undelivered;

/// The payment-gateway example (examples/payment_gateway.rs), served by the hidden
/// `concord payment-gateway` so the tests and the chaos harness can run it as a process.
#[path = "../../examples/payment_gateway.rs"]
mod payment_gateway;

use clap::{Parser, Subcommand};

/// Concord: a distributed-transaction coordinator (two-phase commit with saga fallback).
#[derive(Parser)]
#[command(name = "concord", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a coordinator server.
    Coordinator(servers::CoordinatorArgs),
    /// Run a participant sidecar guarding a local sled store.
    Participant(servers::ParticipantArgs),
    /// Start a local coordinator and three participants and run a bank-transfer workload.
    Demo(demo::DemoArgs),
    /// Submit a transaction to a coordinator.
    Submit(txn::SubmitArgs),
    /// Show one transaction.
    Get(txn::GetArgs),
    /// List transactions.
    List(txn::ListArgs),
    /// Run the chaos harness: faults under load against local processes, then every check.
    Chaos(chaos::ChaosArgs),
    /// Measure committed transactions/s and latency next to a unary gRPC echo ceiling.
    Bench(bench::BenchArgs),
    /// Serve a unary gRPC echo (started by `concord bench`).
    #[command(hide = true)]
    EchoServer(servers::EchoServerArgs),
    /// Serve the payment-gateway example: a do/undo-only participant written with the SDK.
    #[command(hide = true)]
    PaymentGateway(servers::GatewayServerArgs),
}

/// mimalloc rather than glibc's malloc: under `concord bench` glibc's malloc and free were ~12%
/// of all CPU time (perf), most of it in consolidation and bin management that mimalloc's
/// per-thread free lists avoid. See docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The async runtime's worker threads for `command`, when not the machine's core count.
fn worker_threads(command: &Command) -> Option<usize> {
    match command {
        // The load generator is one closed loop: one thread leaves the cores to the servers
        // it measures.
        Command::Bench(_) => Some(1),
        Command::Coordinator(args) => args.worker_threads.map(usize::from),
        Command::Participant(args) => args.worker_threads.map(usize::from),
        _ => None,
    }
}

/// The exit status for a usage error (sysexits' EX_USAGE), distinct from `submit`'s 2,
/// "outcome unknown".
const EXIT_USAGE: u8 = 64;

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                std::process::ExitCode::from(EXIT_USAGE)
            } else {
                std::process::ExitCode::SUCCESS // --help, --version
            };
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads(&cli.command) {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("concord: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Coordinator(args) => {
                init_tracing("info");
                servers::run_coordinator(args).await
            }
            Command::Participant(args) => {
                init_tracing("info");
                servers::run_participant(args).await
            }
            Command::Demo(args) => {
                init_tracing("warn");
                demo::run(args).await
            }
            Command::Submit(args) => {
                init_tracing("warn");
                txn::submit(args).await
            }
            Command::Get(args) => {
                init_tracing("warn");
                txn::get(args).await
            }
            Command::List(args) => {
                init_tracing("warn");
                txn::list(args).await
            }
            Command::Chaos(args) => {
                init_tracing("warn");
                chaos::run_chaos(args).await
            }
            Command::Bench(args) => {
                init_tracing("warn");
                bench::run(args).await
            }
            Command::EchoServer(args) => {
                init_tracing("warn");
                servers::run_echo_server(args).await
            }
            Command::PaymentGateway(args) => {
                init_tracing("info");
                let stdin_eof = args.stop_on_stdin_eof;
                payment_gateway::run(args.gateway, servers::shutdown(stdin_eof)).await?;
                Ok(std::process::ExitCode::SUCCESS)
            }
        }
    });
    // Do not wait for blocking tasks that may never end (a read of a stdin lifeline the parent
    // still holds): everything that matters has finished or been made durable by now.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("concord: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `RUST_LOG` overrides `default`.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Resolves when the process is asked to stop: Ctrl-C, SIGTERM, SIGHUP (its terminal closed) or
/// SIGQUIT. The handlers are installed when this is called, not when the future is first
/// polled: call it before telling anyone the process is ready, so a signal sent from then on
/// stops it cleanly rather than killing it.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut handlers: Vec<tokio::signal::unix::Signal> = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
    ]
    .into_iter()
    .filter_map(|kind| signal(kind).ok())
    .collect();
    async move {
        if handlers.is_empty() {
            return std::future::pending().await;
        }
        let arrivals = handlers.iter_mut().map(|handler| Box::pin(handler.recv()));
        let _ = futures_util::future::select_all(arrivals).await;
    }
}

/// Resolves when `kind` arrives (never, if it cannot be listened for).
pub async fn signal(kind: tokio::signal::unix::SignalKind) {
    match tokio::signal::unix::signal(kind) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}
