//! The participant SDK: implement [`Resource`] for a service's own side effects (charge a card,
//! send an email) and [`serve_resource`] speaks Concord's participant API for it, so the
//! coordinator can run it as a saga step (Execute, then Commit or Compensate) and, if the
//! resource can also prepare, as a two-phase branch.
//!
//! What the SDK handles, so the resource does not have to:
//!
//! - **Exactly once.** A duplicate Execute or Compensate gets the first answer without calling
//!   the resource again; two arriving together call it once.
//! - **Barriers.** A Compensate that arrives before its Execute (or for an Execute that never
//!   arrived) is a no-op that records a barrier: the late Execute is refused, never run.
//! - **Durability and recovery.** Every step is logged to a write-ahead log before the answer
//!   (`Execute begun` before the resource is called, `done` after), so after a crash the SDK
//!   knows what may have happened: an Execute begun and not finished is compensated if the
//!   saga aborts, or run again (with the same transaction id) if the coordinator retries it.
//! - **Bounds.** At most `max_tracked` transactions are tracked at once (an Execute beyond is
//!   refused, NO overloaded); finished ones are forgotten after the retention; the log is
//!   checkpointed and truncated.
//!
//! The contract for the resource: `execute` and `compensate` are idempotent per transaction
//! id (a payment gateway's idempotency key); `compensate` may be called for an `execute` that
//! was interrupted by a crash, and must undo it if it took effect and do nothing otherwise.
//! `prepare`/`commit`/`abort` are optional: a resource that leaves `can_prepare` false answers
//! Prepare with UNIMPLEMENTED, which tells the coordinator (in AUTO mode) to run it as a saga
//! step. A prepared branch is released by the coordinator's Commit (redelivered until
//! acknowledged) or Abort; unlike the sled participant, the SDK does not yet ask the
//! coordinator about branches left in doubt (`ResolveTransaction`), so after a lost Abort a
//! prepared branch stays held, listed by `ListInDoubt`, until it is sent an Abort again (by an
//! operator: the coordinator sends one Abort, presumed abort needing no more).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use concord_core::limits;
use concord_core::record::{decode, encode};
use concord_core::types::{NoReason, Operation, TxnId};
use concord_proto::v1::participant_server::{Participant, ParticipantServer};
use concord_proto::{convert, v1};
use concord_wal::{Lsn, Wal};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Why the resource could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceError {
    /// A definite refusal: nothing was done (a card declined). Execute answers NO with this
    /// reason; the saga compensates the steps before it.
    Refused {
        /// The reason, as a participant would vote it.
        reason: NoReason,
        /// Detail for the operator and the client.
        message: String,
    },
    /// Not now (the gateway is down): the outcome is unknown. Execute fails the call (the
    /// saga aborts and compensates this step too); Compensate fails and is retried.
    Unavailable(String),
}

/// A service's side effects, as the SDK drives them. See the module documentation for the
/// contract.
#[tonic::async_trait]
pub trait Resource: Send + Sync + 'static {
    /// Do the step. Idempotent per `txn`.
    async fn execute(&self, txn: &TxnId, operations: &[Operation]) -> Result<(), ResourceError>;

    /// Undo the step, if it took effect. Idempotent per `txn`.
    async fn compensate(&self, txn: &TxnId, operations: &[Operation]) -> Result<(), ResourceError>;

    /// Whether this resource answers `Get` (with [`Resource::get`]). Default: no (Get is
    /// UNIMPLEMENTED).
    fn reads(&self) -> bool {
        false
    }

    /// The current value of `key` (for a resource that `reads`), with no version.
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ResourceError> {
        let _ = key;
        Ok(None)
    }

    /// Whether this resource can prepare (two-phase commit). Default: no.
    fn can_prepare(&self) -> bool {
        false
    }

    /// Make the step ready to commit, holding what it needs (only if `can_prepare`).
    async fn prepare(&self, txn: &TxnId, operations: &[Operation]) -> Result<(), ResourceError> {
        let _ = (txn, operations);
        Err(ResourceError::Unavailable("this resource cannot prepare".into()))
    }

    /// Make a prepared step permanent. Idempotent.
    async fn commit(&self, txn: &TxnId) -> Result<(), ResourceError> {
        let _ = txn;
        Ok(())
    }

    /// Release a prepared step. Idempotent.
    async fn abort(&self, txn: &TxnId) -> Result<(), ResourceError> {
        let _ = txn;
        Ok(())
    }
}

