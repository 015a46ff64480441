//! The participant's protocol state: which branches are prepared, which keys they lock, and
//! which decisions it remembers (for idempotency and barriers).
//!
//! The driver holds the engine behind a mutex and calls one `handle_*` method per message. A
//! method that must make something durable calls the `log` callback it was given, which appends
//! the record to the write-ahead log and returns its LSN, so the log's order is the engine's
//! order. The method then returns a step telling the driver what to wait for before answering:
//! the type flow carries DESIGN.md's rules:
//!
//! - rule 1: a YES vote is an [`PrepareStep::AfterDurable`]: the driver replies only once the
//!   PREPARED record is durable; the same holds for acknowledging Commit;
//! - rule 2: Abort appends its record but never waits for it ([`AbortStep`] has nothing to wait
//!   for);
//! - rule 3: a prepared branch leaves only by Commit or Abort;
//! - rule 4: Abort of a committed branch is refused ([`EngineError::WrongState`]);
//! - rule 5: every message is idempotent, and an Abort before its Prepare leaves a barrier that
//!   refuses the Prepare; a Prepare past its deadline is refused.
//!
//! Locks are taken without waiting: a key locked by another branch makes the vote NO(conflict)
//! at once, so no deadlock can form.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::limits;
use crate::record::{
    CheckpointBranch, CheckpointDecision, CheckpointStep, ParticipantRecord, Write,
};
use crate::types::{Epoch, Expect, InvalidInput, Key, NoReason, Operation, Outcome, TxnId, Vote};
use crate::types::{counter, validate_operations};

/// A committed value with its version (the LSN of the record that committed it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The LSN of the record that last wrote the key.
    pub version: u64,
    /// The committed value.
    pub value: Vec<u8>,
}

/// Read access to committed state, as Prepare needs it to evaluate checks and counters.
pub trait CommittedState {
    /// The store's error; always fatal to the participant.
    type Error;
    /// The committed value of `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, Self::Error>;
}

/// Limits the engine enforces (at most those in [`limits`]).
#[derive(Clone, Copy, Debug)]
pub struct EngineLimits {
    /// Branches prepared at once.
    pub max_prepared: usize,
    /// Decisions remembered at once.
    pub max_remembered: usize,
    /// Executed saga steps held (with their undo) at once.
    pub max_steps: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            max_prepared: limits::MAX_PREPARED_BRANCHES,
            max_remembered: limits::MAX_REMEMBERED_DECISIONS,
            max_steps: limits::MAX_EXECUTED_STEPS,
        }
    }
}

/// A Prepare, as the engine sees it.
#[derive(Clone, Debug)]
pub struct PrepareInput {
    /// The transaction.
    pub txn: TxnId,
    /// The sending coordinator's epoch.
    pub epoch: Epoch,
    /// The branch's operations, in order.
    pub operations: Vec<Operation>,
    /// Refuse after this wall-clock time.
    pub deadline_unix_ms: u64,
    /// Commit at once on YES (the only branch).
    pub one_phase: bool,
}

/// The answer to a Prepare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrepareReply {
    /// The vote.
    pub vote: Vote,
    /// `Pending` after a two-phase YES, `Committed` after a one-phase commit (or a duplicate of
    /// a committed branch), `Aborted` after NO.
    pub outcome: Outcome,
}

/// What the driver does after [`ParticipantEngine::handle_prepare`].
#[derive(Debug, PartialEq, Eq)]
pub enum PrepareStep {
    /// Reply now; nothing needs to be durable.
    Reply(PrepareReply),
    /// Wait until `lsn` is durable; then, if `apply` is set (a one-phase commit), apply the
    /// writes with version `lsn` and call [`ParticipantEngine::commit_applied`]; then reply.
    AfterDurable {
        /// The record to wait for.
        lsn: u64,
        /// Writes to apply (one-phase commit only).
        apply: Option<Vec<Write>>,
        /// The reply.
        reply: PrepareReply,
    },
}

/// What the driver does after [`ParticipantEngine::handle_commit`] or
/// [`ParticipantEngine::handle_compensate`].
#[derive(Debug, PartialEq, Eq)]
pub enum CommitStep {
    /// Already done: acknowledge now.
    Acknowledge,
    /// Wait until `lsn` is durable (nothing to apply: a saga's Commit releasing a step's undo);
    /// then acknowledge.
    Durable {
        /// The record to wait for.
        lsn: u64,
    },
    /// Wait until `lsn` is durable; then, if `apply` is set, apply the writes with version `lsn`
    /// and call [`ParticipantEngine::commit_applied`]; then acknowledge.
    AfterDurable {
        /// The commit record to wait for.
        lsn: u64,
        /// Writes to apply (only for the first Commit of the branch).
        apply: Option<Vec<Write>>,
    },
}

/// After [`ParticipantEngine::handle_abort`] the driver acknowledges at once: an abort record is
/// never waited for.
#[derive(Debug, PartialEq, Eq)]
pub enum AbortStep {
    /// The branch was prepared and is now aborted, its locks released.
    Aborted,
    /// Already aborted: nothing changed.
    AlreadyAborted,
    /// The Abort came before any Prepare: a barrier now refuses the Prepare.
    Barrier,
}

/// Why the engine refused a message outright (rather than voting NO).
#[derive(Debug, thiserror::Error)]
pub enum EngineError<E> {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The message contradicts what this participant already knows (Abort after Commit,
    /// Commit after Abort): a protocol violation by the sender. Nothing changed.
    #[error("{0}")]
    WrongState(String),
    /// The branch is committing: the refusal stands, but only once the commit record at `lsn`
    /// is durable (a one-phase probe reads this refusal as "committed", so it must not be told
    /// before the commit could survive a crash).
    #[error("{message}")]
    Committing {
        /// The commit record to wait for before refusing.
        lsn: u64,
        /// The refusal.
        message: String,
    },
    /// At a limit (RESOURCE_EXHAUSTED): too many decisions remembered to record another
    /// barrier. Nothing changed; the sender may retry.
    #[error("{0}")]
    Overloaded(String),
    /// The outcome may have been known here once and forgotten (it is older than the
    /// retention): the participant cannot answer without guessing, so it refuses.
    #[error("{0}")]
    Forgotten(String),
    /// The message may succeed later (a key it needs is locked by a prepared branch, or the
    /// step is still being applied): nothing changed; retry (ABORTED).
    #[error("{0}")]
    Busy(String),
    /// Compensate cannot undo the step: a key it wrote changed since (another transaction
    /// wrote it, which sagas do not prevent). Nothing changed; an operator must look
    /// (FAILED_PRECONDITION).
    #[error("{0}")]
    CannotCompensate(String),
    /// Reading committed state or appending to the log failed: fatal.
    #[error("storage failed: {0}")]
    Storage(E),
}

/// A prepared branch.
#[derive(Clone, Debug)]
struct Branch {
    epoch: Epoch,
    writes: Vec<Write>,
    locked: Vec<Key>,
    deadline_unix_ms: u64,
    prepared_lsn: u64,
    /// Set once Commit was logged; the writes may not be applied yet.
    commit_lsn: Option<u64>,
}

/// An executed saga step, holding what undoes it until the saga commits or compensates it.
#[derive(Clone, Debug)]
struct Step {
    epoch: Epoch,
    writes: Vec<Write>,
    /// The before-image of every key in `writes`.
    undo: Vec<Write>,
    deadline_unix_ms: u64,
    /// The LSN of the EXECUTED record: the version its writes took.
    executed_lsn: u64,
}

/// A remembered decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Decided {
    committed: bool,
    forget_after_unix_ms: u64,
}

/// One in-doubt branch, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InDoubt {
    /// The transaction.
    pub txn: TxnId,
    /// The epoch that prepared it.
    pub epoch: Epoch,
    /// The keys it holds.
    pub locked: Vec<Key>,
    /// Its PREPARED record.
    pub prepared_lsn: u64,
    /// Its Prepare deadline: by then the coordinator has decided, or will presume abort.
    pub deadline_unix_ms: u64,
}

/// The participant's protocol state. See the module documentation.
#[derive(Debug, Default)]
pub struct ParticipantEngine {
    limits: EngineLimits,
    /// Prepared branches (including those whose commit is logged but not yet applied, and
    /// saga steps whose Execute or Compensate is logged but not yet applied: they hold their
    /// keys locked until then).
    branches: BTreeMap<TxnId, Branch>,
    /// Executed saga steps, until the saga's Commit or the step's Compensate.
    steps: BTreeMap<TxnId, Step>,
    /// Which branch holds each locked key.
    locks: HashMap<Key, TxnId>,
    /// Decisions remembered so duplicates and late messages get the same answer.
    decided: HashMap<TxnId, Decided>,
    /// `decided` in insertion order, for forgetting; entries whose decision was replaced are
    /// skipped when popped.
    expiry: VecDeque<(u64, TxnId)>,
    /// The highest coordinator epoch seen.
    max_epoch: Epoch,
    /// Every decision forgotten so far was due to be forgotten at or before this time, so a
    /// decision due after it is certainly still remembered.
    forgotten_before_unix_ms: u64,
    /// Incremented per checkpoint.
    checkpoint_id: u64,
    /// A checkpoint being replayed, until its end record.
    replaying_checkpoint: Option<ParticipantEngineSnapshot>,
    /// Records replayed between that checkpoint's begin and end records (appended while its
    /// body was being written), applied again on top of it at its end.
    interleaved: Vec<(u64, ParticipantRecord)>,
}

/// The protocol state a checkpoint captures, taken under the engine's lock together with its
/// begin record ([`ParticipantEngine::checkpoint_begin`]); its records are built and appended
/// after the lock is released ([`CheckpointSnapshot::into_records`]).
#[derive(Debug)]
pub struct CheckpointSnapshot {
    id: u64,
    branches: Vec<CheckpointBranch>,
    steps: Vec<CheckpointStep>,
    decisions: Vec<CheckpointDecision>,
}

