//! The bank-transfer workload and the history it records.
//!
//! Each worker runs a closed loop of transfers with client-chosen ids. A transfer between two
//! participants is a two-phase commit; one between two accounts of one participant is a
//! one-phase commit. Every branch also adds 1 to its worker's `applied-W` counter and writes
//! the marker key `t/ID`, which is how the checker sees where each transaction was applied.
//! Some transfers are submitted twice, one after the other or both at once, and an unknown
//! answer is retried under the same id a bounded number of times: the coordinator must run
//! each id at most once whatever the client does.
//!
//! Every call is an event of the history (invoke, then ok / fail / unknown), streamed to
//! `history.jsonl`; the in-memory summary keeps one small record per transaction.
//!
//! Besides transfers ([`Kind::Transfer`]), a worker can run, as its [`Mix`] says:
//!
//! - **sagas** ([`Kind::Saga`]): a transfer in SAGA mode between the worker's own saga
//!   accounts (`sacct-W`, counted by `sapplied-W`). Sagas take no locks and a compensation
//!   refuses to overwrite a newer value, so only that worker's sagas touch these keys, one at
//!   a time: the worker waits until each saga is settled (committed, or every step
//!   compensated) before the next.
//! - **hybrid** ([`Kind::Hybrid`]): AUTO mode with a two-phase branch at a participant (the
//!   shared accounts) and a saga step at the payment gateway (the worker's `gacct-W`, counted
//!   by `gapplied-W`, its marker a counter `t/ID` = 1); a gateway debit beyond the balance is
//!   declined, which aborts the prepared branch.
//! - **interactive** ([`Kind::Interactive`]): Begin, Stage at both participants (each
//!   enlists itself), Commit; a failed Stage rolls the transaction back.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use concord_client::{
    Client, ClientError, ParticipantReader, Submitted, Transaction, TxnMode, TxnState,
};
use concord_core::types::{Operation, Outcome};
use tokio::time::Instant;

use crate::histogram::Histogram;
use crate::rng::Prng;

/// Account keys are `acct-0000`, `acct-0001`, ... on every participant.
pub fn account_key(index: usize) -> Vec<u8> {
    format!("acct-{index:04}").into_bytes()
}

/// A worker's counter of the branches it applied at one participant.
pub fn applied_key(worker: usize) -> Vec<u8> {
    format!("applied-{worker:03}").into_bytes()
}

/// The marker a transaction's branches write.
pub fn marker_key(txn_id: &str) -> Vec<u8> {
    format!("t/{txn_id}").into_bytes()
}

/// A worker's own saga account at each participant (only its sagas touch it).
pub fn saga_account_key(worker: usize) -> Vec<u8> {
    format!("sacct-{worker:03}").into_bytes()
}

/// A worker's counter of the saga branches it applied at one participant.
pub fn saga_applied_key(worker: usize) -> Vec<u8> {
    format!("sapplied-{worker:03}").into_bytes()
}

/// A worker's account at the payment gateway.
pub fn gateway_account_key(worker: usize) -> Vec<u8> {
    format!("gacct-{worker:03}").into_bytes()
}

/// A worker's counter of the gateway steps it applied.
pub fn gateway_applied_key(worker: usize) -> Vec<u8> {
    format!("gapplied-{worker:03}").into_bytes()
}

/// What kind of transaction a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Kind {
    /// A transfer: two-phase across participants, or one-phase within one.
    Transfer,
    /// A transfer as a saga between the worker's saga accounts.
    Saga,
    /// Two-phase at a participant plus a saga step at the payment gateway (AUTO mode).
    Hybrid,
    /// An interactive transfer: Begin, Stage at each participant, Commit.
    Interactive,
}

/// How often each kind of transaction runs, in percent (summing to 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Transfers.
    pub transfer: u64,
    /// Sagas.
    pub saga: u64,
    /// Hybrid transactions (need the payment gateway).
    pub hybrid: u64,
    /// Interactive transactions.
    pub interactive: u64,
}

impl Mix {
    /// Transfers only.
    pub const TRANSFER: Mix = Mix { transfer: 100, saga: 0, hybrid: 0, interactive: 0 };

