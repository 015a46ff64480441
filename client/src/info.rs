//! What the coordinator answers, as plain Rust types: the result of a submit, a transaction's
//! state with its branches, and why it aborted. Each type is decoded from its wire form here,
//! and a malformed answer (an outcome the server left unset) is an error rather than a guess.

use concord_core::types::{NoReason, Outcome, Vote};
use concord_proto::convert;
use concord_proto::v1;

use crate::ClientError;

/// The coordinator's answer to a submit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    /// The transaction's id: the one the client sent (every submit sends one).
    pub txn_id: String,
    /// Committed (the decision is durable; delivery may still be under way), Aborted, or
    /// Pending (the id is known and still being decided: ask again with `get`).
    pub outcome: Outcome,
    /// Why it aborted, when it did and the coordinator said.
    pub abort: Option<AbortCause>,
    /// Where the transaction is in its lifecycle; `None` if the coordinator did not say.
    pub state: Option<TxnState>,
}

/// Why a transaction aborted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbortCause {
    /// What kind of failure.
    pub kind: AbortKind,
    /// The participant whose answer (or silence) caused it, when there is one.
    pub participant: Option<String>,
    /// The participant's reason, when `kind` is [`AbortKind::VoteNo`].
    pub vote_reason: Option<NoReason>,
    /// Human-readable detail.
    pub message: String,
}

impl AbortCause {
    /// A short machine-friendly label: the NO reason for a NO vote (`bound_crossed`), else the
    /// kind (`participant_timeout`). Demos and metrics group aborts by it.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match (self.kind, self.vote_reason) {
            (AbortKind::VoteNo | AbortKind::StepFailed, Some(reason)) => no_reason_str(reason),
            (kind, _) => kind.as_str(),
        }
    }

    fn from_wire(cause: v1::AbortCause) -> AbortCause {
        AbortCause {
            kind: AbortKind::from_wire(cause.kind),
            participant: non_empty(cause.participant),
            vote_reason: convert::no_reason_from_wire(cause.vote_reason),
            message: cause.message,
        }
    }
}

impl std::fmt::Display for AbortCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.kind, &self.participant, self.vote_reason) {
            (AbortKind::VoteNo, Some(participant), Some(reason)) => {
                write!(f, "participant {participant} voted NO ({})", no_reason_str(reason))?;
            }
            (AbortKind::StepFailed, Some(participant), Some(reason)) => {
                write!(f, "saga step at {participant} failed ({})", no_reason_str(reason))?;
            }
            (kind, Some(participant), _) => write!(f, "{kind} (participant {participant})")?,
            (kind, None, _) => write!(f, "{kind}")?,
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// The kinds of abort (see `AbortCause.Kind` in concord.proto).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AbortKind {
    /// A participant voted NO.
    VoteNo,
    /// A participant could not be reached.
    ParticipantUnreachable,
    /// A participant did not answer in time.
    ParticipantTimeout,
    /// The transaction's own deadline passed before a decision.
    Deadline,
    /// The coordinator restarted before deciding (presumed abort).
    CoordinatorRestart,
    /// Fenced as aborted by a `get` with `fence_unknown`.
    Fenced,
    /// The client rolled it back.
    ClientRollback,
    /// A saga step's participant refused its Execute.
    StepFailed,
    /// The coordinator gave no kind, or one this client does not know.
    Unspecified,
}