impl CheckpointSnapshot {
    /// The checkpoint's body and end records, each at most `max_record_bytes` encoded. Sorting
    /// and sizing a large snapshot takes a while: call it without holding the engine.
    #[must_use]
    pub fn into_records(self, max_record_bytes: usize) -> Vec<ParticipantRecord> {
        let mut records = Vec::new();
        chunk(
            self.branches.into_iter(),
            max_record_bytes,
            ParticipantRecord::CheckpointBranches,
            &mut records,
        );
        chunk(
            self.steps.into_iter(),
            max_record_bytes,
            ParticipantRecord::CheckpointSteps,
            &mut records,
        );
        let mut decisions = self.decisions;
        decisions.sort_by(|a, b| {
            (a.forget_after_unix_ms, &a.txn).cmp(&(b.forget_after_unix_ms, &b.txn))
        });
        chunk(
            decisions.into_iter(),
            max_record_bytes,
            ParticipantRecord::CheckpointDecisions,
            &mut records,
        );
        records.push(ParticipantRecord::CheckpointEnd { id: self.id });
        records
    }
}

/// Protocol state read from a checkpoint during replay.
#[derive(Debug, Default)]
struct ParticipantEngineSnapshot {
    id: u64,
    max_epoch: Epoch,
    forgotten_before_unix_ms: u64,
    branches: Vec<CheckpointBranch>,
    steps: Vec<CheckpointStep>,
    decisions: Vec<CheckpointDecision>,
}

impl ParticipantEngine {
    /// An engine with nothing prepared.
    #[must_use]
    pub fn new(limits: EngineLimits) -> ParticipantEngine {
        ParticipantEngine { limits, ..ParticipantEngine::default() }
    }

    /// Handles a Prepare: validates, refuses duplicates and late messages consistently,
    /// evaluates against committed state, locks, logs, and says what to wait for.
    pub fn handle_prepare<S: CommittedState, E>(
        &mut self,
        now_unix_ms: u64,
        input: PrepareInput,
        state: &S,
        log: &mut dyn FnMut(&ParticipantRecord) -> Result<u64, E>,
    ) -> Result<PrepareStep, EngineError<E>>
    where
        E: From<S::Error>,
    {
        // A duplicate of a staged Prepare (interactive transactions) may come with no
        // operations once the staged ones were dropped: it gets the answer already given.
        let known = self.branches.contains_key(&input.txn) || self.decided.contains_key(&input.txn);
        if !(known && input.operations.is_empty()) {
            validate_input(now_unix_ms, &input)?;
        }
        self.forget_expired(now_unix_ms);

        // Duplicates and late messages first: they get the answer already given.
        if let Some(branch) = self.branches.get(&input.txn) {
            let (lsn, outcome) = match branch.commit_lsn {
                Some(lsn) => (lsn, Outcome::Committed),
                None => (branch.prepared_lsn, Outcome::Pending),
            };
            return Ok(PrepareStep::AfterDurable {
                lsn,
                apply: None,
                reply: PrepareReply { vote: Vote::Yes, outcome },
            });
        }
        if let Some(decided) = self.decided.get(&input.txn) {
            let reply = if decided.committed {
                PrepareReply { vote: Vote::Yes, outcome: Outcome::Committed }
            } else {
                no(NoReason::AlreadyAborted, "this transaction was already aborted here")
            };
            return Ok(PrepareStep::Reply(reply));
        }
        if self.steps.contains_key(&input.txn) {
            return Err(EngineError::WrongState(format!(
                "Prepare of transaction {}, which executed a saga step here",
                input.txn
            )));
        }
        if let Some(reply) = self.refuse_new(now_unix_ms, &input, "Prepare") {
            return Ok(PrepareStep::Reply(reply));
        }
        if self.branches.len() >= self.limits.max_prepared {
            // Remembered, so a duplicate of this Prepare delivered later cannot vote YES (or
            // commit in one phase) after the coordinator aborted on this NO.
            self.remember_no_vote(&input.txn, input.deadline_unix_ms);
            return Ok(PrepareStep::Reply(no(
                NoReason::Overloaded,
                format!("{} branches are prepared here, the limit", self.branches.len()),
            )));
        }

        let writes_anything = input.operations.iter().any(Operation::writes);
        let writes = match self.evaluate_unlocked(&input, state)? {
            Ok(writes) => writes,
            Err(reply) => return Ok(PrepareStep::Reply(reply)),
        };
        if !writes_anything {
            return Ok(PrepareStep::Reply(PrepareReply {
                vote: Vote::ReadOnly,
                outcome: Outcome::Committed,
            }));
        }

        let mut locked: Vec<Key> = input.operations.iter().map(|op| op.key().to_vec()).collect();
        locked.sort();
        locked.dedup();
        let record = if input.one_phase {
            ParticipantRecord::OnePhaseCommit {
                txn: input.txn.clone(),
                epoch: input.epoch,
                writes: writes.clone(),
                deadline_unix_ms: input.deadline_unix_ms,
            }
        } else {
            ParticipantRecord::Prepared {
                txn: input.txn.clone(),
                epoch: input.epoch,
                writes: writes.clone(),
                locked: locked.clone(),
                deadline_unix_ms: input.deadline_unix_ms,
            }
        };
        let lsn = log(&record).map_err(EngineError::Storage)?;
        for key in &locked {
            self.locks.insert(key.clone(), input.txn.clone());
        }
        let (commit_lsn, apply, outcome) = if input.one_phase {
            (Some(lsn), Some(writes.clone()), Outcome::Committed)
        } else {
            (None, None, Outcome::Pending)
        };
        self.branches.insert(
            input.txn,
            Branch {
                epoch: input.epoch,
                writes,
                locked,
                deadline_unix_ms: input.deadline_unix_ms,
                prepared_lsn: lsn,
                commit_lsn,
            },
        );
        Ok(PrepareStep::AfterDurable {
            lsn,
            apply,
            reply: PrepareReply { vote: Vote::Yes, outcome },
        })
    }

    /// Handles Commit. The first Commit of a prepared branch logs the commit record (forced:
    /// the driver acknowledges only once it is durable).
    pub fn handle_commit<E>(
        &mut self,
        now_unix_ms: u64,
        txn: &TxnId,
        log: &mut dyn FnMut(&ParticipantRecord) -> Result<u64, E>,
    ) -> Result<CommitStep, EngineError<E>> {
        self.forget_expired(now_unix_ms);
        if let Some(step) = self.steps.remove(txn) {
            // The saga committed: the step's undo is no longer needed. (Its writes may still be
            // being applied; the branch that locks them finishes on its own.)
            let lsn = match log(&ParticipantRecord::Commit { txn: txn.clone() }) {
                Ok(lsn) => lsn,
                Err(error) => {
                    self.steps.insert(txn.clone(), step);
                    return Err(EngineError::Storage(error));
                }
            };
            self.remember(txn.clone(), true, retain_until(step.deadline_unix_ms));
            return Ok(CommitStep::Durable { lsn });
        }
        if let Some(branch) = self.branches.get_mut(txn) {
            if let Some(lsn) = branch.commit_lsn {
                return Ok(CommitStep::AfterDurable { lsn, apply: None });
            }
            let lsn = log(&ParticipantRecord::Commit { txn: txn.clone() })
                .map_err(EngineError::Storage)?;
            branch.commit_lsn = Some(lsn);
            return Ok(CommitStep::AfterDurable { lsn, apply: Some(branch.writes.clone()) });
        }
        match self.decided.get(txn) {
            Some(decided) if decided.committed => Ok(CommitStep::Acknowledge),
            Some(_) => Err(EngineError::WrongState(format!(
                "Commit of transaction {txn}, which was aborted here"
            ))),
            // Committed and forgotten: only a committed branch can be asked to commit, and its
            // decision outlives every message that could still arrive for it.
            None => Ok(CommitStep::Acknowledge),
        }
    }

    /// Call once the writes of a committing branch are applied to the store: releases its locks
    /// and remembers the commit.
    pub fn commit_applied(&mut self, txn: &TxnId) {
        if let Some(branch) = self.branches.remove(txn) {
            assert!(branch.commit_lsn.is_some(), "applied a branch that was not committing");
            self.release(txn, &branch.locked);
            // An executed saga step stays undecided until its saga's Commit or its
            // Compensate; a compensated one (or one whose saga already committed) is decided.
            if !self.steps.contains_key(txn) && !self.decided.contains_key(txn) {
                self.remember(txn.clone(), true, retain_until(branch.deadline_unix_ms));
            }
        }
    }

    /// Handles Abort. Appends an abort record (never waited for: presumed abort) and releases
    /// the branch's locks; before any Prepare, leaves a barrier. `deadline_unix_ms` is the
    /// transaction's Prepare deadline when the sender knows it: an Abort for an unknown
    /// transaction whose outcome could have been forgotten is refused
    /// ([`EngineError::Forgotten`]) rather than answered with a barrier that might contradict a
    /// one-phase commit.
    pub fn handle_abort<E>(
        &mut self,
        now_unix_ms: u64,
        txn: &TxnId,
        deadline_unix_ms: Option<u64>,
        log: &mut dyn FnMut(&ParticipantRecord) -> Result<u64, E>,
    ) -> Result<AbortStep, EngineError<E>> {
        self.forget_expired(now_unix_ms);
        if self.steps.contains_key(txn) {
            return Err(EngineError::WrongState(format!(
                "Abort of transaction {txn}, which executed a saga step here: send Compensate"
            )));
        }
        if let Some(branch) = self.branches.get(txn) {
            if let Some(lsn) = branch.commit_lsn {
                return Err(EngineError::Committing {
                    lsn,
                    message: format!("Abort of transaction {txn}, which committed here"),
                });
            }
            let forget_after = retain_until(branch.deadline_unix_ms.max(now_unix_ms));
            log(&ParticipantRecord::Abort { txn: txn.clone(), forget_after_unix_ms: forget_after })
                .map_err(EngineError::Storage)?;
            if let Some(branch) = self.branches.remove(txn) {
                self.release(txn, &branch.locked);
            }
            self.remember(txn.clone(), false, forget_after);
            return Ok(AbortStep::Aborted);
        }
        match self.decided.get(txn) {
            Some(decided) if decided.committed => Err(EngineError::WrongState(format!(
                "Abort of transaction {txn}, which committed here"
            ))),
            Some(_) => Ok(AbortStep::AlreadyAborted),
            None => {
                self.barrier(now_unix_ms, txn, deadline_unix_ms, log)?;
                Ok(AbortStep::Barrier)
            }
        }
    }

