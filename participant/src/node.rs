//! The participant's driver: the protocol engine (`concord_core::participant`) wired to a
//! write-ahead log and a store.
//!
//! - Every engine call happens under one `std::sync::Mutex`, never held across an await; the
//!   engine appends its records through a callback inside that lock, so the log's order is the
//!   decision order.
//! - Replies wait for durability outside the lock; concurrent Prepares therefore share the
//!   log's group commit.
//! - Committed writes are applied by one applier task, not by the request's future: a client
//!   that disconnects mid-Commit must not leave a logged commit unapplied.
//! - [`Node::recover`] replays the log into the engine and the store before anything is served.
//! - [`Node::checkpoint`] bounds the log: snapshot the protocol state into the log, sync the
//!   store, then release the segments below the snapshot.
//!
//! A storage failure (log or store) is fatal: the node stops answering and signals shutdown,
//! and the process recovers from the log when restarted (a failed fsync is never retried).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use concord_core::participant::{
    AbortStep, CommitStep, EngineError, EngineLimits, InDoubt, ParticipantEngine, PrepareInput,
    PrepareReply, PrepareStep, Versioned,
};
use concord_core::record::{ParticipantRecord, Write};
use concord_core::types::{InvalidInput, TxnId};
use concord_wal::{Lsn, Wal, WalError};
use tokio::sync::{mpsc, oneshot, watch};

use crate::store::{Store, StoreError, StoreState};

/// What can go wrong in the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The request is malformed (INVALID_ARGUMENT).
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The request contradicts what this participant knows (FAILED_PRECONDITION).
    #[error("{0}")]
    WrongState(String),
    /// The outcome asked about may have been forgotten (DATA_LOSS).
    #[error("{0}")]
    Forgotten(String),
    /// At a limit; nothing changed (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    Overloaded(String),
    /// Not now (a key is locked, a step still being applied); nothing changed: retry
    /// (ABORTED).
    #[error("{0}")]
    Busy(String),
    /// A saga step cannot be compensated: a key it wrote changed since (FAILED_PRECONDITION).
    #[error("{0}")]
    CannotCompensate(String),
    /// The log or the store failed; the node has stopped (INTERNAL). Restart to recover.
    #[error("storage failed: {0}")]
    Fatal(String),
}

impl From<WalError> for NodeError {
    fn from(error: WalError) -> Self {
        NodeError::Fatal(error.to_string())
    }
}

impl From<StoreError> for NodeError {
    fn from(error: StoreError) -> Self {
        NodeError::Fatal(error.to_string())
    }
}

impl From<EngineError<NodeError>> for NodeError {
    fn from(error: EngineError<NodeError>) -> Self {
        match error {
            EngineError::Invalid(invalid) => NodeError::Invalid(invalid),
            EngineError::WrongState(message) => NodeError::WrongState(message),
            EngineError::Forgotten(message) => NodeError::Forgotten(message),
            EngineError::Overloaded(message) => NodeError::Overloaded(message),
            EngineError::Busy(message) => NodeError::Busy(message),
            EngineError::CannotCompensate(message) => NodeError::CannotCompensate(message),
            // Node::abort waits for the record before it refuses; anywhere else the refusal
            // stands as it is.
            EngineError::Committing { message, .. } => NodeError::WrongState(message),
            EngineError::Storage(error) => error,
        }
    }
}

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This participant's name (in logs and when asking the coordinator).
    pub name: String,
    /// Engine limits.
    pub limits: EngineLimits,
    /// Take a checkpoint once this many records were appended since the last one.
    pub checkpoint_every_records: u64,
    /// The log's record-size limit, which checkpoint records respect.
    pub max_record_bytes: usize,
    /// The wall clock (the system's; simulated time under simulation).
    pub clock: concord_proto::clock::Clock,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "participant".into(),
            limits: EngineLimits::default(),
            checkpoint_every_records: 100_000,
            max_record_bytes: concord_core::limits::MAX_WAL_RECORD_BYTES,
            clock: concord_proto::clock::system,
        }
    }
}

