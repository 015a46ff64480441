//! The shared harness of the suites over real processes (DESIGN.md "Testing tiers", tier 4).
//!
//! - [`ConcordProcess`]: a running `concord` subcommand, started with `--listen 127.0.0.1:0`;
//!   [`ConcordProcess::start`] reads its one `listening on ADDR` line with a timeout. The guard
//!   kills the process by its own pid (SIGKILL) when dropped, so no test leaves a process behind,
//!   also when it fails; [`ConcordProcess::terminate`] sends SIGTERM for graceful shutdown.
//! - [`ParticipantProcess`]: `concord participant` on a data directory, restartable on the same
//!   data directory (and the same port when it is still free).
//! - [`StandInCoordinator`]: an in-process `concord.v1.Coordinator` on 127.0.0.1 whose
//!   `ResolveTransaction` answers from a table the test controls and counts the questions.
//! - [`eventually`]: polling with a bounded deadline, instead of sleeping and hoping.
//!
//! Each suite uses a different part of this module, hence `dead_code` is allowed here.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use concord_proto::v1;
use concord_proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use concord_proto::v1::participant_client::ParticipantClient;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// The `concord` binary Cargo built for this test crate.
pub const CONCORD: &str = env!("CARGO_BIN_EXE_concord");
/// How long a server may take from spawn to its `listening on` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a process may take to exit once told to (or once it hit a fatal error).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// The timeout of every call a test makes.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often [`eventually`] probes.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A running `concord` process. Dropping the guard kills it (SIGKILL, by its pid) and reaps it.
pub struct ConcordProcess {
    /// `None` once the process has been reaped.
    child: Option<Child>,
    pid: u32,
    /// The address from its `listening on` line; `None` if it never printed one.
    address: Option<SocketAddr>,
    /// Where its stderr (the tracing log) goes.
    stderr_path: PathBuf,
    /// Everything it printed on stdout so far.
    stdout: Arc<Mutex<String>>,
    /// Fires with the address of the first `listening on` line, or is dropped at EOF.
    listening: Option<oneshot::Receiver<SocketAddr>>,
    /// Set once the exit status is known.
    status: Option<ExitStatus>,
}

impl ConcordProcess {
    /// Spawns `concord ARGS`, stderr into `stderr_path`, without waiting for anything.
    pub fn spawn(args: &[String], stderr_path: &Path) -> anyhow::Result<ConcordProcess> {
        ConcordProcess::spawn_with_env(args, &[], stderr_path)
    }

