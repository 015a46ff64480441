//! How a coordinator runs ([`CoordinatorConfig`], checked once by
//! [`CoordinatorConfig::validate`]) and what its operations can fail with
//! ([`CoordinatorError`], turned into gRPC statuses in one place, `service.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use concord_core::limits;

/// How far a client's clock may run ahead of the coordinator's when it says when it first
/// submitted a transaction; comparisons against the forgotten horizon allow this much.
pub const CLOCK_SKEW_MARGIN_MS: u64 = 1_000;

/// How the coordinator runs.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Participant name → address (host:port).
    pub participants: BTreeMap<String, String>,
    /// Timeout of each call to a participant.
    pub call_timeout: Duration,
    /// Transactions undecided at once; Submit beyond gets RESOURCE_EXHAUSTED.
    pub max_inflight: usize,
    /// Transactions unfinished at once, at most: undecided ones, committed ones whose Commit is
    /// still being delivered, aborted sagas still compensating, and one-phase transactions
    /// whose participant has not answered the outcome probe. Submit beyond gets
    /// RESOURCE_EXHAUSTED, so a participant that stays down cannot grow memory or tasks
    /// without bound. At least `max_inflight`.
    pub max_undelivered: usize,
    /// Finished transactions remembered for GetTransaction and idempotent Submit.
    pub max_retained: usize,
    /// First Commit retry delay.
    pub min_backoff: Duration,
    /// Commit and Compensate retry delays never grow past this.
    pub max_backoff: Duration,
    /// A saga step whose Compensate failed this many times puts its transaction in
    /// NEEDS_ATTENTION (it keeps being retried, every `attention_retry`).
    pub attention_after_attempts: u32,
    /// How often a compensation needing attention is retried.
    pub attention_retry: Duration,
    /// Take a checkpoint after this many log records.
    pub checkpoint_every_records: u64,
    /// Send Prepares and Commits many per message (PrepareBatch, CommitBatch); off: one call
    /// each.
    pub batch_calls: bool,
    /// How channels to participants are opened (TCP; simulated under simulation).
    pub dialer: concord_proto::net::Dialer,
    /// The wall clock (the system's; simulated time under simulation).
    pub clock: concord_proto::clock::Clock,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            participants: BTreeMap::new(),
            call_timeout: Duration::from_secs(2),
            max_inflight: limits::DEFAULT_INFLIGHT_TXNS,
            max_undelivered: limits::DEFAULT_UNFINISHED_TXNS,
            max_retained: limits::DEFAULT_RETAINED_OUTCOMES,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            attention_after_attempts: 10,
            attention_retry: Duration::from_secs(30),
            checkpoint_every_records: 200_000,
            batch_calls: true,
            dialer: concord_proto::net::Dialer::default(),
            clock: concord_proto::clock::system,
        }
    }
}

impl CoordinatorConfig {
    /// Refuses a configuration the coordinator cannot run with, naming the setting.
    pub fn validate(&self) -> Result<(), CoordinatorError> {
        let bad = |message: String| Err(CoordinatorError::InvalidConfig(message));
        if !(1..=limits::MAX_INFLIGHT_TXNS).contains(&self.max_inflight) {
            return bad(format!(
                "max_inflight is {}: it must be between 1 and {}",
                self.max_inflight,
                limits::MAX_INFLIGHT_TXNS
            ));
        }
        if !(self.max_inflight..=limits::MAX_UNFINISHED_TXNS).contains(&self.max_undelivered) {
            return bad(format!(
                "max_undelivered is {}: it must be between max_inflight ({}) and {}",
                self.max_undelivered,
                self.max_inflight,
                limits::MAX_UNFINISHED_TXNS
            ));
        }
        if self.max_retained == 0 {
            return bad("max_retained must be at least 1".into());
        }
        if self.call_timeout.is_zero() {
            return bad("call_timeout must be more than 0".into());
        }
        if self.min_backoff.is_zero() || self.min_backoff > self.max_backoff {
            return bad(format!(
                "min_backoff ({:?}) must be more than 0 and at most max_backoff ({:?})",
                self.min_backoff, self.max_backoff
            ));
        }
        if self.attention_retry.is_zero() {
            return bad("attention_retry must be more than 0".into());
        }
        Ok(())
    }
}

/// Errors of the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// At a limit (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    Overloaded(String),
    /// Unknown id (NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The id is unknown but old enough that it may be a finished transaction this coordinator
    /// has forgotten: it is neither run again nor fenced (DATA_LOSS: the outcome is unknown).
    #[error("{0}")]
    MaybeForgotten(String),
    /// The decision log failed; the coordinator stopped (INTERNAL). Restart to recover.
    #[error("decision log failed: {0}")]
    Fatal(String),
    /// Shutting down (UNAVAILABLE).
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// The request contradicts the transaction's state (FAILED_PRECONDITION).
    #[error("{0}")]
    WrongState(String),
    /// The configuration cannot be run with (the coordinator does not start).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}
