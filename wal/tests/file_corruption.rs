//! How [`FileWal`] opens damaged logs: a torn or garbled tail of the last segment is cut away and
//! the log continues, while a bad record followed by a valid one (in the last segment or in any
//! earlier one) is corruption, reported with the segment file and the bad record's offset.
//!
//! The tests write real logs, damage copies of the segment files byte by byte, and compute where
//! records sit from the format's constants (`src/format.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use concord_wal::format::{self, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use concord_wal::{FileWal, FileWalOptions, Lsn, Record, Wal, WalError};
use tempfile::TempDir;

/// The payload limit of every log here.
const MAX_RECORD_BYTES: usize = 4096;
/// Segments large enough that every one-segment test log stays in one segment.
const ONE_SEGMENT: u64 = 1 << 20;
/// Segments of a few 40-byte records each.
const SMALL_SEGMENT: u64 = 256;

/// Logs that grow by appends, so the files hold exactly the records (the preallocated layout
/// has its own tests at the end).
fn options(segment_bytes: u64) -> FileWalOptions {
    FileWalOptions { segment_bytes, max_record_bytes: MAX_RECORD_BYTES, preallocate: false }
}

fn new_dir() -> TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

#[track_caller]
fn open(dir: &Path, segment_bytes: u64) -> FileWal {
    FileWal::open(dir, options(segment_bytes)).expect("open the log")
}

/// Opens the log expecting an error, and returns it.
#[track_caller]
fn open_error(dir: &Path, segment_bytes: u64, context: &str) -> WalError {
    match FileWal::open(dir, options(segment_bytes)) {
        Ok(wal) => {
            let records = read_all(&wal);
            wal.close().expect("close");
            panic!("{context}: the log opened with {} records instead of failing", records.len())
        }
        Err(error) => error,
    }
}

/// A payload of `len` bytes whose content tells record `index` apart from the others.
fn payload(index: usize, len: usize) -> Vec<u8> {
    (0..len).map(|at| (index * 31 + at * 7 + 1) as u8).collect()
}

/// Payloads of the given lengths, as records 1, 2, ...
fn payloads(lens: &[usize]) -> Vec<Vec<u8>> {
    lens.iter().enumerate().map(|(index, &len)| payload(index, len)).collect()
}

/// Writes `payloads` as records 1, 2, ... of a new log in `dir`, one sync each (the log rolls to
/// a new segment between syncs, so small segments then hold a few records each), and closes it.
async fn write_log(dir: &Path, segment_bytes: u64, payloads: &[Vec<u8>]) {
    let wal = open(dir, segment_bytes);
    for (index, payload) in payloads.iter().enumerate() {
        let lsn = wal.append_durable(payload).await.expect("append_durable");
        assert_eq!(lsn, Lsn(index as u64 + 1));
    }
    wal.close().expect("close");
}

/// The segment files in `dir`, ordered by first LSN.
fn segments(dir: &Path) -> Vec<(Lsn, PathBuf)> {
    let mut segments: Vec<_> = fs::read_dir(dir)
        .expect("list the log directory")
        .map(|entry| entry.expect("read a directory entry").path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            Some((format::parse_segment_file_name(name)?, path))
        })
        .collect();
    segments.sort();
    segments
}

/// The path of the only segment of the log in `dir`.
#[track_caller]
fn sole_segment(dir: &Path) -> PathBuf {
    let mut segments = segments(dir);
    assert_eq!(segments.len(), 1, "the test log should fit in one segment");
    segments.remove(0).1
}

/// Where each record of a one-segment log holding `payloads` starts and ends in the file.
fn record_spans(payloads: &[Vec<u8>]) -> Vec<(usize, usize)> {
    let mut start = SEGMENT_HEADER_LEN;
    payloads
        .iter()
        .map(|payload| {
            let end = start + FRAME_HEADER_LEN + payload.len();
            let span = (start, end);
            start = end;
            span
        })
        .collect()
}

/// Where each record of a segment file starts and ends, found by decoding its records.
#[track_caller]
fn decoded_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = SEGMENT_HEADER_LEN;
    while start < bytes.len() {
        match format::decode_record(&bytes[start..]) {
            format::Decoded::Record { len, .. } => {
                spans.push((start, start + len));
                start += len;
            }
            other => panic!("undamaged segment has a bad record at offset {start}: {other:?}"),
        }
    }
    spans
}

