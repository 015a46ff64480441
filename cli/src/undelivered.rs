//! `concord bench --undelivered N`: the coordinator's recovery after SIGKILL with N committed
//! transactions whose Commits were never delivered.
//!
//! A real coordinator process runs against two stand-in participants served by this process:
//! they vote YES to every Prepare and, while holding, answer every Commit UNAVAILABLE. N
//! transactions are submitted; each is decided COMMIT (durable in the coordinator's log) and
//! answered COMMITTED (state COMMITTING) once its deadline and one call timeout have passed.
//! With all N awaiting delivery, the coordinator is killed with SIGKILL, the stand-ins start
//! acknowledging, and the coordinator is started again on the same data directory. Reported:
//! the time from the restart to serving (replaying its log) and to every Commit delivered,
//! with the coordinator's log size and memory before the kill.
//!
//! The stand-ins keep no data: what is measured is the coordinator's side of recovery.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use concord_client::{Client, ClientOptions, Transaction};
use concord_core::types::{Operation, Outcome};
use concord_proto::v1;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::local::start_server;

/// The coordinator's default bound on unfinished transactions, committed ones awaiting
/// delivery among them (`CoordinatorConfig::max_undelivered`).
pub const MAX_UNDELIVERED: u64 = concord_core::limits::DEFAULT_UNFINISHED_TXNS as u64;
/// Submissions in flight while filling the backlog.
const FILL_INFLIGHT: u64 = 2_000;
/// Each transaction's timeout: short, so its Submit is answered soon after the decision.
const TXN_TIMEOUT_MS: u32 = 300;
/// The coordinator's call timeout in this scenario (its Submit waits at most the deadline
/// plus this for delivery).
const CALL_TIMEOUT_MS: u64 = 200;
/// Delivery after the restart must finish within this.
const DELIVERY_LIMIT: Duration = Duration::from_secs(600);

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub struct UndeliveredReport {
    /// Transactions answered COMMITTED while their Commits were held.
    pub awaiting_delivery: u64,
    /// Seconds it took to build the backlog.
    pub fill_seconds: f64,
    /// The coordinator's log directory just before the kill (MiB).
    pub coordinator_log_mib: f64,
    /// The coordinator's resident memory just before the kill (MiB).
    pub coordinator_rss_mib_before_kill: f64,
    /// From the restart to serving again (its log replayed), in seconds.
    pub restart_to_serving_seconds: f64,
    /// From the restart to every Commit acknowledged by both stand-ins, in seconds.
    pub restart_to_delivered_seconds: f64,
    /// The coordinator's resident memory once everything was delivered (MiB).
    pub coordinator_rss_mib_after: f64,
}

/// A participant that votes YES to everything and holds Commits (UNAVAILABLE) until released.
#[derive(Clone)]
struct StandIn {
    holding: Arc<AtomicBool>,
    /// Distinct transactions whose Commit it acknowledged, at most `cap`.
    committed: Arc<Mutex<HashSet<String>>>,
    cap: usize,
}

impl StandIn {
    fn new(cap: usize) -> StandIn {
        StandIn {
            holding: Arc::new(AtomicBool::new(true)),
            committed: Arc::new(Mutex::new(HashSet::new())),
            cap,
        }
    }

    fn acknowledged(&self) -> usize {
        self.committed.lock().map_or(0, |set| set.len())
    }

    fn yes() -> v1::PrepareResponse {
        v1::PrepareResponse {
            vote: Some(v1::Vote { kind: v1::VoteKind::Yes as i32, ..v1::Vote::default() }),
            outcome: v1::Outcome::Pending as i32,
        }
    }

