//! The decision log: where the coordinator's decisions become durable, behind one trait so the
//! coordinator does not know what holds them. [`WalLog`] keeps them in a write-ahead log (the
//! file WAL on one machine, the in-memory one under simulation); a replicated store (etcd, for
//! high availability) implements the same trait. One conformance suite
//! (`tests/decision_log.rs`) runs against every implementation.

use std::future::Future;

use concord_core::coordinator::CoordinatorRecord;
use concord_core::types::Epoch;
use concord_wal::{Lsn, Wal, WalError};

/// Where a record sits in a decision log: positions grow with every append and are never
/// reused, so "durable up to here" is one number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition(pub u64);

/// Why a decision log refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The log's storage failed (a failed sync, a lost connection that may have dropped
    /// writes). Every later call fails too: the process stops and recovers from the log.
    #[error("the decision log failed: {0}")]
    Failed(String),
    /// This writer may no longer write: it lost its lease, or a newer writer fenced it. Nothing
    /// it appends from now on becomes durable; it must stop deciding at once.
    #[error("the decision log refused this writer: {0}")]
    Fenced(String),
    /// A record could not be read back (names where).
    #[error("the decision log is corrupt: {0}")]
    Corrupt(String),
    /// A record is larger than the log takes (nothing was appended).
    #[error("a decision-log record of {bytes} bytes is larger than the log takes")]
    TooLarge {
        /// The encoded record's size.
        bytes: usize,
    },
}

/// Replayed records, oldest first.
pub type ReplayIter<'a> = Box<dyn Iterator<Item = Result<CoordinatorRecord, LogError>> + Send + 'a>;

/// A checkpoint being written: where it begins, and the id that pairs its begin and end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointStart {
    /// The checkpoint's id (its BEGIN and END records carry it).
    pub id: u64,
    /// The position of its BEGIN record: once the checkpoint is durable, every record before it
    /// may be released.
    pub position: LogPosition,
}

/// The coordinator's decision log. Its contract, which every implementation must keep (and
/// `tests/decision_log.rs` checks):
///
/// - **Order.** [`append`](DecisionLog::append) assigns strictly increasing positions in call
///   order; replay returns the records in that order.
/// - **Durability.** [`force`](DecisionLog::force)`(p)` resolves `Ok` only once every record at
///   or before `p` survives a crash of this process (and of its machine, for a file log).
///   Nothing may be told to anyone before the record behind it is forced (DESIGN.md, rule 1).
/// - **Prefix.** After a crash, replay returns a prefix of what was appended: every forced
///   record, possibly some that were not, never a gap and never a record that was not
///   appended.
/// - **Fencing.** An append or force may be refused with [`LogError::Fenced`] (a replicated log
///   whose writer lost its lease). A refused record never becomes durable later, so a fenced
///   coordinator cannot decide. Appends may be batched behind the scenes, but never acknowledged
///   by `force` before they are durable.
/// - **Failure is final.** After [`LogError::Failed`] every later call fails.
/// - **Checkpoints.** [`begin_checkpoint`](DecisionLog::begin_checkpoint) appends the opening
///   record (the caller holds its state lock, so the snapshot it takes matches that point);
///   [`write_checkpoint`](DecisionLog::write_checkpoint) appends the snapshot and the closing
///   record, in records small enough for the log, and returns the closing position. Records
///   others append meanwhile may interleave; replay applies them on top of the snapshot. Once
///   the closing record is forced, [`truncate_before`](DecisionLog::truncate_before) the
///   opening position may release everything older; replay then starts at (or before) it.
pub trait DecisionLog: Send + Sync + 'static {
    /// Buffers `record` as the next one and returns its position; durable once forced.
    fn append(&self, record: &CoordinatorRecord) -> Result<LogPosition, LogError>;

    /// Resolves once every record up to and including `position` is durable.
    fn force(&self, position: LogPosition) -> impl Future<Output = Result<(), LogError>> + Send;

    /// Appends `record` and forces it.
    fn append_forced(
        &self,
        record: &CoordinatorRecord,
    ) -> impl Future<Output = Result<LogPosition, LogError>> + Send {
        let appended = self.append(record);
        async move {
            let position = appended?;
            self.force(position).await?;
            Ok(position)
        }
    }

    /// The durable records, oldest first, from the latest checkpoint the log still holds (or
    /// from the start). Read once, when the coordinator starts.
    fn replay(&self) -> Result<ReplayIter<'_>, LogError>;

    /// Opens a checkpoint at the current end of the log.
    fn begin_checkpoint(
        &self,
        id: u64,
        epoch: Epoch,
        forgotten_before_unix_ms: u64,
    ) -> Result<CheckpointStart, LogError> {
        let position = self.append(&CoordinatorRecord::CheckpointBegin {
            id,
            epoch,
            forgotten_before_unix_ms,
        })?;
        Ok(CheckpointStart { id, position })
    }

    /// The largest encoded record the log takes.
    fn max_record_bytes(&self) -> usize;

    /// Appends the snapshot taken at `start` (the records that rebuild every transaction) and
    /// the closing record; returns the closing record's position (not yet forced).
    fn write_checkpoint(
        &self,
        start: CheckpointStart,
        entries: Vec<CoordinatorRecord>,
    ) -> Result<LogPosition, LogError> {
        // Whole records per chunk, each chunk well within one log record (a transaction's
        // records are far smaller than half of one).
        let limit = self.max_record_bytes() / 2;
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for record in entries {
            let size = record.encode().len();
            if bytes + size > limit && !chunk.is_empty() {
                self.append(&CoordinatorRecord::CheckpointEntries(std::mem::take(&mut chunk)))?;
                bytes = 0;
            }
            bytes += size;
            chunk.push(record);
        }
        if !chunk.is_empty() {
            self.append(&CoordinatorRecord::CheckpointEntries(chunk))?;
        }
        self.append(&CoordinatorRecord::CheckpointEnd { id: start.id })
    }

    /// Releases storage for the records before `position`, the opening of a checkpoint whose
    /// closing record is durable. Records at or after it are always kept.
    fn truncate_before(&self, position: LogPosition) -> Result<(), LogError>;
}