    /// Records that `txn` is aborted here before anything of it arrived, so its late Prepare or
    /// Execute is refused. Refused itself when the outcome could have been known here and
    /// forgotten, or when too many decisions are remembered.
    fn barrier<E>(
        &mut self,
        now_unix_ms: u64,
        txn: &TxnId,
        deadline_unix_ms: Option<u64>,
        log: &mut dyn FnMut(&ParticipantRecord) -> Result<u64, E>,
    ) -> Result<(), EngineError<E>> {
        if let Some(deadline) = deadline_unix_ms
            && retain_until(deadline) <= self.forgotten_before_unix_ms
        {
            return Err(EngineError::Forgotten(format!(
                "transaction {txn} is older than this participant's decision retention; \
                 its outcome here can no longer be told"
            )));
        }
        if self.decided.len() >= self.limits.max_remembered {
            return Err(EngineError::Overloaded(format!(
                "{} decisions are remembered here, the limit; no barrier recorded",
                self.decided.len()
            )));
        }
        // The barrier must outlive the message's deadline: the one given, or else the furthest
        // any message sent before this one could carry.
        let deadline =
            deadline_unix_ms.unwrap_or(now_unix_ms.saturating_add(limits::MAX_TXN_TIMEOUT_MS));
        let forget_after = retain_until(deadline.max(now_unix_ms));
        log(&ParticipantRecord::Abort { txn: txn.clone(), forget_after_unix_ms: forget_after })
            .map_err(EngineError::Storage)?;
        self.remember(txn.clone(), false, forget_after);
        Ok(())
    }

    /// Handles a saga step's Execute: validates, refuses duplicates and late messages
    /// consistently (a Compensate that came first left a barrier), evaluates against committed
    /// state, and logs the writes with the before-image of every key they change. The keys are
    /// locked until the writes are applied (the driver applies them, then calls
    /// [`ParticipantEngine::commit_applied`]), so no Prepare or Execute reads under them; after
    /// that the step holds no lock (sagas give no isolation).
    pub fn handle_execute<S: CommittedState, E>(
        &mut self,
        now_unix_ms: u64,
        input: PrepareInput,
        state: &S,
        log: &mut dyn FnMut(&ParticipantRecord) -> Result<u64, E>,
    ) -> Result<PrepareStep, EngineError<E>>
    where
        E: From<S::Error>,
    {
        validate_input(now_unix_ms, &input)?;
        self.forget_expired(now_unix_ms);
        let yes = PrepareReply { vote: Vote::Yes, outcome: Outcome::Pending };
        if let Some(step) = self.steps.get(&input.txn) {
            return Ok(PrepareStep::AfterDurable {
                lsn: step.executed_lsn,
                apply: None,
                reply: yes,
            });
        }
        if let Some(decided) = self.decided.get(&input.txn) {
            let reply = if decided.committed {
                PrepareReply { vote: Vote::Yes, outcome: Outcome::Committed }
            } else {
                no(
                    NoReason::AlreadyAborted,
                    "this saga step was already compensated here (or its Compensate came first)",
                )
            };
            return Ok(PrepareStep::Reply(reply));
        }
        if self.branches.contains_key(&input.txn) {
            return Err(EngineError::WrongState(format!(
                "Execute of transaction {}, which has a two-phase branch here",
                input.txn
            )));
        }
        if let Some(reply) = self.refuse_new(now_unix_ms, &input, "Execute") {
            return Ok(PrepareStep::Reply(reply));
        }
        if self.steps.len() >= self.limits.max_steps {
            self.remember_no_vote(&input.txn, input.deadline_unix_ms);
            return Ok(PrepareStep::Reply(no(
                NoReason::Overloaded,
                format!("{} executed saga steps are held here, the limit", self.steps.len()),
            )));
        }
        let writes = match self.evaluate_unlocked(&input, state)? {
            Ok(writes) => writes,
            Err(reply) => return Ok(PrepareStep::Reply(reply)),
        };
        if writes.is_empty() {
            // Only checks, and they hold: nothing to undo, nothing kept. A Compensate finds
            // nothing and leaves a barrier, which is harmless.
            return Ok(PrepareStep::Reply(PrepareReply {
                vote: Vote::ReadOnly,
                outcome: Outcome::Committed,
            }));
        }
        let mut undo = Vec::with_capacity(writes.len());
        for write in &writes {
            let before =
                state.get(&write.key).map_err(|e| EngineError::Storage(e.into()))?.map(|v| v.value);
            undo.push(Write { key: write.key.clone(), value: before });
        }
        let record = ParticipantRecord::Executed {
            txn: input.txn.clone(),
            epoch: input.epoch,
            writes: writes.clone(),
            undo: undo.clone(),
            deadline_unix_ms: input.deadline_unix_ms,
        };
        let lsn = log(&record).map_err(EngineError::Storage)?;
        let locked: Vec<Key> = writes.iter().map(|w| w.key.clone()).collect();
        self.lock_until_applied(
            &input.txn,
            input.epoch,
            writes.clone(),
            locked,
            input.deadline_unix_ms,
            lsn,
        );
        self.steps.insert(
            input.txn,
            Step {
                epoch: input.epoch,
                writes: writes.clone(),
                undo,
                deadline_unix_ms: input.deadline_unix_ms,
                executed_lsn: lsn,
            },
        );
        Ok(PrepareStep::AfterDurable { lsn, apply: Some(writes), reply: yes })
    }

    /// Handles a saga step's Compensate: writes its before-images back, but only if no key it
    /// wrote changed since ([`EngineError::CannotCompensate`] otherwise). Idempotent; before
    /// (or without) its Execute it leaves a barrier that refuses the late Execute. The
    /// restored keys are locked until applied, as for Execute.
    pub fn handle_compensate<S: CommittedState, E>(
        &mut self,
        now_unix_ms: u64,
        txn: &TxnId,
        deadline_unix_ms: Option<u64>,
        state: &S,
        log: &mut dyn FnMut(&ParticipantRecord) -> Result<u64, E>,
    ) -> Result<CommitStep, EngineError<E>>
    where
        E: From<S::Error>,
    {
        self.forget_expired(now_unix_ms);
        if let Some(step) = self.steps.get(txn) {
            if self.branches.contains_key(txn) {
                return Err(EngineError::Busy(format!(
                    "saga step {txn} is still being applied; retry its Compensate"
                )));
            }
            for (write, before) in step.writes.iter().zip(&step.undo) {
                if let Some(holder) = self.locks.get(&write.key) {
                    return Err(EngineError::Busy(format!(
                        "key {} is locked by transaction {holder}; retry the Compensate",
                        show_key(&write.key)
                    )));
                }
                let current = state.get(&write.key).map_err(|e| EngineError::Storage(e.into()))?;
                let unchanged = match (&write.value, &current) {
                    (Some(_), Some(now)) => now.version == step.executed_lsn,
                    (None, None) => true,
                    _ => false,
                };
                if !unchanged {
                    return Err(EngineError::CannotCompensate(format!(
                        "key {} changed since saga step {txn} executed (version {} then, {} \
                         now): its before-image ({}) is not written back over a newer value",
                        show_key(&write.key),
                        step.executed_lsn,
                        current.map_or("absent".to_string(), |v| v.version.to_string()),
                        before
                            .value
                            .as_ref()
                            .map_or("absent".to_string(), |v| format!("{} bytes", v.len())),
                    )));
                }
            }
            let forget_after = retain_until(step.deadline_unix_ms.max(now_unix_ms));
            let record = ParticipantRecord::Compensated {
                txn: txn.clone(),
                restore: step.undo.clone(),
                forget_after_unix_ms: forget_after,
            };
            let lsn = log(&record).map_err(EngineError::Storage)?;
            let Some(step) = self.steps.remove(txn) else { unreachable!("looked up above") };
            let locked: Vec<Key> = step.undo.iter().map(|w| w.key.clone()).collect();
            self.lock_until_applied(
                txn,
                step.epoch,
                step.undo.clone(),
                locked,
                step.deadline_unix_ms,
                lsn,
            );
            self.remember(txn.clone(), false, forget_after);
            return Ok(CommitStep::AfterDurable { lsn, apply: Some(step.undo) });
        }
        let decided = self.decided.get(txn).copied();
        if let Some(branch) = self.branches.get(txn) {
            return match (branch.commit_lsn, decided) {
                // A duplicate while the before-images are being written back.
                (Some(lsn), Some(d)) if !d.committed => {
                    Ok(CommitStep::AfterDurable { lsn, apply: None })
                }
                _ => Err(EngineError::WrongState(format!(
                    "Compensate of transaction {txn}, which has a two-phase branch here: send Abort"
                ))),
            };
        }
        match decided {
            Some(d) if d.committed => Err(EngineError::WrongState(format!(
                "Compensate of transaction {txn}, which committed here"
            ))),
            Some(_) => Ok(CommitStep::Acknowledge),
            None => {
                self.barrier(now_unix_ms, txn, deadline_unix_ms, log)?;
                Ok(CommitStep::Acknowledge)
            }
        }
    }

    /// Locks `locked` for `txn` as a branch whose writes are logged at `lsn` and not yet
    /// applied; [`ParticipantEngine::commit_applied`] releases them.
    fn lock_until_applied(
        &mut self,
        txn: &TxnId,
        epoch: Epoch,
        writes: Vec<Write>,
        locked: Vec<Key>,
        deadline_unix_ms: u64,
        lsn: u64,
    ) {
        for key in &locked {
            self.locks.insert(key.clone(), txn.clone());
        }
        self.branches.insert(
            txn.clone(),
            Branch {
                epoch,
                writes,
                locked,
                deadline_unix_ms,
                prepared_lsn: lsn,
                commit_lsn: Some(lsn),
            },
        );
    }

    /// Refusals every new branch (Prepare or Execute) gets before evaluation: past its
    /// deadline, from an older coordinator, or with too many decisions remembered. Records the
    /// epoch otherwise.
    fn refuse_new(
        &mut self,
        now_unix_ms: u64,
        input: &PrepareInput,
        message: &str,
    ) -> Option<PrepareReply> {
        if now_unix_ms > input.deadline_unix_ms {
            return Some(no(
                NoReason::Expired,
                format!(
                    "the {message}'s deadline passed {} ms ago",
                    now_unix_ms - input.deadline_unix_ms
                ),
            ));
        }
        if input.epoch < self.max_epoch {
            return Some(no(
                NoReason::StaleEpoch,
                format!(
                    "epoch {} is older than epoch {} already seen",
                    input.epoch.0, self.max_epoch.0
                ),
            ));
        }
        self.max_epoch = input.epoch;
        if self.decided.len() >= self.limits.max_remembered {
            return Some(no(
                NoReason::Overloaded,
                format!("{} decisions are remembered here, the limit", self.decided.len()),
            ));
        }
        None
    }

