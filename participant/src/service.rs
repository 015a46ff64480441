//! The `concord.v1.Participant` gRPC service over a [`Node`], and the one place where node
//! errors become gRPC statuses.

use std::sync::Arc;

use concord_core::limits;
use concord_core::participant::{AbortStep, PrepareInput};
use concord_core::types::{Epoch, TxnId};
use concord_proto::convert;
use concord_proto::v1;
use concord_proto::v1::coordinator_client::CoordinatorClient;
use concord_wal::Wal;
use futures_util::future::join_all;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::node::{Node, NodeError};
use crate::store::Store;

/// The gRPC face of a participant.
pub struct ParticipantService<W: Wal, S: Store> {
    node: Arc<Node<W, S>>,
    /// The coordinator, for enlisting in interactive transactions (none: Stage is refused).
    coordinator: Option<CoordinatorClient<Channel>>,
}

impl<W: Wal, S: Store> ParticipantService<W, S> {
    /// Serves `node`.
    pub fn new(node: Arc<Node<W, S>>) -> Self {
        ParticipantService { node, coordinator: None }
    }

    /// Enlists with `coordinator` when operations are first staged under a transaction.
    #[must_use]
    pub fn with_coordinator(mut self, coordinator: Option<CoordinatorClient<Channel>>) -> Self {
        self.coordinator = coordinator;
        self
    }

    /// One Prepare, alone or inside a batch.
    async fn prepare_one(
        &self,
        request: v1::PrepareRequest,
    ) -> Result<v1::PrepareResponse, Status> {
        let txn = txn_id(&request.txn_id)?;
        let mut operations = convert::operations(request.operations, "operations")
            .map_err(|e| convert::invalid(&e))?;
        if request.staged {
            if !operations.is_empty() {
                return Err(Status::invalid_argument(
                    "operations: must be empty when staged is set (the staged ones are prepared)",
                ));
            }
            match self.node.take_staged(&txn) {
                Some(staged) => operations = staged,
                // A duplicate whose staged operations are gone: the engine answers it.
                None if self.node.knows(&txn) => {}
                None => {
                    return Ok(v1::PrepareResponse {
                        vote: Some(convert::vote_to_wire(&concord_core::types::Vote::no(
                            concord_core::types::NoReason::Invalid,
                            format!(
                                "nothing is staged here under {txn} (this participant \
                                 restarted since, or nothing was staged)"
                            ),
                        ))),
                        outcome: v1::Outcome::Aborted.into(),
                    });
                }
            }
        }
        let span = tracing::debug_span!("prepare", txn_id = %txn, participant = %self.node.name());
        let reply = self
            .node
            .prepare(PrepareInput {
                txn,
                epoch: Epoch(request.epoch),
                operations,
                deadline_unix_ms: request.deadline_unix_ms,
                one_phase: request.one_phase,
            })
            .instrument(span)
            .await
            .map_err(status)?;
        Ok(v1::PrepareResponse {
            vote: Some(convert::vote_to_wire(&reply.vote)),
            outcome: convert::outcome_to_wire(reply.outcome).into(),
        })
    }

    /// One Commit, alone or inside a batch.
    async fn commit_one(&self, request: v1::CommitRequest) -> Result<v1::CommitResponse, Status> {
        let txn = txn_id(&request.txn_id)?;
        self.node.commit(&txn).await.map_err(status)?;
        tracing::debug!(txn_id = %txn, participant = %self.node.name(), "committed");
        Ok(v1::CommitResponse {})
    }
}

/// A batch holds at most `MAX_BATCH_REQUESTS` requests.
fn check_batch(requests: usize) -> Result<(), Status> {
    if requests > limits::MAX_BATCH_REQUESTS {
        return Err(Status::invalid_argument(format!(
            "requests: {requests} requests; the limit is {}",
            limits::MAX_BATCH_REQUESTS
        )));
    }
    Ok(())
}

/// Node errors as gRPC statuses.
fn status(error: NodeError) -> Status {
    match error {
        NodeError::Invalid(invalid) => convert::invalid(&invalid),
        NodeError::WrongState(message) => Status::failed_precondition(message),
        NodeError::Forgotten(message) => Status::data_loss(message),
        NodeError::Overloaded(message) => Status::resource_exhausted(message),
        NodeError::Busy(message) => Status::aborted(message),
        NodeError::CannotCompensate(message) => Status::failed_precondition(message),
        NodeError::Fatal(message) => Status::internal(message),
    }
}

