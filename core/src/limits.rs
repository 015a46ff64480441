//! Every limit in Concord, in one place, with the relations between them asserted at compile
//! time (TigerBeetle's "put a limit on everything"). Servers may be configured lower, never
//! higher.

/// The longest transaction id, in bytes.
pub const MAX_TXN_ID_BYTES: usize = 128;
/// The longest participant name, in bytes.
pub const MAX_PARTICIPANT_NAME_BYTES: usize = 64;
/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The longest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Operations in one branch.
pub const MAX_OPERATIONS_PER_BRANCH: usize = 64;
/// Keys plus values of one branch, in bytes.
pub const MAX_BRANCH_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Keys plus values of all branches of one transaction, in bytes.
pub const MAX_TXN_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;
/// Branches (participants) in one transaction.
pub const MAX_BRANCHES_PER_TXN: usize = 16;
/// The longest a transaction may take to reach a decision, and so the furthest a Prepare
/// deadline may lie in the future.
pub const MAX_TXN_TIMEOUT_MS: u64 = 60_000;
/// The decision timeout used when a client gives none.
pub const DEFAULT_TXN_TIMEOUT_MS: u64 = 5_000;
/// How long past a transaction's deadline a participant remembers its outcome. A one-phase
/// transaction whose reply was lost is resolved by asking the participant; an answer asked for
/// later than this is refused as forgotten (DATA_LOSS), never guessed.
pub const DECISION_RETENTION_MS: u64 = 60_000;
/// Branches a participant holds prepared at once; a Prepare beyond votes NO (overloaded).
pub const MAX_PREPARED_BRANCHES: usize = 16_384;
/// Executed saga steps a participant holds undo information for at once (until the saga's
/// Commit or the step's Compensate); an Execute beyond votes NO (overloaded).
pub const MAX_EXECUTED_STEPS: usize = 16_384;
/// Decided transactions a participant remembers (for idempotency and barriers) at once.
pub const MAX_REMEMBERED_DECISIONS: usize = 2 * 1_048_576;
/// The largest write-ahead-log record.
pub const MAX_WAL_RECORD_BYTES: usize = 4 * 1024 * 1024;
/// The largest gRPC message Concord servers accept or send.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// Requests in one PrepareBatch or CommitBatch message.
pub const MAX_BATCH_REQUESTS: usize = 1_024;
/// A batch stops growing once its requests take this many bytes (one branch is at most
/// `MAX_BRANCH_PAYLOAD_BYTES`, so a batch always fits in a gRPC message).
pub const MAX_BATCH_BYTES: usize = MAX_GRPC_MESSAGE_BYTES / 2;
/// Entries in one page of a listing or scan.
pub const MAX_PAGE_SIZE: usize = 1_000;
/// Entries in a page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// The page size to use for a request asking for `requested` entries (0: the default).
#[must_use]
pub fn page_size(requested: u32) -> usize {
    match usize::try_from(requested).unwrap_or(MAX_PAGE_SIZE) {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// The most transactions a coordinator may be configured to run undecided at once (and the
/// most interactive transactions open at once). Far below what a semaphore can count.
pub const MAX_INFLIGHT_TXNS: usize = 1 << 20;
/// Undecided transactions at once when the operator does not say (`--max-inflight`).
pub const DEFAULT_INFLIGHT_TXNS: usize = 4_096;
/// Unfinished transactions at once (undecided, or decided with Commits or compensations still
/// to deliver, or a one-phase outcome still to learn) when the operator does not say. A
/// participant that stays down cannot grow a coordinator's memory past this.
pub const DEFAULT_UNFINISHED_TXNS: usize = 100_000;
/// The most unfinished transactions a coordinator may be configured for.
pub const MAX_UNFINISHED_TXNS: usize = 1 << 24;
/// Finished outcomes a coordinator remembers when the operator does not say (`--retain`).
pub const DEFAULT_RETAINED_OUTCOMES: usize = 100_000;
/// Requests a streaming RPC (SubmitStream) has in flight at once per stream.
pub const STREAM_WINDOW: usize = 1_024;

/// Room for a record's framing around a branch's payload: ids, versions, per-key overhead.
const RECORD_OVERHEAD_BYTES: usize = 64 * 1024;

const _: () = {
    assert!(MAX_VALUE_BYTES <= MAX_BRANCH_PAYLOAD_BYTES);
    assert!(MAX_KEY_BYTES <= MAX_BRANCH_PAYLOAD_BYTES);
    // A PREPARED record holds a branch's resolved writes: it must fit in one WAL record.
    assert!(MAX_BRANCH_PAYLOAD_BYTES + RECORD_OVERHEAD_BYTES <= MAX_WAL_RECORD_BYTES);
    // A Submit carries every branch; a Prepare carries one.
    assert!(MAX_BRANCH_PAYLOAD_BYTES <= MAX_TXN_PAYLOAD_BYTES);
    assert!(MAX_TXN_PAYLOAD_BYTES * 2 <= MAX_GRPC_MESSAGE_BYTES);
    assert!(DEFAULT_TXN_TIMEOUT_MS <= MAX_TXN_TIMEOUT_MS);
    assert!(DEFAULT_PAGE_SIZE <= MAX_PAGE_SIZE);
    assert!(MAX_PREPARED_BRANCHES <= MAX_REMEMBERED_DECISIONS);
    assert!(MAX_EXECUTED_STEPS <= MAX_REMEMBERED_DECISIONS);
    assert!(DEFAULT_INFLIGHT_TXNS <= MAX_INFLIGHT_TXNS);
    // Every undecided transaction is also unfinished.
    assert!(DEFAULT_INFLIGHT_TXNS <= DEFAULT_UNFINISHED_TXNS);
    assert!(MAX_INFLIGHT_TXNS <= MAX_UNFINISHED_TXNS);
    assert!(DEFAULT_UNFINISHED_TXNS <= MAX_UNFINISHED_TXNS);
};