fn read_all(wal: &FileWal) -> Vec<Record> {
    let records = wal.read_from(Lsn::ZERO).expect("read_from");
    records.collect::<Result<Vec<_>, _>>().expect("read a record")
}

/// Asserts that `records` are the records `first`, `first + 1`, ... holding
/// `payloads[first - 1..]`.
#[track_caller]
fn assert_records(records: &[Record], first: u64, payloads: &[Vec<u8>], context: &str) {
    let want = payloads.len() + 1 - usize::try_from(first).unwrap();
    assert_eq!(records.len(), want, "{context}: number of records read");
    for (at, record) in records.iter().enumerate() {
        let lsn = first + at as u64;
        assert_eq!(record.lsn, Lsn(lsn), "{context}: LSN of the record read at position {at}");
        let want = &payloads[usize::try_from(lsn - 1).unwrap()];
        assert!(record.payload == *want, "{context}: payload of record {lsn} differs");
    }
}

/// Copies every file of `from` into a new directory, handing each file's bytes to `damage` first
/// (with the file's name) to change them.
fn damaged_copy(from: &Path, mut damage: impl FnMut(&str, &mut Vec<u8>)) -> TempDir {
    let to = new_dir();
    for entry in fs::read_dir(from).expect("list the log directory") {
        let entry = entry.expect("read a directory entry");
        let name = entry.file_name().into_string().expect("a UTF-8 file name");
        let mut bytes = fs::read(entry.path()).expect("read a log file");
        damage(&name, &mut bytes);
        fs::write(to.path().join(&name), bytes).expect("write a log file");
    }
    to
}

/// Asserts that `error` is corruption of the file `path` at `offset`.
#[track_caller]
fn assert_corrupt_at(error: WalError, path: &Path, offset: usize, context: &str) {
    match error {
        WalError::Corrupt { path: reported, offset: reported_offset, detail } => {
            let canonical =
                |path: &Path| fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
            assert_eq!(
                canonical(&reported),
                canonical(path),
                "{context}: corruption reported in the wrong file ({detail})"
            );
            assert_eq!(
                reported_offset, offset as u64,
                "{context}: corruption reported at the wrong offset ({detail})"
            );
        }
        other => panic!("{context}: expected Corrupt at offset {offset}, got {other:?}"),
    }
}

/// Opens the damaged log in `dir`, checks it holds exactly `payloads` as records 1, 2, ..., appends
/// one record, and checks that it gets the next LSN and survives a reopen.
async fn assert_recovers_and_continues(
    dir: &Path,
    segment_bytes: u64,
    payloads: &[Vec<u8>],
    context: &str,
) {
    let wal = open(dir, segment_bytes);
    assert_records(&read_all(&wal), 1, payloads, context);
    let next = Lsn(payloads.len() as u64 + 1);
    assert_eq!(wal.last_lsn(), Lsn(payloads.len() as u64), "{context}: last_lsn");
    let lsn = wal.append_durable(b"after recovery").await.expect("append_durable");
    assert_eq!(lsn, next, "{context}: LSN of the first record after recovery");
    wal.close().expect("close");

    let mut with_new = payloads.to_vec();
    with_new.push(b"after recovery".to_vec());
    let wal = open(dir, segment_bytes);
    assert_records(&read_all(&wal), 1, &with_new, &format!("{context}, reopened"));
    wal.close().expect("close");
}

/// Deterministic pseudo-random bytes (xorshift), different for each `seed`.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// A frame header claiming a payload of `claimed` bytes, as a torn write leaves behind.
fn torn_frame_header(lsn: Lsn, claimed: u32) -> Vec<u8> {
    let mut header = Vec::with_capacity(FRAME_HEADER_LEN);
    header.extend_from_slice(&claimed.to_le_bytes());
    header.extend_from_slice(&0x1234_5678u32.to_le_bytes());
    header.extend_from_slice(&lsn.0.to_le_bytes());
    header
}

/// The log written has exactly the layout the format describes: one header, then the records
/// back to back, nothing more.
#[tokio::test]
async fn segment_file_holds_the_header_and_the_records_back_to_back() {
    let payloads = payloads(&[13, 0, 40, 7]);
    let dir = new_dir();
    write_log(dir.path(), ONE_SEGMENT, &payloads).await;
    let segment = sole_segment(dir.path());
    assert_eq!(segment.file_name().unwrap(), format::segment_file_name(Lsn(1)).as_str());
    let bytes = fs::read(&segment).expect("read the segment");
    assert_eq!(format::decode_segment_header(&bytes), Ok(Lsn(1)));
    let spans = record_spans(&payloads);
    assert_eq!(decoded_spans(&bytes), spans);
    assert_eq!(bytes.len(), spans.last().unwrap().1);
}

