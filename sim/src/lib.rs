//! Deterministic simulation of Concord: the real coordinator and participant code (drivers,
//! services, recovery, resolver, checkpoints) over turmoil's simulated network, with the
//! in-memory log and store whose crash drops what was not synced, all driven by one seed.
//!
//! One run: a coordinator and three participants, each a turmoil host that recovers from its
//! simulated disk every time it starts; a client host running the `concord chaos` transfer
//! workload (client-chosen ids, deliberate duplicate submissions, retries after unknowns); and
//! the [`nemesis`] crashing and restarting hosts, partitioning links fully and one way, holding
//! links (their messages arrive late, out of order with everything else) and adding latency.
//! While it runs, a monitor reads every participant's store between simulation steps and checks
//! what must hold at every instant; after the faults heal, the client runs the same checker as
//! `concord chaos` (atomicity, outcomes matching the data, exactly once, money conserved,
//! nothing stuck).
//!
//! Why turmoil: it runs the unmodified tokio + tonic code (only the socket, the dialer and the
//! wall clock are swapped, see [`net`]) on simulated time, with per-link partitions, holds and
//! latency, and host crash/restart. What a seed fixes: the workload, the fault schedule, the
//! network's delays and the order hosts run in. What it does not: tokio's own `select!`
//! fairness and `HashMap` iteration order are seeded from the OS unless tokio is built with
//! `--cfg tokio_unstable`, so a replay follows the same schedule but may interleave tasks
//! differently (docs/operations.md, "Deterministic simulation").

pub mod nemesis;
pub mod net;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use concord_chaos::check::{Check, Findings, run_checks};
use concord_chaos::rng::Prng;
use concord_chaos::workload::{
    self, FaultClock, History, Told, WorkloadSpec, account_key, applied_key,
};
use concord_client::{Client, ClientOptions, ParticipantReader};
use concord_coordinator::{Coordinator, CoordinatorConfig, WalLog};
use concord_core::types::counter;
use concord_participant::{MemoryStore, Node, NodeConfig, ResolverConfig, Store};
use concord_wal::MemoryWal;

use crate::nemesis::{CLIENT, COORDINATOR, Disk, Nemesis};

/// The port every simulated server listens on.
const PORT: u16 = 7000;
/// The network's normal latency range: every message takes up to this long.
const BASE_LATENCY: Duration = Duration::from_millis(3);
/// How often the monitor checks the stores while the simulation runs.
const MONITOR_EVERY: Duration = Duration::from_millis(250);
/// Simulated time allowed after the faults for the client to finish and the checker to run.
const QUIESCENCE_BUDGET: Duration = Duration::from_secs(400);
/// The log's record-size limit in the simulation.
const MAX_RECORD_BYTES: usize = 1 << 20;
/// Entries the monitor reads from one store, at most.
const MAX_SCAN: usize = 1_000_000;

/// What one simulation runs.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The seed: workload, faults, network delays and host order all follow from it.
    pub seed: u64,
    /// Simulated time under faults (after the accounts are loaded).
    pub fault_time: Duration,
    /// Participants (hosts `p0`, `p1`, ...).
    pub participants: usize,
    /// Closed-loop client workers.
    pub workers: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions { seed: 1, fault_time: Duration::from_secs(20), participants: 3, workers: 4 }
    }
}

/// The command that replays `seed`.
#[must_use]
pub fn replay_command(seed: u64) -> String {
    format!("cargo run --release -p concord-sim -- --seed {seed}")
}

/// The result of one simulation.
#[derive(Clone, Debug)]
pub struct SimReport {
    /// Its seed.
    pub seed: u64,
    /// Whether every check held.
    pub passed: bool,
    /// Every check (during the run, then after quiescence).
    pub checks: Vec<Check>,
    /// Transactions submitted (distinct ids).
    pub transactions: u64,
    /// Committed in the end.
    pub committed: u64,
    /// Aborted in the end.
    pub aborted: u64,
    /// Submit calls beyond the first of an id.
    pub duplicate_calls: u64,
    /// Calls answered with no definite outcome.
    pub unknown_answers: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Simulated time the run took.
    pub simulated: Duration,
    /// The slowest definite answer while a fault was active (simulated time).
    pub worst_during_faults: Duration,
    /// What the nemesis did, with simulated times.
    pub timeline: Vec<String>,
}

