//! Sagas, the hybrid fallback and interactive transactions over real processes on 127.0.0.1: three sled participants
//! (`concord participant`), the payment-gateway example written with the participant SDK
//! (`concord payment-gateway`, a do/undo-only participant), and `concord coordinator`.
//!
//! Every saga path: success; a failure at each step (the steps before it compensated in
//! reverse order, their data restored); duplicate and out-of-order Execute/Compensate at the
//! sled participant and at the SDK participant; a coordinator killed mid-compensation, which
//! resumes it after restart, with NEEDS_ATTENTION shown while the step cannot be compensated
//! and cleared once it is; a step that cannot be undone because its key changed; hybrid
//! transactions (two-phase branches plus the gateway as a saga step) in AUTO mode, and the
//! mode rules. Interactive transactions: begun, staged at participants that enlist
//! themselves, then committed or rolled back; abandoned ones abort at their deadline; a
//! participant that restarts loses what it staged and votes NO.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{branch, counter_add};

use std::net::SocketAddr;
use std::time::Duration;

use concord_proto::v1;
use concord_proto::v1::coordinator_client::CoordinatorClient;
use concord_proto::v1::operation::Kind;
use concord_proto::v1::participant_client::ParticipantClient;
use support::{ConcordProcess, ParticipantProcess, eventually, reserve_port};
use tonic::Code;
use tonic::transport::Channel;

const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];
/// How long a compensation (or its recovery) may take to finish.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Three sled participants, the payment gateway and a coordinator under one directory.
struct Cluster {
    root: tempfile::TempDir,
    participants: Vec<ParticipantProcess>,
    gateway: ConcordProcess,
    coordinator_address: SocketAddr,
    coordinator: Option<ConcordProcess>,
    coordinator_extra: Vec<String>,
    coordinator_starts: u32,
}

impl Cluster {
    async fn start(coordinator_extra: &[&str]) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let coordinator_address = reserve_port();
        let mut participants = Vec::new();
        for name in NAMES {
            let dir = root.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            participants.push(
                ParticipantProcess::start(&dir, name, Some(coordinator_address), &[])
                    .await
                    .unwrap(),
            );
        }
        let gateway_args: Vec<String> = [
            "payment-gateway",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "gateway",
            "--data-dir",
            &root.path().join("gateway").display().to_string(),
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let gateway = ConcordProcess::start(&gateway_args, &root.path().join("gateway.stderr"))
            .await
            .unwrap();
        let mut cluster = Cluster {
            root,
            participants,
            gateway,
            coordinator_address,
            coordinator: None,
            coordinator_extra: coordinator_extra.iter().map(ToString::to_string).collect(),
            coordinator_starts: 0,
        };
        cluster.start_coordinator().await;
        cluster
    }

    async fn start_coordinator(&mut self) {
        self.coordinator_starts += 1;
        let mut args = vec![
            "coordinator".to_string(),
            "--listen".into(),
            self.coordinator_address.to_string(),
            "--data-dir".into(),
            self.root.path().join("coordinator").display().to_string(),
        ];
        for (name, participant) in NAMES.iter().zip(&self.participants) {
            args.push("--participant".into());
            args.push(format!("{name}={}", participant.address()));
        }
        args.push("--participant".into());
        args.push(format!("gateway={}", self.gateway.address()));
        args.extend(self.coordinator_extra.iter().cloned());
        let stderr =
            self.root.path().join(format!("coordinator-{}.stderr", self.coordinator_starts));
        self.coordinator = Some(ConcordProcess::start(&args, &stderr).await.unwrap());
    }

    fn client(&self) -> CoordinatorClient<Channel> {
        CoordinatorClient::new(support::channel(self.coordinator_address))
    }

    fn participant(&self, name: &str) -> ParticipantClient<Channel> {
        if name == "gateway" {
            return support::participant_client(self.gateway.address());
        }
        self.participants[NAMES.iter().position(|n| *n == name).unwrap()].client()
    }

