//! The participant sidecar as a real process (`concord participant`) on 127.0.0.1, driven over
//! gRPC: two-phase commit on its store, idempotency, refusals of bad input, recovery after
//! SIGKILL (in-doubt branches resolved by asking a stand-in coordinator), graceful shutdown on
//! SIGTERM, and refusing to start from a write-ahead log or store that does not open cleanly.
//!
//! DESIGN.md "Protocol rules" and "Storage" are what these tests hold the participant to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{counter_add as add, now_ms, put};

use std::path::{Path, PathBuf};
use std::time::Duration;

use concord_proto::v1;
use concord_proto::v1::check::Expect;
use concord_proto::v1::operation::Kind;
use concord_proto::v1::participant_client::ParticipantClient;
use concord_proto::v1::{NoReason, Outcome, VoteKind};
use support::{ConcordProcess, EXIT_TIMEOUT, ParticipantProcess, StandInCoordinator, eventually};
use tonic::transport::Channel;
use tonic::{Code, Status};

type Client = ParticipantClient<Channel>;

/// The coordinator epoch every test Prepare carries.
const EPOCH: u64 = 1;
/// How far in the future test Prepares' deadlines lie (the limit is 60 s).
const DEADLINE_MS: u64 = 30_000;
/// How long a recovered branch may take to learn its outcome once the coordinator knows it.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(15);

// ───────────────────────────── helpers ─────────────────────────────

fn check(key: &str, expect: Expect) -> v1::Operation {
    v1::Operation {
        kind: Some(Kind::Check(v1::Check { key: key.as_bytes().to_vec(), expect: Some(expect) })),
    }
}

/// A counter as stored: 8 bytes, big-endian two's complement (concord.proto, CounterAdd).
fn counter(value: i64) -> Vec<u8> {
    value.to_be_bytes().to_vec()
}

/// A two-phase Prepare with a deadline [`DEADLINE_MS`] from now.
fn prepare_request(txn_id: &str, operations: Vec<v1::Operation>) -> v1::PrepareRequest {
    v1::PrepareRequest {
        txn_id: txn_id.to_string(),
        epoch: EPOCH,
        operations,
        deadline_unix_ms: now_ms() + DEADLINE_MS,
        one_phase: false,
        staged: false,
    }
}

async fn try_prepare(
    client: &Client,
    request: v1::PrepareRequest,
) -> Result<v1::PrepareResponse, Status> {
    client.clone().prepare(request).await.map(tonic::Response::into_inner)
}

async fn prepare(
    client: &Client,
    txn_id: &str,
    operations: Vec<v1::Operation>,
) -> v1::PrepareResponse {
    try_prepare(client, prepare_request(txn_id, operations))
        .await
        .unwrap_or_else(|status| panic!("Prepare {txn_id}: {status}"))
}

async fn one_phase(
    client: &Client,
    txn_id: &str,
    operations: Vec<v1::Operation>,
) -> v1::PrepareResponse {
    let request = v1::PrepareRequest { one_phase: true, ..prepare_request(txn_id, operations) };
    try_prepare(client, request).await.unwrap_or_else(|status| panic!("Prepare {txn_id}: {status}"))
}

async fn try_commit(client: &Client, txn_id: &str) -> Result<(), Status> {
    client
        .clone()
        .commit(v1::CommitRequest { txn_id: txn_id.to_string(), epoch: EPOCH })
        .await
        .map(|_| ())
}

async fn commit(client: &Client, txn_id: &str) {
    try_commit(client, txn_id).await.unwrap_or_else(|status| panic!("Commit {txn_id}: {status}"));
}

async fn try_abort(client: &Client, txn_id: &str) -> Result<(), Status> {
    client
        .clone()
        // The deadline is left unknown (0), as a coordinator that lost it would send.
        .abort(v1::AbortRequest { txn_id: txn_id.to_string(), epoch: EPOCH, deadline_unix_ms: 0 })
        .await
        .map(|_| ())
}

async fn abort(client: &Client, txn_id: &str) {
    try_abort(client, txn_id).await.unwrap_or_else(|status| panic!("Abort {txn_id}: {status}"));
}

async fn get(client: &Client, key: &str) -> Option<v1::KeyValue> {
    client
        .clone()
        .get(v1::GetRequest { key: key.as_bytes().to_vec() })
        .await
        .unwrap_or_else(|status| panic!("Get {key}: {status}"))
        .into_inner()
        .entry
}

async fn value(client: &Client, key: &str) -> Option<Vec<u8>> {
    get(client, key).await.map(|entry| entry.value)
}

