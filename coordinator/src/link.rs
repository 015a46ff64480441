//! The coordinator's link to one participant, the only way it calls one. Prepares and Commits
//! are queued and sent many per message (`PrepareBatch`, `CommitBatch`), filled with whatever is queued when a slot frees
//! up. At one transaction in flight a batch holds one request and leaves at once; under load the
//! requests that arrive while batches are in flight ride in the next one, so the cost of a gRPC
//! call is shared by every transaction in it.
//!
//! A participant that does not implement the batch RPCs (one written by a user against the
//! unary API) answers UNIMPLEMENTED; the link then sends single Prepares and Commits to it.
//!
//! Execute, Compensate and Abort go out as single calls over the same channel. Every call is
//! bounded by the link's call timeout (or a shorter one the caller gives).
//!
//! Bounds: the queue of each kind holds `QUEUE` requests (senders wait for room); a batch holds
//! at most `MAX_BATCH_REQUESTS` requests and about `MAX_BATCH_BYTES`; `IN_FLIGHT` batches of
//! each kind are outstanding at once.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use concord_core::limits::{MAX_BATCH_BYTES, MAX_BATCH_REQUESTS};
use concord_proto::convert;
use concord_proto::v1;
use concord_proto::v1::participant_client::ParticipantClient;
use futures_util::future::join_all;
use prost::Message;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::Status;
use tonic::transport::Channel;

/// Requests of one kind waiting for a batch.
const QUEUE: usize = 8_192;
/// Batches of one kind outstanding at once.
const IN_FLIGHT: usize = 2;

/// A request waiting to be sent, and where its answer goes.
struct Queued<Req, Resp> {
    request: Req,
    reply: oneshot::Sender<Result<Resp, Status>>,
}

/// Every call to one participant. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    prepares: mpsc::Sender<Queued<v1::PrepareRequest, v1::PrepareResponse>>,
    commits: mpsc::Sender<Queued<v1::CommitRequest, v1::CommitResponse>>,
    /// For the calls that are never batched.
    client: ParticipantClient<Channel>,
    call_timeout: Duration,
}

impl Link {
    /// A link over `client`; each call times out after `call_timeout`. With `batching` off it
    /// sends single Prepares and Commits (still queued, so the same bounds hold). Spawns its
    /// two sender tasks, which end when every clone of the link is dropped. Call inside a tokio
    /// runtime.
    pub fn new(client: ParticipantClient<Channel>, call_timeout: Duration, batching: bool) -> Link {
        let mode = Arc::new(Mode {
            confirmed: AtomicBool::new(false),
            unbatched: AtomicBool::new(!batching),
        });
        let (prepares, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run_sender(queue, {
            let (client, mode) = (client.clone(), Arc::clone(&mode));
            move |requests| send_prepares(client.clone(), requests, call_timeout, Arc::clone(&mode))
        }));
        let (commits, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run_sender(queue, {
            let client = client.clone();
            move |requests| send_commits(client.clone(), requests, call_timeout, Arc::clone(&mode))
        }));
        Link { prepares, commits, client, call_timeout }
    }

    /// Runs one saga step, waiting at most `timeout` (and never longer than the call timeout).
    pub async fn execute(
        &self,
        request: v1::ExecuteRequest,
        timeout: Duration,
    ) -> Result<v1::ExecuteResponse, Status> {
        let mut client = self.client.clone();
        single(client.execute(request), timeout.min(self.call_timeout)).await
    }

    /// Compensates one saga step.
    pub async fn compensate(
        &self,
        request: v1::CompensateRequest,
    ) -> Result<v1::CompensateResponse, Status> {
        let mut client = self.client.clone();
        single(client.compensate(request), self.call_timeout).await
    }

    /// Aborts one branch (or probes a one-phase branch's outcome).
    pub async fn abort(&self, request: v1::AbortRequest) -> Result<v1::AbortResponse, Status> {
        let mut client = self.client.clone();
        single(client.abort(request), self.call_timeout).await
    }
}

/// One unbatched call, bounded by `timeout`: running out of time is DEADLINE_EXCEEDED (the
/// call may have done its work).
async fn single<Resp>(
    call: impl Future<Output = Result<tonic::Response<Resp>, Status>>,
    timeout: Duration,
) -> Result<Resp, Status> {
    match tokio::time::timeout(timeout.max(Duration::from_millis(1)), call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded("no answer from the participant in time")),
    }
}

impl Link {
    /// Sends one Prepare (in the next batch) and waits at most `timeout` for its answer.
    pub async fn prepare(
        &self,
        request: v1::PrepareRequest,
        timeout: Duration,
    ) -> Result<v1::PrepareResponse, Status> {
        call(&self.prepares, request, timeout).await
    }

    /// Sends one Commit (in the next batch) and waits at most `timeout` for its answer.
    pub async fn commit(
        &self,
        request: v1::CommitRequest,
        timeout: Duration,
    ) -> Result<v1::CommitResponse, Status> {
        call(&self.commits, request, timeout).await
    }
}

async fn call<Req, Resp>(
    queue: &mpsc::Sender<Queued<Req, Resp>>,
    request: Req,
    timeout: Duration,
) -> Result<Resp, Status> {
    let (reply, answer) = oneshot::channel();
    let sent = async {
        queue
            .send(Queued { request, reply })
            .await
            .map_err(|_| Status::unavailable("the link to the participant is closed"))?;
        answer.await.map_err(|_| Status::unavailable("the batch carrying the call was dropped"))?
    };
    match tokio::time::timeout(timeout.max(Duration::from_millis(1)), sent).await {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded("no answer from the participant in time")),
    }
}