    /// Like [`ConcordProcess::spawn`], with extra environment variables (such as
    /// `CONCORD_FAILPOINTS`).
    pub fn spawn_with_env(
        args: &[String],
        env: &[(&str, &str)],
        stderr_path: &Path,
    ) -> anyhow::Result<ConcordProcess> {
        let stderr = std::fs::File::create(stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let mut child = Command::new(CONCORD)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("spawning {CONCORD} {args:?}"))?;
        let pid = child.id();
        let stdout_pipe = child.stdout.take().context("stdout was piped")?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tell, listening) = oneshot::channel();
        let collected = Arc::clone(&stdout);
        // A thread drains stdout for the life of the process (until EOF), so the pipe never
        // fills, and reports the first `listening on` line.
        std::thread::spawn(move || {
            let mut tell = Some(tell);
            for line in BufReader::new(stdout_pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = line.strip_prefix("listening on ")
                    && let Ok(address) = address.trim().parse::<SocketAddr>()
                    && let Some(tell) = tell.take()
                {
                    let _ = tell.send(address);
                }
                if let Ok(mut out) = collected.lock() {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        });
        Ok(ConcordProcess {
            child: Some(child),
            pid,
            address: None,
            stderr_path: stderr_path.to_path_buf(),
            stdout,
            listening: Some(listening),
            status: None,
        })
    }

    /// Spawns `concord ARGS` and waits (at most [`STARTUP_TIMEOUT`]) for its `listening on`
    /// line. On failure the process is killed and the error carries its stderr.
    pub async fn start(args: &[String], stderr_path: &Path) -> anyhow::Result<ConcordProcess> {
        ConcordProcess::start_with_env(args, &[], stderr_path).await
    }

    /// Like [`ConcordProcess::start`], with extra environment variables.
    pub async fn start_with_env(
        args: &[String],
        env: &[(&str, &str)],
        stderr_path: &Path,
    ) -> anyhow::Result<ConcordProcess> {
        let mut process = ConcordProcess::spawn_with_env(args, env, stderr_path)?;
        let listening = process.listening.take().context("listening receiver")?;
        match tokio::time::timeout(STARTUP_TIMEOUT, listening).await {
            Ok(Ok(address)) => {
                process.address = Some(address);
                Ok(process)
            }
            Ok(Err(_)) => {
                // stdout closed without the line: the process is exiting.
                let status = process.wait_exit(EXIT_TIMEOUT).await.ok();
                bail!(
                    "concord {args:?} exited ({status:?}) before listening; stderr:\n{}",
                    process.stderr()
                )
            }
            Err(_) => {
                process.kill();
                bail!(
                    "concord {args:?} printed no `listening on` line within {STARTUP_TIMEOUT:?}; \
                     stderr:\n{}",
                    process.stderr()
                )
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address.expect("the process was started with `start`, so it announced an address")
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|out| out.clone()).unwrap_or_default()
    }

    /// Kills it with SIGKILL (`Child::kill`, by pid) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.status = Some(status);
            }
        }
    }

    /// Sends SIGTERM (asks for a graceful shutdown) without waiting.
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal("TERM")
    }

    /// Sends `kill -SIGNAL` to this process by its pid (for example `STOP` and `CONT` to pause
    /// and resume it).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        if self.child.is_none() {
            bail!("process {} was already reaped", self.pid);
        }
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid.to_string()])
            .status()
            .with_context(|| format!("running kill -{signal}"))?;
        if !status.success() {
            bail!("kill -{signal} {} failed: {status}", self.pid);
        }
        Ok(())
    }

    /// Waits at most `timeout` for the process to exit, polling; returns its status. On timeout
    /// the process is left running (the guard still kills it).
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            let Some(child) = self.child.as_mut() else {
                bail!("process {} was reaped without a status", self.pid);
            };
            if let Some(status) = child.try_wait().context("waiting for the process")? {
                self.status = Some(status);
                self.child = None;
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("process {} did not exit within {timeout:?}", self.pid);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for ConcordProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let stderr = self.stderr();
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            eprintln!("--- last lines of stderr of concord pid {} ---", self.pid);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A free port on 127.0.0.1 for a process that others must know the address of before it
/// starts (the port is released just before use; the OS does not hand it out again at once).
pub fn reserve_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("a bound listener has an address")
}

/// `concord participant` on a data directory under a test's temporary directory.
pub struct ParticipantProcess {
    process: ConcordProcess,
    /// The test's directory: `data/` holds the WAL and the store, `*.stderr` the logs.
    root: PathBuf,
    name: String,
    coordinator: Option<SocketAddr>,
    /// Flags added to every start (for example `--segment-bytes`).
    extra: Vec<String>,
    /// How many times it was started; names the stderr files.
    starts: u32,
}

impl ParticipantProcess {
    /// Starts a participant named `name` on `root/data`, asking `coordinator` about in-doubt
    /// branches if given.
    pub async fn start(
        root: &Path,
        name: &str,
        coordinator: Option<SocketAddr>,
        extra: &[&str],
    ) -> anyhow::Result<ParticipantProcess> {
        let extra: Vec<String> = extra.iter().map(ToString::to_string).collect();
        let args = participant_args(root, name, "127.0.0.1:0", coordinator, &extra);
        let process = ConcordProcess::start(&args, &stderr_path(root, name, 1)).await?;
        Ok(ParticipantProcess {
            process,
            root: root.to_path_buf(),
            name: name.to_string(),
            coordinator,
            extra,
            starts: 1,
        })
    }

    /// Like [`ParticipantProcess::start`], with environment variables (such as
    /// `CONCORD_FAILPOINTS`) for this first start only: restarts run without them.
    pub async fn start_with_env(
        root: &Path,
        name: &str,
        coordinator: Option<SocketAddr>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ParticipantProcess> {
        let extra = Vec::new();
        let args = participant_args(root, name, "127.0.0.1:0", coordinator, &extra);
        let process =
            ConcordProcess::start_with_env(&args, env, &stderr_path(root, name, 1)).await?;
        Ok(ParticipantProcess {
            process,
            root: root.to_path_buf(),
            name: name.to_string(),
            coordinator,
            extra,
            starts: 1,
        })
    }

    /// The data directory (`wal/` and `store/` inside).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The write-ahead log's directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir().join("wal")
    }

    /// The address the current process listens on.
    pub fn address(&self) -> SocketAddr {
        self.process.address()
    }

    /// The current process.
    pub fn process(&mut self) -> &mut ConcordProcess {
        &mut self.process
    }

    /// A client of the current process.
    pub fn client(&self) -> ParticipantClient<Channel> {
        participant_client(self.address())
    }

