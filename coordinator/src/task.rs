//! One transaction's task: it owns the transaction's [`TxnMachine`] from admission (or
//! recovery) until it is finished, feeds it every input (answers, durability, the deadline),
//! carries out every [`Output`] in one place ([`TxnTask::dispatch`]), publishes the machine to
//! the table after each step, and answers the client with the state it reached.
//!
//! The calls it makes (Prepare, Execute, Abort, and the deliveries that retry until done:
//! Commit, Compensate, the one-phase probe) run as futures inside the task, so the task ends
//! when nothing is left to do, and with it the permits that bound the coordinator.
//!
//! When the client hears back: an abort once the Aborts sent with it have landed (each
//! bounded by the call timeout), so ABORTED also means the locks are released wherever that was
//! possible; a commit once every participant acknowledged (so the client reads its own writes),
//! or an aborted saga once its steps are compensated — but never later than the deadline plus
//! one call timeout, after which the client hears COMMITTED (state COMMITTING) or ABORTED
//! (state COMPENSATING) while delivery goes on; a one-phase transaction whose participant went
//! silent hears PENDING at that point, and asks again later.

use std::collections::VecDeque;
use std::sync::Arc;

use concord_core::coordinator::{
    BranchKind, CoordinatorRecord, Input, Output, Phase, PrepareResult, TxnMachine,
};
use concord_core::types::TxnId;
use concord_proto::v1;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::CoordinatorError;
use crate::coordinator::{Coordinator, NewTxn};
use crate::delivery::{self, Attempt, ProbeAnswer};
use crate::log::{DecisionLog, LogPosition};
use crate::table::Entry;

/// What a finished call gives the task.
enum Done {
    /// An input for the machine.
    Input(Input),
    /// A one-shot Abort landed (or failed: presumed abort needs no acknowledgement).
    AbortSent,
    /// Nothing (a delivery that ended because the coordinator stops).
    Nothing,
    /// The client waited long enough: it hears the state as it is.
    Patience,
}

/// When the client may hear back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplyWhen {
    /// Not decided yet.
    Undecided,
    /// Once the Aborts in flight have landed.
    AbortsLanded,
    /// Once the transaction is finished, or at `patience`, whichever comes first.
    Settled { patience: Instant },
}

/// The client waiting for a submitted transaction's answer.
type Reply = oneshot::Sender<Result<Entry, CoordinatorError>>;

/// One transaction's task (see the module docs).
pub(crate) struct TxnTask<L: DecisionLog> {
    coordinator: Arc<Coordinator<L>>,
    txn: TxnId,
    machine: TxnMachine,
    participants: Vec<String>,
    /// Each branch's operations (empty for a recovered transaction, which sends none).
    operations: Vec<Vec<v1::Operation>>,
    staged: bool,
    created_unix_ms: u64,
    deadline_unix_ms: u64,
    /// The decision deadline (Prepare and Execute answers are awaited until then).
    deadline: Instant,
    deadline_seen: bool,
    /// The lazy STARTED record of a two-phase transaction was appended.
    started_logged: bool,
    /// Outputs still to carry out, in order.
    pending: VecDeque<Output>,
    /// Calls in flight.
    calls: FuturesUnordered<BoxFuture<'static, Done>>,
    aborts_in_flight: usize,
    /// The abort record, which must be durable before the client hears ABORTED.
    abort_position: Option<LogPosition>,
    reply: Option<Reply>,
    reply_when: ReplyWhen,
    /// Held until the client is answered (`max_inflight`).
    inflight: Option<OwnedSemaphorePermit>,
    /// Held until the task ends (`max_undelivered`).
    _unfinished: Option<OwnedSemaphorePermit>,
}