    /// The mix `concord chaos --workload NAME` runs.
    #[must_use]
    pub fn named(name: &str) -> Option<Mix> {
        let only = |kind: Kind| {
            let mut mix = Mix { transfer: 0, saga: 0, hybrid: 0, interactive: 0 };
            match kind {
                Kind::Transfer => mix.transfer = 100,
                Kind::Saga => mix.saga = 100,
                Kind::Hybrid => mix.hybrid = 100,
                Kind::Interactive => mix.interactive = 100,
            }
            mix
        };
        match name {
            "transfer" => Some(only(Kind::Transfer)),
            "saga" => Some(only(Kind::Saga)),
            "hybrid" => Some(only(Kind::Hybrid)),
            "interactive" => Some(only(Kind::Interactive)),
            "mixed" => Some(Mix { transfer: 40, saga: 20, hybrid: 20, interactive: 20 }),
            _ => None,
        }
    }

    /// Whether any transaction uses the payment gateway.
    #[must_use]
    pub fn uses_gateway(&self) -> bool {
        self.hybrid > 0
    }

    fn pick(&self, roll: u64) -> Kind {
        if roll < self.transfer {
            Kind::Transfer
        } else if roll < self.transfer + self.saga {
            Kind::Saga
        } else if roll < self.transfer + self.saga + self.hybrid {
            Kind::Hybrid
        } else {
            Kind::Interactive
        }
    }
}

/// The shape of the workload.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    /// Closed-loop workers (transactions in flight, duplicates aside).
    pub workers: usize,
    /// Accounts per participant.
    pub accounts: usize,
    /// Each account's starting balance.
    pub initial_balance: i64,
    /// The largest amount one transfer moves.
    pub max_amount: i64,
    /// Percent of transfers within one participant (one-phase commit).
    pub one_phase_percent: u64,
    /// Percent of transfers submitted a second time after the first answer.
    pub resubmit_percent: u64,
    /// Percent of transfers submitted twice at once.
    pub concurrent_duplicate_percent: u64,
    /// Each transaction's decision timeout.
    pub txn_timeout_ms: u32,
    /// Submits of one id after an unknown answer, at most (besides the first).
    pub unknown_retries: u32,
    /// Transactions in the whole run, at most: the history's bound. Workers stop there.
    pub max_transactions: usize,
    /// The wall clock that stamps first submissions (the system's; simulated time under
    /// simulation, so it agrees with the coordinator's).
    pub clock: fn() -> u64,
    /// Which kinds of transaction run, how often.
    pub mix: Mix,
    /// The payment gateway's name at the coordinator, when the mix uses it. Its reader comes
    /// right after the participants' (its index in a record is the number of participants).
    pub gateway: Option<String>,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            workers: 8,
            accounts: 10,
            initial_balance: 1_000,
            max_amount: 300,
            one_phase_percent: 20,
            resubmit_percent: 10,
            concurrent_duplicate_percent: 5,
            txn_timeout_ms: 2_000,
            unknown_retries: 2,
            max_transactions: 2_000_000,
            clock: now_unix_ms,
            mix: Mix::TRANSFER,
            gateway: None,
        }
    }
}

/// What the client was last told about one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Told {
    /// Nothing definite yet.
    Unknown,
    /// Committed.
    Committed,
    /// Aborted.
    Aborted,
}

/// One transaction of the history.
#[derive(Clone, Debug)]
pub struct TxnRecord {
    /// Its id.
    pub id: String,
    /// The worker that ran it.
    pub worker: usize,
    /// The participants (indexes) it has branches at: one, or two (the payment gateway's
    /// index is the number of participants).
    pub participants: Vec<usize>,
    /// What kind of transaction it is (which keys its branches count themselves in).
    pub kind: Kind,
    /// When it was first submitted (for fencing).
    pub first_submitted_unix_ms: u64,
    /// The last definite answer.
    pub told: Told,
    /// Two definite answers that disagreed, if any.
    pub contradiction: Option<String>,
}

/// Counters and latencies of the run.
#[derive(Default)]
pub struct Tally {
    /// Submit calls made (duplicates and retries included).
    pub calls: u64,
    /// Calls beyond the first of each id: deliberate duplicates and retries after unknowns.
    pub duplicate_calls: u64,
    /// Calls answered COMMITTED.
    pub committed_answers: u64,
    /// Calls answered ABORTED.
    pub aborted_answers: u64,
    /// Calls with no definite answer.
    pub unknown_answers: u64,
    /// Latency of every call that got a definite answer.
    pub latency: Histogram,
    /// The slowest definite answer while a fault was active.
    pub worst_during_faults: Duration,
    /// Unknowns the background resolver settled during the run: committed, aborted.
    pub resolved_during_run: (u64, u64),
}

