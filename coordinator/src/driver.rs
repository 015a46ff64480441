//! The coordinator's driver: runs each transaction's [`TxnMachine`] by carrying out its
//! outputs (Prepare calls in parallel, the forced decision, Commit delivery with bounded
//! exponential backoff and no give-up, Aborts), keeps the transaction table that answers
//! Submit, GetTransaction, ListTransactions and ResolveTransaction, and recovers from the
//! decision log.
//!
//! Every transaction runs in its own task, so a client that disconnects cannot stop a decision
//! half-way. The table lock is a `std::sync::Mutex`, never held across an await.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use concord_core::coordinator::{
    AbortCause, BranchKind, BranchStatus, CoordinatorRecord, Input, Output, Phase, Plan,
    PrepareResult, TxnMachine, TxnMode,
};
use concord_core::types::{Epoch, Outcome, TxnId};
use concord_proto::v1::participant_client::ParticipantClient;
use concord_proto::{convert, v1};
use concord_wal::{Lsn, Wal};
use tokio::sync::{Semaphore, oneshot, watch};
use tonic::transport::Channel;

use crate::link::Link;

/// How far a client's clock may run ahead of the coordinator's when it says when it first
/// submitted a transaction; comparisons against the forgotten horizon allow this much.
pub const CLOCK_SKEW_MARGIN_MS: u64 = 1_000;

/// How the coordinator runs.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Participant name → address (host:port).
    pub participants: BTreeMap<String, String>,
    /// Timeout of each call to a participant.
    pub call_timeout: Duration,
    /// Transactions undecided at once; Submit beyond gets RESOURCE_EXHAUSTED.
    pub max_inflight: usize,
    /// Background work outliving its transaction's slot, at most: committed transactions whose
    /// Commit is still being delivered, and one-phase transactions whose participant has not
    /// answered the outcome probe. Submit beyond gets RESOURCE_EXHAUSTED, so a participant that
    /// stays down cannot grow memory or tasks without bound.
    pub max_undelivered: usize,
    /// Finished transactions remembered for GetTransaction and idempotent Submit.
    pub max_retained: usize,
    /// First Commit retry delay.
    pub min_backoff: Duration,
    /// Commit and Compensate retry delays never grow past this.
    pub max_backoff: Duration,
    /// A saga step whose Compensate failed this many times puts its transaction in
    /// NEEDS_ATTENTION (it keeps being retried, every `attention_retry`).
    pub attention_after_attempts: u32,
    /// How often a compensation needing attention is retried.
    pub attention_retry: Duration,
    /// Take a checkpoint after this many log records.
    pub checkpoint_every_records: u64,
    /// Send Prepares and Commits many per message (PrepareBatch, CommitBatch); off: one call
    /// each.
    pub batch_calls: bool,
    /// How channels to participants are opened (TCP; simulated under simulation).
    pub dialer: concord_proto::net::Dialer,
    /// The wall clock (the system's; simulated time under simulation).
    pub clock: concord_proto::clock::Clock,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            participants: BTreeMap::new(),
            call_timeout: Duration::from_secs(2),
            max_inflight: 4096,
            max_undelivered: 100_000,
            max_retained: 100_000,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            attention_after_attempts: 10,
            attention_retry: Duration::from_secs(30),
            checkpoint_every_records: 200_000,
            batch_calls: true,
            dialer: concord_proto::net::Dialer::default(),
            clock: concord_proto::clock::system,
        }
    }
}

/// Errors of the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// At a limit (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    Overloaded(String),
    /// Unknown id (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The id is unknown but old enough that it may be a finished transaction this coordinator
    /// has forgotten: it is neither run again nor fenced (DATA_LOSS: the outcome is unknown).
    #[error("{0}")]
    MaybeForgotten(String),
    /// The decision log failed; the coordinator stopped (INTERNAL). Restart to recover.
    #[error("decision log failed: {0}")]
    Fatal(String),
    /// Shutting down (UNAVAILABLE).
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// The request contradicts the transaction's state (FAILED_PRECONDITION).
    #[error("{0}")]
    WrongState(String),
}

/// An interactive transaction begun and not yet committed or rolled back.
#[derive(Clone, Debug)]
struct Active {
    /// Participants enlisted so far, in enlistment order.
    participants: Vec<String>,
    created_unix_ms: u64,
    deadline_unix_ms: u64,
}

/// A transaction as submitted, validated.
#[derive(Clone, Debug)]
pub struct NewTxn {
    /// Its id.
    pub txn: TxnId,
    /// Participant names, in branch order (distinct, all configured).
    pub participants: Vec<String>,
    /// Each branch's operations, in wire form (forwarded as they are).
    pub operations: Vec<Vec<v1::Operation>>,
    /// How long it may take to decide.
    pub timeout: Duration,
    /// When the client first submitted it (0: not given, treated as new).
    pub first_submitted_unix_ms: u64,
    /// How its branches may run.
    pub mode: TxnMode,
    /// Saga ordering (see [`Plan::depends_on`]).
    pub depends_on: Option<Vec<Vec<usize>>>,
    /// An interactive transaction's Commit: each participant prepares what was staged there
    /// (the operations are empty).
    pub staged: bool,
}

/// One transaction in the table.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Participant names, in branch order.
    pub participants: Vec<String>,
    /// Phase and branch states.
    pub machine: TxnMachine,
    /// Per branch: phase-2 delivery attempts.
    pub attempts: Vec<u32>,
    /// Per branch: the last delivery error.
    pub last_error: Vec<String>,
    /// The epoch that ran it.
    pub epoch: Epoch,
    /// Wall-clock times (0 when unknown).
    pub created_unix_ms: u64,
    /// When decided.
    pub decided_unix_ms: u64,
    /// When finished (every Commit acknowledged, or aborted).
    pub finished_unix_ms: u64,
    /// The Prepare deadline sent to participants (0 when unknown), sent again with Aborts.
    pub deadline_unix_ms: u64,
    /// Signalled once every Commit is acknowledged (a permit is stored if nobody waits yet).
    delivered: Arc<tokio::sync::Notify>,
    /// The LSN of the abort record, which must be durable before anyone is told ABORTED.
    abort_lsn: Option<Lsn>,
    /// A saga step's Compensate failed `attention_after_attempts` times and still fails: an
    /// operator should look (NEEDS_ATTENTION). Cleared once it succeeds.
    pub needs_attention: bool,
    /// An interactive transaction still open (begun, staging, not committed): a view of it,
    /// not an entry of the table.
    pub open: bool,
}

impl Entry {
    fn new(participants: Vec<String>, machine: TxnMachine, epoch: Epoch) -> Entry {
        let n = participants.len();
        Entry {
            participants,
            machine,
            attempts: vec![0; n],
            last_error: vec![String::new(); n],
            epoch,
            created_unix_ms: 0,
            decided_unix_ms: 0,
            finished_unix_ms: 0,
            deadline_unix_ms: 0,
            delivered: Arc::new(tokio::sync::Notify::new()),
            abort_lsn: None,
            needs_attention: false,
            open: false,
        }
    }

    /// The outcome as clients see it: COMMITTED once the decision is durable.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        match self.machine.phase() {
            Phase::Preparing | Phase::Executing | Phase::Deciding => Outcome::Pending,
            Phase::Committing | Phase::Committed => Outcome::Committed,
            Phase::Compensating(_) | Phase::Aborted(_) => Outcome::Aborted,
        }
    }

    fn finished(&self) -> bool {
        matches!(self.machine.phase(), Phase::Committed | Phase::Aborted(_))
    }
}

/// The transaction table.
#[derive(Default)]
struct Table {
    entries: HashMap<TxnId, Entry>,
    /// Finished transactions, oldest first, for eviction.
    finished: VecDeque<TxnId>,
    /// Background work in progress: committed transactions being delivered, one-phase
    /// transactions being probed, saga steps being compensated (see
    /// `CoordinatorConfig::max_undelivered`).
    undelivered: usize,
    /// Every finished transaction evicted so far was created at or before this time (or, if its
    /// creation time is unknown, finished by then). An unknown id first submitted at or before
    /// it may be one of them. Persisted in checkpoints.
    forgotten_before_unix_ms: u64,
}

/// The coordinator. Shared behind an `Arc`.
pub struct Coordinator<W: Wal> {
    config: CoordinatorConfig,
    epoch: Epoch,
    wal: W,
    table: Mutex<Table>,
    clients: BTreeMap<String, ParticipantClient<Channel>>,
    /// Batched Prepare and Commit, per participant.
    links: BTreeMap<String, Link>,
    inflight: Arc<Semaphore>,
    records_since_checkpoint: std::sync::atomic::AtomicU64,
    checkpointing: tokio::sync::Mutex<()>,
    failed: AtomicBool,
    fatal: watch::Sender<Option<String>>,
    /// Fires when the coordinator shuts down, ending delivery loops (recovery resumes them).
    stopping: watch::Sender<bool>,
    /// Participants that answered Prepare with UNIMPLEMENTED: in AUTO mode their branches run
    /// as saga steps from the start. At most one entry per configured participant.
    saga_only: Mutex<BTreeSet<String>>,
    /// Interactive transactions begun and not yet committed or rolled back (at most
    /// `max_inflight`; kept in memory only: a restart loses them, and their participants drop
    /// what they staged at the deadline).
    active: Mutex<BTreeMap<TxnId, Active>>,
}

