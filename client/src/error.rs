//! The client's error type and the one place where a gRPC status becomes one.
//!
//! The classification follows DESIGN.md rule 6: only a status the server chose to send as a
//! refusal counts as "nothing happened" ([`ClientError::Rejected`]). Timeouts, lost connections
//! and cancellations are [`ClientError::Unknown`]: the request may have taken effect, and the
//! caller must ask rather than guess.

use concord_core::types::InvalidInput;
use tonic::Code;

/// Why a request failed, split by what the caller may conclude about its effect.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server (or the client's own validation, before sending) refused the request: it had
    /// no effect. Fix the request, or for [`RejectKind::ResourceExhausted`] retry later.
    #[error("rejected ({kind}): {message}")]
    Rejected {
        /// Which refusal.
        kind: RejectKind,
        /// The server's explanation (it names the offending field for bad input).
        message: String,
    },
    /// No answer arrived: a timeout, an unreachable or restarting server, a broken connection.
    /// The request may or may not have taken effect. For a submit the outcome is unknown: ask
    /// with `Client::get(txn_id, ..)`, never assume it aborted.
    #[error("{}", unknown_message(txn_id.as_deref(), *cause, message))]
    Unknown {
        /// The transaction id the request carried, so the caller can ask for its outcome.
        /// `None` for requests not about one transaction (listing).
        txn_id: Option<String>,
        /// What kind of silence it was.
        cause: UnknownCause,
        /// The transport's or server's detail.
        message: String,
    },
    /// The server reported an internal failure (or sent a malformed answer). It may have failed
    /// after acting, so for a submit the outcome is not known either: ask once it is back.
    #[error("internal error{}: {message}", txn_suffix(txn_id.as_deref()))]
    Internal {
        /// The transaction id the request carried, if any.
        txn_id: Option<String>,
        /// What went wrong.
        message: String,
    },
    /// The server address could not be turned into a URI; nothing was sent.
    #[error("invalid address {address:?}: {message}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// Why it is not usable.
        message: String,
    },
}

/// The refusals: statuses a server sends on purpose, after deciding the request has no effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectKind {
    /// Bad input; the message names the field. Also used for input the client refused itself.
    InvalidArgument,
    /// The request does not fit the current state (for example an id reused differently).
    FailedPrecondition,
    /// No such transaction (without `fence_unknown`).
    NotFound,
    /// A limit was reached (in-flight transactions, request size); retrying later may succeed.
    ResourceExhausted,
    /// Something with this identity already exists.
    AlreadyExists,
    /// A value is outside the range the server accepts.
    OutOfRange,
    /// A conflict the server refused rather than waited on.
    Aborted,
    /// Not allowed for this caller.
    PermissionDenied,
    /// The caller is not authenticated.
    Unauthenticated,
    /// The server does not implement this call (for example an older version).
    Unimplemented,
}

impl RejectKind {
    /// The gRPC status name, as servers and logs spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::InvalidArgument => "INVALID_ARGUMENT",
            RejectKind::FailedPrecondition => "FAILED_PRECONDITION",
            RejectKind::NotFound => "NOT_FOUND",
            RejectKind::ResourceExhausted => "RESOURCE_EXHAUSTED",
            RejectKind::AlreadyExists => "ALREADY_EXISTS",
            RejectKind::OutOfRange => "OUT_OF_RANGE",
            RejectKind::Aborted => "ABORTED",
            RejectKind::PermissionDenied => "PERMISSION_DENIED",
            RejectKind::Unauthenticated => "UNAUTHENTICATED",
            RejectKind::Unimplemented => "UNIMPLEMENTED",
        }
    }
}

impl std::fmt::Display for RejectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which kind of silence left the outcome unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownCause {
    /// The call's deadline passed (here or at the server).
    Timeout,
    /// No connection could be made. The request was not sent on this attempt, but an earlier
    /// attempt with the same id may still be running, so this too is "unknown".
    Unreachable,
    /// The server is unavailable (shutting down, restarting) or the connection dropped.
    Unavailable,
    /// The call was cancelled before an answer arrived.
    Cancelled,
    /// Any other transport failure (the status code was UNKNOWN).
    Transport,
}