    /// The counter `key` at `name` (0 when absent).
    async fn counter(&self, name: &str, key: &str) -> i64 {
        let response = self
            .participant(name)
            .get(v1::GetRequest { key: key.as_bytes().to_vec() })
            .await
            .unwrap()
            .into_inner();
        response.entry.map_or(0, |e| i64::from_be_bytes(e.value.try_into().unwrap()))
    }

    async fn submit(&self, request: v1::SubmitRequest) -> v1::SubmitResponse {
        self.client().submit(request).await.unwrap().into_inner()
    }

    async fn info(&self, txn_id: &str) -> v1::TransactionInfo {
        let request = v1::GetTransactionRequest { txn_id: txn_id.into(), ..Default::default() };
        self.client().get_transaction(request).await.unwrap().into_inner().transaction.unwrap()
    }

    /// Waits until `txn_id` is in `state`.
    async fn settled(&self, txn_id: &str, state: v1::TxnState) -> v1::TransactionInfo {
        eventually(&format!("{txn_id} in {state:?}"), SETTLE_TIMEOUT, || async {
            let info = self.info(txn_id).await;
            (info.state() == state).then_some(info)
        })
        .await
    }

    /// Ids listed in `state`.
    async fn listed(&self, state: v1::TxnState) -> Vec<String> {
        let request = v1::ListTransactionsRequest {
            state: state.into(),
            page_size: 1000,
            page_token: String::new(),
        };
        let response = self.client().list_transactions(request).await.unwrap().into_inner();
        response.transactions.into_iter().map(|t| t.txn_id).collect()
    }
}

fn add(key: &str, delta: i64) -> v1::Operation {
    counter_add(key, delta, Some(0), None)
}

fn put(key: &str, value: &str) -> v1::Operation {
    support::put(key, value.as_bytes())
}

fn request(txn_id: &str, mode: v1::TxnMode, branches: Vec<v1::Branch>) -> v1::SubmitRequest {
    v1::SubmitRequest {
        txn_id: txn_id.into(),
        branches,
        timeout_ms: 2_000,
        mode: mode.into(),
        first_submitted_unix_ms: 0,
    }
}

/// +100 on `key` at every sled participant (two-phase).
async fn seed(cluster: &Cluster, key: &str) {
    let branches = NAMES.iter().map(|n| branch(n, vec![add(key, 100)])).collect();
    let response =
        cluster.submit(request(&format!("seed-{key}"), v1::TxnMode::TwoPhase, branches)).await;
    assert_eq!(response.outcome(), v1::Outcome::Committed);
}

fn states(info: &v1::TransactionInfo) -> Vec<v1::BranchState> {
    info.branches.iter().map(v1::BranchInfo::state).collect()
}

