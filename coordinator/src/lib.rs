//! The Concord coordinator: runs two-phase commit (and sagas) across participants with a
//! durable decision log, answers clients and in-doubt participants, and recovers from its log.
//!
//! The protocol itself is pure and lives in `concord_core::coordinator` (one transaction's
//! [`TxnMachine`](concord_core::coordinator::TxnMachine), the log's records, replay and
//! checkpoint records). This crate carries it out. Where things live:
//!
//! - [`config`]: [`CoordinatorConfig`] (validated once) and [`CoordinatorError`].
//! - [`log`]: the [`DecisionLog`] trait, its contract, and [`WalLog`] (the file WAL, or the
//!   in-memory one under simulation).
//! - `coordinator.rs`: the [`Coordinator`]: admission (Submit) under two permit bounds, reads
//!   (GetTransaction, ListTransactions), fencing, ResolveTransaction, checkpoints.
//! - `table.rs`: the transaction table ([`Entry`]) and the one rule for forgetting finished
//!   transactions.
//! - `task.rs`: one task per transaction that owns its machine, dispatches every output in
//!   one place and answers the client.
//! - `delivery.rs`: calls to participants as the protocol reads them, and the one retry helper
//!   behind Commit, Compensate and one-phase probe delivery.
//! - `interactive.rs`: Begin, Enlist, Commit and Rollback of interactive transactions.
//! - `recovery.rs`: [`Coordinator::recover`].
//! - [`link`]: every call to one participant (Prepares and Commits many per message).
//! - [`service`]: the `concord.v1.Coordinator` gRPC service; [`serve`] runs it on a listener
//!   the caller bound, with health and reflection.
//!
//! Submit replies once every participant acknowledged Commit (so clients read their own
//! writes), or, if a participant is slow or down, once the deadline plus one call timeout has
//! passed: then the reply is COMMITTED with state COMMITTING, since the decision is durable and
//! delivery goes on. GetTransaction shows the difference (COMMITTING → COMMITTED).

pub mod config;
mod coordinator;
mod delivery;
mod interactive;
pub mod link;
pub mod log;
mod recovery;
pub mod service;
mod table;
mod task;

use std::sync::Arc;
use std::time::Duration;

use concord_core::limits;
use concord_proto::v1::coordinator_server::CoordinatorServer;
use tokio_stream::Stream;

pub use config::{CLOCK_SKEW_MARGIN_MS, CoordinatorConfig, CoordinatorError};
pub use coordinator::{Coordinator, NewTxn};
pub use log::{DecisionLog, LogError, LogPosition, WalLog};
pub use service::CoordinatorService;
pub use table::{BranchDelivery, Entry};

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The server could not run.
    #[error(transparent)]
    Serve(#[from] concord_proto::net::ServeError),
    /// The decision log failed; the process must restart and recover.
    #[error("decision log failed: {0}")]
    Fatal(String),
}

/// Serves the coordinator API with health and reflection until `shutdown` resolves or the log
/// fails, taking checkpoints alongside. Never binds a socket.
pub async fn serve<L: DecisionLog, IO: concord_proto::net::Connection>(
    incoming: impl Stream<Item = std::io::Result<IO>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
    coordinator: Arc<Coordinator<L>>,
) -> Result<(), ServeError> {
    let service = CoordinatorServer::new(CoordinatorService::new(Arc::clone(&coordinator)))
        .max_decoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES);
    let checkpoints = {
        let coordinator = Arc::clone(&coordinator);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(500));
            loop {
                ticker.tick().await;
                if let Err(error) = coordinator.maybe_checkpoint().await {
                    tracing::error!(%error, "checkpoint failed");
                    return;
                }
            }
        })
    };
    let served = concord_proto::net::serve(service, incoming, shutdown, coordinator.fatal()).await;
    coordinator.stop();
    checkpoints.abort();
    match served? {
        Some(reason) => Err(ServeError::Fatal(reason)),
        None => Ok(()),
    }
}