impl SimReport {
    /// One line: the seed, the verdict and the figures.
    #[must_use]
    pub fn line(&self) -> String {
        format!(
            "seed {}: {} — {} txns ({} committed, {} aborted), {} duplicate submits, {} unknown \
             answers, {} faults, {:.1}s simulated, worst during faults {} ms",
            self.seed,
            if self.passed { "PASS" } else { "FAIL" },
            self.transactions,
            self.committed,
            self.aborted,
            self.duplicate_calls,
            self.unknown_answers,
            self.faults.values().sum::<u64>(),
            self.simulated.as_secs_f64(),
            self.worst_during_faults.as_millis(),
        )
    }

    /// The failed checks, the end of the timeline and the replay command.
    #[must_use]
    pub fn failure(&self) -> String {
        let mut text = String::new();
        for check in self.checks.iter().filter(|c| !c.ok) {
            text.push_str(&format!("  FAILED {}: {}\n", check.name, check.detail));
        }
        let tail = self.timeline.len().saturating_sub(30);
        text.push_str("  last nemesis events:\n");
        for event in &self.timeline[tail..] {
            text.push_str(&format!("    {event}\n"));
        }
        text.push_str(&format!("  replay: {}\n", replay_command(self.seed)));
        text
    }
}

/// State the client host and the driving loop share (one thread: turmoil runs every host on
/// the caller's).
struct Shared {
    /// The accounts are loaded: faults may begin.
    loaded: Cell<bool>,
    /// Tells the workers to stop (the faults are over).
    stop: Arc<AtomicBool>,
    history: Arc<History>,
    faults: Arc<FaultClock>,
    /// The checker's findings, once it ran.
    findings: RefCell<Option<Findings>>,
    /// A reason the client could not run the workload.
    error: RefCell<Option<String>>,
}

/// Runs one simulation. Never panics on a protocol failure: the report says what failed.
#[must_use]
pub fn run(options: &SimOptions) -> SimReport {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| simulate(options)));
    outcome.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
            .unwrap_or_else(|| "a panic".into());
        SimReport {
            seed: options.seed,
            passed: false,
            checks: vec![Check { name: "no panic", ok: false, detail: message }],
            transactions: 0,
            committed: 0,
            aborted: 0,
            duplicate_calls: 0,
            unknown_answers: 0,
            faults: BTreeMap::new(),
            simulated: Duration::ZERO,
            worst_during_faults: Duration::ZERO,
            timeline: Vec::new(),
        }
    })
}

fn spec(options: &SimOptions) -> WorkloadSpec {
    WorkloadSpec {
        workers: options.workers,
        accounts: 5,
        initial_balance: 1_000,
        max_amount: 400,
        txn_timeout_ms: 1_000,
        max_transactions: 200_000,
        clock: net::clock,
        ..WorkloadSpec::default()
    }
}