/// Closing writes and syncs records that nobody waited for.
#[tokio::test]
async fn close_keeps_records_appended_without_waiting() {
    let payloads = payloads(&[10, 20, 30, 0, 5]);
    let dir = new_dir();
    let wal = open(dir.path(), ONE_SEGMENT);
    for payload in &payloads {
        wal.append(payload).expect("append");
    }
    wal.close().expect("close");
    let wal = open(dir.path(), ONE_SEGMENT);
    assert_records(&read_all(&wal), 1, &payloads, "after close");
    wal.close().expect("close");
}

/// A last record cut at any byte is dropped on open: the file is cut back to the end of the record
/// before it, and the next append gets the dropped record's LSN and survives a reopen.
#[tokio::test]
async fn tail_cut_at_every_byte_is_truncated_to_the_last_whole_record() {
    let payloads = payloads(&[13, 0, 40, 7, 29]);
    let original = new_dir();
    write_log(original.path(), ONE_SEGMENT, &payloads).await;
    let name = format::segment_file_name(Lsn(1));
    let bytes = fs::read(original.path().join(&name)).expect("read the segment");
    let spans = record_spans(&payloads);
    let (last_start, last_end) = *spans.last().unwrap();
    assert_eq!(bytes.len(), last_end, "the segment holds exactly the records");
    let kept = &payloads[..payloads.len() - 1];

    for cut in last_start..last_end {
        let context = format!("segment cut to {cut} bytes");
        let dir = new_dir();
        let path = dir.path().join(&name);
        fs::write(&path, &bytes[..cut]).expect("write the cut segment");
        let wal = open(dir.path(), ONE_SEGMENT);
        assert_records(&read_all(&wal), 1, kept, &context);
        let len = fs::metadata(&path).expect("segment metadata").len();
        assert_eq!(len, last_start as u64, "{context}: file not cut back to the last whole record");
        wal.close().expect("close");
        assert_recovers_and_continues(dir.path(), ONE_SEGMENT, kept, &context).await;
    }
}

/// Every single-bit flip in a one-segment log is caught: in the last record it is cut away as a
/// torn tail; in an earlier record it is corruption at that record's offset; in the header the log
/// refuses to open.
#[tokio::test]
async fn every_bit_flip_is_cut_at_the_tail_or_reported_as_corruption() {
    let payloads = payloads(&[5, 9, 0, 12]);
    let original = new_dir();
    write_log(original.path(), ONE_SEGMENT, &payloads).await;
    let name = format::segment_file_name(Lsn(1));
    let bytes = fs::read(original.path().join(&name)).expect("read the segment");
    let spans = record_spans(&payloads);
    assert_eq!(bytes.len(), spans.last().unwrap().1, "the segment holds exactly the records");
    let last = spans.len() - 1;

    for bit in 0..bytes.len() * 8 {
        let byte = bit / 8;
        let context = format!("bit {} of byte {byte} flipped", bit % 8);
        let mut damaged = bytes.clone();
        damaged[byte] ^= 1 << (bit % 8);
        let dir = new_dir();
        let path = dir.path().join(&name);
        fs::write(&path, &damaged).expect("write the damaged segment");

        if byte < SEGMENT_HEADER_LEN {
            if byte < 28 {
                // Bytes 0..24 are covered by the header checksum, 24..28 are the checksum.
                open_error(dir.path(), ONE_SEGMENT, &context);
            } else {
                // Bytes 28..32 are reserved and outside the header checksum: the log may refuse
                // them, but if it opens, every record must be intact.
                if let Ok(wal) = FileWal::open(dir.path(), options(ONE_SEGMENT)) {
                    assert_records(&read_all(&wal), 1, &payloads, &context);
                    wal.close().expect("close");
                }
            }
            continue;
        }
        let record = spans.iter().position(|&(start, end)| start <= byte && byte < end).unwrap();
        if record == last {
            let wal = open(dir.path(), ONE_SEGMENT);
            assert_records(&read_all(&wal), 1, &payloads[..last], &context);
            let len = fs::metadata(&path).expect("segment metadata").len();
            assert_eq!(len, spans[last].0 as u64, "{context}: damaged tail record not cut away");
            wal.close().expect("close");
        } else {
            let error = open_error(dir.path(), ONE_SEGMENT, &context);
            assert_corrupt_at(error, &path, spans[record].0, &context);
        }
    }
}

