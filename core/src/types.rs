//! The protocol's vocabulary: transaction ids, epochs, operations, votes and outcomes, and the
//! validation every server applies to what it receives. Wire types convert into these in one
//! place (`concord_proto::convert`); nothing in the core sees a prost type.

use serde::{Deserialize, Serialize};

use crate::limits;

/// A transaction id: the client's idempotency key, or one the coordinator issued. 1 to
/// [`limits::MAX_TXN_ID_BYTES`] bytes of `[A-Za-z0-9._:-]`, so it is safe in logs, URLs and
/// file names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxnId(String);

impl TxnId {
    /// Validates `id` as a transaction id; `field` names it in the error.
    pub fn parse(id: &str, field: &str) -> Result<TxnId, InvalidInput> {
        if id.is_empty() {
            return Err(InvalidInput::new(field, "must not be empty"));
        }
        if id.len() > limits::MAX_TXN_ID_BYTES {
            return Err(InvalidInput::new(
                field,
                format!("is {} bytes; the limit is {}", id.len(), limits::MAX_TXN_ID_BYTES),
            ));
        }
        if let Some(bad) =
            id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(InvalidInput::new(
                field,
                format!("contains {bad:?}; only [A-Za-z0-9._:-] are allowed"),
            ));
        }
        Ok(TxnId(id.to_string()))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TxnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A coordinator's epoch: it grows on every coordinator start and travels on every message, so
/// a participant can refuse a Prepare from a coordinator that has since been replaced.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

/// A key in a participant's store.
pub type Key = Vec<u8>;

/// One operation on a participant's store (see `Operation` in concord.proto).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// Set the key to the value.
    Put {
        /// The key.
        key: Key,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove the key.
    Delete {
        /// The key.
        key: Key,
    },
    /// Add to a counter, voting NO if the result crosses a bound or overflows.
    CounterAdd {
        /// The counter's key.
        key: Key,
        /// The signed amount to add.
        delta: i64,
        /// The result may not fall below this.
        lower_bound: Option<i64>,
        /// The result may not rise above this.
        upper_bound: Option<i64>,
    },
    /// A precondition on committed state.
    Check {
        /// The key checked.
        key: Key,
        /// What must hold.
        expect: Expect,
    },
}

impl Operation {
    /// The key the operation touches.
    #[must_use]
    pub fn key(&self) -> &[u8] {
        match self {
            Operation::Put { key, .. }
            | Operation::Delete { key }
            | Operation::CounterAdd { key, .. }
            | Operation::Check { key, .. } => key,
        }
    }

    /// Whether the operation writes (everything but a check does).
    #[must_use]
    pub fn writes(&self) -> bool {
        !matches!(self, Operation::Check { .. })
    }

    fn payload_bytes(&self) -> usize {
        match self {
            Operation::Put { key, value } => key.len() + value.len(),
            Operation::Check { key, expect: Expect::Value(value) } => key.len() + value.len(),
            other => other.key().len(),
        }
    }
}

/// What a [`Operation::Check`] requires of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// The key's version equals this (0: absent).
    Version(u64),
    /// The key exists with exactly this value.
    Value(Vec<u8>),
    /// The key is absent.
    Absent,
}

/// Checks one branch's operations against the limits: 1 to
/// [`limits::MAX_OPERATIONS_PER_BRANCH`] operations, keys 1 to [`limits::MAX_KEY_BYTES`] bytes,
/// values up to [`limits::MAX_VALUE_BYTES`], and a total payload up to
/// [`limits::MAX_BRANCH_PAYLOAD_BYTES`]. `field` is the operations list's name in errors
/// (for example `branches[1].operations`). Returns the payload size.
pub fn validate_operations(operations: &[Operation], field: &str) -> Result<usize, InvalidInput> {
    if operations.is_empty() {
        return Err(InvalidInput::new(field, "must hold at least one operation"));
    }
    if operations.len() > limits::MAX_OPERATIONS_PER_BRANCH {
        return Err(InvalidInput::new(
            field,
            format!(
                "holds {} operations; the limit is {}",
                operations.len(),
                limits::MAX_OPERATIONS_PER_BRANCH
            ),
        ));
    }
    let mut payload = 0usize;
    for (index, operation) in operations.iter().enumerate() {
        let key = operation.key();
        if key.is_empty() {
            return Err(InvalidInput::new(format!("{field}[{index}].key"), "must not be empty"));
        }
        if key.len() > limits::MAX_KEY_BYTES {
            return Err(InvalidInput::new(
                format!("{field}[{index}].key"),
                format!("is {} bytes; the limit is {}", key.len(), limits::MAX_KEY_BYTES),
            ));
        }
        let value_len = match operation {
            Operation::Put { value, .. }
            | Operation::Check { expect: Expect::Value(value), .. } => value.len(),
            _ => 0,
        };
        if value_len > limits::MAX_VALUE_BYTES {
            return Err(InvalidInput::new(
                format!("{field}[{index}].value"),
                format!("is {value_len} bytes; the limit is {}", limits::MAX_VALUE_BYTES),
            ));
        }
        if let Operation::CounterAdd { lower_bound: Some(lower), upper_bound: Some(upper), .. } =
            operation
            && lower > upper
        {
            return Err(InvalidInput::new(
                format!("{field}[{index}].counter_add"),
                format!("lower_bound {lower} is above upper_bound {upper}"),
            ));
        }
        payload += operation.payload_bytes();
    }
    if payload > limits::MAX_BRANCH_PAYLOAD_BYTES {
        return Err(InvalidInput::new(
            field,
            format!(
                "carry {payload} bytes of keys and values; the limit is {}",
                limits::MAX_BRANCH_PAYLOAD_BYTES
            ),
        ));
    }
    Ok(payload)
}