    /// Refuses a branch touching a locked key (NO, conflict), else evaluates it against
    /// committed state. A NO is remembered, so a duplicate cannot vote YES later.
    fn evaluate_unlocked<S: CommittedState, E>(
        &mut self,
        input: &PrepareInput,
        state: &S,
    ) -> Result<Result<Vec<Write>, PrepareReply>, EngineError<E>>
    where
        E: From<S::Error>,
    {
        for operation in &input.operations {
            if let Some(holder) = self.locks.get(operation.key()) {
                let reply = no(
                    NoReason::Conflict,
                    format!("key {} is locked by transaction {holder}", show_key(operation.key())),
                );
                self.remember_no_vote(&input.txn, input.deadline_unix_ms);
                return Ok(Err(reply));
            }
        }
        let evaluated =
            evaluate(&input.operations, state).map_err(|e| EngineError::Storage(e.into()))?;
        if evaluated.is_err() {
            self.remember_no_vote(&input.txn, input.deadline_unix_ms);
        }
        Ok(evaluated)
    }

    /// What this participant knows of a transaction's outcome (`Pending` while prepared and
    /// undecided, or when it knows nothing).
    #[must_use]
    pub fn outcome(&self, txn: &TxnId) -> Outcome {
        match self.decided.get(txn) {
            Some(d) if d.committed => return Outcome::Committed,
            Some(_) => return Outcome::Aborted,
            None => {}
        }
        if self.steps.contains_key(txn) {
            return Outcome::Pending;
        }
        match self.branches.get(txn) {
            Some(branch) if branch.commit_lsn.is_some() => Outcome::Committed,
            _ => Outcome::Pending,
        }
    }

    /// Whether this participant holds anything of `txn`: a prepared or committing branch, an
    /// executed step, or a remembered decision.
    #[must_use]
    pub fn knows(&self, txn: &TxnId) -> bool {
        self.branches.contains_key(txn)
            || self.steps.contains_key(txn)
            || self.decided.contains_key(txn)
    }

    /// How many executed saga steps hold undo information.
    #[must_use]
    pub fn step_count(&self) -> usize {
        self.steps.len()
    }

    /// Branches that voted YES and have not learned the outcome, in txn-id order, starting after
    /// `after`, at most `limit`.
    #[must_use]
    pub fn in_doubt(&self, after: Option<&TxnId>, limit: usize) -> Vec<InDoubt> {
        let range = match after {
            Some(after) => self
                .branches
                .range((std::ops::Bound::Excluded(after.clone()), std::ops::Bound::Unbounded)),
            None => self.branches.range(..),
        };
        range
            .filter(|(_, b)| b.commit_lsn.is_none())
            .take(limit)
            .map(|(txn, b)| InDoubt {
                txn: txn.clone(),
                epoch: b.epoch,
                locked: b.locked.clone(),
                prepared_lsn: b.prepared_lsn,
                deadline_unix_ms: b.deadline_unix_ms,
            })
            .collect()
    }

    /// How many branches are prepared (including committing ones).
    #[must_use]
    pub fn prepared_count(&self) -> usize {
        self.branches.len()
    }

    /// How many keys are locked.
    #[must_use]
    pub fn locked_count(&self) -> usize {
        self.locks.len()
    }

    /// The transaction holding `key` locked, if any.
    #[must_use]
    pub fn lock_holder(&self, key: &[u8]) -> Option<&TxnId> {
        self.locks.get(key)
    }

    /// The records of a checkpoint of the protocol state, each at most `max_record_bytes`
    /// encoded: [`ParticipantEngine::checkpoint_begin`] and the snapshot's records. On replay
    /// they replace all state, and records that fall between the begin and end records apply
    /// on top; the log below the begin record can be released once the store holds every write
    /// committed before it.
    #[must_use]
    pub fn checkpoint(
        &mut self,
        now_unix_ms: u64,
        max_record_bytes: usize,
    ) -> Vec<ParticipantRecord> {
        let (begin, snapshot) = self.checkpoint_begin(now_unix_ms);
        let mut records = vec![begin];
        records.extend(snapshot.into_records(max_record_bytes));
        records
    }

    /// A checkpoint's begin record and a snapshot of the state it captures. Append the begin
    /// record under the same lock as the snapshot (its position in the log is the snapshot's
    /// point), then the snapshot's records whenever: other records may come between them.
    #[must_use]
    pub fn checkpoint_begin(
        &mut self,
        now_unix_ms: u64,
    ) -> (ParticipantRecord, CheckpointSnapshot) {
        self.forget_expired(now_unix_ms);
        self.checkpoint_id += 1;
        let id = self.checkpoint_id;
        let begin = ParticipantRecord::CheckpointBegin {
            id,
            max_epoch: self.max_epoch,
            forgotten_before_unix_ms: self.forgotten_before_unix_ms,
        };
        let branches = self
            .branches
            .iter()
            .map(|(txn, b)| CheckpointBranch {
                txn: txn.clone(),
                epoch: b.epoch,
                writes: b.writes.clone(),
                locked: b.locked.clone(),
                deadline_unix_ms: b.deadline_unix_ms,
                prepared_lsn: b.prepared_lsn,
                commit_lsn: b.commit_lsn,
            })
            .collect();
        let steps = self
            .steps
            .iter()
            .map(|(txn, s)| CheckpointStep {
                txn: txn.clone(),
                epoch: s.epoch,
                writes: s.writes.clone(),
                undo: s.undo.clone(),
                deadline_unix_ms: s.deadline_unix_ms,
                executed_lsn: s.executed_lsn,
            })
            .collect();
        let decisions = self
            .decided
            .iter()
            .map(|(txn, d)| CheckpointDecision {
                txn: txn.clone(),
                committed: d.committed,
                forget_after_unix_ms: d.forget_after_unix_ms,
            })
            .collect();
        (begin, CheckpointSnapshot { id, branches, steps, decisions })
    }

    /// Replays one record read back from the log at `lsn`. Returns writes the driver must apply
    /// to the store (idempotently), each list with the version it takes.
    pub fn replay(&mut self, lsn: u64, record: ParticipantRecord) -> Vec<(u64, Vec<Write>)> {
        let mut apply = Vec::new();
        let in_checkpoint = matches!(
            record,
            ParticipantRecord::CheckpointBegin { .. }
                | ParticipantRecord::CheckpointBranches(_)
                | ParticipantRecord::CheckpointDecisions(_)
                | ParticipantRecord::CheckpointSteps(_)
                | ParticipantRecord::CheckpointEnd { .. }
        );
        if self.replaying_checkpoint.is_some() && !in_checkpoint {
            self.interleaved.push((lsn, record.clone()));
        }
        match record {
            ParticipantRecord::Prepared { txn, epoch, writes, locked, deadline_unix_ms } => {
                self.max_epoch = self.max_epoch.max(epoch);
                for key in &locked {
                    self.locks.insert(key.clone(), txn.clone());
                }
                self.branches.insert(
                    txn,
                    Branch {
                        epoch,
                        writes,
                        locked,
                        deadline_unix_ms,
                        prepared_lsn: lsn,
                        commit_lsn: None,
                    },
                );
            }
            ParticipantRecord::Commit { txn } => {
                if let Some(step) = self.steps.remove(&txn) {
                    self.remember(txn, true, retain_until(step.deadline_unix_ms));
                } else if let Some(branch) = self.branches.remove(&txn) {
                    self.release(&txn, &branch.locked);
                    self.remember(txn, true, retain_until(branch.deadline_unix_ms));
                    apply.push((lsn, branch.writes));
                }
            }
            ParticipantRecord::Executed { txn, epoch, writes, undo, deadline_unix_ms } => {
                self.max_epoch = self.max_epoch.max(epoch);
                apply.push((lsn, writes.clone()));
                self.steps
                    .insert(txn, Step { epoch, writes, undo, deadline_unix_ms, executed_lsn: lsn });
            }
            ParticipantRecord::Compensated { txn, restore, forget_after_unix_ms } => {
                self.steps.remove(&txn);
                self.remember(txn, false, forget_after_unix_ms);
                apply.push((lsn, restore));
            }
            ParticipantRecord::CheckpointSteps(steps) => {
                if let Some(snapshot) = &mut self.replaying_checkpoint {
                    snapshot.steps.extend(steps);
                }
            }
            ParticipantRecord::OnePhaseCommit { txn, epoch, writes, deadline_unix_ms } => {
                self.max_epoch = self.max_epoch.max(epoch);
                self.remember(txn, true, retain_until(deadline_unix_ms));
                apply.push((lsn, writes));
            }
            ParticipantRecord::Abort { txn, forget_after_unix_ms } => {
                if let Some(branch) = self.branches.remove(&txn) {
                    self.release(&txn, &branch.locked);
                }
                self.remember(txn, false, forget_after_unix_ms);
            }
            ParticipantRecord::CheckpointBegin { id, max_epoch, forgotten_before_unix_ms } => {
                self.replaying_checkpoint = Some(ParticipantEngineSnapshot {
                    id,
                    max_epoch,
                    forgotten_before_unix_ms,
                    ..Default::default()
                });
                self.interleaved.clear();
            }
            ParticipantRecord::CheckpointBranches(branches) => {
                if let Some(snapshot) = &mut self.replaying_checkpoint {
                    snapshot.branches.extend(branches);
                }
            }
            ParticipantRecord::CheckpointDecisions(decisions) => {
                if let Some(snapshot) = &mut self.replaying_checkpoint {
                    snapshot.decisions.extend(decisions);
                }
            }
            ParticipantRecord::CheckpointEnd { id } => {
                if let Some(snapshot) = self.replaying_checkpoint.take().filter(|s| s.id == id) {
                    let interleaved = std::mem::take(&mut self.interleaved);
                    apply = self.restore(snapshot);
                    // What happened while the checkpoint's body was written, on top of it.
                    for (lsn, record) in interleaved {
                        apply.extend(self.replay(lsn, record));
                    }
                }
            }
        }
        apply
    }

