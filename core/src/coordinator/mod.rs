//! The coordinator's protocol for one transaction, as a pure state machine, and the records of
//! its decision log.
//!
//! A [`TxnMachine`] takes inputs (a vote or a failed Prepare, the COMMIT record becoming
//! durable, a Commit acknowledged, the deadline passing) and returns outputs (send Prepare,
//! log and force the decision, send Commit or Abort, reply to the client, log the end). The
//! rules of DESIGN.md become the type flow:
//!
//! - every branch votes YES or READ_ONLY → [`Output::ForceCommit`]; `SendCommit` is output only
//!   after [`Input::CommitDurable`] (rule 1: decision forced before any Commit);
//! - any NO, timeout, unreachable participant or the deadline → abort, with nothing forced
//!   (rule 2, presumed abort), `SendAbort` to every branch that may have prepared;
//! - a failed Prepare is never read as NO (rule 6): it aborts, and the participant learns the
//!   abort by our Abort or by asking;
//! - once the decision is COMMIT, nothing leads back to abort (rule 4): Commit is re-sent until
//!   acknowledged, then `LogEnd`.
//!
//! Saga steps (a [`Plan`] with [`BranchKind::Saga`] branches, mode SAGA or AUTO) run after every
//! two-phase branch prepared: [`Output::ForceStarted`] names them in the log before the first
//! [`Output::SendExecute`], each step starts once the steps it runs after executed, and then
//! the decision covers both kinds (Commit also releases an executed step's undo). An abort
//! compensates every step that executed or may have (no answer), in reverse branch order, one
//! [`Output::SendCompensate`] at a time, each logged ([`Output::LogCompensated`]); the phase is
//! `Compensating` until the last, then `Aborted`. In AUTO mode a Prepare answered UNIMPLEMENTED
//! turns its branch into a saga step.
//!
//! A transaction with one branch uses one-phase commit: that participant's YES is itself the
//! commit, so the decision is the participant's, not ours. Its STARTED record is forced before
//! the Prepare goes out (so a restarted coordinator knows to ask), and a timeout is resolved by
//! probing with Abort until answered: the participant either acknowledges (a barrier now makes
//! the branch aborted for good) or refuses because it committed.

mod record;
pub mod replay;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use record::CoordinatorRecord;

use crate::types::{NoReason, Vote};

/// Why a transaction aborted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortCause {
    /// A participant voted NO.
    VoteNo {
        /// The participant's index in the transaction's branches.
        branch: usize,
        /// Its reason.
        reason: NoReason,
        /// Its message.
        message: String,
    },
    /// A participant could not be reached.
    Unreachable {
        /// The branch.
        branch: usize,
        /// The transport error.
        message: String,
    },
    /// A participant did not answer in time.
    Timeout {
        /// The branch.
        branch: usize,
    },
    /// The transaction's deadline passed before every vote arrived.
    Deadline,
    /// The coordinator restarted before deciding.
    CoordinatorRestart,
    /// A client asked for the outcome of an unknown id and fenced it.
    Fenced,
    /// A saga step's participant refused its Execute. (Last, so older records keep their
    /// encoding.)
    StepFailed {
        /// The step's branch.
        branch: usize,
        /// Its reason.
        reason: NoReason,
        /// Its message.
        message: String,
    },
    /// The client rolled an interactive transaction back.
    ClientRollback,
}

/// How the coordinator may run a transaction's branches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnMode {
    /// Every branch prepares (two-phase commit).
    #[default]
    TwoPhase,
    /// Every branch is a saga step (Execute, and Compensate if the saga aborts).
    Saga,
    /// Two-phase where the participant can prepare, saga steps elsewhere.
    Auto,
}

/// How one branch takes part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BranchKind {
    /// Prepare, then Commit or Abort.
    TwoPhase,
    /// Execute, then Commit (release its undo) or Compensate.
    Saga,
}

