//! One conformance suite for every [`Store`] implementation.
//!
//! The checks in [`checks`] are generic over the store; [`conformance_suite!`] instantiates each
//! of them once per implementation, so a failure reads as `sled::apply_is_atomic_and_idempotent`
//! or `memory::apply_is_atomic_and_idempotent`. Behaviour only one implementation has (sled
//! reopening its directory, the memory store's simulated crash) is tested in that
//! implementation's module.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use concord_core::participant::{CommittedState, Versioned};
use concord_core::record::Write;
use concord_participant::store::{MemoryStore, SledStore, Store, StoreError, StoreState};

/// A write that sets `key` to `value`.
fn put(key: &[u8], value: &[u8]) -> Write {
    Write { key: key.to_vec(), value: Some(value.to_vec()) }
}

/// A write that deletes `key`.
fn delete(key: &[u8]) -> Write {
    Write { key: key.to_vec(), value: None }
}

/// A committed value at a version.
fn versioned(version: u64, value: &[u8]) -> Versioned {
    Versioned { version, value: value.to_vec() }
}

/// The keys of a scan's result.
fn keys(entries: &[(Vec<u8>, Versioned)]) -> Vec<Vec<u8>> {
    entries.iter().map(|(key, _)| key.clone()).collect()
}

/// The checks every store must pass, each taking a fresh, empty store.
mod checks {
    use super::*;

    pub fn get_of_missing_key_is_none(store: &impl Store) {
        assert_eq!(store.get(b"missing").unwrap(), None);
        store.apply(&[put(b"present", b"v")], 1).unwrap();
        assert_eq!(store.get(b"missing").unwrap(), None);
        assert_eq!(store.get(b"").unwrap(), None);
    }

    pub fn put_then_get_returns_value_and_version(store: &impl Store) {
        store.apply(&[put(b"k", b"value")], 7).unwrap();
        assert_eq!(store.get(b"k").unwrap(), Some(versioned(7, b"value")));
        store.apply(&[put(b"k", b"newer")], 9).unwrap();
        assert_eq!(store.get(b"k").unwrap(), Some(versioned(9, b"newer")));
    }

    pub fn delete_removes_the_key(store: &impl Store) {
        store.apply(&[put(b"k", b"v"), put(b"other", b"o")], 1).unwrap();
        store.apply(&[delete(b"k")], 2).unwrap();
        assert_eq!(store.get(b"k").unwrap(), None);
        assert_eq!(store.get(b"other").unwrap(), Some(versioned(1, b"o")));
        assert_eq!(keys(&store.scan(b"", None, 10).unwrap()), vec![b"other".to_vec()]);
        // Deleting an absent key is not an error and changes nothing.
        store.apply(&[delete(b"never")], 3).unwrap();
        assert_eq!(store.get(b"never").unwrap(), None);
    }

    pub fn apply_sets_every_write_with_the_version(store: &impl Store) {
        store.apply(&[put(b"gone", b"g"), put(b"kept", b"old")], 3).unwrap();
        store
            .apply(&[put(b"a", b"1"), put(b"b", b"2"), delete(b"gone"), put(b"kept", b"new")], 4)
            .unwrap();
        assert_eq!(store.get(b"a").unwrap(), Some(versioned(4, b"1")));
        assert_eq!(store.get(b"b").unwrap(), Some(versioned(4, b"2")));
        assert_eq!(store.get(b"gone").unwrap(), None);
        assert_eq!(store.get(b"kept").unwrap(), Some(versioned(4, b"new")));
        // An empty batch changes nothing.
        store.apply(&[], 5).unwrap();
        assert_eq!(store.scan(b"", None, 10).unwrap().len(), 3);
    }

    pub fn last_write_to_a_key_in_a_batch_wins(store: &impl Store) {
        store.apply(&[put(b"k", b"first"), put(b"k", b"second")], 1).unwrap();
        assert_eq!(store.get(b"k").unwrap(), Some(versioned(1, b"second")));
        store.apply(&[put(b"k", b"third"), delete(b"k")], 2).unwrap();
        assert_eq!(store.get(b"k").unwrap(), None);
    }