/// Damages the bytes of a segment file at the record starting at the given offset.
type Damage = fn(&mut Vec<u8>, usize);

/// A damaged record in a segment before the last is corruption naming that segment and the
/// record's offset, whether it is the segment's first or last record or cut short, and a damaged
/// header of such a segment makes the log refuse to open.
#[tokio::test]
async fn damage_in_a_segment_before_the_last_is_reported_as_corruption() {
    let payloads: Vec<_> = (0..30).map(|index| payload(index, 40)).collect();
    let original = new_dir();
    write_log(original.path(), SMALL_SEGMENT, &payloads).await;
    let segments = segments(original.path());
    assert!(segments.len() >= 4, "the log should span several segments, has {}", segments.len());

    for victim in [0, 1, segments.len() - 2] {
        let victim_path = &segments[victim].1;
        let victim_name = victim_path.file_name().unwrap().to_str().unwrap().to_owned();
        let bytes = fs::read(victim_path).expect("read the segment");
        let spans = decoded_spans(&bytes);
        assert!(!spans.is_empty(), "segment {victim_name} holds no record");
        let (first_start, _) = spans[0];
        let (last_start, _) = *spans.last().unwrap();

        // Each case damages the record at the given offset of the victim segment.
        let cases: [(&str, usize, Damage); 4] = [
            ("payload of its first record flipped", first_start, |bytes, start| {
                bytes[start + FRAME_HEADER_LEN] ^= 0x01;
            }),
            ("payload of its last record flipped", last_start, |bytes, start| {
                bytes[start + FRAME_HEADER_LEN + 3] ^= 0x80;
            }),
            ("checksum of its last record flipped", last_start, |bytes, start| {
                bytes[start + 4] ^= 0x10;
            }),
            ("cut inside its last record", last_start, |bytes, start| {
                bytes.truncate(start + FRAME_HEADER_LEN + 5);
            }),
        ];
        for (what, offset, damage) in cases {
            let context = format!("segment {victim_name}: {what}");
            let dir = damaged_copy(original.path(), |name, bytes| {
                if name == victim_name {
                    damage(bytes, offset);
                }
            });
            let error = open_error(dir.path(), SMALL_SEGMENT, &context);
            assert_corrupt_at(error, &dir.path().join(&victim_name), offset, &context);
        }

        let context = format!("segment {victim_name}: header magic flipped");
        let dir = damaged_copy(original.path(), |name, bytes| {
            if name == victim_name {
                bytes[0] ^= 0x01;
            }
        });
        open_error(dir.path(), SMALL_SEGMENT, &context);
    }
}

/// A log with a gap in its LSNs (a segment before the last missing, or a whole record missing at
/// the end of one) is refused rather than read with the gap.
#[tokio::test]
async fn gap_between_segments_is_refused() {
    let payloads: Vec<_> = (0..30).map(|index| payload(index, 40)).collect();
    let original = new_dir();
    write_log(original.path(), SMALL_SEGMENT, &payloads).await;
    let segments = segments(original.path());
    assert!(segments.len() >= 4, "the log should span several segments, has {}", segments.len());
    let victim_name = segments[1].1.file_name().unwrap().to_str().unwrap().to_owned();

    let dir = damaged_copy(original.path(), |_, _| {});
    fs::remove_file(dir.path().join(&victim_name)).expect("remove a segment");
    open_error(dir.path(), SMALL_SEGMENT, &format!("segment {victim_name} removed"));

    let dir = damaged_copy(original.path(), |name, bytes| {
        if name == victim_name {
            let (last_start, _) = *decoded_spans(bytes).last().unwrap();
            bytes.truncate(last_start);
        }
    });
    open_error(dir.path(), SMALL_SEGMENT, &format!("segment {victim_name} lost its last record"));
}

