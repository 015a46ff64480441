//! The Rust client library for services that submit transactions to a Concord coordinator.
//!
//! A service builds a [`Transaction`] (one branch of operations per participant), hands it to
//! [`Client::submit`], and gets back a definite answer or an error that says which kind of
//! answer it is not:
//!
//! - [`Submitted`] with [`Outcome::Committed`](concord_core::types::Outcome::Committed),
//!   `Aborted` (with an [`AbortCause`]) or `Pending` (the coordinator is still deciding).
//! - [`ClientError::Rejected`]: the coordinator refused the request; nothing happened.
//! - [`ClientError::Unknown`]: a timeout or transport failure. The transaction may or may not
//!   have committed (DESIGN.md rule 6: a timeout is never read as "no"). The error carries the
//!   transaction id that was sent, so the caller can ask with [`Client::get`] (with
//!   `fence_unknown` to turn "never arrived" into a definite abort).
//! - [`ClientError::Internal`]: the server failed; for a submit the outcome is not known either.
//!
//! [`Client::pipeline`] keeps many submits in flight over one stream (`SubmitStream`), with the
//! same answers and errors.
//!
//! [`ParticipantReader`] reads committed data straight from a participant (tools, demos and
//! checkers use it to verify what transactions did).
//!
//! Wire types stay inside this crate: the public API speaks `concord_core` types and plain Rust
//! enums defined in [`info`].

mod client;
mod error;
pub mod info;
mod pipeline;
mod reader;
mod transaction;

pub use client::{Client, ClientOptions};
pub use error::{ClientError, RejectKind, UnknownCause};
pub use info::{
    AbortCause, AbortKind, BranchInfo, BranchState, Submitted, TransactionInfo, TransactionPage,
    TxnMode, TxnState,
};
pub use pipeline::Pipeline;
pub use reader::{Entry, ParticipantReader, ScanPage};
pub use transaction::Transaction;