impl<L: DecisionLog> TxnTask<L> {
    /// The task of a transaction just admitted (its entry is in the table).
    pub(crate) fn submitted(
        coordinator: Arc<Coordinator<L>>,
        new: NewTxn,
        machine: TxnMachine,
        reply: Reply,
        inflight: OwnedSemaphorePermit,
        unfinished: OwnedSemaphorePermit,
    ) -> TxnTask<L> {
        let (created_unix_ms, deadline_unix_ms) = coordinator
            .get(&new.txn)
            .map_or((0, 0), |entry| (entry.created_unix_ms, entry.deadline_unix_ms));
        TxnTask {
            txn: new.txn,
            machine,
            participants: new.participants,
            operations: new.operations,
            staged: new.staged,
            created_unix_ms,
            deadline_unix_ms,
            deadline: Instant::now() + new.timeout,
            deadline_seen: false,
            started_logged: false,
            pending: VecDeque::new(),
            calls: FuturesUnordered::new(),
            aborts_in_flight: 0,
            abort_position: None,
            reply: Some(reply),
            reply_when: ReplyWhen::Undecided,
            inflight: Some(inflight),
            _unfinished: Some(unfinished),
            coordinator,
        }
    }

    /// The task of a recovered transaction (its entry is in the table), to carry out what
    /// recovery decided; nobody waits for an answer.
    pub(crate) fn recovered(
        coordinator: Arc<Coordinator<L>>,
        txn: TxnId,
        entry: &Entry,
        unfinished: Option<OwnedSemaphorePermit>,
    ) -> TxnTask<L> {
        TxnTask {
            txn,
            machine: entry.machine.clone(),
            participants: entry.participants.clone(),
            operations: Vec::new(),
            staged: false,
            created_unix_ms: entry.created_unix_ms,
            deadline_unix_ms: entry.deadline_unix_ms,
            deadline: Instant::now(),
            deadline_seen: true,
            started_logged: true,
            pending: VecDeque::new(),
            calls: FuturesUnordered::new(),
            aborts_in_flight: 0,
            abort_position: entry.abort_position,
            reply: None,
            reply_when: ReplyWhen::Undecided,
            inflight: None,
            _unfinished: unfinished,
            coordinator,
        }
    }

    /// Runs the task on its own tokio task, in a span naming the transaction, starting with
    /// `outputs`.
    pub(crate) fn spawn(mut self, outputs: Vec<Output>) {
        let span = tracing::info_span!(
            "txn",
            txn_id = %self.txn,
            mode = ?self.machine.mode(),
            participants = self.participants.len()
        );
        self.pending.extend(outputs);
        tokio::spawn(self.run().instrument(span));
    }

    async fn run(mut self) {
        loop {
            // Carrying out an output can produce more (STARTED durable → send Prepare): drain
            // them all before waiting for the next answer. An error is a decision-log failure:
            // the task ends, and a waiting client hears INTERNAL.
            if self.carry_out_pending().await.is_err() {
                return;
            }
            if self.ready_to_reply() {
                self.answer().await;
            }
            let deadline_armed = !self.deadline_seen && self.undecided();
            if self.calls.is_empty() && !deadline_armed && self.reply.is_none() {
                return; // nothing more can happen
            }
            let patience = match self.reply_when {
                ReplyWhen::Settled { patience } if self.reply.is_some() => Some(patience),
                _ => None,
            };
            let done = tokio::select! {
                Some(done) = self.calls.next() => done,
                () = tokio::time::sleep_until(self.deadline), if deadline_armed => {
                    self.deadline_seen = true;
                    Done::Input(Input::Deadline)
                }
                () = tokio::time::sleep_until(patience.unwrap_or(self.deadline)),
                    if patience.is_some() => Done::Patience,
            };
            match done {
                Done::Patience => self.answer().await,
                Done::Input(input) => {
                    if self.handle(input).is_err() {
                        return;
                    }
                }
                Done::AbortSent => self.aborts_in_flight -= 1,
                Done::Nothing => {}
            }
        }
    }

    fn undecided(&self) -> bool {
        matches!(self.machine.phase(), Phase::Preparing | Phase::Executing)
    }