async fn in_doubt(client: &Client) -> Vec<v1::InDoubtBranch> {
    client
        .clone()
        .list_in_doubt(v1::ListInDoubtRequest { page_size: 0, page_token: String::new() })
        .await
        .unwrap_or_else(|status| panic!("ListInDoubt: {status}"))
        .into_inner()
        .branches
}

async fn in_doubt_ids(client: &Client) -> Vec<String> {
    in_doubt(client).await.into_iter().map(|branch| branch.txn_id).collect()
}

/// Asserts the vote's kind (and reason, for NO) and the outcome.
#[track_caller]
fn assert_vote(response: &v1::PrepareResponse, kind: VoteKind, reason: NoReason, outcome: Outcome) {
    let vote = response.vote.as_ref().expect("a Prepare answer carries a vote");
    assert_eq!(
        (vote.kind(), vote.reason(), response.outcome()),
        (kind, reason, outcome),
        "vote message: {:?}",
        vote.message
    );
}

#[track_caller]
fn assert_yes(response: &v1::PrepareResponse) {
    assert_vote(response, VoteKind::Yes, NoReason::Unspecified, Outcome::Pending);
}

#[track_caller]
fn assert_no(response: &v1::PrepareResponse, reason: NoReason) {
    assert_vote(response, VoteKind::No, reason, Outcome::Aborted);
}

/// Asserts `result` is INVALID_ARGUMENT whose message names `field` (as `field: reason`).
#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, field: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status}");
    assert!(
        status.message().contains(&format!("{field}:")),
        "{what}: the message should name `{field}`: {:?}",
        status.message()
    );
}

async fn start(root: &Path) -> ParticipantProcess {
    ParticipantProcess::start(root, "p1", None, &[]).await.unwrap()
}

/// The WAL segment files, in LSN order.
fn segments(wal_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(wal_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    files.sort();
    files
}

// ───────────────────────────── two-phase commit ─────────────────────────────

/// A YES-voted branch is invisible until Commit, which applies it with a version above zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_then_commit_applies_the_value_with_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let participant = start(dir.path()).await;
    let client = participant.client();

    assert_yes(&prepare(&client, "t1", vec![put("k", b"v1")]).await);
    assert_eq!(get(&client, "k").await, None, "a prepared write is not visible before Commit");
    let branches = in_doubt(&client).await;
    assert_eq!(branches.len(), 1);
    assert_eq!(branches[0].txn_id, "t1");
    assert_eq!(branches[0].locked_keys, vec![b"k".to_vec()]);

    commit(&client, "t1").await;
    let entry = get(&client, "k").await.expect("committed value");
    assert_eq!(entry.value, b"v1");
    assert!(entry.version > 0, "version is the commit record's LSN: {}", entry.version);
    assert!(in_doubt(&client).await.is_empty());
}

/// PrepareBatch and CommitBatch answer each request for itself, in order, as the single calls
/// would: a bad request is refused alone (naming its field) and the rest take effect; a batch
/// past the limit is refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_answer_each_request_as_the_single_call_would() {
    let dir = tempfile::tempdir().unwrap();
    let participant = start(dir.path()).await;
    let mut client = participant.client();

    let mut bad = prepare_request("b-bad", vec![put("kb", b"v")]);
    bad.txn_id = "not an id!".into();
    let requests = vec![
        prepare_request("b1", vec![put("k1", b"one")]),
        bad,
        prepare_request("b2", vec![put("k1", b"two")]), // k1 is locked by b1
        prepare_request("b3", vec![put("k3", b"three")]),
    ];
    let results =
        client.prepare_batch(v1::PrepareBatchRequest { requests }).await.unwrap().into_inner();
    assert_eq!(results.results.len(), 4);
    let response = |i: usize| match results.results[i].result.clone().unwrap() {
        v1::prepare_result::Result::Response(response) => Ok(response),
        v1::prepare_result::Result::Error(error) => Err(concord_proto::convert::call_status(error)),
    };
    assert_yes(&response(0).unwrap());
    assert_invalid("a bad txn id inside a batch", response(1), "txn_id");
    assert_no(&response(2).unwrap(), NoReason::Conflict);
    assert_yes(&response(3).unwrap());

    let commits = vec![
        v1::CommitRequest { txn_id: "b1".into(), epoch: EPOCH },
        v1::CommitRequest { txn_id: "b3".into(), epoch: EPOCH },
        v1::CommitRequest { txn_id: "b2".into(), epoch: EPOCH }, // voted NO: aborted here
    ];
    let results = client
        .commit_batch(v1::CommitBatchRequest { requests: commits })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(matches!(results[0].result, Some(v1::commit_result::Result::Response(_))));
    assert!(matches!(results[1].result, Some(v1::commit_result::Result::Response(_))));
    match &results[2].result {
        Some(v1::commit_result::Result::Error(error)) => {
            assert_eq!(error.code, Code::FailedPrecondition as i32, "{error:?}");
        }
        other => panic!("a Commit of an aborted branch must fail: {other:?}"),
    }
    assert_eq!(value(&client, "k1").await.as_deref(), Some(&b"one"[..]));
    assert_eq!(value(&client, "k3").await.as_deref(), Some(&b"three"[..]));

    let too_many = (0..=concord_core::limits::MAX_BATCH_REQUESTS)
        .map(|i| v1::CommitRequest { txn_id: format!("x{i}"), epoch: EPOCH })
        .collect();
    assert_invalid(
        "an oversized batch",
        client.commit_batch(v1::CommitBatchRequest { requests: too_many }).await,
        "requests",
    );
}

