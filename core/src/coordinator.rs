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
//! A transaction with one branch uses one-phase commit: that participant's YES is itself the
//! commit, so the decision is the participant's, not ours. Its STARTED record is forced before
//! the Prepare goes out (so a restarted coordinator knows to ask), and a timeout is resolved by
//! probing with Abort until answered: the participant either acknowledges (a barrier now makes
//! the branch aborted for good) or refuses because it committed.

use serde::{Deserialize, Serialize};

use crate::types::{Epoch, NoReason, TxnId, Vote};

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
}

/// What a Prepare call produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrepareResult {
    /// The participant voted.
    Voted(Vote),
    /// A one-phase Prepare that the participant committed.
    OnePhaseCommitted,
    /// No answer in time: the branch may or may not be prepared.
    Timeout,
    /// The participant could not be reached or refused the call.
    Unreachable(String),
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
    /// The forced STARTED record of a one-phase transaction is durable.
    StartedDurable,
    /// The participant of a one-phase transaction answered the Abort probe.
    ProbeAnswered {
        /// It had committed (it refused the Abort); otherwise the Abort left a barrier.
        committed: bool,
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
        /// Branches that voted YES.
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
    /// Append and force the STARTED record of a one-phase transaction; feed
    /// [`Input::StartedDurable`] once durable.
    ForceStarted,
    /// Send Abort to the one-phase branch, again and again until it answers; feed
    /// [`Input::ProbeAnswered`].
    ProbeOnePhase,
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
    /// Every vote was YES or READ_ONLY; the COMMIT record is being forced.
    Deciding,
    /// The COMMIT record is durable; Commit is being delivered.
    Committing,
    /// Every Commit was acknowledged.
    Committed,
    /// Aborted.
    Aborted(AbortCause),
}

/// One branch's state, as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BranchStatus {
    /// Prepare sent, no answer yet.
    Preparing,
    /// Voted YES.
    Prepared,
    /// Voted READ_ONLY: gets no phase 2.
    ReadOnly,
    /// Voted NO.
    VotedNo(Vote),
    /// No answer (timeout or unreachable): may be prepared.
    Unknown,
    /// Commit sent, not acknowledged.
    Committing,
    /// Commit acknowledged (or committed in one phase).
    Committed,
    /// Abort sent (or nothing to abort).
    Aborted,
}

/// The state machine of one transaction. See the module documentation.
#[derive(Clone, Debug)]
pub struct TxnMachine {
    phase: Phase,
    branches: Vec<BranchStatus>,
}

