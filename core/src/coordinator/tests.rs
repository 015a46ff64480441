//! Exact outputs of [`TxnMachine`] for each input, and the record encoding.

use super::*;
use crate::types::TxnId;

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
    assert_eq!(machine.handle(Input::CommitAcknowledged { branch: 0 }), vec![], "duplicate ack");
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
    assert_eq!(outputs, vec![Output::Reply(Decision::Committed), Output::SendCommit { branch: 1 }]);
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
        let outputs = machine.handle(Input::Prepared { branch: 0, result: PrepareResult::Timeout });
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
    assert_eq!(outputs, vec![Output::SendCommit { branch: 0 }, Output::SendCommit { branch: 2 }]);
    machine.handle(Input::CommitAcknowledged { branch: 0 });
    assert_eq!(machine.handle(Input::CommitAcknowledged { branch: 2 }), vec![Output::LogEnd]);
}

fn saga(steps: usize) -> Plan {
    Plan { kinds: vec![BranchKind::Saga; steps], depends_on: None, mode: TxnMode::Saga }
}

fn executed(branch: usize, vote: Vote) -> Input {
    Input::Executed { branch, result: PrepareResult::Voted(vote) }
}

/// A saga forces its STARTED record before the first Execute, runs its steps one after
/// another, and commits (Commit releases each executed step's undo).
#[test]
fn saga_steps_run_in_order_after_started_is_durable_then_commit() {
    let (mut machine, outputs) = TxnMachine::start_with(saga(3));
    assert_eq!(outputs, vec![Output::ForceStarted]);
    assert_eq!(machine.phase(), &Phase::Executing);
    assert_eq!(machine.handle(Input::StartedDurable), vec![Output::SendExecute { branch: 0 }]);
    assert_eq!(machine.handle(executed(0, Vote::Yes)), vec![Output::SendExecute { branch: 1 }]);
    assert_eq!(
        machine.handle(executed(1, Vote::ReadOnly)),
        vec![Output::SendExecute { branch: 2 }]
    );
    assert_eq!(
        machine.handle(executed(2, Vote::Yes)),
        vec![Output::ForceCommit { branches: vec![0, 2] }]
    );
    assert_eq!(
        machine.handle(Input::CommitDurable),
        vec![
            Output::Reply(Decision::Committed),
            Output::SendCommit { branch: 0 },
            Output::SendCommit { branch: 2 }
        ]
    );
}

/// A step failing at any position compensates every step before it, in reverse order, one
/// at a time, each logged; the failed step itself did nothing and is not compensated.
#[test]
fn a_failed_step_compensates_the_executed_steps_in_reverse_order() {
    for failing in 0..4 {
        let (mut machine, _) = TxnMachine::start_with(saga(4));
        machine.handle(Input::StartedDurable);
        for step in 0..failing {
            machine.handle(executed(step, Vote::Yes));
        }
        let no = Vote::no(NoReason::BoundCrossed, "low");
        let cause = AbortCause::StepFailed {
            branch: failing,
            reason: NoReason::BoundCrossed,
            message: "low".into(),
        };
        let mut outputs = machine.handle(executed(failing, no));
        assert_eq!(outputs[0], Output::Reply(Decision::Aborted(cause.clone())));
        assert_eq!(outputs[1], Output::LogAbort(cause.clone()));
        let mut order = Vec::new();
        while let Some(Output::SendCompensate { branch }) = outputs.last().cloned() {
            order.push(branch);
            assert!(matches!(machine.phase(), Phase::Compensating(_)));
            outputs = machine.handle(Input::Compensated { branch });
            assert_eq!(outputs[0], Output::LogCompensated { branch });
        }
        assert_eq!(order, (0..failing).rev().collect::<Vec<_>>(), "failing at {failing}");
        assert_eq!(machine.phase(), &Phase::Aborted(cause));
    }
}

/// A step that did not answer may have executed: it is compensated too (its Compensate
/// leaves a barrier if the Execute has not arrived), first, as the latest step.
#[test]
fn a_silent_step_is_compensated_first() {
    let (mut machine, _) = TxnMachine::start_with(saga(3));
    machine.handle(Input::StartedDurable);
    machine.handle(executed(0, Vote::Yes));
    let outputs = machine.handle(Input::Executed { branch: 1, result: PrepareResult::Timeout });
    assert_eq!(outputs.last(), Some(&Output::SendCompensate { branch: 1 }));
    assert_eq!(
        machine.handle(Input::Compensated { branch: 1 }),
        vec![Output::LogCompensated { branch: 1 }, Output::SendCompensate { branch: 0 }]
    );
    assert_eq!(machine.branches()[2], BranchStatus::Aborted, "never started");
    assert_eq!(machine.handle(Input::Compensated { branch: 1 }), vec![], "duplicate ack");
}

/// The deadline aborts a saga while it executes, compensating the step in flight too;
/// once the decision is being forced it is ignored.
#[test]
fn the_deadline_aborts_an_executing_saga() {
    let (mut machine, _) = TxnMachine::start_with(saga(3));
    machine.handle(Input::StartedDurable);
    machine.handle(executed(0, Vote::Yes));
    let outputs = machine.handle(Input::Deadline);
    assert_eq!(outputs[0], Output::Reply(Decision::Aborted(AbortCause::Deadline)));
    assert_eq!(outputs.last(), Some(&Output::SendCompensate { branch: 1 }));
    assert_eq!(machine.handle(executed(1, Vote::Yes)), vec![], "a late answer changes nothing");
}

