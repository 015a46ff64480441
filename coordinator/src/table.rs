//! The transaction table: every transaction this coordinator knows, as clients and operators
//! see it (GetTransaction, ListTransactions, idempotent Submit, ResolveTransaction), and the one
//! rule for forgetting finished ones.
//!
//! A running transaction's task owns its state machine and publishes a copy here after every
//! step; nothing reads the table to decide. The table is behind a `std::sync::Mutex` that is
//! never held across an await.

use std::collections::{BTreeMap, VecDeque};

use concord_core::coordinator::{Phase, TxnMachine};
use concord_core::types::{Epoch, Outcome, TxnId};

use crate::config::CLOCK_SKEW_MARGIN_MS;
use crate::log::LogPosition;

/// Per branch: how its phase-2 delivery (Commit, Compensate, a one-phase probe) is going.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BranchDelivery {
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The last delivery error (empty: none).
    pub last_error: String,
}

/// One transaction in the table.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Participant names, in branch order.
    pub participants: Vec<String>,
    /// Phase and branch states (a copy of the running task's machine).
    pub machine: TxnMachine,
    /// Per branch, in branch order.
    pub delivery: Vec<BranchDelivery>,
    /// The epoch that ran it.
    pub epoch: Epoch,
    /// Wall-clock times (0 when unknown).
    pub created_unix_ms: u64,
    /// When decided.
    pub decided_unix_ms: u64,
    /// When finished (every Commit acknowledged, or aborted).
    pub finished_unix_ms: u64,
    /// The Prepare deadline sent to participants (0 when unknown), sent again with Aborts.
    pub deadline_unix_ms: u64,
    /// The position of the abort record, which must be durable before anyone is told ABORTED.
    pub(crate) abort_position: Option<LogPosition>,
    /// A saga step's Compensate failed `attention_after_attempts` times and still fails: an
    /// operator should look (NEEDS_ATTENTION). Cleared once it succeeds.
    pub needs_attention: bool,
    /// An interactive transaction still open (begun, staging, not committed): a view of it,
    /// not an entry of the table.
    pub open: bool,
    /// Counted among the finished (at most once), so eviction can forget it.
    retired: bool,
}

impl Entry {
    /// A new entry for a transaction over `participants`.
    pub(crate) fn new(participants: Vec<String>, machine: TxnMachine, epoch: Epoch) -> Entry {
        let n = participants.len();
        Entry {
            participants,
            machine,
            delivery: vec![BranchDelivery::default(); n],
            epoch,
            created_unix_ms: 0,
            decided_unix_ms: 0,
            finished_unix_ms: 0,
            deadline_unix_ms: 0,
            abort_position: None,
            needs_attention: false,
            open: false,
            retired: false,
        }
    }

    /// The outcome as clients see it: COMMITTED once the decision is durable.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        match self.machine.phase() {
            Phase::Preparing | Phase::Executing | Phase::Deciding => Outcome::Pending,
            Phase::Committing | Phase::Committed => Outcome::Committed,
            Phase::Compensating(_) | Phase::Aborted(_) => Outcome::Aborted,
        }
    }

    /// Whether nothing more will happen to it.
    #[must_use]
    pub fn finished(&self) -> bool {
        matches!(self.machine.phase(), Phase::Committed | Phase::Aborted(_))
    }
}

/// The transactions a coordinator knows.
#[derive(Debug)]
pub(crate) struct Table {
    /// Every known transaction, by id.
    pub(crate) entries: BTreeMap<TxnId, Entry>,
    /// Finished transactions, oldest first, for eviction.
    finished: VecDeque<TxnId>,
    /// Finished transactions remembered, at most.
    max_retained: usize,
    /// Every finished transaction evicted so far was created at or before this time (or, if its
    /// creation time is unknown, finished by then). An unknown id first submitted at or before
    /// it may be one of them. Persisted in checkpoints.
    forgotten_before_unix_ms: u64,
    /// When this table last warned that it forgets transactions young enough to matter.
    last_warned_unix_ms: u64,
}

impl Table {
    /// An empty table remembering at most `max_retained` finished transactions, that has
    /// already forgotten everything created up to `forgotten_before_unix_ms`.
    pub(crate) fn new(max_retained: usize, forgotten_before_unix_ms: u64) -> Table {
        Table {
            entries: BTreeMap::new(),
            finished: VecDeque::new(),
            max_retained,
            forgotten_before_unix_ms,
            last_warned_unix_ms: 0,
        }
    }

    /// The forgotten horizon (see the field).
    pub(crate) fn forgotten_before_unix_ms(&self) -> u64 {
        self.forgotten_before_unix_ms
    }

