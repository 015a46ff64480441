//! The coordinator as a real process (`concord coordinator`) with three real participants on
//! 127.0.0.1: two-phase commit end to end, aborts that release every lock, crashes of the
//! coordinator on either side of its forced decision (via test-build failpoints) and of a
//! participant after its YES or before its Commit, duplicate submissions, fencing, and bad
//! input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{branch, counter_add, now_ms};

use std::net::SocketAddr;
use std::time::Duration;

use concord_proto::v1;
use concord_proto::v1::coordinator_client::CoordinatorClient;
use concord_proto::v1::operation::Kind;
use support::{ConcordProcess, EXIT_TIMEOUT, ParticipantProcess, eventually, reserve_port};
use tonic::Code;
use tonic::transport::Channel;

/// How long recovery may take to bring every participant to the decided outcome.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);
const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];

/// A coordinator and three participants under one temporary directory.
struct Cluster {
    /// Flags added to every coordinator start.
    coordinator_extra: Vec<String>,
    root: tempfile::TempDir,
    coordinator_address: SocketAddr,
    coordinator: Option<ConcordProcess>,
    participants: Vec<ParticipantProcess>,
    coordinator_starts: u32,
}

impl Cluster {
    /// Starts three participants, then the coordinator with `env` (failpoints).
    async fn start(coordinator_env: &[(&str, &str)]) -> Cluster {
        Cluster::start_with(coordinator_env, &[]).await
    }

    /// As [`Cluster::start`], with failpoints for the participant `alpha`.
    async fn start_with(coordinator_env: &[(&str, &str)], alpha_env: &[(&str, &str)]) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let coordinator_address = reserve_port();
        let mut participants = Vec::new();
        for name in NAMES {
            let dir = root.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let participant = if name == "alpha" && !alpha_env.is_empty() {
                ParticipantProcess::start_with_env(&dir, name, Some(coordinator_address), alpha_env)
                    .await
            } else {
                ParticipantProcess::start(&dir, name, Some(coordinator_address), &[]).await
            };
            participants.push(participant.unwrap());
        }
        let mut cluster = Cluster {
            coordinator_extra: Vec::new(),
            root,
            coordinator_address,
            coordinator: None,
            participants,
            coordinator_starts: 0,
        };
        cluster.start_coordinator(coordinator_env).await;
        cluster
    }

    fn coordinator_args(&self) -> Vec<String> {
        let mut args = vec![
            "coordinator".to_string(),
            "--listen".into(),
            self.coordinator_address.to_string(),
            "--data-dir".into(),
            self.root.path().join("coordinator").display().to_string(),
            "--call-timeout-ms".into(),
            "1000".into(),
        ];
        for (name, participant) in NAMES.iter().zip(&self.participants) {
            args.push("--participant".into());
            args.push(format!("{name}={}", participant.address()));
        }
        args.extend(self.coordinator_extra.iter().cloned());
        args
    }

    async fn start_coordinator(&mut self, env: &[(&str, &str)]) {
        self.coordinator_starts += 1;
        let stderr =
            self.root.path().join(format!("coordinator-{}.stderr", self.coordinator_starts));
        let args = self.coordinator_args();
        self.coordinator = Some(ConcordProcess::start_with_env(&args, env, &stderr).await.unwrap());
    }

    /// Waits for the coordinator to exit (after a failpoint aborted it), then starts it again
    /// on the same data directory and port, without failpoints.
    async fn restart_coordinator_after_crash(&mut self) {
        let mut crashed = self.coordinator.take().unwrap();
        let status = crashed.wait_exit(EXIT_TIMEOUT).await.unwrap();
        assert!(!status.success(), "the failpoint aborts the coordinator: {status:?}");
        self.start_coordinator(&[]).await;
    }

    fn client(&self) -> CoordinatorClient<Channel> {
        CoordinatorClient::new(support::channel(self.coordinator_address))
    }

    fn participant(&self, name: &str) -> &ParticipantProcess {
        &self.participants[NAMES.iter().position(|n| *n == name).unwrap()]
    }

    fn participant_mut(&mut self, name: &str) -> &mut ParticipantProcess {
        &mut self.participants[NAMES.iter().position(|n| *n == name).unwrap()]
    }

    /// The committed counter at `name`/`key` (0 when absent).
    async fn counter(&self, name: &str, key: &str) -> i64 {
        let response = self
            .participant(name)
            .client()
            .get(v1::GetRequest { key: key.as_bytes().to_vec() })
            .await
            .unwrap()
            .into_inner();
        response.entry.map_or(0, |e| i64::from_be_bytes(e.value.try_into().unwrap()))
    }

    /// In-doubt branches at `name`.
    async fn in_doubt(&self, name: &str) -> usize {
        self.participant(name)
            .client()
            .list_in_doubt(v1::ListInDoubtRequest::default())
            .await
            .unwrap()
            .into_inner()
            .branches
            .len()
    }
}