/// Bytes that are not a record after the last valid one (a torn write, or zeroes) are cut away on
/// open, and the log continues.
#[tokio::test]
async fn garbage_after_the_last_record_is_truncated() {
    let payloads = payloads(&[13, 0, 40, 7]);
    let original = new_dir();
    write_log(original.path(), ONE_SEGMENT, &payloads).await;
    let name = format::segment_file_name(Lsn(1));
    let bytes = fs::read(original.path().join(&name)).expect("read the segment");
    let next = Lsn(payloads.len() as u64 + 1);

    let mut torn_header_with_some_payload = torn_frame_header(next, 1000);
    torn_header_with_some_payload.extend_from_slice(&garbage(9, 30));
    let tails: Vec<(&str, Vec<u8>)> = vec![
        ("1 random byte", garbage(1, 1)),
        ("15 random bytes", garbage(2, 15)),
        ("16 random bytes", garbage(3, 16)),
        ("17 random bytes", garbage(4, 17)),
        ("300 random bytes", garbage(5, 300)),
        ("64 zero bytes", vec![0; 64]),
        ("40 0xff bytes", vec![0xff; 40]),
        ("a frame header claiming 1000 bytes, then 30", torn_header_with_some_payload),
        ("a frame header claiming 8 bytes, then 3", {
            let mut tail = torn_frame_header(next, 8);
            tail.extend_from_slice(&[1, 2, 3]);
            tail
        }),
    ];
    for (what, tail) in tails {
        let context = format!("{what} after the last record");
        let dir = new_dir();
        let path = dir.path().join(&name);
        let mut damaged = bytes.clone();
        damaged.extend_from_slice(&tail);
        fs::write(&path, &damaged).expect("write the damaged segment");
        let wal = open(dir.path(), ONE_SEGMENT);
        assert_records(&read_all(&wal), 1, &payloads, &context);
        let len = fs::metadata(&path).expect("segment metadata").len();
        assert_eq!(len, bytes.len() as u64, "{context}: garbage not cut away");
        wal.close().expect("close");
        assert_recovers_and_continues(dir.path(), ONE_SEGMENT, &payloads, &context).await;
    }
}

/// A valid record after a damaged region at the tail shows the damage is not a torn write: open
/// reports corruption at the start of the damaged region.
#[tokio::test]
async fn valid_record_after_garbage_at_the_tail_is_corruption() {
    let payloads = payloads(&[13, 0, 40, 7]);
    let original = new_dir();
    write_log(original.path(), ONE_SEGMENT, &payloads).await;
    let name = format::segment_file_name(Lsn(1));
    let bytes = fs::read(original.path().join(&name)).expect("read the segment");
    let next = Lsn(payloads.len() as u64 + 1);
    let mut valid_next = Vec::new();
    format::encode_record(&mut valid_next, next, b"the next record");
    let after_next = next.next();
    let mut valid_after_next = Vec::new();
    format::encode_record(&mut valid_after_next, after_next, b"a record past the lost one");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes, then the record after next", {
            let mut tail = garbage(11, 23);
            tail.extend_from_slice(&valid_after_next);
            tail
        }),
        ("random bytes, then the next record", {
            let mut tail = garbage(12, 40);
            tail.extend_from_slice(&valid_next);
            tail
        }),
        ("a frame header claiming 1000 bytes, then the record after next", {
            let mut tail = torn_frame_header(after_next, 1000);
            tail.extend_from_slice(&garbage(13, 8));
            tail.extend_from_slice(&valid_after_next);
            tail
        }),
        ("zero bytes, then the record after next", {
            let mut tail = vec![0; 32];
            tail.extend_from_slice(&valid_after_next);
            tail
        }),
    ];
    for (what, tail) in cases {
        let context = format!("{what} after the last record");
        let dir = new_dir();
        let path = dir.path().join(&name);
        let mut damaged = bytes.clone();
        damaged.extend_from_slice(&tail);
        fs::write(&path, &damaged).expect("write the damaged segment");
        let error = open_error(dir.path(), ONE_SEGMENT, &context);
        assert_corrupt_at(error, &path, bytes.len(), &context);
    }
}

/// A last segment left empty, with a partial header, or with only its header (a crash while
/// creating it) opens with every earlier record, and appending continues.
#[tokio::test]
async fn last_segment_without_records_opens_with_every_earlier_record() {
    let payloads: Vec<_> = (0..10).map(|index| payload(index, 40)).collect();
    let original = new_dir();
    write_log(original.path(), SMALL_SEGMENT, &payloads).await;
    assert!(segments(original.path()).len() >= 2, "the log should span several segments");
    let next = Lsn(payloads.len() as u64 + 1);
    let header = format::encode_segment_header(next);

    for header_len in 0..=SEGMENT_HEADER_LEN {
        let context = format!("a last segment of {header_len} header bytes");
        let dir = damaged_copy(original.path(), |_, _| {});
        let path = dir.path().join(format::segment_file_name(next));
        fs::write(&path, &header[..header_len]).expect("write the new segment");
        assert_recovers_and_continues(dir.path(), SMALL_SEGMENT, &payloads, &context).await;
    }
}

