//! One chaos run from start to verdict: cluster up, accounts loaded, workload and nemesis for
//! the duration, heal, check, report; artifacts kept on failure.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use concord_client::{Client, ClientOptions, ParticipantReader, Transaction};
use concord_core::types::{Operation, Outcome};
use tokio::time::Instant;

use crate::check::{Check, run_checks};
use crate::cluster::{Cluster, ClusterSpec, EnvVar};
use crate::nemesis::{self, FaultKind};
use crate::rng::Prng;
use crate::workload::{self, FaultClock, History, WorkloadSpec, account_key};

/// The participants of a chaos cluster.
pub const PARTICIPANTS: [&str; 3] = ["alpha", "beta", "gamma"];
/// The payment gateway's name, when the workload uses it.
pub const GATEWAY: &str = "gateway";
/// How long the workers may take to finish their last calls once told to stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// The `concord` binary to start servers from.
    pub exe: PathBuf,
    /// Where the run keeps data, logs, history and timeline (created; must not exist yet or be
    /// empty).
    pub dir: PathBuf,
    /// How long the workload and nemesis run.
    pub duration: Duration,
    /// Seeds the workload and the nemesis.
    pub seed: u64,
    /// Fault kinds the nemesis draws from (empty: no faults).
    pub faults: Vec<FaultKind>,
    /// The workload's shape.
    pub workload: WorkloadSpec,
    /// Extra environment for some servers (failpoints, planted bugs: test builds only).
    pub env: Vec<EnvVar>,
    /// Keep the directory even when every check holds.
    pub keep: bool,
    /// Print a progress line every few seconds on stderr.
    pub progress: bool,
    /// Processes are expected to exit on their own (armed failpoints): such exits are restarted
    /// and reported, not counted as a failure.
    pub exits_expected: bool,
}

/// The run's result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// True when every check held.
    pub passed: bool,
    /// The seed (replay with `concord chaos --seed`).
    pub seed: u64,
    /// The workload kind.
    pub workload: String,
    /// Seconds of workload and faults.
    pub duration_s: f64,
    /// Transactions submitted (distinct ids).
    pub transactions: u64,
    /// Committed in the end.
    pub committed: u64,
    /// Aborted in the end.
    pub aborted: u64,
    /// Committed and aborted in the end, per kind of transaction.
    pub by_kind: std::collections::BTreeMap<&'static str, (u64, u64)>,
    /// Submit calls beyond the first per id (deliberate duplicates, retries).
    pub duplicate_submits: u64,
    /// Calls with no definite answer during the run.
    pub unknown_answers: u64,
    /// Unknowns resolved afterwards to committed.
    pub unknown_resolved_committed: u64,
    /// Unknowns resolved afterwards to aborted.
    pub unknown_resolved_aborted: u64,
    /// Faults injected, in total.
    pub faults_injected: u64,
    /// Faults injected, by kind.
    pub faults: std::collections::BTreeMap<&'static str, u64>,
    /// Median latency of definite answers, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// The slowest definite answer, ms.
    pub max_ms: f64,
    /// The slowest definite answer while a fault was active, ms.
    pub worst_during_faults_ms: f64,
    /// Every check.
    pub checks: Vec<Check>,
    /// Processes that exited on their own (and were started again).
    pub exits: Vec<String>,
    /// Harness errors (not findings about Concord).
    pub harness_errors: Vec<String>,
    /// Where the history, timeline, logs and data were kept, if they were.
    pub kept: Option<PathBuf>,
}