impl TxnMachine {
    /// A transaction over `branch_count` branches; returns the machine and the Prepares to send.
    #[must_use]
    pub fn start(branch_count: usize) -> (TxnMachine, Vec<Output>) {
        assert!(branch_count > 0, "a transaction has at least one branch");
        let outputs = if branch_count == 1 {
            vec![Output::ForceStarted]
        } else {
            (0..branch_count)
                .map(|branch| Output::SendPrepare { branch, one_phase: false })
                .collect()
        };
        (
            TxnMachine {
                phase: Phase::Preparing,
                branches: vec![BranchStatus::Preparing; branch_count],
            },
            outputs,
        )
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
        (TxnMachine { phase, branches }, outputs)
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

    /// Feeds one input; returns what to do.
    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        match input {
            Input::Prepared { branch, result } => self.handle_prepared(branch, result),
            Input::CommitDurable => self.handle_commit_durable(),
            Input::CommitAcknowledged { branch } => self.handle_commit_acknowledged(branch),
            // One phase: the participant decides, not the deadline.
            Input::Deadline if self.one_phase() => Vec::new(),
            Input::Deadline => match self.phase {
                Phase::Preparing => self.abort(AbortCause::Deadline),
                _ => Vec::new(),
            },
            Input::StartedDurable => {
                assert!(self.one_phase(), "only one-phase transactions force STARTED");
                vec![Output::SendPrepare { branch: 0, one_phase: true }]
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
        }
    }

    /// A finished transaction, as recovery or a fence records it.
    #[must_use]
    pub fn finished(branch_count: usize, phase: Phase) -> TxnMachine {
        let status =
            if phase == Phase::Committed { BranchStatus::Committed } else { BranchStatus::Aborted };
        TxnMachine { phase, branches: vec![status; branch_count] }
    }

    /// A recovered one-phase transaction with no known outcome: probe its participant.
    #[must_use]
    pub fn recover_one_phase() -> (TxnMachine, Vec<Output>) {
        let machine = TxnMachine { phase: Phase::Preparing, branches: vec![BranchStatus::Unknown] };
        (machine, vec![Output::ProbeOnePhase])
    }

    fn one_phase(&self) -> bool {
        self.branches.len() == 1
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
            PrepareResult::Timeout | PrepareResult::Unreachable(_) if self.one_phase() => {
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
        }
        if self.branches.contains(&BranchStatus::Preparing) {
            return Vec::new();
        }
        let yes: Vec<usize> = self.branches_in(&BranchStatus::Prepared);
        if yes.is_empty() {
            // Every branch was read-only: nothing to commit anywhere, nothing to log.
            self.phase = Phase::Committed;
            return vec![Output::Reply(Decision::Committed), Output::LogEnd];
        }
        self.phase = Phase::Deciding;
        vec![Output::ForceCommit { branches: yes }]
    }

    fn handle_commit_durable(&mut self) -> Vec<Output> {
        assert_eq!(self.phase, Phase::Deciding, "COMMIT became durable outside the deciding phase");
        self.phase = Phase::Committing;
        let mut outputs = vec![Output::Reply(Decision::Committed)];
        for branch in self.branches_in(&BranchStatus::Prepared) {
            self.branches[branch] = BranchStatus::Committing;
            outputs.push(Output::SendCommit { branch });
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
        assert_eq!(self.phase, Phase::Preparing, "only an undecided transaction can abort");
        self.phase = Phase::Aborted(cause.clone());
        let mut outputs =
            vec![Output::Reply(Decision::Aborted(cause.clone())), Output::LogAbort(cause)];
        for branch in 0..self.branches.len() {
            match self.branches[branch] {
                // Prepared, maybe prepared, or not answered yet: tell it now. An Abort that
                // overtakes its Prepare leaves a barrier there, so the Prepare cannot lock
                // later; one that follows it releases the locks at once, without waiting for
                // the vote to come back.
                BranchStatus::Prepared | BranchStatus::Unknown | BranchStatus::Preparing => {
                    self.branches[branch] = BranchStatus::Aborted;
                    outputs.push(Output::SendAbort { branch });
                }
                _ => {}
            }
        }
        outputs
    }

    fn branches_in(&self, status: &BranchStatus) -> Vec<usize> {
        (0..self.branches.len()).filter(|&b| self.branches[b] == *status).collect()
    }
}

/// A record of the coordinator's decision log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordinatorRecord {
    /// This coordinator process started with this epoch. Forced before serving.
    Epoch(Epoch),
    /// A transaction started (not forced: presumed abort needs no record; it lets recovery
    /// send Aborts and answer GetTransaction).
    Started {
        /// The transaction.
        txn: TxnId,
        /// Participant names, in branch order.
        participants: Vec<String>,
        /// Wall-clock start.
        created_unix_ms: u64,
        /// The Prepare deadline sent to participants.
        deadline_unix_ms: u64,
    },
    /// The COMMIT decision. Forced before any Commit is sent.
    Commit {
        /// The transaction.
        txn: TxnId,
        /// Participant names, in branch order.
        participants: Vec<String>,
        /// Branches that must receive Commit.
        pending: Vec<usize>,
        /// Wall-clock decision time.
        decided_unix_ms: u64,
    },
    /// The transaction aborted (not forced).
    Aborted {
        /// The transaction.
        txn: TxnId,
        /// Why.
        cause: AbortCause,
    },
    /// A client fenced an unknown id: it is aborted for good. Forced before answering. Written
    /// by earlier versions; [`CoordinatorRecord::FencedAt`] replaces it.
    Fenced {
        /// The transaction.
        txn: TxnId,
    },
    /// Every Commit was acknowledged (not forced: if lost, recovery re-sends Commit, which the
    /// participants acknowledge again).
    End {
        /// The transaction.
        txn: TxnId,
    },
    /// A checkpoint of every transaction still committing and every remembered outcome; the
    /// records from the matching begin to here replace all state on replay.
    CheckpointBegin {
        /// Matches the end.
        id: u64,
        /// The epoch at the checkpoint.
        epoch: Epoch,
        /// Every finished transaction forgotten so far was created at or before this time.
        forgotten_before_unix_ms: u64,
    },
    /// Transactions in the checkpoint, as the records that rebuild them.
    CheckpointEntries(Vec<CoordinatorRecord>),
    /// The checkpoint is complete.
    CheckpointEnd {
        /// Matches the begin.
        id: u64,
    },
    /// An unknown id was fenced (by a client, or to answer an in-doubt participant): it is
    /// aborted for good. Forced before answering. Its time bounds when the id was first
    /// submitted, which the forgotten horizon needs once it is evicted. (Last, so every older
    /// record keeps its encoding.)
    FencedAt {
        /// The transaction.
        txn: TxnId,
        /// When it was fenced.
        fenced_unix_ms: u64,
    },
}

impl CoordinatorRecord {
    /// Encodes the record for the log.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        crate::record::encode(self)
    }