impl AbortKind {
    /// The kind in snake case, as the CLI prints it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AbortKind::VoteNo => "vote_no",
            AbortKind::ParticipantUnreachable => "participant_unreachable",
            AbortKind::ParticipantTimeout => "participant_timeout",
            AbortKind::Deadline => "deadline",
            AbortKind::CoordinatorRestart => "coordinator_restart",
            AbortKind::Fenced => "fenced",
            AbortKind::ClientRollback => "client_rollback",
            AbortKind::StepFailed => "step_failed",
            AbortKind::Unspecified => "unspecified",
        }
    }

    fn from_wire(kind: i32) -> AbortKind {
        use v1::abort_cause::Kind;
        match Kind::try_from(kind) {
            Ok(Kind::VoteNo) => AbortKind::VoteNo,
            Ok(Kind::ParticipantUnreachable) => AbortKind::ParticipantUnreachable,
            Ok(Kind::ParticipantTimeout) => AbortKind::ParticipantTimeout,
            Ok(Kind::Deadline) => AbortKind::Deadline,
            Ok(Kind::CoordinatorRestart) => AbortKind::CoordinatorRestart,
            Ok(Kind::Fenced) => AbortKind::Fenced,
            Ok(Kind::ClientRollback) => AbortKind::ClientRollback,
            Ok(Kind::StepFailed) => AbortKind::StepFailed,
            Ok(Kind::Unspecified) | Err(_) => AbortKind::Unspecified,
        }
    }
}

impl std::fmt::Display for AbortKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A NO reason in snake case, as the CLI prints it.
#[must_use]
pub fn no_reason_str(reason: NoReason) -> &'static str {
    match reason {
        NoReason::Conflict => "conflict",
        NoReason::CheckFailed => "check_failed",
        NoReason::BoundCrossed => "bound_crossed",
        NoReason::Invalid => "invalid",
        NoReason::Expired => "expired",
        NoReason::AlreadyAborted => "already_aborted",
        NoReason::StaleEpoch => "stale_epoch",
        NoReason::Overloaded => "overloaded",
    }
}

/// An outcome in lowercase, as the CLI prints it.
#[must_use]
pub fn outcome_str(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Committed => "committed",
        Outcome::Aborted => "aborted",
        Outcome::Pending => "pending",
    }
}

/// A transaction's lifecycle at the coordinator (see `TxnState` in concord.proto).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TxnState {
    /// Prepares sent, no decision yet.
    Preparing,
    /// The commit decision is durable; Commit is being delivered.
    Committing,
    /// Every participant acknowledged Commit.
    Committed,
    /// Decided abort.
    Aborted,
    /// Saga steps are executing.
    Executing,
    /// Aborted; executed saga steps are being compensated.
    Compensating,
    /// Aborted; a compensation keeps failing (retried slowly): an operator should look.
    NeedsAttention,
    /// An interactive transaction begun and not yet committed or rolled back.
    Open,
}

impl TxnState {
    /// Every state, for help texts and parsers.
    pub const ALL: [TxnState; 8] = [
        TxnState::Open,
        TxnState::Preparing,
        TxnState::Executing,
        TxnState::Committing,
        TxnState::Committed,
        TxnState::Compensating,
        TxnState::NeedsAttention,
        TxnState::Aborted,
    ];

    /// The state in lowercase, as the CLI prints and parses it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TxnState::Preparing => "preparing",
            TxnState::Committing => "committing",
            TxnState::Committed => "committed",
            TxnState::Aborted => "aborted",
            TxnState::Executing => "executing",
            TxnState::Compensating => "compensating",
            TxnState::NeedsAttention => "needs_attention",
            TxnState::Open => "open",
        }
    }

    /// The state from its wire number; `None` for UNSPECIFIED or an unknown number.
    #[must_use]
    pub fn from_wire(state: i32) -> Option<TxnState> {
        match v1::TxnState::try_from(state).ok()? {
            v1::TxnState::Preparing => Some(TxnState::Preparing),
            v1::TxnState::Committing => Some(TxnState::Committing),
            v1::TxnState::Committed => Some(TxnState::Committed),
            v1::TxnState::Aborted => Some(TxnState::Aborted),
            v1::TxnState::Executing => Some(TxnState::Executing),
            v1::TxnState::Compensating => Some(TxnState::Compensating),
            v1::TxnState::NeedsAttention => Some(TxnState::NeedsAttention),
            v1::TxnState::Open => Some(TxnState::Open),
            v1::TxnState::Unspecified => None,
        }
    }

    /// The wire form.
    #[must_use]
    pub fn to_wire(self) -> v1::TxnState {
        match self {
            TxnState::Preparing => v1::TxnState::Preparing,
            TxnState::Committing => v1::TxnState::Committing,
            TxnState::Committed => v1::TxnState::Committed,
            TxnState::Aborted => v1::TxnState::Aborted,
            TxnState::Executing => v1::TxnState::Executing,
            TxnState::Compensating => v1::TxnState::Compensating,
            TxnState::NeedsAttention => v1::TxnState::NeedsAttention,
            TxnState::Open => v1::TxnState::Open,
        }
    }
}