impl<W: Wal> Coordinator<W> {
    /// Replays the decision log, starts a new epoch (forced), aborts every transaction that was
    /// undecided, and re-drives every durable COMMIT without END. Call inside a tokio runtime,
    /// before serving.
    pub async fn recover(config: CoordinatorConfig, wal: W) -> Result<Arc<Self>, CoordinatorError> {
        let mut clients = BTreeMap::new();
        for (name, address) in &config.participants {
            let channel = config.dialer.dial(address, config.call_timeout).map_err(|e| {
                CoordinatorError::Fatal(format!("participant {name} at {address}: {e}"))
            })?;
            clients.insert(
                name.clone(),
                ParticipantClient::new(channel)
                    .max_decoding_message_size(concord_core::limits::MAX_GRPC_MESSAGE_BYTES)
                    .max_encoding_message_size(concord_core::limits::MAX_GRPC_MESSAGE_BYTES),
            );
        }
        let mut replay = Replay::default();
        let mut records = 0u64;
        for record in wal.read_from(Lsn::ZERO).map_err(fatal)? {
            let record = record.map_err(fatal)?;
            let decoded = CoordinatorRecord::decode(&record.payload).map_err(|e| {
                CoordinatorError::Fatal(format!("decision log record at LSN {}: {e}", record.lsn))
            })?;
            replay.apply(decoded);
            records += 1;
        }
        let epoch = Epoch(replay.max_epoch.0 + 1);
        let forgotten_before_unix_ms = replay.forgotten_before_unix_ms;
        wal.append_durable(&CoordinatorRecord::Epoch(epoch).encode()).await.map_err(fatal)?;

        let (fatal_tx, _) = watch::channel(None);
        let (stopping, _) = watch::channel(false);
        let links = clients
            .iter()
            .map(|(name, client)| {
                (name.clone(), Link::new(client.clone(), config.call_timeout, config.batch_calls))
            })
            .collect();
        let coordinator = Arc::new(Coordinator {
            inflight: Arc::new(Semaphore::new(config.max_inflight)),
            config,
            epoch,
            wal,
            table: Mutex::new(Table::default()),
            links,
            clients,
            records_since_checkpoint: std::sync::atomic::AtomicU64::new(records),
            checkpointing: tokio::sync::Mutex::new(()),
            failed: AtomicBool::new(false),
            fatal: fatal_tx,
            stopping,
            saga_only: Mutex::new(BTreeSet::new()),
            active: Mutex::new(BTreeMap::new()),
        });
        tokio::spawn(Arc::clone(&coordinator).run_abandon_sweeper());

        coordinator.table().forgotten_before_unix_ms = forgotten_before_unix_ms;
        let (mut resumed, mut aborted, mut probed) = (0, 0, 0);
        // Oldest first, so the finished ones are forgotten in the order they happened (the
        // horizon then moves as it did before the restart, not to whatever the map yields).
        let mut txns: Vec<(TxnId, Replayed)> = replay.txns.into_iter().collect();
        // An entry with no known creation time counts as finished now (the only bound there
        // is), so it goes last: forgotten only after everything newer that has a time.
        let known = |created: u64| if created == 0 { u64::MAX } else { created };
        txns.sort_by(|(a, x), (b, y)| (known(x.created), a).cmp(&(known(y.created), b)));
        for (txn, replayed) in txns {
            let saga = replayed.kinds.contains(&BranchKind::Saga);
            match &replayed.state {
                ReplayedState::Started if saga => {
                    // Undecided at the crash, and steps may have executed: abort, compensating
                    // every step not known to be compensated (a step that never executed gets
                    // a barrier), and tell the two-phase branches.
                    let cause = AbortCause::CoordinatorRestart;
                    let lsn = coordinator.append(&CoordinatorRecord::Aborted {
                        txn: txn.clone(),
                        cause: cause.clone(),
                    })?;
                    coordinator.recover_saga(&txn, &replayed, cause);
                    if let Some(entry) = coordinator.table().entries.get_mut(&txn) {
                        entry.abort_lsn = Some(lsn);
                    }
                    aborted += 1;
                }
                ReplayedState::Finished(Phase::Aborted(cause))
                    if saga && !replayed.compensation_done =>
                {
                    coordinator.recover_saga(&txn, &replayed, cause.clone());
                    aborted += 1;
                }
                ReplayedState::Committing { pending } => {
                    let (machine, outputs) =
                        TxnMachine::recover_committing(replayed.participants.len(), pending);
                    coordinator.insert_recovered(&txn, &replayed, machine);
                    if !pending.is_empty() {
                        coordinator.table().undelivered += 1;
                    }
                    coordinator.carry_out(&txn, outputs);
                    resumed += 1;
                }
                ReplayedState::Started if replayed.participants.len() == 1 => {
                    let (machine, outputs) = TxnMachine::recover_one_phase();
                    coordinator.insert_recovered(&txn, &replayed, machine);
                    coordinator.carry_out(&txn, outputs);
                    probed += 1;
                }
                ReplayedState::Started => {
                    // Undecided at the crash: presumed abort. Tell every participant, since any
                    // of them may have prepared.
                    let cause = AbortCause::CoordinatorRestart;
                    let branches = replayed.participants.len();
                    let machine = TxnMachine::finished(branches, Phase::Aborted(cause.clone()));
                    coordinator.insert_recovered(&txn, &replayed, machine);
                    let lsn = coordinator
                        .append(&CoordinatorRecord::Aborted { txn: txn.clone(), cause })?;
                    if let Some(entry) = coordinator.table().entries.get_mut(&txn) {
                        entry.abort_lsn = Some(lsn);
                    }
                    let sends = (0..branches).map(|branch| Output::SendAbort { branch }).collect();
                    coordinator.carry_out(&txn, sends);
                    coordinator.finish(&txn);
                    aborted += 1;
                }
                ReplayedState::Finished(phase) => {
                    let machine = TxnMachine::finished(replayed.participants.len(), phase.clone());
                    coordinator.insert_recovered(&txn, &replayed, machine);
                    coordinator.finish(&txn);
                }
            }
        }
        tracing::info!(epoch = epoch.0, records, resumed, aborted, probed, "coordinator recovered");
        Ok(coordinator)
    }

    /// This coordinator's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Names of the configured participants.
    pub fn participant_names(&self) -> impl Iterator<Item = &String> {
        self.clients.keys()
    }

    /// Resolves once the decision log failed.
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    /// Stops delivery loops; call when the server stops.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Rebuilds an aborted saga whose compensation had not finished, and resumes it.
    fn recover_saga(self: &Arc<Self>, txn: &TxnId, replayed: &Replayed, cause: AbortCause) {
        let to_compensate: Vec<usize> = (0..replayed.kinds.len())
            .filter(|b| replayed.kinds[*b] == BranchKind::Saga && !replayed.compensated.contains(b))
            .collect();
        let (machine, outputs) =
            TxnMachine::recover_compensating(replayed.kinds.clone(), &to_compensate, cause);
        let machine = machine.with_kinds(replayed.kinds.clone(), replayed.mode);
        let done = matches!(machine.phase(), Phase::Aborted(_));
        self.insert_recovered(txn, replayed, machine);
        self.carry_out(txn, outputs);
        if done {
            self.compensation_done(txn);
        }
    }

    /// The plan for a new transaction: in AUTO mode, participants known to be unable to
    /// prepare run as saga steps from the start.
    fn plan(&self, new: &NewTxn) -> Plan {
        let kind = |participant: &String| match new.mode {
            TxnMode::TwoPhase => BranchKind::TwoPhase,
            TxnMode::Saga => BranchKind::Saga,
            TxnMode::Auto if self.saga_only().contains(participant) => BranchKind::Saga,
            TxnMode::Auto => BranchKind::TwoPhase,
        };
        Plan {
            kinds: new.participants.iter().map(kind).collect(),
            depends_on: new.depends_on.clone(),
            mode: new.mode,
        }
    }

    fn active(&self) -> MutexGuard<'_, BTreeMap<TxnId, Active>> {
        match self.active.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Begins an interactive transaction open for `timeout`; returns its deadline. Idempotent
    /// while it is open.
    pub fn begin(&self, txn: &TxnId, timeout: Duration) -> Result<u64, CoordinatorError> {
        self.refuse_if_failed()?;
        if self.table().entries.contains_key(txn) {
            return Err(CoordinatorError::WrongState(format!(
                "txn_id: {txn} is already known here (submitted or committed): begin a new id"
            )));
        }
        let mut active = self.active();
        if let Some(open) = active.get(txn) {
            return Ok(open.deadline_unix_ms);
        }
        if active.len() >= self.config.max_inflight {
            return Err(CoordinatorError::Overloaded(format!(
                "{} interactive transactions are open, the limit",
                active.len()
            )));
        }
        let now = self.now_ms();
        let deadline_unix_ms =
            now.saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let open = Active { participants: Vec::new(), created_unix_ms: now, deadline_unix_ms };
        active.insert(txn.clone(), open);
        tracing::debug!(txn_id = %txn, deadline_unix_ms, "interactive transaction begun");
        Ok(deadline_unix_ms)
    }

    /// Enlists `participant` (a configured name) in an open interactive transaction; returns
    /// its deadline.
    pub fn enlist(&self, txn: &TxnId, participant: &str) -> Result<u64, CoordinatorError> {
        self.refuse_if_failed()?;
        let mut active = self.active();
        let Some(open) = active.get_mut(txn) else {
            drop(active);
            return Err(match self.table().entries.get(txn) {
                Some(_) => CoordinatorError::WrongState(format!(
                    "transaction {txn} is committing or finished: nothing more can be staged"
                )),
                None => CoordinatorError::NotFound(format!(
                    "no open transaction {txn}: never begun, past its deadline, or begun before                      this coordinator restarted"
                )),
            });
        };
        if !open.participants.iter().any(|p| p == participant) {
            if open.participants.len() >= concord_core::limits::MAX_BRANCHES_PER_TXN {
                return Err(CoordinatorError::Overloaded(format!(
                    "transaction {txn} has {} participants, the limit",
                    open.participants.len()
                )));
            }
            open.participants.push(participant.to_string());
        }
        Ok(open.deadline_unix_ms)
    }

