//! The records of the coordinator's decision log, and their encoding.

use serde::{Deserialize, Serialize};

use super::{AbortCause, BranchKind, TxnMode};
use crate::types::{Epoch, TxnId};

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
    /// A transaction with saga steps started. Forced before its first Execute, so that after a
    /// crash recovery compensates every step that may have executed.
    SagaStarted {
        /// The transaction.
        txn: TxnId,
        /// Participant names, in branch order.
        participants: Vec<String>,
        /// Each branch's kind.
        kinds: Vec<BranchKind>,
        /// The mode it was submitted with.
        mode: TxnMode,
        /// Wall-clock start.
        created_unix_ms: u64,
        /// The deadline sent with Prepare and Execute (and again with Compensate).
        deadline_unix_ms: u64,
    },
    /// A saga step was compensated (not forced: if lost, recovery compensates it again, which
    /// the participant acknowledges again).
    Compensated {
        /// The transaction.
        txn: TxnId,
        /// The step's branch.
        branch: usize,
    },
    /// Every saga step that needed it is compensated: the aborted saga is finished (not
    /// forced: if lost, recovery compensates the steps again, which is harmless).
    CompensationDone {
        /// The transaction.
        txn: TxnId,
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
