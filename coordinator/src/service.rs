//! The `concord.v1.Coordinator` gRPC service: validates requests (INVALID_ARGUMENT naming the
//! field), converts to and from the driver's types, and maps driver errors to statuses — the one
//! place where that happens.

use std::sync::Arc;
use std::time::Duration;

use crate::log::DecisionLog;
use concord_core::coordinator::{BranchKind, BranchStatus, Phase, TxnMode};
use concord_core::limits;
use concord_core::limits::STREAM_WINDOW;
use concord_core::types::{InvalidInput, Outcome, TxnId, validate_operations};
use concord_proto::{convert, v1};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::config::CoordinatorError;
use crate::coordinator::{Coordinator, NewTxn};
use crate::table::Entry;

/// The gRPC face of a coordinator.
pub struct CoordinatorService<L: DecisionLog> {
    coordinator: Arc<Coordinator<L>>,
}

impl<L: DecisionLog> Clone for CoordinatorService<L> {
    fn clone(&self) -> Self {
        CoordinatorService { coordinator: Arc::clone(&self.coordinator) }
    }
}

/// Runs one SubmitStream: reads requests while fewer than [`STREAM_WINDOW`] are running, runs
/// them concurrently in this task (each transaction runs in its own task inside the driver
/// anyway, so a client that goes away stops nothing), and sends each answer as it comes.
async fn serve_stream<L: DecisionLog>(
    service: CoordinatorService<L>,
    mut inbound: tonic::Streaming<v1::SubmitRequest>,
    answers: tokio::sync::mpsc::Sender<Result<v1::SubmitStreamResponse, Status>>,
) {
    let mut running = FuturesUnordered::new();
    let mut sequence = 0u64;
    let mut reading = true;
    loop {
        tokio::select! {
            next = inbound.message(), if reading && running.len() < STREAM_WINDOW => match next {
                Ok(Some(request)) => {
                    let this = sequence;
                    sequence += 1;
                    let service = service.clone();
                    running.push(async move { (this, service.submit_one(request).await) });
                }
                Ok(None) => reading = false,
                Err(status) => {
                    tracing::debug!(%status, "a submit stream broke");
                    reading = false;
                }
            },
            Some((this, result)) = running.next(), if !running.is_empty() => {
                let result = match result {
                    Ok(response) => v1::submit_stream_response::Result::Response(response),
                    Err(status) => v1::submit_stream_response::Result::Error(
                        convert::call_error(&status),
                    ),
                };
                let answer = v1::SubmitStreamResponse { sequence: this, result: Some(result) };
                if answers.send(Ok(answer)).await.is_err() {
                    return; // the client went away
                }
            }
            else => return,
        }
    }
}

impl<L: DecisionLog> CoordinatorService<L> {
    /// Serves `coordinator`.
    pub fn new(coordinator: Arc<Coordinator<L>>) -> Self {
        CoordinatorService { coordinator }
    }

    /// One Submit, alone or on a stream.
    async fn submit_one(&self, request: v1::SubmitRequest) -> Result<v1::SubmitResponse, Status> {
        let new = self.validate(request).map_err(|e| convert::invalid(&e))?;
        let txn = new.txn.clone();
        // Instrumented, not entered: a guard held across an await would leak the span into
        // whatever task runs next on this thread.
        let entry = self
            .coordinator
            .submit(new)
            .instrument(tracing::debug_span!("submit", txn_id = %txn))
            .await
            .map_err(status)?;
        self.coordinator.failpoint("coordinator.before_reply").map_err(status)?;
        Ok(submitted(&txn, &entry))
    }