impl Report {
    /// The summary table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        out.push_str(&format!(
            "concord chaos: {verdict} (seed {}, workload {}, {:.0} s)\n\n",
            self.seed, self.workload, self.duration_s
        ));
        let faults: Vec<String> = self.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let rows = [
            ("transactions", self.transactions.to_string()),
            ("committed / aborted", format!("{} / {}", self.committed, self.aborted)),
            (
                "  by kind",
                self.by_kind
                    .iter()
                    .map(|(kind, (c, a))| format!("{kind} {c}/{a}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("duplicate submits", self.duplicate_submits.to_string()),
            (
                "unknown answers",
                format!(
                    "{} (resolved: {} committed, {} aborted)",
                    self.unknown_answers,
                    self.unknown_resolved_committed,
                    self.unknown_resolved_aborted
                ),
            ),
            ("faults injected", format!("{} ({})", self.faults_injected, faults.join(", "))),
            (
                "latency p50 / p99 / max",
                format!("{:.1} / {:.1} / {:.1} ms", self.p50_ms, self.p99_ms, self.max_ms),
            ),
            ("worst latency during faults", format!("{:.1} ms", self.worst_during_faults_ms)),
        ];
        for (name, value) in rows {
            out.push_str(&format!("  {name:<30} {value}\n"));
        }
        out.push('\n');
        for check in &self.checks {
            let mark = if check.ok { "ok  " } else { "FAIL" };
            out.push_str(&format!("  [{mark}] {:<64} {}\n", check.name, check.detail));
        }
        for error in &self.harness_errors {
            out.push_str(&format!("  [harness error] {error}\n"));
        }
        if let Some(kept) = &self.kept {
            out.push_str(&format!(
                "\nhistory, timeline, logs and data kept in {}\n",
                kept.display()
            ));
        }
        out
    }
}

fn ms(duration: Option<Duration>) -> f64 {
    duration.map_or(0.0, |d| d.as_secs_f64() * 1_000.0)
}

/// Runs the whole thing. Errors are harness failures (the cluster would not start); findings
/// about Concord are in the report.
pub async fn run(config: ChaosConfig) -> anyhow::Result<Report> {
    if config.dir.exists()
        && std::fs::read_dir(&config.dir).map(|mut d| d.next().is_some()).unwrap_or(true)
    {
        anyhow::bail!("{} exists and is not empty; give a new directory", config.dir.display());
    }
    std::fs::create_dir_all(&config.dir)
        .with_context(|| format!("creating {}", config.dir.display()))?;
    let mut participants: Vec<String> = PARTICIPANTS.iter().map(|s| s.to_string()).collect();
    participants.extend(config.workload.gateway.clone());
    let spec = ClusterSpec {
        exe: config.exe.clone(),
        dir: config.dir.clone(),
        participants,
        gateway: config.workload.gateway.clone(),
        env: config.env.clone(),
        // Short timeouts and small checkpoints, so recovery, retries and log truncation all
        // happen within a short run.
        coordinator_args: [
            "--call-timeout-ms",
            "1000",
            "--checkpoint-every",
            "500",
            "--segment-bytes",
            "262144",
            // A compensation the faults hold up shows NEEDS_ATTENTION after a few attempts
            // and is retried every second, so it clears soon after healing.
            "--attention-after-attempts",
            "5",
            "--attention-retry-ms",
            "1000",
        ]
        .map(String::from)
        .to_vec(),
        participant_args: ["--checkpoint-every", "300", "--segment-bytes", "131072"]
            .map(String::from)
            .to_vec(),
    };
    let cluster = Cluster::start(spec).await?;
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let result = run_on(&config, &cluster).await;
    let notes = cluster.lock().await.stop().await;
    let mut report = result?;
    report.harness_errors.extend(notes.into_iter().filter(|n| !n.contains("after SIGTERM")));
    if report.passed && !config.keep {
        let _ = std::fs::remove_dir_all(&config.dir);
    } else {
        report.kept = Some(config.dir.clone());
    }
    let json = serde_json::to_string_pretty(&report)?;
    if report.kept.is_some() {
        std::fs::write(config.dir.join("report.json"), json)?;
    }
    Ok(report)
}

async fn run_on(
    config: &ChaosConfig,
    cluster: &Arc<tokio::sync::Mutex<Cluster>>,
) -> anyhow::Result<Report> {
    let (client_address, coordinator_address, participant_addresses, names) = {
        let cluster = cluster.lock().await;
        // Every participant, the payment gateway (if any) last.
        let names = cluster.participant_names().to_vec();
        let addresses: Vec<_> = (0..names.len()).map(|i| cluster.participant_address(i)).collect();
        (cluster.client_address(), cluster.coordinator_address(), addresses, names)
    };
    let options = ClientOptions {
        call_timeout: Duration::from_secs(3),
        submit_margin: Duration::from_secs(1),
    };
    let client = Client::connect_with(&client_address.to_string(), options)?;

    let started = Instant::now();
    let faults = Arc::new(FaultClock::default());
    let stop_nemesis = Arc::new(AtomicBool::new(false));
    // The nemesis starts first: it also restarts processes that exit on their own (armed
    // failpoints), which may happen while the accounts load.
    let nemesis = tokio::spawn(nemesis::run(
        Arc::clone(cluster),
        config.faults.clone(),
        config.seed,
        started.into_std(),
        Arc::clone(&faults),
        Arc::clone(&stop_nemesis),
    ));
    let sled = &names[..PARTICIPANTS.len()];
    load_accounts(&client, sled, &config.workload).await?;
    if let Some(gateway) = &config.workload.gateway {
        load_gateway(&client, gateway, &config.workload).await?;
    }
    let history = Arc::new(History::create(&config.dir.join("history.jsonl"))?);
    let stop_workers = Arc::new(AtomicBool::new(false));
    let spec = Arc::new(config.workload.clone());
    let mut stagers = Vec::new();
    for address in &participant_addresses[..PARTICIPANTS.len()] {
        stagers.push(ParticipantReader::connect(&address.to_string(), Duration::from_secs(3))?);
    }
    let context = Arc::new(workload::WorkerContext {
        spec: Arc::clone(&spec),
        client: client.clone(),
        participants: Arc::new(sled.to_vec()),
        stagers: Arc::new(stagers),
        run_id: format!("r{:x}", config.seed & 0xffff_ffff),
        history: Arc::clone(&history),
        faults: Arc::clone(&faults),
        stop: Arc::clone(&stop_workers),
    });
    let run_id = context.run_id.clone();
    let mut seeds = Prng::new(config.seed);
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..spec.workers {
        let context = Arc::clone(&context);
        let rng = Prng::new(seeds.next_u64());
        workers.spawn(async move { workload::run_worker_with(&context, worker, rng).await });
    }
    let resolver = tokio::spawn(workload::run_resolver(
        client.clone(),
        Arc::clone(&history),
        Arc::clone(&stop_workers),
    ));

    // An id nobody submitted, asked about with fencing while the workload runs: it must come
    // back aborted for good (and the fencing path runs under the faults too).
    let fence_probe =
        tokio::spawn(fence_probe(client.clone(), format!("{run_id}-never-submitted")));

    // Progress while it runs.
    let end = started + config.duration;
    while Instant::now() < end {
        tokio::time::sleep(
            Duration::from_secs(5).min(end.saturating_duration_since(Instant::now())),
        )
        .await;
        if config.progress {
            let (calls, committed, aborted, unknown) = history.with_tally(|t| {
                (t.calls, t.committed_answers, t.aborted_answers, t.unknown_answers)
            });
            eprintln!(
                "  {:>4.0} s  {calls} calls: {committed} committed, {aborted} aborted, {unknown} unknown",
                started.elapsed().as_secs_f64()
            );
        }
    }
    stop_nemesis.store(true, Ordering::Relaxed);
    let nemesis = nemesis.await.context("the nemesis task failed")?;
    stop_workers.store(true, Ordering::Relaxed);
    let drained =
        tokio::time::timeout(DRAIN_TIMEOUT, async { while workers.join_next().await.is_some() {} })
            .await;
    let _ = resolver.await;
    let mut harness_errors = nemesis.errors.clone();
    if drained.is_err() {
        workers.abort_all();
        harness_errors.push(format!("workers did not finish within {DRAIN_TIMEOUT:?}"));
    }
    let duration_s = started.elapsed().as_secs_f64();
    history.flush();
    {
        let timeline: Vec<String> =
            nemesis.timeline.iter().map(|e| serde_json::to_string(e).unwrap_or_default()).collect();
        std::fs::write(config.dir.join("timeline.jsonl"), timeline.join("\n") + "\n")?;
    }

    // Heal, then check against the processes directly (no proxies in the way).
    cluster.lock().await.heal().await.context("healing the cluster")?;
    let checker = Client::connect_with(&coordinator_address.to_string(), options)?;
    let mut readers = Vec::new();
    for (name, address) in names.iter().zip(&participant_addresses) {
        readers.push((
            name.clone(),
            ParticipantReader::connect(&address.to_string(), Duration::from_secs(10))?,
        ));
    }
    let txns = history.transactions();
    let unexpected = if config.exits_expected { &[][..] } else { &nemesis.unexpected_exits[..] };
    let mut findings = run_checks(&checker, &readers, &spec, txns.clone(), unexpected).await;
    findings.checks.insert(1, fence_probe.await.context("the fence probe task failed")?);
    let (resolved_during_run, duplicate_submits, unknown_answers, p50, p99, max, worst) = history
        .with_tally(|t| {
            (
                t.resolved_during_run,
                t.duplicate_calls,
                t.unknown_answers,
                t.latency.quantile(0.5),
                t.latency.quantile(0.99),
                t.latency.max(),
                t.worst_during_faults,
            )
        });
    let passed = findings.checks.iter().all(|c| c.ok) && harness_errors.is_empty();
    Ok(Report {
        passed,
        seed: config.seed,
        workload: workload_name(&spec.mix).to_string(),
        duration_s,
        transactions: txns.len() as u64,
        committed: findings.committed,
        aborted: findings.aborted,
        by_kind: findings.by_kind.clone(),
        duplicate_submits,
        unknown_answers,
        unknown_resolved_committed: findings.unknown_resolved.0 + resolved_during_run.0,
        unknown_resolved_aborted: findings.unknown_resolved.1 + resolved_during_run.1,
        faults_injected: nemesis.faults.values().sum(),
        faults: nemesis.faults.clone(),
        p50_ms: ms(p50),
        p99_ms: ms(p99),
        max_ms: ms(max),
        worst_during_faults_ms: worst.as_secs_f64() * 1_000.0,
        checks: findings.checks,
        exits: nemesis.unexpected_exits.clone(),
        harness_errors,
        kept: None,
    })
}

/// The name `concord chaos --workload` gives `mix`.
fn workload_name(mix: &workload::Mix) -> &'static str {
    ["transfer", "saga", "hybrid", "interactive", "mixed"]
        .into_iter()
        .find(|name| workload::Mix::named(name).as_ref() == Some(mix))
        .unwrap_or("custom")
}