/// The history: the per-transaction summary in memory, every event in a file.
pub struct History {
    started: Instant,
    txns: Mutex<Vec<TxnRecord>>,
    tally: Mutex<Tally>,
    events: Mutex<Option<std::io::BufWriter<std::fs::File>>>,
    /// Transactions a worker gave up on with an unknown outcome, oldest first, for
    /// [`run_resolver`]. Bounded by the history's bound.
    unknown: Mutex<std::collections::VecDeque<(usize, Instant)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl History {
    /// A history whose events go to `path`.
    pub fn create(path: &std::path::Path) -> anyhow::Result<History> {
        let file = std::fs::File::create(path)?;
        let history = History::in_memory();
        *lock(&history.events) = Some(std::io::BufWriter::new(file));
        Ok(history)
    }

    /// A history that keeps only the per-transaction summary (no event file).
    #[must_use]
    pub fn in_memory() -> History {
        History {
            started: Instant::now(),
            txns: Mutex::new(Vec::new()),
            tally: Mutex::new(Tally::default()),
            events: Mutex::new(None),
            unknown: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    fn event(&self, txn: &str, kind: &str, detail: &str) {
        let line = serde_json::json!({
            "t_ms": self.started.elapsed().as_millis() as u64,
            "txn": txn,
            "type": kind,
            "detail": detail,
        });
        if let Some(out) = lock(&self.events).as_mut() {
            let _ = writeln!(out, "{line}");
        }
    }

    /// Flushes the event file.
    pub fn flush(&self) {
        if let Some(out) = lock(&self.events).as_mut() {
            let _ = out.flush();
        }
    }

    /// A copy of every transaction's record.
    pub fn transactions(&self) -> Vec<TxnRecord> {
        lock(&self.txns).clone()
    }

    /// The counters so far.
    pub fn with_tally<T>(&self, read: impl FnOnce(&Tally) -> T) -> T {
        read(&lock(&self.tally))
    }

    fn begin(&self, record: TxnRecord, max: usize) -> Option<usize> {
        let mut txns = lock(&self.txns);
        if txns.len() >= max {
            return None;
        }
        txns.push(record);
        Some(txns.len() - 1)
    }

    fn answer(&self, index: usize, told: Told) {
        let mut txns = lock(&self.txns);
        let record = &mut txns[index];
        if told == Told::Unknown {
            return;
        }
        if record.told != Told::Unknown && record.told != told && record.contradiction.is_none() {
            record.contradiction = Some(format!("told {:?}, then {told:?}", record.told));
        }
        record.told = told;
    }
}

/// Whether the nemesis has a fault active, and how many faults it has begun (to tell whether a
/// call overlapped one).
#[derive(Default)]
pub struct FaultClock {
    active: std::sync::atomic::AtomicUsize,
    begun: std::sync::atomic::AtomicU64,
}

impl FaultClock {
    /// A fault begins.
    pub fn begin(&self) {
        self.begun.fetch_add(1, Ordering::SeqCst);
        self.active.fetch_add(1, Ordering::SeqCst);
    }

    /// A fault ends.
    pub fn end(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    fn mark(&self) -> (bool, u64) {
        (self.active.load(Ordering::SeqCst) > 0, self.begun.load(Ordering::SeqCst))
    }

    fn overlapped(&self, at_start: (bool, u64)) -> bool {
        let now = self.mark();
        at_start.0 || now.0 || now.1 != at_start.1
    }
}

/// Builds one transfer for `worker`.
fn transfer(
    spec: &WorkloadSpec,
    rng: &mut Prng,
    participants: &[String],
    worker: usize,
    id: &str,
) -> (Transaction, Vec<usize>) {
    let amount = 1 + rng.below(spec.max_amount as u64) as i64;
    let accounts = spec.accounts as u64;
    let from = rng.below(participants.len() as u64) as usize;
    let debit_account = rng.below(accounts) as usize;
    let mut txn = Transaction::new().with_txn_id(id).with_timeout_ms(spec.txn_timeout_ms);
    let bookkeeping = |delta_key: Vec<u8>, delta: i64, lower: Option<i64>| {
        vec![
            Operation::CounterAdd { key: delta_key, delta, lower_bound: lower, upper_bound: None },
            Operation::CounterAdd {
                key: applied_key(worker),
                delta: 1,
                lower_bound: None,
                upper_bound: None,
            },
            Operation::Put { key: marker_key(id), value: b"1".to_vec() },
        ]
    };
    let one_phase = participants.len() < 2 || rng.below(100) < spec.one_phase_percent;
    if one_phase && accounts >= 2 {
        let credit_account = (debit_account + 1 + rng.below(accounts - 1) as usize) % spec.accounts;
        let mut operations = bookkeeping(account_key(debit_account), -amount, Some(0));
        operations.push(Operation::CounterAdd {
            key: account_key(credit_account),
            delta: amount,
            lower_bound: None,
            upper_bound: None,
        });
        txn = txn.with_branch(participants[from].clone(), operations);
        return (txn, vec![from]);
    }
    let to = (from + 1 + rng.below(participants.len() as u64 - 1) as usize) % participants.len();
    let credit_account = rng.below(accounts) as usize;
    txn = txn
        .with_branch(
            participants[from].clone(),
            bookkeeping(account_key(debit_account), -amount, Some(0)),
        )
        .with_branch(
            participants[to].clone(),
            bookkeeping(account_key(credit_account), amount, None),
        );
    (txn, vec![from, to])
}

impl TxnRecord {
    /// The counter its branch at `participant` adds 1 to, in a cluster of `participants`
    /// participants (a higher index is the payment gateway).
    #[must_use]
    pub fn applied_key(&self, participant: usize, participants: usize) -> Vec<u8> {
        if participant >= participants {
            gateway_applied_key(self.worker)
        } else if self.kind == Kind::Saga {
            saga_applied_key(self.worker)
        } else {
            applied_key(self.worker)
        }
    }
}

/// A saga between `worker`'s saga accounts at two participants.
fn saga(
    spec: &WorkloadSpec,
    rng: &mut Prng,
    participants: &[String],
    worker: usize,
    id: &str,
) -> (Transaction, Vec<usize>) {
    // Now and then more than the account holds: the debit step fails and the saga compensates.
    let amount = 1 + rng.below(spec.initial_balance as u64) as i64;
    let from = rng.below(participants.len() as u64) as usize;
    let to = (from + 1 + rng.below(participants.len() as u64 - 1) as usize) % participants.len();
    let step = |delta: i64, lower: Option<i64>| {
        vec![
            Operation::CounterAdd {
                key: saga_account_key(worker),
                delta,
                lower_bound: lower,
                upper_bound: None,
            },
            Operation::CounterAdd {
                key: saga_applied_key(worker),
                delta: 1,
                lower_bound: None,
                upper_bound: None,
            },
            Operation::Put { key: marker_key(id), value: b"1".to_vec() },
        ]
    };
    // The credit first half the time: then a failing debit compensates an executed step.
    let (first, second) = if rng.below(2) == 0 {
        ((to, step(amount, None)), (from, step(-amount, Some(0))))
    } else {
        ((from, step(-amount, Some(0))), (to, step(amount, None)))
    };
    let txn = Transaction::new()
        .with_txn_id(id)
        .with_timeout_ms(spec.txn_timeout_ms)
        .with_mode(TxnMode::Saga)
        .with_branch(participants[first.0].clone(), first.1)
        .with_branch(participants[second.0].clone(), second.1);
    (txn, vec![first.0, second.0])
}

/// A two-phase branch at a participant and a saga step at the payment gateway (AUTO mode).
fn hybrid(
    spec: &WorkloadSpec,
    rng: &mut Prng,
    participants: &[String],
    gateway: &str,
    worker: usize,
    id: &str,
) -> (Transaction, Vec<usize>) {
    let amount = 1 + rng.below(spec.max_amount as u64) as i64;
    let at = rng.below(participants.len() as u64) as usize;
    let account = rng.below(spec.accounts as u64) as usize;
    // Into the gateway half the time; out of it (declined when the balance is short) else.
    let to_gateway = rng.below(2) == 0;
    let (local, remote) = if to_gateway { (-amount, amount) } else { (amount, -amount) };
    let add = |key: Vec<u8>, delta: i64, lower: Option<i64>| Operation::CounterAdd {
        key,
        delta,
        lower_bound: lower,
        upper_bound: None,
    };
    let local_branch = vec![
        add(account_key(account), local, to_gateway.then_some(0)),
        add(applied_key(worker), 1, None),
        Operation::Put { key: marker_key(id), value: b"1".to_vec() },
    ];
    let gateway_branch = vec![
        add(gateway_account_key(worker), remote, (!to_gateway).then_some(0)),
        add(gateway_applied_key(worker), 1, None),
        add(marker_key(id), 1, None),
    ];
    let txn = Transaction::new()
        .with_txn_id(id)
        .with_timeout_ms(spec.txn_timeout_ms)
        .with_mode(TxnMode::Auto)
        .with_branch(participants[at].clone(), local_branch)
        .with_branch(gateway.to_string(), gateway_branch);
    (txn, vec![at, participants.len()])
}

/// One call to the coordinator (a submit, or an interactive Commit), recorded.
async fn call(
    answer: impl Future<Output = Result<Submitted, ClientError>>,
    index: usize,
    id: &str,
    history: &History,
    faults: &FaultClock,
    duplicate: bool,
) -> Told {
    history.event(id, "invoke", if duplicate { "duplicate" } else { "" });
    let mark = faults.mark();
    let started = Instant::now();
    let result = answer.await;
    let latency = started.elapsed();
    let (told, kind, detail) = match &result {
        Ok(submitted) => match submitted.outcome {
            Outcome::Committed => (Told::Committed, "ok", String::new()),
            Outcome::Aborted => (
                Told::Aborted,
                "fail",
                submitted.abort.as_ref().map_or(String::new(), |c| c.label().to_string()),
            ),
            Outcome::Pending => (Told::Unknown, "unknown", "pending".to_string()),
        },
        // A rejected call did nothing itself, but an earlier call with this id may have run
        // it: unknown, like a timeout. Never "no".
        Err(error) => (Told::Unknown, "unknown", short(error)),
    };
    history.event(id, kind, &detail);
    history.answer(index, told);
    let mut tally = lock(&history.tally);
    tally.calls += 1;
    if duplicate {
        tally.duplicate_calls += 1;
    }
    match told {
        Told::Committed => tally.committed_answers += 1,
        Told::Aborted => tally.aborted_answers += 1,
        Told::Unknown => tally.unknown_answers += 1,
    }
    if told != Told::Unknown {
        tally.latency.record(latency);
        if faults.overlapped(mark) {
            tally.worst_during_faults = tally.worst_during_faults.max(latency);
        }
    }
    told
}

fn short(error: &ClientError) -> String {
    let text = error.to_string();
    text.chars().take(160).collect()
}

/// What every worker shares.
pub struct WorkerContext {
    /// The workload's shape.
    pub spec: Arc<WorkloadSpec>,
    /// The coordinator (through its faulty link).
    pub client: Client,
    /// The participants' names (the payment gateway's not among them).
    pub participants: Arc<Vec<String>>,
    /// A direct connection to each participant, for staging interactive transactions (as a
    /// service talks to its own sidecar). Empty when the mix has none.
    pub stagers: Arc<Vec<ParticipantReader>>,
    /// Ids are `RUN-wWORKER-SEQUENCE`.
    pub run_id: String,
    /// The history.
    pub history: Arc<History>,
    /// Whether a fault is active.
    pub faults: Arc<FaultClock>,
    /// Set when the run ends.
    pub stop: Arc<AtomicBool>,
}

/// Runs one worker until `stop` (or the history's bound).
#[allow(clippy::too_many_arguments)]
pub async fn run_worker(
    spec: Arc<WorkloadSpec>,
    client: Client,
    participants: Arc<Vec<String>>,
    worker: usize,
    run_id: String,
    rng: Prng,
    history: Arc<History>,
    faults: Arc<FaultClock>,
    stop: Arc<AtomicBool>,
) {
    let context = WorkerContext {
        spec,
        client,
        participants,
        stagers: Arc::new(Vec::new()),
        run_id,
        history,
        faults,
        stop,
    };
    run_worker_with(&context, worker, rng).await;
}

/// Runs one worker of `context` until it stops (or the history's bound).
pub async fn run_worker_with(context: &WorkerContext, worker: usize, mut rng: Prng) {
    let WorkerContext { spec, participants, history, stop, .. } = context;
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let id = format!("{}-w{worker}-{sequence}", context.run_id);
        let mut kind = spec.mix.pick(rng.below(100));
        if participants.len() < 2
            || (kind == Kind::Hybrid && spec.gateway.is_none())
            || (kind == Kind::Interactive && context.stagers.len() != participants.len())
        {
            kind = Kind::Transfer;
        }
        let (txn, branches) = match kind {
            Kind::Transfer => transfer(spec, &mut rng, participants, worker, &id),
            Kind::Saga => saga(spec, &mut rng, participants, worker, &id),
            Kind::Hybrid => {
                let gateway = spec.gateway.as_deref().unwrap_or_default();
                hybrid(spec, &mut rng, participants, gateway, worker, &id)
            }
            Kind::Interactive => {
                let (txn, branches) =
                    transfer_between_two(spec, &mut rng, participants, worker, &id);
                run_interactive(context, &txn, branches, worker, &id).await;
                continue;
            }
        };
        let txn = txn.with_first_submitted_unix_ms((spec.clock)());
        let record = TxnRecord {
            id: id.clone(),
            worker,
            participants: branches,
            kind,
            first_submitted_unix_ms: txn.first_submitted_unix_ms(),
            told: Told::Unknown,
            contradiction: None,
        };
        let Some(index) = history.begin(record, spec.max_transactions) else {
            tracing::warn!("the history is full; the workload stops");
            return;
        };
        let told = submit_recorded(context, &txn, index, &id, &mut rng).await;
        if matches!(kind, Kind::Saga | Kind::Hybrid) {
            // The next saga of this worker touches the same keys: wait until this one is
            // settled (its told outcome, if unknown, becomes definite here).
            settle(context, index, &id, txn.first_submitted_unix_ms()).await;
        } else if told == Told::Unknown {
            lock(&history.unknown).push_back((index, Instant::now()));
        }
    }
}

/// Submits `txn` (sometimes twice, one after the other or both at once), retrying an unknown
/// answer a bounded number of times.
async fn submit_recorded(
    context: &WorkerContext,
    txn: &Transaction,
    index: usize,
    id: &str,
    rng: &mut Prng,
) -> Told {
    let WorkerContext { spec, client, history, faults, .. } = context;
    let roll = rng.below(100);
    let mut told = if roll < spec.concurrent_duplicate_percent {
        let (a, b) = tokio::join!(
            call(client.submit(txn), index, id, history, faults, false),
            call(client.submit(txn), index, id, history, faults, true),
        );
        if a == Told::Unknown { b } else { a }
    } else {
        call(client.submit(txn), index, id, history, faults, false).await
    };
    if roll >= 100 - spec.resubmit_percent {
        let again = call(client.submit(txn), index, id, history, faults, true).await;
        if told == Told::Unknown {
            told = again;
        }
    }
    retry_unknown(context, told, || call(client.submit(txn), index, id, history, faults, true))
        .await
}

/// Repeats an unknown answer's call (same id) at most `unknown_retries` times, backing off,
/// until it is definite or the run stops.
async fn retry_unknown<F: Future<Output = Told>>(
    context: &WorkerContext,
    mut told: Told,
    mut again: impl FnMut() -> F,
) -> Told {
    let mut retries = 0;
    while told == Told::Unknown
        && retries < context.spec.unknown_retries
        && !context.stop.load(Ordering::Relaxed)
    {
        retries += 1;
        tokio::time::sleep(Duration::from_millis(100 * u64::from(retries))).await;
        told = again().await;
    }
    told
}

/// Waits until a saga (or hybrid) transaction no longer changes its worker's keys: committed,
/// or aborted with every executed step compensated. Asks with fencing, so an id the
/// coordinator never saw becomes aborted for good. Gives up only when the run stops (the
/// checker then waits for what is left).
async fn settle(context: &WorkerContext, index: usize, id: &str, first_submitted_unix_ms: u64) {
    let WorkerContext { client, history, stop, .. } = context;
    loop {
        match client.fence(id, first_submitted_unix_ms).await {
            Ok(info) => {
                let told = match info.state {
                    Some(TxnState::Committing | TxnState::Committed) => Some(Told::Committed),
                    Some(TxnState::Aborted) => Some(Told::Aborted),
                    _ => None,
                };
                if let Some(told) = told {
                    history.answer(index, told);
                    return;
                }
            }
            Err(error) if !matches!(error, ClientError::Unknown { .. }) => {
                history.event(id, "unknown", &short(&error));
            }
            Err(_) => {}
        }
        if stop.load(Ordering::Relaxed) {
            lock(&history.unknown).push_back((index, Instant::now()));
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A transfer between two different participants (its branches, for staging).
fn transfer_between_two(
    spec: &WorkloadSpec,
    rng: &mut Prng,
    participants: &[String],
    worker: usize,
    id: &str,
) -> (Transaction, Vec<usize>) {
    let two_phase_only = WorkloadSpec { one_phase_percent: 0, ..spec.clone() };
    transfer(&two_phase_only, rng, participants, worker, id)
}

/// Runs `txn`'s branches as an interactive transaction: Begin, Stage each branch at its
/// participant (which enlists itself), Commit. A Stage that fails rolls it back (committing
/// what was staged elsewhere would apply it on some participants only).
async fn run_interactive(
    context: &WorkerContext,
    txn: &Transaction,
    branches: Vec<usize>,
    worker: usize,
    id: &str,
) {
    let WorkerContext { spec, client, history, faults, .. } = context;
    history.event(id, "invoke", "begin");
    if let Err(error) = client.begin(Some(id), spec.txn_timeout_ms).await {
        // Not begun (or its answer lost: then it aborts at its deadline, nothing staged).
        history.event(id, "fail", &format!("begin: {}", short(&error)));
        return;
    }
    let record = TxnRecord {
        id: id.to_string(),
        worker,
        participants: branches.clone(),
        kind: Kind::Interactive,
        first_submitted_unix_ms: (spec.clock)(),
        told: Told::Unknown,
        contradiction: None,
    };
    let Some(index) = history.begin(record, spec.max_transactions) else { return };
    for (participant, (_, operations)) in branches.iter().zip(txn.branches()) {
        if let Err(error) = context.stagers[*participant].stage(id, operations.clone()).await {
            history.event(id, "invoke", &format!("rollback after stage: {}", short(&error)));
            let told = call(client.rollback(id), index, id, history, faults, false).await;
            if told == Told::Unknown {
                lock(&history.unknown).push_back((index, Instant::now()));
            }
            return;
        }
    }
    let told = call(client.commit(id), index, id, history, faults, false).await;
    let told =
        retry_unknown(context, told, || call(client.commit(id), index, id, history, faults, true))
            .await;
    if told == Told::Unknown {
        lock(&history.unknown).push_back((index, Instant::now()));
    }
}

/// Settles unknown outcomes while the run goes on, as a real client would: every second, the
/// ids given up on more than two seconds ago are asked about with fencing (through the faulty
/// link, like any call). Asking early matters: the coordinator keeps a bounded number of
/// outcomes, and a long run outlives them.
pub async fn run_resolver(client: Client, history: Arc<History>, stop: Arc<AtomicBool>) {
    const PER_TICK: usize = 500;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for _ in 0..PER_TICK {
            let due = {
                let mut unknown = lock(&history.unknown);
                match unknown.front() {
                    Some((_, since)) if since.elapsed() >= Duration::from_secs(2) => {
                        unknown.pop_front()
                    }
                    _ => None,
                }
            };
            let Some((index, since)) = due else { break };
            let record = lock(&history.txns)[index].clone();
            let told = match client.fence(&record.id, record.first_submitted_unix_ms).await {
                Ok(info) if info.outcome == Outcome::Committed => Told::Committed,
                Ok(info) if info.outcome == Outcome::Aborted => Told::Aborted,
                // A definite refusal (the coordinator cannot tell, DATA_LOSS) will not change:
                // leave it to the final check, which reports it, rather than block the rest.
                Err(error) if !matches!(error, ClientError::Unknown { .. }) => {
                    history.event(&record.id, "unknown", &short(&error));
                    continue;
                }
                _ => {
                    // Not now (a fault, or still deciding): back in line, try next tick.
                    lock(&history.unknown).push_front((index, since));
                    break;
                }
            };
            history.event(
                &record.id,
                if told == Told::Committed { "ok" } else { "fail" },
                "resolved",
            );
            history.answer(index, told);
            let mut tally = lock(&history.tally);
            if told == Told::Committed {
                tally.resolved_during_run.0 += 1;
            } else {
                tally.resolved_during_run.1 += 1;
            }
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
