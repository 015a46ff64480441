//! The [`DecisionLog`] contract, checked against every implementation: the file WAL and the
//! in-memory one the simulation uses (both through [`WalLog`]). A new implementation (etcd)
//! adds a [`Subject`] and runs the same cases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use concord_coordinator::{DecisionLog, LogError, WalLog};
use concord_core::coordinator::CoordinatorRecord;
use concord_core::coordinator::replay::{Replay, ReplayedState};
use concord_core::types::{Epoch, TxnId};
use concord_wal::{FileWal, FileWalOptions, MemoryWal};

/// The largest record the subjects take.
const MAX_RECORD_BYTES: usize = 64 * 1024;

/// One implementation under test, with what the cases need to do to it.
trait Subject: Sized {
    type Log: DecisionLog;
    fn open() -> Self;
    fn log(&self) -> &Self::Log;
    /// Kills the process holding the log (records not forced may be lost) and reopens it.
    fn crash_and_reopen(self) -> Self;
    /// Makes the log's storage fail, if the implementation can be told to (else `false`).
    fn fail_storage(&self) -> bool;
}

struct File {
    dir: tempfile::TempDir,
    log: WalLog<FileWal>,
}

fn file_options() -> FileWalOptions {
    // Small segments, so truncation has whole segments to remove.
    FileWalOptions { segment_bytes: 4096, max_record_bytes: MAX_RECORD_BYTES, preallocate: true }
}

impl Subject for File {
    type Log = WalLog<FileWal>;
    fn open() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = WalLog::new(FileWal::open(dir.path(), file_options()).unwrap(), MAX_RECORD_BYTES);
        File { dir, log }
    }
    fn log(&self) -> &Self::Log {
        &self.log
    }
    fn crash_and_reopen(self) -> Self {
        self.log.into_inner().crash();
        let log =
            WalLog::new(FileWal::open(self.dir.path(), file_options()).unwrap(), MAX_RECORD_BYTES);
        File { dir: self.dir, log }
    }
    fn fail_storage(&self) -> bool {
        false // a real disk cannot be told to fail here; tests/file_corruption.rs covers I/O
    }
}

struct Memory {
    wal: MemoryWal,
    log: WalLog<MemoryWal>,
}

impl Subject for Memory {
    type Log = WalLog<MemoryWal>;
    fn open() -> Self {
        let wal = MemoryWal::new(MAX_RECORD_BYTES);
        Memory { log: WalLog::new(wal.clone(), MAX_RECORD_BYTES), wal }
    }
    fn log(&self) -> &Self::Log {
        &self.log
    }
    fn crash_and_reopen(self) -> Self {
        self.wal.crash();
        Memory { log: WalLog::new(self.wal.clone(), MAX_RECORD_BYTES), wal: self.wal }
    }
    fn fail_storage(&self) -> bool {
        self.wal.fail_syncs("injected by the conformance suite");
        true
    }
}

fn txn(id: &str) -> TxnId {
    TxnId::parse(id, "txn_id").unwrap()
}

fn started(id: &str) -> CoordinatorRecord {
    CoordinatorRecord::Started {
        txn: txn(id),
        participants: vec!["a".into(), "b".into()],
        created_unix_ms: 1,
        deadline_unix_ms: 2,
    }
}

fn replayed<L: DecisionLog>(log: &L) -> Vec<CoordinatorRecord> {
    log.replay().unwrap().map(Result::unwrap).collect()
}

fn state_of<L: DecisionLog>(log: &L, id: &str) -> Option<ReplayedState> {
    let mut replay = Replay::default();
    for record in replayed(log) {
        replay.apply(record);
    }
    replay.finish().txns.into_iter().find(|(t, _)| *t == txn(id)).map(|(_, t)| t.state)
}

/// Positions grow with every append, and replay gives the records back in that order.
async fn positions_grow_and_replay_keeps_order<S: Subject>() {
    let subject = S::open();
    let log = subject.log();
    let mut last = None;
    for i in 0..20 {
        let position = log.append(&started(&format!("t{i}"))).unwrap();
        assert!(last.is_none_or(|last| position > last), "positions must grow");
        last = Some(position);
    }
    log.force(last.unwrap()).await.unwrap();
    let expected: Vec<_> = (0..20).map(|i| started(&format!("t{i}"))).collect();
    assert_eq!(replayed(log), expected);
}

/// What was forced survives a crash; what survives is a prefix of what was appended.
async fn forced_records_survive_a_crash<S: Subject>() {
    let subject = S::open();
    let log = subject.log();
    log.append(&started("a")).unwrap();
    let b = log.append(&started("b")).unwrap();
    log.force(b).await.unwrap();
    log.append(&started("c")).unwrap();
    let subject = subject.crash_and_reopen();
    let after = replayed(subject.log());
    assert!(after.len() >= 2, "both forced records survive: {after:?}");
    let appended = [started("a"), started("b"), started("c")];
    assert_eq!(after[..], appended[..after.len()], "a prefix of what was appended");
    // Appending goes on after the survivors, and positions stay unique.
    let d = subject.log().append_forced(&started("d")).await.unwrap();
    assert!(d > b);
    assert_eq!(replayed(subject.log()).last(), Some(&started("d")));
}