/// A saga whose steps all execute commits, each step's writes applied; a saga whose step k
/// fails (its participant refuses) compensates steps 0..k in reverse order and leaves every
/// balance as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_commits_or_compensates_every_step_before_the_one_that_failed() {
    let cluster = Cluster::start(&[]).await;
    seed(&cluster, "acct").await;
    let steps = |fail: Option<usize>| {
        NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| branch(n, vec![add("acct", if Some(i) == fail { -1_000 } else { -1 })]))
            .collect::<Vec<_>>()
    };

    let ok = cluster.submit(request("saga-ok", v1::TxnMode::Saga, steps(None))).await;
    assert_eq!(ok.outcome(), v1::Outcome::Committed);
    assert_eq!(ok.state(), v1::TxnState::Committed);
    let info = cluster.info("saga-ok").await;
    assert_eq!(info.mode(), v1::TxnMode::Saga);
    assert!(info.branches.iter().all(|b| b.saga_step));
    for name in NAMES {
        assert_eq!(cluster.counter(name, "acct").await, 99, "{name}");
    }

    for failing in 0..NAMES.len() {
        let id = format!("saga-fails-at-{failing}");
        let response = cluster.submit(request(&id, v1::TxnMode::Saga, steps(Some(failing)))).await;
        assert_eq!(response.outcome(), v1::Outcome::Aborted, "{id}");
        let abort = response.abort.unwrap();
        assert_eq!(abort.kind(), v1::abort_cause::Kind::StepFailed, "{id}");
        assert_eq!(abort.vote_reason(), v1::NoReason::BoundCrossed);
        assert_eq!(abort.participant, NAMES[failing]);
        let info = cluster.settled(&id, v1::TxnState::Aborted).await;
        let mut expected = vec![v1::BranchState::Aborted; NAMES.len()];
        expected[..failing].fill(v1::BranchState::Compensated);
        expected[failing] = v1::BranchState::ExecuteFailed;
        assert_eq!(states(&info), expected, "{id}");
        for name in NAMES {
            assert_eq!(cluster.counter(name, "acct").await, 99, "{id}: {name} restored");
        }
    }

    // Dependencies: beta and gamma both run after alpha; gamma fails; alpha and beta are undone.
    let mut branches = steps(Some(2));
    branches[1].depends_on = vec![0];
    branches[2].depends_on = vec![0];
    let response = cluster.submit(request("saga-dag", v1::TxnMode::Saga, branches)).await;
    assert_eq!(response.outcome(), v1::Outcome::Aborted);
    cluster.settled("saga-dag", v1::TxnState::Aborted).await;
    for name in NAMES {
        assert_eq!(cluster.counter(name, "acct").await, 99, "saga-dag: {name} restored");
    }

    // A resubmission of a finished saga is answered from the log, not run again.
    let again = cluster.submit(request("saga-ok", v1::TxnMode::Saga, steps(None))).await;
    assert_eq!(again.outcome(), v1::Outcome::Committed);
    assert_eq!(cluster.counter("alpha", "acct").await, 99);
}

/// Execute and Compensate are exactly once and a Compensate that comes first blocks its late
/// Execute, at the sled participant and at the SDK participant alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_and_compensate_are_exactly_once_and_barriers_block_a_late_execute() {
    let cluster = Cluster::start(&[]).await;
    seed(&cluster, "acct").await;
    let deadline = || {
        u64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
        )
        .unwrap()
            + 10_000
    };
    for name in ["alpha", "gateway"] {
        let mut client = cluster.participant(name);
        let before = cluster.counter(name, "acct").await;
        let execute = |id: &str| v1::ExecuteRequest {
            txn_id: id.into(),
            epoch: 1,
            operations: vec![v1::Operation {
                kind: Some(Kind::CounterAdd(v1::CounterAdd {
                    key: b"acct".to_vec(),
                    delta: -7,
                    lower_bound: None,
                    upper_bound: None,
                })),
            }],
            deadline_unix_ms: deadline(),
        };
        let compensate =
            |id: &str| v1::CompensateRequest { txn_id: id.into(), epoch: 1, deadline_unix_ms: 0 };
        let vote = |r: v1::ExecuteResponse| r.vote.unwrap().kind();

        // Duplicate Executes: one effect, the same answer.
        for _ in 0..2 {
            let response = client.execute(execute("dup")).await.unwrap().into_inner();
            assert_eq!(vote(response), v1::VoteKind::Yes, "{name}");
        }
        assert_eq!(cluster.counter(name, "acct").await, before - 7, "{name}: executed once");
        // Duplicate Compensates: undone once.
        for _ in 0..2 {
            client.compensate(compensate("dup")).await.unwrap();
        }
        assert_eq!(cluster.counter(name, "acct").await, before, "{name}: compensated once");
        let late = client.execute(execute("dup")).await.unwrap().into_inner();
        assert_eq!(late.vote.as_ref().unwrap().reason(), v1::NoReason::AlreadyAborted, "{name}");

        // Compensate first: a no-op that leaves a barrier; the late Execute is refused.
        client.compensate(compensate("reordered")).await.unwrap();
        let late = client.execute(execute("reordered")).await.unwrap().into_inner();
        assert_eq!(late.vote.unwrap().reason(), v1::NoReason::AlreadyAborted, "{name}");
        assert_eq!(cluster.counter(name, "acct").await, before, "{name}: nothing applied");

        // Bad input names the field.
        let error =
            client.execute(v1::ExecuteRequest { txn_id: String::new(), ..execute("x") }).await;
        let status = error.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}");
        assert!(status.message().contains("txn_id"), "{name}: {}", status.message());
    }
}

