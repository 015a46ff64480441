//! The records a participant appends to its write-ahead log, and their encoding.
//!
//! A record is encoded with postcard (a compact, documented serde format) inside a versioned
//! envelope, so a later format can be read alongside this one. Replaying the records in LSN
//! order rebuilds the participant's protocol state and re-applies committed writes
//! idempotently: every write carries its final value (a counter's sum was computed at Prepare,
//! under the lock), and a committed key's version is the LSN of the record that committed it.

use serde::{Deserialize, Serialize};

use crate::types::{Epoch, Key, TxnId};

/// One key's final state after a branch commits: `Some(value)` to set, `None` to delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// The key written.
    pub key: Key,
    /// The new value, or `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// A branch as a checkpoint carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointBranch {
    /// The transaction.
    pub txn: TxnId,
    /// The coordinator epoch that prepared it.
    pub epoch: Epoch,
    /// Its resolved writes.
    pub writes: Vec<Write>,
    /// Every key it holds locked (the writes' keys and the checked keys).
    pub locked: Vec<Key>,
    /// Its Prepare deadline.
    pub deadline_unix_ms: u64,
    /// The LSN of its PREPARED record.
    pub prepared_lsn: u64,
    /// The LSN of its commit record, if Commit arrived but the writes may not be applied yet.
    pub commit_lsn: Option<u64>,
}

/// A remembered decision, as a checkpoint carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointDecision {
    /// The transaction.
    pub txn: TxnId,
    /// Whether it committed (else it aborted).
    pub committed: bool,
    /// After this wall-clock time no message for it can still be valid, so it may be forgotten.
    pub forget_after_unix_ms: u64,
}

/// An executed saga step, as a checkpoint carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointStep {
    /// The transaction.
    pub txn: TxnId,
    /// The coordinator epoch that sent the Execute.
    pub epoch: Epoch,
    /// The writes it applied.
    pub writes: Vec<Write>,
    /// The before-image of every key it wrote: what Compensate writes back.
    pub undo: Vec<Write>,
    /// Its Execute deadline.
    pub deadline_unix_ms: u64,
    /// The LSN of its EXECUTED record: the version its writes took.
    pub executed_lsn: u64,
}

/// A participant WAL record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParticipantRecord {
    /// The branch voted YES: its resolved writes and the keys it locks. Forced before the vote.
    Prepared {
        /// The transaction.
        txn: TxnId,
        /// The coordinator epoch that sent the Prepare.
        epoch: Epoch,
        /// The writes to apply if it commits.
        writes: Vec<Write>,
        /// Every key locked.
        locked: Vec<Key>,
        /// The Prepare's deadline.
        deadline_unix_ms: u64,
    },
    /// The prepared branch commits; its writes take this record's LSN as their version. Forced
    /// before Commit is acknowledged (presumed abort: the coordinator may forget it after).
    Commit {
        /// The transaction.
        txn: TxnId,
    },
    /// A one-phase commit: the only branch, prepared and committed in one forced record.
    OnePhaseCommit {
        /// The transaction.
        txn: TxnId,
        /// The coordinator epoch that sent it.
        epoch: Epoch,
        /// The writes, applied with this record's LSN as their version.
        writes: Vec<Write>,
        /// The Prepare's deadline.
        deadline_unix_ms: u64,
    },
    /// The branch aborted, or an Abort arrived first and leaves a barrier. Never forced
    /// (presumed abort).
    Abort {
        /// The transaction.
        txn: TxnId,
        /// When the barrier may be forgotten.
        forget_after_unix_ms: u64,
    },
    /// A checkpoint starts: the records up to the matching end replace all protocol state.
    CheckpointBegin {
        /// Matches the `CheckpointEnd`.
        id: u64,
        /// The highest coordinator epoch seen.
        max_epoch: Epoch,
        /// Decisions due to be forgotten up to this time may have been forgotten.
        forgotten_before_unix_ms: u64,
    },
    /// Branches in the checkpoint.
    CheckpointBranches(Vec<CheckpointBranch>),
    /// Remembered decisions in the checkpoint.
    CheckpointDecisions(Vec<CheckpointDecision>),
    /// The checkpoint is complete. Records below its `CheckpointBegin` may be released once
    /// the store has been flushed and synced.
    CheckpointEnd {
        /// Matches the `CheckpointBegin`.
        id: u64,
    },
    /// A saga step executed: its writes take this record's LSN as their version, and `undo`
    /// holds the before-image of every key they change. Forced before the step's answer.
    /// (New variants go last, so every older record keeps its encoding.)
    Executed {
        /// The transaction.
        txn: TxnId,
        /// The coordinator epoch that sent the Execute.
        epoch: Epoch,
        /// The writes applied.
        writes: Vec<Write>,
        /// Before-images, one per written key.
        undo: Vec<Write>,
        /// The Execute's deadline.
        deadline_unix_ms: u64,
    },
    /// A saga step was compensated: its before-images are written back, taking this record's
    /// LSN as their version. Forced before Compensate is acknowledged.
    Compensated {
        /// The transaction.
        txn: TxnId,
        /// The before-images written back.
        restore: Vec<Write>,
        /// When the decision (and the barrier it leaves against a late Execute) may be
        /// forgotten.
        forget_after_unix_ms: u64,
    },
    /// Executed saga steps in the checkpoint, awaiting Commit or Compensate.
    CheckpointSteps(Vec<CheckpointStep>),
}