/// How the SDK runs.
#[derive(Clone, Debug)]
pub struct SdkConfig {
    /// The participant's name (in logs).
    pub name: String,
    /// Transactions tracked at once.
    pub max_tracked: usize,
    /// How long a finished transaction is remembered past its deadline (duplicates and late
    /// messages within it get the same answer).
    pub retention: Duration,
    /// Write a checkpoint (and release the log below it) after this many records.
    pub checkpoint_every_records: u64,
    /// The wall clock.
    pub clock: concord_proto::clock::Clock,
}

impl Default for SdkConfig {
    fn default() -> Self {
        SdkConfig {
            name: "resource".into(),
            max_tracked: limits::MAX_EXECUTED_STEPS,
            retention: Duration::from_millis(limits::DECISION_RETENTION_MS),
            checkpoint_every_records: 10_000,
            clock: concord_proto::clock::system,
        }
    }
}

/// Where one transaction stands at this participant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum State {
    /// Execute begun: the resource may or may not have done it.
    Executing,
    /// Executed.
    Executed,
    /// The resource refused the Execute: nothing done.
    Refused { reason: NoReason, message: String },
    /// Compensated, or a barrier: a late Execute is refused.
    Compensated,
    /// The saga committed (or the prepared branch committed).
    Committed,
    /// Prepared (two-phase).
    Prepared,
    /// Aborted (two-phase), or an Abort before the Prepare.
    Aborted,
}

/// One tracked transaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Tracked {
    state: State,
    operations: Vec<Operation>,
    deadline_unix_ms: u64,
}

/// The SDK's log records.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum SdkRecord {
    /// A transaction's state changed.
    Set { txn: TxnId, tracked: Tracked },
    /// A checkpoint: every tracked transaction; replaces everything before it.
    Checkpoint(Vec<(TxnId, Tracked)>),
}

/// The SDK's state: the tracked transactions and the calls in progress.
struct Inner<R: Resource, W: Wal> {
    config: SdkConfig,
    resource: Arc<R>,
    wal: W,
    tracked: Mutex<BTreeMap<TxnId, Tracked>>,
    /// Transactions a call is working on (calls for one transaction run one at a time).
    in_flight: Mutex<BTreeSet<TxnId>>,
    /// Woken whenever a call finishes (calls waiting for the same transaction).
    progress: Notify,
    records_since_checkpoint: std::sync::atomic::AtomicU64,
}

/// Serves `resource` over the participant API on `incoming` until `shutdown`, with its
/// write-ahead log `wal` (recovered first). Never binds a socket.
pub async fn serve_resource<R: Resource, W: Wal, IO: concord_proto::net::Connection>(
    incoming: impl Stream<Item = std::io::Result<IO>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
    resource: Arc<R>,
    wal: W,
    config: SdkConfig,
) -> Result<(), crate::ServeError> {
    let service = ResourceService::recover(resource, wal, config)
        .map_err(|e| crate::ServeError::Fatal(e.message().to_string()))?;
    let server = ParticipantServer::new(service)
        .max_decoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES);
    let (_fatal, never) = tokio::sync::watch::channel(None);
    match concord_proto::net::serve(server, incoming, shutdown, never).await? {
        Some(reason) => Err(crate::ServeError::Fatal(reason)),
        None => Ok(()),
    }
}

/// The participant API over a [`Resource`].
pub struct ResourceService<R: Resource, W: Wal> {
    inner: Arc<Inner<R, W>>,
}

impl<R: Resource, W: Wal> ResourceService<R, W> {
    /// Replays `wal` and serves `resource`.
    pub fn recover(resource: Arc<R>, wal: W, config: SdkConfig) -> Result<Self, Status> {
        let mut tracked = BTreeMap::new();
        let mut records = 0u64;
        let iter = wal.read_from(Lsn::ZERO).map_err(|e| Status::internal(e.to_string()))?;
        for record in iter {
            let record = record.map_err(|e| Status::internal(e.to_string()))?;
            let decoded: SdkRecord = decode(&record.payload).map_err(|e| {
                Status::internal(format!("SDK log record at LSN {}: {e}", record.lsn))
            })?;
            match decoded {
                SdkRecord::Set { txn, tracked: t } => {
                    tracked.insert(txn, t);
                }
                SdkRecord::Checkpoint(all) => tracked = all.into_iter().collect(),
            }
            records += 1;
        }
        let in_progress = tracked.values().filter(|t| t.state == State::Executing).count();
        tracing::info!(participant = %config.name, records, tracked = tracked.len(), in_progress, "SDK participant recovered");
        Ok(ResourceService {
            inner: Arc::new(Inner {
                config,
                resource,
                wal,
                tracked: Mutex::new(tracked),
                in_flight: Mutex::new(BTreeSet::new()),
                progress: Notify::new(),
                records_since_checkpoint: std::sync::atomic::AtomicU64::new(records),
            }),
        })
    }
}

