//! Errors of the write-ahead log.

use std::path::PathBuf;

/// What can go wrong with a write-ahead log. Every variant but [`WalError::RecordTooLarge`] is
/// fatal to the log's user: stop, and recover from the log on restart.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    /// The payload is larger than the log accepts; nothing was appended.
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// The payload's length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A record that is not at the tail failed its checks: the log is corrupt and will not open.
    #[error("corrupt write-ahead log: {path} at offset {offset}: {detail}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad record within that file.
        offset: u64,
        /// What check failed.
        detail: String,
    },
    /// An I/O operation failed (opening, reading, creating or removing files).
    #[error("write-ahead log I/O error: {context}: {message}")]
    Io {
        /// What the log was doing.
        context: String,
        /// The operating system's error.
        message: String,
    },
    /// A write or sync failed earlier; the log refuses all further work.
    #[error("write-ahead log failed and refuses further appends: {0}")]
    Failed(String),
    /// The log was closed.
    #[error("write-ahead log is closed")]
    Closed,
}

impl WalError {
    pub(crate) fn io(context: impl Into<String>, error: &std::io::Error) -> Self {
        WalError::Io { context: context.into(), message: error.to_string() }
    }
}