/// Abort discards a prepared branch: nothing is written, and its lock is released so another
/// transaction on the key votes YES.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_then_abort_keeps_nothing_and_releases_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let participant = start(dir.path()).await;
    let client = participant.client();

    assert_yes(&prepare(&client, "a1", vec![put("k", b"aborted")]).await);
    abort(&client, "a1").await;
    assert_eq!(get(&client, "k").await, None);
    assert!(in_doubt(&client).await.is_empty());

    assert_yes(&prepare(&client, "a2", vec![put("k", b"kept")]).await);
    commit(&client, "a2").await;
    assert_eq!(value(&client, "k").await, Some(b"kept".to_vec()));
}

/// A transaction touching a key locked by a prepared branch votes NO(CONFLICT) at once and
/// locks nothing, not even its other keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_on_a_locked_key_votes_no_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let participant = start(dir.path()).await;
    let client = participant.client();

    assert_yes(&prepare(&client, "c1", vec![put("k", b"first")]).await);
    let rival = prepare(&client, "c2", vec![put("other", b"x"), put("k", b"second")]).await;
    assert_no(&rival, NoReason::Conflict);
    assert_eq!(in_doubt_ids(&client).await, vec!["c1".to_string()]);
    assert_yes(&prepare(&client, "c3", vec![put("other", b"y")]).await);

    commit(&client, "c1").await;
    commit(&client, "c3").await;
    assert_eq!(value(&client, "k").await, Some(b"first".to_vec()));
    assert_eq!(value(&client, "other").await, Some(b"y".to_vec()));
}

/// Failed checks vote NO(CHECK_FAILED), crossed counter bounds NO(BOUND_CROSSED), a counter
/// add on a non-counter NO(INVALID), all keeping nothing; a branch of holding checks votes
/// READ_ONLY and keeps nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_and_bounds_vote_no_and_holding_checks_vote_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let participant = start(dir.path()).await;
    let client = participant.client();

    let setup =
        one_phase(&client, "setup", vec![put("acct", &counter(10)), put("text", b"hi")]).await;
    assert_vote(&setup, VoteKind::Yes, NoReason::Unspecified, Outcome::Committed);
    let before = get(&client, "acct").await.expect("acct was set");

    let cases = [
        (vec![check("acct", Expect::Version(before.version + 1))], NoReason::CheckFailed),
        (vec![check("acct", Expect::Value(counter(9)))], NoReason::CheckFailed),
        (vec![check("acct", Expect::Absent(v1::Absent {}))], NoReason::CheckFailed),
        (vec![check("missing", Expect::Value(b"x".to_vec()))], NoReason::CheckFailed),
        // A check sees the branch's own earlier writes.
        (vec![put("acct", b"x"), check("acct", Expect::Value(counter(10)))], NoReason::CheckFailed),
        (vec![add("acct", -11, Some(0), None)], NoReason::BoundCrossed),
        (vec![add("acct", 1, None, Some(10))], NoReason::BoundCrossed),
        (vec![add("acct", i64::MAX, None, None)], NoReason::BoundCrossed),
        (vec![add("text", 1, None, None)], NoReason::Invalid),
    ];
    for (index, (operations, reason)) in cases.into_iter().enumerate() {
        let response = prepare(&client, &format!("no-{index}"), operations).await;
        let vote = response.vote.as_ref().unwrap();
        assert_eq!((vote.kind(), vote.reason()), (VoteKind::No, reason), "case {index}: {vote:?}");
        assert_eq!(response.outcome(), Outcome::Aborted, "case {index}");
    }

    let read_only = prepare(
        &client,
        "read-only",
        vec![
            check("acct", Expect::Version(before.version)),
            check("acct", Expect::Value(counter(10))),
            check("missing", Expect::Absent(v1::Absent {})),
        ],
    )
    .await;
    assert_eq!(read_only.vote.as_ref().unwrap().kind(), VoteKind::ReadOnly, "{read_only:?}");

    assert!(in_doubt(&client).await.is_empty(), "NO and READ_ONLY votes keep nothing");
    assert_eq!(get(&client, "acct").await, Some(before), "nothing was written");
    assert_eq!(get(&client, "missing").await, None);
    // Nothing is locked: a counter add within its bound on the same key prepares and commits.
    assert_yes(&prepare(&client, "drain", vec![add("acct", -10, Some(0), None)]).await);
    commit(&client, "drain").await;
    assert_eq!(value(&client, "acct").await, Some(counter(0)));
}