/// A compensation that cannot reach its participant is retried with backoff; past the
/// attention threshold the transaction shows NEEDS_ATTENTION (in GetTransaction and the list
/// filter). The coordinator is killed mid-compensation; after restart it resumes from its log,
/// and once the participant is back the step is compensated and the state clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_compensation_resumes_and_needs_attention_clears() {
    let mut cluster = Cluster::start(&[
        "--call-timeout-ms",
        "300",
        "--attention-after-attempts",
        "2",
        "--attention-retry-ms",
        "200",
    ])
    .await;
    seed(&cluster, "acct").await;
    // beta is paused: its Execute gets no answer, so the saga aborts and compensates beta
    // (which may or may not have executed) and then alpha.
    cluster.participants[1].process().signal("STOP").unwrap();
    let branches =
        vec![branch("alpha", vec![add("acct", -5)]), branch("beta", vec![add("acct", 5)])];
    let mut saga = request("stuck", v1::TxnMode::Saga, branches);
    saga.timeout_ms = 1_000;
    let response = cluster.submit(saga).await;
    assert_eq!(response.outcome(), v1::Outcome::Aborted);
    let info = cluster.settled("stuck", v1::TxnState::NeedsAttention).await;
    assert_eq!(states(&info)[1], v1::BranchState::Compensating);
    assert!(!info.branches[1].last_error.is_empty());
    assert!(cluster.listed(v1::TxnState::NeedsAttention).await.contains(&"stuck".to_string()));
    assert_eq!(cluster.counter("alpha", "acct").await, 95, "alpha waits for beta's compensation");

    // Kill the coordinator mid-compensation, restart it: it resumes from the log.
    cluster.coordinator.as_mut().unwrap().kill();
    cluster.start_coordinator().await;
    let info = cluster.info("stuck").await;
    assert!(
        matches!(info.state(), v1::TxnState::Compensating | v1::TxnState::NeedsAttention),
        "{:?}",
        info.state()
    );
    cluster.settled("stuck", v1::TxnState::NeedsAttention).await;

    cluster.participants[1].process().signal("CONT").unwrap();
    let info = cluster.settled("stuck", v1::TxnState::Aborted).await;
    assert_eq!(states(&info), vec![v1::BranchState::Compensated; 2]);
    assert!(!cluster.listed(v1::TxnState::NeedsAttention).await.contains(&"stuck".to_string()));
    assert_eq!(cluster.counter("alpha", "acct").await, 100);
    assert_eq!(cluster.counter("beta", "acct").await, 100, "beta's late Execute never applied");
}