    /// Kills the current process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Kills the current process (SIGKILL) if it still runs, then starts a new one on the same
    /// data directory: on the same port if it is still free, otherwise on a new one. Clients
    /// must be made again from [`ParticipantProcess::client`].
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        let previous = self.process.address();
        self.starts += 1;
        let same_port = participant_args(
            &self.root,
            &self.name,
            &previous.to_string(),
            self.coordinator,
            &self.extra,
        );
        let stderr = stderr_path(&self.root, &self.name, self.starts);
        self.process = match ConcordProcess::start(&same_port, &stderr).await {
            Ok(process) => process,
            Err(error) if format!("{error:#}").contains("binding") => {
                self.starts += 1;
                let any_port = participant_args(
                    &self.root,
                    &self.name,
                    "127.0.0.1:0",
                    self.coordinator,
                    &self.extra,
                );
                ConcordProcess::start(&any_port, &stderr_path(&self.root, &self.name, self.starts))
                    .await?
            }
            Err(error) => return Err(error),
        };
        Ok(())
    }
}

/// The flags of `concord participant` for a participant under `root`.
pub fn participant_args(
    root: &Path,
    name: &str,
    listen: &str,
    coordinator: Option<SocketAddr>,
    extra: &[String],
) -> Vec<String> {
    let mut args = vec![
        "participant".to_string(),
        "--listen".into(),
        listen.into(),
        "--data-dir".into(),
        root.join("data").display().to_string(),
        "--name".into(),
        name.into(),
    ];
    if let Some(coordinator) = coordinator {
        args.push("--coordinator".into());
        args.push(coordinator.to_string());
    }
    args.extend(extra.iter().cloned());
    args
}

fn stderr_path(root: &Path, name: &str, start: u32) -> PathBuf {
    root.join(format!("{name}-{start}.stderr"))
}

/// A participant client to `address` with [`CALL_TIMEOUT`] on every call.
pub fn participant_client(address: SocketAddr) -> ParticipantClient<Channel> {
    ParticipantClient::new(channel(address))
}

/// A channel to `address` with Concord's transport settings and [`CALL_TIMEOUT`].
pub fn channel(address: SocketAddr) -> Channel {
    assert!(address.ip().is_loopback(), "tests talk to 127.0.0.1 only, not {address}");
    concord_proto::net::channel(&address.to_string(), CALL_TIMEOUT)
        .expect("a socket address is a valid endpoint")
}

/// The `grpc.health.v1.Health/Check` status (1 = SERVING) of `service` at `address`.
///
/// tonic-health is not a dependency of this crate, so this borrows two Concord messages with
/// the same wire shape: `HealthCheckRequest { string service = 1; }` is
/// `ResolveTransactionRequest`'s field 1, and `HealthCheckResponse { ServingStatus status = 1; }`
/// is `ResolveTransactionResponse`'s enum field 1.
pub async fn health_status(address: SocketAddr, service: &str) -> Result<i32, Status> {
    let mut grpc = tonic::client::Grpc::new(channel(address));
    grpc.ready().await.map_err(|e| Status::unavailable(format!("connecting: {e}")))?;
    let codec = tonic::codec::ProstCodec::<
        v1::ResolveTransactionRequest,
        v1::ResolveTransactionResponse,
    >::default();
    let request =
        v1::ResolveTransactionRequest { txn_id: service.to_string(), participant: String::new() };
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    let response = grpc.unary(Request::new(request), path, codec).await?;
    Ok(response.into_inner().outcome)
}

/// Probes every 50 ms until `probe` returns `Some`, for at most `timeout`; panics naming `what`
/// if it never does.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: not reached within {timeout:?}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// What the stand-in coordinator knows and has been asked.
#[derive(Default)]
struct StandInState {
    /// The decided outcome per transaction; unknown ones answer PENDING.
    outcomes: Mutex<HashMap<String, v1::Outcome>>,
    /// ResolveTransaction questions per transaction.
    questions: Mutex<HashMap<String, usize>>,
    /// Every ResolveTransaction question.
    total_questions: AtomicUsize,
}

/// The Coordinator service of the stand-in: only ResolveTransaction is implemented.
struct StandInService {
    state: Arc<StandInState>,
}

#[tonic::async_trait]
impl Coordinator for StandInService {
    async fn submit(
        &self,
        _request: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        Err(Status::unimplemented("the stand-in coordinator only resolves transactions"))
    }

    type SubmitStreamStream = tokio_stream::Empty<Result<v1::SubmitStreamResponse, Status>>;