/// What the machine is asked to run: the transaction's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Each branch's kind as known at the start (in `Auto` mode, a branch starts as two-phase
    /// unless its participant is known to be unable to prepare).
    pub kinds: Vec<BranchKind>,
    /// Saga ordering: for each branch, the lower-indexed branches it runs after. `None`: every
    /// saga step runs after the saga steps before it (a chain in branch order).
    pub depends_on: Option<Vec<Vec<usize>>>,
    /// The mode: in `Auto`, a Prepare answered UNIMPLEMENTED turns its branch into a saga step.
    pub mode: TxnMode,
}

impl Plan {
    /// Plain two-phase commit over `branch_count` branches.
    #[must_use]
    pub fn two_phase(branch_count: usize) -> Plan {
        Plan {
            kinds: vec![BranchKind::TwoPhase; branch_count],
            depends_on: None,
            mode: TxnMode::TwoPhase,
        }
    }
}

/// What a Prepare or an Execute call produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrepareResult {
    /// The participant voted (for Execute: YES executed, READ_ONLY nothing to undo, NO
    /// refused).
    Voted(Vote),
    /// A one-phase Prepare that the participant committed.
    OnePhaseCommitted,
    /// No answer in time: the branch may or may not be prepared (executed).
    Timeout,
    /// The participant could not be reached or refused the call.
    Unreachable(String),
    /// The participant does not implement the call (it cannot prepare, or cannot execute).
    /// Nothing was done.
    Unimplemented(String),
}

/// An input to a transaction's machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A branch's Prepare finished.
    Prepared {
        /// The branch.
        branch: usize,
        /// How.
        result: PrepareResult,
    },
    /// The forced COMMIT record is durable.
    CommitDurable,
    /// A branch acknowledged Commit.
    CommitAcknowledged {
        /// The branch.
        branch: usize,
    },
    /// The decision deadline passed.
    Deadline,
    /// The forced STARTED record (of a one-phase transaction, or of a saga before its first
    /// Execute) is durable.
    StartedDurable,
    /// The participant of a one-phase transaction answered the Abort probe.
    ProbeAnswered {
        /// It had committed (it refused the Abort); otherwise the Abort left a barrier.
        committed: bool,
    },
    /// A saga step's Execute finished.
    Executed {
        /// The step's branch.
        branch: usize,
        /// How.
        result: PrepareResult,
    },
    /// A saga step's Compensate was acknowledged.
    Compensated {
        /// The step's branch.
        branch: usize,
    },
}

/// An output of a transaction's machine, for the driver to carry out in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send Prepare to a branch (one-phase if it is the only branch).
    SendPrepare {
        /// The branch.
        branch: usize,
        /// Ask it to commit at once.
        one_phase: bool,
    },
    /// Append and force the COMMIT decision, listing the branches that must get Commit; feed
    /// [`Input::CommitDurable`] once it is durable.
    ForceCommit {
        /// Branches that voted YES, and saga steps that executed (Commit releases their undo).
        branches: Vec<usize>,
    },
    /// Send Commit to a branch, again and again until acknowledged.
    SendCommit {
        /// The branch.
        branch: usize,
    },
    /// Send Abort to a branch; no acknowledgement is needed.
    SendAbort {
        /// The branch.
        branch: usize,
    },
    /// Tell the client the outcome.
    Reply(Decision),
    /// Append (without forcing) the end of the transaction: every Commit was acknowledged.
    LogEnd,
    /// Append (without forcing) the abort, so GetTransaction can answer with its cause.
    LogAbort(AbortCause),
    /// Append and force the STARTED record (of a one-phase transaction, or of a saga, naming
    /// its steps so recovery compensates them); feed [`Input::StartedDurable`] once durable.
    ForceStarted,
    /// Send Abort to the one-phase branch, again and again until it answers; feed
    /// [`Input::ProbeAnswered`].
    ProbeOnePhase,
    /// Send Execute to a saga step; feed [`Input::Executed`].
    SendExecute {
        /// The step's branch.
        branch: usize,
    },
    /// Send Compensate to a saga step, again and again (with backoff) until acknowledged;
    /// feed [`Input::Compensated`]. One step at a time, in reverse branch order.
    SendCompensate {
        /// The step's branch.
        branch: usize,
    },
    /// Append (without forcing) that a step is compensated (saga progress: recovery does not
    /// compensate it again). When the machine's phase is then `Aborted`, every step is done.
    LogCompensated {
        /// The step's branch.
        branch: usize,
    },
}

