//! The coordinator's memory of ids: what it forgets, what it fences, and what survives a
//! restart (each test was a bug found by a long chaos run or the simulation).
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use concord_coordinator::{Coordinator, CoordinatorConfig, NewTxn, WalLog};
use concord_core::coordinator::{AbortCause, Phase, TxnMode};
use concord_core::types::{Outcome, TxnId};
use concord_wal::MemoryWal;

static TEST_NOW_MS: AtomicU64 = AtomicU64::new(1_000_000);

fn test_clock() -> u64 {
    TEST_NOW_MS.load(Ordering::SeqCst)
}

/// Found by a 10-minute `concord chaos` run: once the coordinator started forgetting,
/// evicting a fenced id (which has no creation time) moved the forgotten horizon to the
/// present, so every new id was refused as "maybe forgotten" and nothing committed again.
/// A fenced id's horizon is when it was fenced.
#[tokio::test]
async fn forgetting_a_fenced_id_does_not_refuse_new_ids() {
    let config = CoordinatorConfig {
        participants: [("a".to_string(), "127.0.0.1:1".to_string())].into(),
        max_retained: 2,
        clock: test_clock,
        ..CoordinatorConfig::default()
    };
    let coordinator =
        Coordinator::recover(config, WalLog::new(MemoryWal::new(1 << 20), 1 << 20)).await.unwrap();
    let id = |s: &str| TxnId::parse(s, "txn_id").unwrap();
    coordinator.fence(&id("f1"), 999_000).await.unwrap();
    coordinator.fence(&id("f2"), 999_000).await.unwrap();
    TEST_NOW_MS.store(2_000_000, Ordering::SeqCst);
    coordinator.fence(&id("f3"), 1_999_000).await.unwrap(); // evicts f1, fenced at 1,000,000
    assert_eq!(coordinator.forgotten_before_unix_ms(), 1_000_000);
    let new = NewTxn {
        txn: id("new"),
        participants: vec!["a".into()],
        operations: vec![Vec::new()],
        timeout: Duration::from_millis(100),
        first_submitted_unix_ms: 1_500_000,
        mode: TxnMode::TwoPhase,
        depends_on: None,
        staged: false,
    };
    // It runs (a one-phase transaction to an unreachable participant: still PENDING while
    // its outcome is probed), rather than being refused as possibly forgotten.
    let result = coordinator.submit(new).await;
    assert!(result.is_ok(), "{result:?}");
}

/// Found by the same 10-minute run, after the fix above: a restarted coordinator replayed
/// fenced ids (and commits whose STARTED record was lazy) without a time, counted them as
/// finished at recovery, and evicting them moved the horizon to the restart, so unknown
/// ids submitted before it could no longer be settled. The log now keeps when each id was
/// fenced, and a decision's time bounds its creation.
#[tokio::test]
async fn a_restart_keeps_the_times_the_horizon_needs() {
    static NOW: AtomicU64 = AtomicU64::new(1_000_000);
    fn clock() -> u64 {
        NOW.load(Ordering::SeqCst)
    }
    let config = CoordinatorConfig {
        participants: [("a".to_string(), "127.0.0.1:1".to_string())].into(),
        max_retained: 20,
        clock,
        ..CoordinatorConfig::default()
    };
    let wal = MemoryWal::new(1 << 20);
    let coordinator =
        Coordinator::recover(config.clone(), WalLog::new(wal.clone(), 1 << 20)).await.unwrap();
    let id = |s: &str| TxnId::parse(s, "txn_id").unwrap();
    for f in 0..20u64 {
        NOW.store(1_000_000 + f * 1_000, Ordering::SeqCst);
        // Ids in the opposite order to their times: f19 is the oldest.
        coordinator.fence(&id(&format!("f{}", 19 - f)), 999_000).await.unwrap();
    }
    coordinator.stop();
    drop(coordinator);
    NOW.store(5_000_000, Ordering::SeqCst);
    let recovered = Coordinator::recover(config, WalLog::new(wal, 1 << 20)).await.unwrap();
    // Evicts the oldest: f19, fenced at 1,000,000 (not the restart's time, and not f0,
    // which the replay sees first).
    recovered.fence(&id("g1"), 4_999_000).await.unwrap();
    assert_eq!(recovered.forgotten_before_unix_ms(), 1_000_000);
}

/// Found by the simulation (seed 25 after seed 24): a coordinator crashed before its lazy
/// STARTED record was synced, a participant that had voted YES asked about the id and was
/// told "aborted", then the client's retry of the same id ran it again and committed it.
/// An in-doubt question about an unknown id must fence it.
#[tokio::test]
async fn answering_aborted_for_an_unknown_id_fences_it() {
    let config = CoordinatorConfig {
        participants: [("a".to_string(), "127.0.0.1:1".to_string())].into(),
        ..CoordinatorConfig::default()
    };
    let wal = MemoryWal::new(1 << 20);
    let coordinator =
        Coordinator::recover(config.clone(), WalLog::new(wal.clone(), 1 << 20)).await.unwrap();
    let id = TxnId::parse("lost-started", "txn_id").unwrap();
    assert_eq!(coordinator.resolve(&id).await.unwrap(), Outcome::Aborted);

    // The client's retry of that id is told it aborted; it does not run again.
    let retry = NewTxn {
        txn: id.clone(),
        participants: vec!["a".into()],
        operations: vec![Vec::new()],
        timeout: Duration::from_millis(100),
        first_submitted_unix_ms: 0,
        mode: TxnMode::TwoPhase,
        depends_on: None,
        staged: false,
    };
    let entry = coordinator.submit(retry.clone()).await.unwrap();
    assert_eq!(entry.outcome(), Outcome::Aborted);
    assert_eq!(entry.machine.phase(), &Phase::Aborted(AbortCause::Fenced));

    // The fence is durable: it survives a crash of the coordinator.
    coordinator.stop();
    drop(coordinator);
    wal.crash();
    let recovered = Coordinator::recover(config, WalLog::new(wal, 1 << 20)).await.unwrap();
    let entry = recovered.submit(retry).await.unwrap();
    assert_eq!(entry.machine.phase(), &Phase::Aborted(AbortCause::Fenced));
}