/// Operations staged under an interactive transaction, until its Prepare, Abort or deadline.
/// Not logged: a participant that restarts has nothing staged, and its Prepare votes NO.
#[derive(Debug)]
struct Staged {
    operations: Vec<concord_core::types::Operation>,
    /// Keys plus values so far.
    payload: usize,
    deadline_unix_ms: u64,
    /// Set once a Prepare took the operations: nothing more may be staged.
    sealed: bool,
}

/// A commit to apply once its record is durable.
struct ApplyJob {
    txn: TxnId,
    lsn: u64,
    writes: Vec<Write>,
    done: oneshot::Sender<Result<(), NodeError>>,
}

/// A participant: engine, log and store. Cheap to share behind an `Arc`.
pub struct Node<W: Wal, S: Store> {
    config: NodeConfig,
    engine: Mutex<ParticipantEngine>,
    wal: Arc<W>,
    store: Arc<S>,
    /// Commits waiting to be applied. Unbounded in type, bounded in fact: every job is a
    /// prepared branch, and the engine holds at most `limits.max_prepared` of those.
    applier: mpsc::UnboundedSender<ApplyJob>,
    /// Records appended since the last checkpoint.
    since_checkpoint: AtomicU64,
    /// Serializes checkpoints.
    checkpointing: tokio::sync::Mutex<()>,
    /// Set once storage failed; every later request is refused.
    failed: AtomicBool,
    /// Tells the process to stop after a fatal error.
    fatal: watch::Sender<Option<String>>,
    /// The highest LSN whose commit the applier has applied (jobs are queued, and applied, in
    /// LSN order).
    applied: watch::Sender<u64>,
    /// Interactive transactions' staged operations (at most `limits.max_prepared` of them).
    staged: Mutex<std::collections::HashMap<TxnId, Staged>>,
}

impl<W: Wal, S: Store> Node<W, S> {
    /// Replays `wal` into a new engine and into `store`, then starts the applier. Must run
    /// inside a tokio runtime. Nothing may be served before this returns.
    pub fn recover(config: NodeConfig, wal: W, store: S) -> Result<Arc<Self>, NodeError> {
        let mut engine = ParticipantEngine::new(config.limits);
        let mut replayed = 0u64;
        for record in wal.read_from(Lsn::ZERO)? {
            let record = record?;
            let decoded = ParticipantRecord::decode(&record.payload).map_err(|e| {
                NodeError::Fatal(format!("write-ahead log record at LSN {}: {e}", record.lsn))
            })?;
            for (version, writes) in engine.replay(record.lsn.0, decoded) {
                let unapplied = unapplied_writes(&store, writes, version)?;
                if !unapplied.is_empty() {
                    store.apply(&unapplied, version)?;
                }
            }
            replayed += 1;
        }
        let in_doubt = engine.prepared_count();
        tracing::info!(participant = %config.name, replayed, in_doubt, "recovered from the write-ahead log");

        let (applier, jobs) = mpsc::unbounded_channel();
        let (fatal, _) = watch::channel(None);
        let (applied, _) = watch::channel(0);
        let node = Arc::new(Node {
            applied,
            config,
            engine: Mutex::new(engine),
            wal: Arc::new(wal),
            store: Arc::new(store),
            applier,
            since_checkpoint: AtomicU64::new(replayed),
            checkpointing: tokio::sync::Mutex::new(()),
            failed: AtomicBool::new(false),
            fatal,
            staged: Mutex::new(std::collections::HashMap::new()),
        });
        tokio::spawn(run_applier(Arc::clone(&node), jobs));
        Ok(node)
    }

    /// Wall-clock milliseconds, from the configured clock: the time input to the engine.
    pub fn now_ms(&self) -> u64 {
        (self.config.clock)()
    }