/// What the client is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The commit decision is durable.
    Committed,
    /// Aborted, and why.
    Aborted(AbortCause),
}

/// Where a transaction is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Prepares sent; votes arriving.
    Preparing,
    /// Every two-phase branch prepared; saga steps are executing.
    Executing,
    /// Every vote was YES or READ_ONLY (and every saga step executed); the COMMIT record is
    /// being forced.
    Deciding,
    /// The COMMIT record is durable; Commit is being delivered.
    Committing,
    /// Every Commit was acknowledged.
    Committed,
    /// Aborted; executed saga steps are being compensated, in reverse order.
    Compensating(AbortCause),
    /// Aborted (and every executed saga step compensated).
    Aborted(AbortCause),
}

/// One branch's state, as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BranchStatus {
    /// Prepare sent, no answer yet.
    Preparing,
    /// Voted YES.
    Prepared,
    /// Voted READ_ONLY (or a saga step that executed with nothing to undo): gets no phase 2.
    ReadOnly,
    /// Voted NO.
    VotedNo(Vote),
    /// No answer (timeout or unreachable): may be prepared (or executed).
    Unknown,
    /// Commit sent, not acknowledged.
    Committing,
    /// Commit acknowledged (or committed in one phase).
    Committed,
    /// Abort sent (or nothing to abort; for a saga step, never started).
    Aborted,
    /// Saga step waiting for the steps it runs after.
    Waiting,
    /// Saga step: Execute sent, no answer yet.
    Executing,
    /// Saga step executed.
    Executed,
    /// Saga step refused by its participant: nothing applied.
    ExecuteFailed(Vote),
    /// Saga step to be compensated (Compensate sent, or queued behind later steps).
    Compensating,
    /// Saga step compensated.
    Compensated,
}

/// The state machine of one transaction. See the module documentation.
#[derive(Clone, Debug)]
pub struct TxnMachine {
    phase: Phase,
    branches: Vec<BranchStatus>,
    kinds: Vec<BranchKind>,
    depends_on: Option<Vec<Vec<usize>>>,
    mode: TxnMode,
    /// A single two-phase branch: one-phase commit.
    one_phase: bool,
}

impl TxnMachine {
    /// A two-phase transaction over `branch_count` branches; returns the machine and the
    /// Prepares to send.
    #[must_use]
    pub fn start(branch_count: usize) -> (TxnMachine, Vec<Output>) {
        TxnMachine::start_with(Plan::two_phase(branch_count))
    }

    /// A transaction as `plan` shapes it: Prepare goes to every two-phase branch; once they all
    /// prepared, the saga steps execute (after a forced STARTED record naming them); then the
    /// decision.
    #[must_use]
    pub fn start_with(plan: Plan) -> (TxnMachine, Vec<Output>) {
        let count = plan.kinds.len();
        assert!(count > 0, "a transaction has at least one branch");
        let one_phase =
            count == 1 && plan.mode == TxnMode::TwoPhase && plan.kinds[0] == BranchKind::TwoPhase;
        let branches = plan
            .kinds
            .iter()
            .map(|kind| match kind {
                BranchKind::TwoPhase => BranchStatus::Preparing,
                BranchKind::Saga => BranchStatus::Waiting,
            })
            .collect();
        let mut machine = TxnMachine {
            phase: Phase::Preparing,
            branches,
            kinds: plan.kinds,
            depends_on: plan.depends_on,
            mode: plan.mode,
            one_phase,
        };
        let outputs = if one_phase {
            vec![Output::ForceStarted]
        } else if machine.kinds.contains(&BranchKind::TwoPhase) {
            (0..count)
                .filter(|&b| machine.kinds[b] == BranchKind::TwoPhase)
                .map(|branch| Output::SendPrepare { branch, one_phase: false })
                .collect()
        } else {
            machine.phase = Phase::Executing;
            vec![Output::ForceStarted]
        };
        (machine, outputs)
    }