/// The envelope that versions the record format.
#[derive(Serialize, Deserialize)]
enum Envelope<R> {
    V1(R),
}

/// A record that could not be decoded.
#[derive(Clone, Debug, thiserror::Error)]
#[error("undecodable log record: {0}")]
pub struct RecordError(String);

impl ParticipantRecord {
    /// Encodes the record for the log.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes a record read from the log.
    pub fn decode(bytes: &[u8]) -> Result<ParticipantRecord, RecordError> {
        decode(bytes)
    }
}

/// Encodes any record type in the versioned envelope.
#[must_use]
pub fn encode<R: Serialize>(record: &R) -> Vec<u8> {
    // postcard serialization into a Vec cannot fail for these types: they contain no maps with
    // non-string keys and no unsized sequences of unknown length.
    postcard::to_stdvec(&Envelope::V1(record)).unwrap_or_else(|e| {
        unreachable!("postcard encoding of a log record failed: {e}");
    })
}

/// Decodes any record type from the versioned envelope.
pub fn decode<R: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<R, RecordError> {
    match postcard::from_bytes::<Envelope<R>>(bytes) {
        Ok(Envelope::V1(record)) => Ok(record),
        Err(e) => Err(RecordError(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record kind survives encode and decode; garbage is an error, not a panic.
    #[test]
    fn records_round_trip() {
        let txn = TxnId::parse("t1", "txn_id").unwrap();
        let records = vec![
            ParticipantRecord::Prepared {
                txn: txn.clone(),
                epoch: Epoch(3),
                writes: vec![Write { key: b"k".to_vec(), value: Some(b"v".to_vec()) }],
                locked: vec![b"k".to_vec()],
                deadline_unix_ms: 99,
            },
            ParticipantRecord::Commit { txn: txn.clone() },
            ParticipantRecord::Abort { txn, forget_after_unix_ms: 7 },
            ParticipantRecord::CheckpointEnd { id: 1 },
            ParticipantRecord::Executed {
                txn: TxnId::parse("t2", "txn_id").unwrap(),
                epoch: Epoch(1),
                writes: vec![Write { key: b"k".to_vec(), value: None }],
                undo: vec![Write { key: b"k".to_vec(), value: Some(b"old".to_vec()) }],
                deadline_unix_ms: 5,
            },
            ParticipantRecord::Compensated {
                txn: TxnId::parse("t2", "txn_id").unwrap(),
                restore: vec![],
                forget_after_unix_ms: 9,
            },
        ];
        for record in records {
            assert_eq!(ParticipantRecord::decode(&record.encode()).unwrap(), record);
        }
        assert!(ParticipantRecord::decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(ParticipantRecord::decode(&[]).is_err());
    }
}
