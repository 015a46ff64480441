//! Conversions between wire types (`v1::*`) and the core's domain types, in one place. Every
//! conversion from the wire validates and names the offending field, so servers can answer
//! INVALID_ARGUMENT with a message a client can act on.

use concord_core::coordinator::{AbortCause, TxnMode};
use concord_core::types::{self as core, InvalidInput};
use tonic::Status;

use crate::v1;

/// Turns bad input into INVALID_ARGUMENT naming the field.
#[must_use]
pub fn invalid(error: &InvalidInput) -> Status {
    Status::invalid_argument(error.to_string())
}

/// A failed call inside a batch, as the status the single call would have returned.
#[must_use]
pub fn call_error(status: &Status) -> v1::CallError {
    v1::CallError { code: status.code() as i32, message: status.message().to_string() }
}

/// The status a batch reported for one of its calls.
#[must_use]
pub fn call_status(error: v1::CallError) -> Status {
    Status::new(tonic::Code::from_i32(error.code), error.message)
}

/// Converts a branch's operations, naming each bad one by its index under `field`.
pub fn operations(
    operations: Vec<v1::Operation>,
    field: &str,
) -> Result<Vec<core::Operation>, InvalidInput> {
    operations
        .into_iter()
        .enumerate()
        .map(|(index, operation)| self::operation(operation, &format!("{field}[{index}]")))
        .collect()
}

/// Converts one operation.
pub fn operation(operation: v1::Operation, field: &str) -> Result<core::Operation, InvalidInput> {
    use v1::operation::Kind;
    Ok(match operation.kind {
        None => {
            return Err(InvalidInput::new(
                field,
                "no operation kind set (put, delete, counter_add or check)",
            ));
        }
        Some(Kind::Put(v1::Put { key, value })) => core::Operation::Put { key, value },
        Some(Kind::Delete(v1::Delete { key })) => core::Operation::Delete { key },
        Some(Kind::CounterAdd(add)) => core::Operation::CounterAdd {
            key: add.key,
            delta: add.delta,
            lower_bound: add.lower_bound,
            upper_bound: add.upper_bound,
        },
        Some(Kind::Check(v1::Check { key, expect })) => {
            use v1::check::Expect;
            let expect = match expect {
                None => {
                    return Err(InvalidInput::new(
                        format!("{field}.check"),
                        "no expectation set (version, value or absent)",
                    ));
                }
                Some(Expect::Version(version)) => core::Expect::Version(version),
                Some(Expect::Value(value)) => core::Expect::Value(value),
                Some(Expect::Absent(v1::Absent {})) => core::Expect::Absent,
            };
            core::Operation::Check { key, expect }
        }
    })
}

/// The wire form of an operation (for clients that build transactions from domain types).
#[must_use]
pub fn operation_to_wire(operation: core::Operation) -> v1::Operation {
    use v1::operation::Kind;
    let kind = match operation {
        core::Operation::Put { key, value } => Kind::Put(v1::Put { key, value }),
        core::Operation::Delete { key } => Kind::Delete(v1::Delete { key }),
        core::Operation::CounterAdd { key, delta, lower_bound, upper_bound } => {
            Kind::CounterAdd(v1::CounterAdd { key, delta, lower_bound, upper_bound })
        }
        core::Operation::Check { key, expect } => {
            use v1::check::Expect;
            let expect = match expect {
                core::Expect::Version(version) => Expect::Version(version),
                core::Expect::Value(value) => Expect::Value(value),
                core::Expect::Absent => Expect::Absent(v1::Absent {}),
            };
            Kind::Check(v1::Check { key, expect: Some(expect) })
        }
    };
    v1::Operation { kind: Some(kind) }
}

/// The wire form of a NO reason.
#[must_use]
pub fn no_reason_to_wire(reason: core::NoReason) -> v1::NoReason {
    match reason {
        core::NoReason::Conflict => v1::NoReason::Conflict,
        core::NoReason::CheckFailed => v1::NoReason::CheckFailed,
        core::NoReason::BoundCrossed => v1::NoReason::BoundCrossed,
        core::NoReason::Invalid => v1::NoReason::Invalid,
        core::NoReason::Expired => v1::NoReason::Expired,
        core::NoReason::AlreadyAborted => v1::NoReason::AlreadyAborted,
        core::NoReason::StaleEpoch => v1::NoReason::StaleEpoch,
        core::NoReason::Overloaded => v1::NoReason::Overloaded,
    }
}