/// A one-phase Prepare commits at once: outcome COMMITTED, the value visible, nothing in doubt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_phase_prepare_commits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let participant = start(dir.path()).await;
    let client = participant.client();

    let response = one_phase(&client, "solo", vec![put("k", b"v"), add("n", 3, None, None)]).await;
    assert_vote(&response, VoteKind::Yes, NoReason::Unspecified, Outcome::Committed);
    let entry = get(&client, "k").await.expect("visible at once");
    assert_eq!(entry.value, b"v");
    assert!(entry.version > 0);
    assert_eq!(value(&client, "n").await, Some(counter(3)));
    assert!(in_doubt(&client).await.is_empty());
    // The key is not left locked.
    assert_yes(&prepare(&client, "next", vec![put("k", b"w")]).await);
}

// ───────────────────────────── idempotency and late messages ─────────────────────────────

/// Duplicate Prepare gets the same answer, duplicate Commit and Abort have one effect, and a
/// Commit of a transaction never seen here is acknowledged without effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_prepare_commit_and_abort_have_one_effect() {
    let dir = tempfile::tempdir().unwrap();
    let participant = start(dir.path()).await;
    let client = participant.client();

    let first = prepare(&client, "d1", vec![add("ctr", 5, None, None)]).await;
    assert_yes(&first);
    let again = prepare(&client, "d1", vec![add("ctr", 5, None, None)]).await;
    assert_eq!(again, first, "a duplicate Prepare gets the same answer");
    assert_eq!(in_doubt_ids(&client).await, vec!["d1".to_string()], "and prepares nothing more");

    commit(&client, "d1").await;
    let committed = get(&client, "ctr").await.expect("committed");
    commit(&client, "d1").await;
    let late = prepare(&client, "d1", vec![add("ctr", 5, None, None)]).await;
    assert_vote(&late, VoteKind::Yes, NoReason::Unspecified, Outcome::Committed);
    assert_eq!(get(&client, "ctr").await, Some(committed.clone()), "applied exactly once");
    assert_eq!(committed.value, counter(5));

    assert_yes(&prepare(&client, "d2", vec![put("k", b"x")]).await);
    abort(&client, "d2").await;
    abort(&client, "d2").await;
    let late = prepare(&client, "d2", vec![put("k", b"x")]).await;
    assert_no(&late, NoReason::AlreadyAborted);
    assert_yes(&prepare(&client, "d3", vec![put("k", b"y")]).await);
    abort(&client, "d3").await;
    assert_eq!(get(&client, "k").await, None);

    // A NO vote stays NO when the Prepare is repeated.
    let no = prepare(&client, "d4", vec![check("k", Expect::Value(b"nope".to_vec()))]).await;
    assert_no(&no, NoReason::CheckFailed);
    let no_again = prepare(&client, "d4", vec![check("k", Expect::Value(b"nope".to_vec()))]).await;
    let vote = no_again.vote.as_ref().unwrap();
    assert_eq!((vote.kind(), no_again.outcome()), (VoteKind::No, Outcome::Aborted), "{vote:?}");

    commit(&client, "never-prepared").await;
    assert!(in_doubt(&client).await.is_empty());
    assert_eq!(get(&client, "ctr").await, Some(committed));
}

/// An Abort that arrives before its Prepare leaves a barrier: the late Prepare votes
/// NO(ALREADY_ABORTED) and locks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_before_prepare_refuses_the_late_prepare() {
    let dir = tempfile::tempdir().unwrap();
    let participant = start(dir.path()).await;
    let client = participant.client();

    abort(&client, "b1").await;
    let late = prepare(&client, "b1", vec![put("k", b"v")]).await;
    assert_no(&late, NoReason::AlreadyAborted);
    assert!(in_doubt(&client).await.is_empty());
    assert_yes(&prepare(&client, "b2", vec![put("k", b"w")]).await);
    commit(&client, "b2").await;
    assert_eq!(value(&client, "k").await, Some(b"w".to_vec()));
}