    /// Replaces all state with a checkpoint's. Branches whose commit was logged are finished.
    fn restore(&mut self, snapshot: ParticipantEngineSnapshot) -> Vec<(u64, Vec<Write>)> {
        let limits = self.limits;
        *self = ParticipantEngine::new(limits);
        self.checkpoint_id = snapshot.id;
        self.max_epoch = snapshot.max_epoch;
        self.forgotten_before_unix_ms = snapshot.forgotten_before_unix_ms;
        for decision in snapshot.decisions {
            self.remember(decision.txn, decision.committed, decision.forget_after_unix_ms);
        }
        for s in snapshot.steps {
            let step = Step {
                epoch: s.epoch,
                writes: s.writes,
                undo: s.undo,
                deadline_unix_ms: s.deadline_unix_ms,
                executed_lsn: s.executed_lsn,
            };
            self.steps.insert(s.txn, step);
        }
        let mut apply = Vec::new();
        for b in snapshot.branches {
            if let Some(commit_lsn) = b.commit_lsn {
                // Logged and maybe not applied: a commit, or a saga step's Execute or
                // Compensate (already known as a step, or decided aborted).
                if !self.steps.contains_key(&b.txn) && !self.decided.contains_key(&b.txn) {
                    self.remember(b.txn, true, retain_until(b.deadline_unix_ms));
                }
                apply.push((commit_lsn, b.writes));
                continue;
            }
            for key in &b.locked {
                self.locks.insert(key.clone(), b.txn.clone());
            }
            self.branches.insert(
                b.txn,
                Branch {
                    epoch: b.epoch,
                    writes: b.writes,
                    locked: b.locked,
                    deadline_unix_ms: b.deadline_unix_ms,
                    prepared_lsn: b.prepared_lsn,
                    commit_lsn: None,
                },
            );
        }
        apply.sort_by_key(|(lsn, _)| *lsn);
        apply
    }

    fn release(&mut self, txn: &TxnId, keys: &[Key]) {
        for key in keys {
            let holder = self.locks.remove(key);
            assert_eq!(
                holder.as_ref(),
                Some(txn),
                "lock on {} held by the wrong branch",
                show_key(key)
            );
        }
    }

    fn remember(&mut self, txn: TxnId, committed: bool, forget_after_unix_ms: u64) {
        self.decided.insert(txn.clone(), Decided { committed, forget_after_unix_ms });
        self.expiry.push_back((forget_after_unix_ms, txn));
    }

    fn remember_no_vote(&mut self, txn: &TxnId, deadline_unix_ms: u64) {
        // A duplicate of this Prepare must not vote YES later: the coordinator has aborted.
        self.remember(txn.clone(), false, retain_until(deadline_unix_ms));
    }

    /// Forgets decisions whose every possible message has expired. `expiry` is in insertion
    /// order, which is nearly time order; an entry not yet due stops the sweep, so a later
    /// sweep collects what it shadows.
    fn forget_expired(&mut self, now_unix_ms: u64) {
        while let Some((forget_after, _)) = self.expiry.front() {
            if *forget_after >= now_unix_ms {
                break;
            }
            let Some((forget_after, txn)) = self.expiry.pop_front() else { break };
            if self.decided.get(&txn).is_some_and(|d| d.forget_after_unix_ms == forget_after) {
                self.decided.remove(&txn);
                self.forgotten_before_unix_ms = self.forgotten_before_unix_ms.max(forget_after);
            }
        }
    }
}

/// Evaluates operations in order against committed state plus the branch's own earlier writes.
/// Returns the resolved writes, or the NO reply.
fn evaluate<S: CommittedState>(
    operations: &[Operation],
    state: &S,
) -> Result<Result<Vec<Write>, PrepareReply>, S::Error> {
    let mut overlay: BTreeMap<&[u8], Option<Vec<u8>>> = BTreeMap::new();
    for (index, operation) in operations.iter().enumerate() {
        let key = operation.key();
        match operation {
            Operation::Put { value, .. } => {
                overlay.insert(key, Some(value.clone()));
            }
            Operation::Delete { .. } => {
                overlay.insert(key, None);
            }
            Operation::CounterAdd { delta, lower_bound, upper_bound, .. } => {
                let current = match overlay.get(key) {
                    Some(value) => value.clone(),
                    None => state.get(key)?.map(|v| v.value),
                };
                let current = match current {
                    None => 0,
                    Some(bytes) => match counter::decode(&bytes) {
                        Some(value) => value,
                        None => {
                            return Ok(Err(no(
                                NoReason::Invalid,
                                format!(
                                    "operations[{index}]: key {} holds {} bytes, not an 8-byte counter",
                                    show_key(key),
                                    bytes.len()
                                ),
                            )));
                        }
                    },
                };
                let Some(next) = current.checked_add(*delta) else {
                    return Ok(Err(no(
                        NoReason::BoundCrossed,
                        format!("operations[{index}]: {current} + {delta} overflows"),
                    )));
                };
                if lower_bound.is_some_and(|lower| next < lower)
                    || upper_bound.is_some_and(|upper| next > upper)
                {
                    return Ok(Err(no(
                        NoReason::BoundCrossed,
                        format!(
                            "operations[{index}]: key {} would become {next}, outside [{}, {}]",
                            show_key(key),
                            lower_bound.map_or("-inf".to_string(), |v| v.to_string()),
                            upper_bound.map_or("+inf".to_string(), |v| v.to_string()),
                        ),
                    )));
                }
                overlay.insert(key, Some(counter::encode(next)));
            }
            Operation::Check { expect, .. } => {
                let committed = state.get(key)?;
                let current = match overlay.get(key) {
                    Some(value) => value.clone(),
                    None => committed.as_ref().map(|v| v.value.clone()),
                };
                let holds = match expect {
                    Expect::Version(version) => {
                        committed.as_ref().map_or(0, |v| v.version) == *version
                    }
                    Expect::Value(value) => current.as_ref() == Some(value),
                    Expect::Absent => current.is_none(),
                };
                if !holds {
                    return Ok(Err(no(
                        NoReason::CheckFailed,
                        format!(
                            "operations[{index}]: the check on key {} does not hold",
                            show_key(key)
                        ),
                    )));
                }
            }
        }
    }
    Ok(Ok(overlay.into_iter().map(|(key, value)| Write { key: key.to_vec(), value }).collect()))
}

/// Checks what every new branch must carry: valid operations and a deadline within reach.
fn validate_input(now_unix_ms: u64, input: &PrepareInput) -> Result<(), InvalidInput> {
    validate_operations(&input.operations, "operations")?;
    if input.deadline_unix_ms == 0 {
        return Err(InvalidInput::new("deadline_unix_ms", "is required"));
    }
    if input.deadline_unix_ms > now_unix_ms.saturating_add(limits::MAX_TXN_TIMEOUT_MS) {
        return Err(InvalidInput::new(
            "deadline_unix_ms",
            format!("lies more than {} ms in the future", limits::MAX_TXN_TIMEOUT_MS),
        ));
    }
    Ok(())
}

/// When a decision about a transaction with this deadline may be forgotten.
fn retain_until(deadline_unix_ms: u64) -> u64 {
    deadline_unix_ms.saturating_add(limits::DECISION_RETENTION_MS)
}

fn no(reason: NoReason, message: impl Into<String>) -> PrepareReply {
    PrepareReply { vote: Vote::no(reason, message), outcome: Outcome::Aborted }
}

/// Splits `items` into records of at most about `max_record_bytes` each.
fn chunk<T: serde::Serialize>(
    items: impl Iterator<Item = T>,
    max_record_bytes: usize,
    wrap: fn(Vec<T>) -> ParticipantRecord,
    out: &mut Vec<ParticipantRecord>,
) {
    // Leave room for the envelope and the vector's length prefix.
    let budget = max_record_bytes.saturating_sub(64).max(1);
    let mut batch = Vec::new();
    let mut size = 0usize;
    for item in items {
        let item_size = postcard::to_stdvec(&item).map_or(budget, |bytes| bytes.len());
        if !batch.is_empty() && size + item_size > budget {
            out.push(wrap(std::mem::take(&mut batch)));
            size = 0;
        }
        size += item_size;
        batch.push(item);
    }
    if !batch.is_empty() {
        out.push(wrap(batch));
    }
}