/// The sled participant refuses to write a before-image over a newer value: a compensation
/// whose key changed since the step stays NEEDS_ATTENTION (never dropped, never forced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_key_changed_is_not_undone_and_needs_attention() {
    let cluster = Cluster::start(&[
        "--call-timeout-ms",
        "500",
        "--attention-after-attempts",
        "2",
        "--attention-retry-ms",
        "200",
    ])
    .await;
    // A saga: alpha's step writes k, then the gateway declines (the card holds nothing), so
    // alpha's step must be compensated.
    let first = request(
        "changed",
        v1::TxnMode::Saga,
        vec![branch("alpha", vec![put("k", "saga")]), branch("gateway", vec![add("card", -1)])],
    );
    // Meet the race on purpose: alpha executes the step first (as the coordinator would), a
    // two-phase transaction then rewrites k, and only then does the coordinator run the saga.
    let mut client = cluster.participant("alpha");
    let deadline = u64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
    )
    .unwrap()
        + 10_000;
    let executed = client
        .execute(v1::ExecuteRequest {
            txn_id: "changed".into(),
            epoch: 1,
            operations: vec![put("k", "saga")],
            deadline_unix_ms: deadline,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(executed.vote.unwrap().kind(), v1::VoteKind::Yes);
    let rewrite =
        request("rewrite", v1::TxnMode::TwoPhase, vec![branch("alpha", vec![put("k", "later")])]);
    assert_eq!(cluster.submit(rewrite).await.outcome(), v1::Outcome::Committed);
    // The coordinator now runs the saga: alpha's Execute is a duplicate (already executed),
    // the gateway declines, and alpha's compensation is refused.
    let response = cluster.submit(first).await;
    assert_eq!(response.outcome(), v1::Outcome::Aborted);
    let info = cluster.settled("changed", v1::TxnState::NeedsAttention).await;
    assert!(
        info.branches[0].last_error.contains("changed since"),
        "{}",
        info.branches[0].last_error
    );
    let value = client.get(v1::GetRequest { key: b"k".to_vec() }).await.unwrap().into_inner();
    assert_eq!(value.entry.unwrap().value, b"later".to_vec(), "the newer value stays");
}

/// AUTO mode: the sled participants prepare, the gateway (its Prepare is UNIMPLEMENTED) runs
/// as a saga step after they prepared, then the decision. A declined charge aborts the
/// prepared branches; a NO vote stops the saga step from ever executing. TWO_PHASE mode
/// refuses the gateway with the way out named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_transactions_prepare_the_two_phase_branches_and_run_the_gateway_as_a_step() {
    let cluster = Cluster::start(&[]).await;
    seed(&cluster, "acct").await;
    let order = |id: &str, amount: i64, card: i64| {
        request(
            id,
            v1::TxnMode::Auto,
            vec![
                branch("alpha", vec![add("acct", -amount)]),
                branch("gateway", vec![add("card", card)]),
                branch("beta", vec![add("acct", amount)]),
            ],
        )
    };
    // Fund the card (a saga step alone).
    let fund = request("fund", v1::TxnMode::Saga, vec![branch("gateway", vec![add("card", 50)])]);
    assert_eq!(cluster.submit(fund).await.outcome(), v1::Outcome::Committed);

    let response = cluster.submit(order("paid", 10, -20)).await;
    assert_eq!(response.outcome(), v1::Outcome::Committed, "{:?}", response.abort);
    let info = cluster.settled("paid", v1::TxnState::Committed).await;
    assert_eq!(info.mode(), v1::TxnMode::Auto);
    let saga: Vec<bool> = info.branches.iter().map(|b| b.saga_step).collect();
    assert_eq!(saga, vec![false, true, false]);
    assert_eq!(cluster.counter("alpha", "acct").await, 90);
    assert_eq!(cluster.counter("beta", "acct").await, 110);
    assert_eq!(cluster.counter("gateway", "card").await, 30);

    // Declined: the prepared branches abort; nothing changes anywhere.
    let response = cluster.submit(order("declined", 10, -1_000)).await;
    assert_eq!(response.outcome(), v1::Outcome::Aborted);
    let abort = response.abort.unwrap();
    assert_eq!(abort.kind(), v1::abort_cause::Kind::StepFailed);
    assert_eq!(abort.participant, "gateway");
    cluster.settled("declined", v1::TxnState::Aborted).await;
    assert_eq!(cluster.counter("alpha", "acct").await, 90);
    assert_eq!(cluster.counter("beta", "acct").await, 110);
    assert_eq!(cluster.counter("gateway", "card").await, 30);

    // A NO vote: the gateway is never charged.
    let response = cluster.submit(order("refused", 1_000, -5)).await;
    assert_eq!(response.outcome(), v1::Outcome::Aborted);
    assert_eq!(response.abort.unwrap().kind(), v1::abort_cause::Kind::VoteNo);
    let info = cluster.settled("refused", v1::TxnState::Aborted).await;
    assert_ne!(states(&info)[1], v1::BranchState::Compensated, "never executed");
    assert_eq!(cluster.counter("gateway", "card").await, 30);

    // A saga over the gateway and a sled participant: the gateway charges, gamma's step fails,
    // and the charge is refunded. (In AUTO mode gamma would prepare and vote NO before the
    // gateway ever ran.)
    let mixed = request(
        "refunded",
        v1::TxnMode::Saga,
        vec![branch("gateway", vec![add("card", -5)]), branch("gamma", vec![add("acct", -1_000)])],
    );
    let response = cluster.submit(mixed).await;
    assert_eq!(response.outcome(), v1::Outcome::Aborted);
    let info = cluster.settled("refunded", v1::TxnState::Aborted).await;
    assert_eq!(states(&info)[0], v1::BranchState::Compensated);
    assert_eq!(cluster.counter("gateway", "card").await, 30, "the charge was refunded");

    // TWO_PHASE with a participant that cannot prepare: aborted, naming the way out.
    let strict = request(
        "strict",
        v1::TxnMode::TwoPhase,
        vec![branch("alpha", vec![add("acct", -1)]), branch("gateway", vec![add("card", -1)])],
    );
    let response = cluster.submit(strict).await;
    assert_eq!(response.outcome(), v1::Outcome::Aborted);
    assert!(response.abort.unwrap().message.contains("mode AUTO or SAGA"));
    assert_eq!(cluster.counter("alpha", "acct").await, 90);

    // depends_on in TWO_PHASE mode is bad input, naming the field.
    let mut bad = request(
        "bad",
        v1::TxnMode::TwoPhase,
        vec![branch("alpha", vec![add("acct", 1)]), branch("beta", vec![add("acct", 1)])],
    );
    bad.branches[1].depends_on = vec![0];
    let status = cluster.client().submit(bad.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("depends_on"), "{}", status.message());
    bad.mode = v1::TxnMode::Saga.into();
    bad.branches[1].depends_on = vec![1];
    let status = cluster.client().submit(bad).await.unwrap_err();
    assert!(status.message().contains("branches[1].depends_on"), "{}", status.message());
}

