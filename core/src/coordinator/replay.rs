//! Rebuilding the coordinator's state from its decision log, and the records a checkpoint
//! writes to let that rebuild start late: both pure, so every rule of recovery is tested here
//! record by record and the driver only carries the answers out.
//!
//! - [`Replay`] folds the records read back (oldest first) into one [`ReplayedTxn`] per
//!   transaction; a complete checkpoint replaces everything before it, and the records that
//!   running transactions appended while it was written are applied again on top of it.
//! - [`ReplayedTxn::recover`] says what a restarted coordinator does with each: re-drive a
//!   durable COMMIT, probe an undecided one-phase branch, presume an undecided transaction
//!   aborted, resume a saga's compensation, or only remember a finished outcome.
//! - [`checkpoint_records`] is the inverse: the records that rebuild one transaction.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    AbortCause, BranchKind, BranchStatus, CoordinatorRecord, Output, Phase, TxnMachine, TxnMode,
};
use crate::types::{Epoch, TxnId};

/// What replay learned about one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayedTxn {
    /// Participant names, in branch order (empty for a fenced id).
    pub participants: Vec<String>,
    /// When it was created (0: unknown).
    pub created_unix_ms: u64,
    /// When it was decided (0: unknown or undecided).
    pub decided_unix_ms: u64,
    /// The deadline sent with its Prepares (0: unknown).
    pub deadline_unix_ms: u64,
    /// How far it got.
    pub state: ReplayedState,
    /// Each branch's kind, from a saga's STARTED record (empty: two-phase only).
    pub kinds: Vec<BranchKind>,
    /// The mode it was submitted with (two-phase unless a saga record says otherwise).
    pub mode: TxnMode,
    /// Saga steps known to be compensated.
    pub compensated: BTreeSet<usize>,
    /// Every saga step that needed it was compensated.
    pub compensation_done: bool,
}

/// How far a replayed transaction got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayedState {
    /// Started, no decision logged.
    Started,
    /// COMMIT is durable; these branches may not have acknowledged it.
    Committing {
        /// The branches that still need Commit.
        pending: Vec<usize>,
    },
    /// Finished: committed (END logged) or aborted.
    Finished(Phase),
}

/// What recovery does with one replayed transaction.
#[derive(Debug)]
pub struct Recovered {
    /// The transaction's machine as it stands after the restart.
    pub machine: TxnMachine,
    /// What to carry out now (Commits to re-send, Aborts, a probe, compensations).
    pub outputs: Vec<Output>,
    /// An abort record to append before anything else: the transaction was undecided at the
    /// crash, so it is presumed aborted.
    pub log_abort: Option<AbortCause>,
    /// How the transaction settles once `outputs` are carried out.
    pub settle: Settle,
}

/// How a recovered transaction settles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// It is finished: only its outcome is remembered.
    Finished,
    /// An aborted saga with nothing left to compensate: log COMPENSATION_DONE, then it is
    /// finished.
    CompensationDone,
    /// Work goes on (Commits, a probe, compensations); the machine says when it ends.
    InProgress,
}

impl ReplayedTxn {
    fn new(participants: Vec<String>, created: u64, deadline: u64, state: ReplayedState) -> Self {
        ReplayedTxn {
            participants,
            created_unix_ms: created,
            decided_unix_ms: 0,
            deadline_unix_ms: deadline,
            state,
            kinds: Vec::new(),
            mode: TxnMode::TwoPhase,
            compensated: BTreeSet::new(),
            compensation_done: false,
        }
    }

    /// Whether any branch ran as a saga step.
    #[must_use]
    pub fn is_saga(&self) -> bool {
        self.kinds.contains(&BranchKind::Saga)
    }

