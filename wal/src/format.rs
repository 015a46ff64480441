//! The on-disk format of [`crate::FileWal`], version 1. Every integer is little-endian with an
//! explicit width.
//!
//! A log is a directory of segment files named `{first_lsn:020}.wal`. Each segment starts with a
//! [`SEGMENT_HEADER_LEN`]-byte header:
//!
//! | offset | width | field                                             |
//! |--------|-------|---------------------------------------------------|
//! | 0      | 8     | magic `b"CONCWAL\0"`                              |
//! | 8      | 4     | format version (`FORMAT_VERSION`)                 |
//! | 12     | 4     | reserved, zero                                    |
//! | 16     | 8     | LSN of the segment's first record                 |
//! | 24     | 4     | CRC32C of bytes 0..24                             |
//! | 28     | 4     | reserved, zero                                    |
//!
//! followed by records, each a [`FRAME_HEADER_LEN`]-byte frame header and the payload:
//!
//! | offset | width | field                                             |
//! |--------|-------|---------------------------------------------------|
//! | 0      | 4     | payload length                                    |
//! | 4      | 4     | CRC32C of (length, LSN, payload)                  |
//! | 8      | 8     | LSN                                               |
//! | 16     | len   | payload                                           |
//!
//! Records within a segment have consecutive LSNs starting at the header's first LSN, and each
//! segment starts right after the previous one's last record. A segment may be longer than its
//! records: zero bytes after the last record (a preallocated segment) end it. No frame header is
//! all zeros, since LSNs start at 1.

use crate::Lsn;

/// Identifies a Concord WAL segment file.
pub const MAGIC: [u8; 8] = *b"CONCWAL\0";
/// The format version written by this code; opening a segment with another version fails.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes in a segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Bytes in a record's frame header.
pub const FRAME_HEADER_LEN: usize = 16;
/// The largest payload the format can carry, whatever the configured limit.
pub const MAX_PAYLOAD_LEN: usize = 64 * 1024 * 1024;

/// The file name of the segment whose first record is `first_lsn`.
#[must_use]
pub fn segment_file_name(first_lsn: Lsn) -> String {
    format!("{:020}.wal", first_lsn.0)
}

/// Parses a segment file name back into its first LSN; `None` for any other file.
#[must_use]
pub fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

/// Encodes a segment header.
#[must_use]
pub fn encode_segment_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&first_lsn.0.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..24]);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Why a segment header is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than [`SEGMENT_HEADER_LEN`] bytes.
    Short,
    /// The bytes are not a Concord segment header (bad magic or checksum).
    Invalid(String),
    /// A valid header of a format version this code does not read.
    UnsupportedVersion(u32),
}

/// Decodes a segment header, returning the segment's first LSN.
pub fn decode_segment_header(bytes: &[u8]) -> Result<Lsn, HeaderError> {
    let header = bytes.get(..SEGMENT_HEADER_LEN).ok_or(HeaderError::Short)?;
    if header[0..8] != MAGIC {
        return Err(HeaderError::Invalid("bad magic".into()));
    }
    let stored_crc = read_u32(header, 24);
    if crc32c::crc32c(&header[0..24]) != stored_crc {
        return Err(HeaderError::Invalid("header checksum mismatch".into()));
    }
    let version = read_u32(header, 8);
    if version != FORMAT_VERSION {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    Ok(Lsn(read_u64(header, 16)))
}

/// Appends the frame of one record to `out`. The caller has checked the payload length.
pub fn encode_record(out: &mut Vec<u8>, lsn: Lsn, payload: &[u8]) {
    assert!(payload.len() <= MAX_PAYLOAD_LEN, "payload length checked by the caller");
    #[allow(clippy::cast_possible_truncation)] // asserted above: fits in u32
    let len = payload.len() as u32;
    let crc = record_crc(len, lsn, payload);
    out.reserve(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&lsn.0.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The result of decoding the record that starts at the beginning of a byte slice.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid record and the total bytes it occupies (frame header and payload).
    Record {
        /// The record's LSN.
        lsn: Lsn,
        /// The record's payload.
        payload: &'a [u8],
        /// Frame header plus payload length.
        len: usize,
    },
    /// The slice ends before the record does (a torn write at the tail, or simply the end).
    Incomplete,
    /// The bytes are not a valid record; the string says which check failed.
    Invalid(String),
}

/// Decodes the record at the start of `bytes`.
#[must_use]
pub fn decode_record(bytes: &[u8]) -> Decoded<'_> {
    if bytes.len() < FRAME_HEADER_LEN {
        return Decoded::Incomplete;
    }
    let len = read_u32(bytes, 0);
    let stored_crc = read_u32(bytes, 4);
    let lsn = Lsn(read_u64(bytes, 8));
    let payload_len = len as usize;
    if payload_len > MAX_PAYLOAD_LEN {
        return Decoded::Invalid(format!("length {payload_len} exceeds the format maximum"));
    }
    let Some(payload) = bytes.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + payload_len) else {
        return Decoded::Incomplete;
    };
    if record_crc(len, lsn, payload) != stored_crc {
        return Decoded::Invalid("checksum mismatch".into());
    }
    Decoded::Record { lsn, payload, len: FRAME_HEADER_LEN + payload_len }
}

fn record_crc(len: u32, lsn: Lsn, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, &lsn.0.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record survives encode then decode, and every strict prefix decodes as incomplete.
    #[test]
    fn record_round_trips_and_prefixes_are_incomplete() {
        let mut buf = Vec::new();
        encode_record(&mut buf, Lsn(7), b"hello");
        assert_eq!(
            decode_record(&buf),
            Decoded::Record { lsn: Lsn(7), payload: b"hello", len: FRAME_HEADER_LEN + 5 }
        );
        for cut in 0..buf.len() {
            assert_eq!(decode_record(&buf[..cut]), Decoded::Incomplete, "cut at {cut}");
        }
    }

    /// Flipping any single bit of a record makes it invalid or incomplete, never a different record.
    #[test]
    fn any_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode_record(&mut buf, Lsn(3), b"payload bytes");
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(decode_record(&bad), Decoded::Record { .. }),
                "bit {bit} flipped went unnoticed"
            );
        }
    }

    /// Segment headers round-trip; a wrong version is reported as such.
    #[test]
    fn segment_header_round_trips_and_checks_version() {
        let header = encode_segment_header(Lsn(42));
        assert_eq!(decode_segment_header(&header), Ok(Lsn(42)));
        assert_eq!(decode_segment_header(&header[..10]), Err(HeaderError::Short));
        let mut future = header;
        future[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&future[0..24]);
        future[24..28].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_segment_header(&future), Err(HeaderError::UnsupportedVersion(2)));
    }

    /// Segment names round-trip and other names are ignored.
    #[test]
    fn segment_names_round_trip() {
        assert_eq!(parse_segment_file_name(&segment_file_name(Lsn(12))), Some(Lsn(12)));
        assert_eq!(parse_segment_file_name("notes.txt"), None);
        assert_eq!(parse_segment_file_name("12.wal"), None);
    }
}
