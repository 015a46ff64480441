//! The Concord coordinator: runs two-phase commit across participants with a durable decision
//! log, answers clients and in-doubt participants, and recovers from its log.
//!
//! - [`driver`]: the transaction table, the per-transaction tasks that carry out
//!   `concord_core::coordinator::TxnMachine` outputs, Commit delivery and recovery.
//! - [`link`]: Prepares and Commits to one participant, many per message.
//! - [`service`]: the `concord.v1.Coordinator` gRPC service.
//! - [`serve`]: runs it on a listener the caller bound, with health and reflection.
//!
//! Submit replies once every participant acknowledged Commit (so clients read their own
//! writes), or, if a participant is slow or down, once the deadline plus one call timeout has
//! passed: then the reply is COMMITTED with state COMMITTING, since the decision is durable and
//! delivery goes on. GetTransaction shows the difference (COMMITTING → COMMITTED).

pub mod driver;
pub mod link;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use concord_core::limits;
use concord_proto::v1::coordinator_server::CoordinatorServer;
use concord_wal::Wal;
use tokio_stream::Stream;

pub use driver::{Coordinator, CoordinatorConfig, CoordinatorError};
pub use service::CoordinatorService;

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
pub async fn serve<W: Wal, IO: concord_proto::net::Connection>(
    incoming: impl Stream<Item = std::io::Result<IO>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
    coordinator: Arc<Coordinator<W>>,
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