fn txn_id(id: &str) -> Result<TxnId, Status> {
    TxnId::parse(id, "txn_id").map_err(|e| convert::invalid(&e))
}

#[tonic::async_trait]
impl<W: Wal, S: Store> v1::participant_server::Participant for ParticipantService<W, S> {
    async fn prepare(
        &self,
        request: Request<v1::PrepareRequest>,
    ) -> Result<Response<v1::PrepareResponse>, Status> {
        self.prepare_one(request.into_inner()).await.map(Response::new)
    }

    async fn commit(
        &self,
        request: Request<v1::CommitRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        self.commit_one(request.into_inner()).await.map(Response::new)
    }

    async fn prepare_batch(
        &self,
        request: Request<v1::PrepareBatchRequest>,
    ) -> Result<Response<v1::PrepareBatchResponse>, Status> {
        let requests = request.into_inner().requests;
        check_batch(requests.len())?;
        // Every Prepare of the batch runs concurrently in this task: their records share the
        // log's next sync.
        let results = join_all(requests.into_iter().map(|r| self.prepare_one(r))).await;
        let results = results
            .into_iter()
            .map(|result| v1::PrepareResult {
                result: Some(match result {
                    Ok(response) => v1::prepare_result::Result::Response(response),
                    Err(status) => v1::prepare_result::Result::Error(convert::call_error(&status)),
                }),
            })
            .collect();
        Ok(Response::new(v1::PrepareBatchResponse { results }))
    }

    async fn commit_batch(
        &self,
        request: Request<v1::CommitBatchRequest>,
    ) -> Result<Response<v1::CommitBatchResponse>, Status> {
        let requests = request.into_inner().requests;
        check_batch(requests.len())?;
        let results = join_all(requests.into_iter().map(|r| self.commit_one(r))).await;
        let results = results
            .into_iter()
            .map(|result| v1::CommitResult {
                result: Some(match result {
                    Ok(response) => v1::commit_result::Result::Response(response),
                    Err(status) => v1::commit_result::Result::Error(convert::call_error(&status)),
                }),
            })
            .collect();
        Ok(Response::new(v1::CommitBatchResponse { results }))
    }

    async fn abort(
        &self,
        request: Request<v1::AbortRequest>,
    ) -> Result<Response<v1::AbortResponse>, Status> {
        let txn = txn_id(&request.get_ref().txn_id)?;
        let deadline = request.get_ref().deadline_unix_ms;
        let step =
            self.node.abort(&txn, (deadline != 0).then_some(deadline)).await.map_err(status)?;
        if step == AbortStep::Barrier {
            tracing::debug!(txn_id = %txn, participant = %self.node.name(), "abort before prepare: barrier recorded");
        }
        Ok(Response::new(v1::AbortResponse {}))
    }