/// Takes whatever is queued (up to the batch bounds) whenever a batch slot is free, and sends
/// it with `send`, which answers every request of the batch.
async fn run_sender<Req, Resp, F, Fut>(mut queue: mpsc::Receiver<Queued<Req, Resp>>, send: F)
where
    Req: Message + Send + 'static,
    Resp: Send + 'static,
    F: Fn(Vec<Req>) -> Fut,
    Fut: Future<Output = Vec<Result<Resp, Status>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let Some(first) = queue.recv().await else { return };
        let mut bytes = first.request.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += next.request.encoded_len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<Req>, Vec<_>) =
            batch.into_iter().map(|q| (q.request, q.reply)).unzip();
        let sent = send(requests);
        tokio::spawn(async move {
            let results = sent.await;
            for (reply, result) in replies.into_iter().zip(results) {
                // The caller may have timed out and gone; nothing to do then.
                let _ = reply.send(result);
            }
            drop(slot);
        });
    }
}

/// Whether the participant takes batches: unknown until a batch call succeeds (requests are
/// kept for a resend until then), or known not to (UNIMPLEMENTED).
#[derive(Default)]
struct Mode {
    confirmed: AtomicBool,
    unbatched: AtomicBool,
}

/// Sends `requests` as one batch, or one by one (concurrently) to a participant without batch
/// RPCs; one result per request, in order.
async fn send<Req, Resp, B, BF, S, SF>(
    requests: Vec<Req>,
    mode: &Mode,
    batch: B,
    single: S,
) -> Vec<Result<Resp, Status>>
where
    Req: Clone,
    B: FnOnce(Vec<Req>) -> BF,
    BF: Future<Output = Result<Vec<Result<Resp, Status>>, Status>>,
    S: Fn(Req) -> SF,
    SF: Future<Output = Result<Resp, Status>>,
{
    let count = requests.len();
    let requests = if mode.unbatched.load(Ordering::Relaxed) {
        requests
    } else {
        let resend = (!mode.confirmed.load(Ordering::Relaxed)).then(|| requests.clone());
        match (batch(requests).await, resend) {
            (Ok(results), _) if results.len() == count => {
                mode.confirmed.store(true, Ordering::Relaxed);
                return results;
            }
            (Ok(results), _) => {
                let message =
                    format!("the batch answered {} results for {count} requests", results.len());
                return (0..count).map(|_| Err(Status::internal(message.clone()))).collect();
            }
            (Err(status), Some(resend)) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!("the participant has no batch calls: sending single calls to it");
                mode.unbatched.store(true, Ordering::Relaxed);
                resend
            }
            (Err(status), _) => return (0..count).map(|_| Err(status.clone())).collect(),
        }
    };
    join_all(requests.into_iter().map(single)).await
}

async fn send_prepares(
    client: ParticipantClient<Channel>,
    requests: Vec<v1::PrepareRequest>,
    call_timeout: Duration,
    mode: Arc<Mode>,
) -> Vec<Result<v1::PrepareResponse, Status>> {
    let batch = |requests| {
        let mut client = client.clone();
        let mut request = tonic::Request::new(v1::PrepareBatchRequest { requests });
        request.set_timeout(call_timeout);
        async move {
            let results = client.prepare_batch(request).await?.into_inner().results;
            Ok(results
                .into_iter()
                .map(|r| match r.result {
                    Some(v1::prepare_result::Result::Response(response)) => Ok(response),
                    Some(v1::prepare_result::Result::Error(error)) => {
                        Err(convert::call_status(error))
                    }
                    None => Err(Status::internal("an empty result in a PrepareBatch answer")),
                })
                .collect())
        }
    };
    let single = |request| {
        let mut client = client.clone();
        let mut request = tonic::Request::new(request);
        request.set_timeout(call_timeout);
        async move { client.prepare(request).await.map(tonic::Response::into_inner) }
    };
    send(requests, &mode, batch, single).await
}

async fn send_commits(
    client: ParticipantClient<Channel>,
    requests: Vec<v1::CommitRequest>,
    call_timeout: Duration,
    mode: Arc<Mode>,
) -> Vec<Result<v1::CommitResponse, Status>> {
    let batch = |requests| {
        let mut client = client.clone();
        let mut request = tonic::Request::new(v1::CommitBatchRequest { requests });
        request.set_timeout(call_timeout);
        async move {
            let results = client.commit_batch(request).await?.into_inner().results;
            Ok(results
                .into_iter()
                .map(|r| match r.result {
                    Some(v1::commit_result::Result::Response(response)) => Ok(response),
                    Some(v1::commit_result::Result::Error(error)) => {
                        Err(convert::call_status(error))
                    }
                    None => Err(Status::internal("an empty result in a CommitBatch answer")),
                })
                .collect())
        }
    };
    let single = |request| {
        let mut client = client.clone();
        let mut request = tonic::Request::new(request);
        request.set_timeout(call_timeout);
        async move { client.commit(request).await.map(tonic::Response::into_inner) }
    };
    send(requests, &mode, batch, single).await
}