    /// This participant's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Resolves with the reason once storage has failed and the node stopped.
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    /// Phase 1. Replies YES only once the PREPARED record is durable.
    pub async fn prepare(&self, mut input: PrepareInput) -> Result<PrepareReply, NodeError> {
        self.refuse_if_failed()?;
        self.failpoint("participant.before_prepare")?;
        plant_operation_bugs(&mut input.operations);
        let txn = input.txn.clone();
        let (step, applied) = {
            let mut engine = self.engine();
            let step = engine
                .handle_prepare(self.now_ms(), input, &StoreState(&*self.store), &mut |r| {
                    self.append(r)
                })
                .map_err(|e| self.check_fatal(e.into()))?;
            // A one-phase commit is applied by the applier, queued under the lock.
            let applied = match &step {
                PrepareStep::AfterDurable { lsn, apply: Some(writes), .. } => {
                    Some(self.queue_apply(txn.clone(), *lsn, writes.clone()))
                }
                _ => None,
            };
            (step, applied)
        };
        match step {
            PrepareStep::Reply(reply) => Ok(reply),
            PrepareStep::AfterDurable { lsn, reply, .. } => {
                match applied {
                    Some(done) => self.await_apply(done).await?,
                    // A duplicate of a one-phase commit: answer once it is applied, so the
                    // caller reads what it committed.
                    None if reply.outcome == concord_core::types::Outcome::Committed => {
                        self.wait_applied(lsn).await?;
                    }
                    // Planted bug (test builds only): vote before the record is durable.
                    None if concord_failpoints::planted("vote-before-durable") => {}
                    None => self.wait_durable(lsn).await?,
                }
                self.failpoint("participant.after_prepare")?;
                Ok(reply)
            }
        }
    }

    /// Phase 2, commit. Acknowledged only once the commit record is durable.
    pub async fn commit(&self, txn: &TxnId) -> Result<(), NodeError> {
        self.refuse_if_failed()?;
        self.drop_staged(txn);
        if self.engine().outcome(txn) == concord_core::types::Outcome::Pending {
            self.failpoint("participant.before_commit")?;
        }
        let (step, applied) = {
            let mut engine = self.engine();
            let step = engine
                .handle_commit(self.now_ms(), txn, &mut |r| self.append(r))
                .map_err(|e| self.check_fatal(e.into()))?;
            let applied = match &step {
                CommitStep::AfterDurable { lsn, apply: Some(writes) } => {
                    Some(self.queue_apply(txn.clone(), *lsn, writes.clone()))
                }
                _ => None,
            };
            (step, applied)
        };
        match (step, applied) {
            (CommitStep::Acknowledge, _) => return Ok(()),
            // A saga committed: the step's undo is released once that is durable.
            (CommitStep::Durable { lsn }, _) => self.wait_durable(lsn).await?,
            (CommitStep::AfterDurable { .. }, Some(done)) => self.await_apply(done).await?,
            // A duplicate Commit while the first is applied: acknowledge once applied too.
            (CommitStep::AfterDurable { lsn, .. }, None) => self.wait_applied(lsn).await?,
        }
        self.failpoint("participant.after_commit")
    }

    /// A saga step's Execute. Replies YES only once the EXECUTED record is durable and its
    /// writes are applied (the caller reads what it wrote).
    pub async fn execute(&self, input: PrepareInput) -> Result<PrepareReply, NodeError> {
        self.refuse_if_failed()?;
        self.failpoint("participant.before_execute")?;
        let txn = input.txn.clone();
        let (step, applied) = {
            let mut engine = self.engine();
            let step = engine
                .handle_execute(self.now_ms(), input, &StoreState(&*self.store), &mut |r| {
                    self.append(r)
                })
                .map_err(|e| self.check_fatal(e.into()))?;
            let applied = match &step {
                PrepareStep::AfterDurable { lsn, apply: Some(writes), .. } => {
                    Some(self.queue_apply(txn.clone(), *lsn, writes.clone()))
                }
                _ => None,
            };
            (step, applied)
        };
        let reply = match (step, applied) {
            (PrepareStep::Reply(reply), _) => return Ok(reply),
            (PrepareStep::AfterDurable { reply, .. }, Some(done)) => {
                self.await_apply(done).await?;
                reply
            }
            // A duplicate: answer once the first one's writes are applied.
            (PrepareStep::AfterDurable { lsn, reply, .. }, None) => {
                self.wait_applied(lsn).await?;
                reply
            }
        };
        self.failpoint("participant.after_execute")?;
        Ok(reply)
    }