/// A Prepare whose deadline has passed votes NO(EXPIRED) and locks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_past_its_deadline_votes_no_expired() {
    let dir = tempfile::tempdir().unwrap();
    let participant = start(dir.path()).await;
    let client = participant.client();

    let request = v1::PrepareRequest {
        deadline_unix_ms: now_ms() - 1_000,
        ..prepare_request("late", vec![put("k", b"v")])
    };
    assert_no(&try_prepare(&client, request).await.unwrap(), NoReason::Expired);
    assert!(in_doubt(&client).await.is_empty());
    assert_yes(&prepare(&client, "in-time", vec![put("k", b"w")]).await);
}

/// Abort of a committed transaction and Commit of an aborted one are FAILED_PRECONDITION and
/// change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contradicting_decisions_are_failed_precondition() {
    let dir = tempfile::tempdir().unwrap();
    let participant = start(dir.path()).await;
    let client = participant.client();

    assert_yes(&prepare(&client, "done", vec![put("a", b"1")]).await);
    commit(&client, "done").await;
    let status = try_abort(&client, "done").await.expect_err("Abort after Commit");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
    assert_eq!(value(&client, "a").await, Some(b"1".to_vec()));

    assert_yes(&prepare(&client, "undone", vec![put("b", b"1")]).await);
    abort(&client, "undone").await;
    let status = try_commit(&client, "undone").await.expect_err("Commit after Abort");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
    assert_eq!(get(&client, "b").await, None);
}

// ───────────────────────────── bad input ─────────────────────────────

/// Every kind of bad input is INVALID_ARGUMENT naming the offending field, and changes
/// nothing: no value, no lock, no barrier on the transaction id used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let participant = start(dir.path()).await;
    let client = participant.client();
    let txn = "bad-input";
    let with = |operations: Vec<v1::Operation>| prepare_request(txn, operations);

    let prepares: Vec<(&str, v1::PrepareRequest, &str)> = vec![
        ("empty txn_id", prepare_request("", vec![put("k", b"v")]), "txn_id"),
        ("txn_id with a space", prepare_request("bad id", vec![put("k", b"v")]), "txn_id"),
        ("txn_id with a slash", prepare_request("bad/id", vec![put("k", b"v")]), "txn_id"),
        ("txn_id of 129 bytes", prepare_request(&"x".repeat(129), vec![put("k", b"v")]), "txn_id"),
        ("no operations", with(vec![]), "operations"),
        ("65 operations", with(vec![put("k", b"v"); 65]), "operations"),
        ("empty key", with(vec![put("", b"v")]), "operations[0].key"),
        (
            "key of 1025 bytes",
            with(vec![put("k", b"v"), put(&"k".repeat(1025), b"v")]),
            "operations[1].key",
        ),
        ("value over 64 KiB", with(vec![put("k", &vec![7; 64 * 1024 + 1])]), "operations[0].value"),
        (
            "operation with no kind",
            with(vec![put("k", b"v"), v1::Operation { kind: None }]),
            "operations[1]",
        ),
        (
            "check with no expectation",
            with(vec![v1::Operation {
                kind: Some(Kind::Check(v1::Check { key: b"k".to_vec(), expect: None })),
            }]),
            "operations[0].check",
        ),
        (
            "lower_bound above upper_bound",
            with(vec![add("k", 1, Some(5), Some(4))]),
            "operations[0].counter_add",
        ),
        (
            "no deadline",
            v1::PrepareRequest { deadline_unix_ms: 0, ..with(vec![put("k", b"v")]) },
            "deadline_unix_ms",
        ),
        (
            "deadline over 60 s away",
            v1::PrepareRequest {
                deadline_unix_ms: now_ms() + 120_000,
                ..with(vec![put("k", b"v")])
            },
            "deadline_unix_ms",
        ),
    ];
    for (what, request, field) in prepares {
        assert_invalid(what, try_prepare(&client, request).await, field);
    }

    assert_invalid("Commit with an empty txn_id", try_commit(&client, "").await, "txn_id");
    assert_invalid("Abort with a bad txn_id", try_abort(&client, "no spaces").await, "txn_id");
    let get_empty = client.clone().get(v1::GetRequest { key: Vec::new() }).await;
    assert_invalid("Get with an empty key", get_empty, "key");
    let bad_token = client
        .clone()
        .list_in_doubt(v1::ListInDoubtRequest { page_size: 0, page_token: "not a token!".into() })
        .await;
    assert_invalid("ListInDoubt with a bad page token", bad_token, "page_token");
    let long_start = client
        .clone()
        .scan(v1::ScanRequest { start: vec![b'k'; 1026], end: Vec::new(), limit: 0 })
        .await;
    assert_invalid("Scan with a start over the key limit", long_start, "start");

    // Nothing changed: no value, nothing in doubt, and the id used by the bad Prepares neither
    // locked anything nor left a barrier or a remembered NO.
    assert_eq!(get(&client, "k").await, None);
    assert!(in_doubt(&client).await.is_empty());
    assert_yes(&prepare(&client, txn, vec![put("k", b"v")]).await);
}