/// A checkpoint replaces everything before it on replay, keeps records others appended while
/// it was written, and lets what came before be truncated without changing the state.
async fn a_checkpoint_replaces_the_past_and_keeps_interleaved_records<S: Subject>() {
    let subject = S::open();
    let log = subject.log();
    // Enough history to span several segments.
    for i in 0..200 {
        let id = format!("old-{i}");
        log.append(&started(&id)).unwrap();
        log.append(&CoordinatorRecord::Aborted {
            txn: txn(&id),
            cause: concord_core::coordinator::AbortCause::Deadline,
        })
        .unwrap();
    }
    log.append(&started("kept")).unwrap();
    let start = log.begin_checkpoint(42, Epoch(3), 0).unwrap();
    // Appended by a running transaction while the checkpoint is being written.
    log.append(&CoordinatorRecord::Commit {
        txn: txn("kept"),
        participants: vec!["a".into(), "b".into()],
        pending: vec![0, 1],
        decided_unix_ms: 5,
    })
    .unwrap();
    let end = log.write_checkpoint(start, vec![started("kept")]).unwrap();
    assert!(end > start.position);
    log.force(end).await.unwrap();
    log.truncate_before(start.position).unwrap();
    assert_eq!(state_of(log, "kept"), Some(ReplayedState::Committing { pending: vec![0, 1] }));
    assert_eq!(state_of(log, "old-0"), None, "the checkpoint replaced the past");
    let subject = subject.crash_and_reopen();
    assert_eq!(
        state_of(subject.log(), "kept"),
        Some(ReplayedState::Committing { pending: vec![0, 1] }),
        "the state survives a restart after truncation"
    );
}

/// A large snapshot is written in records the log takes, and reads back whole.
async fn a_large_checkpoint_is_split_into_records_that_fit<S: Subject>() {
    let subject = S::open();
    let log = subject.log();
    let entries: Vec<_> = (0..3_000).map(|i| started(&format!("txn-{i:05}"))).collect();
    let start = log.begin_checkpoint(7, Epoch(1), 0).unwrap();
    let end = log.write_checkpoint(start, entries).unwrap();
    log.force(end).await.unwrap();
    let mut replay = Replay::default();
    for record in replayed(log) {
        replay.apply(record);
    }
    assert_eq!(replay.finish().txns.len(), 3_000);
}

/// A record larger than the log takes is refused, and nothing of it is appended.
async fn an_oversized_record_is_refused_without_effect<S: Subject>() {
    let subject = S::open();
    let log = subject.log();
    let huge = CoordinatorRecord::Started {
        txn: txn("huge"),
        participants: vec!["p".repeat(1024); MAX_RECORD_BYTES / 512],
        created_unix_ms: 0,
        deadline_unix_ms: 0,
    };
    assert!(matches!(log.append(&huge), Err(LogError::TooLarge { .. })));
    let small = log.append_forced(&started("small")).await.unwrap();
    assert_eq!(replayed(log), vec![started("small")]);
    assert!(small.0 > 0);
}

/// Once the storage failed, every later append and force fails too.
async fn failure_is_final<S: Subject>() {
    let subject = S::open();
    let log = subject.log();
    let before = log.append(&started("before")).unwrap();
    if !subject.fail_storage() {
        return;
    }
    assert!(log.force(before).await.is_err());
    assert!(log.append(&started("after")).is_err());
    assert!(log.append_forced(&started("after")).await.is_err());
}

macro_rules! conformance {
    ($module:ident, $subject:ty) => {
        mod $module {
            use super::*;

            /// Positions grow; replay keeps append order.
            #[tokio::test]
            async fn positions_grow_and_replay_keeps_order() {
                super::positions_grow_and_replay_keeps_order::<$subject>().await;
            }

            /// Forced records survive a crash, as a prefix.
            #[tokio::test]
            async fn forced_records_survive_a_crash() {
                super::forced_records_survive_a_crash::<$subject>().await;
            }

            /// A checkpoint replaces the past, keeps interleaved records, survives truncation.
            #[tokio::test]
            async fn a_checkpoint_replaces_the_past_and_keeps_interleaved_records() {
                super::a_checkpoint_replaces_the_past_and_keeps_interleaved_records::<$subject>()
                    .await;
            }

            /// A large checkpoint is split into records that fit.
            #[tokio::test]
            async fn a_large_checkpoint_is_split_into_records_that_fit() {
                super::a_large_checkpoint_is_split_into_records_that_fit::<$subject>().await;
            }

            /// An oversized record is refused without effect.
            #[tokio::test]
            async fn an_oversized_record_is_refused_without_effect() {
                super::an_oversized_record_is_refused_without_effect::<$subject>().await;
            }

            /// Failure is final.
            #[tokio::test]
            async fn failure_is_final() {
                super::failure_is_final::<$subject>().await;
            }
        }
    };
}

conformance!(file_wal, File);
conformance!(memory_wal, Memory);