    /// A saga step's Compensate. Acknowledged once the before-images are durable and applied,
    /// or at once when there was nothing to undo (a barrier is then recorded).
    pub async fn compensate(
        &self,
        txn: &TxnId,
        deadline_unix_ms: Option<u64>,
    ) -> Result<(), NodeError> {
        self.refuse_if_failed()?;
        self.failpoint("participant.before_compensate")?;
        let (step, applied) = {
            let mut engine = self.engine();
            let step = engine
                .handle_compensate(
                    self.now_ms(),
                    txn,
                    deadline_unix_ms,
                    &StoreState(&*self.store),
                    &mut |r| self.append(r),
                )
                .map_err(|e| self.check_fatal(e.into()))?;
            let applied = match &step {
                CommitStep::AfterDurable { lsn, apply: Some(writes) } => {
                    Some(self.queue_apply(txn.clone(), *lsn, writes.clone()))
                }
                _ => None,
            };
            (step, applied)
        };
        match (step, applied) {
            (CommitStep::Acknowledge, _) => return Ok(()),
            (CommitStep::Durable { lsn }, _) => self.wait_durable(lsn).await?,
            (CommitStep::AfterDurable { .. }, Some(done)) => self.await_apply(done).await?,
            (CommitStep::AfterDurable { lsn, .. }, None) => self.wait_applied(lsn).await?,
        }
        self.failpoint("participant.after_compensate")
    }

    /// Phase 2, abort. Never waits for its record (presumed abort). `deadline_unix_ms` is the
    /// transaction's Prepare deadline if the sender knows it. Refusing an Abort because the
    /// branch committed waits until that commit is durable: the refusal tells the sender it
    /// committed.
    pub async fn abort(
        &self,
        txn: &TxnId,
        deadline_unix_ms: Option<u64>,
    ) -> Result<AbortStep, NodeError> {
        self.refuse_if_failed()?;
        self.failpoint("participant.before_abort")?;
        let result = self
            .engine()
            .handle_abort(self.now_ms(), txn, deadline_unix_ms, &mut |r| self.append(r));
        self.drop_staged(txn);
        match result {
            Ok(step) => {
                self.failpoint("participant.after_abort")?;
                Ok(step)
            }
            Err(EngineError::Committing { lsn, message }) => {
                self.wait_durable(lsn).await?;
                Err(NodeError::WrongState(message))
            }
            Err(error) => Err(self.check_fatal(error.into())),
        }
    }

    /// Stages `operations` under `txn` (enlisted at the coordinator with this `deadline`);
    /// returns how many are staged. Refused once the transaction is prepared or decided here,
    /// past its deadline, or beyond the limits of one branch.
    pub fn stage(
        &self,
        txn: &TxnId,
        operations: Vec<concord_core::types::Operation>,
        deadline_unix_ms: u64,
    ) -> Result<usize, NodeError> {
        self.refuse_if_failed()?;
        if self.engine().knows(txn) {
            return Err(NodeError::WrongState(format!(
                "transaction {txn} is already prepared or decided here: nothing more can be staged"
            )));
        }
        let now = self.now_ms();
        let payload = concord_core::types::validate_operations(&operations, "operations")?;
        let mut staged = self.staged();
        staged.retain(|_, s| s.deadline_unix_ms >= now);
        if now > deadline_unix_ms {
            return Err(NodeError::WrongState(format!("transaction {txn} is past its deadline")));
        }
        if !staged.contains_key(txn) && staged.len() >= self.config.limits.max_prepared {
            return Err(NodeError::Overloaded(format!(
                "{} transactions have operations staged here, the limit",
                staged.len()
            )));
        }
        let entry = staged.entry(txn.clone()).or_insert(Staged {
            operations: Vec::new(),
            payload: 0,
            deadline_unix_ms,
            sealed: false,
        });
        if entry.sealed {
            return Err(NodeError::WrongState(format!(
                "transaction {txn} is being prepared: nothing more can be staged"
            )));
        }
        let count = entry.operations.len() + operations.len();
        if count > concord_core::limits::MAX_OPERATIONS_PER_BRANCH {
            return Err(InvalidInput::new(
                "operations",
                format!(
                    "would stage {count} operations under {txn}; a branch holds at most {}",
                    concord_core::limits::MAX_OPERATIONS_PER_BRANCH
                ),
            )
            .into());
        }
        if entry.payload + payload > concord_core::limits::MAX_BRANCH_PAYLOAD_BYTES {
            return Err(InvalidInput::new(
                "operations",
                format!(
                    "would stage {} bytes of keys and values under {txn}; a branch holds at most {}",
                    entry.payload + payload,
                    concord_core::limits::MAX_BRANCH_PAYLOAD_BYTES
                ),
            )
            .into());
        }
        entry.payload += payload;
        entry.operations.extend(operations);
        Ok(entry.operations.len())
    }