fn operation_add(key: &str, delta: i64) -> concord_core::types::Operation {
    concord_core::types::Operation::CounterAdd {
        key: key.as_bytes().to_vec(),
        delta,
        lower_bound: Some(0),
        upper_bound: None,
    }
}

/// Begin, stage at two participants (each enlists itself), commit: both apply. A rolled back
/// transaction applies nothing and its participants drop what they staged; one abandoned past
/// its deadline aborts on its own; Commit of an id never begun is answered ABORTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_transactions_commit_roll_back_and_abort_when_abandoned() {
    let cluster = Cluster::start(&[]).await;
    seed(&cluster, "acct").await;
    let client = concord_client::Client::connect(&cluster.coordinator_address.to_string()).unwrap();
    let reader = |name: &str| {
        let address =
            cluster.participants[NAMES.iter().position(|n| *n == name).unwrap()].address();
        concord_client::ParticipantReader::connect(&address.to_string(), Duration::from_secs(5))
            .unwrap()
    };

    // Commit.
    let (txn, deadline) = client.begin(Some("order-1"), 5_000).await.unwrap();
    assert_eq!(txn, "order-1");
    assert!(deadline > 0);
    assert_eq!(reader("alpha").stage(&txn, vec![operation_add("acct", -30)]).await.unwrap(), 1);
    assert_eq!(reader("alpha").stage(&txn, vec![operation_add("acct", -5)]).await.unwrap(), 2);
    assert_eq!(reader("beta").stage(&txn, vec![operation_add("acct", 35)]).await.unwrap(), 1);
    assert_eq!(cluster.counter("alpha", "acct").await, 100, "staged is not applied");
    let committed = client.commit(&txn).await.unwrap();
    assert_eq!(committed.outcome, concord_core::types::Outcome::Committed);
    assert_eq!(cluster.counter("alpha", "acct").await, 65);
    assert_eq!(cluster.counter("beta", "acct").await, 135);
    let info = cluster.settled(&txn, v1::TxnState::Committed).await;
    assert_eq!(info.branches.len(), 2, "the enlisted participants");
    let again = client.commit(&txn).await.unwrap();
    assert_eq!(again.outcome, concord_core::types::Outcome::Committed, "Commit is idempotent");
    let late = reader("gamma").stage(&txn, vec![operation_add("acct", 1)]).await;
    assert!(late.is_err(), "nothing can be staged once committed");

    // Rollback.
    let (txn, _) = client.begin(None, 5_000).await.unwrap();
    reader("alpha").stage(&txn, vec![operation_add("acct", -1)]).await.unwrap();
    assert!(cluster.listed(v1::TxnState::Open).await.contains(&txn), "listed while open");
    assert_eq!(cluster.info(&txn).await.branches.len(), 1, "alpha enlisted itself");
    let rolled_back = client.rollback(&txn).await.unwrap();
    assert_eq!(rolled_back.outcome, concord_core::types::Outcome::Aborted);
    assert_eq!(rolled_back.abort.unwrap().kind, concord_client::AbortKind::ClientRollback);
    let after = reader("alpha").stage(&txn, vec![operation_add("acct", -1)]).await;
    assert!(after.is_err(), "the participant dropped it and the coordinator refuses to enlist");
    let commit = client.commit(&txn).await.unwrap();
    assert_eq!(commit.outcome, concord_core::types::Outcome::Aborted, "rolled back stays so");
    assert_eq!(cluster.counter("alpha", "acct").await, 65);

    // Abandoned: aborts at its deadline without a Commit.
    let (txn, _) = client.begin(None, 300).await.unwrap();
    reader("alpha").stage(&txn, vec![operation_add("acct", -1)]).await.unwrap();
    let info = cluster.settled(&txn, v1::TxnState::Aborted).await;
    assert_eq!(info.abort.unwrap().kind(), v1::abort_cause::Kind::Deadline);
    let late = client.commit(&txn).await.unwrap();
    assert_eq!(late.outcome, concord_core::types::Outcome::Aborted);
    assert_eq!(cluster.counter("alpha", "acct").await, 65);

    // A NO at Commit (a bound) aborts it; an id never begun is fenced and aborted; staging
    // under an unknown id is refused with FAILED_PRECONDITION.
    let (txn, _) = client.begin(None, 5_000).await.unwrap();
    reader("alpha").stage(&txn, vec![operation_add("acct", -1_000)]).await.unwrap();
    reader("beta").stage(&txn, vec![operation_add("acct", 1_000)]).await.unwrap();
    let refused = client.commit(&txn).await.unwrap();
    assert_eq!(refused.outcome, concord_core::types::Outcome::Aborted);
    assert_eq!(refused.abort.unwrap().kind, concord_client::AbortKind::VoteNo);
    assert_eq!(cluster.counter("beta", "acct").await, 135);
    let unknown = client.commit("never-begun").await.unwrap();
    assert_eq!(unknown.outcome, concord_core::types::Outcome::Aborted);
    let status = cluster
        .participant("alpha")
        .stage(v1::StageRequest { txn_id: "no-such".into(), operations: vec![add("acct", 1)] })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{}", status.message());
    // Bad input names the field.
    let status = client.begin(Some("bad id"), 1_000).await.unwrap_err();
    assert!(status.to_string().contains("txn_id"), "{status}");
}

/// A participant restarted between Stage and Commit has lost what it staged (staging is not
/// logged): its Prepare votes NO and the transaction aborts everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_restarted_after_staging_votes_no() {
    let mut cluster = Cluster::start(&[]).await;
    seed(&cluster, "acct").await;
    let client = concord_client::Client::connect(&cluster.coordinator_address.to_string()).unwrap();
    let (txn, _) = client.begin(None, 10_000).await.unwrap();
    for name in ["alpha", "beta"] {
        let stage = v1::StageRequest { txn_id: txn.clone(), operations: vec![add("acct", 1)] };
        cluster.participant(name).stage(stage).await.unwrap();
    }
    cluster.participants[0].restart().await.unwrap();
    // The coordinator still dials alpha's old address: restart keeps the port when it can.
    let response = client.commit(&txn).await.unwrap();
    assert_eq!(response.outcome, concord_core::types::Outcome::Aborted);
    assert_eq!(cluster.counter("alpha", "acct").await, 100);
    assert_eq!(cluster.counter("beta", "acct").await, 100);
}