/// A segment written by another format version is refused, not misread.
#[tokio::test]
async fn segment_of_another_format_version_is_refused() {
    let payloads = payloads(&[13, 0, 40]);
    let original = new_dir();
    write_log(original.path(), ONE_SEGMENT, &payloads).await;
    let segment = format::segment_file_name(Lsn(1));
    let dir = damaged_copy(original.path(), |name, bytes| {
        if name == segment {
            bytes[8..12].copy_from_slice(&(format::FORMAT_VERSION + 1).to_le_bytes());
            let crc = crc32c::crc32c(&bytes[0..24]);
            bytes[24..28].copy_from_slice(&crc.to_le_bytes());
        }
    });
    open_error(dir.path(), ONE_SEGMENT, "a segment of the next format version");
}

/// After truncate_before removed whole segments, the reopened log starts at its first remaining
/// segment, reads every record from there, and continues appending.
#[tokio::test]
async fn reopen_after_truncate_before_starts_at_the_first_kept_segment() {
    let payloads: Vec<_> = (0..40).map(|index| payload(index, 40)).collect();
    let dir = new_dir();
    write_log(dir.path(), SMALL_SEGMENT, &payloads).await;
    let before = segments(dir.path()).len();

    let wal = open(dir.path(), SMALL_SEGMENT);
    wal.truncate_before(Lsn(25)).expect("truncate_before");
    let kept = segments(dir.path());
    assert!(kept.len() < before, "truncate_before(25) removed no segment of {before}");
    let first = kept[0].0;
    assert!(Lsn(1) < first && first <= Lsn(25), "first kept segment starts at {first}");
    assert_eq!(wal.first_lsn(), first);
    wal.close().expect("close");

    let wal = open(dir.path(), SMALL_SEGMENT);
    assert_eq!(wal.first_lsn(), first, "first_lsn after reopen");
    assert_eq!(wal.last_lsn(), Lsn(40));
    assert_eq!(wal.durable_lsn(), Lsn(40));
    assert_records(&read_all(&wal), first.0, &payloads, "after reopen");
    let lsn = wal.append_durable(b"after truncation").await.expect("append_durable");
    assert_eq!(lsn, Lsn(41));
    wal.close().expect("close");

    let mut with_new = payloads.clone();
    with_new.push(b"after truncation".to_vec());
    let wal = open(dir.path(), SMALL_SEGMENT);
    assert_eq!(wal.first_lsn(), first, "first_lsn after the second reopen");
    assert_records(&read_all(&wal), first.0, &with_new, "after the second reopen");
    wal.close().expect("close");
}

// The preallocated layout: segments zero-filled to their full size and written in place.

fn open_preallocated(dir: &Path, segment_bytes: u64) -> FileWal {
    let options =
        FileWalOptions { segment_bytes, max_record_bytes: MAX_RECORD_BYTES, preallocate: true };
    FileWal::open(dir, options).expect("open the preallocated log")
}

/// Writes `payloads` as records 1, 2, ... of a new preallocated log, one sync each, and closes it.
async fn write_preallocated_log(dir: &Path, segment_bytes: u64, payloads: &[Vec<u8>]) {
    let wal = open_preallocated(dir, segment_bytes);
    for payload in payloads {
        wal.append_durable(payload).await.expect("append_durable");
    }
    wal.close().expect("close");
}