    fn ready_to_reply(&self) -> bool {
        if self.reply.is_none() {
            return false;
        }
        match self.reply_when {
            ReplyWhen::AbortsLanded => self.aborts_in_flight == 0,
            ReplyWhen::Settled { .. } => {
                matches!(self.machine.phase(), Phase::Committed | Phase::Aborted(_))
            }
            // Nothing left that could decide it: the client hears the state as it is.
            ReplyWhen::Undecided => {
                self.calls.is_empty() && (self.deadline_seen || !self.undecided())
            }
        }
    }

    /// Answers the client (once) with the transaction's state, after its abort record (if any)
    /// is durable, and frees its in-flight slot.
    async fn answer(&mut self) {
        let Some(reply) = self.reply.take() else { return };
        let entry = match self.coordinator.get(&self.txn) {
            Some(entry) => entry,
            // Forgotten already (a tiny retention): answer from what the task knows.
            None => {
                let mut entry = Entry::new(
                    self.participants.clone(),
                    self.machine.clone(),
                    self.coordinator.epoch,
                );
                entry.created_unix_ms = self.created_unix_ms;
                entry.deadline_unix_ms = self.deadline_unix_ms;
                entry.abort_position = self.abort_position;
                entry
            }
        };
        let answer = match self.abort_position {
            Some(position) => self.coordinator.force_position(position).await.map(|()| entry),
            None => Ok(entry),
        };
        let _ = reply.send(answer);
        self.inflight = None;
    }

    /// Feeds one input to the machine and queues its outputs. The new state is published to
    /// the table together with the abort record, if the input aborted the transaction, so
    /// nobody can read ABORTED without the record that must be durable before it is told.
    fn handle(&mut self, input: Input) -> Result<(), CoordinatorError> {
        let outputs = self.machine.handle(input);
        let abort = outputs.iter().find_map(|output| match output {
            Output::LogAbort(cause) => Some(cause.clone()),
            _ => None,
        });
        let position = {
            let mut table = self.coordinator.table();
            let position = match &abort {
                Some(cause) => Some(self.coordinator.append(&CoordinatorRecord::Aborted {
                    txn: self.txn.clone(),
                    cause: cause.clone(),
                })?),
                None => None,
            };
            if let Some(entry) = table.entries.get_mut(&self.txn) {
                entry.machine = self.machine.clone();
                if position.is_some() {
                    entry.abort_position = position;
                }
            }
            position
        };
        if let (Some(cause), Some(position)) = (abort, position) {
            self.abort_position = Some(position);
            tracing::info!(?cause, "transaction aborted");
        }
        self.pending.extend(outputs);
        Ok(())
    }

    async fn carry_out_pending(&mut self) -> Result<(), CoordinatorError> {
        while let Some(output) = self.pending.pop_front() {
            self.dispatch(output).await?;
        }
        Ok(())
    }

