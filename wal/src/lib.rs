//! Concord's write-ahead log, shared by the coordinator and the participant.
//!
//! A log is a sequence of records, each an opaque byte payload numbered by a log sequence number
//! ([`Lsn`]): 1 for the first record ever appended, then consecutive. Appending is split in two so
//! that many concurrent appenders share one sync (group commit):
//!
//! 1. [`Wal::append`] buffers the record and returns its LSN at once;
//! 2. [`Wal::wait_durable`] resolves once that record (and every record before it) is durable.
//!
//! [`Wal::append_durable`] does both. Nothing may be acknowledged to anyone before the record
//! behind it is durable (DESIGN.md, rule 1).
//!
//! Two implementations share one contract, checked by one conformance suite
//! (`tests/conformance.rs`):
//! - [`FileWal`]: segmented append-only files, each record framed with its length, LSN and a
//!   CRC32C (see [`format`]); one writer thread writes and `fdatasync`s whatever accumulated while
//!   the previous sync ran. On open a torn tail is truncated, and a bad record followed by valid
//!   ones is reported as corruption naming the file and offset.
//! - [`MemoryWal`]: the same contract in memory, for simulation; [`MemoryWal::crash`] drops every
//!   record that was not yet durable, as a power cut would.
//!
//! A failed sync is fatal: the log refuses every later append and wait (TigerBeetle's rule: never
//! retry an fsync, whose failure may already have dropped dirty pages). The process should stop
//! and recover from the log on restart.

mod error;
mod file;
pub mod format;
mod memory;

use std::future::Future;

pub use error::WalError;
pub use file::{FileWal, FileWalOptions};
pub use memory::MemoryWal;

/// A log sequence number: the position of a record in the log. The first record is `Lsn(1)`;
/// `Lsn::ZERO` means "no record".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// No record: the LSN before the first one.
    pub const ZERO: Lsn = Lsn(0);

    /// The LSN after this one.
    #[must_use]
    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One record read back from a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Where the record sits in the log.
    pub lsn: Lsn,
    /// The bytes given to [`Wal::append`].
    pub payload: Vec<u8>,
}

/// Iterator over durable records, in LSN order.
pub type RecordIter<'a> = Box<dyn Iterator<Item = Result<Record, WalError>> + Send + 'a>;

/// The write-ahead log contract. Every implementation must pass `tests/conformance.rs`.
///
/// - LSNs are assigned by `append` in call order, strictly increasing by one, and never reused,
///   including across reopen (a reopened log continues after its last durable record).
/// - `wait_durable(lsn)` resolves `Ok` only once every record with an LSN `<= lsn` is durable:
///   it survives a crash of the process (and, for [`FileWal`], of the machine).
/// - After a crash, the log holds a prefix of the appended records: every record that was durable
///   and possibly some that were not, never a gap and never a record that was not appended.
/// - Once a sync has failed, every later `append` and `wait_durable` returns
///   [`WalError::Failed`].
pub trait Wal: Send + Sync + 'static {
    /// Buffers `payload` as the next record and returns its LSN. The record is not durable until
    /// [`Wal::wait_durable`] for this LSN (or a later one) resolves.
    ///
    /// Errors: [`WalError::RecordTooLarge`] if the payload exceeds the configured limit (nothing
    /// is appended), [`WalError::Failed`] after a failed sync, [`WalError::Closed`] after close.
    fn append(&self, payload: &[u8]) -> Result<Lsn, WalError>;

    /// Resolves once every record up to and including `lsn` is durable.
    fn wait_durable(&self, lsn: Lsn) -> impl Future<Output = Result<(), WalError>> + Send;

    /// Appends `payload` and waits until it is durable. Concurrent callers share syncs.
    fn append_durable(&self, payload: &[u8]) -> impl Future<Output = Result<Lsn, WalError>> + Send {
        let appended = self.append(payload);
        async move {
            let lsn = appended?;
            self.wait_durable(lsn).await?;
            Ok(lsn)
        }
    }

    /// The highest LSN known to be durable (`Lsn::ZERO` if none).
    fn durable_lsn(&self) -> Lsn;

    /// The highest LSN appended so far, durable or not (`Lsn::ZERO` if none).
    fn last_lsn(&self) -> Lsn;

    /// The lowest LSN still retained: records below it were removed by
    /// [`Wal::truncate_before`]. Equals `last_lsn().next()` when the log holds no record.
    fn first_lsn(&self) -> Lsn;

    /// Iterates over the durable records with LSN `>= from`, in order, as of the call. Starting
    /// below [`Wal::first_lsn`] starts at the first retained record.
    fn read_from(&self, from: Lsn) -> Result<RecordIter<'_>, WalError>;

    /// Releases storage for records below `lsn` (a checkpoint's replay start). Records at or
    /// above `lsn` are always kept; some below it may be kept too (whole segments are removed).
    fn truncate_before(&self, lsn: Lsn) -> Result<(), WalError>;
}