    pub fn apply_is_atomic_and_idempotent(store: &impl Store) {
        let batch = [put(b"a", b"1"), delete(b"b"), put(b"c", b"")];
        store.apply(&[put(b"b", b"x")], 1).unwrap();
        store.apply(&batch, 2).unwrap();
        let once = store.scan(b"", None, 100).unwrap();
        store.apply(&batch, 2).unwrap();
        assert_eq!(store.scan(b"", None, 100).unwrap(), once);
        assert_eq!(
            once,
            vec![(b"a".to_vec(), versioned(2, b"1")), (b"c".to_vec(), versioned(2, b""))]
        );
    }

    pub fn replaying_versions_in_order_ends_at_the_newest(store: &impl Store) {
        let history: [(&[Write], u64); 4] = [
            (&[put(b"a", b"a1"), put(b"b", b"b1")], 1),
            (&[put(b"a", b"a2"), delete(b"b")], 2),
            (&[put(b"b", b"b3"), put(b"c", b"c3")], 3),
            (&[delete(b"c")], 4),
        ];
        for (writes, version) in history {
            store.apply(writes, version).unwrap();
        }
        let newest = store.scan(b"", None, 100).unwrap();
        assert_eq!(
            newest,
            vec![(b"a".to_vec(), versioned(2, b"a2")), (b"b".to_vec(), versioned(3, b"b3"))]
        );
        // Recovery replays from an older position over the newer state, in LSN order.
        for start in 0..history.len() {
            for (writes, version) in &history[start..] {
                store.apply(writes, *version).unwrap();
            }
            assert_eq!(store.scan(b"", None, 100).unwrap(), newest, "replay from index {start}");
        }
    }

    pub fn scan_respects_bounds_limit_and_key_order(store: &impl Store) {
        let all: Vec<Vec<u8>> =
            vec![b"a".to_vec(), b"b".to_vec(), b"ba".to_vec(), b"c".to_vec(), b"d".to_vec()];
        // Applied out of order, in two batches with different versions.
        store.apply(&[put(b"d", b"4"), put(b"b", b"2"), put(b"a", b"0")], 1).unwrap();
        store.apply(&[put(b"c", b"3"), put(b"ba", b"21")], 2).unwrap();

        assert_eq!(keys(&store.scan(b"", None, 100).unwrap()), all);
        assert_eq!(keys(&store.scan(b"", None, 2).unwrap()), all[..2]);
        assert_eq!(keys(&store.scan(b"b", None, 100).unwrap()), all[1..]);
        // start is inclusive, end exclusive.
        assert_eq!(keys(&store.scan(b"b", Some(b"c"), 100).unwrap()), all[1..3]);
        assert_eq!(keys(&store.scan(b"b", Some(b"c"), 1).unwrap()), all[1..2]);
        // A start between keys begins at the next key.
        assert_eq!(keys(&store.scan(b"bb", Some(b"z"), 100).unwrap()), all[3..]);
        assert!(store.scan(b"", None, 0).unwrap().is_empty());
        assert!(store.scan(b"b", Some(b"b"), 100).unwrap().is_empty());
        assert!(store.scan(b"c", Some(b"b"), 100).unwrap().is_empty());
        assert!(store.scan(b"e", None, 100).unwrap().is_empty());
        // Entries carry their values and versions.
        assert_eq!(
            store.scan(b"c", None, 100).unwrap(),
            vec![(b"c".to_vec(), versioned(2, b"3")), (b"d".to_vec(), versioned(1, b"4"))]
        );
    }

    pub fn scan_orders_binary_keys_bytewise(store: &impl Store) {
        let binary: [&[u8]; 6] = [b"", &[0x00], &[0x00, 0x00], &[0x00, 0xff], &[0x7f], &[0xff]];
        let writes: Vec<Write> = binary.iter().rev().map(|key| put(key, key)).collect();
        store.apply(&writes, 1).unwrap();
        let expected: Vec<Vec<u8>> = binary.iter().map(|key| key.to_vec()).collect();
        assert_eq!(keys(&store.scan(b"", None, 100).unwrap()), expected);
        assert_eq!(keys(&store.scan(&[0x00], Some(&[0x7f]), 100).unwrap()), expected[1..4]);
        assert_eq!(keys(&store.scan(&[0xff], None, 100).unwrap()), expected[5..]);
        assert_eq!(keys(&store.scan(&[0x80], Some(&[0xff, 0x00]), 100).unwrap()), expected[5..]);
        for key in binary {
            assert_eq!(store.get(key).unwrap(), Some(versioned(1, key)), "key {key:?}");
        }
    }

