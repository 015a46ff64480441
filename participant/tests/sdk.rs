//! The participant SDK over a loopback listener: a caller that gives up on a slow Execute
//! (its deadline passes, its connection drops) must not wedge the transaction, and a
//! Compensate that comes while the Execute still runs waits for it and then undoes it, once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use concord_core::types::{Operation, TxnId};
use concord_participant::sdk::{Resource, ResourceError, SdkConfig, serve_resource};
use concord_proto::v1;
use concord_proto::v1::participant_client::ParticipantClient;
use concord_wal::MemoryWal;

/// A resource whose Execute takes a while, counting what it does.
#[derive(Default)]
struct Slow {
    executed: AtomicU32,
    compensated: AtomicU32,
}

#[tonic::async_trait]
impl Resource for Slow {
    async fn execute(&self, _: &TxnId, _: &[Operation]) -> Result<(), ResourceError> {
        tokio::time::sleep(Duration::from_millis(400)).await;
        self.executed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn compensate(&self, _: &TxnId, _: &[Operation]) -> Result<(), ResourceError> {
        self.compensated.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
    )
    .unwrap()
}

/// An Execute whose caller gave up keeps running; the Compensate that follows waits for it,
/// undoes it exactly once, and the late duplicate Execute is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_giving_up_on_execute_does_not_wedge_the_transaction() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let resource = Arc::new(Slow::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_resource(
        concord_proto::net::incoming(listener),
        async move {
            let _ = stopped.await;
        },
        Arc::clone(&resource),
        MemoryWal::new(1 << 20),
        SdkConfig::default(),
    ));
    let channel =
        concord_proto::net::channel(&address.to_string(), Duration::from_secs(5)).unwrap();
    let mut client = ParticipantClient::new(channel);
    let execute = v1::ExecuteRequest {
        txn_id: "t".into(),
        epoch: 1,
        operations: vec![v1::Operation {
            kind: Some(v1::operation::Kind::CounterAdd(v1::CounterAdd {
                key: b"k".to_vec(),
                delta: 1,
                lower_bound: None,
                upper_bound: None,
            })),
        }],
        deadline_unix_ms: now_ms() + 10_000,
    };
    let mut impatient = tonic::Request::new(execute.clone());
    impatient.set_timeout(Duration::from_millis(50));
    assert!(client.execute(impatient).await.is_err(), "the caller gave up");

    let compensate = v1::CompensateRequest { txn_id: "t".into(), epoch: 1, deadline_unix_ms: 0 };
    let mut patient = tonic::Request::new(compensate);
    patient.set_timeout(Duration::from_secs(3));
    client.compensate(patient).await.expect("the Compensate is answered, not wedged");
    assert_eq!(resource.executed.load(Ordering::SeqCst), 1, "the Execute ran to its end");
    assert_eq!(resource.compensated.load(Ordering::SeqCst), 1);

    let late = client.execute(execute).await.unwrap().into_inner();
    assert_eq!(late.vote.unwrap().reason(), v1::NoReason::AlreadyAborted);
    assert_eq!(resource.executed.load(Ordering::SeqCst), 1);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