fn simulate(options: &SimOptions) -> SimReport {
    let seed = options.seed;
    let spec = Arc::new(spec(options));
    let names: Vec<String> = (0..options.participants).map(|i| format!("p{i}")).collect();
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::ZERO)
        .max_message_latency(BASE_LATENCY)
        .simulation_duration(options.fault_time + QUIESCENCE_BUDGET)
        .enable_random_order()
        .build();

    // The coordinator.
    let coordinator_wal = MemoryWal::new(MAX_RECORD_BYTES);
    let participants: BTreeMap<String, String> =
        names.iter().map(|n| (n.clone(), format!("{n}:{PORT}"))).collect();
    {
        let wal = coordinator_wal.clone();
        sim.host(COORDINATOR, move || {
            let wal = wal.clone();
            let participants = participants.clone();
            async move {
                let config = CoordinatorConfig {
                    participants,
                    call_timeout: Duration::from_secs(1),
                    min_backoff: Duration::from_millis(20),
                    max_backoff: Duration::from_millis(500),
                    checkpoint_every_records: 500,
                    dialer: net::dialer(),
                    clock: net::clock,
                    ..CoordinatorConfig::default()
                };
                let coordinator =
                    Coordinator::recover(config, WalLog::new(wal, MAX_RECORD_BYTES)).await?;
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                concord_coordinator::serve(
                    net::incoming(listener),
                    std::future::pending(),
                    coordinator,
                )
                .await?;
                Ok(())
            }
        });
    }

    // The participants.
    let mut disks = vec![Disk { host: COORDINATOR.into(), wal: coordinator_wal, store: None }];
    for name in &names {
        let wal = MemoryWal::new(MAX_RECORD_BYTES);
        let store = MemoryStore::new();
        disks.push(Disk { host: name.clone(), wal: wal.clone(), store: Some(store.clone()) });
        let node_name = name.clone();
        sim.host(name.as_str(), move || {
            let (wal, store, name) = (wal.clone(), store.clone(), node_name.clone());
            async move {
                let config = NodeConfig {
                    name,
                    checkpoint_every_records: 300,
                    max_record_bytes: MAX_RECORD_BYTES,
                    clock: net::clock,
                    ..NodeConfig::default()
                };
                let node = Node::recover(config, wal, store)?;
                let resolver = ResolverConfig {
                    coordinator: Some(format!("{COORDINATOR}:{PORT}")),
                    call_timeout: Duration::from_secs(1),
                    max_backoff: Duration::from_secs(1),
                    dialer: net::dialer(),
                    ..ResolverConfig::default()
                };
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                concord_participant::serve(
                    net::incoming(listener),
                    std::future::pending(),
                    node,
                    resolver,
                )
                .await?;
                Ok(())
            }
        });
    }
    let stores: Vec<(String, MemoryStore)> =
        disks.iter().filter_map(|d| d.store.clone().map(|s| (d.host.clone(), s))).collect();

    // The client: load, run the workload until the faults are over, then check.
    let shared = Rc::new(Shared {
        loaded: Cell::new(false),
        stop: Arc::new(AtomicBool::new(false)),
        history: Arc::new(History::in_memory()),
        faults: Arc::new(FaultClock::default()),
        findings: RefCell::new(None),
        error: RefCell::new(None),
    });
    sim.client(CLIENT, client(seed, Arc::clone(&spec), names.clone(), Rc::clone(&shared)));

    // Drive: faults while the workload runs, then heal and let the client check.
    let mut nemesis = Nemesis::new(seed, disks, BASE_LATENCY, Arc::clone(&shared.faults));
    let mut faults_from: Option<Duration> = None;
    let mut healed = false;
    let mut next_monitor = Duration::ZERO;
    let mut during_run: Vec<String> = Vec::new();
    let mut sim_error = None;
    loop {
        let now = sim.elapsed();
        if shared.loaded.get() && !healed {
            let from = *faults_from.get_or_insert(now);
            if now < from + options.fault_time {
                nemesis.tick(&mut sim, now);
            } else {
                nemesis.heal(&mut sim, now);
                shared.stop.store(true, Ordering::Relaxed);
                healed = true;
            }
        }
        if now >= next_monitor {
            next_monitor = now + MONITOR_EVERY;
            during_run.extend(monitor(&stores, &shared.history, &spec, now));
            if !during_run.is_empty() {
                break;
            }
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => {
                sim_error = Some(error.to_string());
                break;
            }
        }
    }

    let mut checks = Vec::new();
    checks.push(Check {
        name: "invariants held at every monitored instant",
        ok: during_run.is_empty(),
        detail: if during_run.is_empty() {
            "balances within bounds, applied counters match markers, no aborted txn applied, \
             no contradicting answers"
                .into()
        } else {
            during_run.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        },
    });
    let simulated = sim.elapsed();
    if let Some(error) = sim_error {
        checks.push(Check { name: "the simulation ran to the end", ok: false, detail: error });
    }
    if let Some(error) = shared.error.borrow().clone() {
        checks.push(Check { name: "the workload ran", ok: false, detail: error });
    }
    let findings = shared.findings.borrow().clone();
    let (committed, aborted) = findings.as_ref().map_or((0, 0), |f| (f.committed, f.aborted));
    match findings {
        Some(findings) => checks.extend(findings.checks),
        None if during_run.is_empty() => checks.push(Check {
            name: "the checker ran",
            ok: false,
            detail: "the client never reached the checks".into(),
        }),
        None => {}
    }
    let (transactions, duplicate_calls, unknown_answers, worst) = (
        shared.history.transactions().len() as u64,
        shared.history.with_tally(|t| t.duplicate_calls),
        shared.history.with_tally(|t| t.unknown_answers),
        shared.history.with_tally(|t| t.worst_during_faults),
    );
    SimReport {
        seed,
        passed: checks.iter().all(|c| c.ok),
        checks,
        transactions,
        committed,
        aborted,
        duplicate_calls,
        unknown_answers,
        faults: nemesis.counts.clone(),
        simulated,
        worst_during_faults: worst,
        timeline: nemesis.timeline.clone(),
    }
}