    /// Commits an interactive transaction: two-phase commit over every enlisted participant's
    /// staged operations. A repeated Commit answers with the outcome; an id not open here is
    /// fenced and answered ABORTED (nothing of it can commit).
    pub async fn commit_interactive(
        self: &Arc<Self>,
        txn: &TxnId,
    ) -> Result<Entry, CoordinatorError> {
        self.refuse_if_failed()?;
        let Some(open) = self.active().remove(txn) else {
            return self.fence_unknown(txn, None).await;
        };
        if open.participants.is_empty() {
            // Nothing was staged anywhere: there is nothing to commit, and nothing to log.
            let mut entry =
                Entry::new(Vec::new(), TxnMachine::finished(0, Phase::Committed), self.epoch);
            entry.created_unix_ms = open.created_unix_ms;
            entry.deadline_unix_ms = open.deadline_unix_ms;
            self.table().entries.insert(txn.clone(), entry);
            self.finish(txn);
            return self
                .get_durable(txn)
                .await?
                .ok_or_else(|| CoordinatorError::NotFound(txn.to_string()));
        }
        let remaining_ms = open.deadline_unix_ms.saturating_sub(self.now_ms()).max(1);
        let n = open.participants.len();
        self.submit(NewTxn {
            txn: txn.clone(),
            participants: open.participants,
            operations: vec![Vec::new(); n],
            timeout: Duration::from_millis(remaining_ms),
            first_submitted_unix_ms: 0,
            mode: TxnMode::TwoPhase,
            depends_on: None,
            staged: true,
        })
        .await
    }

    /// Rolls an open interactive transaction back (or answers for one already aborted).
    pub async fn rollback(self: &Arc<Self>, txn: &TxnId) -> Result<Entry, CoordinatorError> {
        self.refuse_if_failed()?;
        let open = self.active().remove(txn);
        let known = self.table().entries.get(txn).map(Entry::outcome);
        match open {
            Some(open) => self.abort_open(txn, open, AbortCause::ClientRollback).await,
            None => match known {
                Some(Outcome::Aborted) => self
                    .get_durable(txn)
                    .await?
                    .ok_or_else(|| CoordinatorError::NotFound(txn.to_string())),
                Some(_) => Err(CoordinatorError::WrongState(format!(
                    "transaction {txn} is already committing or committed: it cannot be rolled back"
                ))),
                None => self.fence_unknown(txn, None).await,
            },
        }
    }

    /// Records an open interactive transaction as aborted and tells its participants, which
    /// drop what they staged.
    async fn abort_open(
        self: &Arc<Self>,
        txn: &TxnId,
        open: Active,
        cause: AbortCause,
    ) -> Result<Entry, CoordinatorError> {
        let n = open.participants.len();
        let started = CoordinatorRecord::Started {
            txn: txn.clone(),
            participants: open.participants.clone(),
            created_unix_ms: open.created_unix_ms,
            deadline_unix_ms: open.deadline_unix_ms,
        };
        self.append(&started)?;
        let lsn =
            self.append(&CoordinatorRecord::Aborted { txn: txn.clone(), cause: cause.clone() })?;
        let mut entry = Entry::new(
            open.participants,
            TxnMachine::finished(n, Phase::Aborted(cause.clone())),
            self.epoch,
        );
        entry.created_unix_ms = open.created_unix_ms;
        entry.deadline_unix_ms = open.deadline_unix_ms;
        entry.decided_unix_ms = self.now_ms();
        entry.abort_lsn = Some(lsn);
        self.table().entries.insert(txn.clone(), entry);
        self.finish(txn);
        tracing::info!(txn_id = %txn, ?cause, "interactive transaction aborted");
        self.carry_out(txn, (0..n).map(|branch| Output::SendAbort { branch }).collect());
        self.get_durable(txn).await?.ok_or_else(|| CoordinatorError::NotFound(txn.to_string()))
    }