/// The domain form of a NO reason; `None` for UNSPECIFIED or an unknown number.
#[must_use]
pub fn no_reason_from_wire(reason: i32) -> Option<core::NoReason> {
    Some(match v1::NoReason::try_from(reason).ok()? {
        v1::NoReason::Unspecified => return None,
        v1::NoReason::Conflict => core::NoReason::Conflict,
        v1::NoReason::CheckFailed => core::NoReason::CheckFailed,
        v1::NoReason::BoundCrossed => core::NoReason::BoundCrossed,
        v1::NoReason::Invalid => core::NoReason::Invalid,
        v1::NoReason::Expired => core::NoReason::Expired,
        v1::NoReason::AlreadyAborted => core::NoReason::AlreadyAborted,
        v1::NoReason::StaleEpoch => core::NoReason::StaleEpoch,
        v1::NoReason::Overloaded => core::NoReason::Overloaded,
    })
}

/// The wire form of a vote.
#[must_use]
pub fn vote_to_wire(vote: &core::Vote) -> v1::Vote {
    match vote {
        core::Vote::Yes => v1::Vote { kind: v1::VoteKind::Yes.into(), ..v1::Vote::default() },
        core::Vote::ReadOnly => {
            v1::Vote { kind: v1::VoteKind::ReadOnly.into(), ..v1::Vote::default() }
        }
        core::Vote::No { reason, message } => v1::Vote {
            kind: v1::VoteKind::No.into(),
            reason: no_reason_to_wire(*reason).into(),
            message: message.clone(),
        },
    }
}

/// The domain form of a vote, as a coordinator reads a participant's answer.
pub fn vote_from_wire(vote: Option<v1::Vote>) -> Result<core::Vote, InvalidInput> {
    let vote = vote.ok_or_else(|| InvalidInput::new("vote", "missing"))?;
    match v1::VoteKind::try_from(vote.kind) {
        Ok(v1::VoteKind::Yes) => Ok(core::Vote::Yes),
        Ok(v1::VoteKind::ReadOnly) => Ok(core::Vote::ReadOnly),
        Ok(v1::VoteKind::No) => Ok(core::Vote::No {
            reason: no_reason_from_wire(vote.reason)
                .ok_or_else(|| InvalidInput::new("vote.reason", "missing on a NO vote"))?,
            message: vote.message,
        }),
        _ => Err(InvalidInput::new("vote.kind", format!("unknown vote kind {}", vote.kind))),
    }
}

/// The wire form of an outcome.
#[must_use]
pub fn outcome_to_wire(outcome: core::Outcome) -> v1::Outcome {
    match outcome {
        core::Outcome::Committed => v1::Outcome::Committed,
        core::Outcome::Aborted => v1::Outcome::Aborted,
        core::Outcome::Pending => v1::Outcome::Pending,
    }
}

