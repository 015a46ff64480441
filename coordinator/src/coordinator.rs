//! The [`Coordinator`]: admits transactions (Submit) and hands each to its own task
//! (`task.rs`), answers from the table (GetTransaction, ListTransactions, ResolveTransaction),
//! fences unknown ids, and takes checkpoints. Recovery (`recovery.rs`) builds it; interactive
//! transactions (`interactive.rs`) extend it.
//!
//! Every transaction runs in its own task, so a client that disconnects cannot stop a decision
//! half-way. Two bounds hold as semaphore permits: undecided transactions (`max_inflight`, a
//! permit held until the client is answered) and unfinished ones (`max_undelivered`, a permit
//! held until every Commit or compensation is delivered).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use concord_core::coordinator::replay::{CheckpointedTxn, checkpoint_records};
use concord_core::coordinator::{
    AbortCause, BranchKind, CoordinatorRecord, Phase, Plan, TxnMachine, TxnMode,
};
use concord_core::types::{Epoch, Outcome, TxnId};
use concord_proto::v1;
use tokio::sync::{Semaphore, oneshot, watch};

use crate::config::{CoordinatorConfig, CoordinatorError};
use crate::delivery::RetryPolicy;
use crate::interactive::Active;
use crate::link::Link;
use crate::log::{DecisionLog, LogPosition};
use crate::table::{Entry, Table};
use crate::task::TxnTask;

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

