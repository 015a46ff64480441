//! `concord participant` and `concord coordinator`: flags (each also an environment variable),
//! storage opened and recovered, the listener bound, then the library's `serve`.
//!
//! Once listening, each server prints one line `listening on ADDR` to stdout, so tools that
//! start it with `--listen 127.0.0.1:0` learn the port it got.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use concord_core::limits;
use concord_core::participant::EngineLimits;
use concord_participant::{Node, NodeConfig, ResolverConfig, SledStore};
use concord_wal::{FileWal, FileWalOptions};

/// Flags of `concord participant`.
#[derive(Args, Debug)]
pub struct ParticipantArgs {
    /// Threads that run requests (default: one per core). Servers sharing a machine do
    /// better with fewer: `concord demo` and `concord bench` give each of theirs cores ÷ servers.
    #[arg(long, env = "CONCORD_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// Address to serve the participant API on (127.0.0.1:0 picks a free port).
    #[arg(long, env = "CONCORD_LISTEN", default_value = "127.0.0.1:7101")]
    listen: String,
    /// Directory for the write-ahead log (`wal/`) and the sled store (`store/`).
    #[arg(long, env = "CONCORD_DATA_DIR")]
    data_dir: PathBuf,
    /// This participant's name, as the coordinator knows it.
    #[arg(long, env = "CONCORD_NAME")]
    name: String,
    /// The coordinator's address, asked for the outcome of in-doubt branches.
    #[arg(long, env = "CONCORD_COORDINATOR")]
    coordinator: Option<String>,
    /// Branches that may be prepared at once.
    #[arg(long, env = "CONCORD_MAX_PREPARED", default_value_t = concord_core::limits::MAX_PREPARED_BRANCHES)]
    max_prepared: usize,
    /// Take a checkpoint after this many log records.
    #[arg(long, env = "CONCORD_CHECKPOINT_EVERY", default_value_t = 100_000)]
    checkpoint_every: u64,
    /// Size at which a log segment is closed and a new one started.
    #[arg(long, env = "CONCORD_SEGMENT_BYTES", default_value_t = 16 * 1024 * 1024)]
    segment_bytes: u64,
    /// Stop when standard input closes: for a parent (such as `concord demo`) that must not
    /// leave this server running if it dies.
    #[arg(long, hide = true)]
    stop_on_stdin_eof: bool,
}

