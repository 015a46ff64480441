//! `concord demo`: the first command a newcomer runs. It starts a coordinator and three
//! participants (`alpha`, `beta`, `gamma`) as child processes of this binary, loads bank
//! accounts on each, runs a closed-loop workload of two-phase-commit transfers between
//! participants with a live progress line, and then checks what 2PC promises: every unknown
//! outcome resolves, nothing is left half-delivered, no account went negative, and no money was
//! created or lost. It prints a summary with a PASS/FAIL verdict and stops every child it
//! started (SIGTERM, then SIGKILL after a grace period), also when it fails midway.
//!
//! Children run in their own process group, so a Ctrl-C in the terminal reaches only the demo,
//! which ends the workload cleanly and still runs the final check; a second Ctrl-C skips the
//! check and stops the servers. `kill_on_drop` is the backstop if the demo errors or panics.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use concord_chaos::histogram::Histogram;
use concord_chaos::rng::{Prng, clock_seed};
use concord_client::info::outcome_str;
use concord_client::{
    Client, ClientError, ClientOptions, ParticipantReader, RejectKind, Submitted, Transaction,
    TxnState,
};
use concord_core::limits;
use concord_core::types::{Operation, Outcome, counter};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::local::LocalCluster;

/// The participants' names, in start order.
const PARTICIPANTS: [&str; 3] = ["alpha", "beta", "gamma"];
/// How long the final phase may spend resolving unknowns and waiting for delivery.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long loading one batch of accounts may take, retries included.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long workers may take to finish their in-flight transfer once told to stop (a submit's
/// own deadline is the transaction timeout plus the client's margin, well below this).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The decision timeout of every demo transaction.
const TXN_TIMEOUT_MS: u32 = 5_000;
/// The deadline of reads from participants and of `get`/`list` calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Unknown outcomes remembered for resolution; reaching it stops the workload (the cluster is
/// clearly unhealthy) rather than growing without bound.
const MAX_UNKNOWN: usize = 100_000;
/// Concurrent `get` calls while resolving unknowns.
const RESOLVE_CONCURRENCY: usize = 16;
/// Problems listed individually in the summary; the rest are counted.
const MAX_LISTED_PROBLEMS: usize = 10;
/// Account keys are `acct-0000`, `acct-0001`, ...; every one sorts within `[acct-, acct.)`.
const KEY_PREFIX: &str = "acct-";
/// The exclusive end of the account key range (`.` follows `-` in ASCII).
const KEY_RANGE_END: &[u8] = b"acct.";
/// The exit code when the user interrupted before the check could run.
const EXIT_INTERRUPTED: u8 = 130;

/// Flags of `concord demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the servers keep their data and logs (NAME.log). Wiped at start unless
    /// --keep-data; the demo refuses a non-empty directory it did not create.
    #[arg(long, default_value = "./concord-data/demo", value_name = "DIR")]
    data_dir: PathBuf,
    /// Keep the data directory's contents from a previous run.
    #[arg(long)]
    keep_data: bool,
    /// Accounts per participant.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    accounts: u32,
    /// Each account's starting balance.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(i64).range(0..=1_000_000_000_000))]
    initial_balance: i64,
    /// The largest amount one transfer moves (each picks 1 to this at random).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=1_000_000_000_000))]
    max_amount: i64,
    /// Transfers in flight at once (closed loop: each client waits for its answer).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// How long to run transfers: 20s, 2m, 500ms, 1m30s (Ctrl-C ends it early).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    duration: Duration,
    /// Seed for picking accounts and amounts (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
}

/// Runs the demo; exits 0 if the final check passed, 1 if not.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let interrupts = Interrupts::install();
    prepare_data_dir(&args.data_dir, args.keep_data)?;
    let exe = std::env::current_exe().context("finding the concord binary to start servers")?;
    let mut cluster = LocalCluster::default();
    let outcome = run_with_cluster(&args, &exe, &mut cluster, interrupts).await;
    if !cluster.is_empty() {
        eprintln!("stopping the servers...");
    }
    for note in cluster.stop().await {
        eprintln!("  {note}");
    }
    outcome
}

/// What the setup phase produced.
struct Setup {
    client: Client,
    readers: Vec<(String, ParticipantReader)>,
    before: Balances,
}