    pub fn empty_value_is_distinct_from_absent_key(store: &impl Store) {
        store.apply(&[put(b"empty", b"")], 5).unwrap();
        assert_eq!(store.get(b"empty").unwrap(), Some(versioned(5, b"")));
        assert_eq!(store.get(b"absent").unwrap(), None);
        assert_eq!(
            store.scan(b"", None, 10).unwrap(),
            vec![(b"empty".to_vec(), versioned(5, b""))]
        );
        store.apply(&[delete(b"empty")], 6).unwrap();
        assert_eq!(store.get(b"empty").unwrap(), None);
    }

    pub fn committed_state_reads_what_get_reads(store: &impl Store) {
        store.apply(&[put(b"k", b"v")], 3).unwrap();
        let state = StoreState(store);
        assert_eq!(CommittedState::get(&state, b"k").unwrap(), Some(versioned(3, b"v")));
        assert_eq!(CommittedState::get(&state, b"missing").unwrap(), None);
        // Through a trait object, as a driver holding `Arc<dyn Store>` uses it.
        let object: &dyn Store = store;
        assert_eq!(
            CommittedState::get(&StoreState(object), b"k").unwrap(),
            Some(versioned(3, b"v"))
        );
    }

    pub fn sync_keeps_the_applied_state(store: &impl Store) {
        store.apply(&[put(b"a", b"1"), put(b"b", b"2")], 1).unwrap();
        store.sync().unwrap();
        store.apply(&[delete(b"a")], 2).unwrap();
        store.sync().unwrap();
        store.sync().unwrap();
        assert_eq!(store.scan(b"", None, 10).unwrap(), vec![(b"b".to_vec(), versioned(1, b"2"))]);
    }

    pub fn apply_all_equals_one_apply_per_commit(store: &impl Store) {
        store.apply(&[put(b"gone", b"0"), put(b"kept", b"0")], 1).unwrap();
        // A single write (the plain insert path), a several-key commit, a delete, and a key
        // two commits write (the later one, in LSN order, wins).
        let single = [put(b"a", b"1")];
        let several = [put(b"b", b"2"), put(b"c", b"3"), delete(b"gone")];
        let later = [put(b"c", b"4")];
        store.apply_all(&[(&single, 2), (&several, 3), (&later, 4)]).unwrap();
        assert_eq!(
            store.scan(b"", None, 10).unwrap(),
            vec![
                (b"a".to_vec(), versioned(2, b"1")),
                (b"b".to_vec(), versioned(3, b"2")),
                (b"c".to_vec(), versioned(4, b"4")),
                (b"kept".to_vec(), versioned(1, b"0")),
            ]
        );
        // One commit of one delete, alone.
        store.apply_all(&[(&[delete(b"a")], 5)]).unwrap();
        assert_eq!(store.get(b"a").unwrap(), None);
        store.apply_all(&[]).unwrap();
        assert_eq!(store.scan(b"", None, 10).unwrap().len(), 3);
    }

    pub fn concurrent_applies_from_many_threads_all_land(store: &impl Store) {
        const THREADS: u64 = 4;
        const BATCHES: u64 = 50;
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                scope.spawn(move || {
                    for batch in 0..BATCHES {
                        let version = thread * BATCHES + batch + 1;
                        let key = format!("t{thread}-{batch:03}");
                        store
                            .apply(&[put(key.as_bytes(), &version.to_be_bytes())], version)
                            .unwrap();
                    }
                });
            }
        });
        let entries = store.scan(b"", None, usize::MAX).unwrap();
        assert_eq!(entries.len() as u64, THREADS * BATCHES);
        for (_, entry) in entries {
            assert_eq!(entry.value, entry.version.to_be_bytes());
        }
    }
}

