//! The seams between Concord's servers and turmoil: simulated connections a server can serve,
//! a [`Dialer`] whose channels connect over the simulated network, and the simulated wall clock.
//!
//! Nothing here opens a real socket: turmoil's network lives in memory, and its host names
//! (`coordinator`, `p0`, ...) resolve only inside the simulation.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use concord_proto::net::Dialer;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::Stream;
use tonic::transport::Uri;
use tonic::transport::server::Connected;

/// Accepted connections a server keeps queued before accepting more.
const ACCEPT_QUEUE: usize = 64;

/// A simulated TCP connection, servable by tonic.
pub struct SimConnection(turmoil::net::TcpStream);

impl Connected for SimConnection {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SimConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The connections accepted on `listener`, for `concord_*::serve`. Accept errors end the
/// stream (a simulated listener fails only when its host goes down).
pub fn incoming(
    listener: turmoil::net::TcpListener,
) -> impl Stream<Item = io::Result<SimConnection>> + Send + 'static {
    let (sender, receiver) = tokio::sync::mpsc::channel(ACCEPT_QUEUE);
    tokio::task::spawn_local(async move {
        loop {
            let accepted = listener.accept().await.map(|(stream, _)| SimConnection(stream));
            let failed = accepted.is_err();
            if sender.send(accepted).await.is_err() || failed {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// Connects channels over the simulated network.
#[derive(Clone, Copy, Debug)]
struct SimConnector;

impl tonic::codegen::Service<Uri> for SimConnector {
    type Response = TokioIo<turmoil::net::TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
            })?;
            let port = uri.port_u16().unwrap_or(80);
            let stream = turmoil::net::TcpStream::connect(format!("{host}:{port}")).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Opens lazily connecting channels over the simulated network, with the same endpoint
/// settings (timeouts, keepalive) as production's TCP channels.
#[must_use]
pub fn dialer() -> Dialer {
    Dialer::new(|address: &str, call_timeout: Duration| {
        Ok(concord_proto::net::endpoint(address, call_timeout)?
            .connect_with_connector_lazy(SimConnector))
    })
}

/// The simulated wall clock: milliseconds since the Unix epoch on the current host's timer.
/// Outside a simulated host (never the case for the servers) it reads 0.
#[must_use]
pub fn clock() -> u64 {
    turmoil::since_epoch().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