    /// What a restarted coordinator does with this transaction (see the module docs).
    #[must_use]
    pub fn recover(&self) -> Recovered {
        let branches = self.participants.len();
        let with_kinds = |machine: TxnMachine| {
            if self.kinds.len() == branches {
                machine.with_kinds(self.kinds.clone(), self.mode)
            } else {
                machine
            }
        };
        match &self.state {
            // Undecided at the crash, and steps may have executed: abort, compensating every
            // step not known to be compensated (one that never executed gets a barrier), and
            // tell the two-phase branches.
            ReplayedState::Started if self.is_saga() => {
                let cause = AbortCause::CoordinatorRestart;
                Recovered { log_abort: Some(cause.clone()), ..self.recover_saga(cause) }
            }
            ReplayedState::Finished(Phase::Aborted(cause))
                if self.is_saga() && !self.compensation_done =>
            {
                self.recover_saga(cause.clone())
            }
            ReplayedState::Committing { pending } => {
                let (machine, outputs) = TxnMachine::recover_committing(branches, pending);
                Recovered {
                    machine: with_kinds(machine),
                    outputs,
                    log_abort: None,
                    settle: Settle::InProgress,
                }
            }
            // One phase: the participant decided, and only it can say what.
            ReplayedState::Started if branches == 1 => {
                let (machine, outputs) = TxnMachine::recover_one_phase();
                Recovered {
                    machine: with_kinds(machine),
                    outputs,
                    log_abort: None,
                    settle: Settle::InProgress,
                }
            }
            // Undecided at the crash: presumed abort. Tell every participant, since any of them
            // may have prepared.
            ReplayedState::Started => {
                let cause = AbortCause::CoordinatorRestart;
                let machine = TxnMachine::finished(branches, Phase::Aborted(cause.clone()));
                Recovered {
                    machine: with_kinds(machine),
                    outputs: (0..branches).map(|branch| Output::SendAbort { branch }).collect(),
                    log_abort: Some(cause),
                    settle: Settle::Finished,
                }
            }
            ReplayedState::Finished(phase) => Recovered {
                machine: with_kinds(TxnMachine::finished(branches, phase.clone())),
                outputs: Vec::new(),
                log_abort: None,
                settle: Settle::Finished,
            },
        }
    }

    /// An aborted saga whose compensation had not finished, resumed.
    fn recover_saga(&self, cause: AbortCause) -> Recovered {
        let to_compensate: Vec<usize> = (0..self.kinds.len())
            .filter(|b| self.kinds[*b] == BranchKind::Saga && !self.compensated.contains(b))
            .collect();
        let (machine, outputs) =
            TxnMachine::recover_compensating(self.kinds.clone(), &to_compensate, cause);
        let machine = machine.with_kinds(self.kinds.clone(), self.mode);
        let settle = if matches!(machine.phase(), Phase::Aborted(_)) {
            Settle::CompensationDone
        } else {
            Settle::InProgress
        };
        Recovered { machine, outputs, log_abort: None, settle }
    }
}

/// What replay of a whole log gives.
#[derive(Debug, Default)]
pub struct Replayed {
    /// The highest epoch any earlier process of this coordinator ran with.
    pub max_epoch: Epoch,
    /// Every finished transaction forgotten before the crash was created at or before this.
    pub forgotten_before_unix_ms: u64,
    /// Every transaction, oldest first: by creation time, those with none last (they count as
    /// finished now, the only bound there is), then by id. Retiring them in this order moves
    /// the forgotten horizon as it moved before the restart.
    pub txns: Vec<(TxnId, ReplayedTxn)>,
}

/// Folds decision-log records, oldest first, into the state they describe.
#[derive(Debug, Default)]
pub struct Replay {
    max_epoch: Epoch,
    forgotten_before_unix_ms: u64,
    txns: BTreeMap<TxnId, ReplayedTxn>,
    /// A checkpoint being read: its id, epoch and the records it holds so far.
    checkpoint: Option<(u64, Epoch, Vec<CoordinatorRecord>)>,
    /// Records appended by running transactions while a checkpoint was being written: applied
    /// again on top of the checkpoint's state (each record is idempotent on replay).
    interleaved: Vec<CoordinatorRecord>,
}

