//! The [`Transaction`] builder: branches of operations, an optional id and decision timeout,
//! checked against the protocol's limits before anything is sent, so a bad transaction fails
//! here with the offending field named instead of at the coordinator.

use concord_core::limits;
use concord_core::types::{InvalidInput, Operation, TxnId, validate_operations};
use concord_proto::convert::operation_to_wire;
use concord_proto::v1;

use crate::info::TxnMode;

/// A transaction to submit: for each participant, the operations to apply there, all or none.
///
/// Operations added for a participant that already has a branch are appended to that branch
/// (the protocol allows one branch per participant), in the order they were added: within a
/// branch, later operations see the effect of earlier ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    /// The client's idempotency key; `None` lets `submit` generate a UUID v4.
    txn_id: Option<String>,
    /// (participant, operations), in the order participants were first named.
    branches: Vec<(String, Vec<Operation>)>,
    /// The decision timeout; `None` uses the coordinator's default.
    timeout_ms: Option<u32>,
    /// When this transaction was built (ms since the Unix epoch), sent with every submission
    /// of it so a retry after a long silence is recognised as one (see
    /// `SubmitRequest.first_submitted_unix_ms`). 0 when built by `Default`.
    first_submitted_unix_ms: u64,
    /// How the coordinator may run the branches (two-phase commit when unset).
    mode: Option<TxnMode>,
    /// Saga ordering: (step, the step it runs after), by participant name.
    dependencies: Vec<(String, String)>,
}

impl Transaction {
    /// An empty transaction with a fresh id (a UUID v4; [`Transaction::with_txn_id`] replaces
    /// it), stamped with the current time as its first submission time. Submitting the same
    /// `Transaction` again after an unknown outcome is a safe retry: same id, same time.
    #[must_use]
    pub fn new() -> Transaction {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Transaction {
            txn_id: Some(uuid::Uuid::new_v4().to_string()),
            first_submitted_unix_ms: now,
            ..Transaction::default()
        }
    }

    /// When this transaction was first built for submission (ms since the Unix epoch); pass it
    /// to `Client::fence` when asking about an unknown outcome.
    #[must_use]
    pub fn first_submitted_unix_ms(&self) -> u64 {
        self.first_submitted_unix_ms
    }

    /// Sets the first submission time, for a caller that rebuilds a transaction it submitted
    /// before (for example after a restart) and retries it.
    #[must_use]
    pub fn with_first_submitted_unix_ms(mut self, unix_ms: u64) -> Transaction {
        self.first_submitted_unix_ms = unix_ms;
        self
    }

    /// Sets the transaction id, the idempotency key: resubmitting the same id never runs the
    /// transaction twice. 1..=128 bytes of `[A-Za-z0-9._:-]` (checked at submit).
    #[must_use]
    pub fn with_txn_id(mut self, txn_id: impl Into<String>) -> Transaction {
        self.txn_id = Some(txn_id.into());
        self
    }

    /// Sets how long the coordinator may take to decide, in milliseconds (at most
    /// [`limits::MAX_TXN_TIMEOUT_MS`]); 0 means the coordinator's default.
    #[must_use]
    pub fn with_timeout_ms(mut self, timeout_ms: u32) -> Transaction {
        self.timeout_ms = if timeout_ms == 0 { None } else { Some(timeout_ms) };
        self
    }

    /// Adds operations for `participant` (appended to its branch if it has one).
    #[must_use]
    pub fn with_branch(
        mut self,
        participant: impl Into<String>,
        operations: impl IntoIterator<Item = Operation>,
    ) -> Transaction {
        let participant = participant.into();
        for operation in operations {
            self.push_operation(&participant, operation);
        }
        // A participant named with no operations still gets a (then invalid) branch, so
        // validation reports it instead of silently dropping it.
        if !self.branches.iter().any(|(name, _)| *name == participant) {
            self.branches.push((participant, Vec::new()));
        }
        self
    }

    /// How the coordinator may run the branches: two-phase commit (the default), saga steps,
    /// or automatic (2PC where the participant can prepare, saga steps elsewhere).
    #[must_use]
    pub fn with_mode(mut self, mode: TxnMode) -> Transaction {
        self.mode = Some(mode);
        self
    }