/// Runs a participant until Ctrl-C/SIGTERM or a storage failure.
pub async fn run_participant(args: ParticipantArgs) -> anyhow::Result<ExitCode> {
    concord_failpoints::configure_from_env().map_err(anyhow::Error::msg)?;
    check_segment_bytes(args.segment_bytes)?;
    if args.max_prepared == 0 || args.max_prepared > concord_core::limits::MAX_PREPARED_BRANCHES {
        anyhow::bail!(
            "--max-prepared must be 1 to {}",
            concord_core::limits::MAX_PREPARED_BRANCHES
        );
    }
    let wal = FileWal::open(
        &args.data_dir.join("wal"),
        FileWalOptions {
            segment_bytes: args.segment_bytes,
            max_record_bytes: concord_core::limits::MAX_WAL_RECORD_BYTES,
            preallocate: true,
        },
    )
    .with_context(|| format!("opening the write-ahead log in {}", args.data_dir.display()))?;
    let store = SledStore::open(&args.data_dir.join("store"))?;
    let node = Node::recover(
        NodeConfig {
            name: args.name.clone(),
            limits: EngineLimits { max_prepared: args.max_prepared, ..EngineLimits::default() },
            checkpoint_every_records: args.checkpoint_every.max(1),
            max_record_bytes: concord_core::limits::MAX_WAL_RECORD_BYTES,
            ..NodeConfig::default()
        },
        wal,
        store,
    )
    .context("recovering from the write-ahead log")?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let stop = shutdown(args.stop_on_stdin_eof);
    announce(&listener)?;
    let resolver = ResolverConfig { coordinator: args.coordinator, ..ResolverConfig::default() };
    concord_participant::serve(concord_proto::net::incoming(listener), stop, node, resolver)
        .await?;
    tracing::info!(name = %args.name, "participant stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM, and, with `stdin_eof`, once standard input closes.
pub fn shutdown(stdin_eof: bool) -> impl Future<Output = ()> + Send + 'static {
    // Installed now (see `shutdown_signal`), not when the server first polls this.
    let signalled = crate::shutdown_signal();
    let parent_gone = async move {
        if !stdin_eof {
            return std::future::pending::<()>().await;
        }
        use tokio::io::AsyncReadExt;
        let mut stdin = tokio::io::stdin();
        let mut buffer = [0u8; 64];
        // Anything written is ignored; end of input (or an error) means the parent is gone.
        while matches!(stdin.read(&mut buffer).await, Ok(n) if n > 0) {}
        tracing::warn!("standard input closed: the parent is gone; stopping");
    };
    async move {
        tokio::select! {
            () = signalled => {}
            () = parent_gone => {}
        }
    }
}

/// The smallest `--segment-bytes`: below it every sync would roll to a new file.
const MIN_SEGMENT_BYTES: u64 = 4096;

fn check_segment_bytes(segment_bytes: u64) -> anyhow::Result<()> {
    if segment_bytes < MIN_SEGMENT_BYTES {
        anyhow::bail!("--segment-bytes must be at least {MIN_SEGMENT_BYTES}, got {segment_bytes}");
    }
    Ok(())
}

/// Prints the bound address for whoever started this process.
fn announce(listener: &tokio::net::TcpListener) -> anyhow::Result<()> {
    use std::io::Write;
    let address = listener.local_addr()?;
    tracing::info!(%address, "listening");
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {address}")?;
    stdout.flush()?;
    Ok(())
}

/// Flags of `concord payment-gateway`.
#[derive(Args, Debug)]
pub struct GatewayServerArgs {
    #[command(flatten)]
    pub gateway: crate::payment_gateway::GatewayArgs,
    /// Stop when standard input closes (see `concord participant`).
    #[arg(long, hide = true)]
    pub stop_on_stdin_eof: bool,
}

/// Flags of `concord coordinator`.
#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    /// Threads that run requests (default: one per core). Servers sharing a machine do
    /// better with fewer: `concord demo` and `concord bench` give each of theirs cores ÷ servers.
    #[arg(long, env = "CONCORD_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// Address to serve the coordinator API on (127.0.0.1:0 picks a free port).
    #[arg(long, env = "CONCORD_LISTEN")]
    listen: Option<String>,
    /// Directory for the coordinator's decision log.
    #[arg(long, env = "CONCORD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A participant, as NAME=HOST:PORT; repeat for each.
    #[arg(long = "participant", env = "CONCORD_PARTICIPANTS", value_delimiter = ',')]
    participants: Vec<String>,
    /// A TOML file with the same settings: listen, data_dir, call_timeout_ms and a
    /// [participants] table of NAME = "HOST:PORT". Flags override it.
    #[arg(long, env = "CONCORD_CONFIG")]
    config: Option<PathBuf>,
    /// Timeout of each call to a participant, in milliseconds.
    #[arg(long, env = "CONCORD_CALL_TIMEOUT_MS")]
    call_timeout_ms: Option<u64>,
    /// Transactions undecided at once; Submit beyond gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "CONCORD_MAX_INFLIGHT", default_value_t = limits::DEFAULT_INFLIGHT_TXNS)]
    max_inflight: usize,
    /// Take a checkpoint after this many decision-log records.
    #[arg(long, env = "CONCORD_CHECKPOINT_EVERY", default_value_t = 200_000)]
    checkpoint_every: u64,
    /// Size at which a log segment is closed and a new one started.
    #[arg(long, env = "CONCORD_SEGMENT_BYTES", default_value_t = 16 * 1024 * 1024)]
    segment_bytes: u64,
    /// Finished transactions remembered for GetTransaction and idempotent Submit; older ones
    /// are forgotten, and ids that might be among them are refused rather than run again.
    #[arg(long, env = "CONCORD_RETAIN", default_value_t = limits::DEFAULT_RETAINED_OUTCOMES)]
    retain: usize,
    /// Send Prepares and Commits many per message (false: one call each, for participants
    /// that do not implement PrepareBatch/CommitBatch; they are also detected on their own).
    #[arg(long, env = "CONCORD_BATCH_CALLS", default_value_t = true, action = clap::ArgAction::Set)]
    batch_calls: bool,
    /// A saga step whose Compensate failed this many times puts its transaction in
    /// NEEDS_ATTENTION (`concord list --state needs-attention`); it is still retried.
    #[arg(long, env = "CONCORD_ATTENTION_AFTER_ATTEMPTS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    attention_after_attempts: u32,
    /// How often a compensation that needs attention is retried, in milliseconds.
    #[arg(long, env = "CONCORD_ATTENTION_RETRY_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    attention_retry_ms: u64,
    /// Stop when standard input closes (see `concord participant`).
    #[arg(long, hide = true)]
    stop_on_stdin_eof: bool,
}

/// The TOML form of the coordinator's settings.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct CoordinatorFile {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    call_timeout_ms: Option<u64>,
    #[serde(default)]
    participants: std::collections::BTreeMap<String, String>,
}