impl Replay {
    /// The state so far, oldest transaction first (see [`Replayed::txns`]).
    #[must_use]
    pub fn finish(self) -> Replayed {
        let mut txns: Vec<(TxnId, ReplayedTxn)> = self.txns.into_iter().collect();
        let known = |created: u64| if created == 0 { u64::MAX } else { created };
        txns.sort_by(|(a, x), (b, y)| {
            (known(x.created_unix_ms), a).cmp(&(known(y.created_unix_ms), b))
        });
        Replayed {
            max_epoch: self.max_epoch,
            forgotten_before_unix_ms: self.forgotten_before_unix_ms,
            txns,
        }
    }

    fn fenced(&mut self, txn: TxnId, fenced_unix_ms: u64) {
        self.txns.entry(txn).or_insert_with(|| {
            let state = ReplayedState::Finished(Phase::Aborted(AbortCause::Fenced));
            ReplayedTxn::new(Vec::new(), fenced_unix_ms, 0, state)
        });
    }

    /// Applies the next record.
    pub fn apply(&mut self, record: CoordinatorRecord) {
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
                    ReplayedTxn::new(
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
                    ReplayedTxn::new(
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
                    Some(t) if t.created_unix_ms != 0 => {
                        (t.created_unix_ms, t.deadline_unix_ms, t.kinds.clone(), t.mode)
                    }
                    Some(t) => (decided_unix_ms, t.deadline_unix_ms, t.kinds.clone(), t.mode),
                    None => (decided_unix_ms, 0, Vec::new(), TxnMode::TwoPhase),
                };
                let state = ReplayedState::Committing { pending };
                let mut replayed = ReplayedTxn::new(participants, created, deadline, state);
                replayed.decided_unix_ms = decided_unix_ms;
                replayed.kinds = kinds;
                replayed.mode = mode;
                self.txns.insert(txn, replayed);
            }
            CoordinatorRecord::Aborted { txn, cause } => {
                let entry = self
                    .txns
                    .entry(txn)
                    .or_insert_with(|| ReplayedTxn::new(Vec::new(), 0, 0, ReplayedState::Started));
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

/// One transaction as a checkpoint sees it.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointedTxn<'a> {
    /// The transaction.
    pub txn: &'a TxnId,
    /// Participant names, in branch order.
    pub participants: &'a [String],
    /// Its machine.
    pub machine: &'a TxnMachine,
    /// When it was created (for a fenced id: when it was fenced).
    pub created_unix_ms: u64,
    /// When it was decided.
    pub decided_unix_ms: u64,
    /// Its Prepare deadline.
    pub deadline_unix_ms: u64,
}

/// The records that rebuild one transaction from a checkpoint.
#[must_use]
pub fn checkpoint_records(entry: CheckpointedTxn<'_>) -> Vec<CoordinatorRecord> {
    let txn = entry.txn;
    let machine = entry.machine;
    let started = CoordinatorRecord::Started {
        txn: txn.clone(),
        participants: entry.participants.to_vec(),
        created_unix_ms: entry.created_unix_ms,
        deadline_unix_ms: entry.deadline_unix_ms,
    };
    let saga_started = CoordinatorRecord::SagaStarted {
        txn: txn.clone(),
        participants: entry.participants.to_vec(),
        kinds: machine.kinds().to_vec(),
        mode: machine.mode(),
        created_unix_ms: entry.created_unix_ms,
        deadline_unix_ms: entry.deadline_unix_ms,
    };
    let pending = |status: &BranchStatus| {
        matches!(status, BranchStatus::Committing | BranchStatus::Prepared | BranchStatus::Executed)
    };
    match machine.phase() {
        Phase::Preparing => vec![started],
        // Steps may have executed: recovery must compensate them.
        Phase::Executing => vec![saga_started],
        Phase::Compensating(cause) => {
            let mut records = vec![
                saga_started,
                CoordinatorRecord::Aborted { txn: txn.clone(), cause: cause.clone() },
            ];
            for (branch, status) in machine.branches().iter().enumerate() {
                if machine.kinds()[branch] == BranchKind::Saga
                    && *status != BranchStatus::Compensating
                {
                    records.push(CoordinatorRecord::Compensated { txn: txn.clone(), branch });
                }
            }
            records
        }
        Phase::Deciding | Phase::Committing | Phase::Committed => {
            let pending: Vec<usize> = (0..entry.participants.len())
                .filter(|&b| pending(&machine.branches()[b]))
                .collect();
            // STARTED too: it carries the creation time, which the forgotten horizon needs.
            let mut records = vec![
                started,
                CoordinatorRecord::Commit {
                    txn: txn.clone(),
                    participants: entry.participants.to_vec(),
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
            created_unix_ms: 1_000,
            deadline_unix_ms: 6_000,
        }
    }

    fn commit(id: &str, pending: Vec<usize>) -> CoordinatorRecord {
        CoordinatorRecord::Commit {
            txn: txn(id),
            participants: vec!["a".into(), "b".into()],
            pending,
            decided_unix_ms: 2_000,
        }
    }

    fn replayed(records: Vec<CoordinatorRecord>) -> BTreeMap<TxnId, ReplayedTxn> {
        let mut replay = Replay::default();
        for record in records {
            replay.apply(record);
        }
        replay.finish().txns.into_iter().collect()
    }

    fn state(txns: &BTreeMap<TxnId, ReplayedTxn>, id: &str) -> &'static str {
        match txns.get(&txn(id)).map(|t| &t.state) {
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
        let id = txn("c");
        let participants = vec!["a".to_string(), "b".to_string()];
        let txns = replayed(checkpoint_records(CheckpointedTxn {
            txn: &id,
            participants: &participants,
            machine: &machine,
            created_unix_ms: 123,
            decided_unix_ms: 0,
            deadline_unix_ms: 0,
        }));
        assert_eq!(txns[&id].created_unix_ms, 123);
        assert_eq!(state(&txns, "c"), "committed");
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
        let replayed = replay.finish();
        assert_eq!(replayed.max_epoch, Epoch(4));
        assert_eq!(replayed.forgotten_before_unix_ms, 77, "the horizon survives, and only grows");
        let txns: BTreeMap<_, _> = replayed.txns.into_iter().collect();
        assert_eq!(state(&txns, "undecided"), "started");
        assert_eq!(state(&txns, "decided-during-checkpoint"), "committing");
        assert_eq!(state(&txns, "delivering"), "committing");
        assert_eq!(state(&txns, "aborted"), "aborted");
        assert_eq!(state(&txns, "fenced"), "aborted");
        assert_eq!(state(&txns, "done"), "committed");
        assert_eq!(txns[&txn("delivering")].state, ReplayedState::Committing { pending: vec![1] });
    }

    /// A checkpoint whose END never made it to the log is ignored: the records before it still
    /// describe the state.
    #[test]
    fn an_unfinished_checkpoint_replaces_nothing() {
        let txns = replayed(vec![
            started("t1"),
            commit("t1", vec![0, 1]),
            CoordinatorRecord::CheckpointBegin {
                id: 9,
                epoch: Epoch(1),
                forgotten_before_unix_ms: 0,
            },
            CoordinatorRecord::CheckpointEntries(vec![]),
        ]);
        assert_eq!(txns[&txn("t1")].state, ReplayedState::Committing { pending: vec![0, 1] });
    }

    /// An undecided two-phase transaction is presumed aborted: the abort is logged and every
    /// participant is told.
    #[test]
    fn an_undecided_transaction_recovers_as_presumed_abort() {
        let txns = replayed(vec![started("t1")]);
        let recovered = txns[&txn("t1")].recover();
        assert_eq!(recovered.log_abort, Some(AbortCause::CoordinatorRestart));
        assert_eq!(
            recovered.outputs,
            vec![Output::SendAbort { branch: 0 }, Output::SendAbort { branch: 1 }]
        );
        assert_eq!(recovered.settle, Settle::Finished);
    }

    /// A durable COMMIT recovers forward: Commit is re-sent to the pending branches only.
    #[test]
    fn a_durable_commit_recovers_forward() {
        let txns = replayed(vec![started("t1"), commit("t1", vec![1])]);
        let recovered = txns[&txn("t1")].recover();
        assert_eq!(recovered.log_abort, None);
        assert_eq!(recovered.outputs, vec![Output::SendCommit { branch: 1 }]);
        assert_eq!(recovered.machine.phase(), &Phase::Committing);
        assert_eq!(recovered.settle, Settle::InProgress);
    }

    /// An undecided one-phase transaction is probed, never presumed aborted: its participant
    /// may have committed.
    #[test]
    fn an_undecided_one_phase_transaction_is_probed() {
        let txns = replayed(vec![CoordinatorRecord::Started {
            txn: txn("t1"),
            participants: vec!["a".into()],
            created_unix_ms: 1,
            deadline_unix_ms: 2,
        }]);
        let recovered = txns[&txn("t1")].recover();
        assert_eq!(recovered.log_abort, None);
        assert_eq!(recovered.outputs, vec![Output::ProbeOnePhase]);
    }

    /// An undecided saga aborts and compensates every step not known compensated, newest
    /// first; one whose steps were all compensated only logs COMPENSATION_DONE.
    #[test]
    fn an_undecided_saga_compensates_what_is_not_known_compensated() {
        let saga = |id: &str| CoordinatorRecord::SagaStarted {
            txn: txn(id),
            participants: vec!["a".into(), "b".into()],
            kinds: vec![BranchKind::Saga, BranchKind::Saga],
            mode: TxnMode::Saga,
            created_unix_ms: 1,
            deadline_unix_ms: 2,
        };
        let txns = replayed(vec![
            saga("t1"),
            saga("t2"),
            CoordinatorRecord::Aborted { txn: txn("t2"), cause: AbortCause::Deadline },
            CoordinatorRecord::Compensated { txn: txn("t2"), branch: 1 },
            CoordinatorRecord::Compensated { txn: txn("t2"), branch: 0 },
        ]);
        let t1 = txns[&txn("t1")].recover();
        assert_eq!(t1.log_abort, Some(AbortCause::CoordinatorRestart));
        assert_eq!(t1.outputs, vec![Output::SendCompensate { branch: 1 }]);
        assert_eq!(t1.settle, Settle::InProgress);
        let t2 = txns[&txn("t2")].recover();
        assert_eq!(t2.log_abort, None);
        assert_eq!(t2.outputs, vec![]);
        assert_eq!(t2.settle, Settle::CompensationDone);
    }

    /// Replay hands transactions back oldest first, those without a creation time last.
    #[test]
    fn replay_orders_transactions_oldest_first() {
        let mut replay = Replay::default();
        replay.apply(CoordinatorRecord::FencedAt { txn: txn("a-fenced"), fenced_unix_ms: 0 });
        replay.apply(CoordinatorRecord::Started {
            txn: txn("z-old"),
            participants: vec!["a".into()],
            created_unix_ms: 5,
            deadline_unix_ms: 6,
        });
        replay.apply(CoordinatorRecord::Started {
            txn: txn("m-new"),
            participants: vec!["a".into()],
            created_unix_ms: 9,
            deadline_unix_ms: 10,
        });
        let order: Vec<String> =
            replay.finish().txns.into_iter().map(|(id, _)| id.to_string()).collect();
        assert_eq!(order, vec!["z-old", "m-new", "a-fenced"]);
    }
}