impl std::fmt::Display for TxnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TxnState {
    type Err = String;

    fn from_str(text: &str) -> Result<TxnState, String> {
        TxnState::ALL.into_iter().find(|state| state.as_str() == text).ok_or_else(|| {
            let names: Vec<&str> = TxnState::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown state {text:?}; expected one of {}", names.join(", "))
        })
    }
}

/// How the coordinator ran a transaction's branches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnMode {
    /// Two-phase commit on every branch.
    TwoPhase,
    /// Every branch as a saga step.
    Saga,
    /// 2PC where possible, saga steps elsewhere.
    Auto,
}

impl TxnMode {
    /// The mode in snake case, as the CLI prints it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TxnMode::TwoPhase => "two_phase",
            TxnMode::Saga => "saga",
            TxnMode::Auto => "auto",
        }
    }

    /// The wire value.
    #[must_use]
    pub fn to_wire(self) -> v1::TxnMode {
        match self {
            TxnMode::TwoPhase => v1::TxnMode::TwoPhase,
            TxnMode::Saga => v1::TxnMode::Saga,
            TxnMode::Auto => v1::TxnMode::Auto,
        }
    }

    fn from_wire(mode: i32) -> Option<TxnMode> {
        match v1::TxnMode::try_from(mode).ok()? {
            v1::TxnMode::TwoPhase => Some(TxnMode::TwoPhase),
            v1::TxnMode::Saga => Some(TxnMode::Saga),
            v1::TxnMode::Auto => Some(TxnMode::Auto),
            v1::TxnMode::Unspecified => None,
        }
    }
}

/// One branch's state as the coordinator last saw it (see `BranchState` in concord.proto).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BranchState {
    /// Prepare sent, no answer yet.
    Preparing,
    /// Voted YES.
    Prepared,
    /// Voted READ_ONLY: no phase 2.
    ReadOnly,
    /// Voted NO.
    VotedNo,
    /// No answer (timeout or unreachable): may or may not be prepared.
    Unknown,
    /// Commit sent, not yet acknowledged.
    Committing,
    /// Commit acknowledged.
    Committed,
    /// Aborted.
    Aborted,
    /// Saga step not started yet.
    Waiting,
    /// Saga step: Execute sent.
    Executing,
    /// Saga step executed.
    Executed,
    /// Saga step refused by its participant.
    ExecuteFailed,
    /// Saga step: Compensate sent.
    Compensating,
    /// Saga step compensated.
    Compensated,
}

impl BranchState {
    /// The state in snake case, as the CLI prints it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            BranchState::Preparing => "preparing",
            BranchState::Prepared => "prepared",
            BranchState::ReadOnly => "read_only",
            BranchState::VotedNo => "voted_no",
            BranchState::Unknown => "unknown",
            BranchState::Committing => "committing",
            BranchState::Committed => "committed",
            BranchState::Aborted => "aborted",
            BranchState::Waiting => "waiting",
            BranchState::Executing => "executing",
            BranchState::Executed => "executed",
            BranchState::ExecuteFailed => "execute_failed",
            BranchState::Compensating => "compensating",
            BranchState::Compensated => "compensated",
        }
    }

    fn from_wire(state: i32) -> Option<BranchState> {
        use v1::BranchState as W;
        Some(match W::try_from(state).ok()? {
            W::Preparing => BranchState::Preparing,
            W::Prepared => BranchState::Prepared,
            W::ReadOnly => BranchState::ReadOnly,
            W::VotedNo => BranchState::VotedNo,
            W::Unknown => BranchState::Unknown,
            W::Committing => BranchState::Committing,
            W::Committed => BranchState::Committed,
            W::Aborted => BranchState::Aborted,
            W::Waiting => BranchState::Waiting,
            W::Executing => BranchState::Executing,
            W::Executed => BranchState::Executed,
            W::ExecuteFailed => BranchState::ExecuteFailed,
            W::Compensating => BranchState::Compensating,
            W::Compensated => BranchState::Compensated,
            W::Unspecified => return None,
        })
    }
}