    /// Decodes a record read from the log.
    pub fn decode(bytes: &[u8]) -> Result<CoordinatorRecord, crate::record::RecordError> {
        crate::record::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yes(branch: usize) -> Input {
        Input::Prepared { branch, result: PrepareResult::Voted(Vote::Yes) }
    }

    /// All YES: the decision is forced first, and only then are Commits sent and the client told.
    #[test]
    fn all_yes_forces_the_decision_before_any_commit() {
        let (mut machine, outputs) = TxnMachine::start(2);
        assert_eq!(
            outputs,
            vec![
                Output::SendPrepare { branch: 0, one_phase: false },
                Output::SendPrepare { branch: 1, one_phase: false }
            ]
        );
        assert_eq!(machine.handle(yes(1)), vec![]);
        assert_eq!(machine.handle(yes(0)), vec![Output::ForceCommit { branches: vec![0, 1] }]);
        assert_eq!(machine.phase(), &Phase::Deciding);
        assert_eq!(
            machine.handle(Input::CommitDurable),
            vec![
                Output::Reply(Decision::Committed),
                Output::SendCommit { branch: 0 },
                Output::SendCommit { branch: 1 }
            ]
        );
        assert_eq!(machine.handle(Input::CommitAcknowledged { branch: 0 }), vec![]);
        assert_eq!(
            machine.handle(Input::CommitAcknowledged { branch: 0 }),
            vec![],
            "duplicate ack"
        );
        assert_eq!(machine.handle(Input::CommitAcknowledged { branch: 1 }), vec![Output::LogEnd]);
        assert_eq!(machine.phase(), &Phase::Committed);
    }

    /// A NO aborts with its reason, nothing forced, and Abort goes at once to every branch that
    /// may hold locks, including one whose vote has not arrived; its late YES changes nothing.
    #[test]
    fn a_no_vote_aborts_every_branch_that_may_hold_locks() {
        let (mut machine, _) = TxnMachine::start(3);
        machine.handle(yes(0));
        let no = Vote::no(NoReason::BoundCrossed, "low");
        let cause =
            AbortCause::VoteNo { branch: 1, reason: NoReason::BoundCrossed, message: "low".into() };
        assert_eq!(
            machine.handle(Input::Prepared { branch: 1, result: PrepareResult::Voted(no) }),
            vec![
                Output::Reply(Decision::Aborted(cause.clone())),
                Output::LogAbort(cause),
                Output::SendAbort { branch: 0 },
                Output::SendAbort { branch: 2 }
            ]
        );
        assert_eq!(machine.handle(yes(2)), vec![], "branch 2 was already sent an Abort");
    }

    /// A timeout or unreachable participant is never read as NO or done: it aborts, and the
    /// silent branch is sent an Abort since it may have prepared.
    #[test]
    fn timeouts_and_unreachable_abort_and_notify_the_silent_branch() {
        for result in [PrepareResult::Timeout, PrepareResult::Unreachable("refused".into())] {
            let (mut machine, _) = TxnMachine::start(2);
            let outputs = machine.handle(Input::Prepared { branch: 1, result });
            assert!(matches!(outputs[0], Output::Reply(Decision::Aborted(_))));
            assert!(outputs.contains(&Output::SendAbort { branch: 1 }));
            assert!(matches!(machine.phase(), Phase::Aborted(_)));
        }
    }

    /// The deadline aborts an undecided transaction and is ignored once decided.
    #[test]
    fn deadline_aborts_only_while_preparing() {
        let (mut machine, _) = TxnMachine::start(2);
        machine.handle(yes(0));
        let outputs = machine.handle(Input::Deadline);
        assert_eq!(outputs[0], Output::Reply(Decision::Aborted(AbortCause::Deadline)));
        assert!(outputs.contains(&Output::SendAbort { branch: 0 }));

        let (mut decided, _) = TxnMachine::start(1);
        decided.handle(Input::Prepared { branch: 0, result: PrepareResult::OnePhaseCommitted });
        assert_eq!(decided.handle(Input::Deadline), vec![]);
        assert_eq!(decided.phase(), &Phase::Committed);
    }

    /// Once the decision is being forced, nothing aborts it: the deadline and late answers are
    /// ignored.
    #[test]
    fn nothing_aborts_a_decided_commit() {
        let (mut machine, _) = TxnMachine::start(2);
        machine.handle(yes(0));
        machine.handle(yes(1));
        assert_eq!(machine.handle(Input::Deadline), vec![]);
        assert_eq!(
            machine.handle(Input::Prepared { branch: 0, result: PrepareResult::Timeout }),
            vec![]
        );
        assert_eq!(machine.phase(), &Phase::Deciding);
    }

    /// One branch means one-phase commit; all read-only commits with nothing forced or sent.
    #[test]
    fn one_phase_and_read_only_skip_the_decision_record() {
        let (mut single, outputs) = TxnMachine::start(1);
        assert_eq!(outputs, vec![Output::ForceStarted]);
        assert_eq!(
            single.handle(Input::StartedDurable),
            vec![Output::SendPrepare { branch: 0, one_phase: true }]
        );
        assert_eq!(
            single.handle(Input::Prepared { branch: 0, result: PrepareResult::OnePhaseCommitted }),
            vec![Output::Reply(Decision::Committed), Output::LogEnd]
        );

        let (mut reads, _) = TxnMachine::start(2);
        let read_only =
            |branch| Input::Prepared { branch, result: PrepareResult::Voted(Vote::ReadOnly) };
        assert_eq!(reads.handle(read_only(0)), vec![]);
        assert_eq!(
            reads.handle(read_only(1)),
            vec![Output::Reply(Decision::Committed), Output::LogEnd]
        );

        let (mut mixed, _) = TxnMachine::start(2);
        mixed.handle(read_only(0));
        assert_eq!(mixed.handle(yes(1)), vec![Output::ForceCommit { branches: vec![1] }]);
        let outputs = mixed.handle(Input::CommitDurable);
        assert_eq!(
            outputs,
            vec![Output::Reply(Decision::Committed), Output::SendCommit { branch: 1 }]
        );
    }

    /// A probe the participant cannot answer (it forgot) leaves the outcome unknown.
    #[test]
    fn unanswerable_probe_changes_nothing() {
        let (mut machine, _) = TxnMachine::recover_one_phase();
        assert_eq!(machine.phase(), &Phase::Preparing);
        assert_eq!(machine.handle(Input::Deadline), vec![]);
        assert_eq!(machine.phase(), &Phase::Preparing);
    }

    /// A silent one-phase participant is probed, never presumed aborted: the deadline is
    /// ignored and the probe's answer decides.
    #[test]
    fn silent_one_phase_branch_is_probed_not_presumed() {
        for committed in [true, false] {
            let (mut machine, _) = TxnMachine::start(1);
            machine.handle(Input::StartedDurable);
            let outputs =
                machine.handle(Input::Prepared { branch: 0, result: PrepareResult::Timeout });
            assert_eq!(outputs, vec![Output::ProbeOnePhase]);
            assert_eq!(machine.handle(Input::Deadline), vec![]);
            let outputs = machine.handle(Input::ProbeAnswered { committed });
            let expected = if committed {
                Decision::Committed
            } else {
                Decision::Aborted(AbortCause::Timeout { branch: 0 })
            };
            assert_eq!(outputs[0], Output::Reply(expected));
        }
    }

    /// Recovery of a durable COMMIT re-sends Commit to the branches not yet acknowledged.
    #[test]
    fn recovered_commit_is_driven_forward() {
        let (mut machine, outputs) = TxnMachine::recover_committing(3, &[0, 2]);
        assert_eq!(
            outputs,
            vec![Output::SendCommit { branch: 0 }, Output::SendCommit { branch: 2 }]
        );
        machine.handle(Input::CommitAcknowledged { branch: 0 });
        assert_eq!(machine.handle(Input::CommitAcknowledged { branch: 2 }), vec![Output::LogEnd]);
    }

    /// Coordinator records round-trip through the log encoding.
    #[test]
    fn records_round_trip() {
        let txn = TxnId::parse("t", "txn_id").unwrap_or_else(|e| panic!("{e}"));
        let record = CoordinatorRecord::Commit {
            txn,
            participants: vec!["a".into(), "b".into()],
            pending: vec![1],
            decided_unix_ms: 5,
        };
        assert_eq!(CoordinatorRecord::decode(&record.encode()).ok(), Some(record));
    }
}