    /// Carries out one output: the one place every [`Output`] is handled. One piece on purpose
    /// (it is long): a new output must be carried out here, and nowhere else.
    async fn dispatch(&mut self, output: Output) -> Result<(), CoordinatorError> {
        let coordinator = Arc::clone(&self.coordinator);
        match output {
            Output::ForceStarted => {
                // A saga's record names its steps: recovery compensates them.
                let record = if self.machine.saga_steps().is_empty() {
                    self.started_record()
                } else {
                    CoordinatorRecord::SagaStarted {
                        txn: self.txn.clone(),
                        participants: self.participants.clone(),
                        kinds: self.machine.kinds().to_vec(),
                        mode: self.machine.mode(),
                        created_unix_ms: self.created_unix_ms,
                        deadline_unix_ms: self.deadline_unix_ms,
                    }
                };
                coordinator.failpoint("coordinator.before_started")?;
                coordinator.force(&record).await?;
                coordinator.failpoint("coordinator.after_started")?;
                self.handle(Input::StartedDurable)?;
            }
            Output::SendPrepare { branch, one_phase } => {
                if !one_phase && !self.started_logged {
                    // Lazy: rides along with the next group commit.
                    coordinator.append(&self.started_record())?;
                    self.started_logged = true;
                }
                let request = v1::PrepareRequest {
                    txn_id: self.txn.to_string(),
                    epoch: coordinator.epoch.0,
                    operations: self.operations_of(branch),
                    deadline_unix_ms: self.deadline_unix_ms,
                    one_phase,
                    staged: self.staged,
                };
                let timeout = self.deadline.saturating_duration_since(Instant::now());
                let participant = self.participants[branch].clone();
                self.push_call(async move {
                    let Some(link) = coordinator.link(&participant) else {
                        return Done::Input(unknown_participant(branch, &participant));
                    };
                    let result = delivery::prepare(link, request, timeout).await;
                    if let PrepareResult::Unimplemented(_) = &result {
                        coordinator.mark_saga_only(&participant);
                    }
                    Done::Input(Input::Prepared { branch, result })
                });
            }
            Output::SendExecute { branch } => {
                let request = v1::ExecuteRequest {
                    txn_id: self.txn.to_string(),
                    epoch: coordinator.epoch.0,
                    operations: self.operations_of(branch),
                    deadline_unix_ms: self.deadline_unix_ms,
                };
                let timeout = self.deadline.saturating_duration_since(Instant::now());
                let participant = self.participants[branch].clone();
                self.push_call(async move {
                    let Some(link) = coordinator.link(&participant) else {
                        return Done::Input(Input::Executed {
                            branch,
                            result: PrepareResult::Unreachable(format!(
                                "participant {participant} is not configured"
                            )),
                        });
                    };
                    let result = delivery::execute(link, request, timeout).await;
                    Done::Input(Input::Executed { branch, result })
                });
            }
            Output::ForceCommit { branches } => {
                coordinator.failpoint("coordinator.before_decision")?;
                let decided_unix_ms = coordinator.now_ms();
                let record = CoordinatorRecord::Commit {
                    txn: self.txn.clone(),
                    participants: self.participants.clone(),
                    pending: branches,
                    decided_unix_ms,
                };
                // Planted bug (test builds only): decide without logging it.
                if !concord_failpoints::planted("commit-before-decision") {
                    coordinator.force(&record).await?;
                }
                coordinator.failpoint("coordinator.after_decision")?;
                coordinator.update(&self.txn, |entry| entry.decided_unix_ms = decided_unix_ms);
                // Debug, not info: at thousands of commits a second a line each costs more
                // than the rest of the coordinator's work (aborts, rarer, are info).
                tracing::debug!("transaction committed (decision durable)");
                self.handle(Input::CommitDurable)?;
            }
            Output::Reply(_) => {
                let now = coordinator.now_ms();
                coordinator.update(&self.txn, |entry| {
                    if entry.decided_unix_ms == 0 {
                        entry.decided_unix_ms = now;
                    }
                });
                self.reply_when = match self.machine.phase() {
                    // A commit still being delivered, or an abort still compensating: the
                    // client waits for it to settle, but not for ever.
                    Phase::Committing | Phase::Compensating(_) => self.settled_or_patience(),
                    _ => ReplyWhen::AbortsLanded,
                };
            }
            Output::SendCommit { branch } => self.push_commit_delivery(branch),
            Output::SendAbort { branch } => {
                let request = v1::AbortRequest {
                    txn_id: self.txn.to_string(),
                    epoch: coordinator.epoch.0,
                    deadline_unix_ms: self.deadline_unix_ms,
                };
                let participant = self.participants[branch].clone();
                self.aborts_in_flight += 1;
                // One attempt: presumed abort needs no acknowledgement, and a participant that
                // misses it asks and hears ABORTED.
                self.push_call(async move {
                    if let Some(link) = coordinator.link(&participant) {
                        let _ = link.abort(request).await;
                    }
                    Done::AbortSent
                });
            }
            Output::ProbeOnePhase => {
                self.push_probe();
                if self.reply_when == ReplyWhen::Undecided {
                    self.reply_when = self.settled_or_patience();
                }
            }
            Output::LogEnd => {
                coordinator.failpoint("coordinator.before_end")?;
                coordinator.append(&CoordinatorRecord::End { txn: self.txn.clone() })?;
                coordinator.failpoint("coordinator.after_end")?;
                coordinator.retire(&self.txn);
            }
            // Appended with the phase change (`handle`); here the transaction settles if
            // nothing is left to compensate.
            Output::LogAbort(_) => self.settle_if_aborted()?,
            Output::SendCompensate { branch } => self.push_compensation(branch),
            Output::LogCompensated { branch } => {
                coordinator
                    .append(&CoordinatorRecord::Compensated { txn: self.txn.clone(), branch })?;
                self.settle_if_aborted()?;
            }
        }
        Ok(())
    }