/// One participant's part of a transaction, as the coordinator reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchInfo {
    /// The participant's name.
    pub participant: String,
    /// Its state; `None` if the coordinator did not say.
    pub state: Option<BranchState>,
    /// Its vote, once it voted (a NO carries the reason).
    pub vote: Option<Vote>,
    /// Phase-2 delivery attempts so far.
    pub delivery_attempts: u32,
    /// The last delivery error, if any.
    pub last_error: Option<String>,
    /// Whether it runs as a saga step (Execute/Compensate) rather than by 2PC.
    pub saga_step: bool,
}

/// One transaction as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionInfo {
    /// Its id.
    pub txn_id: String,
    /// Its lifecycle state; `None` if the coordinator did not say.
    pub state: Option<TxnState>,
    /// Its outcome so far.
    pub outcome: Outcome,
    /// Why it aborted, if it did.
    pub abort: Option<AbortCause>,
    /// Each participant's part.
    pub branches: Vec<BranchInfo>,
    /// How it ran; `None` if the coordinator did not say.
    pub mode: Option<TxnMode>,
    /// The epoch of the coordinator that ran it.
    pub epoch: u64,
    /// When it was created (ms since the Unix epoch), if known.
    pub created_unix_ms: Option<u64>,
    /// When it was decided, if it was and that is known.
    pub decided_unix_ms: Option<u64>,
    /// When every participant had acknowledged the decision, if known.
    pub finished_unix_ms: Option<u64>,
}