    /// A transaction recovered with a durable COMMIT decision: re-drives Commit to `pending`.
    #[must_use]
    pub fn recover_committing(branch_count: usize, pending: &[usize]) -> (TxnMachine, Vec<Output>) {
        let mut branches = vec![BranchStatus::Committed; branch_count];
        let mut outputs = Vec::new();
        for &branch in pending {
            branches[branch] = BranchStatus::Committing;
            outputs.push(Output::SendCommit { branch });
        }
        let phase = if outputs.is_empty() { Phase::Committed } else { Phase::Committing };
        if phase == Phase::Committed {
            outputs.push(Output::LogEnd);
        }
        let machine =
            TxnMachine { phase, branches, ..TxnMachine::finished(branch_count, Phase::Committed) };
        (machine, outputs)
    }

    /// A recovered saga that aborted (or was undecided at the crash, `cause` then says so):
    /// Abort goes to every two-phase branch, and every step in `to_compensate` is compensated,
    /// in reverse order. Steps not listed were compensated already.
    #[must_use]
    pub fn recover_compensating(
        kinds: Vec<BranchKind>,
        to_compensate: &[usize],
        cause: AbortCause,
    ) -> (TxnMachine, Vec<Output>) {
        let branches = (0..kinds.len())
            .map(|b| match kinds[b] {
                BranchKind::TwoPhase => BranchStatus::Aborted,
                BranchKind::Saga if to_compensate.contains(&b) => BranchStatus::Compensating,
                BranchKind::Saga => BranchStatus::Compensated,
            })
            .collect();
        let mut machine = TxnMachine {
            phase: Phase::Compensating(cause.clone()),
            branches,
            kinds,
            depends_on: None,
            mode: TxnMode::Saga,
            one_phase: false,
        };
        let mut outputs: Vec<Output> = (0..machine.kinds.len())
            .filter(|&b| machine.kinds[b] == BranchKind::TwoPhase)
            .map(|branch| Output::SendAbort { branch })
            .collect();
        outputs.extend(machine.next_compensation(cause));
        (machine, outputs)
    }

    /// The current phase.
    #[must_use]
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Every branch's status.
    #[must_use]
    pub fn branches(&self) -> &[BranchStatus] {
        &self.branches
    }

    /// Every branch's kind.
    #[must_use]
    pub fn kinds(&self) -> &[BranchKind] {
        &self.kinds
    }

    /// The saga steps (branches running as saga steps), in branch order.
    #[must_use]
    pub fn saga_steps(&self) -> Vec<usize> {
        (0..self.kinds.len()).filter(|&b| self.kinds[b] == BranchKind::Saga).collect()
    }

    /// The mode it runs in.
    #[must_use]
    pub fn mode(&self) -> TxnMode {
        self.mode
    }