    /// The one rule for unknown ids: an id first submitted at `submitted_unix_ms` (0: when is
    /// unknown) may be a finished transaction this coordinator has forgotten, so it may be
    /// neither run again nor fenced. Nothing is forgotten until something was evicted.
    pub(crate) fn may_be_forgotten(&self, submitted_unix_ms: u64) -> bool {
        let horizon = self.forgotten_before_unix_ms;
        horizon > 0 && submitted_unix_ms <= horizon.saturating_add(CLOCK_SKEW_MARGIN_MS)
    }

    /// Marks a finished transaction as such (once; later calls do nothing) and evicts the
    /// oldest finished ones past the retention, moving the forgotten horizon.
    pub(crate) fn retire(&mut self, txn: &TxnId, now_unix_ms: u64) {
        let Some(entry) = self.entries.get_mut(txn) else { return };
        debug_assert!(entry.finished(), "only a finished transaction retires");
        if entry.retired {
            return;
        }
        entry.retired = true;
        if entry.finished_unix_ms == 0 {
            entry.finished_unix_ms = now_unix_ms;
        }
        self.finished.push_back(txn.clone());
        while self.finished.len() > self.max_retained {
            let Some(old) = self.finished.pop_front() else { break };
            let Some(evicted) = self.entries.remove(&old) else { continue };
            // A fenced id has no creation time: the fence (its finish) bounds when it was first
            // submitted. So does recovery, which finishes what it replays.
            let created = match (evicted.created_unix_ms, evicted.finished_unix_ms) {
                (0, 0) => now_unix_ms,
                (0, finished) => finished,
                (created, _) => created,
            };
            self.forgotten_before_unix_ms = self.forgotten_before_unix_ms.max(created);
            self.warn_if_forgetting_young(now_unix_ms);
        }
    }

    /// At most every ten seconds: transactions are being forgotten so young that new ids close
    /// to them are refused as possibly forgotten.
    fn warn_if_forgetting_young(&mut self, now_unix_ms: u64) {
        let age_ms = now_unix_ms.saturating_sub(self.forgotten_before_unix_ms);
        if age_ms < 10 * CLOCK_SKEW_MARGIN_MS
            && now_unix_ms >= self.last_warned_unix_ms.saturating_add(10_000)
        {
            self.last_warned_unix_ms = now_unix_ms;
            tracing::warn!(
                age_ms,
                retained = self.max_retained,
                "forgetting transactions only {age_ms} ms old: new ids submitted within \
                 {CLOCK_SKEW_MARGIN_MS} ms of them are refused; raise --retain"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::coordinator::AbortCause;

    fn id(s: &str) -> TxnId {
        TxnId::parse(s, "txn_id").unwrap()
    }

    fn finished_entry(created_unix_ms: u64) -> Entry {
        let machine = TxnMachine::finished(1, Phase::Aborted(AbortCause::Deadline));
        let mut entry = Entry::new(vec!["a".into()], machine, Epoch(1));
        entry.created_unix_ms = created_unix_ms;
        entry
    }

    /// Retiring an entry twice counts it once: it is not evicted early, and the horizon moves
    /// only past what was really forgotten.
    #[test]
    fn retiring_twice_counts_once() {
        let mut table = Table::new(2, 0);
        for (name, created) in [("a", 10), ("b", 20)] {
            table.entries.insert(id(name), finished_entry(created));
            table.retire(&id(name), 100);
            table.retire(&id(name), 100);
        }
        assert_eq!(table.entries.len(), 2, "nothing past the retention of 2");
        assert_eq!(table.forgotten_before_unix_ms(), 0);
        table.entries.insert(id("c"), finished_entry(30));
        table.retire(&id("c"), 100);
        assert!(!table.entries.contains_key(&id("a")), "the oldest is forgotten first");
        assert_eq!(table.forgotten_before_unix_ms(), 10);
    }

    /// Nothing is "maybe forgotten" before anything was evicted; after, an id submitted up to
    /// the horizon (plus the clock-skew margin), or at an unknown time, is.
    #[test]
    fn the_forgotten_rule_follows_the_horizon() {
        let table = Table::new(1, 0);
        assert!(!table.may_be_forgotten(0));
        assert!(!table.may_be_forgotten(5));
        let table = Table::new(1, 5_000);
        assert!(table.may_be_forgotten(0), "an unknown submission time may be anything");
        assert!(table.may_be_forgotten(5_000 + CLOCK_SKEW_MARGIN_MS));
        assert!(!table.may_be_forgotten(5_001 + CLOCK_SKEW_MARGIN_MS));
    }
}