    fn validate(&self, request: v1::SubmitRequest) -> Result<NewTxn, InvalidInput> {
        let txn = if request.txn_id.is_empty() {
            TxnId::parse(&uuid::Uuid::new_v4().to_string(), "txn_id")?
        } else {
            TxnId::parse(&request.txn_id, "txn_id")?
        };
        let mode = convert::mode_from_wire(request.mode, "mode")?;
        if request.branches.is_empty() {
            return Err(InvalidInput::new("branches", "must hold at least one branch"));
        }
        if request.branches.len() > limits::MAX_BRANCHES_PER_TXN {
            return Err(InvalidInput::new(
                "branches",
                format!(
                    "holds {} branches; the limit is {}",
                    request.branches.len(),
                    limits::MAX_BRANCHES_PER_TXN
                ),
            ));
        }
        if u64::from(request.timeout_ms) > limits::MAX_TXN_TIMEOUT_MS {
            return Err(InvalidInput::new(
                "timeout_ms",
                format!(
                    "{} exceeds the limit of {}",
                    request.timeout_ms,
                    limits::MAX_TXN_TIMEOUT_MS
                ),
            ));
        }
        let timeout_ms = match request.timeout_ms {
            0 => limits::DEFAULT_TXN_TIMEOUT_MS,
            ms => u64::from(ms),
        };
        let known: Vec<&String> = self.coordinator.participant_names().collect();
        let mut participants = Vec::with_capacity(request.branches.len());
        let mut operations = Vec::with_capacity(request.branches.len());
        let mut payload = 0;
        let any_dependency = request.branches.iter().any(|b| !b.depends_on.is_empty());
        if any_dependency && mode == TxnMode::TwoPhase {
            return Err(InvalidInput::new(
                "branches.depends_on",
                "orders saga steps; a TWO_PHASE transaction has none (use SAGA or AUTO)",
            ));
        }
        let mut depends_on = Vec::with_capacity(request.branches.len());
        for (index, branch) in request.branches.iter().enumerate() {
            let mut after = Vec::with_capacity(branch.depends_on.len());
            for &dependency in &branch.depends_on {
                let dependency = usize::try_from(dependency).unwrap_or(usize::MAX);
                if dependency >= index {
                    return Err(InvalidInput::new(
                        format!("branches[{index}].depends_on"),
                        format!(
                            "names branch {dependency}; a step may only run after a branch \
                             listed before it"
                        ),
                    ));
                }
                if after.contains(&dependency) {
                    return Err(InvalidInput::new(
                        format!("branches[{index}].depends_on"),
                        format!("names branch {dependency} twice"),
                    ));
                }
                after.push(dependency);
            }
            depends_on.push(after);
        }
        for (index, branch) in request.branches.into_iter().enumerate() {
            if !known.contains(&&branch.participant) {
                return Err(InvalidInput::new(
                    format!("branches[{index}].participant"),
                    format!(
                        "unknown participant {:?}; this coordinator knows {}",
                        branch.participant,
                        known.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            if participants.contains(&branch.participant) {
                return Err(InvalidInput::new(
                    format!("branches[{index}].participant"),
                    format!(
                        "{:?} appears twice; merge its operations into one branch",
                        branch.participant
                    ),
                ));
            }
            let field = format!("branches[{index}].operations");
            let domain = convert::operations(branch.operations.clone(), &field)?;
            payload += validate_operations(&domain, &field)?;
            participants.push(branch.participant);
            operations.push(branch.operations);
        }
        if payload > limits::MAX_TXN_PAYLOAD_BYTES {
            return Err(InvalidInput::new(
                "branches",
                format!(
                    "carry {payload} bytes of keys and values; the limit is {}",
                    limits::MAX_TXN_PAYLOAD_BYTES
                ),
            ));
        }
        Ok(NewTxn {
            txn,
            participants,
            operations,
            timeout: Duration::from_millis(timeout_ms),
            first_submitted_unix_ms: request.first_submitted_unix_ms,
            mode,
            depends_on: any_dependency.then_some(depends_on),
            staged: false,
        })
    }
}

fn status(error: CoordinatorError) -> Status {
    match error {
        CoordinatorError::Overloaded(message) => Status::resource_exhausted(message),
        CoordinatorError::NotFound(message) => Status::not_found(message),
        // The same code a participant uses for an outcome it may have forgotten: clients read
        // it as "unknown", never as "refused, nothing happened".
        CoordinatorError::MaybeForgotten(message) => Status::data_loss(message),
        CoordinatorError::Fatal(message) => Status::internal(message),
        CoordinatorError::ShuttingDown => Status::unavailable("the coordinator is shutting down"),
        CoordinatorError::WrongState(message) => Status::failed_precondition(message),
        CoordinatorError::InvalidConfig(message) => Status::internal(message),
    }
}

fn submitted(txn: &TxnId, entry: &Entry) -> v1::SubmitResponse {
    v1::SubmitResponse {
        txn_id: txn.to_string(),
        outcome: convert::outcome_to_wire(entry.outcome()).into(),
        abort: abort_to_wire(entry),
        state: txn_state(entry).into(),
    }
}

fn txn_state(entry: &Entry) -> v1::TxnState {
    if entry.open {
        return v1::TxnState::Open;
    }
    match entry.machine.phase() {
        Phase::Preparing => v1::TxnState::Preparing,
        // Deciding follows Preparing, or Executing when there are saga steps.
        Phase::Deciding if entry.machine.saga_steps().is_empty() => v1::TxnState::Preparing,
        Phase::Executing | Phase::Deciding => v1::TxnState::Executing,
        Phase::Committing => v1::TxnState::Committing,
        Phase::Committed => v1::TxnState::Committed,
        Phase::Compensating(_) if entry.needs_attention => v1::TxnState::NeedsAttention,
        Phase::Compensating(_) => v1::TxnState::Compensating,
        Phase::Aborted(_) => v1::TxnState::Aborted,
    }
}

fn abort_to_wire(entry: &Entry) -> Option<v1::AbortCause> {
    let (Phase::Aborted(cause) | Phase::Compensating(cause)) = entry.machine.phase() else {
        return None;
    };
    Some(convert::abort_cause_to_wire(cause, &entry.participants))
}

fn info(txn: &TxnId, entry: &Entry) -> v1::TransactionInfo {
    let branches = entry
        .participants
        .iter()
        .zip(entry.machine.branches())
        .enumerate()
        .map(|(index, (participant, status))| {
            let (state, vote) = match status {
                BranchStatus::Preparing => (v1::BranchState::Preparing, None),
                BranchStatus::Prepared => (v1::BranchState::Prepared, None),
                BranchStatus::ReadOnly => (v1::BranchState::ReadOnly, None),
                BranchStatus::VotedNo(vote) => {
                    (v1::BranchState::VotedNo, Some(convert::vote_to_wire(vote)))
                }
                BranchStatus::Unknown => (v1::BranchState::Unknown, None),
                BranchStatus::Committing => (v1::BranchState::Committing, None),
                BranchStatus::Committed => (v1::BranchState::Committed, None),
                BranchStatus::Aborted => (v1::BranchState::Aborted, None),
                BranchStatus::Waiting => (v1::BranchState::Waiting, None),
                BranchStatus::Executing => (v1::BranchState::Executing, None),
                BranchStatus::Executed => (v1::BranchState::Executed, None),
                BranchStatus::ExecuteFailed(vote) => {
                    (v1::BranchState::ExecuteFailed, Some(convert::vote_to_wire(vote)))
                }
                BranchStatus::Compensating => (v1::BranchState::Compensating, None),
                BranchStatus::Compensated => (v1::BranchState::Compensated, None),
            };
            v1::BranchInfo {
                participant: participant.clone(),
                state: state.into(),
                vote,
                delivery_attempts: entry.delivery.get(index).map_or(0, |d| d.attempts),
                last_error: entry
                    .delivery
                    .get(index)
                    .map(|d| d.last_error.clone())
                    .unwrap_or_default(),
                saga_step: entry.machine.kinds().get(index) == Some(&BranchKind::Saga),
            }
        })
        .collect();
    v1::TransactionInfo {
        txn_id: txn.to_string(),
        state: txn_state(entry).into(),
        outcome: convert::outcome_to_wire(entry.outcome()).into(),
        abort: abort_to_wire(entry),
        branches,
        mode: convert::mode_to_wire(entry.machine.mode()).into(),
        epoch: entry.epoch.0,
        created_unix_ms: entry.created_unix_ms,
        decided_unix_ms: entry.decided_unix_ms,
        finished_unix_ms: entry.finished_unix_ms,
    }
}

#[tonic::async_trait]
impl<L: DecisionLog> v1::coordinator_server::Coordinator for CoordinatorService<L> {
    async fn submit(
        &self,
        request: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        self.submit_one(request.into_inner()).await.map(Response::new)
    }

    type SubmitStreamStream = ReceiverStream<Result<v1::SubmitStreamResponse, Status>>;

    async fn submit_stream(
        &self,
        request: Request<tonic::Streaming<v1::SubmitRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let inbound = request.into_inner();
        let (answers, stream) = tokio::sync::mpsc::channel(STREAM_WINDOW);
        tokio::spawn(serve_stream(self.clone(), inbound, answers));
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn get_transaction(
        &self,
        request: Request<v1::GetTransactionRequest>,
    ) -> Result<Response<v1::GetTransactionResponse>, Status> {
        let request = request.into_inner();
        let txn = TxnId::parse(&request.txn_id, "txn_id").map_err(|e| convert::invalid(&e))?;
        let entry = match self.coordinator.get_durable(&txn).await.map_err(status)? {
            Some(entry) => entry,
            None if request.fence_unknown => {
                self.coordinator.fence(&txn, request.submitted_unix_ms).await.map_err(status)?
            }
            None => {
                let forgotten = self.coordinator.forgotten_before_unix_ms();
                let older = if forgotten == 0 {
                    String::new()
                } else {
                    format!(
                        "; or, if first submitted before {forgotten} ms, finished and since \
                         forgotten (this coordinator keeps a bounded number of outcomes)"
                    )
                };
                return Err(Status::not_found(format!(
                    "txn_id: no record of {txn}: never submitted here, or aborted before a \
                     decision (presumed abort){older}; ask with fence_unknown to make it definite"
                )));
            }
        };
        Ok(Response::new(v1::GetTransactionResponse { transaction: Some(info(&txn, &entry)) }))
    }

    async fn list_transactions(
        &self,
        request: Request<v1::ListTransactionsRequest>,
    ) -> Result<Response<v1::ListTransactionsResponse>, Status> {
        let request = request.into_inner();
        let state = v1::TxnState::try_from(request.state).map_err(|_| {
            Status::invalid_argument(format!("state: unknown state {}", request.state))
        })?;
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(
                TxnId::parse(&request.page_token, "page_token")
                    .map_err(|e| convert::invalid(&e))?,
            )
        };
        let limit = limits::page_size(request.page_size);
        let mut page = self.coordinator.list(
            |entry| state == v1::TxnState::Unspecified || txn_state(entry) == state,
            after.as_ref(),
            limit + 1,
        );
        let next_page_token = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|(txn, _)| txn.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(v1::ListTransactionsResponse {
            transactions: page.iter().map(|(txn, entry)| info(txn, entry)).collect(),
            next_page_token,
        }))
    }

    async fn begin(
        &self,
        request: Request<v1::BeginRequest>,
    ) -> Result<Response<v1::BeginResponse>, Status> {
        let request = request.into_inner();
        let txn = if request.txn_id.is_empty() {
            TxnId::parse(&uuid::Uuid::new_v4().to_string(), "txn_id")
        } else {
            TxnId::parse(&request.txn_id, "txn_id")
        }
        .map_err(|e| convert::invalid(&e))?;
        if u64::from(request.timeout_ms) > limits::MAX_TXN_TIMEOUT_MS {
            return Err(Status::invalid_argument(format!(
                "timeout_ms: {} exceeds the limit of {}",
                request.timeout_ms,
                limits::MAX_TXN_TIMEOUT_MS
            )));
        }
        let timeout_ms = match request.timeout_ms {
            0 => limits::DEFAULT_TXN_TIMEOUT_MS,
            ms => u64::from(ms),
        };
        let deadline_unix_ms =
            self.coordinator.begin(&txn, Duration::from_millis(timeout_ms)).map_err(status)?;
        Ok(Response::new(v1::BeginResponse { txn_id: txn.to_string(), deadline_unix_ms }))
    }

    async fn enlist(
        &self,
        request: Request<v1::EnlistRequest>,
    ) -> Result<Response<v1::EnlistResponse>, Status> {
        let request = request.into_inner();
        let txn = TxnId::parse(&request.txn_id, "txn_id").map_err(|e| convert::invalid(&e))?;
        if !self.coordinator.participant_names().any(|name| *name == request.participant) {
            return Err(Status::invalid_argument(format!(
                "participant: {:?} is not a participant of this coordinator",
                request.participant
            )));
        }
        let deadline_unix_ms =
            self.coordinator.enlist(&txn, &request.participant).map_err(status)?;
        Ok(Response::new(v1::EnlistResponse { deadline_unix_ms }))
    }

    async fn commit(
        &self,
        request: Request<v1::CommitTransactionRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        let txn = TxnId::parse(&request.into_inner().txn_id, "txn_id")
            .map_err(|e| convert::invalid(&e))?;
        let entry = self
            .coordinator
            .commit_interactive(&txn)
            .instrument(tracing::debug_span!("commit", txn_id = %txn))
            .await
            .map_err(status)?;
        self.coordinator.failpoint("coordinator.before_reply").map_err(status)?;
        Ok(Response::new(submitted(&txn, &entry)))
    }

    async fn rollback(
        &self,
        request: Request<v1::RollbackTransactionRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        let txn = TxnId::parse(&request.into_inner().txn_id, "txn_id")
            .map_err(|e| convert::invalid(&e))?;
        let entry = self.coordinator.rollback(&txn).await.map_err(status)?;
        Ok(Response::new(submitted(&txn, &entry)))
    }

    async fn resolve_transaction(
        &self,
        request: Request<v1::ResolveTransactionRequest>,
    ) -> Result<Response<v1::ResolveTransactionResponse>, Status> {
        let request = request.into_inner();
        let txn = TxnId::parse(&request.txn_id, "txn_id").map_err(|e| convert::invalid(&e))?;
        let outcome = self.coordinator.resolve(&txn).await.map_err(status)?;
        if outcome != Outcome::Pending {
            tracing::info!(txn_id = %txn, participant = %request.participant, ?outcome, "resolved an in-doubt branch");
        }
        Ok(Response::new(v1::ResolveTransactionResponse {
            outcome: convert::outcome_to_wire(outcome).into(),
            epoch: self.coordinator.epoch().0,
        }))
    }
}
