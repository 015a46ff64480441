//! [`Pipeline`]: many submits in flight over one `SubmitStream`, for callers that keep many
//! transactions outstanding (a load generator, a batch importer). Each [`Pipeline::submit`]
//! behaves as [`Client::submit`](crate::Client::submit): the same validation, the same
//! id-always-sent rule, the same errors. The stream is opened on first use and again after it
//! breaks; a break makes every submit still waiting on it [`ClientError::Unknown`].

use std::collections::HashMap;

use concord_proto::v1;
use concord_proto::v1::coordinator_client::CoordinatorClient;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tonic::transport::Channel;

use crate::error::UnknownCause;
use crate::{ClientError, ClientOptions, Submitted, Transaction};

/// Submits waiting to be sent, at most; callers wait for room beyond.
const QUEUE: usize = 1_024;

type Answer = Result<v1::SubmitResponse, Status>;

/// Many submits over one stream. Clones share it.
#[derive(Clone, Debug)]
pub struct Pipeline {
    queue: mpsc::Sender<(v1::SubmitRequest, oneshot::Sender<Answer>)>,
    options: ClientOptions,
}

impl Pipeline {
    pub(crate) fn new(client: CoordinatorClient<Channel>, options: ClientOptions) -> Pipeline {
        let (queue, requests) = mpsc::channel(QUEUE);
        tokio::spawn(run(client, requests));
        Pipeline { queue, options }
    }

    /// Submits `txn` on the stream and waits for its answer (see the module docs).
    pub async fn submit(&self, txn: &Transaction) -> Result<Submitted, ClientError> {
        let (txn_id, request, patience) =
            crate::client::submission(txn, self.options.submit_margin)?;
        let unknown = |cause, message: &str| ClientError::Unknown {
            txn_id: Some(txn_id.to_string()),
            cause,
            message: message.to_string(),
        };
        let (reply, answer) = oneshot::channel();
        let asked = async {
            self.queue
                .send((request, reply))
                .await
                .map_err(|_| unknown(UnknownCause::Unavailable, "the pipeline stopped"))?;
            answer.await.map_err(|_| unknown(UnknownCause::Unavailable, "the stream broke"))
        };
        let answer = match tokio::time::timeout(patience, asked).await {
            Ok(answer) => answer?,
            Err(_) => return Err(unknown(UnknownCause::Timeout, "no answer in time")),
        };
        match answer {
            Ok(response) => Submitted::from_wire(response, txn_id.as_str()),
            Err(status) => Err(ClientError::from_status(&status, Some(txn_id.as_str()))),
        }
    }
}

/// Keeps a stream open while there are submits, matching answers to waiters by sequence.
async fn run(
    mut client: CoordinatorClient<Channel>,
    mut requests: mpsc::Receiver<(v1::SubmitRequest, oneshot::Sender<Answer>)>,
) {
    let mut accepting = true;
    while accepting && let Some(first) = requests.recv().await {
        let (outbound, stream) = mpsc::channel::<v1::SubmitRequest>(QUEUE);
        let mut waiting: HashMap<u64, oneshot::Sender<Answer>> = HashMap::new();
        let mut next = 0u64;
        // The first request is queued before the call, so the stream never opens empty.
        enqueue(first, &mut waiting, &mut next, &outbound);
        let opened =
            client.submit_stream(tokio_stream::wrappers::ReceiverStream::new(stream)).await;
        let mut inbound = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => {
                for (_, reply) in waiting.drain() {
                    let _ = reply.send(Err(status.clone()));
                }
                continue;
            }
        };
        let broke = loop {
            tokio::select! {
                // Only take a new request when the stream can carry it at once.
                request = requests.recv(), if accepting && outbound.capacity() > 0 => match request {
                    Some(request) => {
                        if !enqueue(request, &mut waiting, &mut next, &outbound) {
                            break Status::unavailable("the submit stream closed");
                        }
                    }
                    // Every handle is gone: answer those still waiting, then stop.
                    None if waiting.is_empty() => return,
                    None => accepting = false,
                },
                message = inbound.message() => match message {
                    Ok(Some(answer)) => {
                        let Some(reply) = waiting.remove(&answer.sequence) else {
                            break Status::internal(format!(
                                "the coordinator answered request {} of the stream, which is not waiting",
                                answer.sequence
                            ));
                        };
                        let answer = match answer.result {
                            Some(v1::submit_stream_response::Result::Response(response)) => {
                                Ok(response)
                            }
                            Some(v1::submit_stream_response::Result::Error(error)) => {
                                Err(concord_proto::convert::call_status(error))
                            }
                            None => Err(Status::internal("an empty answer on the submit stream")),
                        };
                        let _ = reply.send(answer);
                        if !accepting && waiting.is_empty() {
                            return;
                        }
                    }
                    Ok(None) => break Status::unavailable("the coordinator ended the submit stream"),
                    Err(status) => break status,
                },
            }
        };
        tracing::debug!(%broke, waiting = waiting.len(), "the submit stream broke");
        for (_, reply) in waiting.drain() {
            let _ = reply.send(Err(broke.clone()));
        }
    }
}

/// Sends one request on the stream, remembering who waits for its answer. False if the
/// stream is closed.
fn enqueue(
    (request, reply): (v1::SubmitRequest, oneshot::Sender<Answer>),
    waiting: &mut HashMap<u64, oneshot::Sender<Answer>>,
    next: &mut u64,
    outbound: &mpsc::Sender<v1::SubmitRequest>,
) -> bool {
    waiting.insert(*next, reply);
    *next += 1;
    outbound.try_send(request).is_ok()
}
