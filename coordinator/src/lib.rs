//! The Concord coordinator: runs two-phase commit across participants with a durable decision
//! log, answers clients and in-doubt participants, and recovers from its log.
//!
//! - [`driver`]: the transaction table, the per-transaction tasks that carry out
//!   `concord_core::coordinator::TxnMachine` outputs, Commit delivery and recovery.
//! - [`service`]: the `concord.v1.Coordinator` gRPC service.
//! - [`serve`]: runs it on a listener the caller bound, with health and reflection.
//!
//! Submit replies once every participant acknowledged Commit (so clients read their own
//! writes), or, if a participant is slow or down, once the deadline plus one call timeout has
//! passed: then the reply is COMMITTED with state COMMITTING, since the decision is durable and
//! delivery goes on. GetTransaction shows the difference (COMMITTING → COMMITTED).

pub mod driver;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use concord_core::limits;
use concord_proto::v1::coordinator_server::CoordinatorServer;
use concord_wal::Wal;
use tokio::net::TcpStream;
use tokio_stream::Stream;

pub use driver::{Coordinator, CoordinatorConfig, CoordinatorError};
pub use service::CoordinatorService;

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The decision log failed; the process must restart and recover.
    #[error("decision log failed: {0}")]
    Fatal(String),
}

/// Serves the coordinator API with health and reflection until `shutdown` resolves or the log
/// fails, taking checkpoints alongside. Never binds a socket.
pub async fn serve<W: Wal>(
    incoming: impl Stream<Item = std::io::Result<TcpStream>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
    coordinator: Arc<Coordinator<W>>,
) -> Result<(), ServeError> {
    let (mut health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("concord.v1.Coordinator", tonic_health::ServingStatus::Serving)
        .await;
    health_reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(concord_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
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
    let mut fatal = coordinator.fatal();
    let fatal_reason = Arc::new(std::sync::Mutex::new(None::<String>));
    let fatal_seen = Arc::clone(&fatal_reason);
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            reason = fatal.wait_for(Option::is_some) => {
                let reason = reason.ok().and_then(|r| r.clone());
                if let Ok(mut seen) = fatal_seen.lock() {
                    *seen = reason;
                }
            }
        }
        health_reporter
            .set_service_status("concord.v1.Coordinator", tonic_health::ServingStatus::NotServing)
            .await;
    };
    let served = concord_proto::net::server()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    coordinator.stop();
    checkpoints.abort();
    served?;
    match fatal_reason.lock().ok().and_then(|reason| reason.clone()) {
        Some(reason) => Err(ServeError::Fatal(reason)),
        None => Ok(()),
    }
}
