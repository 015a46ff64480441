//! The participant's committed state: a small storage trait and its two implementations.
//!
//! The participant's write-ahead log is the durability truth (DESIGN.md, "Storage"): a branch's
//! writes are applied to the store only after the record that commits them is durable, and
//! recovery replays the log past the last checkpoint, re-applying committed writes. The store
//! therefore needs little: atomic, idempotent [`Store::apply`] of one branch's writes, reads of
//! committed values with their versions, and [`Store::sync`] for checkpoints, after which the log
//! records below the checkpoint may be released.
//!
//! Two implementations share one contract, checked by one conformance suite
//! (`tests/store_conformance.rs`):
//! - [`SledStore`]: sled on disk, the production store; [`Store::sync`] fsyncs sled's files
//!   itself because sled 0.34's flush never does.
//! - [`MemoryStore`]: the same contract in memory, for simulation; [`MemoryStore::crash`] drops
//!   every apply since the last sync, as a power cut would.
//!
//! [`StoreState`] lets the protocol engine read any store as its
//! [`CommittedState`](concord_core::participant::CommittedState).
//!
//! Every [`StoreError`] is fatal to the caller: the participant stops and recovers from its log
//! on restart. A store never retries a failed sync (its failure may already have dropped data).

mod memory;
mod sled_store;

pub use memory::MemoryStore;
pub use sled_store::SledStore;

use concord_core::participant::{CommittedState, Versioned};
use concord_core::record::Write;

/// Why a store operation failed. Always fatal to the caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend (sled, the file system) failed, or the store could not be opened.
    #[error("store error: {context}: {message}")]
    Backend {
        /// What the store was doing, naming the directory or file involved.
        context: String,
        /// The backend's error, and for a store that failed to open, the way back.
        message: String,
    },
    /// A stored value cannot be decoded: the store's files are damaged.
    #[error("corrupt store: {detail}")]
    Corrupt {
        /// Which key, and what is wrong with its value.
        detail: String,
    },
    /// An earlier sync failed; the store refuses all further work until the process restarts
    /// and recovers from its write-ahead log.
    #[error("store failed earlier and refuses further work: {0}")]
    Failed(String),
}

impl StoreError {
    /// A [`StoreError::Backend`] from any displayable backend error.
    pub(crate) fn backend(context: impl Into<String>, error: &dyn std::fmt::Display) -> Self {
        StoreError::Backend { context: context.into(), message: error.to_string() }
    }
}

/// The participant's committed key-value state. The engine reads it to evaluate Prepare; the
/// driver applies each committed branch's writes to it; checkpoints sync it.
///
/// Contract, shared by every implementation and checked by the conformance suite:
/// - a key's version is the LSN of the log record that committed its current value;
/// - [`Store::apply`] is atomic, also across a crash of the store, and idempotent;
/// - only [`Store::sync`] promises durability: a crash may drop any apply since the last sync,
///   which recovery restores by replaying the write-ahead log.
pub trait Store: Send + Sync + 'static {
    /// Committed value and version of a key.
    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError>;

    /// Committed entries with `start <= key < end` (`end` `None` = unbounded), in key order, at
    /// most `limit`. Listings and backups read the store through it.
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Versioned)>, StoreError>;

    /// Applies a branch's writes atomically (all or nothing, also across a crash of the store),
    /// every written key taking `version`. `Write { key, value: None }` deletes. If a key
    /// appears more than once, its last write wins.
    ///
    /// Idempotent: applying the same `(writes, version)` twice gives the same state. Recovery
    /// replays in LSN order, so re-applying older versions then newer ones ends at the newest
    /// state; apply therefore overwrites whatever is stored, whatever its version.
    fn apply(&self, writes: &[Write], version: u64) -> Result<(), StoreError>;

    /// Applies several commits, `(writes, version)` in LSN order, each atomically as
    /// [`Store::apply`] would (a store may apply them all as one atomic unit). The applier
    /// hands over every commit that became durable together, so a store pays its per-apply
    /// cost once per batch.
    fn apply_all(&self, commits: &[(&[Write], u64)]) -> Result<(), StoreError> {
        for (writes, version) in commits {
            self.apply(writes, *version)?;
        }
        Ok(())
    }

    /// Makes everything applied so far durable. Checkpoints call it before recording their log
    /// position, so that the log records below it may be released. A failed sync is never
    /// retried: the store refuses all later work.
    fn sync(&self) -> Result<(), StoreError>;
}

/// Any [`Store`] as the engine's [`CommittedState`].
///
/// A blanket `impl<S: Store> CommittedState for S` is not allowed here (`CommittedState` is
/// defined in `concord-core`), and implementing it on each store would make `store.get(..)`
/// ambiguous wherever both traits are in scope; this borrowed wrapper avoids both.
#[derive(Debug)]
pub struct StoreState<'a, S: ?Sized>(pub &'a S);

impl<S: ?Sized> Clone for StoreState<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: ?Sized> Copy for StoreState<'_, S> {}

impl<S: Store + ?Sized> CommittedState for StoreState<'_, S> {
    type Error = StoreError;

    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StoreError> {
        self.0.get(key)
    }
}

/// A key as it appears in error messages: printable ASCII as is, other bytes escaped, long keys
/// cut short.
pub(crate) fn show_key(key: &[u8]) -> String {
    const SHOWN_BYTES: usize = 64;
    let shown = key.get(..SHOWN_BYTES).unwrap_or(key);
    let mut text = shown.escape_ascii().to_string();
    if key.len() > SHOWN_BYTES {
        text.push_str(&format!("... ({} bytes)", key.len()));
    }
    text
}