    /// The deadline of `txn` if something is staged under it here (it is then enlisted).
    pub fn staged_deadline(&self, txn: &TxnId) -> Option<u64> {
        self.staged().get(txn).map(|s| s.deadline_unix_ms)
    }

    /// The operations staged under `txn`, for its Prepare; staging more is refused from now.
    pub fn take_staged(&self, txn: &TxnId) -> Option<Vec<concord_core::types::Operation>> {
        let mut staged = self.staged();
        let entry = staged.get_mut(txn)?;
        entry.sealed = true;
        Some(entry.operations.clone())
    }

    /// Whether this participant holds anything of `txn` (prepared, decided, executed).
    pub fn knows(&self, txn: &TxnId) -> bool {
        self.engine().knows(txn)
    }

    /// Drops what is staged under transactions past their deadline (the coordinator has
    /// aborted them).
    pub fn sweep_staged(&self) {
        let now = self.now_ms();
        self.staged().retain(|_, s| s.deadline_unix_ms >= now);
    }

    fn drop_staged(&self, txn: &TxnId) {
        self.staged().remove(txn);
    }

    fn staged(&self) -> MutexGuard<'_, std::collections::HashMap<TxnId, Staged>> {
        match self.staged.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The committed value of `key`. A key locked by a prepared branch reads as its last
    /// committed value (read committed; see docs/protocol.md, "Isolation").
    pub fn get(&self, key: &[u8]) -> Result<Option<Versioned>, NodeError> {
        self.refuse_if_failed()?;
        self.store.get(key).map_err(|e| self.check_fatal(e.into()))
    }

