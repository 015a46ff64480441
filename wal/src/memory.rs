//! [`MemoryWal`]: the write-ahead log contract in memory, for deterministic simulation.
//!
//! Records live in a vector; a prefix of it is durable. [`Wal::wait_durable`] performs the
//! "sync" inline, making every record appended so far durable, which is group commit in its
//! simplest form. [`MemoryWal::crash`] drops what is not durable, as a power cut drops what the
//! disk never received. Clones share the same storage, so a simulated process can "restart" on
//! the log its previous incarnation left behind.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Lsn, Record, RecordIter, Wal, WalError};

/// An in-memory write-ahead log. See the module documentation.
#[derive(Clone)]
pub struct MemoryWal {
    inner: Arc<Mutex<Inner>>,
    max_record_bytes: usize,
}

struct Inner {
    /// Retained records, in LSN order, consecutive.
    records: Vec<Record>,
    /// The LSN of `records[0]` (or the next LSN when empty).
    first_lsn: Lsn,
    /// Every record up to here is durable.
    durable: Lsn,
    /// Set by [`MemoryWal::fail_syncs`]: every later sync and append fails.
    failed: Option<String>,
}

impl MemoryWal {
    /// An empty log accepting payloads up to `max_record_bytes`.
    #[must_use]
    pub fn new(max_record_bytes: usize) -> MemoryWal {
        MemoryWal {
            inner: Arc::new(Mutex::new(Inner {
                records: Vec::new(),
                first_lsn: Lsn(1),
                durable: Lsn::ZERO,
                failed: None,
            })),
            max_record_bytes,
        }
    }

    /// Drops every record that is not durable. The log then behaves as if reopened: LSNs
    /// continue after the last durable record.
    pub fn crash(&self) {
        let mut inner = self.lock();
        let keep = inner.durable.0.saturating_sub(inner.first_lsn.0 - 1);
        let keep = usize::try_from(keep).unwrap_or(usize::MAX).min(inner.records.len());
        inner.records.truncate(keep);
        inner.failed = None;
    }

    /// Makes the log fail as a disk would: the next syncs and appends return
    /// [`WalError::Failed`] until [`MemoryWal::crash`] (a restart) clears it.
    pub fn fail_syncs(&self, reason: &str) {
        self.lock().failed = Some(reason.to_string());
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the state consistent before anything can panic.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    fn last_lsn(&self) -> Lsn {
        Lsn(self.first_lsn.0 + self.records.len() as u64 - 1)
    }
}

impl Wal for MemoryWal {
    fn append(&self, payload: &[u8]) -> Result<Lsn, WalError> {
        if payload.len() > self.max_record_bytes {
            return Err(WalError::RecordTooLarge {
                len: payload.len(),
                max: self.max_record_bytes,
            });
        }
        let mut inner = self.lock();
        if let Some(reason) = &inner.failed {
            return Err(WalError::Failed(reason.clone()));
        }
        let lsn = inner.last_lsn().next();
        inner.records.push(Record { lsn, payload: payload.to_vec() });
        Ok(lsn)
    }

    fn wait_durable(&self, lsn: Lsn) -> impl Future<Output = Result<(), WalError>> + Send {
        let result = {
            let mut inner = self.lock();
            assert!(lsn <= inner.last_lsn(), "waiting for LSN {lsn}, which was never appended");
            match &inner.failed {
                Some(reason) => Err(WalError::Failed(reason.clone())),
                None => {
                    inner.durable = inner.durable.max(inner.last_lsn());
                    Ok(())
                }
            }
        };
        std::future::ready(result)
    }

    fn durable_lsn(&self) -> Lsn {
        self.lock().durable
    }

    fn last_lsn(&self) -> Lsn {
        self.lock().last_lsn()
    }

    fn first_lsn(&self) -> Lsn {
        self.lock().first_lsn
    }

    fn read_from(&self, from: Lsn) -> Result<RecordIter<'_>, WalError> {
        let inner = self.lock();
        let records: Vec<Record> = inner
            .records
            .iter()
            .filter(|r| r.lsn >= from && r.lsn <= inner.durable)
            .cloned()
            .collect();
        Ok(Box::new(records.into_iter().map(Ok)))
    }

    fn truncate_before(&self, lsn: Lsn) -> Result<(), WalError> {
        let mut inner = self.lock();
        // Only durable records can lie below a checkpoint.
        let lsn = lsn.min(inner.durable.next());
        let drop_count = lsn.0.saturating_sub(inner.first_lsn.0);
        let drop_count = usize::try_from(drop_count).unwrap_or(usize::MAX).min(inner.records.len());
        inner.records.drain(..drop_count);
        inner.first_lsn = Lsn(inner.first_lsn.0 + drop_count as u64);
        Ok(())
    }
}