    /// Feeds one input; returns what to do.
    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        match input {
            Input::Prepared { branch, result } => self.handle_prepared(branch, result),
            Input::CommitDurable => self.handle_commit_durable(),
            Input::CommitAcknowledged { branch } => self.handle_commit_acknowledged(branch),
            // One phase: the participant decides, not the deadline.
            Input::Deadline if self.one_phase => Vec::new(),
            Input::Deadline => match self.phase {
                Phase::Preparing | Phase::Executing => self.abort(AbortCause::Deadline),
                _ => Vec::new(),
            },
            Input::StartedDurable if self.one_phase => {
                vec![Output::SendPrepare { branch: 0, one_phase: true }]
            }
            Input::StartedDurable => {
                assert_eq!(
                    self.phase,
                    Phase::Executing,
                    "only sagas force STARTED, before executing"
                );
                self.ready_steps()
            }
            Input::ProbeAnswered { committed } => {
                if self.phase != Phase::Preparing || self.branches[0] != BranchStatus::Unknown {
                    return Vec::new();
                }
                if committed {
                    self.branches[0] = BranchStatus::Committed;
                    self.phase = Phase::Committed;
                    vec![Output::Reply(Decision::Committed), Output::LogEnd]
                } else {
                    let cause = AbortCause::Timeout { branch: 0 };
                    self.branches[0] = BranchStatus::Aborted;
                    self.phase = Phase::Aborted(cause.clone());
                    vec![Output::Reply(Decision::Aborted(cause.clone())), Output::LogAbort(cause)]
                }
            }
            Input::Executed { branch, result } => self.handle_executed(branch, result),
            Input::Compensated { branch } => self.handle_compensated(branch),
        }
    }

    /// A finished transaction, as recovery or a fence records it.
    #[must_use]
    pub fn finished(branch_count: usize, phase: Phase) -> TxnMachine {
        let status =
            if phase == Phase::Committed { BranchStatus::Committed } else { BranchStatus::Aborted };
        TxnMachine {
            phase,
            branches: vec![status; branch_count],
            kinds: vec![BranchKind::TwoPhase; branch_count],
            depends_on: None,
            mode: TxnMode::TwoPhase,
            one_phase: branch_count == 1,
        }
    }

    /// Marks which branches ran as saga steps and in which mode (for a recovered entry's
    /// display).
    #[must_use]
    pub fn with_kinds(mut self, kinds: Vec<BranchKind>, mode: TxnMode) -> TxnMachine {
        if kinds.len() == self.branches.len() {
            self.one_phase = self.one_phase && !kinds.contains(&BranchKind::Saga);
            self.kinds = kinds;
            self.mode = mode;
        }
        self
    }

    /// A recovered one-phase transaction with no known outcome: probe its participant.
    #[must_use]
    pub fn recover_one_phase() -> (TxnMachine, Vec<Output>) {
        let mut machine = TxnMachine::finished(1, Phase::Preparing);
        machine.branches = vec![BranchStatus::Unknown];
        (machine, vec![Output::ProbeOnePhase])
    }

    fn handle_prepared(&mut self, branch: usize, result: PrepareResult) -> Vec<Output> {
        if self.branches.get(branch) != Some(&BranchStatus::Preparing) {
            return Vec::new(); // a duplicate or late answer
        }
        // Only a branch still marked Preparing gets here, and every phase but Preparing has
        // marked every branch otherwise (an abort marks the unanswered ones aborted).
        debug_assert_eq!(self.phase, Phase::Preparing, "an answer arrived after the decision");
        match result {
            PrepareResult::OnePhaseCommitted => {
                self.branches[branch] = BranchStatus::Committed;
                self.phase = Phase::Committed;
                return vec![Output::Reply(Decision::Committed), Output::LogEnd];
            }
            PrepareResult::Voted(Vote::Yes) => self.branches[branch] = BranchStatus::Prepared,
            PrepareResult::Voted(Vote::ReadOnly) => self.branches[branch] = BranchStatus::ReadOnly,
            PrepareResult::Voted(Vote::No { reason, message }) => {
                self.branches[branch] =
                    BranchStatus::VotedNo(Vote::No { reason, message: message.clone() });
                return self.abort(AbortCause::VoteNo { branch, reason, message });
            }
            PrepareResult::Unimplemented(_) if self.mode == TxnMode::Auto => {
                // It cannot prepare: it runs as a saga step instead. Nothing was prepared.
                self.kinds[branch] = BranchKind::Saga;
                self.branches[branch] = BranchStatus::Waiting;
            }
            PrepareResult::Timeout | PrepareResult::Unreachable(_) if self.one_phase => {
                // It may have committed: only the participant can say.
                self.branches[branch] = BranchStatus::Unknown;
                return vec![Output::ProbeOnePhase];
            }
            PrepareResult::Timeout => {
                self.branches[branch] = BranchStatus::Unknown;
                return self.abort(AbortCause::Timeout { branch });
            }
            PrepareResult::Unreachable(message) => {
                self.branches[branch] = BranchStatus::Unknown;
                return self.abort(AbortCause::Unreachable { branch, message });
            }
            PrepareResult::Unimplemented(message) => {
                // Two-phase mode: a participant that cannot prepare cannot take part. It did
                // nothing, so it needs no Abort.
                self.branches[branch] = BranchStatus::Aborted;
                return self.abort(AbortCause::Unreachable {
                    branch,
                    message: format!(
                        "the participant cannot prepare ({message}); submit with mode AUTO or \
                         SAGA to run its branch as a saga step"
                    ),
                });
            }
        }
        if self.branches.contains(&BranchStatus::Preparing) {
            return Vec::new();
        }
        if self.kinds.contains(&BranchKind::Saga) {
            // Every two-phase branch holds its locks: now the saga steps, once the STARTED
            // record naming them is durable (so a crash from here on compensates them).
            self.phase = Phase::Executing;
            return vec![Output::ForceStarted];
        }
        self.decide()
    }

    /// Every two-phase branch prepared and every saga step executed: commit.
    fn decide(&mut self) -> Vec<Output> {
        let to_commit: Vec<usize> = (0..self.branches.len())
            .filter(|&b| {
                matches!(self.branches[b], BranchStatus::Prepared | BranchStatus::Executed)
            })
            .collect();
        if to_commit.is_empty() {
            // Every branch was read-only: nothing to commit anywhere, nothing to log.
            self.phase = Phase::Committed;
            return vec![Output::Reply(Decision::Committed), Output::LogEnd];
        }
        self.phase = Phase::Deciding;
        vec![Output::ForceCommit { branches: to_commit }]
    }

    fn handle_executed(&mut self, branch: usize, result: PrepareResult) -> Vec<Output> {
        if self.branches.get(branch) != Some(&BranchStatus::Executing) {
            return Vec::new(); // late: the saga aborted meanwhile
        }
        debug_assert_eq!(self.phase, Phase::Executing, "an Execute answered outside executing");
        match result {
            PrepareResult::Voted(Vote::Yes) => self.branches[branch] = BranchStatus::Executed,
            PrepareResult::Voted(Vote::ReadOnly) | PrepareResult::OnePhaseCommitted => {
                self.branches[branch] = BranchStatus::ReadOnly;
            }
            PrepareResult::Voted(Vote::No { reason, message }) => {
                self.branches[branch] =
                    BranchStatus::ExecuteFailed(Vote::No { reason, message: message.clone() });
                return self.abort(AbortCause::StepFailed { branch, reason, message });
            }
            PrepareResult::Unimplemented(message) => {
                let vote = Vote::no(NoReason::Invalid, format!("cannot execute: {message}"));
                self.branches[branch] = BranchStatus::ExecuteFailed(vote);
                return self.abort(AbortCause::StepFailed {
                    branch,
                    reason: NoReason::Invalid,
                    message: format!("the participant cannot run saga steps ({message})"),
                });
            }
            PrepareResult::Timeout => {
                self.branches[branch] = BranchStatus::Unknown;
                return self.abort(AbortCause::Timeout { branch });
            }
            PrepareResult::Unreachable(message) => {
                self.branches[branch] = BranchStatus::Unknown;
                return self.abort(AbortCause::Unreachable { branch, message });
            }
        }
        let steps = self.saga_steps();
        if steps
            .iter()
            .all(|&b| matches!(self.branches[b], BranchStatus::Executed | BranchStatus::ReadOnly))
        {
            return self.decide();
        }
        self.ready_steps()
    }

    /// Execute for every waiting step whose predecessors have executed.
    fn ready_steps(&mut self) -> Vec<Output> {
        let done = |status: &BranchStatus| {
            matches!(
                status,
                BranchStatus::Executed | BranchStatus::ReadOnly | BranchStatus::Prepared
            )
        };
        let mut outputs = Vec::new();
        for branch in self.saga_steps() {
            if self.branches[branch] != BranchStatus::Waiting {
                continue;
            }
            let ready = match &self.depends_on {
                Some(depends_on) => depends_on.get(branch).is_none_or(|after| {
                    after.iter().all(|&a| self.branches.get(a).is_some_and(done))
                }),
                None => (0..branch)
                    .filter(|&b| self.kinds[b] == BranchKind::Saga)
                    .all(|b| done(&self.branches[b])),
            };
            if ready {
                self.branches[branch] = BranchStatus::Executing;
                outputs.push(Output::SendExecute { branch });
            }
        }
        outputs
    }

    fn handle_compensated(&mut self, branch: usize) -> Vec<Output> {
        if self.branches.get(branch) != Some(&BranchStatus::Compensating) {
            return Vec::new();
        }
        let Phase::Compensating(cause) = self.phase.clone() else { return Vec::new() };
        self.branches[branch] = BranchStatus::Compensated;
        let mut outputs = vec![Output::LogCompensated { branch }];
        outputs.extend(self.next_compensation(cause));
        outputs
    }

    /// Compensate for the highest-indexed step still to compensate, or, when none is left, the
    /// end of the abort.
    fn next_compensation(&mut self, cause: AbortCause) -> Vec<Output> {
        match (0..self.branches.len())
            .rev()
            .find(|&b| self.branches[b] == BranchStatus::Compensating)
        {
            Some(branch) => vec![Output::SendCompensate { branch }],
            None => {
                self.phase = Phase::Aborted(cause);
                Vec::new()
            }
        }
    }

    fn handle_commit_durable(&mut self) -> Vec<Output> {
        assert_eq!(self.phase, Phase::Deciding, "COMMIT became durable outside the deciding phase");
        self.phase = Phase::Committing;
        let mut outputs = vec![Output::Reply(Decision::Committed)];
        for branch in 0..self.branches.len() {
            if matches!(self.branches[branch], BranchStatus::Prepared | BranchStatus::Executed) {
                self.branches[branch] = BranchStatus::Committing;
                outputs.push(Output::SendCommit { branch });
            }
        }
        outputs
    }

    fn handle_commit_acknowledged(&mut self, branch: usize) -> Vec<Output> {
        if self.branches.get(branch) != Some(&BranchStatus::Committing) {
            return Vec::new();
        }
        self.branches[branch] = BranchStatus::Committed;
        if self.branches.contains(&BranchStatus::Committing) {
            return Vec::new();
        }
        self.phase = Phase::Committed;
        vec![Output::LogEnd]
    }

    fn abort(&mut self, cause: AbortCause) -> Vec<Output> {
        assert!(
            matches!(self.phase, Phase::Preparing | Phase::Executing),
            "only an undecided transaction can abort"
        );
        let mut outputs =
            vec![Output::Reply(Decision::Aborted(cause.clone())), Output::LogAbort(cause.clone())];
        for branch in 0..self.branches.len() {
            match (self.kinds[branch], &self.branches[branch]) {
                // Prepared, maybe prepared, or not answered yet: tell it now. An Abort that
                // overtakes its Prepare leaves a barrier there, so the Prepare cannot lock
                // later; one that follows it releases the locks at once, without waiting for
                // the vote to come back.
                (
                    BranchKind::TwoPhase,
                    BranchStatus::Prepared | BranchStatus::Unknown | BranchStatus::Preparing,
                ) => {
                    self.branches[branch] = BranchStatus::Aborted;
                    outputs.push(Output::SendAbort { branch });
                }
                // Executed, maybe executed, or not answered yet: compensate it. A Compensate
                // that overtakes its Execute leaves a barrier, so the Execute cannot apply.
                (
                    BranchKind::Saga,
                    BranchStatus::Executed | BranchStatus::Unknown | BranchStatus::Executing,
                ) => self.branches[branch] = BranchStatus::Compensating,
                (BranchKind::Saga, BranchStatus::Waiting) => {
                    self.branches[branch] = BranchStatus::Aborted;
                }
                _ => {}
            }
        }
        self.phase = Phase::Compensating(cause.clone());
        outputs.extend(self.next_compensation(cause));
        outputs
    }
}