// ───────────────────────────── crash recovery ─────────────────────────────

/// Runs the in-doubt recovery scenario: a branch voted YES, the participant is SIGKILLed and
/// restarted, the branch is still in doubt and locked, then the stand-in coordinator answers
/// `outcome` and the branch must learn it. Returns the participant and its client afterwards.
async fn recover_in_doubt_branch(
    root: &Path,
    txn_id: &str,
    outcome: Outcome,
) -> (ParticipantProcess, Client, StandInCoordinator) {
    let coordinator = StandInCoordinator::start().await.unwrap();
    let mut participant =
        ParticipantProcess::start(root, "p1", Some(coordinator.address()), &[]).await.unwrap();
    let client = participant.client();
    let response =
        prepare(&client, txn_id, vec![put("k", b"decided"), add("n", 7, None, None)]).await;
    assert_yes(&response);
    participant.kill();

    participant.restart().await.unwrap();
    let client = participant.client();
    let branches = in_doubt(&client).await;
    assert_eq!(branches.len(), 1, "the YES vote survived SIGKILL: {branches:?}");
    assert_eq!(branches[0].txn_id, txn_id);
    assert_eq!(branches[0].epoch, EPOCH);
    assert_eq!(branches[0].locked_keys, vec![b"k".to_vec(), b"n".to_vec()]);
    assert!(branches[0].prepared_lsn > 0);
    let rival = prepare(&client, "rival", vec![put("k", b"rival")]).await;
    assert_no(&rival, NoReason::Conflict);
    assert_eq!(get(&client, "k").await, None);

    // The recovered branch asks at once (its deadline is far off) and, told PENDING, waits.
    let coordinator_ref = &coordinator;
    eventually("the recovered branch asks the coordinator", RECOVERY_TIMEOUT, move || async move {
        (coordinator_ref.questions(txn_id) >= 1).then_some(())
    })
    .await;
    assert_eq!(in_doubt_ids(&client).await, vec![txn_id.to_string()], "PENDING decides nothing");

    coordinator.decide(txn_id, outcome);
    let client_ref = &client;
    eventually("the branch learns the outcome", RECOVERY_TIMEOUT, move || async move {
        in_doubt(client_ref).await.is_empty().then_some(())
    })
    .await;
    (participant, client, coordinator)
}

/// A branch that voted YES just before SIGKILL is in doubt and still locked after restart, and
/// commits once the coordinator answers COMMITTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_doubt_branch_survives_sigkill_and_commits_when_the_coordinator_says_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (_participant, client, _coordinator) =
        recover_in_doubt_branch(dir.path(), "doubt-commit", Outcome::Committed).await;

    let entry = get(&client, "k").await.expect("the committed value");
    assert_eq!(entry.value, b"decided");
    assert!(entry.version > 0);
    assert_eq!(value(&client, "n").await, Some(counter(7)));
    assert_yes(&prepare(&client, "after", vec![put("k", b"next")]).await);
}

/// A branch that voted YES just before SIGKILL is in doubt and still locked after restart, and
/// is discarded (its locks released) once the coordinator answers ABORTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_doubt_branch_survives_sigkill_and_aborts_when_the_coordinator_says_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let (_participant, client, _coordinator) =
        recover_in_doubt_branch(dir.path(), "doubt-abort", Outcome::Aborted).await;

    assert_eq!(get(&client, "k").await, None);
    assert_eq!(get(&client, "n").await, None);
    assert_yes(&prepare(&client, "after", vec![put("k", b"next"), put("n", b"x")]).await);
}