/// A decision log kept in a write-ahead log: [`concord_wal::FileWal`] on one machine,
/// [`concord_wal::MemoryWal`] under simulation.
pub struct WalLog<W: Wal> {
    wal: W,
    /// The largest payload `wal` was opened to take.
    max_record_bytes: usize,
}

impl<W: Wal> WalLog<W> {
    /// The decision log in `wal`, which takes records up to `max_record_bytes`.
    pub fn new(wal: W, max_record_bytes: usize) -> WalLog<W> {
        WalLog { wal, max_record_bytes }
    }

    /// The write-ahead log underneath (for tests and tools).
    pub fn wal(&self) -> &W {
        &self.wal
    }

    /// Gives the write-ahead log back (to close it, or to crash it in a test).
    pub fn into_inner(self) -> W {
        self.wal
    }
}

fn log_error(error: WalError) -> LogError {
    match error {
        WalError::RecordTooLarge { len, .. } => LogError::TooLarge { bytes: len },
        WalError::Corrupt { .. } => LogError::Corrupt(error.to_string()),
        other => LogError::Failed(other.to_string()),
    }
}

impl<W: Wal> DecisionLog for WalLog<W> {
    fn append(&self, record: &CoordinatorRecord) -> Result<LogPosition, LogError> {
        self.wal.append(&record.encode()).map(|lsn| LogPosition(lsn.0)).map_err(log_error)
    }

    fn force(&self, position: LogPosition) -> impl Future<Output = Result<(), LogError>> + Send {
        let waited = self.wal.wait_durable(Lsn(position.0));
        async move { waited.await.map_err(log_error) }
    }

    fn replay(&self) -> Result<ReplayIter<'_>, LogError> {
        let records = self.wal.read_from(Lsn::ZERO).map_err(log_error)?;
        Ok(Box::new(records.map(|record| {
            let record = record.map_err(log_error)?;
            CoordinatorRecord::decode(&record.payload).map_err(|error| {
                LogError::Corrupt(format!("decision log record at LSN {}: {error}", record.lsn))
            })
        })))
    }

    fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    fn truncate_before(&self, position: LogPosition) -> Result<(), LogError> {
        self.wal.truncate_before(Lsn(position.0)).map_err(log_error)
    }
}