    /// Committed entries in `[start, end)`, at most `limit`.
    pub fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Versioned)>, NodeError> {
        self.refuse_if_failed()?;
        self.store.scan(start, end, limit).map_err(|e| self.check_fatal(e.into()))
    }

    /// In-doubt branches after `after`, at most `limit`.
    pub fn in_doubt(&self, after: Option<&TxnId>, limit: usize) -> Vec<InDoubt> {
        self.engine().in_doubt(after, limit)
    }

    /// Takes a checkpoint if enough records were appended since the last one.
    pub async fn maybe_checkpoint(&self) -> Result<bool, NodeError> {
        if self.since_checkpoint.load(Ordering::Relaxed) < self.config.checkpoint_every_records {
            return Ok(false);
        }
        self.checkpoint().await.map(|()| true)
    }

    /// Writes the protocol state into the log, makes the store durable, then releases the log
    /// below the checkpoint. Safe at any moment: a crash at any step leaves the previous
    /// checkpoint (and every record after it) in place.
    pub async fn checkpoint(&self) -> Result<(), NodeError> {
        self.refuse_if_failed()?;
        let _serial = self.checkpointing.lock().await;
        // The snapshot and its begin record are taken together under the engine lock; the
        // body (a minute of remembered decisions at full load: hundreds of thousands) is sorted,
        // sized and appended after it is released, so transactions are not stalled meanwhile.
        // Records they append in between replay on top of the snapshot.
        let (begin, snapshot) = {
            let mut engine = self.engine();
            let (record, snapshot) = engine.checkpoint_begin(self.now_ms());
            let begin = self.append(&record).map_err(|e| self.check_fatal(e))?;
            self.since_checkpoint.store(0, Ordering::Relaxed);
            (begin, snapshot)
        };
        let max_record_bytes = self.config.max_record_bytes;
        let records = tokio::task::spawn_blocking(move || snapshot.into_records(max_record_bytes))
            .await
            .map_err(|e| NodeError::Fatal(format!("checkpoint encoding task: {e}")))?;
        let mut end = begin;
        for record in &records {
            end = self.append(record).map_err(|e| self.check_fatal(e))?;
        }
        // Every commit below `begin` is either applied (and this sync makes it durable in the
        // store) or still committing (and carried by the checkpoint).
        self.failpoint("participant.before_checkpoint")?;
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.sync())
            .await
            .map_err(|e| NodeError::Fatal(format!("store sync task: {e}")))?
            .map_err(|e| self.check_fatal(e.into()))?;
        self.wait_durable(end).await?;
        self.wal.truncate_before(Lsn(begin)).map_err(|e| self.check_fatal(e.into()))?;
        self.failpoint("participant.after_checkpoint")?;
        tracing::info!(participant = %self.config.name, checkpoint_lsn = begin, "checkpoint taken");
        Ok(())
    }

    fn engine(&self) -> MutexGuard<'_, ParticipantEngine> {
        // A panic while holding the engine lock is a broken invariant: refuse to go on.
        match self.engine.lock() {
            Ok(guard) => guard,
            Err(_) => {
                tracing::error!("participant engine lock poisoned by a panic; stopping");
                std::process::abort();
            }
        }
    }

    fn append(&self, record: &ParticipantRecord) -> Result<u64, NodeError> {
        let lsn = self.wal.append(&record.encode())?;
        self.since_checkpoint.fetch_add(1, Ordering::Relaxed);
        Ok(lsn.0)
    }

    fn queue_apply(
        &self,
        txn: TxnId,
        lsn: u64,
        writes: Vec<Write>,
    ) -> oneshot::Receiver<Result<(), NodeError>> {
        let (done, receiver) = oneshot::channel();
        // The applier only stops when the node is dropped; if it has, the receiver reports it.
        let _ = self.applier.send(ApplyJob { txn, lsn, writes, done });
        receiver
    }

    async fn await_apply(
        &self,
        done: oneshot::Receiver<Result<(), NodeError>>,
    ) -> Result<(), NodeError> {
        match done.await {
            Ok(result) => result,
            Err(_) => Err(NodeError::Fatal("the applier stopped".into())),
        }
    }

    /// Waits until the commit at `lsn` is applied to the store (or the node failed).
    async fn wait_applied(&self, lsn: u64) -> Result<(), NodeError> {
        let mut applied = self.applied.subscribe();
        let mut fatal = self.fatal.subscribe();
        tokio::select! {
            result = applied.wait_for(|applied| *applied >= lsn) => {
                result.map(|_| ()).map_err(|_| NodeError::Fatal("the applier stopped".into()))
            }
            _ = fatal.wait_for(Option::is_some) => {
                Err(NodeError::Fatal("storage failed before the commit was applied".into()))
            }
        }
    }

    async fn wait_durable(&self, lsn: u64) -> Result<(), NodeError> {
        self.wal.wait_durable(Lsn(lsn)).await.map_err(|e| self.check_fatal(e.into()))
    }

    fn refuse_if_failed(&self) -> Result<(), NodeError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(NodeError::Fatal(
                "this participant stopped after a storage failure".into(),
            ));
        }
        Ok(())
    }

    /// A failpoint (test builds only); an injected error is a storage failure.
    fn failpoint(&self, point: &'static str) -> Result<(), NodeError> {
        concord_failpoints::hit(point)
            .map_err(|injected| self.check_fatal(NodeError::Fatal(injected.to_string())))
    }

    /// Marks the node failed if `error` is fatal, and passes the error on.
    fn check_fatal(&self, error: NodeError) -> NodeError {
        if let NodeError::Fatal(reason) = &error
            && !self.failed.swap(true, Ordering::AcqRel)
        {
            tracing::error!(participant = %self.config.name, %reason, "storage failed; stopping");
            self.fatal.send_replace(Some(reason.clone()));
        }
        error
    }
}