/// Instantiates every check in [`checks`] as a test in module `$module`, each on a fresh store
/// made by `$open` (an expression giving a value whose `.store` field is the store).
macro_rules! conformance_suite {
    ($module:ident, $open:expr) => {
        mod $module {
            use super::*;

            /// Reading a key never written, or written by nobody, gives None.
            #[test]
            fn get_of_missing_key_is_none() {
                checks::get_of_missing_key_is_none(&$open.store);
            }

            /// A put reads back with its value and version; a later put replaces both.
            #[test]
            fn put_then_get_returns_value_and_version() {
                checks::put_then_get_returns_value_and_version(&$open.store);
            }

            /// A delete removes the key from get and scan, and deleting an absent key is a no-op.
            #[test]
            fn delete_removes_the_key() {
                checks::delete_removes_the_key(&$open.store);
            }

            /// One apply sets, replaces and deletes several keys, each taking its version.
            #[test]
            fn apply_sets_every_write_with_the_version() {
                checks::apply_sets_every_write_with_the_version(&$open.store);
            }

            /// When a batch writes one key twice, its last write is what the store keeps.
            #[test]
            fn last_write_to_a_key_in_a_batch_wins() {
                checks::last_write_to_a_key_in_a_batch_wins(&$open.store);
            }

            /// Applying the same batch at the same version twice leaves the same state.
            #[test]
            fn apply_is_atomic_and_idempotent() {
                checks::apply_is_atomic_and_idempotent(&$open.store);
            }

            /// Replaying history in LSN order from any position ends at the newest state.
            #[test]
            fn replaying_versions_in_order_ends_at_the_newest() {
                checks::replaying_versions_in_order_ends_at_the_newest(&$open.store);
            }

            /// Scan honours inclusive start, exclusive or unbounded end, limit and key order.
            #[test]
            fn scan_respects_bounds_limit_and_key_order() {
                checks::scan_respects_bounds_limit_and_key_order(&$open.store);
            }

            /// Binary keys (empty, 0x00, 0xff) are stored and scanned in bytewise order.
            #[test]
            fn scan_orders_binary_keys_bytewise() {
                checks::scan_orders_binary_keys_bytewise(&$open.store);
            }

            /// A key holding an empty value is present; a deleted or unwritten key is absent.
            #[test]
            fn empty_value_is_distinct_from_absent_key() {
                checks::empty_value_is_distinct_from_absent_key(&$open.store);
            }

            /// The engine's view through StoreState reads exactly what Store::get reads.
            #[test]
            fn committed_state_reads_what_get_reads() {
                checks::committed_state_reads_what_get_reads(&$open.store);
            }

            /// Sync succeeds repeatedly and leaves the applied state as it was.
            #[test]
            fn sync_keeps_the_applied_state() {
                checks::sync_keeps_the_applied_state(&$open.store);
            }

            /// Several commits applied together end as one apply per commit, in order.
            #[test]
            fn apply_all_equals_one_apply_per_commit() {
                checks::apply_all_equals_one_apply_per_commit(&$open.store);
            }

            /// Applies racing from several threads all take effect, none torn.
            #[test]
            fn concurrent_applies_from_many_threads_all_land() {
                checks::concurrent_applies_from_many_threads_all_land(&$open.store);
            }
        }
    };
}

/// A sled store in a temporary directory that outlives it.
struct SledFixture {
    /// Declared first so it is dropped (and sled closed) before the directory is removed.
    store: SledStore,
    dir: tempfile::TempDir,
}

fn open_sled() -> SledFixture {
    let dir = tempfile::tempdir().unwrap();
    SledFixture { store: SledStore::open(&dir.path().join("store")).unwrap(), dir }
}

/// A fresh memory store.
struct MemoryFixture {
    store: MemoryStore,
}

fn open_memory() -> MemoryFixture {
    MemoryFixture { store: MemoryStore::new() }
}

conformance_suite!(sled, open_sled());
conformance_suite!(memory, open_memory());

mod sled_only {
    use super::*;

