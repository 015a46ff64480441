//! The conformance suite of the [`Wal`] contract (`src/lib.rs`), run against every implementation.
//!
//! Each check is a generic async function over a [`Harness`], which knows how to open, close and
//! crash one kind of log. The `conformance_tests!` macro turns every check into a named
//! `#[tokio::test]` twice: in `mod file` ([`FileWal`] in a temporary directory, with segments small
//! enough that the logs here roll over many of them) and in `mod memory` ([`MemoryWal`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use concord_wal::{FileWal, FileWalOptions, Lsn, MemoryWal, Record, Wal, WalError};

/// The payload limit both harnesses configure.
const MAX_RECORD_BYTES: usize = 1024;
/// Small file segments, so that a few dozen records roll over to a new segment.
const SEGMENT_BYTES: u64 = 4096;
/// A check that runs longer than this is hung (a `wait_durable` that never resolves, say) and
/// fails instead of blocking the test run forever.
const CHECK_DEADLINE: Duration = Duration::from_secs(120);

/// Opens, closes and crashes one kind of log, so that every check runs against every
/// implementation.
trait Harness {
    /// The log implementation under test.
    type W: Wal;
    /// A harness over a new, empty log.
    fn new() -> Self;
    /// Opens the log; after [`Harness::close`] or [`Harness::crash`] this is the restart.
    fn open(&mut self) -> Self::W;
    /// Closes `wal` cleanly: every record appended to it becomes durable.
    async fn close(&mut self, wal: Self::W);
    /// Stops `wal` as kill -9 would: records that were not durable may be lost.
    fn crash(&mut self, wal: Self::W);
    /// How many segment files the log occupies, for implementations that have them.
    fn segment_count(&self) -> Option<usize>;
}

/// [`FileWal`] in a temporary directory that outlives every open and close.
struct FileHarness {
    /// Holds the segment files; removed when the harness is dropped.
    dir: tempfile::TempDir,
}

impl Harness for FileHarness {
    type W = FileWal;

    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("create a temporary directory") }
    }

    fn open(&mut self) -> FileWal {
        let options = FileWalOptions {
            segment_bytes: SEGMENT_BYTES,
            max_record_bytes: MAX_RECORD_BYTES,
            preallocate: true,
        };
        FileWal::open(self.dir.path(), options).expect("open the file log")
    }

    async fn close(&mut self, wal: FileWal) {
        wal.close().expect("close the file log");
    }

    fn crash(&mut self, wal: FileWal) {
        wal.crash();
    }

    fn segment_count(&self) -> Option<usize> {
        let entries = std::fs::read_dir(self.dir.path()).expect("list the log directory");
        let names = entries.map(|entry| entry.expect("read a directory entry").file_name());
        Some(
            names
                .filter(|name| {
                    name.to_str().and_then(concord_wal::format::parse_segment_file_name).is_some()
                })
                .count(),
        )
    }
}

/// [`MemoryWal`]: every open hands out a clone sharing the same storage.
struct MemoryHarness {
    /// The log's storage; survives the handles given to the checks.
    wal: MemoryWal,
}

impl Harness for MemoryHarness {
    type W = MemoryWal;

    fn new() -> Self {
        Self { wal: MemoryWal::new(MAX_RECORD_BYTES) }
    }

    fn open(&mut self) -> MemoryWal {
        self.wal.clone()
    }

    async fn close(&mut self, wal: MemoryWal) {
        // `FileWal::close` writes and syncs everything appended. The memory log has no close, so
        // the harness makes everything durable, and checks can expect the same of both.
        let last = wal.last_lsn();
        if wal.durable_lsn() < last {
            wal.wait_durable(last).await.expect("sync the memory log");
        }
    }

    fn crash(&mut self, wal: MemoryWal) {
        wal.crash();
    }

    fn segment_count(&self) -> Option<usize> {
        None
    }
}

/// Runs `check`, failing if it does not finish within [`CHECK_DEADLINE`].
async fn within_deadline(check: impl Future<Output = ()>) {
    tokio::time::timeout(CHECK_DEADLINE, check)
        .await
        .expect("the check did not finish in time: is a wait_durable never resolving?");
}