impl UnknownCause {
    /// A short lowercase name for messages and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            UnknownCause::Timeout => "timeout",
            UnknownCause::Unreachable => "unreachable",
            UnknownCause::Unavailable => "unavailable",
            UnknownCause::Cancelled => "cancelled",
            UnknownCause::Transport => "transport error",
        }
    }
}

impl std::fmt::Display for UnknownCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ClientError {
    /// Classifies a status from a call that carried `txn_id` (if any).
    #[must_use]
    pub fn from_status(status: &tonic::Status, txn_id: Option<&str>) -> ClientError {
        let message = status.message().to_string();
        let txn_id = txn_id.map(str::to_string);
        let rejected = |kind| ClientError::Rejected { kind, message: message.clone() };
        let unknown = |cause| ClientError::Unknown {
            txn_id: txn_id.clone(),
            cause,
            message: message.clone(),
        };
        match status.code() {
            Code::InvalidArgument => rejected(RejectKind::InvalidArgument),
            Code::FailedPrecondition => rejected(RejectKind::FailedPrecondition),
            Code::NotFound => rejected(RejectKind::NotFound),
            Code::ResourceExhausted => rejected(RejectKind::ResourceExhausted),
            Code::AlreadyExists => rejected(RejectKind::AlreadyExists),
            Code::OutOfRange => rejected(RejectKind::OutOfRange),
            Code::Aborted => rejected(RejectKind::Aborted),
            Code::PermissionDenied => rejected(RejectKind::PermissionDenied),
            Code::Unauthenticated => rejected(RejectKind::Unauthenticated),
            Code::Unimplemented => rejected(RejectKind::Unimplemented),
            Code::DeadlineExceeded => unknown(UnknownCause::Timeout),
            // tonic reports its own client-side timeout as CANCELLED with `TimeoutExpired` in
            // the source chain, and a failed connect as UNAVAILABLE with `ConnectError`.
            Code::Cancelled if source_chain_has::<tonic::TimeoutExpired>(status) => {
                unknown(UnknownCause::Timeout)
            }
            Code::Cancelled => unknown(UnknownCause::Cancelled),
            Code::Unavailable if source_chain_has::<tonic::ConnectError>(status) => {
                unknown(UnknownCause::Unreachable)
            }
            Code::Unavailable => unknown(UnknownCause::Unavailable),
            Code::Unknown => unknown(UnknownCause::Transport),
            Code::Internal | Code::DataLoss | Code::Ok => {
                ClientError::Internal { txn_id, message: format!("{}: {message}", status.code()) }
            }
        }
    }

    /// Input the client refused before sending anything.
    #[must_use]
    pub fn invalid(error: &InvalidInput) -> ClientError {
        ClientError::Rejected { kind: RejectKind::InvalidArgument, message: error.to_string() }
    }

    /// Whether the request certainly had no effect.
    #[must_use]
    pub fn is_rejected(&self) -> bool {
        matches!(self, ClientError::Rejected { .. } | ClientError::InvalidAddress { .. })
    }

    /// Whether the outcome of the request is unknown (it may have taken effect).
    #[must_use]
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, ClientError::Unknown { .. } | ClientError::Internal { .. })
    }

    /// The transaction id the failed request carried, if any.
    #[must_use]
    pub fn txn_id(&self) -> Option<&str> {
        match self {
            ClientError::Unknown { txn_id, .. } | ClientError::Internal { txn_id, .. } => {
                txn_id.as_deref()
            }
            ClientError::Rejected { .. } | ClientError::InvalidAddress { .. } => None,
        }
    }
}

/// Whether `status`'s chain of sources holds an error of type `T`.
fn source_chain_has<T: std::error::Error + 'static>(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    // Bounded: error chains are short, but a cyclic or absurd chain must not loop forever.
    for _ in 0..32 {
        let Some(error) = source else { return false };
        if error.is::<T>() {
            return true;
        }
        source = error.source();
    }
    false
}