    /// Saga ordering: `step`'s branch runs only after `after`'s has executed. Without any
    /// dependency, saga steps run one after another in branch order; with some, these are the
    /// only constraints and independent steps run side by side. `after` must be named (by a
    /// branch) before `step`.
    #[must_use]
    pub fn with_dependency(
        mut self,
        step: impl Into<String>,
        after: impl Into<String>,
    ) -> Transaction {
        self.dependencies.push((step.into(), after.into()));
        self
    }

    /// The mode, if one was set.
    #[must_use]
    pub fn mode(&self) -> Option<TxnMode> {
        self.mode
    }

    /// Appends one operation to `participant`'s branch, creating the branch if needed.
    pub fn push_operation(&mut self, participant: &str, operation: Operation) {
        match self.branches.iter_mut().find(|(name, _)| name == participant) {
            Some((_, operations)) => operations.push(operation),
            None => self.branches.push((participant.to_string(), vec![operation])),
        }
    }

    /// The id set with [`with_txn_id`](Self::with_txn_id), if any.
    #[must_use]
    pub fn txn_id(&self) -> Option<&str> {
        self.txn_id.as_deref()
    }

    /// The decision timeout, if one was set.
    #[must_use]
    pub fn timeout_ms(&self) -> Option<u32> {
        self.timeout_ms
    }

    /// The branches, in the order their participants were first named.
    #[must_use]
    pub fn branches(&self) -> &[(String, Vec<Operation>)] {
        &self.branches
    }