/// Everything between starting the servers and the verdict. Ctrl-C during setup stops at
/// once; during the workload it ends the workload and the check still runs; after that it
/// skips the check.
async fn run_with_cluster(
    args: &DemoArgs,
    exe: &Path,
    cluster: &mut LocalCluster,
    mut interrupts: Interrupts,
) -> anyhow::Result<ExitCode> {
    let bank = Bank {
        accounts: args.accounts,
        initial_balance: args.initial_balance,
        max_amount: args.max_amount,
    };
    let run_id = run_id();
    let setup = tokio::select! {
        setup = set_up(args, exe, cluster, &bank, &run_id) => setup?,
        () = interrupts.after(0) => {
            eprintln!("\ninterrupted before the workload ran");
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
    };
    let seed = args.seed.unwrap_or_else(clock_seed);
    eprintln!(
        "running transfers for {} with {} concurrent clients (seed {seed}; Ctrl-C ends early)",
        format_duration(args.duration),
        args.concurrency
    );
    let workload = run_workload(
        &setup.client,
        &bank,
        &run_id,
        args.concurrency,
        args.duration,
        seed,
        &mut interrupts,
    )
    .await;
    // The interrupt that ended the workload, if one did, is spent; any other skips the check.
    let seen = u32::from(workload.interrupted);
    tokio::select! {
        verdict = finish(&setup, &bank, workload, cluster) => verdict,
        () = interrupts.after(seen) => {
            eprintln!("\ninterrupted: skipping the final check");
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
    }
}

/// Starts the servers, connects, loads the accounts and reads them back.
async fn set_up(
    args: &DemoArgs,
    exe: &Path,
    cluster: &mut LocalCluster,
    bank: &Bank,
    run_id: &str,
) -> anyhow::Result<Setup> {
    eprintln!("concord demo: data and logs in {}", args.data_dir.display());
    let names: Vec<String> = PARTICIPANTS.iter().map(|n| (*n).to_string()).collect();
    let threads = crate::local::shared_worker_threads(names.len() + 1);
    cluster.start(exe, &args.data_dir, &names, &[], threads).await?;
    for server in cluster.servers() {
        eprintln!("  {:<22} {}", server.label(), server.address());
    }
    let coordinator = cluster.coordinator_address()?;
    let client = Client::connect_with(
        &coordinator.to_string(),
        ClientOptions { call_timeout: CALL_TIMEOUT, ..ClientOptions::default() },
    )?;
    let mut readers = Vec::with_capacity(PARTICIPANTS.len());
    for server in &cluster.participants {
        readers.push((
            server.name().to_string(),
            ParticipantReader::connect(&server.address().to_string(), CALL_TIMEOUT)?,
        ));
    }
    eprintln!(
        "loading {} accounts ({} per participant, balance {} each)...",
        thousands(u64::from(bank.accounts) * PARTICIPANTS.len() as u64),
        thousands(u64::from(bank.accounts)),
        thousands(bank.initial_balance.unsigned_abs())
    );
    load_accounts(&client, bank, run_id).await?;
    let before = read_balances(&readers, bank).await;
    if !before.problems.is_empty() {
        anyhow::bail!(
            "the accounts did not load as expected: {}",
            before.problems.first().map_or("", String::as_str)
        );
    }
    Ok(Setup { client, readers, before })
}

// ───────────────────────────── Data directory ─────────────────────────────

/// Creates (or wipes, unless `keep`) the data directory, refusing one the demo did not create.
fn prepare_data_dir(dir: &Path, keep: bool) -> anyhow::Result<()> {
    crate::local::prepare_data_dir(dir, keep, "demo")
}

// ───────────────────────────── Child processes ─────────────────────────────

// ───────────────────────────── Interrupts ─────────────────────────────

/// Waits for the next `signal`, or forever if it could not be listened for.
async fn recv_or_pending(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal.as_mut() {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Counts Ctrl-C (and SIGTERM, SIGHUP, SIGQUIT) presses, so each phase can react to the ones it cares about.
#[derive(Clone)]
struct Interrupts {
    /// The number of interrupts so far.
    count: watch::Receiver<u32>,
}

impl Interrupts {
    /// Starts listening. From here on Ctrl-C no longer kills the demo: the phases decide.
    fn install() -> Interrupts {
        let (sender, count) = watch::channel(0u32);
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            // SIGTERM, SIGHUP (the terminal closed) and SIGQUIT count as Ctrl-C: the servers
            // run in their own process group and must be stopped by the demo.
            let mut terminate = signal(SignalKind::terminate()).ok();
            let mut hangup = signal(SignalKind::hangup()).ok();
            let mut quit = signal(SignalKind::quit()).ok();
            loop {
                let received = tokio::select! {
                    result = tokio::signal::ctrl_c() => result.is_ok(),
                    () = recv_or_pending(&mut terminate) => true,
                    () = recv_or_pending(&mut hangup) => true,
                    () = recv_or_pending(&mut quit) => true,
                };
                if !received {
                    tracing::warn!("cannot listen for Ctrl-C");
                    return;
                }
                sender.send_modify(|count| *count = count.saturating_add(1));
            }
        });
        Interrupts { count }
    }

    /// Resolves once more than `seen` interrupts have arrived (never, if signals are not
    /// available).
    async fn after(&mut self, seen: u32) {
        loop {
            if *self.count.borrow_and_update() > seen {
                return;
            }
            if self.count.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

// ───────────────────────────── The bank ─────────────────────────────

/// The accounts and the workload's shape.
#[derive(Clone, Copy, Debug)]
struct Bank {
    /// Accounts per participant.
    accounts: u32,
    /// Each account's starting balance.
    initial_balance: i64,
    /// The largest transfer.
    max_amount: i64,
}

impl Bank {
    /// The money in the system: it must never change.
    fn expected_total(&self) -> i128 {
        i128::from(self.accounts) * PARTICIPANTS.len() as i128 * i128::from(self.initial_balance)
    }
}

fn account_key(index: u32) -> Vec<u8> {
    format!("{KEY_PREFIX}{index:04}").into_bytes()
}

/// A prefix for this run's transaction ids, unique across runs (ids are idempotency keys, and
/// with --keep-data the coordinator remembers earlier runs' ids).
fn run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    format!("demo-{now:x}-{:x}", std::process::id())
}

/// Loads every account with its initial balance: one transaction per batch, one branch per
/// participant, at most [`limits::MAX_OPERATIONS_PER_BRANCH`] operations per branch.
async fn load_accounts(client: &Client, bank: &Bank, run_id: &str) -> anyhow::Result<()> {
    let batch_size = u32::try_from(limits::MAX_OPERATIONS_PER_BRANCH).unwrap_or(u32::MAX);
    for batch in 0..bank.accounts.div_ceil(batch_size) {
        let first = batch * batch_size;
        let last = (first + batch_size).min(bank.accounts);
        let mut txn = Transaction::new()
            .with_txn_id(format!("{run_id}-load-{batch}"))
            .with_timeout_ms(TXN_TIMEOUT_MS);
        for name in PARTICIPANTS {
            txn = txn.with_branch(
                name,
                (first..last).map(|index| Operation::Put {
                    key: account_key(index),
                    value: counter::encode(bank.initial_balance),
                }),
            );
        }
        let submitted = submit_until_decided(client, &txn).await?;
        if submitted.outcome != Outcome::Committed {
            anyhow::bail!(
                "loading accounts: txn {} aborted: {}",
                submitted.txn_id,
                submitted
                    .abort
                    .map_or_else(|| "no cause given".to_string(), |cause| cause.to_string())
            );
        }
    }
    Ok(())
}

/// Submits `txn` (which has an id) until the coordinator gives a decision, resubmitting the
/// same id after an unknown outcome: the coordinator never runs an id twice.
async fn submit_until_decided(client: &Client, txn: &Transaction) -> anyhow::Result<Submitted> {
    let deadline = Instant::now() + LOAD_TIMEOUT;
    let mut delay = Duration::from_millis(100);
    loop {
        let last = match client.submit(txn).await {
            Ok(submitted) if submitted.outcome != Outcome::Pending => return Ok(submitted),
            Ok(_) => "still pending".to_string(),
            Err(error) if error.is_outcome_unknown() => error.to_string(),
            Err(error) => return Err(error.into()),
        };
        if Instant::now() + delay > deadline {
            anyhow::bail!(
                "txn {} got no decision within {LOAD_TIMEOUT:?}: {last}",
                txn.txn_id().unwrap_or("?")
            );
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// The balances as read from every participant.
#[derive(Debug, Default)]
struct Balances {
    /// The sum of every account read.
    total: i128,
    /// Accounts read.
    accounts: u64,
    /// The lowest balance seen.
    lowest: Option<i64>,
    /// Negative balances seen.
    negative: u64,
    /// Participants that could not be read.
    unreachable: Vec<String>,
    /// Everything wrong, the first [`MAX_LISTED_PROBLEMS`] spelled out.
    problems: Vec<String>,
    /// Problems beyond those listed.
    more_problems: u64,
}

impl Balances {
    fn problem(&mut self, problem: String) {
        if self.problems.len() < MAX_LISTED_PROBLEMS {
            self.problems.push(problem);
        } else {
            self.more_problems += 1;
        }
    }
}

/// Reads every account through each participant's Scan.
async fn read_balances(readers: &[(String, ParticipantReader)], bank: &Bank) -> Balances {
    let mut balances = Balances::default();
    // Room for the accounts plus strays from an earlier run kept with --keep-data.
    let max_entries = bank.accounts as usize + limits::MAX_PAGE_SIZE;
    for (name, reader) in readers {
        let page = match reader.scan(KEY_PREFIX.as_bytes(), KEY_RANGE_END, max_entries).await {
            Ok(page) => page,
            Err(error) => {
                balances.unreachable.push(name.clone());
                balances.problem(format!("participant {name}: cannot read balances: {error}"));
                continue;
            }
        };
        if page.next_start.is_some() {
            balances.problem(format!("participant {name}: more than {max_entries} account keys"));
        }
        let entries: BTreeMap<Vec<u8>, Vec<u8>> =
            page.entries.into_iter().map(|entry| (entry.key, entry.value)).collect();
        for index in 0..bank.accounts {
            let key = account_key(index);
            let shown = String::from_utf8_lossy(&key).into_owned();
            let Some(value) = entries.get(&key) else {
                balances.problem(format!("participant {name}: account {shown} is missing"));
                continue;
            };
            let Some(balance) = counter::decode(value) else {
                balances.problem(format!("participant {name}: account {shown} is not a counter"));
                continue;
            };
            balances.accounts += 1;
            balances.total += i128::from(balance);
            balances.lowest = Some(balances.lowest.map_or(balance, |lowest| lowest.min(balance)));
            if balance < 0 {
                balances.negative += 1;
                balances.problem(format!("participant {name}: account {shown} is at {balance}"));
            }
        }
    }
    balances
}

// ───────────────────────────── The workload ─────────────────────────────

/// What the workload saw, shared by the workers.
#[derive(Default)]
struct Stats {
    /// Transfers that committed.
    committed: u64,
    /// Aborted transfers by cause label (a small, fixed set of names).
    aborted: BTreeMap<&'static str, u64>,
    /// Transfers whose outcome is unknown, to resolve at the end (at most [`MAX_UNKNOWN`]).
    unknown: Vec<(String, u64)>,
    /// Transfers refused as overloaded (nothing happened; retried later).
    overloaded: u64,
    /// Why the workload stopped early, if it did.
    fatal: Option<String>,
    /// Latency of every answered transfer.
    latency: Histogram,
    /// Latency of transfers answered since the last progress line.
    interval: Histogram,
}

impl Stats {
    fn aborted_total(&self) -> u64 {
        self.aborted.values().sum()
    }

    fn completed(&self) -> u64 {
        self.committed + self.aborted_total() + self.unknown.len() as u64
    }
}

fn lock(stats: &Mutex<Stats>) -> MutexGuard<'_, Stats> {
    // A worker that panicked mid-update leaves counts that are still the best we have.
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the workload did.
struct WorkloadReport {
    stats: Stats,
    elapsed: Duration,
    interrupted: bool,
}

/// Runs `concurrency` closed-loop clients of random transfers until `duration` passes, an
/// interrupt arrives, or a client hits a fatal error; prints a progress line every second.
async fn run_workload(
    client: &Client,
    bank: &Bank,
    run_id: &str,
    concurrency: u32,
    duration: Duration,
    seed: u64,
    interrupts: &mut Interrupts,
) -> WorkloadReport {
    let stats = Arc::new(Mutex::new(Stats::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut seeds = Prng::new(seed);
    let mut workers = JoinSet::new();
    for worker in 0..concurrency {
        workers.spawn(run_worker(
            client.clone(),
            *bank,
            format!("{run_id}-w{worker}"),
            Prng::new(seeds.next_u64()),
            Arc::clone(&stats),
            Arc::clone(&stop),
        ));
    }
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // The first tick is immediate.
    let end = tokio::time::sleep(duration);
    tokio::pin!(end);
    let mut last_completed = 0u64;
    let mut last_tick = started;
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let now = Instant::now();
                let line = {
                    let mut stats = lock(&stats);
                    let completed = stats.completed();
                    let rate = (completed - last_completed) as f64
                        / now.duration_since(last_tick).as_secs_f64().max(1e-3);
                    last_completed = completed;
                    let line = progress_line(started.elapsed(), rate, &stats);
                    stats.interval = Histogram::default();
                    line
                };
                last_tick = now;
                if terminal {
                    eprint!("\r{line}\x1b[K");
                } else {
                    eprintln!("{line}");
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            () = &mut end => break,
            () = interrupts.after(0) => {
                interrupted = true;
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    if terminal {
        eprintln!();
    }
    if interrupted {
        eprintln!("interrupted: finishing the transfers in flight (Ctrl-C again skips the check)");
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(joined) = workers.join_next().await {
            if let Err(error) = joined {
                tracing::error!(%error, "a workload client failed");
            }
        }
    })
    .await;
    if drained.is_err() {
        // Unreachable in practice (every submit has a deadline); the transfers cut off here
        // are still settled by the coordinator and covered by the wait for delivery.
        eprintln!("some transfers did not finish within {DRAIN_TIMEOUT:?}; abandoning them");
        workers.shutdown().await;
    }
    let stats = std::mem::take(&mut *lock(&stats));
    WorkloadReport { stats, elapsed, interrupted }
}

/// One closed-loop client: submit a transfer, wait for the answer, record it, repeat.
async fn run_worker(
    client: Client,
    bank: Bank,
    id_prefix: String,
    mut rng: Prng,
    shared: Arc<Mutex<Stats>>,
    stop: Arc<AtomicBool>,
) {
    let participants = PARTICIPANTS.len() as u64;
    let mut sequence = 0u64;
    let mut backoff = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let from = rng.below(participants) as usize;
        let to = (from + 1 + rng.below(participants - 1) as usize) % PARTICIPANTS.len();
        // `below` returns less than its argument, which here fits in u32 / i64.
        let source = account_key(rng.below(u64::from(bank.accounts)) as u32);
        let destination = account_key(rng.below(u64::from(bank.accounts)) as u32);
        let amount = 1 + rng.below(bank.max_amount.unsigned_abs()) as i64;
        let txn_id = format!("{id_prefix}-{sequence}");
        let txn = Transaction::new()
            .with_txn_id(txn_id.clone())
            .with_timeout_ms(TXN_TIMEOUT_MS)
            .with_branch(
                PARTICIPANTS[from],
                [Operation::CounterAdd {
                    key: source,
                    delta: -amount,
                    lower_bound: Some(0),
                    upper_bound: None,
                }],
            )
            .with_branch(
                PARTICIPANTS[to],
                [Operation::CounterAdd {
                    key: destination,
                    delta: amount,
                    lower_bound: None,
                    upper_bound: None,
                }],
            );
        let started = Instant::now();
        let result = client.submit(&txn).await;
        let latency = started.elapsed();
        let mut unknown = false;
        {
            let mut stats = lock(&shared);
            match result {
                Ok(submitted) => match submitted.outcome {
                    Outcome::Committed => {
                        stats.committed += 1;
                        stats.latency.record(latency);
                        stats.interval.record(latency);
                        backoff = Duration::ZERO;
                    }
                    Outcome::Aborted => {
                        let label = submitted.abort.as_ref().map_or("unspecified", |c| c.label());
                        *stats.aborted.entry(label).or_insert(0) += 1;
                        stats.latency.record(latency);
                        stats.interval.record(latency);
                        backoff = Duration::ZERO;
                    }
                    Outcome::Pending => unknown = true,
                },
                Err(error) if error.is_outcome_unknown() => {
                    tracing::debug!(%error, "transfer outcome unknown");
                    unknown = true;
                }
                Err(ClientError::Rejected { kind: RejectKind::ResourceExhausted, .. }) => {
                    stats.overloaded += 1;
                    backoff = next_backoff(backoff);
                }
                Err(error) => {
                    stats.fatal.get_or_insert_with(|| format!("a transfer was refused: {error}"));
                    stop.store(true, Ordering::Relaxed);
                }
            }
            if unknown {
                if stats.unknown.len() < MAX_UNKNOWN {
                    stats.unknown.push((txn_id, txn.first_submitted_unix_ms()));
                }
                if stats.unknown.len() >= MAX_UNKNOWN {
                    stats.fatal.get_or_insert_with(|| {
                        format!("{MAX_UNKNOWN} transfers have an unknown outcome; stopping")
                    });
                    stop.store(true, Ordering::Relaxed);
                }
                // A coordinator that does not answer is given room rather than a spinning client.
                backoff = next_backoff(backoff);
            }
        }
        if !backoff.is_zero() && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(backoff).await;
        }
    }
}

/// Doubles a backoff, from 50 ms up to 1 s, so a client facing an unreachable coordinator
/// does not spin.
fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

fn progress_line(elapsed: Duration, rate: f64, stats: &Stats) -> String {
    let mut line = format!(
        "{:>6.1}s  {:>7} transfers/s  committed {}  aborted {}",
        elapsed.as_secs_f64(),
        thousands(rate.round() as u64),
        thousands(stats.committed),
        thousands(stats.aborted_total())
    );
    if !stats.aborted.is_empty() {
        line.push_str(&format!(" ({})", aborted_breakdown(&stats.aborted)));
    }
    line.push_str(&format!("  unknown {}", thousands(stats.unknown.len() as u64)));
    if stats.overloaded > 0 {
        line.push_str(&format!("  overloaded {}", thousands(stats.overloaded)));
    }
    match (stats.interval.quantile(0.5), stats.interval.quantile(0.99)) {
        (Some(p50), Some(p99)) => {
            line.push_str(&format!("  p50 {}  p99 {}", format_ms(p50), format_ms(p99)));
        }
        _ => line.push_str("  p50 -  p99 -"),
    }
    line
}

fn aborted_breakdown(aborted: &BTreeMap<&'static str, u64>) -> String {
    aborted
        .iter()
        .map(|(label, count)| format!("{label} {}", thousands(*count)))
        .collect::<Vec<_>>()
        .join(", ")
}

// ───────────────────────────── The final check ─────────────────────────────

/// How the unknown outcomes resolved.
#[derive(Default)]
struct Resolution {
    committed: u64,
    aborted: u64,
    /// Ids that could not be resolved, with the last error (the first few).
    unresolved: Vec<(String, String)>,
    unresolved_count: u64,
}

/// Asks for every unknown outcome with `fence_unknown`, so an id the coordinator never saw is
/// recorded as aborted and can never commit later.
async fn resolve_unknowns(
    client: &Client,
    ids: Vec<(String, u64)>,
    deadline: Instant,
) -> Resolution {
    let mut resolution = Resolution::default();
    let mut ids = ids.into_iter();
    let mut running = JoinSet::new();
    loop {
        while running.len() < RESOLVE_CONCURRENCY {
            let Some((txn_id, submitted_unix_ms)) = ids.next() else { break };
            running.spawn(resolve_one(client.clone(), txn_id, submitted_unix_ms, deadline));
        }
        let Some(joined) = running.join_next().await else { break };
        let (txn_id, result) = match joined {
            Ok(answer) => answer,
            Err(error) => ("?".to_string(), Err(format!("the resolving task failed: {error}"))),
        };
        match result {
            Ok(Outcome::Committed) => resolution.committed += 1,
            Ok(_) => resolution.aborted += 1,
            Err(error) => {
                resolution.unresolved_count += 1;
                if resolution.unresolved.len() < MAX_LISTED_PROBLEMS {
                    resolution.unresolved.push((txn_id, error));
                }
            }
        }
    }
    resolution
}

/// Asks for one outcome until it is decided or the deadline passes.
async fn resolve_one(
    client: Client,
    txn_id: String,
    submitted_unix_ms: u64,
    deadline: Instant,
) -> (String, Result<Outcome, String>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let last = match client.fence(&txn_id, submitted_unix_ms).await {
            Ok(info) if info.outcome != Outcome::Pending => return (txn_id, Ok(info.outcome)),
            Ok(info) => format!("still {}", outcome_str(info.outcome)),
            Err(error) if error.is_rejected() => return (txn_id, Err(error.to_string())),
            Err(error) => error.to_string(),
        };
        if Instant::now() + delay > deadline {
            return (txn_id, Err(last));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// What the wait for delivery found.
struct Settled {
    committing_left: Result<usize, String>,
    preparing_left: Result<usize, String>,
}

/// Waits until the coordinator lists nothing committing (every commit delivered) and nothing
/// preparing, or the deadline passes.
async fn settle(client: &Client, deadline: Instant) -> Settled {
    loop {
        let committing = count_in_state(client, TxnState::Committing).await;
        let preparing = count_in_state(client, TxnState::Preparing).await;
        let settled = matches!((&committing, &preparing), (Ok(0), Ok(0)));
        if settled || Instant::now() >= deadline {
            return Settled { committing_left: committing, preparing_left: preparing };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Transactions in `state` on the first page (enough to tell "none" from "some").
async fn count_in_state(client: &Client, state: TxnState) -> Result<usize, String> {
    let page = client.list(Some(state), 100, "").await.map_err(|error| error.to_string())?;
    Ok(page.transactions.len())
}

/// One line of the verdict.
struct Check {
    passed: bool,
    what: String,
}

/// Resolves, settles, reads, checks and prints the summary.
#[allow(clippy::print_stdout)]
async fn finish(
    setup: &Setup,
    bank: &Bank,
    workload: WorkloadReport,
    cluster: &mut LocalCluster,
) -> anyhow::Result<ExitCode> {
    let Setup { client, readers, before } = setup;
    let stats = &workload.stats;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    if !stats.unknown.is_empty() {
        eprintln!("resolving {} unknown outcomes...", thousands(stats.unknown.len() as u64));
    }
    let resolution = resolve_unknowns(client, stats.unknown.clone(), deadline).await;
    eprintln!("waiting for every commit to be delivered...");
    let settled = settle(client, deadline).await;
    eprintln!("reading every balance...");
    let after = read_balances(readers, bank).await;
    let exited = cluster.exited();

    let expected = bank.expected_total();
    let mut checks = Vec::new();
    let mut check = |passed: bool, what: String| checks.push(Check { passed, what });
    check(
        after.unreachable.is_empty(),
        if after.unreachable.is_empty() {
            "every participant reachable".to_string()
        } else {
            format!("participants unreachable: {}", after.unreachable.join(", "))
        },
    );
    let all_accounts = u64::from(bank.accounts) * PARTICIPANTS.len() as u64;
    check(
        after.accounts == all_accounts,
        format!("{} of {} accounts read", thousands(after.accounts), thousands(all_accounts)),
    );
    check(after.negative == 0, format!("{} negative balances", after.negative));
    check(
        before.total == expected,
        format!(
            "total before the workload {} (expected {})",
            signed(before.total),
            signed(expected)
        ),
    );
    check(
        after.total == expected,
        format!("total after the workload {} (expected {})", signed(after.total), signed(expected)),
    );
    check(
        resolution.unresolved_count == 0,
        format!(
            "{} of {} unknown outcomes resolved",
            thousands(resolution.committed + resolution.aborted),
            thousands(stats.unknown.len() as u64)
        ),
    );
    check(
        matches!(settled.committing_left, Ok(0)),
        match &settled.committing_left {
            Ok(0) => "every commit delivered (nothing committing)".to_string(),
            Ok(left) => format!("{left} transactions still committing after {SETTLE_TIMEOUT:?}"),
            Err(error) => format!("cannot list committing transactions: {error}"),
        },
    );
    check(
        exited.is_empty(),
        if exited.is_empty() {
            "every server still running".to_string()
        } else {
            exited.join("; ")
        },
    );
    if let Some(fatal) = &stats.fatal {
        check(false, format!("the workload stopped early: {fatal}"));
    }
    let passed = checks.iter().all(|check| check.passed);

    let answered = stats.committed + stats.aborted_total();
    let submitted = answered + stats.unknown.len() as u64;
    let seconds = workload.elapsed.as_secs_f64().max(1e-3);
    println!();
    println!("Concord demo summary");
    println!(
        "  transfers   {} in {:.1} s ({} per second){}",
        thousands(submitted),
        seconds,
        thousands((submitted as f64 / seconds).round() as u64),
        if workload.interrupted { ", ended by Ctrl-C" } else { "" }
    );
    println!("  committed   {}", thousands(stats.committed));
    if stats.aborted.is_empty() {
        println!("  aborted     0");
    } else {
        println!(
            "  aborted     {} ({})",
            thousands(stats.aborted_total()),
            aborted_breakdown(&stats.aborted)
        );
    }
    println!(
        "  unknown     {}, resolved as {} committed and {} aborted{}",
        thousands(stats.unknown.len() as u64),
        thousands(resolution.committed),
        thousands(resolution.aborted),
        if resolution.unresolved_count > 0 {
            format!(", {} unresolved", thousands(resolution.unresolved_count))
        } else {
            String::new()
        }
    );
    for (txn_id, error) in &resolution.unresolved {
        println!("                unresolved {txn_id}: {error}");
    }
    if stats.overloaded > 0 {
        println!("  overloaded  {} (refused, nothing happened)", thousands(stats.overloaded));
    }
    match (stats.latency.quantile(0.5), stats.latency.quantile(0.99), stats.latency.max()) {
        (Some(p50), Some(p99), Some(max)) => println!(
            "  latency     p50 {}  p99 {}  max {}",
            format_ms(p50),
            format_ms(p99),
            format_ms(max)
        ),
        _ => println!("  latency     no answered transfers"),
    }
    println!(
        "  balances    {} accounts; total {} before, {} after; lowest {}",
        thousands(after.accounts),
        signed(before.total),
        signed(after.total),
        after.lowest.map_or_else(|| "-".to_string(), |lowest| signed(i128::from(lowest)))
    );
    if let Ok(left) = settled.preparing_left
        && left > 0
    {
        println!("  note        {left} transactions still preparing at the coordinator");
    }
    println!("  checks");
    for check in &checks {
        println!("    {}  {}", if check.passed { "ok  " } else { "FAIL" }, check.what);
    }
    for problem in &after.problems {
        println!("          {problem}");
    }
    if after.more_problems > 0 {
        println!("          and {} more", after.more_problems);
    }
    println!("  verdict     {}", if passed { "PASS" } else { "FAIL" });
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

// ───────────────────────────── Small tools ─────────────────────────────

/// Parses `20s`, `2m`, `500ms`, `1h`, `1m30s` (integers with units ms, s, m, h; a bare number
/// is seconds), between 1 ms and 24 h.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; try 20s, 2m or 500ms".to_string());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return bounded_duration(Some(Duration::from_secs(seconds)), text);
    }
    let mut total = Some(Duration::ZERO);
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?}: expected a number at {rest:?}; try 20s, 2m or 500ms"));
        }
        let number: u64 = rest[..digits].parse().map_err(|error| format!("{text:?}: {error}"))?;
        rest = &rest[digits..];
        let unit_length = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_length];
        rest = &rest[unit_length..];
        let part = match unit {
            "ms" => Some(Duration::from_millis(number)),
            "s" => Some(Duration::from_secs(number)),
            "m" | "min" => number.checked_mul(60).map(Duration::from_secs),
            "h" => number.checked_mul(3_600).map(Duration::from_secs),
            _ => return Err(format!("{text:?}: unknown unit {unit:?}; use ms, s, m or h")),
        };
        total = total.zip(part).and_then(|(total, part)| total.checked_add(part));
    }
    bounded_duration(total, text)
}

fn bounded_duration(duration: Option<Duration>, text: &str) -> Result<Duration, String> {
    const MAX: Duration = Duration::from_secs(24 * 3_600);
    match duration {
        Some(duration) if duration.is_zero() => Err(format!("{text:?}: must be above zero")),
        Some(duration) if duration <= MAX => Ok(duration),
        _ => Err(format!("{text:?}: at most 24h")),
    }
}

fn format_duration(duration: Duration) -> String {
    if duration.subsec_millis() != 0 || duration < Duration::from_secs(1) {
        format!("{} ms", duration.as_millis())
    } else {
        format!("{} s", duration.as_secs())
    }
}

fn format_ms(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1_000.0;
    if ms < 10.0 { format!("{ms:.2} ms") } else { format!("{ms:.1} ms") }
}

/// `1234567` as `1,234,567`.
fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn signed(value: i128) -> String {
    let magnitude = thousands(u64::try_from(value.unsigned_abs()).unwrap_or(u64::MAX));
    if value < 0 { format!("-{magnitude}") } else { magnitude }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Durations parse in each unit and in combination; bad ones say what is wrong.
    #[test]
    fn durations_parse_by_hand() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3_600)));
        for bad in ["", "s", "10x", "0s", "25h", "-1s", "1.5s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    /// Numbers print with thousands separators.
    #[test]
    fn numbers_print_with_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(signed(-300_000), "-300,000");
    }

    /// The demo refuses to wipe a directory it did not create, and wipes one it did.
    #[test]
    fn data_dir_is_only_wiped_when_the_demo_made_it() {
        let root = tempfile::tempdir().unwrap();
        let foreign = root.path().join("foreign");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("precious"), "x").unwrap();
        let error = prepare_data_dir(&foreign, false).unwrap_err().to_string();
        assert!(error.contains("--data-dir"), "{error}");
        assert!(foreign.join("precious").exists());

        let ours = root.path().join("ours");
        prepare_data_dir(&ours, false).unwrap();
        std::fs::write(ours.join("old.log"), "x").unwrap();
        prepare_data_dir(&ours, true).unwrap();
        assert!(ours.join("old.log").exists());
        prepare_data_dir(&ours, false).unwrap();
        assert!(!ours.join("old.log").exists());
        assert!(ours.join(crate::local::marker_name("demo")).exists());
    }

    /// Account keys sort inside the scanned range.
    #[test]
    fn account_keys_fall_in_the_scanned_range() {
        for index in [0, 1, 9_999, 99_999] {
            let key = account_key(index);
            assert!(key.as_slice() >= KEY_PREFIX.as_bytes() && key.as_slice() < KEY_RANGE_END);
        }
        assert_eq!(account_key(7), b"acct-0007");
    }
}
