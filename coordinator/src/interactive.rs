//! Interactive transactions: Begin opens one (in memory only), participants Enlist as their
//! services stage writes there, and Commit runs two-phase commit over what was staged (a
//! Submit whose Prepares say `staged`); Rollback, or the deadline passing with the client gone,
//! aborts it and tells the enlisted participants, which drop what they staged.

use std::sync::Arc;
use std::time::Duration;

use concord_core::coordinator::{
    AbortCause, CoordinatorRecord, Output, Phase, TxnMachine, TxnMode,
};
use concord_core::limits::MAX_BRANCHES_PER_TXN;
use concord_core::types::{Epoch, Outcome, TxnId};

use crate::config::CoordinatorError;
use crate::coordinator::{Coordinator, NewTxn};
use crate::log::DecisionLog;
use crate::table::Entry;
use crate::task::TxnTask;

/// An interactive transaction begun and not yet committed or rolled back.
#[derive(Clone, Debug)]
pub(crate) struct Active {
    /// Participants enlisted so far, in enlistment order.
    participants: Vec<String>,
    created_unix_ms: u64,
    deadline_unix_ms: u64,
}

impl Active {
    /// How GetTransaction and ListTransactions show it (state OPEN).
    pub(crate) fn view(&self, epoch: Epoch) -> Entry {
        let machine = TxnMachine::finished(self.participants.len(), Phase::Preparing);
        let mut entry = Entry::new(self.participants.clone(), machine, epoch);
        entry.created_unix_ms = self.created_unix_ms;
        entry.deadline_unix_ms = self.deadline_unix_ms;
        entry.open = true;
        entry
    }
}

impl<L: DecisionLog> Coordinator<L> {
    /// Begins an interactive transaction open for `timeout`; returns its deadline. Idempotent
    /// while it is open.
    pub fn begin(&self, txn: &TxnId, timeout: Duration) -> Result<u64, CoordinatorError> {
        self.refuse_if_failed()?;
        if self.table().entries.contains_key(txn) {
            return Err(CoordinatorError::WrongState(format!(
                "txn_id: {txn} is already known here (submitted or committed): begin a new id"
            )));
        }
        let mut active = self.active();
        if let Some(open) = active.get(txn) {
            return Ok(open.deadline_unix_ms);
        }
        if active.len() >= self.config.max_inflight {
            return Err(CoordinatorError::Overloaded(format!(
                "{} interactive transactions are open, the limit",
                active.len()
            )));
        }
        let now = self.now_ms();
        let deadline_unix_ms =
            now.saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let open = Active { participants: Vec::new(), created_unix_ms: now, deadline_unix_ms };
        active.insert(txn.clone(), open);
        tracing::debug!(txn_id = %txn, deadline_unix_ms, "interactive transaction begun");
        Ok(deadline_unix_ms)
    }

    /// Enlists `participant` (a configured name) in an open interactive transaction; returns
    /// its deadline.
    pub fn enlist(&self, txn: &TxnId, participant: &str) -> Result<u64, CoordinatorError> {
        self.refuse_if_failed()?;
        let mut active = self.active();
        let Some(open) = active.get_mut(txn) else {
            drop(active);
            return Err(match self.table().entries.get(txn) {
                Some(_) => CoordinatorError::WrongState(format!(
                    "transaction {txn} is committing or finished: nothing more can be staged"
                )),
                None => CoordinatorError::NotFound(format!(
                    "no open transaction {txn}: never begun, past its deadline, or begun before \
                     this coordinator restarted"
                )),
            });
        };
        if !open.participants.iter().any(|p| p == participant) {
            if open.participants.len() >= MAX_BRANCHES_PER_TXN {
                return Err(CoordinatorError::Overloaded(format!(
                    "transaction {txn} has {} participants, the limit",
                    open.participants.len()
                )));
            }
            open.participants.push(participant.to_string());
        }
        Ok(open.deadline_unix_ms)
    }