/// The coordinator. Shared behind an `Arc`.
pub struct Coordinator<L: DecisionLog> {
    pub(crate) config: CoordinatorConfig,
    pub(crate) epoch: Epoch,
    log: L,
    table: Mutex<Table>,
    /// Every call to each configured participant.
    links: BTreeMap<String, Link>,
    /// One permit per undecided transaction, held until its client is answered.
    inflight: Arc<Semaphore>,
    /// One permit per unfinished transaction, held until it is finished.
    pub(crate) unfinished: Arc<Semaphore>,
    records_since_checkpoint: AtomicU64,
    checkpointing: tokio::sync::Mutex<()>,
    failed: AtomicBool,
    fatal: watch::Sender<Option<String>>,
    /// Fires when the coordinator shuts down, ending delivery loops (recovery resumes them).
    pub(crate) stopping: watch::Sender<bool>,
    /// Participants that answered Prepare with UNIMPLEMENTED: in AUTO mode their branches run
    /// as saga steps from the start. At most one entry per configured participant.
    saga_only: Mutex<BTreeSet<String>>,
    /// Interactive transactions begun and not yet committed or rolled back (at most
    /// `max_inflight`; kept in memory only: a restart loses them, and their participants drop
    /// what they staged at the deadline).
    pub(crate) active: Mutex<BTreeMap<TxnId, Active>>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked (each critical section
/// is a few field updates).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl<L: DecisionLog> Coordinator<L> {
    /// A coordinator over `log` with `epoch` (already durable), before any transaction is
    /// known. Recovery fills it.
    pub(crate) fn new(
        config: CoordinatorConfig,
        epoch: Epoch,
        log: L,
        links: BTreeMap<String, Link>,
        forgotten_before_unix_ms: u64,
        records: u64,
    ) -> Coordinator<L> {
        let (fatal, _) = watch::channel(None);
        let (stopping, _) = watch::channel(false);
        Coordinator {
            inflight: Arc::new(Semaphore::new(config.max_inflight)),
            unfinished: Arc::new(Semaphore::new(config.max_undelivered)),
            table: Mutex::new(Table::new(config.max_retained, forgotten_before_unix_ms)),
            config,
            epoch,
            log,
            links,
            records_since_checkpoint: AtomicU64::new(records),
            checkpointing: tokio::sync::Mutex::new(()),
            failed: AtomicBool::new(false),
            fatal,
            stopping,
            saga_only: Mutex::new(BTreeSet::new()),
            active: Mutex::new(BTreeMap::new()),
        }
    }

    /// This coordinator's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Names of the configured participants.
    pub fn participant_names(&self) -> impl Iterator<Item = &String> {
        self.links.keys()
    }

    /// Resolves once the decision log failed.
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    /// Stops delivery loops; call when the server stops.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// The link to a configured participant.
    pub(crate) fn link(&self, participant: &str) -> Option<&Link> {
        self.links.get(participant)
    }

    /// How Commits and one-phase probes are retried.
    pub(crate) fn delivery_policy(&self) -> RetryPolicy {
        RetryPolicy {
            min_backoff: self.config.min_backoff,
            max_backoff: self.config.max_backoff,
            slow_after_attempts: None,
            slow_retry: self.config.max_backoff,
        }
    }

    /// How compensations are retried: past the attention threshold, slowly.
    pub(crate) fn compensation_policy(&self) -> RetryPolicy {
        RetryPolicy {
            slow_after_attempts: Some(self.config.attention_after_attempts),
            slow_retry: self.config.attention_retry,
            ..self.delivery_policy()
        }
    }

    /// The plan for a new transaction: in AUTO mode, participants known to be unable to
    /// prepare run as saga steps from the start.
    fn plan(&self, new: &NewTxn) -> Plan {
        let saga_only = lock(&self.saga_only);
        let kind = |participant: &String| match new.mode {
            TxnMode::TwoPhase => BranchKind::TwoPhase,
            TxnMode::Saga => BranchKind::Saga,
            TxnMode::Auto if saga_only.contains(participant) => BranchKind::Saga,
            TxnMode::Auto => BranchKind::TwoPhase,
        };
        Plan {
            kinds: new.participants.iter().map(kind).collect(),
            depends_on: new.depends_on.clone(),
            mode: new.mode,
        }
    }

    /// Remembers that `participant` cannot prepare (it answered UNIMPLEMENTED).
    pub(crate) fn mark_saga_only(&self, participant: &str) {
        if self.links.contains_key(participant) {
            lock(&self.saga_only).insert(participant.to_string());
        }
    }

    /// Runs a new transaction to a decision, or returns the state of a known one.
    pub async fn submit(self: &Arc<Self>, new: NewTxn) -> Result<Entry, CoordinatorError> {
        self.refuse_if_failed()?;
        if self.get(&new.txn).is_some() {
            return self.known(&new.txn).await;
        }
        let inflight = Arc::clone(&self.inflight).try_acquire_owned().map_err(|_| {
            CoordinatorError::Overloaded(format!(
                "{} transactions are in flight, the limit",
                self.config.max_inflight
            ))
        })?;
        let (machine, outputs) = TxnMachine::start_with(self.plan(&new));
        let created_unix_ms = self.now_ms();
        let timeout_ms = u64::try_from(new.timeout.as_millis()).unwrap_or(u64::MAX);
        let deadline_unix_ms = created_unix_ms.saturating_add(timeout_ms);
        let unfinished = {
            let mut table = self.table();
            if table.entries.contains_key(&new.txn) {
                None
            } else {
                if new.first_submitted_unix_ms != 0
                    && table.may_be_forgotten(new.first_submitted_unix_ms)
                {
                    return Err(CoordinatorError::MaybeForgotten(format!(
                        "txn_id: {} is unknown here, and first submitted at {} ms, no later \
                         than finished transactions this coordinator has forgotten (up to {} \
                         ms): it may have run already, so it is not run again",
                        new.txn,
                        new.first_submitted_unix_ms,
                        table.forgotten_before_unix_ms()
                    )));
                }
                let unfinished =
                    Arc::clone(&self.unfinished).try_acquire_owned().map_err(|_| {
                        CoordinatorError::Overloaded(format!(
                            "{} transactions are unfinished (undecided, or awaiting Commit \
                             delivery, compensation or a one-phase outcome), the limit",
                            self.config.max_undelivered
                        ))
                    })?;
                let mut entry = Entry::new(new.participants.clone(), machine.clone(), self.epoch);
                entry.created_unix_ms = created_unix_ms;
                entry.deadline_unix_ms = deadline_unix_ms;
                table.entries.insert(new.txn.clone(), entry);
                Some(unfinished)
            }
        };
        // Known already (a concurrent Submit of the same id won): the permits go unused.
        let Some(unfinished) = unfinished else { return self.known(&new.txn).await };
        let (reply, answer) = oneshot::channel();
        let task = TxnTask::submitted(Arc::clone(self), new, machine, reply, inflight, unfinished);
        task.spawn(outputs);
        answer
            .await
            .unwrap_or_else(|_| Err(CoordinatorError::Fatal("the transaction's task ended".into())))
    }

    /// The durable state of a transaction known to be in the table.
    async fn known(&self, txn: &TxnId) -> Result<Entry, CoordinatorError> {
        self.get_durable(txn).await?.ok_or_else(|| {
            CoordinatorError::NotFound(format!(
                "transaction {txn} was forgotten meanwhile (past the retention)"
            ))
        })
    }

    /// A copy of one transaction's entry, once what it says is durable: an ABORTED outcome is
    /// only told after its abort record is synced (a COMMIT is durable before the phase can say
    /// so), so no answer given can be forgotten by a crash.
    pub async fn get_durable(&self, txn: &TxnId) -> Result<Option<Entry>, CoordinatorError> {
        let Some(entry) = self.get(txn) else { return Ok(None) };
        if let Some(position) = entry.abort_position {
            self.force_position(position).await?;
        }
        Ok(Some(entry))
    }

    /// Every finished transaction forgotten so far was created at or before this time (0:
    /// nothing forgotten).
    pub fn forgotten_before_unix_ms(&self) -> u64 {
        self.table().forgotten_before_unix_ms()
    }

    /// A copy of one transaction's entry (or a view of an open interactive transaction).
    pub fn get(&self, txn: &TxnId) -> Option<Entry> {
        if let Some(entry) = self.table().entries.get(txn) {
            return Some(entry.clone());
        }
        lock(&self.active).get(txn).map(|open| open.view(self.epoch))
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
    pub(crate) async fn fence_unknown(
        &self,
        txn: &TxnId,
        submitted_unix_ms: Option<u64>,
    ) -> Result<Entry, CoordinatorError> {
        self.refuse_if_failed()?;
        let fenced = {
            let mut table = self.table();
            if table.entries.contains_key(txn) {
                None
            } else {
                if submitted_unix_ms.is_some_and(|submitted| table.may_be_forgotten(submitted)) {
                    let horizon = table.forgotten_before_unix_ms();
                    return Err(CoordinatorError::MaybeForgotten(format!(
                        "txn_id: {txn} is unknown here, and this coordinator has forgotten \
                         finished transactions created up to {horizon} ms: it cannot tell \
                         whether {txn} was one of them, so it does not fence it; \
                         submitted_unix_ms (when the id was first submitted) must be later \
                         than that"
                    )));
                }
                self.failpoint("coordinator.before_fence")?;
                let now = self.now_ms();
                let position = self.append(&CoordinatorRecord::FencedAt {
                    txn: txn.clone(),
                    fenced_unix_ms: now,
                })?;
                let machine = TxnMachine::finished(1, Phase::Aborted(AbortCause::Fenced));
                let mut entry = Entry::new(Vec::new(), machine, self.epoch);
                // The id was first submitted (if ever) before now: its bound for the horizon.
                entry.created_unix_ms = now;
                entry.finished_unix_ms = now;
                table.entries.insert(txn.clone(), entry);
                table.retire(txn, now);
                Some(position)
            }
        };
        if let Some(position) = fenced {
            self.force_position(position).await?;
            self.failpoint("coordinator.after_fence")?;
        }
        self.known(txn).await
    }

    /// Transactions in txn-id order after `after`, filtered, at most `limit`.
    pub fn list(
        &self,
        filter: impl Fn(&Entry) -> bool,
        after: Option<&TxnId>,
        limit: usize,
    ) -> Vec<(TxnId, Entry)> {
        // Open interactive transactions (at most `max_inflight`), as the views `get` gives.
        let open: Vec<(TxnId, Entry)> = lock(&self.active)
            .iter()
            .filter(|(txn, _)| after.is_none_or(|a| *txn > a))
            .map(|(txn, open)| (txn.clone(), open.view(self.epoch)))
            .filter(|(_, entry)| filter(entry))
            .take(limit)
            .collect();
        let table = self.table();
        let after = match after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        let mut matching: Vec<(TxnId, Entry)> = table
            .entries
            .range::<TxnId, _>((after, std::ops::Bound::Unbounded))
            .filter(|(_, entry)| filter(entry))
            .take(limit)
            .map(|(txn, entry)| (txn.clone(), entry.clone()))
            .collect();
        drop(table);
        matching.extend(open);
        matching.sort_by(|a, b| a.0.cmp(&b.0));
        matching.truncate(limit);
        matching
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
        let (start, entries) = {
            let table = self.table();
            let mut entries = Vec::new();
            for (txn, entry) in &table.entries {
                entries.extend(checkpoint_records(CheckpointedTxn {
                    txn,
                    participants: &entry.participants,
                    machine: &entry.machine,
                    created_unix_ms: entry.created_unix_ms,
                    decided_unix_ms: entry.decided_unix_ms,
                    deadline_unix_ms: entry.deadline_unix_ms,
                }));
            }
            self.refuse_if_failed()?;
            let start = self
                .log
                .begin_checkpoint(self.now_ms(), self.epoch, table.forgotten_before_unix_ms())
                .map_err(|e| self.fail(e.to_string()))?;
            self.records_since_checkpoint.store(0, Ordering::Relaxed);
            (start, entries)
        };
        let end =
            self.log.write_checkpoint(start, entries).map_err(|e| self.fail(e.to_string()))?;
        self.failpoint("coordinator.before_checkpoint")?;
        self.force_position(end).await?;
        self.log.truncate_before(start.position).map_err(|e| self.fail(e.to_string()))?;
        self.failpoint("coordinator.after_checkpoint")?;
        tracing::info!(checkpoint_position = start.position.0, "coordinator checkpoint taken");
        Ok(())
    }

    /// Marks a finished transaction finished (evicting the oldest past the retention).
    pub(crate) fn retire(&self, txn: &TxnId) {
        let now = self.now_ms();
        self.table().retire(txn, now);
    }

    /// Every step of an aborted saga that needed it is compensated: log it and retire the
    /// transaction.
    pub(crate) fn compensation_done(&self, txn: &TxnId) -> Result<(), CoordinatorError> {
        if let Some(entry) = self.table().entries.get_mut(txn) {
            entry.needs_attention = false;
        }
        self.append(&CoordinatorRecord::CompensationDone { txn: txn.clone() })?;
        self.retire(txn);
        Ok(())
    }

    /// Updates one transaction's entry, if it is still in the table.
    pub(crate) fn update(&self, txn: &TxnId, change: impl FnOnce(&mut Entry)) {
        if let Some(entry) = self.table().entries.get_mut(txn) {
            change(entry);
        }
    }

    /// Counts one delivery attempt to `branch` and its error (`None`: it succeeded); returns
    /// the attempts so far.
    pub(crate) fn record_attempt(&self, txn: &TxnId, branch: usize, error: Option<&str>) -> u32 {
        let mut attempts = 0;
        self.update(txn, |entry| {
            if let Some(delivery) = entry.delivery.get_mut(branch) {
                delivery.attempts = delivery.attempts.saturating_add(1);
                attempts = delivery.attempts;
                if let Some(error) = error {
                    error.clone_into(&mut delivery.last_error);
                }
            }
            if error.is_none() {
                entry.needs_attention = false;
            }
        });
        attempts
    }

    /// After `attempts` failed compensations of one step: whether the transaction needs an
    /// operator now for the first time (it is marked NEEDS_ATTENTION; it keeps being retried).
    pub(crate) fn needs_attention(&self, txn: &TxnId, attempts: u32) -> bool {
        let mut newly = false;
        if attempts >= self.config.attention_after_attempts {
            self.update(txn, |entry| {
                newly = !entry.needs_attention;
                entry.needs_attention = true;
            });
        }
        newly
    }

    /// Wall-clock milliseconds, from the configured clock.
    pub(crate) fn now_ms(&self) -> u64 {
        (self.config.clock)()
    }

    /// Appends `record` and waits until it is durable.
    pub(crate) async fn force(&self, record: &CoordinatorRecord) -> Result<(), CoordinatorError> {
        let position = self.append(record)?;
        self.force_position(position).await
    }

    /// Waits until everything up to `position` is durable.
    pub(crate) async fn force_position(
        &self,
        position: LogPosition,
    ) -> Result<(), CoordinatorError> {
        self.log.force(position).await.map_err(|e| self.fail(e.to_string()))
    }

    /// Appends `record` (durable once forced, or with the next group commit).
    pub(crate) fn append(
        &self,
        record: &CoordinatorRecord,
    ) -> Result<LogPosition, CoordinatorError> {
        self.refuse_if_failed()?;
        let position = self.log.append(record).map_err(|e| self.fail(e.to_string()))?;
        self.records_since_checkpoint.fetch_add(1, Ordering::Relaxed);
        Ok(position)
    }

    /// Forces the new epoch's record: the first thing a recovered coordinator writes.
    pub(crate) async fn force_epoch(log: &L, epoch: Epoch) -> Result<(), CoordinatorError> {
        log.append_forced(&CoordinatorRecord::Epoch(epoch))
            .await
            .map(|_| ())
            .map_err(|e| CoordinatorError::Fatal(e.to_string()))
    }

    /// A failpoint (test builds only); an injected error is a decision-log failure.
    pub fn failpoint(&self, point: &'static str) -> Result<(), CoordinatorError> {
        concord_failpoints::hit(point).map_err(|injected| self.fail(injected.to_string()))
    }

    /// Refuses work once the log failed or the coordinator is stopping.
    pub(crate) fn refuse_if_failed(&self) -> Result<(), CoordinatorError> {
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

    /// Marks the coordinator failed (the process stops and recovers from the log).
    pub(crate) fn fail(&self, reason: String) -> CoordinatorError {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(%reason, "decision log failed; stopping");
            self.fatal.send_replace(Some(reason.clone()));
        }
        CoordinatorError::Fatal(reason)
    }

    /// The table, locked. A panic while it was held leaves it possibly half-updated: stop
    /// rather than answer from it.
    pub(crate) fn table(&self) -> MutexGuard<'_, Table> {
        match self.table.lock() {
            Ok(guard) => guard,
            Err(_) => {
                tracing::error!("coordinator table lock poisoned by a panic; stopping");
                std::process::abort();
            }
        }
    }

    /// The interactive transactions open now, locked.
    pub(crate) fn active(&self) -> MutexGuard<'_, BTreeMap<TxnId, Active>> {
        lock(&self.active)
    }
}