/// A key for messages: UTF-8 as text, anything else as hex.
fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if text.chars().all(|c| !c.is_control()) => format!("{text:?}"),
        _ => key.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::convert::Infallible;

    use proptest::prelude::*;

    use super::*;

    /// Committed state in a map, plus the log as a vector of records.
    #[derive(Default)]
    struct World {
        store: BTreeMap<Key, Versioned>,
        log: Vec<ParticipantRecord>,
    }

    impl CommittedState for BTreeMap<Key, Versioned> {
        type Error = Infallible;
        fn get(&self, key: &[u8]) -> Result<Option<Versioned>, Infallible> {
            Ok(BTreeMap::get(self, key).cloned())
        }
    }

    const NOW: u64 = 1_000_000;

    fn txn(id: &str) -> TxnId {
        TxnId::parse(id, "txn_id").unwrap()
    }

    fn put(key: &str, value: &str) -> Operation {
        Operation::Put { key: key.into(), value: value.into() }
    }

    fn add(key: &str, delta: i64, lower_bound: Option<i64>) -> Operation {
        Operation::CounterAdd { key: key.into(), delta, lower_bound, upper_bound: None }
    }

    fn prepare_input(id: &str, operations: Vec<Operation>) -> PrepareInput {
        PrepareInput {
            txn: txn(id),
            epoch: Epoch(1),
            operations,
            deadline_unix_ms: NOW + 1_000,
            one_phase: false,
        }
    }

    impl World {
        fn prepare(&mut self, engine: &mut ParticipantEngine, input: PrepareInput) -> PrepareStep {
            let log = &mut self.log;
            let mut append = |r: &ParticipantRecord| -> Result<u64, Infallible> {
                log.push(r.clone());
                Ok(log.len() as u64)
            };
            let step = engine.handle_prepare(NOW, input.clone(), &self.store, &mut append).unwrap();
            if let PrepareStep::AfterDurable { lsn, apply: Some(writes), .. } = &step {
                self.apply(*lsn, writes);
                engine.commit_applied(&input.txn);
            }
            step
        }

        fn commit(
            &mut self,
            engine: &mut ParticipantEngine,
            id: &str,
        ) -> Result<CommitStep, String> {
            let log = &mut self.log;
            let mut append = |r: &ParticipantRecord| -> Result<u64, Infallible> {
                log.push(r.clone());
                Ok(log.len() as u64)
            };
            let step =
                engine.handle_commit(NOW, &txn(id), &mut append).map_err(|e| e.to_string())?;
            if let CommitStep::AfterDurable { lsn, apply: Some(writes) } = &step {
                self.apply(*lsn, writes);
                engine.commit_applied(&txn(id));
            }
            Ok(step)
        }

        fn abort(&mut self, engine: &mut ParticipantEngine, id: &str) -> Result<AbortStep, String> {
            let log = &mut self.log;
            let mut append = |r: &ParticipantRecord| -> Result<u64, Infallible> {
                log.push(r.clone());
                Ok(log.len() as u64)
            };
            engine.handle_abort(NOW, &txn(id), None, &mut append).map_err(|e| e.to_string())
        }

        fn execute(&mut self, engine: &mut ParticipantEngine, input: PrepareInput) -> PrepareStep {
            let log = &mut self.log;
            let mut append = |r: &ParticipantRecord| -> Result<u64, Infallible> {
                log.push(r.clone());
                Ok(log.len() as u64)
            };
            let step = engine.handle_execute(NOW, input.clone(), &self.store, &mut append).unwrap();
            if let PrepareStep::AfterDurable { lsn, apply: Some(writes), .. } = &step {
                self.apply(*lsn, writes);
                engine.commit_applied(&input.txn);
            }
            step
        }

        fn compensate(
            &mut self,
            engine: &mut ParticipantEngine,
            id: &str,
        ) -> Result<CommitStep, EngineError<Infallible>> {
            let log = &mut self.log;
            let mut append = |r: &ParticipantRecord| -> Result<u64, Infallible> {
                log.push(r.clone());
                Ok(log.len() as u64)
            };
            let step = engine.handle_compensate(NOW, &txn(id), None, &self.store, &mut append)?;
            if let CommitStep::AfterDurable { lsn, apply: Some(writes) } = &step {
                self.apply(*lsn, writes);
                engine.commit_applied(&txn(id));
            }
            Ok(step)
        }

        fn apply(&mut self, version: u64, writes: &[Write]) {
            for write in writes {
                match &write.value {
                    Some(value) => {
                        self.store
                            .insert(write.key.clone(), Versioned { version, value: value.clone() });
                    }
                    None => {
                        self.store.remove(&write.key);
                    }
                }
            }
        }

        fn value(&self, key: &str) -> Option<Vec<u8>> {
            self.store.get(key.as_bytes()).map(|v| v.value.clone())
        }
    }

    fn vote(step: &PrepareStep) -> &Vote {
        match step {
            PrepareStep::Reply(reply) | PrepareStep::AfterDurable { reply, .. } => &reply.vote,
        }
    }

    fn no_reason(step: &PrepareStep) -> Option<NoReason> {
        match vote(step) {
            Vote::No { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// YES logs a PREPARED record and locks; Commit logs, applies and releases.
    #[test]
    fn prepare_then_commit_applies_and_releases() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        let step = world.prepare(&mut engine, prepare_input("t1", vec![put("a", "1")]));
        assert!(matches!(step, PrepareStep::AfterDurable { lsn: 1, apply: None, .. }));
        assert!(matches!(world.log[0], ParticipantRecord::Prepared { .. }));
        assert_eq!(engine.lock_holder(b"a"), Some(&txn("t1")));
        assert_eq!(world.value("a"), None, "nothing applied before Commit");
        let step = world.commit(&mut engine, "t1").unwrap();
        assert!(matches!(step, CommitStep::AfterDurable { lsn: 2, apply: Some(_) }));
        assert_eq!(world.value("a"), Some(b"1".to_vec()));
        assert_eq!(world.store[b"a".as_slice()].version, 2, "version is the commit record's LSN");
        assert_eq!(engine.locked_count(), 0);
        assert_eq!(engine.outcome(&txn("t1")), Outcome::Committed);
    }

    /// A key locked by a prepared branch makes another Prepare vote NO(conflict) at once and
    /// keep nothing.
    #[test]
    fn conflicting_prepare_votes_no_without_waiting() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        world.prepare(&mut engine, prepare_input("t1", vec![put("a", "1")]));
        let step =
            world.prepare(&mut engine, prepare_input("t2", vec![put("b", "2"), put("a", "2")]));
        assert_eq!(no_reason(&step), Some(NoReason::Conflict));
        assert_eq!(world.log.len(), 1, "a NO vote logs nothing");
        assert_eq!(engine.lock_holder(b"b"), None, "a NO vote locks nothing");
    }

    /// Checks, bounds and non-counter values vote NO with their reasons; nothing is kept.
    #[test]
    fn checks_and_bounds_vote_no() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        world.store.insert(b"bal".to_vec(), Versioned { version: 9, value: counter::encode(10) });
        world.store.insert(b"text".to_vec(), Versioned { version: 9, value: b"hello".to_vec() });
        let cases = [
            (vec![add("bal", -11, Some(0))], NoReason::BoundCrossed),
            (vec![add("bal", i64::MAX, None)], NoReason::BoundCrossed),
            (vec![add("text", 1, None)], NoReason::Invalid),
            (
                vec![Operation::Check { key: "bal".into(), expect: Expect::Version(8) }],
                NoReason::CheckFailed,
            ),
            (
                vec![Operation::Check { key: "text".into(), expect: Expect::Absent }],
                NoReason::CheckFailed,
            ),
            (
                vec![put("x", "1"), Operation::Check { key: "x".into(), expect: Expect::Absent }],
                NoReason::CheckFailed,
            ),
        ];
        for (index, (operations, reason)) in cases.into_iter().enumerate() {
            let step = world.prepare(&mut engine, prepare_input(&format!("t{index}"), operations));
            assert_eq!(no_reason(&step), Some(reason), "case {index}");
        }
        assert!(world.log.is_empty());
        assert_eq!(engine.locked_count(), 0);
        // Within bounds it prepares, with the sum resolved at Prepare time.
        let step = world.prepare(&mut engine, prepare_input("ok", vec![add("bal", -10, Some(0))]));
        assert_eq!(vote(&step), &Vote::Yes);
        world.commit(&mut engine, "ok").unwrap();
        assert_eq!(world.value("bal"), Some(counter::encode(0)));
    }

    /// A branch of checks that hold votes READ_ONLY and keeps nothing.
    #[test]
    fn only_checks_vote_read_only() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        world.store.insert(b"a".to_vec(), Versioned { version: 4, value: b"v".to_vec() });
        let checks = vec![
            Operation::Check { key: "a".into(), expect: Expect::Version(4) },
            Operation::Check { key: "a".into(), expect: Expect::Value(b"v".to_vec()) },
            Operation::Check { key: "b".into(), expect: Expect::Absent },
        ];
        let step = world.prepare(&mut engine, prepare_input("r", checks));
        assert_eq!(vote(&step), &Vote::ReadOnly);
        assert!(world.log.is_empty());
        assert_eq!(engine.locked_count(), 0);
    }

    /// Duplicate Prepare, Commit and Abort have one effect each.
    #[test]
    fn duplicates_have_one_effect() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        world.store.insert(b"c".to_vec(), Versioned { version: 1, value: counter::encode(5) });
        world.prepare(&mut engine, prepare_input("t1", vec![add("c", 1, None)]));
        let again = world.prepare(&mut engine, prepare_input("t1", vec![add("c", 1, None)]));
        assert!(matches!(again, PrepareStep::AfterDurable { lsn: 1, apply: None, .. }));
        world.commit(&mut engine, "t1").unwrap();
        assert_eq!(world.commit(&mut engine, "t1").unwrap(), CommitStep::Acknowledge);
        let late = world.prepare(&mut engine, prepare_input("t1", vec![add("c", 1, None)]));
        assert_eq!(
            late,
            PrepareStep::Reply(PrepareReply { vote: Vote::Yes, outcome: Outcome::Committed })
        );
        assert_eq!(world.value("c"), Some(counter::encode(6)), "applied exactly once");
        assert_eq!(world.log.len(), 2);

        world.prepare(&mut engine, prepare_input("t2", vec![put("d", "x")]));
        assert_eq!(world.abort(&mut engine, "t2").unwrap(), AbortStep::Aborted);
        assert_eq!(world.abort(&mut engine, "t2").unwrap(), AbortStep::AlreadyAborted);
        assert_eq!(engine.locked_count(), 0);
    }

    /// An Abort before its Prepare leaves a barrier: the late Prepare is refused.
    #[test]
    fn abort_before_prepare_blocks_the_prepare() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        assert_eq!(world.abort(&mut engine, "t1").unwrap(), AbortStep::Barrier);
        let step = world.prepare(&mut engine, prepare_input("t1", vec![put("a", "1")]));
        assert_eq!(no_reason(&step), Some(NoReason::AlreadyAborted));
        assert_eq!(engine.locked_count(), 0);
    }

    /// A Prepare past its deadline, or from an older epoch, is refused; a deadline too far out
    /// or missing is invalid input.
    #[test]
    fn expired_stale_and_unbounded_prepares_are_refused() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        let mut late = prepare_input("late", vec![put("a", "1")]);
        late.deadline_unix_ms = NOW - 1;
        assert_eq!(no_reason(&world.prepare(&mut engine, late)), Some(NoReason::Expired));

        let mut newer = prepare_input("new", vec![put("b", "1")]);
        newer.epoch = Epoch(5);
        assert_eq!(vote(&world.prepare(&mut engine, newer)), &Vote::Yes);
        let stale = prepare_input("old", vec![put("c", "1")]);
        assert_eq!(no_reason(&world.prepare(&mut engine, stale)), Some(NoReason::StaleEpoch));

        let mut far = prepare_input("far", vec![put("d", "1")]);
        far.epoch = Epoch(5);
        far.deadline_unix_ms = NOW + limits::MAX_TXN_TIMEOUT_MS + 1;
        let error = engine
            .handle_prepare(NOW, far.clone(), &world.store, &mut |_| Ok::<u64, Infallible>(0))
            .unwrap_err();
        assert!(matches!(error, EngineError::Invalid(ref e) if e.field == "deadline_unix_ms"));
        far.deadline_unix_ms = 0;
        assert!(
            engine
                .handle_prepare(NOW, far, &world.store, &mut |_| Ok::<u64, Infallible>(0))
                .is_err()
        );
    }

    /// Abort of a committed branch and Commit of an aborted one are refused; nothing changes.
    #[test]
    fn contradicting_decisions_are_refused() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        world.prepare(&mut engine, prepare_input("c", vec![put("a", "1")]));
        world.commit(&mut engine, "c").unwrap();
        assert!(world.abort(&mut engine, "c").is_err());
        world.prepare(&mut engine, prepare_input("a", vec![put("b", "1")]));
        world.abort(&mut engine, "a").unwrap();
        assert!(world.commit(&mut engine, "a").is_err());
        assert_eq!(world.value("a"), Some(b"1".to_vec()));
        assert_eq!(world.value("b"), None);
    }

    /// One-phase commit writes one record and applies at once.
    #[test]
    fn one_phase_commit_applies_at_once() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        let mut input = prepare_input("t", vec![put("a", "1")]);
        input.one_phase = true;
        let step = world.prepare(&mut engine, input);
        assert!(matches!(
            step,
            PrepareStep::AfterDurable {
                reply: PrepareReply { outcome: Outcome::Committed, .. },
                ..
            }
        ));
        assert_eq!(world.log.len(), 1);
        assert_eq!(world.value("a"), Some(b"1".to_vec()));
        assert_eq!(engine.locked_count(), 0);
    }

    /// A one-phase commit whose reply was lost is resolved by an Abort probe after the
    /// deadline: within the retention the participant refuses the Abort because it committed;
    /// once the decision may have been forgotten it refuses as forgotten, and never answers
    /// with a barrier that would call a committed transaction aborted.
    #[test]
    fn abort_probe_never_contradicts_a_forgotten_one_phase_commit() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        let mut input = prepare_input("one", vec![put("a", "1")]);
        input.one_phase = true;
        let deadline = input.deadline_unix_ms;
        world.prepare(&mut engine, input);
        let mut log = |_: &ParticipantRecord| Ok::<u64, Infallible>(99);
        let just_after = deadline + 1;
        assert!(matches!(
            engine.handle_abort(just_after, &txn("one"), Some(deadline), &mut log),
            Err(EngineError::WrongState(_))
        ));
        // Long after: the decision is forgotten (any message sweeps), and the probe is refused.
        let later = deadline + limits::DECISION_RETENTION_MS + 1;
        // (Before it was applied, the refusal had to wait for the commit record: see
        // abort_of_an_unsynced_one_phase_commit_waits_for_its_record.)
        engine.handle_abort(later, &txn("unrelated"), None, &mut log).unwrap();
        assert!(matches!(
            engine.handle_abort(later, &txn("one"), Some(deadline), &mut log),
            Err(EngineError::Forgotten(_))
        ));
        // A transaction this participant never saw, with a recent deadline, gets a barrier.
        assert_eq!(
            engine.handle_abort(later, &txn("fresh"), Some(later + 10), &mut log).unwrap(),
            AbortStep::Barrier
        );
    }

    /// An Abort meeting a one-phase commit whose record is appended but not yet applied is
    /// refused only after that record is durable: it carries the LSN to wait for.
    #[test]
    fn abort_of_an_unsynced_one_phase_commit_waits_for_its_record() {
        let mut engine = ParticipantEngine::default();
        let store = BTreeMap::new();
        let mut input = prepare_input("one", vec![put("a", "1")]);
        input.one_phase = true;
        let mut log = |_: &ParticipantRecord| Ok::<u64, Infallible>(7);
        let step = engine.handle_prepare(NOW, input, &store, &mut log).unwrap();
        assert!(matches!(step, PrepareStep::AfterDurable { lsn: 7, apply: Some(_), .. }));
        // The driver has not applied it yet (its record may not be durable): the probe comes.
        let refused = engine.handle_abort(NOW, &txn("one"), Some(NOW + 1_000), &mut log);
        assert!(matches!(refused, Err(EngineError::Committing { lsn: 7, .. })), "{refused:?}");
    }

    /// Barriers count against the remembered-decision limit: at the limit an Abort for an
    /// unknown transaction is refused (retryable) rather than growing memory.
    #[test]
    fn barriers_are_bounded() {
        let mut engine = ParticipantEngine::new(EngineLimits {
            max_prepared: 4,
            max_remembered: 2,
            max_steps: 4,
        });
        let mut log = |_: &ParticipantRecord| Ok::<u64, Infallible>(1);
        engine.handle_abort(NOW, &txn("a"), None, &mut log).unwrap();
        engine.handle_abort(NOW, &txn("b"), None, &mut log).unwrap();
        let refused = engine.handle_abort(NOW, &txn("c"), None, &mut log);
        assert!(matches!(refused, Err(EngineError::Overloaded(_))), "{refused:?}");
        assert_eq!(engine.outcome(&txn("c")), Outcome::Pending, "nothing recorded");
    }

    /// A branch at the prepared-branch limit votes NO(overloaded), and a duplicate of that
    /// Prepare delivered later cannot vote YES.
    #[test]
    fn prepared_branch_limit_votes_overloaded() {
        let mut engine = ParticipantEngine::new(EngineLimits {
            max_prepared: 1,
            max_remembered: 10,
            max_steps: 1,
        });
        let mut world = World::default();
        world.prepare(&mut engine, prepare_input("t1", vec![put("a", "1")]));
        let step = world.prepare(&mut engine, prepare_input("t2", vec![put("b", "1")]));
        assert_eq!(no_reason(&step), Some(NoReason::Overloaded));
        world.commit(&mut engine, "t1").unwrap();
        let duplicate = world.prepare(&mut engine, prepare_input("t2", vec![put("b", "1")]));
        assert_eq!(no_reason(&duplicate), Some(NoReason::AlreadyAborted));
    }

    /// Commits `operations` in one phase.
    fn seed(world: &mut World, engine: &mut ParticipantEngine, operations: Vec<Operation>) {
        let mut input = prepare_input("seed", operations);
        input.one_phase = true;
        world.prepare(engine, input);
    }

    fn counter_of(world: &World, key: &str) -> Option<i64> {
        world.value(key).map(|v| counter::decode(&v).unwrap())
    }

    /// A saga step applies at once; its Compensate writes every before-image back (a key the
    /// step created is deleted again), and a late duplicate Execute is refused.
    #[test]
    fn execute_applies_at_once_and_compensate_writes_the_before_images_back() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        seed(&mut world, &mut engine, vec![add("a", 100, None)]);
        let step = world
            .execute(&mut engine, prepare_input("s", vec![add("a", -30, Some(0)), put("b", "x")]));
        assert_eq!(vote(&step), &Vote::Yes);
        assert_eq!(counter_of(&world, "a"), Some(70));
        assert_eq!(world.value("b"), Some(b"x".to_vec()));
        assert_eq!(engine.locked_count(), 0, "an applied step holds no lock");
        assert_eq!(engine.outcome(&txn("s")), Outcome::Pending);

        let compensated = world.compensate(&mut engine, "s").unwrap();
        assert!(matches!(compensated, CommitStep::AfterDurable { apply: Some(_), .. }));
        assert_eq!(counter_of(&world, "a"), Some(100));
        assert_eq!(world.value("b"), None);
        assert_eq!(engine.outcome(&txn("s")), Outcome::Aborted);
        assert_eq!(world.compensate(&mut engine, "s").unwrap(), CommitStep::Acknowledge);
        let late = world.execute(&mut engine, prepare_input("s", vec![add("a", -30, Some(0))]));
        assert_eq!(no_reason(&late), Some(NoReason::AlreadyAborted));
        assert_eq!(counter_of(&world, "a"), Some(100));
    }

    /// A Compensate that arrives before its Execute is a no-op that leaves a barrier: the late
    /// Execute is refused and applies nothing.
    #[test]
    fn compensate_before_execute_blocks_the_late_execute() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        assert_eq!(world.compensate(&mut engine, "s").unwrap(), CommitStep::Acknowledge);
        assert!(matches!(world.log.last(), Some(ParticipantRecord::Abort { .. })));
        let late = world.execute(&mut engine, prepare_input("s", vec![put("a", "1")]));
        assert_eq!(no_reason(&late), Some(NoReason::AlreadyAborted));
        assert_eq!(world.value("a"), None);
    }

    /// A duplicate Execute gets the first answer and applies nothing more.
    #[test]
    fn duplicate_execute_applies_once() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        let first = world.execute(&mut engine, prepare_input("s", vec![add("a", 5, None)]));
        let again = world.execute(&mut engine, prepare_input("s", vec![add("a", 5, None)]));
        assert_eq!(vote(&first), &Vote::Yes);
        assert!(matches!(again, PrepareStep::AfterDurable { apply: None, .. }));
        assert_eq!(counter_of(&world, "a"), Some(5));
        assert_eq!(engine.step_count(), 1);
    }

    /// A refused Execute applies nothing and is remembered, so its duplicate cannot execute
    /// later; its Compensate is then a no-op.
    #[test]
    fn a_refused_execute_stays_refused() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        let refused = world.execute(&mut engine, prepare_input("s", vec![add("a", -1, Some(0))]));
        assert_eq!(no_reason(&refused), Some(NoReason::BoundCrossed));
        seed(&mut world, &mut engine, vec![add("a", 10, None)]);
        let again = world.execute(&mut engine, prepare_input("s", vec![add("a", -1, Some(0))]));
        assert_eq!(no_reason(&again), Some(NoReason::AlreadyAborted));
        assert_eq!(world.compensate(&mut engine, "s").unwrap(), CommitStep::Acknowledge);
        assert_eq!(counter_of(&world, "a"), Some(10));
    }

    /// Compensate never writes a before-image over a newer value: a key changed since the step
    /// makes it refuse (and change nothing); a key locked by a prepared branch makes it retry.
    #[test]
    fn compensate_refuses_when_a_key_changed_and_waits_for_a_lock() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        world.execute(&mut engine, prepare_input("s", vec![put("a", "step")]));
        world.prepare(&mut engine, prepare_input("p", vec![put("a", "later")]));
        assert!(matches!(world.compensate(&mut engine, "s"), Err(EngineError::Busy(_))));
        world.commit(&mut engine, "p").unwrap();
        let refused = world.compensate(&mut engine, "s");
        assert!(
            matches!(&refused, Err(EngineError::CannotCompensate(m)) if m.contains("changed since")),
            "{refused:?}"
        );
        assert_eq!(world.value("a"), Some(b"later".to_vec()));
        assert_eq!(engine.step_count(), 1, "the step keeps its undo for an operator");
    }

    /// The saga's Commit releases a step's undo: a later Compensate is refused as wrong state.
    #[test]
    fn saga_commit_releases_the_undo() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        world.execute(&mut engine, prepare_input("s", vec![put("a", "1")]));
        assert!(matches!(world.commit(&mut engine, "s"), Ok(CommitStep::Durable { .. })));
        assert_eq!(engine.step_count(), 0);
        assert_eq!(engine.outcome(&txn("s")), Outcome::Committed);
        assert!(matches!(world.compensate(&mut engine, "s"), Err(EngineError::WrongState(_))));
        assert_eq!(world.commit(&mut engine, "s"), Ok(CommitStep::Acknowledge));
        assert_eq!(world.value("a"), Some(b"1".to_vec()));
    }

    /// Executed steps, their compensations and their commits survive replay, from the start of
    /// the log and from a checkpoint: a step replayed can still be compensated exactly.
    #[test]
    fn replay_rebuilds_executed_and_compensated_steps() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        seed(&mut world, &mut engine, vec![add("a", 100, None)]);
        world.execute(&mut engine, prepare_input("s1", vec![add("a", -10, None)]));
        world.execute(&mut engine, prepare_input("s2", vec![put("b", "2")]));
        world.execute(&mut engine, prepare_input("s3", vec![put("c", "3")]));
        world.compensate(&mut engine, "s2").unwrap();
        world.commit(&mut engine, "s3").unwrap();
        let checkpoint_start = world.log.len();
        world.log.extend(engine.checkpoint(NOW, 1024));
        for (start, initial) in [(0, BTreeMap::new()), (checkpoint_start, world.store.clone())] {
            let mut replayed = ParticipantEngine::default();
            let mut store = World { store: initial, log: world.log.clone() };
            for (index, record) in world.log.iter().enumerate().skip(start) {
                for (version, writes) in replayed.replay(index as u64 + 1, record.clone()) {
                    store.apply(version, &writes);
                }
            }
            assert_eq!(replayed.step_count(), 1, "from {start}");
            assert_eq!(replayed.outcome(&txn("s2")), Outcome::Aborted);
            assert_eq!(replayed.outcome(&txn("s3")), Outcome::Committed);
            assert_eq!(counter_of(&store, "a"), Some(90));
            assert_eq!(store.value("b"), None);
            assert!(matches!(
                store.compensate(&mut replayed, "s1"),
                Ok(CommitStep::AfterDurable { .. })
            ));
            assert_eq!(counter_of(&store, "a"), Some(100));
        }
    }

    /// Replaying the log, with or without a checkpoint in it, rebuilds the same in-doubt
    /// branches, locks, decisions and committed data.
    #[test]
    fn replay_and_checkpoint_rebuild_the_same_state() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        world.prepare(&mut engine, prepare_input("done", vec![put("a", "1")]));
        world.commit(&mut engine, "done").unwrap();
        world.prepare(&mut engine, prepare_input("doubt", vec![put("b", "2")]));
        world.abort(&mut engine, "barrier").unwrap();
        world.prepare(&mut engine, prepare_input("committing", vec![put("c", "3")]));
        // Log the commit but do not apply it: a checkpoint must carry it.
        let mut log_commit = |r: &ParticipantRecord| -> Result<u64, Infallible> {
            world.log.push(r.clone());
            Ok(world.log.len() as u64)
        };
        engine.handle_commit(NOW, &txn("committing"), &mut log_commit).unwrap();
        let checkpoint = engine.checkpoint(NOW, 1024);
        let checkpoint_start = world.log.len();
        world.log.extend(checkpoint);

        let check = |replayed: &ParticipantEngine, store: &BTreeMap<Key, Versioned>| {
            assert_eq!(replayed.in_doubt(None, 10), engine.in_doubt(None, 10));
            assert_eq!(replayed.lock_holder(b"b"), Some(&txn("doubt")));
            assert_eq!(replayed.outcome(&txn("done")), Outcome::Committed);
            assert_eq!(replayed.outcome(&txn("barrier")), Outcome::Aborted);
            assert_eq!(replayed.outcome(&txn("committing")), Outcome::Committed);
            assert_eq!(store.get(b"a".as_slice()).map(|v| v.value.clone()), Some(b"1".to_vec()));
            assert_eq!(store.get(b"c".as_slice()).map(|v| v.version), Some(6));
        };
        // From the start of the log with an empty store, and from the checkpoint with the store
        // as the checkpoint flushed it (every applied commit, not the one still committing).
        for (start, initial) in [(0, BTreeMap::new()), (checkpoint_start, world.store.clone())] {
            let mut replayed = ParticipantEngine::default();
            let mut store = World { store: initial, log: Vec::new() };
            for (index, record) in world.log.iter().enumerate().skip(start) {
                for (version, writes) in replayed.replay(index as u64 + 1, record.clone()) {
                    store.apply(version, &writes);
                }
            }
            check(&replayed, &store.store);
        }
    }

    /// Records appended while a checkpoint's body is written (between its begin and end
    /// records) are not lost: replay restores the snapshot taken at the begin record and
    /// applies them on top, from the start of the log or from the checkpoint alike.
    #[test]
    fn records_between_checkpoint_begin_and_end_apply_on_top_of_it() {
        let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
        world.prepare(&mut engine, prepare_input("before", vec![put("a", "1")]));
        world.prepare(&mut engine, prepare_input("doubt", vec![put("d", "4")]));
        let (begin, snapshot) = engine.checkpoint_begin(NOW);
        world.log.push(begin);
        let checkpoint_start = world.log.len() - 1;
        // While the body is being written: a commit of a branch in the snapshot, a new
        // prepared branch, and an abort barrier.
        world.commit(&mut engine, "before").unwrap();
        world.prepare(&mut engine, prepare_input("during", vec![put("b", "2")]));
        world.abort(&mut engine, "barrier").unwrap();
        world.log.extend(snapshot.into_records(1024));
        // And one after the checkpoint.
        world.prepare(&mut engine, prepare_input("after", vec![put("c", "3")]));
        let store_at_begin = BTreeMap::new();

        for (start, initial) in [(0, BTreeMap::new()), (checkpoint_start, store_at_begin)] {
            let mut replayed = ParticipantEngine::default();
            let mut store = World { store: initial, log: Vec::new() };
            for (index, record) in world.log.iter().enumerate().skip(start) {
                for (version, writes) in replayed.replay(index as u64 + 1, record.clone()) {
                    store.apply(version, &writes);
                }
            }
            let context = format!("replay from record {start}");
            assert_eq!(replayed.outcome(&txn("before")), Outcome::Committed, "{context}");
            assert_eq!(store.value("a"), Some(b"1".to_vec()), "{context}");
            assert_eq!(replayed.lock_holder(b"a"), None, "{context}: released by its commit");
            assert_eq!(replayed.lock_holder(b"d"), Some(&txn("doubt")), "{context}");
            assert_eq!(replayed.lock_holder(b"b"), Some(&txn("during")), "{context}");
            assert_eq!(replayed.lock_holder(b"c"), Some(&txn("after")), "{context}");
            assert_eq!(replayed.outcome(&txn("barrier")), Outcome::Aborted, "{context}");
            assert_eq!(replayed.in_doubt(None, 10), engine.in_doubt(None, 10), "{context}");
        }
    }

    #[derive(Clone, Debug)]
    enum Message {
        Prepare(usize, Vec<usize>),
        Commit(usize),
        Abort(usize),
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (0..6usize, prop::collection::vec(0..4usize, 1..3))
                .prop_map(|(t, k)| Message::Prepare(t, k)),
            (0..6usize).prop_map(Message::Commit),
            (0..6usize).prop_map(Message::Abort),
        ]
    }

    proptest! {
        /// Under any order of Prepare, Commit and Abort, with duplicates and drops: every lock
        /// is held by a prepared branch that lists it, no branch commits twice, and a branch
        /// never both commits and aborts.
        #[test]
        fn random_message_orders_keep_the_invariants(messages in prop::collection::vec(message(), 1..60)) {
            let (mut engine, mut world) = (ParticipantEngine::default(), World::default());
            let mut committed = std::collections::BTreeSet::new();
            // Operations of each branch's first logged Prepare: what a commit adds.
            let mut prepared_ops = BTreeMap::new();
            let mut aborted = std::collections::BTreeSet::new();
            for message in messages {
                match message {
                    Message::Prepare(t, keys) => {
                        let ops = keys.iter().map(|k| add(&format!("k{k}"), 1, None)).collect();
                        let logged = world.log.len();
                        world.prepare(&mut engine, prepare_input(&format!("t{t}"), ops));
                        if world.log.len() > logged {
                            prop_assert!(prepared_ops.insert(t, keys.len()).is_none(), "t{} prepared twice", t);
                        }
                    }
                    Message::Commit(t) => {
                        // The coordinator only commits a branch that voted YES.
                        if engine.in_doubt(None, 100).iter().any(|b| b.txn == txn(&format!("t{t}"))) {
                            if let Ok(CommitStep::AfterDurable { apply: Some(_), .. }) = world.commit(&mut engine, &format!("t{t}")) {
                                prop_assert!(committed.insert(t), "t{} committed twice", t);
                            }
                        } else {
                            let _ = world.commit(&mut engine, &format!("t{t}"));
                        }
                    }
                    Message::Abort(t) => {
                        if let Ok(AbortStep::Aborted) = world.abort(&mut engine, &format!("t{t}")) {
                            aborted.insert(t);
                        }
                    }
                }
                for branch in engine.in_doubt(None, 100) {
                    for key in &branch.locked {
                        prop_assert_eq!(engine.lock_holder(key), Some(&branch.txn));
                    }
                }
                let held: usize = engine.in_doubt(None, 100).iter().map(|b| b.locked.len()).sum();
                prop_assert_eq!(held, engine.locked_count());
            }
            prop_assert!(committed.is_disjoint(&aborted));
            // Each committed branch added 1 per operation, exactly once.
            let total: i64 = world.store.values().map(|v| counter::decode(&v.value).unwrap()).sum();
            let expected: usize = committed.iter().map(|t| prepared_ops[t]).sum();
            prop_assert_eq!(total, expected as i64);
        }
    }
}