    /// Checks the transaction against the protocol's limits, naming the offending field the
    /// way the coordinator would (`branches[1].operations[0].key`).
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if let Some(txn_id) = &self.txn_id {
            TxnId::parse(txn_id, "txn_id")?;
        }
        if self.branches.is_empty() {
            return Err(InvalidInput::new("branches", "a transaction needs at least one branch"));
        }
        if self.branches.len() > limits::MAX_BRANCHES_PER_TXN {
            return Err(InvalidInput::new(
                "branches",
                format!(
                    "{} participants; the limit is {}",
                    self.branches.len(),
                    limits::MAX_BRANCHES_PER_TXN
                ),
            ));
        }
        let mut payload = 0usize;
        for (index, (participant, operations)) in self.branches.iter().enumerate() {
            if participant.is_empty() {
                return Err(InvalidInput::new(
                    format!("branches[{index}].participant"),
                    "must not be empty",
                ));
            }
            if participant.len() > limits::MAX_PARTICIPANT_NAME_BYTES {
                return Err(InvalidInput::new(
                    format!("branches[{index}].participant"),
                    format!(
                        "is {} bytes; the limit is {}",
                        participant.len(),
                        limits::MAX_PARTICIPANT_NAME_BYTES
                    ),
                ));
            }
            payload += validate_operations(operations, &format!("branches[{index}].operations"))?;
        }
        if payload > limits::MAX_TXN_PAYLOAD_BYTES {
            return Err(InvalidInput::new(
                "branches",
                format!(
                    "carry {payload} bytes of keys and values; the limit is {}",
                    limits::MAX_TXN_PAYLOAD_BYTES
                ),
            ));
        }
        let index_of = |name: &str| self.branches.iter().position(|(p, _)| p == name);
        for (step, after) in &self.dependencies {
            match (index_of(step), index_of(after)) {
                (Some(s), Some(a)) if a < s => {}
                (Some(_), Some(_)) => {
                    return Err(InvalidInput::new(
                        "depends_on",
                        format!("{step} may only run after a branch named before it, not {after}"),
                    ));
                }
                _ => {
                    return Err(InvalidInput::new(
                        "depends_on",
                        format!("{step} after {after}: both must name branches"),
                    ));
                }
            }
        }
        if let Some(timeout_ms) = self.timeout_ms
            && u64::from(timeout_ms) > limits::MAX_TXN_TIMEOUT_MS
        {
            return Err(InvalidInput::new(
                "timeout_ms",
                format!("is {timeout_ms}; the limit is {}", limits::MAX_TXN_TIMEOUT_MS),
            ));
        }
        Ok(())
    }

    /// The wire request, carrying `txn_id` (the builder's own, or one the caller generated).
    #[must_use]
    pub fn to_request(&self, txn_id: &TxnId) -> v1::SubmitRequest {
        v1::SubmitRequest {
            txn_id: txn_id.as_str().to_string(),
            branches: self
                .branches
                .iter()
                .map(|(participant, operations)| v1::Branch {
                    participant: participant.clone(),
                    operations: operations.iter().cloned().map(operation_to_wire).collect(),
                    depends_on: self
                        .dependencies
                        .iter()
                        .filter(|(step, _)| step == participant)
                        .filter_map(|(_, after)| {
                            let index = self.branches.iter().position(|(p, _)| p == after)?;
                            u32::try_from(index).ok()
                        })
                        .collect(),
                })
                .collect(),
            timeout_ms: self.timeout_ms.unwrap_or(0),
            mode: self.mode.unwrap_or(TxnMode::TwoPhase).to_wire().into(),
            first_submitted_unix_ms: self.first_submitted_unix_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn add(key: &str, delta: i64) -> Operation {
        Operation::CounterAdd {
            key: key.as_bytes().to_vec(),
            delta,
            lower_bound: Some(0),
            upper_bound: None,
        }
    }

    /// Operations for the same participant land in one branch, in the order added.
    #[test]
    fn operations_for_one_participant_share_a_branch() {
        let mut txn = Transaction::new()
            .with_branch("alpha", [add("a", -1)])
            .with_branch("beta", [add("b", 1)])
            .with_branch("alpha", [add("c", 2)]);
        txn.push_operation("beta", Operation::Delete { key: b"d".to_vec() });
        assert_eq!(txn.branches().len(), 2);
        assert_eq!(txn.branches()[0].0, "alpha");
        assert_eq!(txn.branches()[0].1, vec![add("a", -1), add("c", 2)]);
        assert_eq!(txn.branches()[1].1.len(), 2);
        assert!(txn.validate().is_ok());
    }

    /// The wire request carries the id, every operation in order, the timeout and 2PC mode.
    #[test]
    fn wire_request_carries_everything() {
        let txn = Transaction::new()
            .with_txn_id("order-1")
            .with_timeout_ms(750)
            .with_branch("alpha", [add("a", -5), add("b", 5)]);
        let id = TxnId::parse("order-1", "txn_id").unwrap();
        let request = txn.to_request(&id);
        assert_eq!(request.txn_id, "order-1");
        assert_eq!(request.timeout_ms, 750);
        assert_eq!(request.mode, i32::from(v1::TxnMode::TwoPhase));
        assert_eq!(request.branches.len(), 1);
        let back =
            concord_proto::convert::operations(request.branches[0].operations.clone(), "ops")
                .unwrap();
        assert_eq!(back, vec![add("a", -5), add("b", 5)]);
        assert_eq!(Transaction::new().with_timeout_ms(0).timeout_ms(), None);
    }

    /// Each kind of bad transaction is refused with the field the coordinator would name.
    #[test]
    fn bad_transactions_name_the_field() {
        assert_eq!(Transaction::new().validate().unwrap_err().field, "branches");
        let bad_id = Transaction::new().with_txn_id("has space").with_branch("a", [add("k", 1)]);
        assert_eq!(bad_id.validate().unwrap_err().field, "txn_id");
        let empty_branch = Transaction::new().with_branch("a", [add("k", 1)]).with_branch("b", []);
        assert_eq!(empty_branch.validate().unwrap_err().field, "branches[1].operations");
        let empty_key = Transaction::new().with_branch("a", [add("k", 1), add("", 1)]);
        assert_eq!(empty_key.validate().unwrap_err().field, "branches[0].operations[1].key");
        let unnamed = Transaction::new().with_branch("", [add("k", 1)]);
        assert_eq!(unnamed.validate().unwrap_err().field, "branches[0].participant");
        let mut wide = Transaction::new();
        for index in 0..=limits::MAX_BRANCHES_PER_TXN {
            wide.push_operation(&format!("p{index}"), add("k", 1));
        }
        assert_eq!(wide.validate().unwrap_err().field, "branches");
        let slow = Transaction::new()
            .with_timeout_ms(u32::try_from(limits::MAX_TXN_TIMEOUT_MS + 1).unwrap())
            .with_branch("a", [add("k", 1)]);
        assert_eq!(slow.validate().unwrap_err().field, "timeout_ms");
    }
}