    /// Aborts interactive transactions left open past their deadline (abandoned by their
    /// client), every 100 ms, until the coordinator stops.
    async fn run_abandon_sweeper(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            let now = self.now_ms();
            let expired: Vec<(TxnId, Active)> = {
                let mut active = self.active();
                let ids: Vec<TxnId> = active
                    .iter()
                    .filter(|(_, open)| open.deadline_unix_ms < now)
                    .map(|(txn, _)| txn.clone())
                    .collect();
                ids.into_iter()
                    .filter_map(|txn| active.remove(&txn).map(|open| (txn, open)))
                    .collect()
            };
            for (txn, open) in expired {
                if self.abort_open(&txn, open, AbortCause::Deadline).await.is_err() {
                    return; // the decision log failed; the coordinator stops
                }
            }
        }
    }

    fn saga_only(&self) -> MutexGuard<'_, BTreeSet<String>> {
        match self.saga_only.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Runs a new transaction to a decision, or returns the state of a known one.
    pub async fn submit(self: &Arc<Self>, new: NewTxn) -> Result<Entry, CoordinatorError> {
        self.refuse_if_failed()?;
        if self.get(&new.txn).is_some() {
            return self.get_durable(&new.txn).await?.ok_or_else(|| {
                CoordinatorError::NotFound(format!("transaction {} vanished", new.txn))
            });
        }
        let permit = Arc::clone(&self.inflight).try_acquire_owned().map_err(|_| {
            CoordinatorError::Overloaded(format!(
                "{} transactions are in flight, the limit",
                self.config.max_inflight
            ))
        })?;
        let (reply_tx, reply_rx) = oneshot::channel();
        let plan = self.plan(&new);
        let known = {
            let mut table = self.table();
            let known = table.entries.contains_key(&new.txn);
            if !known
                && new.first_submitted_unix_ms != 0
                && new.first_submitted_unix_ms
                    <= table.forgotten_before_unix_ms.saturating_add(CLOCK_SKEW_MARGIN_MS)
            {
                return Err(CoordinatorError::MaybeForgotten(format!(
                    "txn_id: {} is unknown here, and first submitted at {} ms, no later than \
                     finished transactions this coordinator has forgotten (up to {} ms): it may \
                     have run already, so it is not run again",
                    new.txn, new.first_submitted_unix_ms, table.forgotten_before_unix_ms
                )));
            }
            if !known && table.undelivered >= self.config.max_undelivered {
                return Err(CoordinatorError::Overloaded(format!(
                    "{} transactions await Commit delivery or a one-phase outcome, the limit",
                    table.undelivered
                )));
            }
            if !known {
                let (machine, _) = TxnMachine::start_with(plan.clone());
                let mut entry = Entry::new(new.participants.clone(), machine, self.epoch);
                entry.created_unix_ms = self.now_ms();
                entry.deadline_unix_ms = entry.created_unix_ms
                    + u64::try_from(new.timeout.as_millis()).unwrap_or(u64::MAX);
                table.entries.insert(new.txn.clone(), entry);
            }
            known
        };
        if known {
            // The permit is released unused: the transaction runs (or ran) already.
            return self.get_durable(&new.txn).await?.ok_or_else(|| {
                CoordinatorError::NotFound(format!("transaction {} vanished", new.txn))
            });
        }
        let this = Arc::clone(self);
        let txn = new.txn.clone();
        tokio::spawn(async move {
            this.run_txn(new, plan, reply_tx).await;
            drop(permit);
        });
        match reply_rx.await {
            Ok(()) => {}
            Err(_) => return Err(CoordinatorError::Fatal("the transaction's task ended".into())),
        }
        self.get_durable(&txn)
            .await?
            .ok_or_else(|| CoordinatorError::NotFound(format!("transaction {txn} vanished")))
    }

    /// A copy of one transaction's entry, once what it says is durable: an ABORTED outcome is
    /// only told after its abort record is synced (a COMMIT is durable before the phase can say
    /// so), so no answer given can be forgotten by a crash.
    pub async fn get_durable(&self, txn: &TxnId) -> Result<Option<Entry>, CoordinatorError> {
        let Some(entry) = self.get(txn) else { return Ok(None) };
        if let Some(lsn) = entry.abort_lsn {
            self.wal.wait_durable(lsn).await.map_err(|e| self.fail(e.to_string()))?;
        }
        Ok(Some(entry))
    }

    /// Every finished transaction forgotten so far was created at or before this time (0:
    /// nothing forgotten).
    pub fn forgotten_before_unix_ms(&self) -> u64 {
        self.table().forgotten_before_unix_ms
    }

    /// A copy of one transaction's entry (or a view of an open interactive transaction).
    pub fn get(&self, txn: &TxnId) -> Option<Entry> {
        if let Some(entry) = self.table().entries.get(txn) {
            return Some(entry.clone());
        }
        let open = self.active().get(txn).cloned()?;
        let n = open.participants.len();
        let machine = TxnMachine::finished(n, Phase::Preparing);
        let mut entry = Entry::new(open.participants, machine, self.epoch);
        entry.created_unix_ms = open.created_unix_ms;
        entry.deadline_unix_ms = open.deadline_unix_ms;
        entry.open = true;
        Some(entry)
    }

    /// Records an unknown id as aborted for good (forced), so a late Submit cannot commit it.
    ///
    /// `submitted_unix_ms` is when the client first submitted the id (0: unknown). Once this
    /// coordinator has forgotten finished transactions, only ids submitted after all of them
    /// can be fenced: an older id might have committed and been forgotten.
    pub async fn fence(
        &self,
        txn: &TxnId,
        submitted_unix_ms: u64,
    ) -> Result<Entry, CoordinatorError> {
        self.fence_unknown(txn, Some(submitted_unix_ms)).await
    }

    /// Fences `txn` if it is unknown; `submitted_unix_ms` (when given) is checked against the
    /// forgotten horizon as [`Coordinator::fence`] describes. Returns the durable entry.
    async fn fence_unknown(
        &self,
        txn: &TxnId,
        submitted_unix_ms: Option<u64>,
    ) -> Result<Entry, CoordinatorError> {
        self.refuse_if_failed()?;
        let lsn = {
            let mut table = self.table();
            if table.entries.contains_key(txn) {
                None
            } else {
                let horizon = table.forgotten_before_unix_ms;
                if let Some(submitted_unix_ms) = submitted_unix_ms
                    && horizon > 0
                    && (submitted_unix_ms == 0
                        || submitted_unix_ms <= horizon.saturating_add(CLOCK_SKEW_MARGIN_MS))
                {
                    return Err(CoordinatorError::MaybeForgotten(format!(
                        "txn_id: {txn} is unknown here, and this coordinator has forgotten finished \
                     transactions created up to {horizon} ms: it cannot tell whether {txn} was \
                     one of them, so it does not fence it; submitted_unix_ms (when the id was \
                     first submitted) must be later than that"
                    )));
                }
                self.failpoint("coordinator.before_fence")?;
                let now = self.now_ms();
                let lsn = self.append(&CoordinatorRecord::FencedAt {
                    txn: txn.clone(),
                    fenced_unix_ms: now,
                })?;
                let machine = TxnMachine::finished(1, Phase::Aborted(AbortCause::Fenced));
                let mut entry = Entry::new(Vec::new(), machine, self.epoch);
                // The id was first submitted (if ever) before now: its bound for the horizon.
                entry.created_unix_ms = now;
                entry.finished_unix_ms = now;
                table.entries.insert(txn.clone(), entry);
                Some(lsn)
            }
        };
        if let Some(lsn) = lsn {
            self.finish(txn);
            self.wal.wait_durable(lsn).await.map_err(|e| self.fail(e.to_string()))?;
            self.failpoint("coordinator.after_fence")?;
        }
        self.get_durable(txn).await?.ok_or_else(|| CoordinatorError::NotFound(txn.to_string()))
    }

    /// Transactions in txn-id order after `after`, filtered, at most `limit`.
    pub fn list(
        &self,
        filter: impl Fn(&Entry) -> bool,
        after: Option<&TxnId>,
        limit: usize,
    ) -> Vec<(TxnId, Entry)> {
        // Open interactive transactions first (they are few: at most `max_inflight`), as the
        // views `get` gives.
        let open: Vec<TxnId> =
            self.active().keys().filter(|txn| after.is_none_or(|a| *txn > a)).cloned().collect();
        let open: Vec<(TxnId, Entry)> = open
            .into_iter()
            .filter_map(|txn| self.get(&txn).map(|entry| (txn, entry)))
            .filter(|(_, entry)| entry.open && filter(entry))
            .collect();
        let table = self.table();
        let mut matching: Vec<(&TxnId, &Entry)> = table
            .entries
            .iter()
            .filter(|(txn, entry)| after.is_none_or(|a| *txn > a) && filter(entry))
            .chain(open.iter().map(|(txn, entry)| (txn, entry)))
            .collect();
        matching.sort_by(|a, b| a.0.cmp(b.0));
        matching.into_iter().take(limit).map(|(t, e)| (t.clone(), e.clone())).collect()
    }

    /// The answer for an in-doubt participant: presumed abort for anything unknown, made
    /// durable first by fencing the id. Without the fence, a Submit of the same id arriving
    /// later (a client retrying after the coordinator lost the id's lazy STARTED record in a
    /// crash) would run it again and could commit what a participant was told had aborted.
    ///
    /// The forgotten horizon is not consulted: a participant only asks about a branch it still
    /// holds prepared, and a committed transaction is forgotten only after every participant
    /// acknowledged its Commit, so an id asked about is never a forgotten commit.
    pub async fn resolve(&self, txn: &TxnId) -> Result<Outcome, CoordinatorError> {
        Ok(self.fence_unknown(txn, None).await?.outcome())
    }

    /// Takes a checkpoint if enough records were appended since the last one.
    pub async fn maybe_checkpoint(&self) -> Result<(), CoordinatorError> {
        if self.records_since_checkpoint.load(Ordering::Relaxed)
            < self.config.checkpoint_every_records
        {
            return Ok(());
        }
        let _serial = self.checkpointing.lock().await;
        // The snapshot and its BEGIN record are taken together under the table lock; the
        // entries and END are appended after it is released, so transactions are not stalled
        // while a large table is encoded. Records that running transactions append meanwhile
        // land between BEGIN and END, and replay applies them on top of the snapshot.
        let (id, begin, entries) = {
            let table = self.table();
            let mut entries = Vec::new();
            for (txn, entry) in &table.entries {
                entries.extend(checkpoint_records(txn, entry));
            }
            let id = self.now_ms();
            let begin = self.append(&CoordinatorRecord::CheckpointBegin {
                id,
                epoch: self.epoch,
                forgotten_before_unix_ms: table.forgotten_before_unix_ms,
            })?;
            self.records_since_checkpoint.store(0, Ordering::Relaxed);
            (id, begin, entries)
        };
        let mut batch = Vec::new();
        let mut size = 0;
        for record in entries {
            size += record.encode().len();
            batch.push(record);
            if size > concord_core::limits::MAX_WAL_RECORD_BYTES / 2 {
                self.append(&CoordinatorRecord::CheckpointEntries(std::mem::take(&mut batch)))?;
                size = 0;
            }
        }
        if !batch.is_empty() {
            self.append(&CoordinatorRecord::CheckpointEntries(batch))?;
        }
        let end = self.append(&CoordinatorRecord::CheckpointEnd { id })?;
        self.failpoint("coordinator.before_checkpoint")?;
        self.wal.wait_durable(end).await.map_err(|e| self.fail(e.to_string()))?;
        self.wal.truncate_before(begin).map_err(|e| self.fail(e.to_string()))?;
        self.failpoint("coordinator.after_checkpoint")?;
        tracing::info!(checkpoint_lsn = begin.0, "coordinator checkpoint taken");
        Ok(())
    }

    async fn run_txn(self: &Arc<Self>, new: NewTxn, plan: Plan, reply: oneshot::Sender<()>) {
        let txn = new.txn.clone();
        let deadline = tokio::time::Instant::now() + new.timeout;
        let (created_unix_ms, deadline_unix_ms) =
            self.get(&txn).map_or((0, 0), |entry| (entry.created_unix_ms, entry.deadline_unix_ms));
        let mut reply = Some(reply);
        let started = CoordinatorRecord::Started {
            txn: txn.clone(),
            participants: new.participants.clone(),
            created_unix_ms,
            deadline_unix_ms,
        };
        let (_, mut pending) = TxnMachine::start_with(plan);
        // Prepare and Execute calls in flight, each answering with the input it produced.
        let mut prepares = tokio::task::JoinSet::new();
        let mut started_logged = false;
        let mut aborts = tokio::task::JoinSet::new();
        let mut deadline_seen = false;
        loop {
            // Carrying out an output can produce more (STARTED durable → send Prepare): drain
            // them all before waiting for the next answer.
            while !pending.is_empty() {
                let mut reply_now = false;
                for output in std::mem::take(&mut pending) {
                    match output {
                        Output::ForceStarted => {
                            // A saga's record names its steps: recovery compensates them.
                            let record = match self.get(&txn) {
                                Some(entry) if !entry.machine.saga_steps().is_empty() => {
                                    CoordinatorRecord::SagaStarted {
                                        txn: txn.clone(),
                                        participants: new.participants.clone(),
                                        kinds: entry.machine.kinds().to_vec(),
                                        mode: entry.machine.mode(),
                                        created_unix_ms,
                                        deadline_unix_ms,
                                    }
                                }
                                _ => started.clone(),
                            };
                            // An error (fatal) drops the reply channel: the client sees INTERNAL.
                            if self.failpoint("coordinator.before_started").is_err()
                                || self.force(&record).await.is_err()
                                || self.failpoint("coordinator.after_started").is_err()
                            {
                                return;
                            }
                            pending.extend(self.handle(&txn, Input::StartedDurable));
                        }
                        Output::SendPrepare { branch, one_phase } => {
                            if !one_phase && !started_logged {
                                // Lazy: rides along with the next group commit.
                                if self.append(&started).is_err() {
                                    return;
                                }
                                started_logged = true;
                            }
                            let link = self.links[&new.participants[branch]].clone();
                            let request = v1::PrepareRequest {
                                txn_id: txn.to_string(),
                                epoch: self.epoch.0,
                                operations: new.operations[branch].clone(),
                                deadline_unix_ms,
                                one_phase,
                                staged: new.staged,
                            };
                            let timeout =
                                deadline.saturating_duration_since(tokio::time::Instant::now());
                            let this = Arc::clone(self);
                            let participant = new.participants[branch].clone();
                            prepares.spawn(async move {
                                let result = prepare(&link, request, timeout).await;
                                if let PrepareResult::Unimplemented(_) = &result {
                                    this.saga_only().insert(participant);
                                }
                                Input::Prepared { branch, result }
                            });
                        }
                        Output::SendExecute { branch } => {
                            let Some(mut client) = self.client_for(&txn, branch) else { continue };
                            let request = v1::ExecuteRequest {
                                txn_id: txn.to_string(),
                                epoch: self.epoch.0,
                                operations: new.operations[branch].clone(),
                                deadline_unix_ms,
                            };
                            let timeout = deadline
                                .saturating_duration_since(tokio::time::Instant::now())
                                .min(self.config.call_timeout);
                            prepares.spawn(async move {
                                let result = execute(&mut client, request, timeout).await;
                                Input::Executed { branch, result }
                            });
                        }
                        Output::ForceCommit { branches } => {
                            if self.failpoint("coordinator.before_decision").is_err() {
                                return; // fatal, as above
                            }
                            let record = CoordinatorRecord::Commit {
                                txn: txn.clone(),
                                participants: new.participants.clone(),
                                pending: branches,
                                decided_unix_ms: self.now_ms(),
                            };
                            // Planted bug (test builds only): decide without logging it.
                            let log = !concord_failpoints::planted("commit-before-decision");
                            if (log && self.force(&record).await.is_err())
                                || self.failpoint("coordinator.after_decision").is_err()
                            {
                                return; // fatal, as above
                            }
                            {
                                let mut table = self.table();
                                table.undelivered += 1;
                                if let Some(entry) = table.entries.get_mut(&txn) {
                                    entry.decided_unix_ms = self.now_ms();
                                }
                            }
                            pending.extend(self.handle(&txn, Input::CommitDurable));
                        }
                        Output::Reply(_) => {
                            let mut table = self.table();
                            let Some(entry) = table.entries.get_mut(&txn) else { continue };
                            if entry.decided_unix_ms == 0 {
                                entry.decided_unix_ms = self.now_ms();
                            }
                            // A commit still being delivered (or an abort still compensating)
                            // replies once settled (below).
                            let delivering = matches!(
                                entry.machine.phase(),
                                Phase::Committing | Phase::Compensating(_)
                            );
                            drop(table);
                            // Reply once this batch is carried out: an abort's record is
                            // appended in the same batch, and the reply must see its LSN.
                            reply_now |= !delivering;
                        }
                        Output::SendAbort { branch } => {
                            if let Some(abort) = self.send_abort(&txn, branch) {
                                aborts.spawn(abort);
                            }
                        }
                        other => self.carry_out(&txn, vec![other]),
                    }
                }
                if reply_now && let Some(reply) = reply.take() {
                    // Let the Aborts just sent land first (each bounded by the call timeout), so
                    // that ABORTED also means the locks are released wherever that was possible
                    // and the client's next transaction does not collide with this one.
                    while aborts.join_next().await.is_some() {}
                    let _ = reply.send(());
                }
            }
            if prepares.is_empty() {
                break;
            }
            tokio::select! {
                joined = prepares.join_next(), if !prepares.is_empty() => {
                    if let Some(Ok(input)) = joined {
                        pending.extend(self.handle(&txn, input));
                    }
                }
                () = tokio::time::sleep_until(deadline), if !deadline_seen => {
                    deadline_seen = true;
                    pending.extend(self.handle(&txn, Input::Deadline));
                }
            }
        }
        // Aborts sent after the reply (to late YES votes) must outlive this task: a JoinSet
        // cancels what it still holds when dropped.
        aborts.detach_all();
        // A commit being delivered: reply once every participant acknowledged, so the client
        // reads its own writes and its next transaction does not conflict with this one — but
        // wait no longer than the deadline plus one call, then reply COMMITTED (state
        // COMMITTING) while delivery goes on. Likewise an aborted saga replies once its steps
        // are compensated, or ABORTED (state COMPENSATING) while compensation goes on.
        let delivered = self.get(&txn).map(|entry| entry.delivered);
        if let (Some(delivered), Some(_)) = (delivered, &reply) {
            let patience = deadline.max(tokio::time::Instant::now()) + self.config.call_timeout;
            let _ = tokio::time::timeout_at(patience, delivered.notified()).await;
        }
        // Otherwise (one phase still being probed, or no decision by the deadline) the client
        // hears the current state, PENDING, and asks again later.
        if let Some(reply) = reply.take() {
            let _ = reply.send(());
        }
    }

    /// Feeds an input to a transaction's machine under the table lock.
    ///
    /// An abort's record is appended here, in the same critical section as the phase change,
    /// so nobody can read ABORTED without the LSN that must be durable before it is told.
    fn handle(&self, txn: &TxnId, input: Input) -> Vec<Output> {
        let mut table = self.table();
        let Some(entry) = table.entries.get_mut(txn) else { return Vec::new() };
        let mut outputs = entry.machine.handle(input);
        let Some(at) = outputs.iter().position(|o| matches!(o, Output::LogAbort(_))) else {
            return outputs;
        };
        let Output::LogAbort(cause) = outputs.remove(at) else { unreachable!("matched above") };
        // A failed append has marked the coordinator failed; every answer now refuses.
        if let Ok(lsn) = self.append(&CoordinatorRecord::Aborted { txn: txn.clone(), cause }) {
            entry.abort_lsn = Some(lsn);
        }
        let settled = matches!(entry.machine.phase(), Phase::Aborted(_));
        let saga = !entry.machine.saga_steps().is_empty();
        drop(table);
        // An aborted saga still compensating stays unfinished (never evicted) until it is done.
        if settled && saga {
            self.compensation_done(txn);
        } else if settled {
            self.finish(txn);
        }
        outputs
    }

    /// Every step of an aborted saga that needed it is compensated: log it, finish the
    /// transaction and wake a client waiting for it.
    fn compensation_done(&self, txn: &TxnId) {
        if let Some(entry) = self.table().entries.get_mut(txn) {
            entry.needs_attention = false;
        }
        if self.append(&CoordinatorRecord::CompensationDone { txn: txn.clone() }).is_ok() {
            self.finish(txn);
        }
        if let Some(entry) = self.table().entries.get(txn) {
            entry.delivered.notify_one();
        }
    }

    /// Carries out outputs that need no waiting: sends and lazy log records.
    fn carry_out(self: &Arc<Self>, txn: &TxnId, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::SendCommit { branch } => {
                    let this = Arc::clone(self);
                    let txn = txn.clone();
                    tokio::spawn(async move { this.deliver_commit(txn, branch).await });
                }
                Output::SendAbort { branch } => {
                    if let Some(abort) = self.send_abort(txn, branch) {
                        tokio::spawn(abort);
                    }
                }
                Output::ProbeOnePhase => {
                    self.table().undelivered += 1;
                    let this = Arc::clone(self);
                    let txn = txn.clone();
                    tokio::spawn(async move { this.probe_one_phase(txn).await });
                }
                Output::LogEnd => {
                    if self.failpoint("coordinator.before_end").is_ok()
                        && self.append(&CoordinatorRecord::End { txn: txn.clone() }).is_ok()
                        && self.failpoint("coordinator.after_end").is_ok()
                    {
                        self.finish(txn);
                    }
                    if let Some(entry) = self.table().entries.get(txn) {
                        entry.delivered.notify_one();
                    }
                }
                Output::SendCompensate { branch } => {
                    self.table().undelivered += 1;
                    let this = Arc::clone(self);
                    let txn = txn.clone();
                    tokio::spawn(async move { this.compensate(txn, branch).await });
                }
                Output::LogCompensated { branch } => {
                    let _ =
                        self.append(&CoordinatorRecord::Compensated { txn: txn.clone(), branch });
                    let done = self
                        .get(txn)
                        .is_some_and(|entry| matches!(entry.machine.phase(), Phase::Aborted(_)));
                    if done {
                        self.compensation_done(txn);
                    }
                }
                Output::LogAbort(_)
                | Output::Reply(_)
                | Output::SendPrepare { .. }
                | Output::SendExecute { .. }
                | Output::ForceCommit { .. }
                | Output::ForceStarted => {
                    unreachable!("handled by run_txn: {output:?}")
                }
            }
        }
    }

    /// One Abort to one branch. One attempt: presumed abort needs no acknowledgement, and a
    /// participant that misses it asks and hears ABORTED.
    fn send_abort(
        &self,
        txn: &TxnId,
        branch: usize,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let mut client = self.client_for(txn, branch)?;
        let request = v1::AbortRequest {
            txn_id: txn.to_string(),
            epoch: self.epoch.0,
            deadline_unix_ms: self.get(txn).map_or(0, |e| e.deadline_unix_ms),
        };
        Some(async move {
            let _ = client.abort(request).await;
        })
    }

    /// Sends Commit to one branch until it is acknowledged, with bounded exponential backoff.
    async fn deliver_commit(self: Arc<Self>, txn: TxnId, branch: usize) {
        let Some(link) = self.link_for(&txn, branch) else {
            tracing::error!(txn_id = %txn, branch, "no client for a committing branch: unknown participant in the log");
            return;
        };
        let mut stopping = self.stopping.subscribe();
        let mut backoff = self.config.min_backoff;
        loop {
            let request = v1::CommitRequest { txn_id: txn.to_string(), epoch: self.epoch.0 };
            let result = link.commit(request, self.config.call_timeout).await;
            let acknowledged = {
                let mut table = self.table();
                let Some(entry) = table.entries.get_mut(&txn) else { return };
                entry.attempts[branch] += 1;
                match &result {
                    Ok(_) => true,
                    Err(status) => {
                        entry.last_error[branch] =
                            format!("{:?}: {}", status.code(), status.message());
                        false
                    }
                }
            };
            if acknowledged {
                let outputs = self.handle(&txn, Input::CommitAcknowledged { branch });
                if outputs.contains(&Output::LogEnd) {
                    self.table().undelivered -= 1;
                }
                self.carry_out(&txn, outputs);
                return;
            }
            if let Err(status) = result {
                tracing::warn!(txn_id = %txn, branch, code = ?status.code(), "commit delivery failed; retrying");
            }
            // Planted bug (test builds only): give up after one failed attempt.
            if concord_failpoints::planted("give-up-commit") {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    /// Sends Compensate to one saga step until it is acknowledged: bounded exponential backoff,
    /// then, past `attention_after_attempts`, the transaction shows NEEDS_ATTENTION and the
    /// step is retried every `attention_retry`, never dropped.
    async fn compensate(self: Arc<Self>, txn: TxnId, branch: usize) {
        let Some(mut client) = self.client_for(&txn, branch) else {
            tracing::error!(txn_id = %txn, branch, "no client for a saga step: unknown participant in the log");
            return;
        };
        let mut stopping = self.stopping.subscribe();
        let mut backoff = self.config.min_backoff;
        let deadline_unix_ms = self.get(&txn).map_or(0, |e| e.deadline_unix_ms);
        loop {
            let request = v1::CompensateRequest {
                txn_id: txn.to_string(),
                epoch: self.epoch.0,
                deadline_unix_ms,
            };
            // Planted bug (test builds only): call a step compensated without asking.
            let skip = concord_failpoints::planted("skip-compensation");
            let result =
                if skip { Ok(()) } else { self.call_compensate(&mut client, request).await };
            let attention = {
                let mut table = self.table();
                let Some(entry) = table.entries.get_mut(&txn) else { return };
                entry.attempts[branch] += 1;
                match &result {
                    Ok(()) => false,
                    Err(status) => {
                        entry.last_error[branch] =
                            format!("{:?}: {}", status.code(), status.message());
                        let attention =
                            entry.attempts[branch] >= self.config.attention_after_attempts;
                        if attention && !entry.needs_attention {
                            entry.needs_attention = true;
                            tracing::error!(
                                txn_id = %txn, branch, attempts = entry.attempts[branch],
                                error = %entry.last_error[branch],
                                "saga compensation keeps failing: the transaction needs attention; \
                                 still retrying"
                            );
                        }
                        attention
                    }
                }
            };
            if result.is_ok() {
                self.table().undelivered -= 1;
                if let Some(entry) = self.table().entries.get_mut(&txn) {
                    entry.needs_attention = false;
                }
                let outputs = self.handle(&txn, Input::Compensated { branch });
                self.carry_out(&txn, outputs);
                return;
            }
            if let Err(status) = result {
                tracing::warn!(txn_id = %txn, branch, code = ?status.code(), "compensation failed; retrying");
            }
            let delay = if attention { self.config.attention_retry } else { backoff };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    /// One Compensate call, bounded by the call timeout.
    async fn call_compensate(
        &self,
        client: &mut ParticipantClient<Channel>,
        request: v1::CompensateRequest,
    ) -> Result<(), tonic::Status> {
        match tokio::time::timeout(self.config.call_timeout, client.compensate(request)).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(tonic::Status::deadline_exceeded("no answer within the call timeout")),
        }
    }

    /// Resolves a silent one-phase branch: Abort until answered. Acknowledged → aborted for
    /// good (a barrier refuses the late Prepare); FAILED_PRECONDITION → it committed.
    async fn probe_one_phase(self: Arc<Self>, txn: TxnId) {
        let Some(mut client) = self.client_for(&txn, 0) else { return };
        let mut stopping = self.stopping.subscribe();
        let mut backoff = self.config.min_backoff;
        let deadline_unix_ms = self.get(&txn).map_or(0, |e| e.deadline_unix_ms);
        loop {
            let request =
                v1::AbortRequest { txn_id: txn.to_string(), epoch: self.epoch.0, deadline_unix_ms };
            let result = client.abort(request).await;
            let committed = match &result {
                Ok(_) => Some(false),
                Err(status) if status.code() == tonic::Code::FailedPrecondition => Some(true),
                Err(status) => {
                    if status.code() == tonic::Code::DataLoss {
                        tracing::error!(txn_id = %txn, message = status.message(), "one-phase outcome forgotten by its participant; it stays unknown");
                    } else {
                        tracing::warn!(txn_id = %txn, code = ?status.code(), "one-phase probe failed; retrying");
                    }
                    if let Some(entry) = self.table().entries.get_mut(&txn) {
                        entry.attempts[0] += 1;
                        entry.last_error[0] = format!("{:?}: {}", status.code(), status.message());
                    }
                    None
                }
            };
            if let Some(committed) = committed {
                self.table().undelivered -= 1;
                let outputs = self.handle(&txn, Input::ProbeAnswered { committed });
                self.carry_out(
                    &txn,
                    outputs.into_iter().filter(|o| !matches!(o, Output::Reply(_))).collect(),
                );
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    fn client_for(&self, txn: &TxnId, branch: usize) -> Option<ParticipantClient<Channel>> {
        let table = self.table();
        let name = table.entries.get(txn)?.participants.get(branch)?.clone();
        drop(table);
        self.clients.get(&name).cloned()
    }

    fn link_for(&self, txn: &TxnId, branch: usize) -> Option<Link> {
        let table = self.table();
        let name = table.entries.get(txn)?.participants.get(branch)?.clone();
        drop(table);
        self.links.get(&name).cloned()
    }

    /// Wall-clock milliseconds, from the configured clock.
    fn now_ms(&self) -> u64 {
        (self.config.clock)()
    }

    fn insert_recovered(&self, txn: &TxnId, replayed: &Replayed, machine: TxnMachine) {
        let machine = if replayed.kinds.len() == replayed.participants.len() {
            machine.with_kinds(replayed.kinds.clone(), replayed.mode)
        } else {
            machine
        };
        let mut entry = Entry::new(replayed.participants.clone(), machine, Epoch(0));
        entry.created_unix_ms = replayed.created;
        entry.decided_unix_ms = replayed.decided;
        entry.deadline_unix_ms = replayed.deadline;
        self.table().entries.insert(txn.clone(), entry);
    }

    /// Marks a transaction finished and evicts the oldest finished ones past the retention.
    fn finish(&self, txn: &TxnId) {
        let mut table = self.table();
        if let Some(entry) = table.entries.get_mut(txn) {
            if entry.finished_unix_ms == 0 {
                entry.finished_unix_ms = self.now_ms();
            }
            debug_assert!(entry.finished());
        }
        table.finished.push_back(txn.clone());
        while table.finished.len() > self.config.max_retained {
            let Some(old) = table.finished.pop_front() else { break };
            if let Some(evicted) = table.entries.remove(&old) {
                // A fenced id has no creation time: the fence (its finish) bounds when it was
                // first submitted. So does recovery, which finishes what it replays.
                let created = match (evicted.created_unix_ms, evicted.finished_unix_ms) {
                    (0, 0) => self.now_ms(),
                    (0, finished) => finished,
                    (created, _) => created,
                };
                table.forgotten_before_unix_ms = table.forgotten_before_unix_ms.max(created);
                let age_ms = self.now_ms().saturating_sub(table.forgotten_before_unix_ms);
                // At most one warning every ten seconds.
                static LAST_WARNED_UNIX_MS: std::sync::atomic::AtomicU64 =
                    std::sync::atomic::AtomicU64::new(0);
                let last = LAST_WARNED_UNIX_MS.load(Ordering::Relaxed);
                if age_ms < 10 * CLOCK_SKEW_MARGIN_MS
                    && self.now_ms() > last + 10_000
                    && LAST_WARNED_UNIX_MS
                        .compare_exchange(last, self.now_ms(), Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        age_ms,
                        retained = self.config.max_retained,
                        "forgetting transactions only {age_ms} ms old: new ids submitted within \
                         {CLOCK_SKEW_MARGIN_MS} ms of them are refused; raise --retain"
                    );
                }
            }
        }
    }

    /// Appends `record` and waits until it is durable.
    async fn force(&self, record: &CoordinatorRecord) -> Result<(), CoordinatorError> {
        let lsn = self.append(record)?;
        self.wal.wait_durable(lsn).await.map_err(|e| self.fail(e.to_string()))
    }

    fn append(&self, record: &CoordinatorRecord) -> Result<Lsn, CoordinatorError> {
        self.refuse_if_failed()?;
        let lsn = self.wal.append(&record.encode()).map_err(|e| self.fail(e.to_string()))?;
        self.records_since_checkpoint.fetch_add(1, Ordering::Relaxed);
        Ok(lsn)
    }

    /// A failpoint (test builds only); an injected error is a decision-log failure.
    pub fn failpoint(&self, point: &'static str) -> Result<(), CoordinatorError> {
        concord_failpoints::hit(point).map_err(|injected| self.fail(injected.to_string()))
    }

    fn refuse_if_failed(&self) -> Result<(), CoordinatorError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(CoordinatorError::Fatal(
                "the coordinator stopped after a log failure".into(),
            ));
        }
        if *self.stopping.borrow() {
            return Err(CoordinatorError::ShuttingDown);
        }
        Ok(())
    }

    fn fail(&self, reason: String) -> CoordinatorError {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(%reason, "decision log failed; stopping");
            self.fatal.send_replace(Some(reason.clone()));
        }
        CoordinatorError::Fatal(reason)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        match self.table.lock() {
            Ok(guard) => guard,
            Err(_) => {
                tracing::error!("coordinator table lock poisoned by a panic; stopping");
                std::process::abort();
            }
        }
    }
}

/// Calls Prepare and classifies the answer. A transport error or timeout is never a NO.
async fn prepare(link: &Link, request: v1::PrepareRequest, timeout: Duration) -> PrepareResult {
    let one_phase = request.one_phase;
    match link.prepare(request, timeout).await {
        Ok(response) => {
            let outcome = convert::outcome_from_wire(response.outcome);
            match convert::vote_from_wire(response.vote) {
                Ok(concord_core::types::Vote::Yes)
                    if one_phase && outcome == Some(Outcome::Committed) =>
                {
                    PrepareResult::OnePhaseCommitted
                }
                Ok(concord_core::types::Vote::Yes) if one_phase => PrepareResult::Unreachable(
                    "one-phase Prepare answered YES without committing".into(),
                ),
                Ok(vote) => PrepareResult::Voted(vote),
                Err(error) => PrepareResult::Unreachable(format!("malformed vote: {error}")),
            }
        }
        Err(status) => call_failed(&status),
    }
}

/// Calls Execute and classifies the answer as [`prepare`] does.
async fn execute(
    client: &mut ParticipantClient<Channel>,
    request: v1::ExecuteRequest,
    timeout: Duration,
) -> PrepareResult {
    match tokio::time::timeout(timeout, client.execute(request)).await {
        Err(_) => PrepareResult::Timeout,
        Ok(Ok(response)) => match convert::vote_from_wire(response.into_inner().vote) {
            Ok(vote) => PrepareResult::Voted(vote),
            Err(error) => PrepareResult::Unreachable(format!("malformed vote: {error}")),
        },
        Ok(Err(status)) => call_failed(&status),
    }
}

/// A failed call: a timeout may have done its work; UNIMPLEMENTED did nothing.
fn call_failed(status: &tonic::Status) -> PrepareResult {
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => PrepareResult::Timeout,
        tonic::Code::Unimplemented => PrepareResult::Unimplemented(message),
        _ => PrepareResult::Unreachable(message),
    }
}

fn fatal(error: concord_wal::WalError) -> CoordinatorError {
    CoordinatorError::Fatal(error.to_string())
}

/// The records that rebuild one entry from a checkpoint.
fn checkpoint_records(txn: &TxnId, entry: &Entry) -> Vec<CoordinatorRecord> {
    let started = CoordinatorRecord::Started {
        txn: txn.clone(),
        participants: entry.participants.clone(),
        created_unix_ms: entry.created_unix_ms,
        deadline_unix_ms: entry.deadline_unix_ms,
    };
    let saga_started = CoordinatorRecord::SagaStarted {
        txn: txn.clone(),
        participants: entry.participants.clone(),
        kinds: entry.machine.kinds().to_vec(),
        mode: entry.machine.mode(),
        created_unix_ms: entry.created_unix_ms,
        deadline_unix_ms: entry.deadline_unix_ms,
    };
    let pending = |status: &BranchStatus| {
        matches!(status, BranchStatus::Committing | BranchStatus::Prepared | BranchStatus::Executed)
    };
    match entry.machine.phase() {
        Phase::Preparing => vec![started],
        // Steps may have executed: recovery must compensate them.
        Phase::Executing => vec![saga_started],
        Phase::Compensating(cause) => {
            let mut records = vec![
                saga_started,
                CoordinatorRecord::Aborted { txn: txn.clone(), cause: cause.clone() },
            ];
            for (branch, status) in entry.machine.branches().iter().enumerate() {
                if entry.machine.kinds()[branch] == BranchKind::Saga
                    && *status != BranchStatus::Compensating
                {
                    records.push(CoordinatorRecord::Compensated { txn: txn.clone(), branch });
                }
            }
            records
        }
        Phase::Deciding | Phase::Committing | Phase::Committed => {
            let pending: Vec<usize> = (0..entry.participants.len())
                .filter(|&b| pending(&entry.machine.branches()[b]))
                .collect();
            // STARTED too: it carries the creation time, which the forgotten horizon needs.
            let mut records = vec![
                started,
                CoordinatorRecord::Commit {
                    txn: txn.clone(),
                    participants: entry.participants.clone(),
                    pending: pending.clone(),
                    decided_unix_ms: entry.decided_unix_ms,
                },
            ];
            if pending.is_empty() {
                records.push(CoordinatorRecord::End { txn: txn.clone() });
            }
            records
        }
        Phase::Aborted(AbortCause::Fenced) => vec![CoordinatorRecord::FencedAt {
            txn: txn.clone(),
            fenced_unix_ms: entry.created_unix_ms,
        }],
        Phase::Aborted(cause) => {
            vec![started, CoordinatorRecord::Aborted { txn: txn.clone(), cause: cause.clone() }]
        }
    }
}

/// What replay learned about one transaction.
struct Replayed {
    participants: Vec<String>,
    created: u64,
    decided: u64,
    deadline: u64,
    state: ReplayedState,
    /// Each branch's kind, from a saga's STARTED record (empty: two-phase only).
    kinds: Vec<BranchKind>,
    mode: TxnMode,
    /// Saga steps known to be compensated.
    compensated: BTreeSet<usize>,
    /// Every saga step that needed it was compensated.
    compensation_done: bool,
}

impl Replayed {
    fn new(participants: Vec<String>, created: u64, deadline: u64, state: ReplayedState) -> Self {
        Replayed {
            participants,
            created,
            decided: 0,
            deadline,
            state,
            kinds: Vec::new(),
            mode: TxnMode::TwoPhase,
            compensated: BTreeSet::new(),
            compensation_done: false,
        }
    }
}

enum ReplayedState {
    Started,
    Committing { pending: Vec<usize> },
    Finished(Phase),
}

/// Rebuilds the table from the decision log.
#[derive(Default)]
struct Replay {
    max_epoch: Epoch,
    forgotten_before_unix_ms: u64,
    txns: BTreeMap<TxnId, Replayed>,
    checkpoint: Option<(u64, Epoch, Vec<CoordinatorRecord>)>,
    /// Records appended by running transactions while a checkpoint was being written: applied
    /// again on top of the checkpoint's state (each record is idempotent on replay).
    interleaved: Vec<CoordinatorRecord>,
}

impl Replay {
    fn fenced(&mut self, txn: TxnId, fenced_unix_ms: u64) {
        self.txns.entry(txn).or_insert_with(|| {
            let state = ReplayedState::Finished(Phase::Aborted(AbortCause::Fenced));
            Replayed::new(Vec::new(), fenced_unix_ms, 0, state)
        });
    }

    fn apply(&mut self, record: CoordinatorRecord) {
        let in_checkpoint = matches!(
            record,
            CoordinatorRecord::CheckpointBegin { .. }
                | CoordinatorRecord::CheckpointEntries(_)
                | CoordinatorRecord::CheckpointEnd { .. }
        );
        if self.checkpoint.is_some() && !in_checkpoint {
            self.interleaved.push(record.clone());
        }
        match record {
            CoordinatorRecord::Epoch(epoch) => self.max_epoch = self.max_epoch.max(epoch),
            CoordinatorRecord::Started { txn, participants, created_unix_ms, deadline_unix_ms } => {
                self.txns.entry(txn).or_insert_with(|| {
                    Replayed::new(
                        participants,
                        created_unix_ms,
                        deadline_unix_ms,
                        ReplayedState::Started,
                    )
                });
            }
            CoordinatorRecord::SagaStarted {
                txn,
                participants,
                kinds,
                mode,
                created_unix_ms,
                deadline_unix_ms,
            } => {
                // After the lazy STARTED of its two-phase branches, if any.
                let entry = self.txns.entry(txn).or_insert_with(|| {
                    Replayed::new(
                        participants,
                        created_unix_ms,
                        deadline_unix_ms,
                        ReplayedState::Started,
                    )
                });
                entry.kinds = kinds;
                entry.mode = mode;
            }
            CoordinatorRecord::Compensated { txn, branch } => {
                if let Some(entry) = self.txns.get_mut(&txn) {
                    entry.compensated.insert(branch);
                }
            }
            CoordinatorRecord::CompensationDone { txn } => {
                if let Some(entry) = self.txns.get_mut(&txn) {
                    entry.compensation_done = true;
                }
            }
            CoordinatorRecord::Commit { txn, participants, pending, decided_unix_ms } => {
                // Without its STARTED record (lazy, or not in a checkpoint) the decision time
                // bounds the creation time, which the forgotten horizon needs.
                let (created, deadline, kinds, mode) = match self.txns.get(&txn) {
                    Some(t) if t.created != 0 => (t.created, t.deadline, t.kinds.clone(), t.mode),
                    Some(t) => (decided_unix_ms, t.deadline, t.kinds.clone(), t.mode),
                    None => (decided_unix_ms, 0, Vec::new(), TxnMode::TwoPhase),
                };
                let state = ReplayedState::Committing { pending };
                let mut replayed = Replayed::new(participants, created, deadline, state);
                replayed.decided = decided_unix_ms;
                replayed.kinds = kinds;
                replayed.mode = mode;
                self.txns.insert(txn, replayed);
            }
            CoordinatorRecord::Aborted { txn, cause } => {
                let entry = self
                    .txns
                    .entry(txn)
                    .or_insert_with(|| Replayed::new(Vec::new(), 0, 0, ReplayedState::Started));
                if !matches!(entry.state, ReplayedState::Committing { .. }) {
                    entry.state = ReplayedState::Finished(Phase::Aborted(cause));
                }
            }
            CoordinatorRecord::Fenced { txn } => self.fenced(txn, 0),
            CoordinatorRecord::FencedAt { txn, fenced_unix_ms } => {
                self.fenced(txn, fenced_unix_ms);
            }
            CoordinatorRecord::End { txn } => {
                if let Some(entry) = self.txns.get_mut(&txn) {
                    entry.state = ReplayedState::Finished(Phase::Committed);
                }
            }
            CoordinatorRecord::CheckpointBegin { id, epoch, forgotten_before_unix_ms } => {
                self.forgotten_before_unix_ms =
                    self.forgotten_before_unix_ms.max(forgotten_before_unix_ms);
                self.checkpoint = Some((id, epoch, Vec::new()));
                self.interleaved.clear();
            }
            CoordinatorRecord::CheckpointEntries(entries) => {
                if let Some((_, _, records)) = &mut self.checkpoint {
                    records.extend(entries);
                }
            }
            CoordinatorRecord::CheckpointEnd { id } => {
                if let Some((begin, epoch, records)) = self.checkpoint.take()
                    && begin == id
                {
                    let max_epoch = self.max_epoch.max(epoch);
                    let interleaved = std::mem::take(&mut self.interleaved);
                    let forgotten_before_unix_ms = self.forgotten_before_unix_ms;
                    *self = Replay { max_epoch, forgotten_before_unix_ms, ..Replay::default() };
                    for record in records.into_iter().chain(interleaved) {
                        self.apply(record);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(id: &str) -> TxnId {
        TxnId::parse(id, "txn_id").unwrap()
    }

    fn started(id: &str) -> CoordinatorRecord {
        CoordinatorRecord::Started {
            txn: txn(id),
            participants: vec!["a".into(), "b".into()],
            created_unix_ms: 1,
            deadline_unix_ms: 2,
        }
    }

    fn commit(id: &str, pending: Vec<usize>) -> CoordinatorRecord {
        CoordinatorRecord::Commit {
            txn: txn(id),
            participants: vec!["a".into(), "b".into()],
            pending,
            decided_unix_ms: 3,
        }
    }

    fn state(replay: &Replay, id: &str) -> &'static str {
        match replay.txns.get(&txn(id)).map(|t| &t.state) {
            None => "unknown",
            Some(ReplayedState::Started) => "started",
            Some(ReplayedState::Committing { .. }) => "committing",
            Some(ReplayedState::Finished(Phase::Committed)) => "committed",
            Some(ReplayedState::Finished(_)) => "aborted",
        }
    }

    /// A committed transaction's checkpoint keeps its creation time (found by a 10-minute chaos
    /// run: without it a restart forgot recent commits first and refused ids submitted just
    /// before the crash as possibly forgotten).
    #[test]
    fn a_checkpointed_commit_keeps_its_creation_time() {
        let machine = TxnMachine::finished(2, Phase::Committed);
        let mut entry = Entry::new(vec!["a".into(), "b".into()], machine, Epoch(1));
        entry.created_unix_ms = 123;
        let mut replay = Replay::default();
        for record in checkpoint_records(&txn("c"), &entry) {
            replay.apply(record);
        }
        assert_eq!(replay.txns[&txn("c")].created, 123);
        assert_eq!(state(&replay, "c"), "committed");
    }

    /// Replay rebuilds each kind of transaction; a checkpoint replaces what came before it, and
    /// records that running transactions appended between the checkpoint's begin and end (a
    /// decision taken meanwhile) are applied on top rather than lost.
    #[test]
    fn replay_keeps_decisions_interleaved_with_a_checkpoint() {
        let mut replay = Replay::default();
        for record in [
            CoordinatorRecord::Epoch(Epoch(4)),
            started("undecided"),
            started("decided-during-checkpoint"),
            commit("delivering", vec![0, 1]),
            started("aborted"),
            CoordinatorRecord::Aborted { txn: txn("aborted"), cause: AbortCause::Deadline },
            CoordinatorRecord::Fenced { txn: txn("fenced") },
            commit("done", vec![0]),
            CoordinatorRecord::End { txn: txn("done") },
            CoordinatorRecord::CheckpointBegin {
                id: 9,
                epoch: Epoch(4),
                forgotten_before_unix_ms: 77,
            },
            // Interleaved: decided after the checkpoint's snapshot was taken.
            commit("decided-during-checkpoint", vec![1]),
            CoordinatorRecord::CheckpointEntries(vec![
                started("undecided"),
                started("decided-during-checkpoint"),
                commit("delivering", vec![1]),
                started("aborted"),
                CoordinatorRecord::Aborted { txn: txn("aborted"), cause: AbortCause::Deadline },
                CoordinatorRecord::Fenced { txn: txn("fenced") },
                commit("done", vec![]),
                CoordinatorRecord::End { txn: txn("done") },
            ]),
            CoordinatorRecord::CheckpointEnd { id: 9 },
            // An unfinished checkpoint at the tail changes nothing.
            CoordinatorRecord::CheckpointBegin {
                id: 10,
                epoch: Epoch(4),
                forgotten_before_unix_ms: 70,
            },
        ] {
            replay.apply(record);
        }
        assert_eq!(replay.max_epoch, Epoch(4));
        assert_eq!(replay.forgotten_before_unix_ms, 77, "the horizon survives, and only grows");
        assert_eq!(state(&replay, "undecided"), "started");
        assert_eq!(state(&replay, "decided-during-checkpoint"), "committing");
        assert_eq!(state(&replay, "delivering"), "committing");
        assert_eq!(state(&replay, "aborted"), "aborted");
        assert_eq!(state(&replay, "fenced"), "aborted");
        assert_eq!(state(&replay, "done"), "committed");
        match &replay.txns[&txn("delivering")].state {
            ReplayedState::Committing { pending } => assert_eq!(pending, &vec![1]),
            _ => unreachable!(),
        }
    }
}

#[cfg(test)]
mod resolve_tests {
    use super::*;
    use concord_wal::MemoryWal;
    use std::sync::atomic::AtomicU64;

    static TEST_NOW_MS: AtomicU64 = AtomicU64::new(1_000_000);

    fn test_clock() -> u64 {
        TEST_NOW_MS.load(Ordering::SeqCst)
    }

    /// Found by a 10-minute `concord chaos` run: once the coordinator started forgetting,
    /// evicting a fenced id (which has no creation time) moved the forgotten horizon to the
    /// present, so every new id was refused as "maybe forgotten" and nothing committed again.
    /// A fenced id's horizon is when it was fenced.
    #[tokio::test]
    async fn forgetting_a_fenced_id_does_not_refuse_new_ids() {
        let config = CoordinatorConfig {
            participants: [("a".to_string(), "127.0.0.1:1".to_string())].into(),
            max_retained: 2,
            clock: test_clock,
            ..CoordinatorConfig::default()
        };
        let coordinator = Coordinator::recover(config, MemoryWal::new(1 << 20)).await.unwrap();
        let id = |s: &str| TxnId::parse(s, "txn_id").unwrap();
        coordinator.fence(&id("f1"), 999_000).await.unwrap();
        coordinator.fence(&id("f2"), 999_000).await.unwrap();
        TEST_NOW_MS.store(2_000_000, Ordering::SeqCst);
        coordinator.fence(&id("f3"), 1_999_000).await.unwrap(); // evicts f1, fenced at 1,000,000
        assert_eq!(coordinator.forgotten_before_unix_ms(), 1_000_000);
        let new = NewTxn {
            txn: id("new"),
            participants: vec!["a".into()],
            operations: vec![Vec::new()],
            timeout: Duration::from_millis(100),
            first_submitted_unix_ms: 1_500_000,
            mode: TxnMode::TwoPhase,
            depends_on: None,
            staged: false,
        };
        // It runs (a one-phase transaction to an unreachable participant: still PENDING while
        // its outcome is probed), rather than being refused as possibly forgotten.
        let result = coordinator.submit(new).await;
        assert!(result.is_ok(), "{result:?}");
    }

    /// Found by the same 10-minute run, after the fix above: a restarted coordinator replayed
    /// fenced ids (and commits whose STARTED record was lazy) without a time, counted them as
    /// finished at recovery, and evicting them moved the horizon to the restart, so unknown
    /// ids submitted before it could no longer be settled. The log now keeps when each id was
    /// fenced, and a decision's time bounds its creation.
    #[tokio::test]
    async fn a_restart_keeps_the_times_the_horizon_needs() {
        static NOW: AtomicU64 = AtomicU64::new(1_000_000);
        fn clock() -> u64 {
            NOW.load(Ordering::SeqCst)
        }
        let config = CoordinatorConfig {
            participants: [("a".to_string(), "127.0.0.1:1".to_string())].into(),
            max_retained: 20,
            clock,
            ..CoordinatorConfig::default()
        };
        let wal = MemoryWal::new(1 << 20);
        let coordinator = Coordinator::recover(config.clone(), wal.clone()).await.unwrap();
        let id = |s: &str| TxnId::parse(s, "txn_id").unwrap();
        for f in 0..20u64 {
            NOW.store(1_000_000 + f * 1_000, Ordering::SeqCst);
            // Ids in the opposite order to their times: f19 is the oldest.
            coordinator.fence(&id(&format!("f{}", 19 - f)), 999_000).await.unwrap();
        }
        coordinator.stop();
        drop(coordinator);
        NOW.store(5_000_000, Ordering::SeqCst);
        let recovered = Coordinator::recover(config, wal).await.unwrap();
        // Evicts the oldest: f19, fenced at 1,000,000 (not the restart's time, and not f0,
        // which the replay sees first).
        recovered.fence(&id("g1"), 4_999_000).await.unwrap();
        assert_eq!(recovered.forgotten_before_unix_ms(), 1_000_000);
    }

    /// Found by the simulation (seed 25 after seed 24): a coordinator crashed before its lazy
    /// STARTED record was synced, a participant that had voted YES asked about the id and was
    /// told "aborted", then the client's retry of the same id ran it again and committed it.
    /// An in-doubt question about an unknown id must fence it.
    #[tokio::test]
    async fn answering_aborted_for_an_unknown_id_fences_it() {
        let config = CoordinatorConfig {
            participants: [("a".to_string(), "127.0.0.1:1".to_string())].into(),
            ..CoordinatorConfig::default()
        };
        let wal = MemoryWal::new(1 << 20);
        let coordinator = Coordinator::recover(config.clone(), wal.clone()).await.unwrap();
        let id = TxnId::parse("lost-started", "txn_id").unwrap();
        assert_eq!(coordinator.resolve(&id).await.unwrap(), Outcome::Aborted);

        // The client's retry of that id is told it aborted; it does not run again.
        let retry = NewTxn {
            txn: id.clone(),
            participants: vec!["a".into()],
            operations: vec![Vec::new()],
            timeout: Duration::from_millis(100),
            first_submitted_unix_ms: 0,
            mode: TxnMode::TwoPhase,
            depends_on: None,
            staged: false,
        };
        let entry = coordinator.submit(retry.clone()).await.unwrap();
        assert_eq!(entry.outcome(), Outcome::Aborted);
        assert_eq!(entry.machine.phase(), &Phase::Aborted(AbortCause::Fenced));

        // The fence is durable: it survives a crash of the coordinator.
        coordinator.stop();
        drop(coordinator);
        wal.crash();
        let recovered = Coordinator::recover(config, wal).await.unwrap();
        let entry = recovered.submit(retry).await.unwrap();
        assert_eq!(entry.machine.phase(), &Phase::Aborted(AbortCause::Fenced));
    }
}
