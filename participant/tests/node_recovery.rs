//! The participant's driver (`Node`) over the in-memory log and store, whose crashes drop
//! everything not synced: recovery after a crash at any point around checkpoints keeps every
//! acknowledged commit exactly once and every in-doubt branch with its locks, and checkpoints
//! release the log below them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use concord_core::participant::{EngineLimits, PrepareInput};
use concord_core::types::{Epoch, Operation, Outcome, TxnId, Vote, counter};
use concord_participant::{MemoryStore, Node, NodeConfig, Store};
use concord_wal::{MemoryWal, Wal};

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn txn(id: &str) -> TxnId {
    TxnId::parse(id, "txn_id").unwrap()
}

fn add(id: &str, key: &str, delta: i64) -> PrepareInput {
    PrepareInput {
        txn: txn(id),
        epoch: Epoch(1),
        operations: vec![Operation::CounterAdd {
            key: key.as_bytes().to_vec(),
            delta,
            lower_bound: None,
            upper_bound: None,
        }],
        deadline_unix_ms: now_ms() + 30_000,
        one_phase: false,
    }
}

fn config() -> NodeConfig {
    NodeConfig {
        name: "test".into(),
        limits: EngineLimits::default(),
        checkpoint_every_records: 10,
        max_record_bytes: 4096,
        ..NodeConfig::default()
    }
}

fn recover(wal: &MemoryWal, store: &MemoryStore) -> std::sync::Arc<Node<MemoryWal, MemoryStore>> {
    Node::recover(config(), wal.clone(), store.clone()).unwrap()
}

fn counter_of(store: &MemoryStore, key: &str) -> i64 {
    store.get(key.as_bytes()).unwrap().map_or(0, |v| counter::decode(&v.value).unwrap())
}

/// Commits before and after checkpoints survive a crash that drops everything unsynced, each
/// applied exactly once; the checkpoint released the log below it; an in-doubt branch comes
/// back with its lock.
#[tokio::test]
async fn commits_and_in_doubt_branches_survive_crashes_around_checkpoints() {
    let wal = MemoryWal::new(4096);
    let store = MemoryStore::new();
    let node = recover(&wal, &store);
    for i in 0..25 {
        let id = format!("t{i}");
        assert_eq!(node.prepare(add(&id, "c", 1)).await.unwrap().vote, Vote::Yes);
        node.commit(&txn(&id)).await.unwrap();
        if i == 12 {
            node.checkpoint().await.unwrap();
        }
    }
    node.prepare(add("doubt", "d", 5)).await.unwrap();
    assert!(node.maybe_checkpoint().await.unwrap(), "more than 10 records since the last one");
    assert!(wal.first_lsn().0 > 1, "the checkpoint released the log below it");
    // Two more commits after the last checkpoint, then a crash of log and store.
    for i in 25..27 {
        let id = format!("t{i}");
        node.prepare(add(&id, "c", 1)).await.unwrap();
        node.commit(&txn(&id)).await.unwrap();
    }
    drop(node);
    wal.crash();
    store.crash();

    let node = recover(&wal, &store);
    assert_eq!(counter_of(&store, "c"), 27, "every acknowledged commit, once");
    let in_doubt = node.in_doubt(None, 10);
    assert_eq!(in_doubt.len(), 1);
    assert_eq!(in_doubt[0].txn, txn("doubt"));
    let rival = node.prepare(add("rival", "d", 1)).await.unwrap();
    assert!(matches!(rival.vote, Vote::No { .. }), "the in-doubt branch still holds its lock");
    // Duplicates of old messages keep their one effect after recovery.
    let again = node.prepare(add("t3", "c", 1)).await.unwrap();
    assert_eq!(again.outcome, Outcome::Committed);
    node.commit(&txn("doubt")).await.unwrap();
    assert_eq!(counter_of(&store, "c"), 27);
    assert_eq!(counter_of(&store, "d"), 5);

    // A second crash right after recovery changes nothing.
    drop(node);
    wal.crash();
    store.crash();
    let node = recover(&wal, &store);
    assert_eq!(counter_of(&store, "c"), 27);
    assert_eq!(counter_of(&store, "d"), 5);
    assert!(node.in_doubt(None, 10).is_empty());
}