/// Applies committed writes once their record is durable, then releases the branch's locks.
/// Every commit taken in one batch goes to the store in one [`Store::apply_all`].
async fn run_applier<W: Wal, S: Store>(
    node: Arc<Node<W, S>>,
    mut jobs: mpsc::UnboundedReceiver<ApplyJob>,
) {
    let mut batch = Vec::new();
    // `recv_many` takes whatever is queued, so one durability wait covers the whole batch.
    while jobs.recv_many(&mut batch, 1024).await > 0 {
        let Some(highest) = batch.iter().map(|job| job.lsn).max() else { continue };
        let applied = node.wait_durable(highest).await.and_then(|()| {
            let commits: Vec<(&[Write], u64)> =
                batch.iter().map(|job| (planted_writes(&job.writes), job.lsn)).collect();
            node.failpoint("participant.before_apply")
                .and_then(|()| node.store.apply_all(&commits).map_err(Into::into))
                .and_then(|()| node.failpoint("participant.after_apply"))
                .map_err(|error| node.check_fatal(error))
        });
        if applied.is_ok() {
            {
                let mut engine = node.engine();
                for job in &batch {
                    engine.commit_applied(&job.txn);
                }
            }
            node.applied.send_if_modified(|applied| {
                let advanced = highest > *applied;
                *applied = (*applied).max(highest);
                advanced
            });
        }
        for job in batch.drain(..) {
            let result = match &applied {
                Ok(()) => Ok(()),
                Err(error) => Err(NodeError::Fatal(error.to_string())),
            };
            let _ = job.done.send(result);
        }
    }
}

/// The writes of the commit at `version` that the store does not hold yet: a key whose stored
/// version is this commit's or a later one's already has it (or what overwrote it; versions
/// are this log's LSNs, so they only grow). Replay re-applies only those, so recovery over a
/// log whose commits the store already holds reads instead of writing (and leaves the store
/// nothing new to flush).
fn unapplied_writes<S: Store>(
    store: &S,
    writes: Vec<Write>,
    version: u64,
) -> Result<Vec<Write>, NodeError> {
    let mut unapplied = Vec::with_capacity(writes.len());
    for write in writes {
        let held = store.get(&write.key)?.is_some_and(|stored| stored.version >= version);
        if !held {
            unapplied.push(write);
        }
    }
    Ok(unapplied)
}

/// Planted bugs (test builds only, `CONCORD_PLANTED_BUGS`) that alter a branch's operations,
/// so the chaos harness can prove it notices: `ignore-bounds` drops counter bounds,
/// `double-apply` applies every counter add twice.
fn plant_operation_bugs(operations: &mut Vec<concord_core::types::Operation>) {
    use concord_core::types::Operation;
    if concord_failpoints::planted("ignore-bounds") {
        for operation in operations.iter_mut() {
            if let Operation::CounterAdd { lower_bound, upper_bound, .. } = operation {
                *lower_bound = None;
                *upper_bound = None;
            }
        }
    }
    if concord_failpoints::planted("double-apply") {
        let doubled: Vec<Operation> = operations
            .iter()
            .filter(|operation| matches!(operation, Operation::CounterAdd { .. }))
            .cloned()
            .collect();
        operations.extend(doubled);
    }
}

/// The writes to apply: all of them, unless the planted bug `drop-last-write` is on (test
/// builds only).
fn planted_writes(writes: &[Write]) -> &[Write] {
    if concord_failpoints::planted("drop-last-write") && writes.len() > 1 {
        return &writes[..writes.len() - 1];
    }
    writes
}