    async fn submit_stream(
        &self,
        _request: Request<tonic::Streaming<v1::SubmitRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        Err(Status::unimplemented("the stand-in coordinator only resolves transactions"))
    }

    async fn begin(
        &self,
        _: Request<v1::BeginRequest>,
    ) -> Result<Response<v1::BeginResponse>, Status> {
        Err(Status::unimplemented("the stand-in coordinator only resolves transactions"))
    }

    async fn enlist(
        &self,
        _: Request<v1::EnlistRequest>,
    ) -> Result<Response<v1::EnlistResponse>, Status> {
        Err(Status::unimplemented("the stand-in coordinator only resolves transactions"))
    }

    async fn commit(
        &self,
        _: Request<v1::CommitTransactionRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        Err(Status::unimplemented("the stand-in coordinator only resolves transactions"))
    }

    async fn rollback(
        &self,
        _: Request<v1::RollbackTransactionRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        Err(Status::unimplemented("the stand-in coordinator only resolves transactions"))
    }

    async fn get_transaction(
        &self,
        _request: Request<v1::GetTransactionRequest>,
    ) -> Result<Response<v1::GetTransactionResponse>, Status> {
        Err(Status::unimplemented("the stand-in coordinator only resolves transactions"))
    }

    async fn list_transactions(
        &self,
        _request: Request<v1::ListTransactionsRequest>,
    ) -> Result<Response<v1::ListTransactionsResponse>, Status> {
        Err(Status::unimplemented("the stand-in coordinator only resolves transactions"))
    }

    async fn resolve_transaction(
        &self,
        request: Request<v1::ResolveTransactionRequest>,
    ) -> Result<Response<v1::ResolveTransactionResponse>, Status> {
        let txn_id = request.into_inner().txn_id;
        self.state.total_questions.fetch_add(1, Ordering::SeqCst);
        *self.state.questions.lock().unwrap().entry(txn_id.clone()).or_default() += 1;
        let outcome = self
            .state
            .outcomes
            .lock()
            .unwrap()
            .get(&txn_id)
            .copied()
            .unwrap_or(v1::Outcome::Pending);
        Ok(Response::new(v1::ResolveTransactionResponse { outcome: outcome.into(), epoch: 1 }))
    }
}

/// An in-process coordinator on 127.0.0.1 that answers ResolveTransaction from a table the
/// test controls. Stops serving when dropped.
pub struct StandInCoordinator {
    address: SocketAddr,
    state: Arc<StandInState>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl StandInCoordinator {
    /// Binds 127.0.0.1:0 and serves.
    pub async fn start() -> anyhow::Result<StandInCoordinator> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let state = Arc::new(StandInState::default());
        let service = StandInService { state: Arc::clone(&state) };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = concord_proto::net::server()
                .add_service(CoordinatorServer::new(service))
                .serve_with_incoming_shutdown(concord_proto::net::incoming(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(StandInCoordinator { address, state, stop: Some(stop), task })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// From now on, ResolveTransaction for `txn_id` answers `outcome`.
    pub fn decide(&self, txn_id: &str, outcome: v1::Outcome) {
        self.state.outcomes.lock().unwrap().insert(txn_id.to_string(), outcome);
    }

    /// How many times `txn_id` was asked about.
    pub fn questions(&self, txn_id: &str) -> usize {
        self.state.questions.lock().unwrap().get(txn_id).copied().unwrap_or(0)
    }

    /// How many questions it got in all.
    pub fn total_questions(&self) -> usize {
        self.state.total_questions.load(Ordering::SeqCst)
    }
}

impl Drop for StandInCoordinator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

// ───────────────────────────── Requests ─────────────────────────────

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    u64::try_from(since.as_millis()).unwrap()
}

/// A counter add of `delta` to `key`, kept within the bounds given.
pub fn counter_add(
    key: &str,
    delta: i64,
    lower_bound: Option<i64>,
    upper_bound: Option<i64>,
) -> v1::Operation {
    v1::Operation {
        kind: Some(v1::operation::Kind::CounterAdd(v1::CounterAdd {
            key: key.as_bytes().to_vec(),
            delta,
            lower_bound,
            upper_bound,
        })),
    }
}

/// A put of `value` at `key`.
pub fn put(key: &str, value: &[u8]) -> v1::Operation {
    v1::Operation {
        kind: Some(v1::operation::Kind::Put(v1::Put {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
        })),
    }
}

/// A branch at `participant` with `operations`, no saga ordering.
pub fn branch(participant: &str, operations: Vec<v1::Operation>) -> v1::Branch {
    v1::Branch { participant: participant.to_string(), operations, depends_on: Vec::new() }
}