/// Instantiates every check for one harness as `#[tokio::test]`s named after the checks.
macro_rules! conformance_tests {
    ($harness:ty) => {
        conformance_tests!(@emit $harness;
            /// An empty log has no records and says so through every accessor, also after reopen.
            #[tokio::test]
            empty_log_reports_no_records;
            /// The first append gets LSN 1 and later ones consecutive LSNs; last_lsn and
            /// durable_lsn follow append and wait_durable.
            #[tokio::test]
            lsns_start_at_one_and_are_consecutive;
            /// Empty payloads and payloads of exactly the size limit round-trip, also after reopen.
            #[tokio::test]
            empty_and_max_size_payloads_round_trip;
            /// A payload over the limit is refused with RecordTooLarge and takes no LSN.
            #[tokio::test]
            oversized_payload_is_rejected_and_appends_nothing;
            /// Records of varied sizes over many segment rolls read back equal after close and
            /// reopen, and appending continues after the last one.
            #[tokio::test]
            records_survive_close_and_reopen_across_segment_rolls;
            /// read_from starts at the given LSN, anywhere in the log, and is empty past the end.
            #[tokio::test]
            read_from_starts_at_the_given_lsn_and_is_empty_past_the_end;
            /// read_from below first_lsn after a truncation starts at the first retained record.
            #[tokio::test]
            read_from_below_first_lsn_starts_at_the_first_retained_record;
            /// truncate_before keeps every record at or above its LSN, before and after reopen,
            /// and appending continues with the right LSNs.
            #[tokio::test]
            truncate_before_keeps_every_later_record_across_reopen;
            /// After crashes between append and sync, the log is a prefix of what was appended
            /// holding every acknowledged record, and LSNs continue right after it.
            #[tokio::test]
            crash_keeps_a_prefix_with_every_acknowledged_record;
            /// Concurrent appenders each get their records exactly once, in their own order, at
            /// the LSNs they were given, with no gap, also after reopen.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            concurrent_appenders_get_every_record_once_at_consecutive_lsns;
            /// The LSN that append_durable returns is durable and readable at once.
            #[tokio::test]
            append_durable_record_is_readable_at_once;
            /// read_from returns durable records only, never one merely appended.
            #[tokio::test]
            read_from_returns_only_durable_records;
        );
    };
    (@emit $harness:ty; $( $(#[$attribute:meta])* $check:ident; )*) => {
        $(
            $(#[$attribute])*
            async fn $check() {
                let harness = <$harness as crate::Harness>::new();
                crate::within_deadline(crate::$check(harness)).await;
            }
        )*
    };
}

/// The suite against [`FileWal`].
mod file {
    conformance_tests!(crate::FileHarness);
}

/// The suite against [`MemoryWal`].
mod memory {
    conformance_tests!(crate::MemoryHarness);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The payload of the `index`-th record of a test log: 0 to 599 bytes depending on the index, with
/// content that tells records apart.
fn payload(index: u64) -> Vec<u8> {
    let len = usize::try_from((index * 37 + 11) % 600).unwrap();
    let seed = index.to_le_bytes();
    (0..len).map(|at| seed[at % 8] ^ (at % 251) as u8).collect()
}

/// The LSN of the last record of a model log whose `i`-th payload is the record `Lsn(i + 1)`.
fn last_lsn_of(expected: &[Vec<u8>]) -> Lsn {
    Lsn(expected.len() as u64)
}

/// Appends `payload`, checks it got the next LSN of the model `expected`, and records it there.
#[track_caller]
fn append_expecting<W: Wal>(wal: &W, expected: &mut Vec<Vec<u8>>, payload: Vec<u8>) -> Lsn {
    let lsn = wal.append(&payload).expect("append");
    assert_eq!(lsn, last_lsn_of(expected).next(), "append returned an out-of-sequence LSN");
    expected.push(payload);
    lsn
}

/// Appends the records `payload(from)` .. `payload(to - 1)`, waiting for each to be durable
/// before appending the next (a file log rolls segments between syncs, so this spreads the
/// records over segments).
async fn append_durable_range<W: Wal>(wal: &W, expected: &mut Vec<Vec<u8>>, from: u64, to: u64) {
    for index in from..to {
        let lsn = append_expecting(wal, expected, payload(index));
        wal.wait_durable(lsn).await.expect("wait_durable");
    }
}

/// Reads every durable record with LSN `>= from`.
#[track_caller]
fn read_all<W: Wal>(wal: &W, from: Lsn) -> Vec<Record> {
    let records = wal.read_from(from).expect("read_from");
    records.collect::<Result<Vec<_>, _>>().expect("read a record")
}

/// Asserts that `records` are exactly the records `Lsn(first)` to the end of the model
/// `expected`, where `expected[i]` is the payload of `Lsn(i + 1)`.
#[track_caller]
fn assert_records(records: &[Record], first: u64, expected: &[Vec<u8>]) {
    let want = (expected.len() as u64 + 1).saturating_sub(first);
    let lsns = |records: &[Record]| match (records.first(), records.last()) {
        (Some(low), Some(high)) => format!("LSNs {} to {}", low.lsn, high.lsn),
        _ => "no record".to_owned(),
    };
    assert_eq!(
        records.len() as u64,
        want,
        "expected records {first} to {}, read {}",
        expected.len(),
        lsns(records)
    );
    for (at, record) in records.iter().enumerate() {
        let lsn = first + at as u64;
        assert_eq!(record.lsn, Lsn(lsn), "record {at} read has the wrong LSN");
        let want = &expected[usize::try_from(lsn - 1).unwrap()];
        assert!(
            record.payload == *want,
            "record {lsn}: read a {}-byte payload, appended a {}-byte one that differs",
            record.payload.len(),
            want.len()
        );
    }
}

/// Asserts the accessors of a log holding the records `first` to `last`, all durable.
#[track_caller]
fn assert_bounds<W: Wal>(wal: &W, first: Lsn, last: Lsn) {
    assert_eq!(wal.first_lsn(), first, "first_lsn");
    assert_eq!(wal.last_lsn(), last, "last_lsn");
    assert_eq!(wal.durable_lsn(), last, "durable_lsn");
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// An empty log has no records and says so through every accessor, also after reopen.
async fn empty_log_reports_no_records<H: Harness>(mut harness: H) {
    let wal = harness.open();
    assert_bounds(&wal, Lsn(1), Lsn::ZERO);
    assert!(read_all(&wal, Lsn::ZERO).is_empty());
    assert!(read_all(&wal, Lsn(1)).is_empty());
    wal.wait_durable(Lsn::ZERO).await.expect("waiting for no record resolves at once");
    harness.close(wal).await;

    let wal = harness.open();
    assert_bounds(&wal, Lsn(1), Lsn::ZERO);
    assert!(read_all(&wal, Lsn::ZERO).is_empty());
    harness.close(wal).await;
}

/// The first append gets LSN 1 and later ones consecutive LSNs; last_lsn and durable_lsn follow
/// append and wait_durable.
async fn lsns_start_at_one_and_are_consecutive<H: Harness>(mut harness: H) {
    let wal = harness.open();
    let mut expected = Vec::new();
    for index in 0..10 {
        let lsn = append_expecting(&wal, &mut expected, payload(index));
        assert_eq!(lsn, Lsn(index + 1));
        assert_eq!(wal.last_lsn(), lsn);
        assert!(
            wal.durable_lsn() <= lsn,
            "durable_lsn {} passed last_lsn {lsn}",
            wal.durable_lsn()
        );
        assert_eq!(wal.first_lsn(), Lsn(1));
    }
    wal.wait_durable(Lsn(4)).await.expect("wait_durable(4)");
    assert!(wal.durable_lsn() >= Lsn(4), "durable_lsn {} after wait_durable(4)", wal.durable_lsn());
    wal.wait_durable(Lsn(10)).await.expect("wait_durable(10)");
    assert_bounds(&wal, Lsn(1), Lsn(10));
    assert_records(&read_all(&wal, Lsn::ZERO), 1, &expected);
    harness.close(wal).await;

    let wal = harness.open();
    assert_bounds(&wal, Lsn(1), Lsn(10));
    assert_eq!(append_expecting(&wal, &mut expected, payload(10)), Lsn(11));
    wal.wait_durable(Lsn(11)).await.expect("wait_durable(11)");
    assert_records(&read_all(&wal, Lsn::ZERO), 1, &expected);
    harness.close(wal).await;
}

/// Empty payloads and payloads of exactly the size limit round-trip, also after reopen.
async fn empty_and_max_size_payloads_round_trip<H: Harness>(mut harness: H) {
    let wal = harness.open();
    let mut expected = Vec::new();
    let largest: Vec<u8> = (0..MAX_RECORD_BYTES).map(|at| (at % 253) as u8).collect();
    append_expecting(&wal, &mut expected, Vec::new());
    append_expecting(&wal, &mut expected, largest.clone());
    append_expecting(&wal, &mut expected, Vec::new());
    append_expecting(&wal, &mut expected, largest);
    wal.wait_durable(Lsn(4)).await.expect("wait_durable");
    assert_records(&read_all(&wal, Lsn::ZERO), 1, &expected);
    harness.close(wal).await;

    let wal = harness.open();
    assert_bounds(&wal, Lsn(1), Lsn(4));
    assert_records(&read_all(&wal, Lsn::ZERO), 1, &expected);
    harness.close(wal).await;
}

/// A payload over the limit is refused with RecordTooLarge and takes no LSN.
async fn oversized_payload_is_rejected_and_appends_nothing<H: Harness>(mut harness: H) {
    let wal = harness.open();
    let mut expected = Vec::new();
    append_expecting(&wal, &mut expected, payload(0));
    for len in [MAX_RECORD_BYTES + 1, 4 * MAX_RECORD_BYTES] {
        match wal.append(&vec![7; len]) {
            Err(WalError::RecordTooLarge { len: refused, max }) => {
                assert_eq!(refused, len, "RecordTooLarge reports the payload length");
                assert_eq!(max, MAX_RECORD_BYTES, "RecordTooLarge reports the limit");
            }
            other => panic!("appending {len} bytes: expected RecordTooLarge, got {other:?}"),
        }
        assert_eq!(wal.last_lsn(), Lsn(1), "a refused append took an LSN");
    }
    match wal.append_durable(&vec![7; MAX_RECORD_BYTES + 1]).await {
        Err(WalError::RecordTooLarge { .. }) => {}
        other => panic!("append_durable over the limit: expected RecordTooLarge, got {other:?}"),
    }
    assert_eq!(wal.last_lsn(), Lsn(1), "a refused append_durable took an LSN");

    assert_eq!(append_expecting(&wal, &mut expected, payload(1)), Lsn(2));
    wal.wait_durable(Lsn(2)).await.expect("wait_durable");
    assert_records(&read_all(&wal, Lsn::ZERO), 1, &expected);
    harness.close(wal).await;

    let wal = harness.open();
    assert_bounds(&wal, Lsn(1), Lsn(2));
    assert_records(&read_all(&wal, Lsn::ZERO), 1, &expected);
    harness.close(wal).await;
}

/// Records of varied sizes over many segment rolls read back equal after close and reopen, and
/// appending continues after the last one.
async fn records_survive_close_and_reopen_across_segment_rolls<H: Harness>(mut harness: H) {
    const RECORDS: u64 = 300;
    let wal = harness.open();
    let mut expected = Vec::new();
    for index in 0..RECORDS {
        let lsn = append_expecting(&wal, &mut expected, payload(index));
        // Some records are waited for one by one, the others share a sync with their neighbours.
        if index % 7 == 0 {
            wal.wait_durable(lsn).await.expect("wait_durable");
        }
    }
    wal.wait_durable(Lsn(RECORDS)).await.expect("wait_durable");
    assert_records(&read_all(&wal, Lsn::ZERO), 1, &expected);
    if let Some(segments) = harness.segment_count() {
        assert!(segments >= 5, "the log should have rolled over several segments, has {segments}");
    }
    harness.close(wal).await;

    let wal = harness.open();
    assert_bounds(&wal, Lsn(1), Lsn(RECORDS));
    assert_records(&read_all(&wal, Lsn::ZERO), 1, &expected);
    append_durable_range(&wal, &mut expected, RECORDS, RECORDS + 50).await;
    assert_records(&read_all(&wal, Lsn::ZERO), 1, &expected);
    harness.close(wal).await;

    let wal = harness.open();
    assert_bounds(&wal, Lsn(1), Lsn(RECORDS + 50));
    assert_records(&read_all(&wal, Lsn::ZERO), 1, &expected);
    harness.close(wal).await;
}

/// read_from starts at the given LSN, anywhere in the log, and is empty past the end.
async fn read_from_starts_at_the_given_lsn_and_is_empty_past_the_end<H: Harness>(mut harness: H) {
    let wal = harness.open();
    let mut expected = Vec::new();
    append_durable_range(&wal, &mut expected, 0, 100).await;
    assert_records(&read_all(&wal, Lsn::ZERO), 1, &expected);
    for from in [1, 2, 37, 64, 99, 100] {
        assert_records(&read_all(&wal, Lsn(from)), from, &expected);
    }
    assert!(read_all(&wal, Lsn(101)).is_empty(), "read_from just past the end");
    assert!(read_all(&wal, Lsn(1000)).is_empty(), "read_from far past the end");
    harness.close(wal).await;
}

/// read_from below first_lsn after a truncation starts at the first retained record.
async fn read_from_below_first_lsn_starts_at_the_first_retained_record<H: Harness>(mut harness: H) {
    let wal = harness.open();
    let mut expected = Vec::new();
    append_durable_range(&wal, &mut expected, 0, 200).await;
    wal.truncate_before(Lsn(100)).expect("truncate_before");
    let first = wal.first_lsn();
    assert!(
        Lsn(1) < first && first <= Lsn(100),
        "first_lsn {first} after truncate_before(100) of 200 records"
    );
    for from in [Lsn::ZERO, Lsn(1), Lsn(first.0 - 1), first] {
        assert_records(&read_all(&wal, from), first.0, &expected);
    }
    assert_records(&read_all(&wal, Lsn(150)), 150, &expected);
    harness.close(wal).await;
}

/// truncate_before keeps every record at or above its LSN, before and after reopen, and appending
/// continues with the right LSNs.
async fn truncate_before_keeps_every_later_record_across_reopen<H: Harness>(mut harness: H) {
    let wal = harness.open();
    let mut expected = Vec::new();
    append_durable_range(&wal, &mut expected, 0, 200).await;

    // Nothing lies below the first record: these truncations release nothing.
    wal.truncate_before(Lsn::ZERO).expect("truncate_before(0)");
    wal.truncate_before(Lsn(1)).expect("truncate_before(1)");
    assert_bounds(&wal, Lsn(1), Lsn(200));
    assert_records(&read_all(&wal, Lsn::ZERO), 1, &expected);

    let segments_before = harness.segment_count();
    wal.truncate_before(Lsn(120)).expect("truncate_before(120)");
    let first = wal.first_lsn();
    assert!(Lsn(1) < first && first <= Lsn(120), "first_lsn {first} after truncate_before(120)");
    assert_eq!(wal.last_lsn(), Lsn(200));
    assert_records(&read_all(&wal, first), first.0, &expected);
    assert_records(&read_all(&wal, Lsn(120)), 120, &expected);
    if let (Some(before), Some(after)) = (segments_before, harness.segment_count()) {
        assert!(
            after < before,
            "truncate_before removed no segment: {before} before, {after} after"
        );
    }
    append_durable_range(&wal, &mut expected, 200, 210).await;
    assert_records(&read_all(&wal, first), first.0, &expected);
    harness.close(wal).await;

    let wal = harness.open();
    let first = wal.first_lsn();
    assert!(Lsn(1) < first && first <= Lsn(120), "first_lsn {first} after reopen");
    assert_eq!(wal.last_lsn(), Lsn(210));
    assert_eq!(wal.durable_lsn(), Lsn(210));
    assert_records(&read_all(&wal, Lsn::ZERO), first.0, &expected);
    assert_records(&read_all(&wal, Lsn(120)), 120, &expected);
    assert_eq!(append_expecting(&wal, &mut expected, payload(210)), Lsn(211));
    wal.wait_durable(Lsn(211)).await.expect("wait_durable");

    // Truncating up to the newest record keeps that record.
    wal.truncate_before(Lsn(211)).expect("truncate_before(211)");
    let first = wal.first_lsn();
    assert!(first <= Lsn(211), "first_lsn {first} after truncate_before(211)");
    assert_records(&read_all(&wal, Lsn(211)), 211, &expected);
    assert_records(&read_all(&wal, Lsn::ZERO), first.0, &expected);
    harness.close(wal).await;

    let wal = harness.open();
    let first = wal.first_lsn();
    assert!(first <= Lsn(211), "first_lsn {first} after the second reopen");
    assert_eq!(wal.last_lsn(), Lsn(211));
    assert_records(&read_all(&wal, Lsn::ZERO), first.0, &expected);
    assert_eq!(append_expecting(&wal, &mut expected, payload(211)), Lsn(212));
    wal.wait_durable(Lsn(212)).await.expect("wait_durable");
    assert_records(&read_all(&wal, Lsn(211)), 211, &expected);
    harness.close(wal).await;
}

/// After crashes between append and sync, the log is a prefix of what was appended holding every
/// acknowledged record, and LSNs continue right after it.
async fn crash_keeps_a_prefix_with_every_acknowledged_record<H: Harness>(mut harness: H) {
    // Per round: how many records are appended and acknowledged by one wait_durable on the last
    // of them, then how many more are appended without waiting before the crash.
    const ROUNDS: [(u64, u64); 4] = [(0, 5), (12, 20), (30, 0), (1, 40)];
    let mut expected: Vec<Vec<u8>> = Vec::new();
    let mut acknowledged = Lsn::ZERO;
    let mut next_payload = 0;
    let mut wal = harness.open();
    for (round, (waited, unwaited)) in ROUNDS.into_iter().enumerate() {
        for at in 0..waited + unwaited {
            let lsn = append_expecting(&wal, &mut expected, payload(next_payload));
            next_payload += 1;
            if at + 1 == waited {
                wal.wait_durable(lsn).await.expect("wait_durable");
                acknowledged = lsn;
            }
        }
        harness.crash(wal);
        wal = harness.open();

        let records = read_all(&wal, Lsn::ZERO);
        let survived = records.len();
        assert!(
            survived <= expected.len(),
            "round {round}: {survived} records after the crash, only {} appended",
            expected.len()
        );
        assert_records(&records, 1, &expected[..survived]);
        assert!(
            Lsn(survived as u64) >= acknowledged,
            "round {round}: record {acknowledged} was acknowledged durable, only {survived} \
             survived"
        );
        expected.truncate(survived);
        assert_bounds(&wal, Lsn(1), last_lsn_of(&expected));
    }

    // The next round's first append checked that LSNs continue after the survivors; check once
    // more after the last crash, and that the new records survive a clean reopen.
    let lsn = append_expecting(&wal, &mut expected, payload(next_payload));
    wal.wait_durable(lsn).await.expect("wait_durable");
    assert_records(&read_all(&wal, Lsn::ZERO), 1, &expected);
    harness.close(wal).await;
    let wal = harness.open();
    assert_bounds(&wal, Lsn(1), last_lsn_of(&expected));
    assert_records(&read_all(&wal, Lsn::ZERO), 1, &expected);
    harness.close(wal).await;
}

/// The payload of sequence number `sequence` of appender `task`.
fn task_payload(task: u32, sequence: u32) -> Vec<u8> {
    let mut payload = task.to_le_bytes().to_vec();
    payload.extend_from_slice(&sequence.to_le_bytes());
    payload
}

/// Decodes a [`task_payload`] back into its task and sequence number.
#[track_caller]
fn decode_task_payload(record: &Record) -> (u32, u32) {
    assert_eq!(record.payload.len(), 8, "record {} is not an appender's record", record.lsn);
    let task = u32::from_le_bytes(record.payload[0..4].try_into().unwrap());
    let sequence = u32::from_le_bytes(record.payload[4..8].try_into().unwrap());
    (task, sequence)
}

/// Checks the log written by the concurrent appenders against the LSNs each one was given.
#[track_caller]
fn assert_concurrent_log(records: &[Record], given: &[Vec<Lsn>], tasks: u32, per_task: u32) {
    let total = u64::from(tasks) * u64::from(per_task);
    assert_eq!(records.len() as u64, total, "every appended record is in the log");
    let mut next_sequence = vec![0u32; tasks as usize];
    for (at, record) in records.iter().enumerate() {
        assert_eq!(record.lsn, Lsn(at as u64 + 1), "LSNs are consecutive from 1");
        let (task, sequence) = decode_task_payload(record);
        assert!(task < tasks, "record {} names appender {task}, which does not exist", record.lsn);
        let next = &mut next_sequence[task as usize];
        // Each appender waits for one record before appending the next, so its records appear
        // exactly once each, in its own order.
        assert_eq!(sequence, *next, "record {} of appender {task} out of order", record.lsn);
        *next += 1;
    }
    assert!(next_sequence.iter().all(|&count| count == per_task));
    for (task, lsns) in given.iter().enumerate() {
        assert_eq!(lsns.len(), per_task as usize);
        for (sequence, lsn) in lsns.iter().enumerate() {
            let record = &records[usize::try_from(lsn.0 - 1).unwrap()];
            assert_eq!(
                decode_task_payload(record),
                (u32::try_from(task).unwrap(), u32::try_from(sequence).unwrap()),
                "append_durable returned {lsn} to appender {task} for sequence {sequence}"
            );
        }
    }
}

/// Concurrent appenders each get their records exactly once, in their own order, at the LSNs they
/// were given, with no gap, also after reopen.
async fn concurrent_appenders_get_every_record_once_at_consecutive_lsns<H: Harness>(
    mut harness: H,
) {
    const TASKS: u32 = 64;
    const PER_TASK: u32 = 200;
    let wal = Arc::new(harness.open());
    let appenders: Vec<_> = (0..TASKS)
        .map(|task| {
            let wal = Arc::clone(&wal);
            tokio::spawn(async move {
                let mut lsns = Vec::with_capacity(PER_TASK as usize);
                for sequence in 0..PER_TASK {
                    let payload = task_payload(task, sequence);
                    let lsn = wal.append_durable(&payload).await.expect("append_durable");
                    assert!(wal.durable_lsn() >= lsn, "append_durable returned before durable");
                    lsns.push(lsn);
                }
                lsns
            })
        })
        .collect();
    let mut given = Vec::with_capacity(appenders.len());
    for appender in appenders {
        given.push(appender.await.expect("appender task"));
    }
    let total = Lsn(u64::from(TASKS) * u64::from(PER_TASK));
    let wal = Arc::try_unwrap(wal).ok().expect("the appenders dropped their handles");
    assert_bounds(&wal, Lsn(1), total);
    let records = read_all(&wal, Lsn::ZERO);
    assert_concurrent_log(&records, &given, TASKS, PER_TASK);
    harness.close(wal).await;

    let wal = harness.open();
    assert_bounds(&wal, Lsn(1), total);
    let reopened = read_all(&wal, Lsn::ZERO);
    assert!(reopened == records, "the log read after reopen differs from the one before");
    harness.close(wal).await;
}

/// The LSN that append_durable returns is durable and readable at once.
async fn append_durable_record_is_readable_at_once<H: Harness>(mut harness: H) {
    let wal = harness.open();
    for index in 0..30 {
        let payload = payload(index);
        let lsn = wal.append_durable(&payload).await.expect("append_durable");
        assert_eq!(lsn, Lsn(index + 1));
        assert!(wal.durable_lsn() >= lsn, "durable_lsn {} below {lsn}", wal.durable_lsn());
        let mut records = wal.read_from(lsn).expect("read_from");
        let record = records.next().expect("the record is there").expect("read the record");
        assert_eq!(record, Record { lsn, payload });
        assert!(records.next().is_none(), "nothing follows the newest record");
    }
    harness.close(wal).await;
}

/// read_from returns durable records only, never one merely appended.
async fn read_from_returns_only_durable_records<H: Harness>(mut harness: H) {
    let wal = harness.open();
    let mut expected = Vec::new();
    append_durable_range(&wal, &mut expected, 0, 5).await;
    for index in 5..40 {
        append_expecting(&wal, &mut expected, payload(index));
    }
    // A file log may sync the unwaited records at any moment, so what read_from returns is only
    // bounded by durable_lsn before and after the read.
    let durable_before = wal.durable_lsn();
    let records = read_all(&wal, Lsn::ZERO);
    let durable_after = wal.durable_lsn();
    let read = Lsn(records.len() as u64);
    assert!(
        durable_before <= read && read <= durable_after,
        "read {read} records with durable_lsn {durable_before} before the read and \
         {durable_after} after"
    );
    assert!(durable_before >= Lsn(5), "durable_lsn {durable_before} after wait_durable(5)");
    assert_records(&records, 1, &expected[..records.len()]);
    harness.close(wal).await;
}