/// With dependencies, a step starts once every step it runs after executed, and
/// independent steps run side by side.
#[test]
fn dependencies_let_independent_steps_run_side_by_side() {
    let plan = Plan {
        kinds: vec![BranchKind::Saga; 4],
        depends_on: Some(vec![vec![], vec![0], vec![0], vec![1, 2]]),
        mode: TxnMode::Saga,
    };
    let (mut machine, _) = TxnMachine::start_with(plan);
    assert_eq!(machine.handle(Input::StartedDurable), vec![Output::SendExecute { branch: 0 }]);
    assert_eq!(
        machine.handle(executed(0, Vote::Yes)),
        vec![Output::SendExecute { branch: 1 }, Output::SendExecute { branch: 2 }]
    );
    assert_eq!(machine.handle(executed(2, Vote::Yes)), vec![]);
    assert_eq!(machine.handle(executed(1, Vote::Yes)), vec![Output::SendExecute { branch: 3 }]);
}

/// Hybrid: the two-phase branches prepare first, then the saga steps run, then the
/// decision; a failed step aborts the prepared branches and compensates the executed steps.
#[test]
fn hybrid_prepares_then_executes_then_decides() {
    let plan = Plan {
        kinds: vec![BranchKind::TwoPhase, BranchKind::Saga, BranchKind::Saga],
        depends_on: None,
        mode: TxnMode::Auto,
    };
    let (mut committed, outputs) = TxnMachine::start_with(plan.clone());
    assert_eq!(outputs, vec![Output::SendPrepare { branch: 0, one_phase: false }]);
    assert_eq!(committed.handle(yes(0)), vec![Output::ForceStarted]);
    assert_eq!(committed.handle(Input::StartedDurable), vec![Output::SendExecute { branch: 1 }]);
    committed.handle(executed(1, Vote::Yes));
    assert_eq!(
        committed.handle(executed(2, Vote::Yes)),
        vec![Output::ForceCommit { branches: vec![0, 1, 2] }]
    );

    let (mut aborted, _) = TxnMachine::start_with(plan);
    aborted.handle(yes(0));
    aborted.handle(Input::StartedDurable);
    aborted.handle(executed(1, Vote::Yes));
    let outputs = aborted.handle(executed(2, Vote::no(NoReason::Invalid, "declined")));
    assert!(outputs.contains(&Output::SendAbort { branch: 0 }));
    assert_eq!(outputs.last(), Some(&Output::SendCompensate { branch: 1 }));
    aborted.handle(Input::Compensated { branch: 1 });
    assert!(matches!(aborted.phase(), Phase::Aborted(AbortCause::StepFailed { branch: 2, .. })));

    // A NO from a two-phase branch aborts before any step executes.
    let plan = Plan {
        kinds: vec![BranchKind::TwoPhase, BranchKind::Saga],
        depends_on: None,
        mode: TxnMode::Auto,
    };
    let (mut refused, _) = TxnMachine::start_with(plan);
    let outputs = refused.handle(Input::Prepared {
        branch: 0,
        result: PrepareResult::Voted(Vote::no(NoReason::Conflict, "locked")),
    });
    assert!(
        !outputs
            .iter()
            .any(|o| matches!(o, Output::SendExecute { .. } | Output::SendCompensate { .. }))
    );
    assert!(matches!(refused.phase(), Phase::Aborted(_)));
}

/// In automatic mode a Prepare answered UNIMPLEMENTED turns its branch into a saga step;
/// in two-phase mode it aborts the transaction, naming the way out.
#[test]
fn unimplemented_prepare_becomes_a_saga_step_only_in_auto_mode() {
    let unimplemented =
        Input::Prepared { branch: 1, result: PrepareResult::Unimplemented("no".into()) };
    let plan = Plan { kinds: vec![BranchKind::TwoPhase; 2], depends_on: None, mode: TxnMode::Auto };
    let (mut auto, _) = TxnMachine::start_with(plan);
    assert_eq!(auto.handle(unimplemented.clone()), vec![]);
    assert_eq!(auto.handle(yes(0)), vec![Output::ForceStarted]);
    assert_eq!(auto.saga_steps(), vec![1]);
    assert_eq!(auto.handle(Input::StartedDurable), vec![Output::SendExecute { branch: 1 }]);

    let (mut strict, _) = TxnMachine::start(2);
    let outputs = strict.handle(unimplemented);
    match &outputs[0] {
        Output::Reply(Decision::Aborted(AbortCause::Unreachable { branch: 1, message })) => {
            assert!(message.contains("mode AUTO or SAGA"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!outputs.contains(&Output::SendAbort { branch: 1 }), "it prepared nothing");
}

/// Recovery of an aborted (or undecided) saga aborts its two-phase branches and resumes
/// compensation from the latest step not yet compensated.
#[test]
fn recovered_saga_resumes_compensation() {
    let kinds = vec![BranchKind::TwoPhase, BranchKind::Saga, BranchKind::Saga, BranchKind::Saga];
    let (mut machine, outputs) =
        TxnMachine::recover_compensating(kinds, &[1, 2], AbortCause::CoordinatorRestart);
    assert_eq!(
        outputs,
        vec![Output::SendAbort { branch: 0 }, Output::SendCompensate { branch: 2 }]
    );
    machine.handle(Input::Compensated { branch: 2 });
    assert_eq!(
        machine.handle(Input::Compensated { branch: 1 }),
        vec![Output::LogCompensated { branch: 1 }]
    );
    assert_eq!(machine.phase(), &Phase::Aborted(AbortCause::CoordinatorRestart));
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