fn add(key: &str, delta: i64) -> v1::Operation {
    counter_add(key, delta, Some(0), None)
}

/// +10 on `key` at each of the three participants.
fn credit_all(txn_id: &str, key: &str) -> v1::SubmitRequest {
    v1::SubmitRequest {
        txn_id: txn_id.to_string(),
        branches: NAMES.iter().map(|name| branch(name, vec![add(key, 10)])).collect(),
        ..v1::SubmitRequest::default()
    }
}

async fn get(client: &mut CoordinatorClient<Channel>, txn_id: &str) -> v1::TransactionInfo {
    client
        .get_transaction(v1::GetTransactionRequest {
            txn_id: txn_id.into(),
            fence_unknown: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .transaction
        .unwrap()
}

/// Waits until every participant shows `expected` for `key` and has nothing in doubt; on
/// timeout, fails with what each participant last showed.
async fn settle(cluster: &Cluster, key: &str, expected: i64) {
    let deadline = tokio::time::Instant::now() + RECOVERY_TIMEOUT;
    loop {
        let mut seen = Vec::new();
        for name in NAMES {
            seen.push((name, cluster.counter(name, key).await, cluster.in_doubt(name).await));
        }
        if seen.iter().all(|(_, value, in_doubt)| *value == expected && *in_doubt == 0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "participants did not settle at {key}={expected} with nothing in doubt within \
             {RECOVERY_TIMEOUT:?}; (name, value, in doubt): {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A transaction across three participants commits on all of them; GetTransaction ends at
/// COMMITTED once every Commit is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_across_three_participants_applies_everywhere() {
    let cluster = Cluster::start(&[]).await;
    let mut client = cluster.client();
    let response = client.submit(credit_all("t-commit", "k")).await.unwrap().into_inner();
    assert_eq!(response.outcome(), v1::Outcome::Committed);
    assert_eq!(response.txn_id, "t-commit");
    settle(&cluster, "k", 10).await;
    let info = eventually("all commits acknowledged", RECOVERY_TIMEOUT, || {
        let mut client = client.clone();
        async move {
            Some(get(&mut client, "t-commit").await)
                .filter(|i| i.state() == v1::TxnState::Committed)
        }
    })
    .await;
    assert!(info.branches.iter().all(|b| b.state() == v1::BranchState::Committed));
    assert!(info.decided_unix_ms > 0);
}

/// A NO vote aborts everywhere with the reason and releases every lock: nothing is applied and
/// the same keys commit in the next transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_vote_aborts_everywhere_and_releases_every_lock() {
    let cluster = Cluster::start(&[]).await;
    let mut client = cluster.client();
    let mut request = credit_all("t-no", "k");
    request.branches[2].operations = vec![add("k", -1)]; // gamma would go below 0
    let response = client.submit(request).await.unwrap().into_inner();
    assert_eq!(response.outcome(), v1::Outcome::Aborted);
    let abort = response.abort.unwrap();
    assert_eq!(abort.kind(), v1::abort_cause::Kind::VoteNo);
    assert_eq!(abort.participant, "gamma");
    assert_eq!(abort.vote_reason(), v1::NoReason::BoundCrossed);
    settle(&cluster, "k", 0).await;
    let next = client.submit(credit_all("t-after", "k")).await.unwrap().into_inner();
    assert_eq!(next.outcome(), v1::Outcome::Committed, "every lock was released");
    settle(&cluster, "k", 10).await;
}

/// A participant that cannot be reached aborts the transaction (never read as NO or done), and
/// the participants that prepared release their locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_participant_aborts_and_the_others_release() {
    let mut cluster = Cluster::start(&[]).await;
    cluster.participant_mut("gamma").kill();
    let mut client = cluster.client();
    let response = client.submit(credit_all("t-unreachable", "k")).await.unwrap().into_inner();
    assert_eq!(response.outcome(), v1::Outcome::Aborted);
    let abort = response.abort.unwrap();
    assert!(
        matches!(
            abort.kind(),
            v1::abort_cause::Kind::ParticipantUnreachable
                | v1::abort_cause::Kind::ParticipantTimeout
        ),
        "{abort:?}"
    );
    assert_eq!(abort.participant, "gamma");
    for name in ["alpha", "beta"] {
        eventually("the prepared branch is aborted", RECOVERY_TIMEOUT, || async {
            (cluster.in_doubt(name).await == 0).then_some(())
        })
        .await;
        assert_eq!(cluster.counter(name, "k").await, 0);
    }
    let request = v1::SubmitRequest {
        txn_id: "t-two".into(),
        branches: vec![branch("alpha", vec![add("k", 1)]), branch("beta", vec![add("k", 1)])],
        ..v1::SubmitRequest::default()
    };
    assert_eq!(
        client.submit(request).await.unwrap().into_inner().outcome(),
        v1::Outcome::Committed
    );
}

/// The coordinator killed after its COMMIT decision is durable but before any Commit was sent:
/// after restart the transaction commits everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_after_the_decision_commits_everywhere_after_restart() {
    let mut cluster = Cluster::start(&[("CONCORD_FAILPOINTS", "coordinator.after_decision")]).await;
    let mut client = cluster.client();
    let error = client.submit(credit_all("t-crash-after", "k")).await.unwrap_err();
    assert_ne!(error.code(), Code::Ok);
    for name in NAMES {
        assert_eq!(cluster.in_doubt(name).await, 1, "{name} voted YES and waits");
    }
    cluster.restart_coordinator_after_crash().await;
    settle(&cluster, "k", 10).await;
    let mut client = cluster.client();
    let info = get(&mut client, "t-crash-after").await;
    assert_eq!(info.outcome(), v1::Outcome::Committed);
}

/// The coordinator killed with every vote in but before its decision: after restart the
/// transaction is aborted everywhere (presumed abort) and every lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_before_the_decision_aborts_everywhere_after_restart() {
    let mut cluster =
        Cluster::start(&[("CONCORD_FAILPOINTS", "coordinator.before_decision")]).await;
    let mut client = cluster.client();
    assert!(client.submit(credit_all("t-crash-before", "k")).await.is_err());
    cluster.restart_coordinator_after_crash().await;
    settle(&cluster, "k", 0).await;
    let mut client = cluster.client();
    let info = client
        .get_transaction(v1::GetTransactionRequest {
            txn_id: "t-crash-before".into(),
            fence_unknown: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .transaction
        .unwrap();
    assert_eq!(info.outcome(), v1::Outcome::Aborted);
    let next = client.submit(credit_all("t-next", "k")).await.unwrap().into_inner();
    assert_eq!(next.outcome(), v1::Outcome::Committed, "locks were released");
}

/// A participant killed right after its YES is durable: the coordinator hears nothing and
/// aborts; the restarted participant finds the branch in doubt, asks, and releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_killed_after_its_yes_is_resolved_after_restart() {
    let mut cluster =
        Cluster::start_with(&[], &[("CONCORD_FAILPOINTS", "participant.after_prepare")]).await;
    let mut client = cluster.client();
    let response = client.submit(credit_all("t-yes-crash", "k")).await.unwrap().into_inner();
    assert_eq!(response.outcome(), v1::Outcome::Aborted);
    let alpha = cluster.participant_mut("alpha");
    let status = alpha.process().wait_exit(EXIT_TIMEOUT).await.unwrap();
    assert!(!status.success());
    alpha.restart().await.unwrap();
    settle(&cluster, "k", 0).await;
}

/// A participant killed when Commit arrives: the coordinator keeps delivering (with backoff)
/// until the restarted participant acknowledges, and the transaction commits everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_killed_before_commit_gets_it_after_restart() {
    let mut cluster =
        Cluster::start_with(&[], &[("CONCORD_FAILPOINTS", "participant.before_commit")]).await;
    let mut client = cluster.client();
    // Submit waits for delivery only until the deadline (plus one call): keep it short.
    let request = v1::SubmitRequest { timeout_ms: 1_500, ..credit_all("t-commit-crash", "k") };
    let response = client.submit(request).await.unwrap().into_inner();
    assert_eq!(response.outcome(), v1::Outcome::Committed, "the decision was durable");
    assert_eq!(response.state(), v1::TxnState::Committing, "alpha never acknowledged");
    let alpha = cluster.participant_mut("alpha");
    assert!(!alpha.process().wait_exit(EXIT_TIMEOUT).await.unwrap().success());
    let info = get(&mut client, "t-commit-crash").await;
    assert_eq!(info.state(), v1::TxnState::Committing, "alpha has not acknowledged");
    cluster.participant_mut("alpha").restart().await.unwrap();
    settle(&cluster, "k", 10).await;
    let info = eventually("delivery finishes", RECOVERY_TIMEOUT, || {
        let mut client = client.clone();
        async move {
            Some(get(&mut client, "t-commit-crash").await)
                .filter(|i| i.state() == v1::TxnState::Committed)
        }
    })
    .await;
    assert!(info.branches[0].delivery_attempts >= 1);
}