/// Every segment is at least its configured size, the records sit at the front of each, and a
/// reopen (which deletes the spare next segment) reads them all and continues.
#[tokio::test]
async fn preallocated_segments_are_full_size_and_read_back_across_rolls() {
    let payloads: Vec<_> = (0..40).map(|index| payload(index, 40)).collect();
    let dir = new_dir();
    write_preallocated_log(dir.path(), SMALL_SEGMENT, &payloads).await;
    let written = segments(dir.path());
    assert!(written.len() >= 4, "the log should span several segments, has {}", written.len());
    for (_, path) in &written {
        let len = fs::metadata(path).expect("segment metadata").len();
        assert!(len >= SMALL_SEGMENT, "{} holds {len} bytes", path.display());
    }
    assert!(dir.path().join("next-segment.spare").exists(), "no spare segment was prepared");

    let wal = open_preallocated(dir.path(), SMALL_SEGMENT);
    assert!(!dir.path().join("next-segment.spare").exists() || wal.last_lsn() == Lsn(40));
    assert_records(&read_all(&wal), 1, &payloads, "reopened");
    assert_eq!(wal.append_durable(b"after").await.expect("append_durable"), Lsn(41));
    wal.close().expect("close");
    let wal = open_preallocated(dir.path(), SMALL_SEGMENT);
    assert_eq!(wal.last_lsn(), Lsn(41));
    wal.close().expect("close");
}

/// A last record torn at any byte, with zeros (never written) or garbage (a torn write) after
/// the cut, is dropped on open: its bytes are zeroed, the file keeps its preallocated size, and
/// the next append takes the dropped record's LSN and survives a reopen.
#[tokio::test]
async fn preallocated_torn_tail_is_zeroed_and_the_log_continues() {
    let payloads = payloads(&[13, 0, 40, 7, 29]);
    let original = new_dir();
    write_preallocated_log(original.path(), ONE_SEGMENT, &payloads).await;
    let name = format::segment_file_name(Lsn(1));
    let bytes = fs::read(original.path().join(&name)).expect("read the segment");
    assert_eq!(bytes.len() as u64, ONE_SEGMENT, "the segment is preallocated");
    let (last_start, last_end) = *record_spans(&payloads).last().unwrap();
    assert!(bytes[last_end..].iter().all(|&byte| byte == 0), "zeros after the records");
    let kept = &payloads[..payloads.len() - 1];

    for cut in last_start..last_end {
        for (what, filler) in
            [("zeros", vec![0; last_end - cut]), ("garbage", garbage(cut as u64, last_end - cut))]
        {
            let context = format!("last record torn at byte {cut} with {what} after it");
            let dir = new_dir();
            let path = dir.path().join(&name);
            let mut torn = bytes.clone();
            torn[cut..last_end].copy_from_slice(&filler);
            fs::write(&path, &torn).expect("write the torn segment");

            let wal = open_preallocated(dir.path(), ONE_SEGMENT);
            assert_records(&read_all(&wal), 1, kept, &context);
            assert_eq!(wal.last_lsn(), Lsn(kept.len() as u64), "{context}: last_lsn");
            let repaired = fs::read(&path).expect("read the repaired segment");
            assert_eq!(repaired.len() as u64, ONE_SEGMENT, "{context}: size kept");
            assert!(repaired[last_start..].iter().all(|&byte| byte == 0), "{context}: not zeroed");
            let lsn = wal.append_durable(b"after recovery").await.expect("append_durable");
            assert_eq!(lsn, Lsn(payloads.len() as u64), "{context}: LSN after recovery");
            wal.close().expect("close");

            let mut with_new = kept.to_vec();
            with_new.push(b"after recovery".to_vec());
            let wal = open_preallocated(dir.path(), ONE_SEGMENT);
            assert_records(&read_all(&wal), 1, &with_new, &format!("{context}, reopened"));
            wal.close().expect("close");
        }
    }
}

/// Zeros where a record should be, with a valid record after them, are corruption (a lost
/// write), not the end of the segment.
#[tokio::test]
async fn preallocated_zeros_before_a_valid_record_are_corruption() {
    let payloads = payloads(&[13, 20, 40, 7]);
    let original = new_dir();
    write_preallocated_log(original.path(), ONE_SEGMENT, &payloads).await;
    let name = format::segment_file_name(Lsn(1));
    let path = original.path().join(&name);
    let (start, end) = record_spans(&payloads)[2];
    let dir = damaged_copy(original.path(), |file, bytes| {
        if file == name {
            bytes[start..end].fill(0);
        }
    });
    let error = match FileWal::open(
        dir.path(),
        FileWalOptions {
            segment_bytes: ONE_SEGMENT,
            max_record_bytes: MAX_RECORD_BYTES,
            preallocate: true,
        },
    ) {
        Ok(_) => panic!("a log with a zeroed record before a valid one opened"),
        Err(error) => error,
    };
    assert_corrupt_at(error, &dir.path().join(path.file_name().unwrap()), start, "zeroed record");
}