impl<R: Resource, W: Wal> Inner<R, W> {
    fn now_ms(&self) -> u64 {
        (self.config.clock)()
    }

    fn tracked(&self) -> MutexGuard<'_, BTreeMap<TxnId, Tracked>> {
        match self.tracked.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Records `tracked` for `txn`, durably, and then in memory.
    async fn set(&self, txn: &TxnId, tracked: Tracked) -> Result<(), Status> {
        let record = SdkRecord::Set { txn: txn.clone(), tracked: tracked.clone() };
        self.wal.append_durable(&encode(&record)).await.map_err(|e| {
            tracing::error!(participant = %self.config.name, error = %e, "SDK log failed");
            Status::internal(format!("the participant's log failed: {e}"))
        })?;
        self.tracked().insert(txn.clone(), tracked);
        self.progress.notify_waiters();
        let appended =
            self.records_since_checkpoint.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if appended + 1 >= self.config.checkpoint_every_records {
            self.checkpoint().await?;
        }
        Ok(())
    }

    /// Forgets finished transactions past their retention, logs every tracked one and
    /// releases the log below.
    async fn checkpoint(&self) -> Result<(), Status> {
        self.records_since_checkpoint.store(0, std::sync::atomic::Ordering::Relaxed);
        let retention = u64::try_from(self.config.retention.as_millis()).unwrap_or(u64::MAX);
        let now = self.now_ms();
        let (lsn, count) = {
            let mut tracked = self.tracked();
            tracked.retain(|_, t| {
                let finished = matches!(
                    t.state,
                    State::Compensated | State::Committed | State::Aborted | State::Refused { .. }
                );
                !finished || t.deadline_unix_ms.saturating_add(retention) >= now
            });
            let all: Vec<(TxnId, Tracked)> =
                tracked.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let count = all.len();
            // Appended under the lock: no Set can slip in between the snapshot and its record.
            let lsn = self
                .wal
                .append(&encode(&SdkRecord::Checkpoint(all)))
                .map_err(|e| Status::internal(format!("the participant's log failed: {e}")))?;
            (lsn, count)
        };
        self.wal
            .wait_durable(lsn)
            .await
            .map_err(|e| Status::internal(format!("the participant's log failed: {e}")))?;
        self.wal
            .truncate_before(lsn)
            .map_err(|e| Status::internal(format!("the participant's log failed: {e}")))?;
        tracing::info!(participant = %self.config.name, tracked = count, "SDK checkpoint taken");
        Ok(())
    }

    fn state(&self, txn: &TxnId) -> Option<Tracked> {
        self.tracked().get(txn).cloned()
    }

    /// Waits until no other call is working on `txn`, then claims it: calls for one
    /// transaction run one at a time, so each sees the state the previous one left.
    async fn acquire(&self, txn: &TxnId) {
        loop {
            // Created before the check, so a release in between still wakes it.
            let released = self.progress.notified();
            if self.in_flight().insert(txn.clone()) {
                return;
            }
            released.await;
        }
    }

    fn release(&self, txn: &TxnId) {
        self.in_flight().remove(txn);
        self.progress.notify_waiters();
    }

    fn in_flight(&self) -> MutexGuard<'_, BTreeSet<TxnId>> {
        match self.in_flight.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    async fn execute(
        &self,
        txn: TxnId,
        operations: Vec<Operation>,
        deadline_unix_ms: u64,
    ) -> Result<v1::Vote, Status> {
        self.acquire(&txn).await;
        let result = self.execute_claimed(&txn, operations, deadline_unix_ms).await;
        self.release(&txn);
        result
    }

