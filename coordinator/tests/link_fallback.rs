//! The coordinator's link batches Prepares and Commits, and falls back to single calls for a
//! participant that does not implement the batch RPCs (one written against the unary API).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use concord_coordinator::link::Link;
use concord_proto::v1;
use concord_proto::v1::participant_client::ParticipantClient;
use concord_proto::v1::participant_server::{Participant, ParticipantServer};
use tonic::{Request, Response, Status};

/// Calls a stand-in participant received, by kind.
#[derive(Default)]
struct Calls {
    prepare: AtomicUsize,
    commit: AtomicUsize,
    batches: AtomicUsize,
}

/// A participant with only the unary Prepare and Commit: every Prepare votes YES.
struct UnaryOnly(Arc<Calls>);

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this participant"))
}

#[tonic::async_trait]
impl Participant for UnaryOnly {
    async fn prepare(
        &self,
        _: Request<v1::PrepareRequest>,
    ) -> Result<Response<v1::PrepareResponse>, Status> {
        self.0.prepare.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(v1::PrepareResponse {
            vote: Some(v1::Vote { kind: v1::VoteKind::Yes.into(), ..v1::Vote::default() }),
            outcome: v1::Outcome::Pending.into(),
        }))
    }
    async fn commit(
        &self,
        _: Request<v1::CommitRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        self.0.commit.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(v1::CommitResponse {}))
    }
    async fn prepare_batch(
        &self,
        _: Request<v1::PrepareBatchRequest>,
    ) -> Result<Response<v1::PrepareBatchResponse>, Status> {
        self.0.batches.fetch_add(1, Ordering::SeqCst);
        unimplemented()
    }
    async fn commit_batch(
        &self,
        _: Request<v1::CommitBatchRequest>,
    ) -> Result<Response<v1::CommitBatchResponse>, Status> {
        self.0.batches.fetch_add(1, Ordering::SeqCst);
        unimplemented()
    }
    async fn abort(
        &self,
        _: Request<v1::AbortRequest>,
    ) -> Result<Response<v1::AbortResponse>, Status> {
        unimplemented()
    }
    async fn get(&self, _: Request<v1::GetRequest>) -> Result<Response<v1::GetResponse>, Status> {
        unimplemented()
    }
    async fn execute(
        &self,
        _: Request<v1::ExecuteRequest>,
    ) -> Result<Response<v1::ExecuteResponse>, Status> {
        unimplemented()
    }
    async fn compensate(
        &self,
        _: Request<v1::CompensateRequest>,
    ) -> Result<Response<v1::CompensateResponse>, Status> {
        unimplemented()
    }
    async fn stage(
        &self,
        _: Request<v1::StageRequest>,
    ) -> Result<Response<v1::StageResponse>, Status> {
        unimplemented()
    }
    async fn scan(
        &self,
        _: Request<v1::ScanRequest>,
    ) -> Result<Response<v1::ScanResponse>, Status> {
        unimplemented()
    }
    async fn list_in_doubt(
        &self,
        _: Request<v1::ListInDoubtRequest>,
    ) -> Result<Response<v1::ListInDoubtResponse>, Status> {
        unimplemented()
    }
}

fn prepare(txn_id: &str) -> v1::PrepareRequest {
    v1::PrepareRequest {
        txn_id: txn_id.into(),
        epoch: 1,
        operations: Vec::new(),
        deadline_unix_ms: 1,
        one_phase: false,
        staged: false,
    }
}

/// A participant answering UNIMPLEMENTED to batch calls gets every request as a single call.
#[tokio::test]
async fn a_participant_without_batches_gets_single_calls() {
    let calls = Arc::new(Calls::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ParticipantServer::new(UnaryOnly(Arc::clone(&calls))))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel =
        concord_proto::net::channel(&address.to_string(), Duration::from_secs(5)).unwrap();
    let link = Link::new(ParticipantClient::new(channel), Duration::from_secs(5), true);

    // The first batch is refused as UNIMPLEMENTED and resent as single calls, transparently.
    let answer = link.prepare(prepare("t1"), Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer.vote.unwrap().kind(), v1::VoteKind::Yes);
    assert_eq!(calls.batches.load(Ordering::SeqCst), 1);
    assert_eq!(calls.prepare.load(Ordering::SeqCst), 1);

    // From then on, Prepares go one by one without trying a batch again.
    let (a, b) = tokio::join!(
        link.prepare(prepare("t2"), Duration::from_secs(5)),
        link.prepare(prepare("t3"), Duration::from_secs(5)),
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(calls.prepare.load(Ordering::SeqCst), 3);
    assert_eq!(calls.batches.load(Ordering::SeqCst), 1);

    // Commits found out on their own (the link does not assume the two RPCs go together).
    let request = v1::CommitRequest { txn_id: "t1".into(), epoch: 1 };
    link.commit(request, Duration::from_secs(5)).await.unwrap();
    assert_eq!(calls.commit.load(Ordering::SeqCst), 1);
    server.abort();
}