/// Commits acknowledged just before SIGKILL (two-phase and one-phase) are there after restart,
/// with the same versions: the WAL is the truth, whatever sled had synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commit_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut participant = start(dir.path()).await;
    let client = participant.client();

    assert_yes(&prepare(&client, "two-phase", vec![put("a", b"1")]).await);
    commit(&client, "two-phase").await;
    let one = one_phase(&client, "one-phase", vec![put("b", b"2")]).await;
    assert_vote(&one, VoteKind::Yes, NoReason::Unspecified, Outcome::Committed);
    let a = get(&client, "a").await.unwrap();
    let b = get(&client, "b").await.unwrap();
    participant.kill();

    participant.restart().await.unwrap();
    let client = participant.client();
    assert_eq!(get(&client, "a").await, Some(a));
    assert_eq!(get(&client, "b").await, Some(b));
    assert!(in_doubt(&client).await.is_empty());
    // The decisions are remembered too: a duplicate Commit is acknowledged, Abort refused.
    commit(&client, "two-phase").await;
    let status = try_abort(&client, "two-phase").await.expect_err("Abort after Commit");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
}

/// 200 committed counter adds survive SIGKILL, and a second SIGKILL and restart, with exactly
/// the right sum: nothing lost, nothing applied twice by replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_counter_adds_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut participant = start(dir.path()).await;
    let client = participant.client();

    let mut expected = 0i64;
    for delta in 1..=200i64 {
        let txn_id = format!("add-{delta}");
        assert_yes(&prepare(&client, &txn_id, vec![add("ctr", delta, None, None)]).await);
        commit(&client, &txn_id).await;
        expected += delta;
    }
    assert_eq!(value(&client, "ctr").await, Some(counter(expected)));

    for round in 1..=2 {
        participant.kill();
        participant.restart().await.unwrap();
        let client = participant.client();
        assert_eq!(value(&client, "ctr").await, Some(counter(expected)), "after restart {round}");
    }
    // And it keeps counting from there.
    let client = participant.client();
    assert_yes(&prepare(&client, "add-more", vec![add("ctr", 1, None, None)]).await);
    commit(&client, "add-more").await;
    assert_eq!(value(&client, "ctr").await, Some(counter(expected + 1)));
}

/// SIGTERM stops the participant gracefully (exit status 0), and its data is there after a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_participant_cleanly_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut participant = start(dir.path()).await;
    let client = participant.client();
    assert_yes(&prepare(&client, "kept", vec![put("k", b"v")]).await);
    commit(&client, "kept").await;

    participant.process().terminate().unwrap();
    let status = participant.process().wait_exit(EXIT_TIMEOUT).await.unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");

    participant.restart().await.unwrap();
    assert_eq!(value(&participant.client(), "k").await, Some(b"v".to_vec()));
}

// ───────────────────────────── storage that does not open cleanly ─────────────────────────────

/// A WAL segment damaged in the middle of the log (not at its tail) makes the participant exit
/// non-zero, before listening, with a message naming the corruption and the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_wal_segment_in_the_middle_stops_the_participant_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut participant =
        ParticipantProcess::start(dir.path(), "p1", None, &["--segment-bytes", "4096"])
            .await
            .unwrap();
    let client = participant.client();
    let wal_dir = participant.wal_dir();
    // Each one-phase commit appends a record of ~600 bytes: 4096-byte segments roll quickly.
    for index in 0..60 {
        if segments(&wal_dir).len() >= 3 {
            break;
        }
        let response =
            one_phase(&client, &format!("fill-{index}"), vec![put("k", &[b'x'; 600])]).await;
        assert_vote(&response, VoteKind::Yes, NoReason::Unspecified, Outcome::Committed);
    }
    participant.kill();
    let files = segments(&wal_dir);
    assert!(files.len() >= 3, "expected several segments: {files:?}");

    // Damage the first record of the first segment (after the 32-byte header and the 16-byte
    // frame header): its checksum no longer matches, and good records follow it.
    let first = &files[0];
    let mut bytes = std::fs::read(first).unwrap();
    for byte in &mut bytes[48..56] {
        *byte ^= 0xff;
    }
    std::fs::write(first, &bytes).unwrap();

    let args = support::participant_args(dir.path(), "p1", "127.0.0.1:0", None, &[]);
    let mut process = ConcordProcess::spawn(&args, &dir.path().join("corrupt.stderr")).unwrap();
    let status = process.wait_exit(EXIT_TIMEOUT).await.unwrap();
    let stderr = process.stderr();
    assert!(!status.success(), "a corrupt log must not be served; stderr:\n{stderr}");
    assert!(!process.stdout().contains("listening on"), "it must not listen");
    let file_name = first.file_name().unwrap().to_str().unwrap();
    assert!(stderr.contains("corrupt"), "stderr should say corrupt:\n{stderr}");
    assert!(stderr.contains(file_name), "stderr should name {file_name}:\n{stderr}");
}