/// Credits every worker's account at the payment gateway with the initial balance (a
/// one-step saga), retried until committed (for at most a minute).
async fn load_gateway(client: &Client, gateway: &str, spec: &WorkloadSpec) -> anyhow::Result<()> {
    let workers: Vec<usize> = (0..spec.workers).collect();
    for (chunk, workers) in
        workers.chunks(concord_core::limits::MAX_OPERATIONS_PER_BRANCH).enumerate()
    {
        load_gateway_chunk(client, gateway, spec, chunk, workers).await?;
    }
    Ok(())
}

/// Credits the gateway accounts of `workers`.
async fn load_gateway_chunk(
    client: &Client,
    gateway: &str,
    spec: &WorkloadSpec,
    chunk: usize,
    workers: &[usize],
) -> anyhow::Result<()> {
    let operations: Vec<Operation> = workers
        .iter()
        .map(|w| Operation::CounterAdd {
            key: workload::gateway_account_key(*w),
            delta: spec.initial_balance,
            lower_bound: None,
            upper_bound: None,
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for attempt in 1.. {
        let txn = Transaction::new()
            .with_txn_id(format!("load-{gateway}-{chunk}-{attempt}"))
            .with_mode(concord_client::TxnMode::Saga)
            .with_branch(gateway, operations.clone());
        // Retry one id until definite; a new id only after a definite abort.
        loop {
            match client.submit(&txn).await {
                Ok(submitted) if submitted.outcome == Outcome::Committed => return Ok(()),
                Ok(submitted) if submitted.outcome == Outcome::Aborted => break,
                other => {
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "loading the gateway's accounts: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "loading the gateway's accounts kept aborting");
        // An aborted saga's step is compensated: the accounts are as before.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Fences `id`, retrying while the coordinator is unreachable (at most a minute).
async fn fence_probe(client: Client, id: String) -> Check {
    let name = "an unknown id fences to aborted";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = match client.fence(&id, workload::now_unix_ms()).await {
            Ok(info) if info.outcome == Outcome::Aborted => {
                return Check { name, ok: true, detail: format!("{id}: aborted") };
            }
            Ok(info) => {
                return Check { name, ok: false, detail: format!("{id}: {:?}", info.outcome) };
            }
            Err(error) => error.to_string(),
        };
        if Instant::now() >= deadline {
            return Check { name, ok: false, detail: format!("{id}: no answer: {last}") };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Credits every account on every participant with the initial balance: one one-phase
/// transaction per participant, retried under the same id until committed (for at most a minute).
pub async fn load_accounts(
    client: &Client,
    names: &[String],
    spec: &WorkloadSpec,
) -> anyhow::Result<()> {
    for name in names {
        let mut keys: Vec<Vec<u8>> = (0..spec.accounts).map(account_key).collect();
        if spec.mix.saga > 0 {
            keys.extend((0..spec.workers).map(workload::saga_account_key));
        }
        // One transaction per branch-sized chunk of keys.
        for (chunk, keys) in
            keys.chunks(concord_core::limits::MAX_OPERATIONS_PER_BRANCH).enumerate()
        {
            let operations: Vec<Operation> = keys
                .iter()
                .map(|key| Operation::CounterAdd {
                    key: key.clone(),
                    delta: spec.initial_balance,
                    lower_bound: None,
                    upper_bound: None,
                })
                .collect();
            let id = |attempt: u32| {
                if chunk == 0 {
                    format!("load-{name}-{attempt}")
                } else {
                    format!("load-{name}-{chunk}-{attempt}")
                }
            };
            let mut attempt = 1;
            let mut txn = Transaction::new()
                .with_txn_id(id(attempt))
                .with_branch(name.clone(), operations.clone());
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match client.submit(&txn).await {
                    Ok(submitted) if submitted.outcome == Outcome::Committed => break,
                    // Aborted (a crash undid it): nothing was applied, so a new id may try again.
                    Ok(submitted) if submitted.outcome == Outcome::Aborted => {
                        anyhow::ensure!(
                            Instant::now() < deadline,
                            "loading accounts at {name} kept aborting: {:?}",
                            submitted.abort
                        );
                        attempt += 1;
                        txn = Transaction::new()
                            .with_txn_id(id(attempt))
                            .with_branch(name.clone(), operations.clone());
                    }
                    other => {
                        anyhow::ensure!(
                            Instant::now() < deadline,
                            "loading accounts at {name}: {other:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }
    Ok(())
}