/// The client host's software.
async fn client(
    seed: u64,
    spec: Arc<WorkloadSpec>,
    names: Vec<String>,
    shared: Rc<Shared>,
) -> turmoil::Result {
    let dialer = net::dialer();
    let options = ClientOptions {
        call_timeout: Duration::from_secs(2),
        submit_margin: Duration::from_secs(1),
    };
    let client = Client::from_channel(
        dialer.dial(&format!("{COORDINATOR}:{PORT}"), Duration::from_secs(60))?,
        options,
    );
    if let Err(error) = concord_chaos::run::load_accounts(&client, &names, &spec).await {
        *shared.error.borrow_mut() = Some(format!("loading the accounts: {error:#}"));
        return Ok(());
    }
    shared.loaded.set(true);
    let participants = Arc::new(names.clone());
    let mut rng = Prng::new(seed);
    let mut tasks = Vec::new();
    for worker in 0..spec.workers {
        tasks.push(tokio::task::spawn_local(workload::run_worker(
            Arc::clone(&spec),
            client.clone(),
            Arc::clone(&participants),
            worker,
            format!("s{seed}"),
            Prng::new(rng.next_u64()),
            Arc::clone(&shared.history),
            Arc::clone(&shared.faults),
            Arc::clone(&shared.stop),
        )));
    }
    tasks.push(tokio::task::spawn_local(workload::run_resolver(
        client.clone(),
        Arc::clone(&shared.history),
        Arc::clone(&shared.stop),
    )));
    for task in tasks {
        task.await?;
    }
    let mut readers = Vec::new();
    for name in &names {
        let call_timeout = Duration::from_secs(2);
        let channel = dialer.dial(&format!("{name}:{PORT}"), call_timeout)?;
        readers.push((name.clone(), ParticipantReader::from_channel(channel, call_timeout)));
    }
    let findings = run_checks(&client, &readers, &spec, shared.history.transactions(), &[]).await;
    *shared.findings.borrow_mut() = Some(findings);
    Ok(())
}

/// What must hold at every instant, read straight from each participant's store: every
/// balance within its bound; each worker's applied counter equal to the markers of its
/// transactions there (a branch writes both atomically, so a replayed or doubled branch shows
/// at once); no marker of a transaction the client was told aborted; no two answers that
/// contradicted each other.
fn monitor(
    stores: &[(String, MemoryStore)],
    history: &History,
    spec: &WorkloadSpec,
    now: Duration,
) -> Vec<String> {
    let at = format!("at {:.3}s", now.as_secs_f64());
    let mut problems = Vec::new();
    let txns = history.transactions();
    let told: HashMap<&str, Told> = txns.iter().map(|t| (t.id.as_str(), t.told)).collect();
    for record in &txns {
        if let Some(contradiction) = &record.contradiction {
            problems.push(format!("{at}: {} answered inconsistently: {contradiction}", record.id));
        }
    }
    for (name, store) in stores {
        let entries = match store.scan(b"", None, MAX_SCAN) {
            Ok(entries) => entries,
            Err(error) => {
                problems.push(format!("{at}: {name} unreadable: {error}"));
                continue;
            }
        };
        let mut markers: BTreeMap<usize, i64> = BTreeMap::new();
        for (key, _) in &entries {
            let Some(id) = key.strip_prefix(b"t/") else { continue };
            let id = String::from_utf8_lossy(id);
            if told.get(id.as_ref()) == Some(&Told::Aborted) {
                problems.push(format!("{at}: {id} was told aborted but is applied at {name}"));
            }
            if let Some(worker) = worker_of(&id) {
                *markers.entry(worker).or_insert(0) += 1;
            }
        }
        let value = |key: &[u8]| {
            entries
                .binary_search_by(|(k, _)| k.as_slice().cmp(key))
                .ok()
                .and_then(|i| counter::decode(&entries[i].1.value))
        };
        for account in 0..spec.accounts {
            if let Some(balance) = value(&account_key(account))
                && balance < 0
            {
                problems.push(format!("{at}: acct-{account:04} at {name} is {balance}"));
            }
        }
        for worker in 0..spec.workers {
            let applied = value(&applied_key(worker)).unwrap_or(0);
            let marked = markers.get(&worker).copied().unwrap_or(0);
            if applied != marked {
                problems.push(format!(
                    "{at}: worker {worker} at {name}: applied counter {applied}, {marked} markers"
                ));
            }
        }
    }
    problems
}

/// The worker of a workload id `s{seed}-w{worker}-{sequence}`.
fn worker_of(id: &str) -> Option<usize> {
    let rest = id.split_once("-w")?.1;
    rest.split_once('-')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The monitor finds a transaction's worker from its workload id.
    #[test]
    fn worker_of_reads_the_workload_id() {
        assert_eq!(worker_of("s7-w3-12"), Some(3));
        assert_eq!(worker_of("load-p0-1"), None);
    }
}