/// The same txn_id submitted twice gets the same outcome and is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_submit_returns_the_outcome_and_applies_once() {
    let cluster = Cluster::start(&[]).await;
    let mut client = cluster.client();
    let first = client.submit(credit_all("t-dup", "k")).await.unwrap().into_inner();
    let second = client.submit(credit_all("t-dup", "k")).await.unwrap().into_inner();
    assert_eq!(first.outcome(), v1::Outcome::Committed);
    assert_eq!(second.outcome(), v1::Outcome::Committed);
    settle(&cluster, "k", 10).await;

    // Concurrent duplicates: still one effect.
    let submits: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.submit(credit_all("t-dup-2", "k")).await })
        })
        .collect();
    for submit in submits {
        let outcome = submit.await.unwrap().unwrap().into_inner().outcome();
        assert!(matches!(outcome, v1::Outcome::Committed | v1::Outcome::Pending), "{outcome:?}");
    }
    settle(&cluster, "k", 20).await;
}

/// A single-branch transaction commits in one phase; a read-only check commits with nothing
/// applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_phase_and_read_only_transactions_commit() {
    let cluster = Cluster::start(&[]).await;
    let mut client = cluster.client();
    let one = v1::SubmitRequest {
        txn_id: "t-one".into(),
        branches: vec![branch("beta", vec![add("k", 7)])],
        ..v1::SubmitRequest::default()
    };
    let response = client.submit(one).await.unwrap().into_inner();
    assert_eq!(response.outcome(), v1::Outcome::Committed);
    assert_eq!(response.state(), v1::TxnState::Committed);
    assert_eq!(cluster.counter("beta", "k").await, 7);
    let check = v1::Operation {
        kind: Some(Kind::Check(v1::Check {
            key: b"nothing".to_vec(),
            expect: Some(v1::check::Expect::Absent(v1::Absent {})),
        })),
    };
    let read_only = v1::SubmitRequest {
        txn_id: "t-read".into(),
        branches: vec![branch("alpha", vec![check.clone()]), branch("gamma", vec![check])],
        ..v1::SubmitRequest::default()
    };
    assert_eq!(
        client.submit(read_only).await.unwrap().into_inner().outcome(),
        v1::Outcome::Committed
    );
}