/// A torn tail (a partial record at the end of the last segment) is truncated on start: the
/// participant serves, with every acknowledged commit, and keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_wal_tail_is_truncated_and_the_participant_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mut participant = start(dir.path()).await;
    let client = participant.client();
    assert_yes(&prepare(&client, "before", vec![put("k", b"v")]).await);
    commit(&client, "before").await;
    participant.kill();

    let last = segments(&participant.wal_dir()).pop().expect("a segment");
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(&[0xab; 11]);
    std::fs::write(&last, &bytes).unwrap();

    participant.restart().await.unwrap();
    let client = participant.client();
    assert_eq!(value(&client, "k").await, Some(b"v".to_vec()));
    assert_yes(&prepare(&client, "after", vec![put("k", b"w")]).await);
    commit(&client, "after").await;
    participant.kill();
    participant.restart().await.unwrap();
    assert_eq!(value(&participant.client(), "k").await, Some(b"w".to_vec()));
}

/// A store that cannot be opened (its path is a plain file) makes the participant exit
/// non-zero, before listening, with a message naming the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_that_does_not_open_stops_the_participant_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data").join("store");
    std::fs::create_dir_all(store.parent().unwrap()).unwrap();
    std::fs::write(&store, b"not a sled directory").unwrap();

    let args = support::participant_args(dir.path(), "p1", "127.0.0.1:0", None, &[]);
    let mut process = ConcordProcess::spawn(&args, &dir.path().join("store.stderr")).unwrap();
    let status = process.wait_exit(EXIT_TIMEOUT).await.unwrap();
    let stderr = process.stderr();
    assert!(!status.success(), "a store that did not open must not be served; stderr:\n{stderr}");
    assert!(!process.stdout().contains("listening on"), "it must not listen");
    assert!(
        stderr.contains(&store.display().to_string()),
        "stderr should name the store:\n{stderr}"
    );
}

/// A second participant on a data directory already in use exits non-zero, saying so, and the
/// first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_participant_on_the_same_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let participant = start(dir.path()).await;

    let args = support::participant_args(dir.path(), "p2", "127.0.0.1:0", None, &[]);
    let mut second = ConcordProcess::spawn(&args, &dir.path().join("second.stderr")).unwrap();
    let status = second.wait_exit(EXIT_TIMEOUT).await.unwrap();
    let stderr = second.stderr();
    assert!(!status.success(), "two processes must not share a log; stderr:\n{stderr}");
    assert!(stderr.contains("in use"), "stderr should say the log is in use:\n{stderr}");

    let client = participant.client();
    assert_yes(&prepare(&client, "still-serving", vec![put("k", b"v")]).await);
}

// ───────────────────────────── health ─────────────────────────────

/// `grpc.health.v1.Health/Check` answers SERVING for the server and for the participant
/// service, and NOT_FOUND for a service it does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_reports_serving() {
    const SERVING: i32 = 1;
    let dir = tempfile::tempdir().unwrap();
    let participant = start(dir.path()).await;

    assert_eq!(support::health_status(participant.address(), "").await.unwrap(), SERVING);
    let service = support::health_status(participant.address(), "concord.v1.Participant").await;
    assert_eq!(service.unwrap(), SERVING);
    let unknown = support::health_status(participant.address(), "concord.v1.Nothing").await;
    assert_eq!(unknown.expect_err("an unknown service").code(), Code::NotFound);
}

/// Scan pages through every key exactly once, including keys of the maximum length sitting at
/// a page boundary (the next page starts just past such a key, one byte longer than a key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_pages_through_every_key_including_maximum_length_keys() {
    let root = tempfile::tempdir().unwrap();
    let participant = start(root.path()).await;
    let client = participant.client();
    let long_a = "a".repeat(1024);
    let long_b = "b".repeat(1024);
    let keys = [long_a.as_str(), long_b.as_str(), "c", "d"];
    let operations = keys.iter().map(|k| put(k, b"v")).collect();
    one_phase(&client, "load", operations).await;
    let mut seen = Vec::new();
    let mut start_key = Vec::new();
    loop {
        let page = client
            .clone()
            .scan(v1::ScanRequest { start: start_key, end: Vec::new(), limit: 1 })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.entries.into_iter().map(|e| String::from_utf8(e.key).unwrap()));
        if page.next_start.is_empty() {
            break;
        }
        start_key = page.next_start;
        assert!(seen.len() <= keys.len(), "paging does not end");
    }
    assert_eq!(seen, keys);
}