    async fn execute_claimed(
        &self,
        txn: &TxnId,
        operations: Vec<Operation>,
        deadline_unix_ms: u64,
    ) -> Result<v1::Vote, Status> {
        let yes = v1::Vote { kind: v1::VoteKind::Yes.into(), ..v1::Vote::default() };
        match self.state(txn).map(|t| t.state) {
            Some(State::Executed | State::Committed) => return Ok(yes),
            Some(State::Refused { reason, message }) => return Ok(no(reason, &message)),
            Some(State::Compensated | State::Aborted) => {
                return Ok(no(
                    NoReason::AlreadyAborted,
                    "this saga step was already compensated here (or its Compensate came first)",
                ));
            }
            Some(State::Prepared) => {
                return Err(Status::failed_precondition(format!(
                    "Execute of transaction {txn}, which is prepared here (two-phase)"
                )));
            }
            // Begun before a crash (or an earlier call found the resource unavailable): run
            // it again; the resource is idempotent per transaction.
            Some(State::Executing) => {}
            None => {
                if self.now_ms() > deadline_unix_ms {
                    return Ok(no(NoReason::Expired, "the Execute's deadline has passed"));
                }
                let tracked = self.tracked().len();
                if tracked >= self.config.max_tracked {
                    return Ok(no(
                        NoReason::Overloaded,
                        &format!("{tracked} transactions are tracked here, the limit"),
                    ));
                }
            }
        }
        let begun = Tracked { state: State::Executing, operations, deadline_unix_ms };
        self.set(txn, begun.clone()).await?;
        let state = match self.resource.execute(txn, &begun.operations).await {
            Ok(()) => State::Executed,
            Err(ResourceError::Refused { reason, message }) => State::Refused { reason, message },
            // Unknown: it stays begun (a Compensate undoes it, a retry runs it again).
            Err(ResourceError::Unavailable(message)) => {
                return Err(Status::unavailable(format!("the resource is unavailable: {message}")));
            }
        };
        self.set(txn, Tracked { state: state.clone(), ..begun }).await?;
        Ok(match state {
            State::Refused { reason, message } => no(reason, &message),
            _ => yes,
        })
    }

    async fn compensate(&self, txn: TxnId, deadline_unix_ms: u64) -> Result<(), Status> {
        self.acquire(&txn).await;
        let result = self.compensate_claimed(&txn, deadline_unix_ms).await;
        self.release(&txn);
        result
    }

    async fn compensate_claimed(&self, txn: &TxnId, deadline_unix_ms: u64) -> Result<(), Status> {
        let Some(tracked) = self.state(txn) else {
            // Before (or without) its Execute: a barrier that refuses the late Execute.
            let barrier = Tracked {
                state: State::Compensated,
                operations: Vec::new(),
                deadline_unix_ms: self.barrier_deadline(deadline_unix_ms),
            };
            return self.set(txn, barrier).await;
        };
        match tracked.state {
            State::Compensated | State::Refused { .. } => Ok(()),
            State::Committed => Err(Status::failed_precondition(format!(
                "Compensate of transaction {txn}, which committed here"
            ))),
            State::Prepared | State::Aborted => Err(Status::failed_precondition(format!(
                "Compensate of transaction {txn}, a two-phase branch here: send Abort"
            ))),
            State::Executing | State::Executed => {
                self.resource.compensate(txn, &tracked.operations).await.map_err(|e| match e {
                    ResourceError::Refused { message, .. } => Status::failed_precondition(format!(
                        "the resource cannot undo {txn}: {message}"
                    )),
                    ResourceError::Unavailable(message) => {
                        Status::unavailable(format!("the resource is unavailable: {message}"))
                    }
                })?;
                self.set(txn, Tracked { state: State::Compensated, ..tracked }).await
            }
        }
    }

    /// How long a barrier must last: past the deadline given, or the furthest any message
    /// sent before it could carry.
    fn barrier_deadline(&self, deadline_unix_ms: u64) -> u64 {
        if deadline_unix_ms == 0 {
            self.now_ms().saturating_add(limits::MAX_TXN_TIMEOUT_MS)
        } else {
            deadline_unix_ms
        }
    }

    async fn commit(&self, txn: TxnId) -> Result<(), Status> {
        self.acquire(&txn).await;
        let result = async {
            // Unknown: committed and forgotten (only a committed transaction is sent Commit).
            let Some(tracked) = self.state(&txn) else { return Ok(()) };
            match tracked.state {
                State::Committed => Ok(()),
                State::Executed => {
                    self.set(&txn, Tracked { state: State::Committed, ..tracked }).await
                }
                State::Prepared => {
                    self.resource.commit(&txn).await.map_err(unavailable)?;
                    self.set(&txn, Tracked { state: State::Committed, ..tracked }).await
                }
                other => Err(Status::failed_precondition(format!(
                    "Commit of transaction {txn}, which is {other:?} here"
                ))),
            }
        }
        .await;
        self.release(&txn);
        result
    }

