//! The Concord participant: a sidecar that guards a local store with two-phase commit.
//!
//! - [`store`]: the storage trait, with sled and in-memory implementations.
//! - [`node`]: the driver that runs the protocol engine over a write-ahead log and a store,
//!   recovers from the log, applies commits and takes checkpoints.
//! - [`service`]: the `concord.v1.Participant` gRPC service.
//! - [`resolver`]: the termination protocol for in-doubt branches.
//! - [`sdk`]: the participant SDK, for services that implement the participant API over
//!   their own side effects (execute/compensate, optionally prepare/commit/abort).
//! - [`serve`]: runs all of it on a listener the caller bound, until shutdown.
//!
//! DESIGN.md "Protocol rules" and "Storage" are the specification; docs/operations.md says how
//! to run and operate it.

pub mod node;
pub mod resolver;
pub mod sdk;
pub mod service;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use concord_core::limits;
use concord_proto::v1::participant_server::ParticipantServer;
use concord_wal::Wal;
use tokio_stream::Stream;

pub use node::{Node, NodeConfig, NodeError};
pub use resolver::ResolverConfig;
pub use service::ParticipantService;
pub use store::{MemoryStore, SledStore, Store};

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The server could not run.
    #[error(transparent)]
    Serve(#[from] concord_proto::net::ServeError),
    /// Storage failed; the process must restart and recover.
    #[error("storage failed: {0}")]
    Fatal(String),
}

/// How often the checkpoint policy is evaluated.
const CHECKPOINT_TICK: Duration = Duration::from_millis(500);

/// Serves the participant API (with gRPC health and reflection) on `incoming` until `shutdown`
/// resolves or storage fails, running the in-doubt resolver and checkpoints alongside. Never
/// binds a socket: the caller passes the listener's connections (see `concord_proto::net`).
pub async fn serve<W: Wal, S: Store, IO: concord_proto::net::Connection>(
    incoming: impl Stream<Item = std::io::Result<IO>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
    node: Arc<Node<W, S>>,
    resolver: ResolverConfig,
) -> Result<(), ServeError> {
    // Interactive transactions: the first Stage of a transaction enlists this participant.
    let coordinator = match &resolver.coordinator {
        Some(address) => Some(
            resolver
                .dialer
                .dial(address, resolver.call_timeout)
                .map(concord_proto::v1::coordinator_client::CoordinatorClient::new)
                .map_err(|e| {
                    ServeError::Fatal(format!("the coordinator's address {address}: {e}"))
                })?,
        ),
        None => None,
    };
    let service = ParticipantService::new(Arc::clone(&node)).with_coordinator(coordinator);
    let participant = ParticipantServer::new(service)
        .max_decoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES)
        .max_encoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES);
    let (stop_tasks, stopped) = tokio::sync::watch::channel(false);
    let resolver_task =
        tokio::spawn(resolver::run_resolver(Arc::clone(&node), resolver, stopped.clone()));
    let checkpoint_task = tokio::spawn(run_checkpoints(Arc::clone(&node), stopped));
    let served = concord_proto::net::serve(participant, incoming, shutdown, node.fatal()).await;
    let _ = stop_tasks.send(true);
    let _ = resolver_task.await;
    let _ = checkpoint_task.await;
    match served? {
        Some(reason) => Err(ServeError::Fatal(reason)),
        None => Ok(()),
    }
}

async fn run_checkpoints<W: Wal, S: Store>(
    node: Arc<Node<W, S>>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(CHECKPOINT_TICK);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        node.sweep_staged();
        if let Err(error) = node.maybe_checkpoint().await {
            tracing::error!(%error, "checkpoint failed");
            return;
        }
    }
}
