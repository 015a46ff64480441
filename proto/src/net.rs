//! Transport settings shared by every Concord server and channel.
//!
//! tonic ignores its own `tcp_nodelay` setting for a listener we bind ourselves and pass to
//! `serve_with_incoming` (DESIGN.md, "Known traps"), so [`incoming`] sets TCP_NODELAY on each
//! accepted connection; without it small calls stall for milliseconds behind Nagle's algorithm.
//!
//! [`serve`] is how every Concord server runs: its service plus gRPC health and reflection, on
//! connections the caller accepted, until shutdown or a fatal storage error.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, StreamExt};

/// How often an idle HTTP/2 connection is pinged, so a partition is noticed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a keepalive ping may go unanswered before the connection is declared dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a TCP connection to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Concurrent streams a server accepts per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// The accepted connections of `listener`, each with TCP_NODELAY set. Accept errors (a
/// connection reset before accept, too many open files) are logged and skipped rather than
/// ending the server.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).filter_map(|accepted| match accepted {
        Ok(stream) => {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::warn!(%error, "could not set TCP_NODELAY on an accepted connection");
            }
            Some(Ok(stream))
        }
        Err(error) => {
            tracing::warn!(%error, "accept failed");
            None
        }
    })
}

/// A server builder with Concord's transport settings: keepalive, TCP_NODELAY, stream limits.
#[must_use]
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
}

/// An endpoint for `address` (host:port or URL) with Concord's transport settings and a timeout
/// on every call.
pub fn endpoint(
    address: &str,
    call_timeout: Duration,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    let uri =
        if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    Ok(tonic::transport::Endpoint::from_shared(uri)?
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(call_timeout)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// A lazily connecting TCP channel to `address` (see [`endpoint`]).
pub fn channel(
    address: &str,
    call_timeout: Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    Ok(endpoint(address, call_timeout)?.connect_lazy())
}

type DialFn = dyn Fn(&str, Duration) -> Result<tonic::transport::Channel, tonic::transport::Error>
    + Send
    + Sync;

/// How a server opens channels to its peers: TCP by default ([`channel`]); the simulation
/// supplies one that connects over its simulated network.
#[derive(Clone)]
pub struct Dialer(std::sync::Arc<DialFn>);

impl Dialer {
    /// Dials with `dial(address, call_timeout)`.
    pub fn new(
        dial: impl Fn(&str, Duration) -> Result<tonic::transport::Channel, tonic::transport::Error>
        + Send
        + Sync
        + 'static,
    ) -> Dialer {
        Dialer(std::sync::Arc::new(dial))
    }

    /// A lazily connecting channel to `address` whose calls time out after `call_timeout`.
    pub fn dial(
        &self,
        address: &str,
        call_timeout: Duration,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        (self.0)(address, call_timeout)
    }
}

impl Default for Dialer {
    fn default() -> Dialer {
        Dialer::new(channel)
    }
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dialer")
    }
}

/// A connection a server can serve: a TCP stream, or a simulated one.
pub trait Connection:
    tokio::io::AsyncRead
    + tokio::io::AsyncWrite
    + tonic::transport::server::Connected<ConnectInfo: Clone + Send + Sync + 'static>
    + Unpin
    + Send
    + 'static
{
}

impl<T> Connection for T where
    T: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected<ConnectInfo: Clone + Send + Sync + 'static>
        + Unpin
        + Send
        + 'static
{
}

/// Why a server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves `service` with gRPC health (its own name and `""` report SERVING until it stops) and
/// reflection on `incoming`, until `shutdown` resolves or `fatal` holds a reason (a storage
/// failure). Returns that reason if it is why serving stopped. Never binds a socket: the
/// connections are TCP streams from [`incoming`] in production, simulated ones under simulation.
pub async fn serve<S, IO>(
    service: S,
    incoming: impl Stream<Item = std::io::Result<IO>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut fatal: tokio::sync::watch::Receiver<Option<String>>,
) -> Result<Option<String>, ServeError>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::BoxBody>,
            Response = tonic::codegen::http::Response<tonic::body::BoxBody>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    IO: Connection,
{
    use tonic_health::ServingStatus;
    let (mut health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_service_status(S::NAME, ServingStatus::Serving).await;
    health_reporter.set_service_status("", ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let (fatal_seen, fatal_reason) = tokio::sync::oneshot::channel();
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            reason = fatal.wait_for(Option::is_some) => {
                let _ = fatal_seen.send(reason.ok().and_then(|r| r.clone()));
            }
        }
        health_reporter.set_service_status(S::NAME, ServingStatus::NotServing).await;
        health_reporter.set_service_status("", ServingStatus::NotServing).await;
    };
    server()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(fatal_reason.await.ok().flatten())
}