/// The domain form of an outcome; `None` for UNSPECIFIED or an unknown number.
#[must_use]
pub fn outcome_from_wire(outcome: i32) -> Option<core::Outcome> {
    match v1::Outcome::try_from(outcome).ok()? {
        v1::Outcome::Committed => Some(core::Outcome::Committed),
        v1::Outcome::Aborted => Some(core::Outcome::Aborted),
        v1::Outcome::Pending => Some(core::Outcome::Pending),
        v1::Outcome::Unspecified => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Every operation kind survives the wire round trip.
    #[test]
    fn operations_round_trip() {
        let operations = vec![
            core::Operation::Put { key: b"k".to_vec(), value: b"v".to_vec() },
            core::Operation::Delete { key: b"k".to_vec() },
            core::Operation::CounterAdd {
                key: b"c".to_vec(),
                delta: -3,
                lower_bound: Some(0),
                upper_bound: None,
            },
            core::Operation::Check { key: b"k".to_vec(), expect: core::Expect::Version(4) },
            core::Operation::Check { key: b"k".to_vec(), expect: core::Expect::Value(vec![1]) },
            core::Operation::Check { key: b"k".to_vec(), expect: core::Expect::Absent },
        ];
        let wire = operations.iter().cloned().map(operation_to_wire).collect();
        assert_eq!(self::operations(wire, "ops").unwrap(), operations);
    }

    /// An operation without a kind, or a check without an expectation, names its field.
    #[test]
    fn unset_kinds_name_the_field() {
        let error = self::operations(
            vec![
                operation_to_wire(core::Operation::Delete { key: b"k".to_vec() }),
                v1::Operation::default(),
            ],
            "operations",
        )
        .unwrap_err();
        assert_eq!(error.field, "operations[1]");
        let check = v1::Operation {
            kind: Some(v1::operation::Kind::Check(v1::Check { key: b"k".to_vec(), expect: None })),
        };
        assert_eq!(operation(check, "op").unwrap_err().field, "op.check");
    }

    /// Votes round-trip; a NO without a reason is invalid.
    #[test]
    fn votes_round_trip() {
        for vote in [
            core::Vote::Yes,
            core::Vote::ReadOnly,
            core::Vote::no(core::NoReason::BoundCrossed, "too low"),
        ] {
            assert_eq!(vote_from_wire(Some(vote_to_wire(&vote))).unwrap(), vote);
        }
        let bare_no = v1::Vote { kind: v1::VoteKind::No.into(), ..v1::Vote::default() };
        assert!(vote_from_wire(Some(bare_no)).is_err());
        assert!(vote_from_wire(None).is_err());
    }
}

/// A transaction's mode from the wire (unspecified: two-phase), naming `field` if unknown.
pub fn mode_from_wire(mode: i32, field: &str) -> Result<TxnMode, InvalidInput> {
    match v1::TxnMode::try_from(mode) {
        Ok(v1::TxnMode::Unspecified | v1::TxnMode::TwoPhase) => Ok(TxnMode::TwoPhase),
        Ok(v1::TxnMode::Saga) => Ok(TxnMode::Saga),
        Ok(v1::TxnMode::Auto) => Ok(TxnMode::Auto),
        Err(_) => Err(InvalidInput::new(field, format!("unknown mode {mode}"))),
    }
}

/// A transaction's mode on the wire.
#[must_use]
pub fn mode_to_wire(mode: TxnMode) -> v1::TxnMode {
    match mode {
        TxnMode::TwoPhase => v1::TxnMode::TwoPhase,
        TxnMode::Saga => v1::TxnMode::Saga,
        TxnMode::Auto => v1::TxnMode::Auto,
    }
}

/// Why a transaction aborted, on the wire: branches are named by their participant
/// (`participants` in branch order), with a message a person can read.
#[must_use]
pub fn abort_cause_to_wire(cause: &AbortCause, participants: &[String]) -> v1::AbortCause {
    use v1::abort_cause::Kind;
    let name = |branch: &usize| participants.get(*branch).cloned().unwrap_or_default();
    let mut wire = v1::AbortCause::default();
    match cause {
        AbortCause::VoteNo { branch, reason, message } => {
            wire.kind = Kind::VoteNo.into();
            wire.participant = name(branch);
            wire.vote_reason = no_reason_to_wire(*reason).into();
            wire.message.clone_from(message);
        }
        AbortCause::Unreachable { branch, message } => {
            wire.kind = Kind::ParticipantUnreachable.into();
            wire.participant = name(branch);
            wire.message.clone_from(message);
        }
        AbortCause::Timeout { branch } => {
            wire.kind = Kind::ParticipantTimeout.into();
            wire.participant = name(branch);
            wire.message = "no answer before the deadline".into();
        }
        AbortCause::Deadline => {
            wire.kind = Kind::Deadline.into();
            wire.message = "the transaction's deadline passed before every vote arrived".into();
        }
        AbortCause::CoordinatorRestart => {
            wire.kind = Kind::CoordinatorRestart.into();
            wire.message = "the coordinator restarted before deciding (presumed abort)".into();
        }
        AbortCause::Fenced => {
            wire.kind = Kind::Fenced.into();
            wire.message = "fenced as aborted by a GetTransaction with fence_unknown".into();
        }
        AbortCause::ClientRollback => {
            wire.kind = Kind::ClientRollback.into();
            wire.message = "rolled back by the client".into();
        }
        AbortCause::StepFailed { branch, reason, message } => {
            wire.kind = Kind::StepFailed.into();
            wire.participant = name(branch);
            wire.vote_reason = no_reason_to_wire(*reason).into();
            wire.message.clone_from(message);
        }
    }
    wire
}

#[cfg(test)]
mod mode_tests {
    use super::*;

    /// Every mode survives the round trip; unspecified reads as two-phase; an unknown one is
    /// refused naming the field.
    #[test]
    fn modes_round_trip_and_unknown_ones_name_the_field() {
        for mode in [TxnMode::TwoPhase, TxnMode::Saga, TxnMode::Auto] {
            assert_eq!(mode_from_wire(mode_to_wire(mode).into(), "mode").ok(), Some(mode));
        }
        assert_eq!(mode_from_wire(0, "mode").ok(), Some(TxnMode::TwoPhase));
        let error = mode_from_wire(99, "mode").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("mode") && error.contains("99"), "{error}");
    }
}