    async fn execute(
        &self,
        request: Request<v1::ExecuteRequest>,
    ) -> Result<Response<v1::ExecuteResponse>, Status> {
        let request = request.into_inner();
        let txn = txn_id(&request.txn_id)?;
        let operations = convert::operations(request.operations, "operations")
            .map_err(|e| convert::invalid(&e))?;
        let span = tracing::debug_span!("execute", txn_id = %txn, participant = %self.node.name());
        let reply = self
            .node
            .execute(PrepareInput {
                txn,
                epoch: Epoch(request.epoch),
                operations,
                deadline_unix_ms: request.deadline_unix_ms,
                one_phase: false,
            })
            .instrument(span)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::ExecuteResponse { vote: Some(convert::vote_to_wire(&reply.vote)) }))
    }

    async fn compensate(
        &self,
        request: Request<v1::CompensateRequest>,
    ) -> Result<Response<v1::CompensateResponse>, Status> {
        let request = request.into_inner();
        let txn = txn_id(&request.txn_id)?;
        let deadline = request.deadline_unix_ms;
        self.node
            .compensate(&txn, (deadline != 0).then_some(deadline))
            .instrument(
                tracing::debug_span!("compensate", txn_id = %txn, participant = %self.node.name()),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(v1::CompensateResponse {}))
    }

    async fn stage(
        &self,
        request: Request<v1::StageRequest>,
    ) -> Result<Response<v1::StageResponse>, Status> {
        let request = request.into_inner();
        let txn = txn_id(&request.txn_id)?;
        let operations = convert::operations(request.operations, "operations")
            .map_err(|e| convert::invalid(&e))?;
        if self.node.knows(&txn) {
            return Err(Status::failed_precondition(format!(
                "transaction {txn} is already prepared or decided here: nothing more can be staged"
            )));
        }
        let deadline_unix_ms = match self.node.staged_deadline(&txn) {
            Some(deadline) => deadline,
            None => {
                let Some(mut coordinator) = self.coordinator.clone() else {
                    return Err(Status::failed_precondition(
                        "this participant has no --coordinator to enlist with, so it cannot \
                         take part in interactive transactions",
                    ));
                };
                let enlist = v1::EnlistRequest {
                    txn_id: txn.to_string(),
                    participant: self.node.name().to_string(),
                };
                let response = coordinator.enlist(enlist).await.map_err(|status| {
                    let code = match status.code() {
                        tonic::Code::NotFound => tonic::Code::FailedPrecondition,
                        code => code,
                    };
                    Status::new(
                        code,
                        format!("enlisting with the coordinator: {}", status.message()),
                    )
                })?;
                response.into_inner().deadline_unix_ms
            }
        };
        let staged = self.node.stage(&txn, operations, deadline_unix_ms).map_err(status)?;
        tracing::debug!(txn_id = %txn, participant = %self.node.name(), staged, "operations staged");
        Ok(Response::new(v1::StageResponse {
            staged_operations: u32::try_from(staged).unwrap_or(u32::MAX),
            deadline_unix_ms,
        }))
    }

    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        let key = request.into_inner().key;
        if key.is_empty() || key.len() > limits::MAX_KEY_BYTES {
            return Err(Status::invalid_argument(format!(
                "key: must be 1 to {} bytes, got {}",
                limits::MAX_KEY_BYTES,
                key.len()
            )));
        }
        let entry = self.node.get(&key).map_err(status)?.map(|versioned| v1::KeyValue {
            key,
            value: versioned.value,
            version: versioned.version,
        });
        Ok(Response::new(v1::GetResponse { entry }))
    }

    async fn scan(
        &self,
        request: Request<v1::ScanRequest>,
    ) -> Result<Response<v1::ScanResponse>, Status> {
        let request = request.into_inner();
        // A bound may be one byte longer than a key: `next_start` is the last key plus a zero
        // byte, so a page ending at a key of the maximum length continues past it.
        let max_bound = limits::MAX_KEY_BYTES + 1;
        for (field, bound) in [("start", &request.start), ("end", &request.end)] {
            if bound.len() > max_bound {
                return Err(Status::invalid_argument(format!(
                    "{field}: {} bytes exceeds the limit of {max_bound} (a key, plus one byte)",
                    bound.len()
                )));
            }
        }
        let end = (!request.end.is_empty()).then_some(request.end.as_slice());
        let limit = limits::page_size(request.limit);
        // One more than asked tells whether another page exists.
        let mut entries = self.node.scan(&request.start, end, limit + 1).map_err(status)?;
        let next_start = if entries.len() > limit {
            entries.truncate(limit);
            entries.last().map(|(key, _)| {
                let mut next = key.clone();
                next.push(0);
                next
            })
        } else {
            None
        };
        Ok(Response::new(v1::ScanResponse {
            entries: entries
                .into_iter()
                .map(|(key, v)| v1::KeyValue { key, value: v.value, version: v.version })
                .collect(),
            next_start: next_start.unwrap_or_default(),
        }))
    }

    async fn list_in_doubt(
        &self,
        request: Request<v1::ListInDoubtRequest>,
    ) -> Result<Response<v1::ListInDoubtResponse>, Status> {
        let request = request.into_inner();
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(
                TxnId::parse(&request.page_token, "page_token")
                    .map_err(|e| convert::invalid(&e))?,
            )
        };
        let limit = limits::page_size(request.page_size);
        let mut branches = self.node.in_doubt(after.as_ref(), limit + 1);
        let next_page_token = if branches.len() > limit {
            branches.truncate(limit);
            branches.last().map(|b| b.txn.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(v1::ListInDoubtResponse {
            branches: branches
                .into_iter()
                .map(|b| v1::InDoubtBranch {
                    txn_id: b.txn.to_string(),
                    epoch: b.epoch.0,
                    locked_keys: b.locked,
                    prepared_lsn: b.prepared_lsn,
                })
                .collect(),
            next_page_token,
        }))
    }
}