    /// Commits an interactive transaction: two-phase commit over every enlisted participant's
    /// staged operations. A repeated Commit answers with the outcome; an id not open here is
    /// fenced and answered ABORTED (nothing of it can commit).
    pub async fn commit_interactive(
        self: &Arc<Self>,
        txn: &TxnId,
    ) -> Result<Entry, CoordinatorError> {
        self.refuse_if_failed()?;
        let Some(open) = self.active().remove(txn) else {
            return self.fence_unknown(txn, None).await;
        };
        if open.participants.is_empty() {
            // Nothing was staged anywhere: there is nothing to commit, and nothing to log.
            let mut entry =
                Entry::new(Vec::new(), TxnMachine::finished(0, Phase::Committed), self.epoch);
            entry.created_unix_ms = open.created_unix_ms;
            entry.deadline_unix_ms = open.deadline_unix_ms;
            self.table().entries.insert(txn.clone(), entry.clone());
            self.retire(txn);
            return Ok(self.get(txn).unwrap_or(entry));
        }
        let remaining_ms = open.deadline_unix_ms.saturating_sub(self.now_ms()).max(1);
        let n = open.participants.len();
        self.submit(NewTxn {
            txn: txn.clone(),
            participants: open.participants,
            operations: vec![Vec::new(); n],
            timeout: Duration::from_millis(remaining_ms),
            first_submitted_unix_ms: 0,
            mode: TxnMode::TwoPhase,
            depends_on: None,
            staged: true,
        })
        .await
    }

    /// Rolls an open interactive transaction back (or answers for one already aborted).
    pub async fn rollback(self: &Arc<Self>, txn: &TxnId) -> Result<Entry, CoordinatorError> {
        self.refuse_if_failed()?;
        let open = self.active().remove(txn);
        let known = self.table().entries.get(txn).map(Entry::outcome);
        match (open, known) {
            (Some(open), _) => self.abort_open(txn, open, AbortCause::ClientRollback).await,
            (None, Some(Outcome::Aborted)) => self.get_durable(txn).await?.ok_or_else(|| {
                CoordinatorError::NotFound(format!("transaction {txn} was forgotten meanwhile"))
            }),
            (None, Some(_)) => Err(CoordinatorError::WrongState(format!(
                "transaction {txn} is already committing or committed: it cannot be rolled back"
            ))),
            (None, None) => self.fence_unknown(txn, None).await,
        }
    }

    /// Records an open interactive transaction as aborted and tells its participants, which
    /// drop what they staged.
    async fn abort_open(
        self: &Arc<Self>,
        txn: &TxnId,
        open: Active,
        cause: AbortCause,
    ) -> Result<Entry, CoordinatorError> {
        let n = open.participants.len();
        let started = CoordinatorRecord::Started {
            txn: txn.clone(),
            participants: open.participants.clone(),
            created_unix_ms: open.created_unix_ms,
            deadline_unix_ms: open.deadline_unix_ms,
        };
        self.append(&started)?;
        let position =
            self.append(&CoordinatorRecord::Aborted { txn: txn.clone(), cause: cause.clone() })?;
        let mut entry = Entry::new(
            open.participants,
            TxnMachine::finished(n, Phase::Aborted(cause.clone())),
            self.epoch,
        );
        entry.created_unix_ms = open.created_unix_ms;
        entry.deadline_unix_ms = open.deadline_unix_ms;
        entry.decided_unix_ms = self.now_ms();
        entry.abort_position = Some(position);
        self.table().entries.insert(txn.clone(), entry.clone());
        self.retire(txn);
        tracing::info!(txn_id = %txn, ?cause, "interactive transaction aborted");
        let aborts = (0..n).map(|branch| Output::SendAbort { branch }).collect();
        TxnTask::recovered(Arc::clone(self), txn.clone(), &entry, None).spawn(aborts);
        self.force_position(position).await?;
        Ok(self.get(txn).unwrap_or(entry))
    }

    /// Aborts interactive transactions left open past their deadline (abandoned by their
    /// client), every 100 ms, until the coordinator stops.
    pub(crate) async fn run_abandon_sweeper(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            let now = self.now_ms();
            let expired: Vec<(TxnId, Active)> = {
                let mut active = self.active();
                let ids: Vec<TxnId> = active
                    .iter()
                    .filter(|(_, open)| open.deadline_unix_ms < now)
                    .map(|(txn, _)| txn.clone())
                    .collect();
                ids.into_iter()
                    .filter_map(|txn| active.remove(&txn).map(|open| (txn, open)))
                    .collect()
            };
            for (txn, open) in expired {
                if self.abort_open(&txn, open, AbortCause::Deadline).await.is_err() {
                    return; // the decision log failed; the coordinator stops
                }
            }
        }
    }
}
