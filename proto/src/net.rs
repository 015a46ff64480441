//! Transport settings shared by every Concord server and channel.
//!
//! tonic ignores its own `tcp_nodelay` setting for a listener we bind ourselves and pass to
//! `serve_with_incoming` (DESIGN.md, "Known traps"), so [`incoming`] sets TCP_NODELAY on each
//! accepted connection; without it small calls stall for milliseconds behind Nagle's algorithm.

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

/// A lazily connecting channel to `address` (host:port or URL) with Concord's transport
/// settings and a timeout on every call.
pub fn channel(
    address: &str,
    call_timeout: Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let uri =
        if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    Ok(tonic::transport::Endpoint::from_shared(uri)?
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(call_timeout)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_lazy())
}