    async fn prepare(&self, request: v1::PrepareRequest) -> Result<v1::PrepareResponse, Status> {
        if !self.resource.can_prepare() {
            return Err(Status::unimplemented(format!(
                "participant {} can only execute and compensate (a saga step)",
                self.config.name
            )));
        }
        let txn = txn_id(&request.txn_id)?;
        let operations = convert::operations(request.operations, "operations")
            .map_err(|e| convert::invalid(&e))?;
        if request.one_phase {
            return Err(Status::invalid_argument(
                "one_phase: this participant commits in two phases only",
            ));
        }
        self.acquire(&txn).await;
        let result = async {
            let response = |vote: v1::Vote, outcome: v1::Outcome| v1::PrepareResponse {
                vote: Some(vote),
                outcome: outcome.into(),
            };
            let yes = v1::Vote { kind: v1::VoteKind::Yes.into(), ..v1::Vote::default() };
            match self.state(&txn).map(|t| t.state) {
                Some(State::Prepared) => return Ok(response(yes, v1::Outcome::Pending)),
                Some(State::Committed) => return Ok(response(yes, v1::Outcome::Committed)),
                Some(_) => {
                    let vote = no(NoReason::AlreadyAborted, "already aborted here");
                    return Ok(response(vote, v1::Outcome::Aborted));
                }
                None if self.now_ms() > request.deadline_unix_ms => {
                    let vote = no(NoReason::Expired, "the Prepare's deadline has passed");
                    return Ok(response(vote, v1::Outcome::Aborted));
                }
                None => {}
            }
            match self.resource.prepare(&txn, &operations).await {
                Ok(()) => {
                    let tracked = Tracked {
                        state: State::Prepared,
                        operations,
                        deadline_unix_ms: request.deadline_unix_ms,
                    };
                    self.set(&txn, tracked).await?;
                    Ok(response(yes, v1::Outcome::Pending))
                }
                Err(ResourceError::Refused { reason, message }) => {
                    let refused = Tracked {
                        state: State::Aborted,
                        operations: Vec::new(),
                        deadline_unix_ms: request.deadline_unix_ms,
                    };
                    self.set(&txn, refused).await?;
                    Ok(response(no(reason, &message), v1::Outcome::Aborted))
                }
                Err(ResourceError::Unavailable(message)) => Err(Status::unavailable(message)),
            }
        }
        .await;
        self.release(&txn);
        result
    }

    async fn abort(&self, txn: TxnId, deadline_unix_ms: u64) -> Result<(), Status> {
        self.acquire(&txn).await;
        let result = async {
            let Some(tracked) = self.state(&txn) else {
                let barrier = Tracked {
                    state: State::Aborted,
                    operations: Vec::new(),
                    deadline_unix_ms: self.barrier_deadline(deadline_unix_ms),
                };
                return self.set(&txn, barrier).await;
            };
            match tracked.state {
                State::Aborted => Ok(()),
                State::Prepared => {
                    self.resource.abort(&txn).await.map_err(unavailable)?;
                    self.set(&txn, Tracked { state: State::Aborted, ..tracked }).await
                }
                State::Committed => Err(Status::failed_precondition(format!(
                    "Abort of transaction {txn}, which committed here"
                ))),
                _ => Err(Status::failed_precondition(format!(
                    "Abort of transaction {txn}, a saga step here: send Compensate"
                ))),
            }
        }
        .await;
        self.release(&txn);
        result
    }
}

fn unavailable(error: ResourceError) -> Status {
    match error {
        ResourceError::Refused { message, .. } | ResourceError::Unavailable(message) => {
            Status::unavailable(message)
        }
    }
}

/// Runs a call on its own task: a caller that gives up (a timeout, a dropped connection) must
/// not cancel it half-way, between the resource and the log, or leave its transaction claimed
/// so that every later call for it waits forever.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(work)
        .await
        .map_err(|e| Status::internal(format!("the call's task failed: {e}")))?
}

fn no(reason: NoReason, message: &str) -> v1::Vote {
    convert::vote_to_wire(&concord_core::types::Vote::no(reason, message))
}

fn txn_id(id: &str) -> Result<TxnId, Status> {
    TxnId::parse(id, "txn_id").map_err(|e| convert::invalid(&e))
}

#[tonic::async_trait]
impl<R: Resource, W: Wal> Participant for ResourceService<R, W> {
    async fn prepare(
        &self,
        request: Request<v1::PrepareRequest>,
    ) -> Result<Response<v1::PrepareResponse>, Status> {
        let inner = Arc::clone(&self.inner);
        detached(async move { inner.prepare(request.into_inner()).await }).await.map(Response::new)
    }

