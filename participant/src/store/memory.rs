//! [`MemoryStore`]: the store contract in memory, for deterministic simulation.
//!
//! The live state is a `BTreeMap` (so scans come out in key order); a second map holds the state
//! as of the last [`Store::sync`], which is what a disk would keep. [`MemoryStore::crash`] puts
//! the durable state back, dropping every apply since the last sync, as a power cut would.
//! Clones share the same storage, so a simulated process can "restart" on the store its previous
//! incarnation left behind and rebuild the rest by replaying its write-ahead log.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use concord_core::participant::Versioned;
use concord_core::record::Write;

use super::{Store, StoreError};

/// An in-memory store. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    /// Shared by clones: one simulated disk.
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// What reads see: every apply so far.
    live: BTreeMap<Vec<u8>, Versioned>,
    /// The state as of the last sync: what survives a crash.
    durable: BTreeMap<Vec<u8>, Versioned>,
    /// Set by [`MemoryStore::fail_syncs`]: every later sync and apply fails.
    failed: Option<String>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Drops every apply since the last sync, as a power cut would. The store then behaves as if
    /// reopened: reads see the last synced state, and a failure set by
    /// [`MemoryStore::fail_syncs`] is cleared.
    pub fn crash(&self) {
        let mut inner = self.lock();
        inner.live = inner.durable.clone();
        inner.failed = None;
    }

    /// Makes the store fail as a disk would: the next syncs and applies return
    /// [`StoreError::Failed`] until [`MemoryStore::crash`] (a restart) clears it.
    pub fn fail_syncs(&self, reason: &str) {
        self.lock().failed = Some(reason.to_string());
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the state consistent before anything can panic, so a
        // poisoned lock still guards a consistent state.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    fn refuse_if_failed(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(reason) => Err(StoreError::Failed(reason.clone())),
            None => Ok(()),
        }
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        Ok(self.lock().live.get(key).cloned())
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Versioned)>, StoreError> {
        // BTreeMap::range panics on an inverted range; such a range holds nothing.
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let inner = self.lock();
        Ok(inner
            .live
            .range::<[u8], _>((Bound::Included(start), upper))
            .take(limit)
            .map(|(key, versioned)| (key.clone(), versioned.clone()))
            .collect())
    }

    fn apply(&self, writes: &[Write], version: u64) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.refuse_if_failed()?;
        // Under the lock no reader sees a partial apply, and a crash (which takes the same lock)
        // cannot fall between two writes.
        for write in writes {
            match &write.value {
                Some(value) => {
                    inner
                        .live
                        .insert(write.key.clone(), Versioned { version, value: value.clone() });
                }
                None => {
                    inner.live.remove(&write.key);
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.refuse_if_failed()?;
        inner.durable = inner.live.clone();
        Ok(())
    }
}