impl TransactionInfo {
    pub(crate) fn from_wire(info: v1::TransactionInfo) -> Result<TransactionInfo, ClientError> {
        let outcome =
            convert::outcome_from_wire(info.outcome).ok_or_else(|| ClientError::Internal {
                txn_id: Some(info.txn_id.clone()),
                message: format!("the coordinator sent no outcome for {}", info.txn_id),
            })?;
        let branches = info
            .branches
            .into_iter()
            .map(|branch| BranchInfo {
                participant: branch.participant,
                state: BranchState::from_wire(branch.state),
                vote: branch.vote.and_then(|vote| convert::vote_from_wire(Some(vote)).ok()),
                delivery_attempts: branch.delivery_attempts,
                saga_step: branch.saga_step,
                last_error: non_empty(branch.last_error),
            })
            .collect();
        Ok(TransactionInfo {
            txn_id: info.txn_id,
            state: TxnState::from_wire(info.state),
            outcome,
            abort: info.abort.map(AbortCause::from_wire),
            branches,
            mode: TxnMode::from_wire(info.mode),
            epoch: info.epoch,
            created_unix_ms: non_zero(info.created_unix_ms),
            decided_unix_ms: non_zero(info.decided_unix_ms),
            finished_unix_ms: non_zero(info.finished_unix_ms),
        })
    }
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionPage {
    /// The transactions on this page.
    pub transactions: Vec<TransactionInfo>,
    /// The token for the next page; `None` when this was the last.
    pub next_page_token: Option<String>,
}

impl Submitted {
    /// Decodes a submit's answer; `sent_txn_id` is the id the request carried.
    pub(crate) fn from_wire(
        response: v1::SubmitResponse,
        sent_txn_id: &str,
    ) -> Result<Submitted, ClientError> {
        let internal = |message: String| ClientError::Internal {
            txn_id: Some(sent_txn_id.to_string()),
            message,
        };
        if !response.txn_id.is_empty() && response.txn_id != sent_txn_id {
            return Err(internal(format!(
                "the coordinator answered for txn {:?}, not the {sent_txn_id:?} that was sent",
                response.txn_id
            )));
        }
        let outcome = convert::outcome_from_wire(response.outcome)
            .ok_or_else(|| internal("the coordinator's answer has no outcome".to_string()))?;
        Ok(Submitted {
            txn_id: sent_txn_id.to_string(),
            outcome,
            abort: response.abort.map(AbortCause::from_wire),
            state: TxnState::from_wire(response.state),
        })
    }
}

fn non_empty(text: String) -> Option<String> {
    if text.is_empty() { None } else { Some(text) }
}

fn non_zero(value: u64) -> Option<u64> {
    if value == 0 { None } else { Some(value) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A submit answer decodes with its abort cause; the id sent is kept.
    #[test]
    fn submit_answers_decode() {
        let response = v1::SubmitResponse {
            txn_id: String::new(),
            outcome: v1::Outcome::Aborted.into(),
            abort: Some(v1::AbortCause {
                kind: v1::abort_cause::Kind::VoteNo.into(),
                participant: "beta".into(),
                vote_reason: v1::NoReason::BoundCrossed.into(),
                message: "below 0".into(),
            }),
            state: v1::TxnState::Aborted.into(),
        };
        let submitted = Submitted::from_wire(response, "t-1").unwrap();
        assert_eq!(submitted.txn_id, "t-1");
        assert_eq!(submitted.outcome, Outcome::Aborted);
        assert_eq!(submitted.state, Some(TxnState::Aborted));
        let cause = submitted.abort.unwrap();
        assert_eq!(cause.label(), "bound_crossed");
        assert_eq!(cause.to_string(), "participant beta voted NO (bound_crossed): below 0");
    }

    /// An answer without an outcome, or for another id, is an error that keeps the sent id.
    #[test]
    fn malformed_submit_answers_are_internal() {
        let no_outcome = v1::SubmitResponse { txn_id: "t-1".into(), ..Default::default() };
        let error = Submitted::from_wire(no_outcome, "t-1").unwrap_err();
        assert!(matches!(error, ClientError::Internal { .. }));
        assert_eq!(error.txn_id(), Some("t-1"));
        let other = v1::SubmitResponse {
            txn_id: "t-2".into(),
            outcome: v1::Outcome::Committed.into(),
            ..Default::default()
        };
        assert_eq!(Submitted::from_wire(other, "t-1").unwrap_err().txn_id(), Some("t-1"));
    }

    /// States parse from and print as the same lowercase names.
    #[test]
    fn states_parse_and_print() {
        for state in TxnState::ALL {
            assert_eq!(state.as_str().parse::<TxnState>().unwrap(), state);
            assert_eq!(TxnState::from_wire(state.to_wire().into()), Some(state));
        }
        assert!("bogus".parse::<TxnState>().is_err());
        assert_eq!(TxnState::from_wire(0), None);
    }

    /// Transaction info decodes branches, votes and timestamps (0 meaning unknown).
    #[test]
    fn transaction_info_decodes() {
        let info = v1::TransactionInfo {
            txn_id: "t".into(),
            state: v1::TxnState::Committing.into(),
            outcome: v1::Outcome::Committed.into(),
            abort: None,
            branches: vec![v1::BranchInfo {
                participant: "alpha".into(),
                state: v1::BranchState::Committing.into(),
                vote: Some(v1::Vote { kind: v1::VoteKind::Yes.into(), ..Default::default() }),
                delivery_attempts: 2,
                last_error: "timeout".into(),
                saga_step: false,
            }],
            mode: v1::TxnMode::TwoPhase.into(),
            epoch: 3,
            created_unix_ms: 1_000,
            decided_unix_ms: 0,
            finished_unix_ms: 0,
        };
        let info = TransactionInfo::from_wire(info).unwrap();
        assert_eq!(info.state, Some(TxnState::Committing));
        assert_eq!(info.mode, Some(TxnMode::TwoPhase));
        assert_eq!(info.created_unix_ms, Some(1_000));
        assert_eq!(info.decided_unix_ms, None);
        let branch = &info.branches[0];
        assert_eq!(branch.state, Some(BranchState::Committing));
        assert_eq!(branch.vote, Some(Vote::Yes));
        assert_eq!(branch.last_error.as_deref(), Some("timeout"));
    }
}