    async fn commit(
        &self,
        request: Request<v1::CommitRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        let txn = txn_id(&request.into_inner().txn_id)?;
        let inner = Arc::clone(&self.inner);
        detached(async move { inner.commit(txn).await }).await?;
        Ok(Response::new(v1::CommitResponse {}))
    }

    async fn abort(
        &self,
        request: Request<v1::AbortRequest>,
    ) -> Result<Response<v1::AbortResponse>, Status> {
        let request = request.into_inner();
        let txn = txn_id(&request.txn_id)?;
        let inner = Arc::clone(&self.inner);
        detached(async move { inner.abort(txn, request.deadline_unix_ms).await }).await?;
        Ok(Response::new(v1::AbortResponse {}))
    }

    async fn execute(
        &self,
        request: Request<v1::ExecuteRequest>,
    ) -> Result<Response<v1::ExecuteResponse>, Status> {
        let request = request.into_inner();
        let txn = txn_id(&request.txn_id)?;
        let operations = convert::operations(request.operations, "operations")
            .map_err(|e| convert::invalid(&e))?;
        concord_core::types::validate_operations(&operations, "operations")
            .map_err(|e| convert::invalid(&e))?;
        if request.deadline_unix_ms == 0 {
            return Err(Status::invalid_argument("deadline_unix_ms: is required"));
        }
        let inner = Arc::clone(&self.inner);
        let deadline = request.deadline_unix_ms;
        let vote = detached(async move { inner.execute(txn, operations, deadline).await }).await?;
        Ok(Response::new(v1::ExecuteResponse { vote: Some(vote) }))
    }

    async fn compensate(
        &self,
        request: Request<v1::CompensateRequest>,
    ) -> Result<Response<v1::CompensateResponse>, Status> {
        let request = request.into_inner();
        let txn = txn_id(&request.txn_id)?;
        let inner = Arc::clone(&self.inner);
        detached(async move { inner.compensate(txn, request.deadline_unix_ms).await }).await?;
        Ok(Response::new(v1::CompensateResponse {}))
    }

    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        if !self.inner.resource.reads() {
            return Err(Status::unimplemented("this SDK participant keeps no key-value data"));
        }
        let key = request.into_inner().key;
        let value = self.inner.resource.get(&key).await.map_err(unavailable)?;
        let entry = value.map(|value| v1::KeyValue { key, value, version: 0 });
        Ok(Response::new(v1::GetResponse { entry }))
    }

    async fn scan(
        &self,
        _: Request<v1::ScanRequest>,
    ) -> Result<Response<v1::ScanResponse>, Status> {
        Err(Status::unimplemented("an SDK participant keeps no key-value data"))
    }

    async fn list_in_doubt(
        &self,
        request: Request<v1::ListInDoubtRequest>,
    ) -> Result<Response<v1::ListInDoubtResponse>, Status> {
        let request = request.into_inner();
        let limit = limits::page_size(request.page_size);
        let after =
            if request.page_token.is_empty() { None } else { Some(txn_id(&request.page_token)?) };
        let tracked = self.inner.tracked();
        let branches: Vec<v1::InDoubtBranch> = tracked
            .iter()
            .filter(|(txn, t)| {
                t.state == State::Prepared && after.as_ref().is_none_or(|a| *txn > a)
            })
            .take(limit)
            .map(|(txn, _)| v1::InDoubtBranch { txn_id: txn.to_string(), ..Default::default() })
            .collect();
        let next_page_token = if branches.len() == limit {
            branches.last().map(|b| b.txn_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(v1::ListInDoubtResponse { branches, next_page_token }))
    }

    async fn stage(
        &self,
        _: Request<v1::StageRequest>,
    ) -> Result<Response<v1::StageResponse>, Status> {
        Err(Status::unimplemented(
            "an SDK participant stages nothing (no interactive transactions)",
        ))
    }

    async fn prepare_batch(
        &self,
        _: Request<v1::PrepareBatchRequest>,
    ) -> Result<Response<v1::PrepareBatchResponse>, Status> {
        Err(Status::unimplemented("an SDK participant takes one Prepare per call"))
    }

    async fn commit_batch(
        &self,
        _: Request<v1::CommitBatchRequest>,
    ) -> Result<Response<v1::CommitBatchResponse>, Status> {
        Err(Status::unimplemented("an SDK participant takes one Commit per call"))
    }
}