    fn commit(&self, ids: impl Iterator<Item = String>) -> Result<(), Status> {
        if self.holding.load(Ordering::Relaxed) {
            return Err(Status::unavailable("this stand-in participant is holding Commits"));
        }
        let mut committed =
            self.committed.lock().map_err(|_| Status::internal("stand-in state poisoned"))?;
        for id in ids {
            if committed.len() < self.cap {
                committed.insert(id);
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl v1::participant_server::Participant for StandIn {
    async fn prepare(
        &self,
        _: Request<v1::PrepareRequest>,
    ) -> Result<Response<v1::PrepareResponse>, Status> {
        Ok(Response::new(StandIn::yes()))
    }

    async fn commit(
        &self,
        request: Request<v1::CommitRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        self.commit(std::iter::once(request.into_inner().txn_id))?;
        Ok(Response::new(v1::CommitResponse {}))
    }

    async fn abort(
        &self,
        _: Request<v1::AbortRequest>,
    ) -> Result<Response<v1::AbortResponse>, Status> {
        Ok(Response::new(v1::AbortResponse {}))
    }

    async fn get(&self, _: Request<v1::GetRequest>) -> Result<Response<v1::GetResponse>, Status> {
        Err(Status::unimplemented("the stand-in participant keeps no data"))
    }

    async fn execute(
        &self,
        _: Request<v1::ExecuteRequest>,
    ) -> Result<Response<v1::ExecuteResponse>, Status> {
        Err(Status::unimplemented("the stand-in participant runs no saga steps"))
    }

    async fn compensate(
        &self,
        _: Request<v1::CompensateRequest>,
    ) -> Result<Response<v1::CompensateResponse>, Status> {
        Err(Status::unimplemented("the stand-in participant runs no saga steps"))
    }

    async fn stage(
        &self,
        _: Request<v1::StageRequest>,
    ) -> Result<Response<v1::StageResponse>, Status> {
        Err(Status::unimplemented("the stand-in participant stages nothing"))
    }

    async fn scan(
        &self,
        _: Request<v1::ScanRequest>,
    ) -> Result<Response<v1::ScanResponse>, Status> {
        Err(Status::unimplemented("the stand-in participant keeps no data"))
    }

    async fn list_in_doubt(
        &self,
        _: Request<v1::ListInDoubtRequest>,
    ) -> Result<Response<v1::ListInDoubtResponse>, Status> {
        Ok(Response::new(v1::ListInDoubtResponse::default()))
    }

    async fn prepare_batch(
        &self,
        request: Request<v1::PrepareBatchRequest>,
    ) -> Result<Response<v1::PrepareBatchResponse>, Status> {
        let results = request
            .into_inner()
            .requests
            .iter()
            .map(|_| v1::PrepareResult {
                result: Some(v1::prepare_result::Result::Response(StandIn::yes())),
            })
            .collect();
        Ok(Response::new(v1::PrepareBatchResponse { results }))
    }

    async fn commit_batch(
        &self,
        request: Request<v1::CommitBatchRequest>,
    ) -> Result<Response<v1::CommitBatchResponse>, Status> {
        let requests = request.into_inner().requests;
        let count = requests.len();
        self.commit(requests.into_iter().map(|r| r.txn_id))?;
        let results = (0..count)
            .map(|_| v1::CommitResult {
                result: Some(v1::commit_result::Result::Response(v1::CommitResponse {})),
            })
            .collect();
        Ok(Response::new(v1::CommitBatchResponse { results }))
    }
}

/// Serves `stand_in` on a free 127.0.0.1 port until `stop` fires; returns its address.
async fn serve_stand_in(
    stand_in: StandIn,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a stand-in participant")?;
    let address = listener.local_addr()?;
    let mut stop = stop;
    tokio::spawn(async move {
        // Held while serving: a stand-in has no storage to fail.
        let (_never, fatal) = tokio::sync::watch::channel(None);
        let shutdown = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        if let Err(error) = concord_proto::net::serve(
            v1::participant_server::ParticipantServer::new(stand_in),
            concord_proto::net::incoming(listener),
            shutdown,
            fatal,
        )
        .await
        {
            tracing::error!(%error, "stand-in participant failed");
        }
    });
    Ok(address)
}

/// Runs the scenario with `count` transactions, with servers' files under `data_dir`.
pub async fn run(exe: &Path, data_dir: &Path, count: u64) -> anyhow::Result<UndeliveredReport> {
    let cap = usize::try_from(count).context("--undelivered is too large")?;
    let stand_ins = [StandIn::new(cap), StandIn::new(cap)];
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut participant_args = Vec::new();
    for (index, stand_in) in stand_ins.iter().enumerate() {
        let address = serve_stand_in(stand_in.clone(), stopped.clone()).await?;
        participant_args.push("--participant".into());
        participant_args.push(format!("s{index}={address}").into());
    }
    // Started, and restarted, on a free port: the bench reaches it at the address it prints,
    // and the stand-ins never call it.
    let coordinator_args = || {
        let mut args: Vec<std::ffi::OsString> = vec![
            "coordinator".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            data_dir.join("coordinator").into(),
            "--call-timeout-ms".into(),
            CALL_TIMEOUT_MS.to_string().into(),
        ];
        args.extend(participant_args.iter().cloned());
        args
    };
    let start_coordinator =
        || start_server(exe, "coordinator".into(), "coordinator", coordinator_args(), data_dir);
    let coordinator = start_coordinator().await?;

    let measured = async {
        let started = Instant::now();
        let committed = fill(&coordinator.address().to_string(), count).await?;
        let fill_seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "  {committed} transactions committed with their Commits held ({fill_seconds:.1} s)"
        );
        let pid = coordinator.pid().context("the coordinator has no pid")?;
        let coordinator_rss_mib_before_kill = crate::bench::rss_mib(pid).unwrap_or(0.0);
        let coordinator_log_mib = crate::bench::dir_mib(&data_dir.join("coordinator/wal"));
        anyhow::Ok((committed, fill_seconds, coordinator_rss_mib_before_kill, coordinator_log_mib))
    }
    .await;
    let (committed, fill_seconds, rss_before, log_mib) = match measured {
        Ok(figures) => figures,
        Err(error) => {
            if let Some(note) = coordinator.stop().await {
                eprintln!("  {note}");
            }
            let _ = stop.send(true);
            return Err(error);
        }
    };

    coordinator.kill().await?;
    for stand_in in &stand_ins {
        stand_in.holding.store(false, Ordering::Relaxed);
    }
    let restarted_at = Instant::now();
    let coordinator = start_coordinator().await?;
    let serving = restarted_at.elapsed();
    let delivered = async {
        let want = usize::try_from(committed)?;
        while stand_ins.iter().any(|s| s.acknowledged() < want) {
            anyhow::ensure!(
                restarted_at.elapsed() < DELIVERY_LIMIT,
                "after {DELIVERY_LIMIT:?} the stand-ins had acknowledged {} and {} of {want} \
                 Commits",
                stand_ins[0].acknowledged(),
                stand_ins[1].acknowledged()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(restarted_at.elapsed())
    }
    .await;
    let rss_after = coordinator.pid().and_then(crate::bench::rss_mib).unwrap_or(0.0);
    if let Some(note) = coordinator.stop().await {
        eprintln!("  {note}");
    }
    let _ = stop.send(true);
    Ok(UndeliveredReport {
        awaiting_delivery: committed,
        fill_seconds,
        coordinator_log_mib: log_mib,
        coordinator_rss_mib_before_kill: rss_before,
        restart_to_serving_seconds: serving.as_secs_f64(),
        restart_to_delivered_seconds: delivered?.as_secs_f64(),
        coordinator_rss_mib_after: rss_after,
    })
}

/// Submits two-branch transactions, [`FILL_INFLIGHT`] at a time, until `count` were answered
/// COMMITTED, and returns that count. A transaction whose short deadline passed before both
/// votes arrived (a loaded machine) aborts and is replaced, at most `count` times in all; an
/// answer without a definite outcome fails the scenario.
async fn fill(address: &str, count: u64) -> anyhow::Result<u64> {
    let client = Client::connect_with(
        address,
        ClientOptions {
            call_timeout: Duration::from_secs(10),
            submit_margin: Duration::from_secs(5),
        },
    )?;
    // Commits still to obtain, reserved before each submission so none overshoots `count`.
    let remaining = Arc::new(AtomicU64::new(count));
    let aborted = Arc::new(AtomicU64::new(0));
    let committed = Arc::new(AtomicU64::new(0));
    let next_id = Arc::new(AtomicU64::new(0));
    let run = format!("{:x}", concord_chaos::rng::clock_seed());
    let pipelines = [client.pipeline(), client.pipeline()];
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..FILL_INFLIGHT.min(count) {
        let pipeline = pipelines[usize::from(worker % 2 == 1)].clone();
        let (remaining, aborted, committed, next_id, run) = (
            Arc::clone(&remaining),
            Arc::clone(&aborted),
            Arc::clone(&committed),
            Arc::clone(&next_id),
            run.clone(),
        );
        workers.spawn(async move {
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1))
                .is_ok()
            {
                let i = next_id.fetch_add(1, Ordering::Relaxed);
                let mut txn = Transaction::new()
                    .with_txn_id(format!("undelivered-{run}-{i}"))
                    .with_timeout_ms(TXN_TIMEOUT_MS);
                for participant in ["s0", "s1"] {
                    let add = Operation::CounterAdd {
                        key: format!("u-{i}").into_bytes(),
                        delta: 1,
                        lower_bound: None,
                        upper_bound: None,
                    };
                    txn = txn.with_branch(participant, vec![add]);
                }
                let submitted = pipeline
                    .submit(&txn)
                    .await
                    .with_context(|| format!("transaction {i} has no definite outcome"))?;
                match submitted.outcome {
                    Outcome::Committed => {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::Aborted if aborted.fetch_add(1, Ordering::Relaxed) < count => {
                        remaining.fetch_add(1, Ordering::Relaxed);
                    }
                    outcome => anyhow::bail!(
                        "transaction {i} was answered {outcome:?} ({:?}), after {} aborts",
                        submitted.abort,
                        aborted.load(Ordering::Relaxed)
                    ),
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.context("a submitting task failed")??;
    }
    // A worker that saw an abort takes the slot back itself, so every slot ends committed.
    Ok(committed.load(Ordering::Relaxed))
}