    /// Adds one call to the task's calls (polled by the task itself: no task per call).
    fn push_call(&mut self, call: impl Future<Output = Done> + Send + 'static) {
        self.calls.push(Box::pin(call));
    }

    fn started_record(&self) -> CoordinatorRecord {
        CoordinatorRecord::Started {
            txn: self.txn.clone(),
            participants: self.participants.clone(),
            created_unix_ms: self.created_unix_ms,
            deadline_unix_ms: self.deadline_unix_ms,
        }
    }

    fn operations_of(&self, branch: usize) -> Vec<v1::Operation> {
        self.operations.get(branch).cloned().unwrap_or_default()
    }

    fn settled_or_patience(&self) -> ReplyWhen {
        let patience = self.deadline.max(Instant::now()) + self.coordinator.config.call_timeout;
        ReplyWhen::Settled { patience }
    }

    /// Once aborted for good: an aborted saga logs that its compensation is done, and either
    /// retires (until then a compensating saga is never evicted).
    fn settle_if_aborted(&mut self) -> Result<(), CoordinatorError> {
        if !matches!(self.machine.phase(), Phase::Aborted(_)) {
            return Ok(());
        }
        if self.machine.kinds().contains(&BranchKind::Saga) {
            self.coordinator.compensation_done(&self.txn)
        } else {
            self.coordinator.retire(&self.txn);
            Ok(())
        }
    }

    /// Commit to one branch until it is acknowledged.
    fn push_commit_delivery(&mut self, branch: usize) {
        let coordinator = Arc::clone(&self.coordinator);
        let txn = self.txn.clone();
        let participant = self.participants[branch].clone();
        let request = v1::CommitRequest { txn_id: txn.to_string(), epoch: coordinator.epoch.0 };
        self.push_call(async move {
            let Some(link) = coordinator.link(&participant) else {
                tracing::error!(%participant, "a committing branch names a participant that is not configured; it stays committing");
                return Done::Nothing;
            };
            let mut stopping = coordinator.stopping.subscribe();
            let call_timeout = coordinator.config.call_timeout;
            let (coordinator, txn, participant, request) =
                (&coordinator, &txn, &participant, &request);
            let delivered =
                delivery::until_done(coordinator.delivery_policy(), &mut stopping, |_| async move {
                    let result = link.commit(request.clone(), call_timeout).await;
                    let failure = result.err().map(|status| delivery::describe(&status));
                    coordinator.record_attempt(txn, branch, failure.as_deref());
                    let Some(error) = failure else { return Attempt::Done(()) };
                    tracing::warn!(%participant, %error, "commit delivery failed; retrying");
                    // Planted bug (test builds only): give up after one failed attempt.
                    if concord_failpoints::planted("give-up-commit") {
                        return Attempt::GiveUp;
                    }
                    Attempt::Retry
                })
                .await;
            match delivered {
                Some(()) => Done::Input(Input::CommitAcknowledged { branch }),
                None => Done::Nothing,
            }
        });
    }