/// A crash after a checkpoint synced the store but before its records were durable leaves the
/// previous log in place, and recovery from it is exact.
#[tokio::test]
async fn crash_in_the_middle_of_a_checkpoint_recovers_from_the_previous_log() {
    let wal = MemoryWal::new(4096);
    let store = MemoryStore::new();
    let node = recover(&wal, &store);
    for i in 0..5 {
        let id = format!("t{i}");
        node.prepare(add(&id, "c", 2)).await.unwrap();
        node.commit(&txn(&id)).await.unwrap();
    }
    // What a checkpoint does before its records are durable: sync the store.
    store.sync().unwrap();
    drop(node);
    wal.crash();
    store.crash();
    let _node = recover(&wal, &store);
    assert_eq!(counter_of(&store, "c"), 10);
}

/// A failed log sync stops the node: the request fails, and so does every later one.
#[tokio::test]
async fn failed_log_sync_stops_the_node() {
    let wal = MemoryWal::new(4096);
    let store = MemoryStore::new();
    let node = recover(&wal, &store);
    let fatal = node.fatal();
    wal.fail_syncs("injected");
    assert!(node.prepare(add("t", "c", 1)).await.is_err());
    assert!(fatal.borrow().is_some(), "the process is told to stop");
    wal.crash(); // a restart clears the failure
    assert!(node.prepare(add("u", "c", 1)).await.is_err(), "a failed node stays stopped");
}

/// A store that counts the keys written to it.
#[derive(Clone)]
struct CountingStore {
    inner: MemoryStore,
    written: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Store for CountingStore {
    fn get(
        &self,
        key: &[u8],
    ) -> Result<Option<concord_core::participant::Versioned>, concord_participant::store::StoreError>
    {
        self.inner.get(key)
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<
        Vec<(Vec<u8>, concord_core::participant::Versioned)>,
        concord_participant::store::StoreError,
    > {
        self.inner.scan(start, end, limit)
    }

    fn apply(
        &self,
        writes: &[concord_core::record::Write],
        version: u64,
    ) -> Result<(), concord_participant::store::StoreError> {
        self.written.fetch_add(writes.len(), std::sync::atomic::Ordering::SeqCst);
        self.inner.apply(writes, version)
    }

    fn sync(&self) -> Result<(), concord_participant::store::StoreError> {
        self.inner.sync()
    }
}

/// Recovery re-applies only the commits the store lost: over a log whose commits the store
/// already holds (synced), it writes nothing, so the first checkpoint after a restart has
/// nothing to flush. Lost applies (after the last sync) are written again, once each.
#[tokio::test]
async fn recovery_rewrites_only_what_the_store_lost() {
    let wal = MemoryWal::new(1 << 20);
    let store = MemoryStore::new();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = CountingStore { inner: store.clone(), written: std::sync::Arc::clone(&written) };
    let config = NodeConfig { checkpoint_every_records: u64::MAX, ..config() };
    let node = Node::recover(config.clone(), wal.clone(), counting.clone()).unwrap();
    for i in 0..20 {
        let id = format!("t{i}");
        node.prepare(add(&id, &format!("k{}", i % 4), 1)).await.unwrap();
        node.commit(&txn(&id)).await.unwrap();
    }
    store.sync().unwrap();
    drop(node);
    written.store(0, std::sync::atomic::Ordering::SeqCst);
    let node = Node::recover(config.clone(), wal.clone(), counting.clone()).unwrap();
    assert_eq!(written.load(std::sync::atomic::Ordering::SeqCst), 0, "the store held every commit");
    for i in 0..4 {
        assert_eq!(counter_of(&store, &format!("k{i}")), 5);
    }

    // Three more commits, not synced, lost by a crash of the store: replayed, once each.
    for i in 20..23 {
        let id = format!("t{i}");
        node.prepare(add(&id, &format!("k{}", i % 4), 1)).await.unwrap();
        node.commit(&txn(&id)).await.unwrap();
    }
    drop(node);
    wal.crash();
    store.crash();
    written.store(0, std::sync::atomic::Ordering::SeqCst);
    let _node = Node::recover(config, wal.clone(), counting).unwrap();
    assert_eq!(written.load(std::sync::atomic::Ordering::SeqCst), 3, "only the lost writes");
    assert_eq!(counter_of(&store, "k0"), 6);
    assert_eq!(counter_of(&store, "k1"), 6);
    assert_eq!(counter_of(&store, "k2"), 6);
    assert_eq!(counter_of(&store, "k3"), 5);
}