    /// Everything applied before a sync is there after dropping the store and reopening it.
    #[test]
    fn reopen_after_sync_keeps_everything() {
        let fixture = open_sled();
        let path = fixture.store.dir().to_path_buf();
        fixture.store.apply(&[put(b"a", b"1"), put(b"b", b""), put(&[0xff], b"x")], 1).unwrap();
        fixture.store.apply(&[delete(b"a"), put(b"c", b"3")], 2).unwrap();
        fixture.store.sync().unwrap();
        let before = fixture.store.scan(b"", None, 100).unwrap();
        assert_eq!(keys(&before), vec![b"b".to_vec(), b"c".to_vec(), vec![0xff]]);
        let SledFixture { store, dir } = fixture;
        drop(store);

        let reopened = SledStore::open(&path).unwrap();
        assert_eq!(reopened.scan(b"", None, 100).unwrap(), before);
        assert_eq!(reopened.get(b"b").unwrap(), Some(versioned(1, b"")));
        assert_eq!(reopened.get(b"a").unwrap(), None);
        drop(reopened);
        drop(dir);
    }

    /// A directory sled cannot open gives an error naming it and the way back, not a store.
    #[test]
    fn failed_open_names_the_directory_and_the_way_back() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where the store's directory should be.
        let path = dir.path().join("not-a-directory");
        std::fs::write(&path, b"garbage").unwrap();
        let error = SledStore::open(&path).unwrap_err();
        assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("restore the store from a backup"), "{message}");
        assert!(message.contains("replaying its write-ahead log"), "{message}");
    }

    /// A stored value too short to hold its 8-byte version is reported as corruption.
    #[test]
    fn value_shorter_than_its_version_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        {
            // `::sled` is the crate; `sled` here is this file's test module.
            let db = ::sled::open(dir.path()).unwrap();
            db.insert(b"short", [1u8, 2, 3].as_slice()).unwrap();
            db.insert(b"ok", [0u8, 0, 0, 0, 0, 0, 0, 9, b'v'].as_slice()).unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.get(b"ok").unwrap(), Some(versioned(9, b"v")));
        let error = store.get(b"short").unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
        assert!(error.to_string().contains("short"), "{error}");
        let error = store.scan(b"", None, 10).unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    }
}

mod memory_only {
    use super::*;

    /// A crash drops every apply since the last sync and keeps the synced ones.
    #[test]
    fn crash_drops_applies_after_the_last_sync() {
        let store = MemoryStore::new();
        store.apply(&[put(b"a", b"1"), put(b"b", b"2")], 1).unwrap();
        store.sync().unwrap();
        store.apply(&[put(b"a", b"changed"), delete(b"b"), put(b"c", b"3")], 2).unwrap();
        store.crash();
        assert_eq!(
            store.scan(b"", None, 10).unwrap(),
            vec![(b"a".to_vec(), versioned(1, b"1")), (b"b".to_vec(), versioned(1, b"2"))]
        );
        // A crash with nothing synced leaves nothing.
        let fresh = MemoryStore::new();
        fresh.apply(&[put(b"a", b"1")], 1).unwrap();
        fresh.crash();
        assert_eq!(fresh.get(b"a").unwrap(), None);
    }

    /// Clones share one simulated disk: a restarted clone sees what the first one synced.
    #[test]
    fn clones_share_storage_across_a_crash() {
        let store = MemoryStore::new();
        let restarted = store.clone();
        store.apply(&[put(b"k", b"v")], 4).unwrap();
        assert_eq!(restarted.get(b"k").unwrap(), Some(versioned(4, b"v")));
        store.sync().unwrap();
        store.apply(&[put(b"k", b"lost")], 5).unwrap();
        restarted.crash();
        assert_eq!(store.get(b"k").unwrap(), Some(versioned(4, b"v")));
    }

    /// After a failed sync the store refuses applies and syncs until a crash clears it.
    #[test]
    fn failed_sync_is_never_retried() {
        let store = MemoryStore::new();
        store.apply(&[put(b"k", b"v")], 1).unwrap();
        store.fail_syncs("disk gone");
        assert!(matches!(store.sync(), Err(StoreError::Failed(_))));
        assert!(matches!(store.sync(), Err(StoreError::Failed(_))));
        assert!(matches!(store.apply(&[put(b"x", b"y")], 2), Err(StoreError::Failed(_))));
        store.crash();
        assert_eq!(store.get(b"k").unwrap(), None);
        store.apply(&[put(b"k", b"again")], 3).unwrap();
        store.sync().unwrap();
    }
}