fn unknown_message(txn_id: Option<&str>, cause: UnknownCause, message: &str) -> String {
    match txn_id {
        Some(txn_id) => format!(
            "no answer ({cause}: {message}); the outcome of txn {txn_id} is unknown (it may have \
             committed): ask with get({txn_id:?})"
        ),
        None => format!("no answer ({cause}: {message})"),
    }
}

fn txn_suffix(txn_id: Option<&str>) -> String {
    txn_id.map(|id| format!(" (txn {id}: outcome unknown)")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn classify(code: Code) -> ClientError {
        ClientError::from_status(&tonic::Status::new(code, "detail"), Some("t-1"))
    }

    /// The refusal codes are Rejected and carry the server's message.
    #[test]
    fn refusal_codes_are_rejected() {
        for (code, kind) in [
            (Code::InvalidArgument, RejectKind::InvalidArgument),
            (Code::FailedPrecondition, RejectKind::FailedPrecondition),
            (Code::NotFound, RejectKind::NotFound),
            (Code::ResourceExhausted, RejectKind::ResourceExhausted),
            (Code::AlreadyExists, RejectKind::AlreadyExists),
            (Code::Aborted, RejectKind::Aborted),
            (Code::Unimplemented, RejectKind::Unimplemented),
        ] {
            let error = classify(code);
            assert!(error.is_rejected(), "{code:?}");
            assert!(!error.is_outcome_unknown(), "{code:?}");
            match error {
                ClientError::Rejected { kind: got, message } => {
                    assert_eq!(got, kind);
                    assert_eq!(message, "detail");
                }
                other => panic!("{code:?} gave {other:?}"),
            }
        }
    }

    /// Timeouts, unavailability, cancellation and unknown transport failures are Unknown and
    /// keep the transaction id so the caller can ask.
    #[test]
    fn silence_is_unknown_and_keeps_the_txn_id() {
        for (code, cause) in [
            (Code::DeadlineExceeded, UnknownCause::Timeout),
            (Code::Unavailable, UnknownCause::Unavailable),
            (Code::Cancelled, UnknownCause::Cancelled),
            (Code::Unknown, UnknownCause::Transport),
        ] {
            let error = classify(code);
            assert!(error.is_outcome_unknown(), "{code:?}");
            assert!(!error.is_rejected(), "{code:?}");
            assert_eq!(error.txn_id(), Some("t-1"));
            match &error {
                ClientError::Unknown { cause: got, .. } => assert_eq!(*got, cause),
                other => panic!("{code:?} gave {other:?}"),
            }
            let text = error.to_string();
            assert!(text.contains("unknown") && text.contains("t-1"), "{text}");
        }
    }

    /// Internal and data-loss statuses are Internal, and also leave a submit's outcome unknown.
    #[test]
    fn server_failures_are_internal() {
        for code in [Code::Internal, Code::DataLoss] {
            let error = classify(code);
            assert!(matches!(error, ClientError::Internal { .. }), "{code:?}");
            assert!(error.is_outcome_unknown());
            assert_eq!(error.txn_id(), Some("t-1"));
        }
    }

    /// tonic's own client-side timeout (CANCELLED with TimeoutExpired inside) is a timeout, and
    /// a failed connect (UNAVAILABLE with ConnectError inside) is "unreachable".
    #[test]
    fn transport_sources_refine_the_cause() {
        let timeout = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(timeout.code(), Code::Cancelled);
        assert!(matches!(
            ClientError::from_status(&timeout, Some("t")),
            ClientError::Unknown { cause: UnknownCause::Timeout, .. }
        ));
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let connect = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert_eq!(connect.code(), Code::Unavailable);
        assert!(matches!(
            ClientError::from_status(&connect, None),
            ClientError::Unknown { cause: UnknownCause::Unreachable, txn_id: None, .. }
        ));
    }

    /// Input refused locally is a Rejected INVALID_ARGUMENT naming the field.
    #[test]
    fn local_validation_is_rejected_invalid_argument() {
        let error = ClientError::invalid(&InvalidInput::new("txn_id", "must not be empty"));
        assert!(error.is_rejected());
        assert_eq!(error.to_string(), "rejected (INVALID_ARGUMENT): txn_id: must not be empty");
    }
}