/// Bad input: which field, and what is wrong with it. Servers turn it into INVALID_ARGUMENT.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidInput {
    /// The field's path in the request, such as `branches[0].operations[2].key`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl InvalidInput {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> InvalidInput {
        InvalidInput { field: field.into(), reason: reason.into() }
    }
}

/// Why a participant voted NO (see `NoReason` in concord.proto).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoReason {
    /// A key is locked by another transaction.
    Conflict,
    /// A check did not hold.
    CheckFailed,
    /// A counter would cross a bound or overflow.
    BoundCrossed,
    /// An operation cannot apply to the committed value.
    Invalid,
    /// The Prepare arrived after its deadline.
    Expired,
    /// The branch was aborted first (an Abort barrier).
    AlreadyAborted,
    /// The Prepare came from an older coordinator epoch than one already seen.
    StaleEpoch,
    /// The participant holds as many prepared branches as it may.
    Overloaded,
}

/// A participant's answer to Prepare.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Vote {
    /// Prepared and durable; bound to the coordinator's decision.
    Yes,
    /// Nothing to write; no phase 2 needed.
    ReadOnly,
    /// Cannot commit.
    No {
        /// Why, for machines.
        reason: NoReason,
        /// Why, for people.
        message: String,
    },
}

impl Vote {
    /// A NO vote.
    pub fn no(reason: NoReason, message: impl Into<String>) -> Vote {
        Vote::No { reason, message: message.into() }
    }
}

/// A transaction's outcome as far as the answering party knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Committed.
    Committed,
    /// Aborted (including presumed abort).
    Aborted,
    /// Not decided yet.
    Pending,
}

/// Counters are stored as exactly 8 bytes, a big-endian two's-complement i64.
pub mod counter {
    /// Encodes a counter value.
    #[must_use]
    pub fn encode(value: i64) -> Vec<u8> {
        value.to_be_bytes().to_vec()
    }

    /// Decodes a counter value; `None` if the bytes are not 8 long.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<i64> {
        <[u8; 8]>::try_from(bytes).ok().map(i64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids of the allowed alphabet and length parse; each kind of bad id names the field.
    #[test]
    fn txn_ids_are_validated() {
        assert!(TxnId::parse("order-42:attempt_1.x", "txn_id").is_ok());
        assert!(TxnId::parse(&"a".repeat(limits::MAX_TXN_ID_BYTES), "txn_id").is_ok());
        for bad in ["", "has space", "slash/", "é", &"a".repeat(limits::MAX_TXN_ID_BYTES + 1)] {
            let error = TxnId::parse(bad, "txn_id").unwrap_err();
            assert_eq!(error.field, "txn_id", "{bad:?}");
        }
    }

    /// Each limit on a branch's operations is enforced and names the offending field.
    #[test]
    fn operations_are_validated_against_every_limit() {
        let put =
            |key: &[u8], value: &[u8]| Operation::Put { key: key.to_vec(), value: value.to_vec() };
        assert_eq!(validate_operations(&[put(b"k", b"v")], "ops"), Ok(2));
        assert_eq!(validate_operations(&[], "ops").unwrap_err().field, "ops");
        let too_many = vec![put(b"k", b"v"); limits::MAX_OPERATIONS_PER_BRANCH + 1];
        assert_eq!(validate_operations(&too_many, "ops").unwrap_err().field, "ops");
        assert_eq!(validate_operations(&[put(b"", b"v")], "ops").unwrap_err().field, "ops[0].key");
        let long_key = vec![b'k'; limits::MAX_KEY_BYTES + 1];
        assert_eq!(
            validate_operations(&[put(b"a", b""), put(&long_key, b"v")], "ops").unwrap_err().field,
            "ops[1].key"
        );
        let big_value = vec![0u8; limits::MAX_VALUE_BYTES + 1];
        assert_eq!(
            validate_operations(&[put(b"k", &big_value)], "ops").unwrap_err().field,
            "ops[0].value"
        );
        let full_value = vec![0u8; limits::MAX_VALUE_BYTES];
        let heavy: Vec<_> = (0..limits::MAX_OPERATIONS_PER_BRANCH)
            .map(|i| put(format!("k{i}").as_bytes(), &full_value))
            .collect();
        assert_eq!(validate_operations(&heavy, "ops").unwrap_err().field, "ops");
        let inverted = Operation::CounterAdd {
            key: b"c".to_vec(),
            delta: 1,
            lower_bound: Some(5),
            upper_bound: Some(1),
        };
        assert_eq!(
            validate_operations(&[inverted], "ops").unwrap_err().field,
            "ops[0].counter_add"
        );
    }

    /// Counters round-trip and anything not 8 bytes is not a counter.
    #[test]
    fn counters_round_trip() {
        for value in [i64::MIN, -1, 0, 1, i64::MAX] {
            assert_eq!(counter::decode(&counter::encode(value)), Some(value));
        }
        assert_eq!(counter::decode(b"1234567"), None);
    }
}
