//! Starting a coordinator: replay the decision log (the fold and what to do with each
//! transaction are pure, in `concord_core::coordinator::replay`), force a new epoch, and carry
//! out what recovery decided — re-drive every durable COMMIT without END, probe undecided
//! one-phase branches, presume every other undecided transaction aborted (telling its
//! participants), and resume unfinished compensations.

use std::collections::BTreeMap;
use std::sync::Arc;

use concord_core::coordinator::CoordinatorRecord;
use concord_core::coordinator::replay::{Recovered, Replay, ReplayedState, Settle};
use concord_core::limits::MAX_GRPC_MESSAGE_BYTES;
use concord_core::types::Epoch;
use concord_proto::v1::participant_client::ParticipantClient;

use crate::config::{CoordinatorConfig, CoordinatorError};
use crate::coordinator::Coordinator;
use crate::link::Link;
use crate::log::DecisionLog;
use crate::table::Entry;
use crate::task::TxnTask;

impl<L: DecisionLog> Coordinator<L> {
    /// Replays the decision log, starts a new epoch (forced), aborts every transaction that was
    /// undecided, and re-drives every durable COMMIT without END. Call inside a tokio runtime,
    /// before serving.
    pub async fn recover(config: CoordinatorConfig, log: L) -> Result<Arc<Self>, CoordinatorError> {
        config.validate()?;
        let mut links = BTreeMap::new();
        for (name, address) in &config.participants {
            let channel = config.dialer.dial(address, config.call_timeout).map_err(|e| {
                CoordinatorError::Fatal(format!("participant {name} at {address}: {e}"))
            })?;
            let client = ParticipantClient::new(channel)
                .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
            links.insert(name.clone(), Link::new(client, config.call_timeout, config.batch_calls));
        }
        let mut replay = Replay::default();
        let mut records = 0u64;
        let replayed = log.replay().map_err(|e| CoordinatorError::Fatal(e.to_string()))?;
        for record in replayed {
            replay.apply(record.map_err(|e| CoordinatorError::Fatal(e.to_string()))?);
            records += 1;
        }
        let replayed = replay.finish();
        let epoch = Epoch(replayed.max_epoch.0 + 1);
        Self::force_epoch(&log, epoch).await?;
        let coordinator = Arc::new(Coordinator::new(
            config,
            epoch,
            log,
            links,
            replayed.forgotten_before_unix_ms,
            records,
        ));
        tokio::spawn(Arc::clone(&coordinator).run_abandon_sweeper());

        let (mut resumed, mut aborted, mut probed) = (0u64, 0u64, 0u64);
        // Oldest first, so the finished ones are forgotten in the order they happened (the
        // horizon then moves as it did before the restart, not to whatever the map yields).
        for (txn, replayed) in replayed.txns {
            let Recovered { machine, outputs, log_abort, settle } = replayed.recover();
            match (&replayed.state, &log_abort, settle) {
                (ReplayedState::Committing { .. }, _, _) => resumed += 1,
                (_, Some(_), _) => aborted += 1,
                (_, None, Settle::InProgress | Settle::CompensationDone) if replayed.is_saga() => {
                    aborted += 1;
                }
                (_, None, Settle::InProgress) => probed += 1,
                (_, None, _) => {}
            }
            // Recovered entries keep epoch 0: the epoch that ran them is not logged.
            let mut entry = Entry::new(replayed.participants.clone(), machine, Epoch(0));
            entry.created_unix_ms = replayed.created_unix_ms;
            entry.decided_unix_ms = replayed.decided_unix_ms;
            entry.deadline_unix_ms = replayed.deadline_unix_ms;
            if let Some(cause) = log_abort {
                entry.abort_position = Some(
                    coordinator.append(&CoordinatorRecord::Aborted { txn: txn.clone(), cause })?,
                );
            }
            coordinator.table().entries.insert(txn.clone(), entry.clone());
            let unfinished = match settle {
                Settle::Finished => {
                    coordinator.retire(&txn);
                    None
                }
                Settle::CompensationDone => {
                    coordinator.compensation_done(&txn)?;
                    None
                }
                // Over the bound only if the bound was lowered across the restart: then Submit
                // is refused until enough of these finish.
                Settle::InProgress => Arc::clone(&coordinator.unfinished).try_acquire_owned().ok(),
            };
            if !outputs.is_empty() {
                TxnTask::recovered(Arc::clone(&coordinator), txn, &entry, unfinished)
                    .spawn(outputs);
            }
        }
        tracing::info!(epoch = epoch.0, records, resumed, aborted, probed, "coordinator recovered");
        Ok(coordinator)
    }
}