/// Runs a coordinator until Ctrl-C/SIGTERM or a decision-log failure.
pub async fn run_coordinator(args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    concord_failpoints::configure_from_env().map_err(anyhow::Error::msg)?;
    let file: CoordinatorFile = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => CoordinatorFile::default(),
    };
    let mut participants = file.participants;
    for spec in &args.participants {
        let (name, address) = spec
            .split_once('=')
            .with_context(|| format!("--participant {spec:?}: expected NAME=HOST:PORT"))?;
        if name.is_empty() || name.len() > concord_core::limits::MAX_PARTICIPANT_NAME_BYTES {
            anyhow::bail!(
                "--participant {spec:?}: the name must be 1 to {} bytes",
                concord_core::limits::MAX_PARTICIPANT_NAME_BYTES
            );
        }
        participants.insert(name.to_string(), address.to_string());
    }
    if participants.is_empty() {
        anyhow::bail!(
            "no participants: pass --participant NAME=HOST:PORT (repeatable) or a --config file"
        );
    }
    let data_dir = args.data_dir.or(file.data_dir).context("--data-dir is required")?;
    let listen = args.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:7100".to_string());
    let call_timeout_ms = args.call_timeout_ms.or(file.call_timeout_ms).unwrap_or(2_000);
    if !(1..=concord_core::limits::MAX_TXN_TIMEOUT_MS).contains(&call_timeout_ms) {
        anyhow::bail!(
            "--call-timeout-ms must be 1 to {}",
            concord_core::limits::MAX_TXN_TIMEOUT_MS
        );
    }
    if !(1..=limits::MAX_INFLIGHT_TXNS).contains(&args.max_inflight) {
        anyhow::bail!(
            "--max-inflight must be 1 to {}, got {}",
            limits::MAX_INFLIGHT_TXNS,
            args.max_inflight
        );
    }
    check_segment_bytes(args.segment_bytes)?;
    if args.retain == 0 {
        anyhow::bail!("--retain must be at least 1");
    }
    let wal = FileWal::open(
        &data_dir.join("wal"),
        FileWalOptions {
            segment_bytes: args.segment_bytes,
            max_record_bytes: concord_core::limits::MAX_WAL_RECORD_BYTES,
            preallocate: true,
        },
    )
    .with_context(|| format!("opening the decision log in {}", data_dir.display()))?;
    let config = concord_coordinator::CoordinatorConfig {
        participants,
        call_timeout: Duration::from_millis(call_timeout_ms),
        max_inflight: args.max_inflight,
        max_retained: args.retain,
        checkpoint_every_records: args.checkpoint_every.max(1),
        batch_calls: args.batch_calls,
        attention_after_attempts: args.attention_after_attempts,
        attention_retry: Duration::from_millis(args.attention_retry_ms),
        ..concord_coordinator::CoordinatorConfig::default()
    };
    let coordinator = concord_coordinator::Coordinator::recover(
        config,
        concord_coordinator::WalLog::new(wal, concord_core::limits::MAX_WAL_RECORD_BYTES),
    )
    .await
    .context("recovering from the decision log")?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let stop = shutdown(args.stop_on_stdin_eof);
    announce(&listener)?;
    concord_coordinator::serve(concord_proto::net::incoming(listener), stop, coordinator).await?;
    tracing::info!("coordinator stopped");
    Ok(ExitCode::SUCCESS)
}

/// Flags of `concord echo-server` (hidden: `concord bench` starts it).
#[derive(Args, Debug)]
pub struct EchoServerArgs {
    /// Address to serve the echo on (127.0.0.1:0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Stop when standard input closes.
    #[arg(long, hide = true)]
    stop_on_stdin_eof: bool,
}

/// The largest echo payload.
const MAX_ECHO_BYTES: usize = 4096;

/// The `concord.v1.Echo` service.
#[derive(Clone, Copy, Debug, Default)]
struct EchoService;

#[tonic::async_trait]
impl concord_proto::v1::echo_server::Echo for EchoService {
    async fn echo(
        &self,
        request: tonic::Request<concord_proto::v1::EchoRequest>,
    ) -> Result<tonic::Response<concord_proto::v1::EchoResponse>, tonic::Status> {
        let payload = request.into_inner().payload;
        if payload.len() > MAX_ECHO_BYTES {
            return Err(tonic::Status::invalid_argument(format!(
                "payload: {} bytes, at most {MAX_ECHO_BYTES}",
                payload.len()
            )));
        }
        Ok(tonic::Response::new(concord_proto::v1::EchoResponse { payload }))
    }
}

/// Serves the echo with Concord's transport settings until stopped.
pub async fn run_echo_server(args: EchoServerArgs) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let stop = shutdown(args.stop_on_stdin_eof);
    announce(&listener)?;
    let (_never, fatal) = tokio::sync::watch::channel(None);
    concord_proto::net::serve(
        concord_proto::v1::echo_server::EchoServer::new(EchoService),
        concord_proto::net::incoming(listener),
        stop,
        fatal,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
