//! The harness's TCP fault proxy: one per link (client→coordinator, coordinator→participant,
//! participant→coordinator), listening on 127.0.0.1 and forwarding to one target.
//!
//! Faults act on bytes in flight, the way a network would: a partition holds every byte (TCP
//! flow control then stops the sender, so nothing queues without bound) until it heals, after
//! which the held bytes arrive late and in order; a one-way blackhole holds one direction only;
//! latency delays each chunk; a reset drops every open connection. Held bytes on a connection
//! its client already gave up on still reach the server when the link heals: late and
//! reordered against the client's newer connection, as a real network may deliver them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bytes read per chunk; each direction of each connection holds at most one chunk.
const CHUNK_BYTES: usize = 16 * 1024;
/// Open connections per proxy, at most; more are refused (closed at once).
const MAX_CONNECTIONS: usize = 256;

/// What a link does to the bytes crossing it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkFault {
    /// Bytes pass.
    #[default]
    Healthy,
    /// No byte passes either way.
    Partition,
    /// Requests (toward the target) are held; responses pass.
    BlackholeRequests,
    /// Responses (from the target) are held; requests pass.
    BlackholeResponses,
    /// Each chunk waits this many milliseconds before it is forwarded.
    Latency(u64),
}

impl LinkFault {
    fn holds(self, toward_target: bool) -> bool {
        match self {
            LinkFault::Healthy | LinkFault::Latency(_) => false,
            LinkFault::Partition => true,
            LinkFault::BlackholeRequests => toward_target,
            LinkFault::BlackholeResponses => !toward_target,
        }
    }
}

/// A running proxy. Dropping it stops accepting and closes every connection.
pub struct Proxy {
    label: String,
    address: SocketAddr,
    fault: watch::Sender<LinkFault>,
    /// Bumped by [`Proxy::reset`]; every connection of an older generation closes.
    generation: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy on a free 127.0.0.1 port that forwards to `target`.
    pub async fn start(label: impl Into<String>, target: SocketAddr) -> anyhow::Result<Proxy> {
        anyhow::ensure!(target.ip().is_loopback(), "the proxy only forwards to 127.0.0.1");
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (fault, _) = watch::channel(LinkFault::Healthy);
        let (generation, _) = watch::channel(0);
        let accept =
            tokio::spawn(accept_loop(listener, target, fault.subscribe(), generation.subscribe()));
        Ok(Proxy { label: label.into(), address, fault, generation, accept })
    }

    /// For messages: `coordinator→alpha`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Where clients of this link connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Sets the link's fault (`Healthy` heals it; held bytes then flow).
    pub fn set(&self, fault: LinkFault) {
        self.fault.send_replace(fault);
    }

    /// The link's current fault.
    pub fn fault(&self) -> LinkFault {
        *self.fault.borrow()
    }

    /// Closes every open connection (new ones are accepted as usual).
    pub fn reset(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    fault: watch::Receiver<LinkFault>,
    generation: watch::Receiver<u64>,
) {
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            drop(inbound); // over the bound: refused
            continue;
        };
        let fault = fault.clone();
        let mut generation = generation.clone();
        let born = *generation.borrow_and_update();
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(outbound) = TcpStream::connect(target).await else { return };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            let requests = pump(in_read, out_write, true, fault.clone());
            let responses = pump(out_read, in_write, false, fault);
            tokio::select! {
                _ = async { tokio::join!(requests, responses) } => {}
                _ = generation.wait_for(|g| *g != born) => {}
            }
        });
    }
}

/// Forwards one direction until EOF or an error, obeying the link's fault chunk by chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    toward_target: bool,
    mut fault: watch::Receiver<LinkFault>,
) {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Hold the chunk while the link holds this direction.
        let latency = match fault.wait_for(|f| !f.holds(toward_target)).await {
            Ok(current) => match *current {
                LinkFault::Latency(millis) => millis,
                _ => 0,
            },
            Err(_) => return,
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// An echo server on 127.0.0.1.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        address
    }

    async fn round_trip(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        stream.write_all(b"ping").await.unwrap();
        let mut reply = [0u8; 4];
        tokio::time::timeout(within, stream.read_exact(&mut reply)).await.ok()?.ok()?;
        Some(reply.to_vec())
    }

    /// Bytes pass when healthy, are held (not lost) by a partition and arrive once it heals,
    /// and a reset closes open connections.
    #[tokio::test]
    async fn partitions_hold_bytes_until_healed_and_resets_close() {
        let proxy = Proxy::start("test", echo().await).await.unwrap();
        let mut stream = TcpStream::connect(proxy.address()).await.unwrap();
        let short = Duration::from_millis(300);
        assert_eq!(round_trip(&mut stream, short).await, Some(b"ping".to_vec()));

        proxy.set(LinkFault::Partition);
        assert_eq!(round_trip(&mut stream, short).await, None, "held by the partition");
        proxy.set(LinkFault::Healthy);
        let mut late = [0u8; 4];
        tokio::time::timeout(short, stream.read_exact(&mut late)).await.unwrap().unwrap();
        assert_eq!(&late, b"ping", "the held bytes arrive after healing");

        proxy.set(LinkFault::BlackholeResponses);
        assert_eq!(round_trip(&mut stream, short).await, None, "responses held");
        proxy.set(LinkFault::Latency(50));
        tokio::time::timeout(short, stream.read_exact(&mut late)).await.unwrap().unwrap();
        let started = std::time::Instant::now();
        assert!(round_trip(&mut stream, Duration::from_secs(2)).await.is_some());
        assert!(started.elapsed() >= Duration::from_millis(50), "latency applies");

        proxy.reset();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(short, stream.read(&mut byte)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "the reset closed the connection: {read:?}");
        let mut fresh = TcpStream::connect(proxy.address()).await.unwrap();
        proxy.set(LinkFault::Healthy);
        assert_eq!(round_trip(&mut fresh, short).await, Some(b"ping".to_vec()));
    }
}