/// An unknown id is NOT_FOUND, fencing makes it ABORTED for good (a later Submit with that id
/// returns ABORTED without running), and ResolveTransaction presumes abort for unknown ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_an_unknown_id_aborts_it_for_good() {
    let cluster = Cluster::start(&[]).await;
    let mut client = cluster.client();
    let missing = client
        .get_transaction(v1::GetTransactionRequest {
            txn_id: "t-late".into(),
            fence_unknown: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let fenced = client
        .get_transaction(v1::GetTransactionRequest {
            txn_id: "t-late".into(),
            fence_unknown: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .transaction
        .unwrap();
    assert_eq!(fenced.outcome(), v1::Outcome::Aborted);
    let late = client.submit(credit_all("t-late", "k")).await.unwrap().into_inner();
    assert_eq!(late.outcome(), v1::Outcome::Aborted);
    assert_eq!(late.abort.unwrap().kind(), v1::abort_cause::Kind::Fenced);
    settle(&cluster, "k", 0).await;
    let resolved = client
        .resolve_transaction(v1::ResolveTransactionRequest {
            txn_id: "never-seen".into(),
            participant: "alpha".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.outcome(), v1::Outcome::Aborted);
}

/// Every kind of bad input is INVALID_ARGUMENT naming the field, and nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let cluster = Cluster::start(&[]).await;
    let mut client = cluster.client();
    let ok = credit_all("t-bad", "k");
    let long_key = "k".repeat(1025);
    let cases: Vec<(&str, v1::SubmitRequest)> = vec![
        ("txn_id", v1::SubmitRequest { txn_id: "has space".into(), ..ok.clone() }),
        ("txn_id", v1::SubmitRequest { txn_id: "x".repeat(129), ..ok.clone() }),
        ("branches", v1::SubmitRequest { branches: vec![], ..ok.clone() }),
        (
            "branches",
            v1::SubmitRequest {
                branches: (0..17).map(|i| branch(&format!("p{i}"), vec![add("k", 1)])).collect(),
                ..ok.clone()
            },
        ),
        (
            "branches[0].participant",
            v1::SubmitRequest { branches: vec![branch("nobody", vec![add("k", 1)])], ..ok.clone() },
        ),
        (
            "branches[1].participant",
            v1::SubmitRequest {
                branches: vec![
                    branch("alpha", vec![add("k", 1)]),
                    branch("alpha", vec![add("j", 1)]),
                ],
                ..ok.clone()
            },
        ),
        (
            "branches[0].operations",
            v1::SubmitRequest { branches: vec![branch("alpha", vec![])], ..ok.clone() },
        ),
        (
            "branches[0].operations[0]",
            v1::SubmitRequest {
                branches: vec![branch("alpha", vec![v1::Operation::default()])],
                ..ok.clone()
            },
        ),
        (
            "branches[0].operations[0].key",
            v1::SubmitRequest {
                branches: vec![branch("alpha", vec![add(&long_key, 1)])],
                ..ok.clone()
            },
        ),
        (
            "branches[0].operations",
            v1::SubmitRequest {
                branches: vec![branch(
                    "alpha",
                    (0..65).map(|i| add(&format!("k{i}"), 1)).collect(),
                )],
                ..ok.clone()
            },
        ),
        ("timeout_ms", v1::SubmitRequest { timeout_ms: 60_001, ..ok.clone() }),
        (
            "branches.depends_on",
            v1::SubmitRequest {
                branches: vec![
                    branch("alpha", vec![add("k", 1)]),
                    v1::Branch { depends_on: vec![0], ..branch("beta", vec![add("k", 1)]) },
                ],
                ..ok.clone()
            },
        ),
        ("mode", v1::SubmitRequest { mode: 99, ..ok.clone() }),
    ];
    for (field, request) in cases {
        let error = client.submit(request).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{field}: {error:?}");
        assert!(error.message().starts_with(&format!("{field}:")), "{field}: {}", error.message());
    }
    for (txn_id, fence) in [("", false), ("bad/id", true)] {
        let error = client
            .get_transaction(v1::GetTransactionRequest {
                txn_id: txn_id.into(),
                fence_unknown: fence,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().starts_with("txn_id:"), "{}", error.message());
    }
    let error = client
        .list_transactions(v1::ListTransactionsRequest { state: 42, ..Default::default() })
        .await
        .unwrap_err();
    assert!(error.message().starts_with("state:"), "{}", error.message());
    let listed = client.list_transactions(v1::ListTransactionsRequest::default()).await.unwrap();
    assert!(listed.into_inner().transactions.is_empty(), "nothing ran");
    settle(&cluster, "k", 0).await;
}

/// Listing pages through every transaction once, filtered by state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_every_transaction() {
    let cluster = Cluster::start(&[]).await;
    let mut client = cluster.client();
    for i in 0..5 {
        client.submit(credit_all(&format!("t-{i}"), "k")).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_transactions(v1::ListTransactionsRequest {
                state: v1::TxnState::Unspecified.into(),
                page_size: 2,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.transactions.len() <= 2);
        seen.extend(page.transactions.into_iter().map(|t| t.txn_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, (0..5).map(|i| format!("t-{i}")).collect::<Vec<_>>());
    let aborted = client
        .list_transactions(v1::ListTransactionsRequest {
            state: v1::TxnState::Aborted.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(aborted.transactions.is_empty());
}

/// With frequent checkpoints and small segments the decision log stays small, and after a
/// SIGKILL the restarted coordinator still knows every outcome, from the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_bound_the_log_and_keep_every_outcome_across_sigkill() {
    let mut cluster = Cluster::start(&[]).await;
    cluster.coordinator_extra =
        ["--checkpoint-every", "20", "--segment-bytes", "4096"].map(String::from).to_vec();
    cluster.coordinator.take().unwrap().kill();
    cluster.start_coordinator(&[]).await;
    let mut client = cluster.client();
    let mut expected = Vec::new();
    for i in 0..60 {
        let id = format!("t-{i:02}");
        let mut request = credit_all(&id, "k");
        if i % 3 == 0 {
            request.branches[1].operations = vec![add("k", -1_000_000)]; // votes NO
        }
        let outcome = client.submit(request).await.unwrap().into_inner().outcome();
        expected.push((id, outcome));
    }
    let wal_dir = cluster.root.path().join("coordinator").join("wal");
    let segments = || {
        std::fs::read_dir(&wal_dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".wal"))
            .count()
    };
    eventually("a checkpoint releases old segments", Duration::from_secs(10), || async {
        (segments() <= 4).then_some(())
    })
    .await;
    cluster.coordinator.as_mut().unwrap().kill();
    cluster.coordinator.take();
    cluster.start_coordinator(&[]).await;
    let mut client = cluster.client();
    for (id, outcome) in &expected {
        assert_eq!(get(&mut client, id).await.outcome(), *outcome, "{id}");
    }
    let committed = expected.iter().filter(|(_, o)| *o == v1::Outcome::Committed).count();
    assert_eq!(committed, 40, "every third transaction votes NO, the rest commit");
    settle(&cluster, "k", 10 * 40).await;
}

/// Beyond `--max-inflight` undecided transactions, Submit is RESOURCE_EXHAUSTED at once; the
/// slot frees when the first transaction is decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submits_beyond_the_inflight_limit_are_resource_exhausted() {
    let mut cluster = Cluster::start(&[]).await;
    cluster.coordinator_extra = ["--max-inflight", "1"].map(String::from).to_vec();
    cluster.coordinator.take().unwrap().kill();
    cluster.start_coordinator(&[]).await;
    // A paused participant never answers: the first transaction holds the only slot until its
    // deadline.
    cluster.participant_mut("gamma").process().signal("STOP").unwrap();
    let mut first_client = cluster.client();
    let slow = v1::SubmitRequest { timeout_ms: 1_500, ..credit_all("t-slow", "k") };
    let first = tokio::spawn(async move { first_client.submit(slow).await });
    let mut client = cluster.client();
    eventually("t-slow holds the slot", Duration::from_secs(5), || {
        let mut client = client.clone();
        async move {
            let request = v1::GetTransactionRequest {
                txn_id: "t-slow".into(),
                fence_unknown: false,
                ..Default::default()
            };
            let info = client.get_transaction(request).await.ok()?.into_inner().transaction?;
            (info.state() == v1::TxnState::Preparing).then_some(())
        }
    })
    .await;
    // A transaction avoiding gamma would commit at once if it got a slot.
    let probe = v1::SubmitRequest {
        txn_id: "t-probe".into(),
        branches: vec![branch("alpha", vec![add("p", 1)]), branch("beta", vec![add("p", 1)])],
        ..v1::SubmitRequest::default()
    };
    let refused = client.submit(probe).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("in flight"), "{}", refused.message());
    let first = first.await.unwrap().unwrap().into_inner();
    assert_eq!(first.outcome(), v1::Outcome::Aborted, "gamma never answered before the deadline");
    cluster.participant_mut("gamma").process().signal("CONT").unwrap();
    let again = client.submit(credit_all("t-second", "j")).await.unwrap().into_inner();
    assert_eq!(again.outcome(), v1::Outcome::Committed, "a refused id can be submitted again");
}

/// The coordinator takes its settings from a TOML file, flags overriding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_reads_its_settings_from_a_toml_file() {
    let mut cluster = Cluster::start(&[]).await;
    cluster.coordinator.take().unwrap().kill();
    let config = cluster.root.path().join("coordinator.toml");
    let mut text = format!(
        "listen = \"127.0.0.1:1\"\ndata_dir = {:?}\ncall_timeout_ms = 1000\n[participants]\n",
        cluster.root.path().join("coordinator").display().to_string()
    );
    for (name, participant) in NAMES.iter().zip(&cluster.participants) {
        text.push_str(&format!("{name} = \"{}\"\n", participant.address()));
    }
    std::fs::write(&config, text).unwrap();
    let args = vec![
        "coordinator".to_string(),
        "--config".into(),
        config.display().to_string(),
        "--listen".into(), // overrides the file's unusable address
        cluster.coordinator_address.to_string(),
    ];
    let stderr = cluster.root.path().join("coordinator-toml.stderr");
    cluster.coordinator = Some(ConcordProcess::start(&args, &stderr).await.unwrap());
    let mut client = cluster.client();
    let response = client.submit(credit_all("t-toml", "k")).await.unwrap().into_inner();
    assert_eq!(response.outcome(), v1::Outcome::Committed);

    std::fs::write(&config, "listen = 5\n").unwrap();
    let mut bad = ConcordProcess::spawn(&args, &cluster.root.path().join("bad.stderr")).unwrap();
    assert!(!bad.wait_exit(EXIT_TIMEOUT).await.unwrap().success());
    assert!(bad.stderr().contains("coordinator.toml"), "{}", bad.stderr());
}

/// Once finished transactions are forgotten (beyond `--retain`), an unknown id that might be
/// one of them is neither fenced as ABORTED nor run again, across a SIGKILL too; ids submitted
/// after everything forgotten are fenced and run as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_outcomes_are_never_contradicted_or_rerun() {
    let mut cluster = Cluster::start(&[]).await;
    cluster.coordinator_extra =
        ["--retain", "5", "--checkpoint-every", "5"].map(String::from).to_vec();
    cluster.coordinator.take().unwrap().kill();
    cluster.start_coordinator(&[]).await;
    let mut client = cluster.client();
    // Ten transactions in quick succession: with room for five, the first five are forgotten
    // at once, so the horizon is "now". (Sent without a first-submission time, which a client
    // may omit; a fresh id stamped within CLOCK_SKEW_MARGIN_MS of the horizon would be refused.)
    let first_submitted = now_ms();
    for i in 0..10 {
        let request = credit_all(&format!("t-{i}"), "k");
        let outcome = client.submit(request).await.unwrap().into_inner().outcome();
        assert_eq!(outcome, v1::Outcome::Committed);
    }
    settle(&cluster, "k", 100).await;
    let fence = |txn_id: &str, submitted_unix_ms: u64| v1::GetTransactionRequest {
        txn_id: txn_id.into(),
        fence_unknown: true,
        submitted_unix_ms,
    };
    for restarted in [false, true] {
        let missing = client
            .get_transaction(v1::GetTransactionRequest {
                txn_id: "t-0".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        assert!(missing.message().contains("forgotten"), "{}", missing.message());
        for submitted in [0, first_submitted] {
            let refused = client.get_transaction(fence("t-0", submitted)).await.unwrap_err();
            assert_eq!(refused.code(), Code::DataLoss, "restarted {restarted}: {refused:?}");
        }
        let retry = v1::SubmitRequest {
            first_submitted_unix_ms: first_submitted,
            ..credit_all("t-0", "k")
        };
        let refused = client.submit(retry).await.unwrap_err();
        assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
        settle(&cluster, "k", 100).await; // not run a second time
        if !restarted {
            cluster.coordinator.as_mut().unwrap().kill();
            cluster.coordinator.take();
            cluster.start_coordinator(&[]).await;
            client = cluster.client();
        }
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await; // past the clock-skew margin
    let fresh = client.get_transaction(fence("t-new", now_ms())).await.unwrap().into_inner();
    assert_eq!(fresh.transaction.unwrap().outcome(), v1::Outcome::Aborted);
    let new = v1::SubmitRequest { first_submitted_unix_ms: now_ms(), ..credit_all("t-next", "k") };
    assert_eq!(client.submit(new).await.unwrap().into_inner().outcome(), v1::Outcome::Committed);
}

/// Many submits over one SubmitStream (the client's Pipeline), concurrently: each is answered
/// for its own id and applied once, and a bad one is refused alone, naming its field. Then the
/// same with the coordinator sending one call per Prepare and Commit (`--batch-calls false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_stream_answers_each_transaction_for_itself() {
    use concord_client::{ClientError, RejectKind, Transaction};
    use concord_core::types::{Operation, Outcome};

    let mut cluster = Cluster::start(&[]).await;
    for round in ["batched", "single"] {
        if round == "single" {
            let mut old = cluster.coordinator.take().unwrap();
            old.terminate().unwrap();
            old.wait_exit(EXIT_TIMEOUT).await.unwrap();
            cluster.coordinator_extra = vec!["--batch-calls".into(), "false".into()];
            cluster.start_coordinator(&[]).await;
        }
        let client =
            concord_client::Client::connect(&cluster.coordinator_address.to_string()).unwrap();
        let pipeline = client.pipeline();
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..60 {
            let pipeline = pipeline.clone();
            let add = |key: &str| Operation::CounterAdd {
                key: key.as_bytes().to_vec(),
                delta: 1,
                lower_bound: None,
                upper_bound: None,
            };
            let key = format!("{round}-{i}");
            let txn = Transaction::new()
                .with_txn_id(format!("{round}-{i}"))
                .with_branch("alpha", vec![add(&key)])
                .with_branch("beta", vec![add(&key)]);
            calls.spawn(async move { (i, pipeline.submit(&txn).await) });
        }
        let bad = Transaction::new()
            .with_txn_id(format!("{round}-bad"))
            .with_branch("nobody", vec![Operation::Put { key: b"k".to_vec(), value: vec![] }]);
        match pipeline.submit(&bad).await {
            Err(ClientError::Rejected { kind: RejectKind::InvalidArgument, message }) => {
                assert!(message.contains("branches[0].participant"), "{message}");
            }
            other => panic!("an unknown participant must be refused alone: {other:?}"),
        }
        while let Some(joined) = calls.join_next().await {
            let (i, submitted) = joined.unwrap();
            let submitted = submitted.unwrap();
            assert_eq!(submitted.txn_id, format!("{round}-{i}"));
            assert_eq!(submitted.outcome, Outcome::Committed, "{submitted:?}");
        }
        for i in [0, 59] {
            assert_eq!(cluster.counter("alpha", &format!("{round}-{i}")).await, 1);
            assert_eq!(cluster.counter("beta", &format!("{round}-{i}")).await, 1);
        }
    }
}