    /// Compensate to one saga step until it is acknowledged; past `attention_after_attempts`
    /// failures the transaction shows NEEDS_ATTENTION (and keeps being retried, slowly).
    fn push_compensation(&mut self, branch: usize) {
        let coordinator = Arc::clone(&self.coordinator);
        let txn = self.txn.clone();
        let participant = self.participants[branch].clone();
        let request = v1::CompensateRequest {
            txn_id: txn.to_string(),
            epoch: coordinator.epoch.0,
            deadline_unix_ms: self.deadline_unix_ms,
        };
        self.push_call(async move {
            let Some(link) = coordinator.link(&participant) else {
                tracing::error!(%participant, "a saga step names a participant that is not configured; it stays compensating");
                return Done::Nothing;
            };
            let mut stopping = coordinator.stopping.subscribe();
            let (coordinator, txn, participant, request) =
                (&coordinator, &txn, &participant, &request);
            let policy = coordinator.compensation_policy();
            let compensated = delivery::until_done(policy, &mut stopping, |_| async move {
                // Planted bug (test builds only): call a step compensated without asking.
                let result = if concord_failpoints::planted("skip-compensation") {
                    Ok(())
                } else {
                    link.compensate(request.clone()).await.map(|_| ())
                };
                let failure = result.err().map(|status| delivery::describe(&status));
                let attempts = coordinator.record_attempt(txn, branch, failure.as_deref());
                let Some(error) = failure else { return Attempt::Done(()) };
                if coordinator.needs_attention(txn, attempts) {
                    tracing::error!(
                        %participant, attempts, %error,
                        "saga compensation keeps failing: the transaction needs attention; \
                         still retrying"
                    );
                } else {
                    tracing::warn!(%participant, %error, "compensation failed; retrying");
                }
                Attempt::Retry
            })
            .await;
            match compensated {
                Some(()) => Done::Input(Input::Compensated { branch }),
                None => Done::Nothing,
            }
        });
    }

    /// Resolves a silent one-phase branch: Abort until answered. Acknowledged → aborted for
    /// good (a barrier refuses the late Prepare); FAILED_PRECONDITION → it committed.
    fn push_probe(&mut self) {
        let coordinator = Arc::clone(&self.coordinator);
        let txn = self.txn.clone();
        let participant = self.participants[0].clone();
        let request = v1::AbortRequest {
            txn_id: txn.to_string(),
            epoch: coordinator.epoch.0,
            deadline_unix_ms: self.deadline_unix_ms,
        };
        self.push_call(async move {
            let Some(link) = coordinator.link(&participant) else {
                tracing::error!(%participant, "a one-phase branch names a participant that is not configured; its outcome stays unknown");
                return Done::Nothing;
            };
            let mut stopping = coordinator.stopping.subscribe();
            let (coordinator, txn, participant, request) =
                (&coordinator, &txn, &participant, &request);
            let policy = coordinator.delivery_policy();
            let answered = delivery::until_done(policy, &mut stopping, |_| async move {
                let status = match delivery::probe_answer(link.abort(request.clone()).await) {
                    ProbeAnswer::Committed => return Attempt::Done(true),
                    ProbeAnswer::Aborted => return Attempt::Done(false),
                    ProbeAnswer::Unknown(status) => status,
                };
                if status.code() == tonic::Code::DataLoss {
                    tracing::error!(%participant, message = status.message(), "one-phase outcome forgotten by its participant; it stays unknown");
                } else {
                    tracing::warn!(%participant, code = ?status.code(), "one-phase probe failed; retrying");
                }
                coordinator.record_attempt(txn, 0, Some(&delivery::describe(&status)));
                Attempt::Retry
            })
            .await;
            match answered {
                Some(committed) => Done::Input(Input::ProbeAnswered { committed }),
                None => Done::Nothing,
            }
        });
    }
}

/// The input for a Prepare to a participant this coordinator has no link to (a log written
/// with another configuration): unreachable.
fn unknown_participant(branch: usize, participant: &str) -> Input {
    Input::Prepared {
        branch,
        result: PrepareResult::Unreachable(format!("participant {participant} is not configured")),
    }
}
