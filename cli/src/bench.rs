//! `concord bench`: throughput and latency of durable transactions, next to this machine's
//! ceiling for unary gRPC measured in the same run.
//!
//! It starts a coordinator and participants as child processes (or targets running ones with
//! `--coordinator`), runs a closed loop of `--inflight` transactions for a warm-up and then for
//! `--duration`, and reports committed/s, aborted/s, latency quantiles of the transactions that
//! finished inside the measured window, and the CPU time every local process spent per
//! transaction (from `/proc/PID/stat`). Before that it starts `concord echo-server` and measures
//! a unary echo at the same number of calls in flight: the ratio says how far the transaction
//! path is from one unary call per transaction.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use concord_chaos::histogram::Histogram;
use concord_chaos::rng::{Prng, clock_seed};
use concord_client::{Client, ClientError, ClientOptions, Pipeline, Submitted, Transaction};
use concord_core::types::{Operation, Outcome};
use serde::Serialize;

use crate::local::{LocalCluster, prepare_data_dir, start_server};

/// Transactions in flight, at most (the coordinator's default bound).
const MAX_INFLIGHT: usize = concord_core::limits::DEFAULT_INFLIGHT_TXNS;
/// Participants a transaction may span, at most.
const MAX_PARTICIPANTS: usize = 8;
/// The echo's payload: about a small Prepare's size.
const ECHO_PAYLOAD_BYTES: usize = 128;
/// Each transaction's decision timeout.
const TXN_TIMEOUT_MS: u32 = 5_000;
/// The kernel's unit for /proc/PID/stat CPU times (USER_HZ; 100 on Linux).
const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// Which keys the transactions write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Keys {
    /// Each in-flight slot writes its own key at every participant: no conflicts.
    Uncontended,
    /// Every slot picks among `--hot-keys` shared keys: lock conflicts abort some.
    Hot,
}

/// Flags of `concord bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Measured time per workload (after the warm-up), e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = crate::demo::parse_duration)]
    duration: Duration,
    /// Warm-up before each measurement.
    #[arg(long, default_value = "2s", value_parser = crate::demo::parse_duration)]
    warmup: Duration,
    /// Transactions in flight (a closed loop); the echo runs at the same number.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Participants each transaction writes at (1: one-phase commit).
    #[arg(long, default_value_t = 2)]
    participants: usize,
    /// Uncontended keys, or hot ones.
    #[arg(long, value_enum, default_value = "uncontended")]
    keys: Keys,
    /// Shared keys per participant in the hot workload.
    #[arg(long, default_value_t = 16)]
    hot_keys: usize,
    /// Run every workload: 2PC across 1, 2 and 4 participants, uncontended and hot.
    #[arg(long)]
    matrix: bool,
    /// Target this running coordinator instead of starting local servers.
    #[arg(long)]
    coordinator: Option<String>,
    /// With --coordinator: the names of its participants to write at (repeat the flag).
    #[arg(long = "participant-name")]
    participant_names: Vec<String>,
    /// Skip the echo ceiling.
    #[arg(long)]
    no_echo: bool,
    /// Start the local coordinator with one call per Prepare and Commit (for comparison).
    #[arg(long)]
    no_batching: bool,
    /// Submit with one unary call per transaction instead of over a SubmitStream.
    #[arg(long)]
    unary: bool,
    /// After the measured window, with the load still running, kill every local server with
    /// SIGKILL and time each one's restart until it serves again (recovery from its log).
    #[arg(long)]
    kill_and_restart: bool,
    /// Instead of the workload: commit this many transactions (at most 100,000, the
    /// coordinator's bound) whose Commits stand-in participants hold, SIGKILL the coordinator,
    /// and time its restart and the delivery of every Commit.
    #[arg(long)]
    undelivered: Option<u64>,
    /// Data and logs of the local servers (wiped at start).
    #[arg(long, default_value = "concord-data/bench")]
    data_dir: PathBuf,
    /// Worker threads of each local server (default: this machine's cores divided among the
    /// servers, at least 1; a server on its own machine defaults to one per core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

/// One workload's figures.
#[derive(Clone, Debug, Serialize)]
struct Figures {
    participants: usize,
    keys: Keys,
    inflight: usize,
    seconds: f64,
    committed: u64,
    aborted: u64,
    /// Calls with no definite outcome (timeouts, overload).
    unknown: u64,
    committed_per_s: f64,
    aborted_per_s: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// CPU time of every local process (servers and this one) per finished transaction;
    /// `None` when targeting remote servers.
    cpu_us_per_txn: Option<f64>,
    /// The same, per process (`bench` is the load generator).
    cpu_us_per_txn_by_process: Vec<(String, f64)>,
    /// Memory and disk of each local server over the measured window.
    resources: Vec<Resources>,
    /// With --kill-and-restart: each server's time from restart to serving, in seconds.
    restart_seconds: Vec<(String, f64)>,
}

/// One local server's memory and disk over the measured window, sampled every second.
#[derive(Clone, Debug, Default, Serialize)]
struct Resources {
    name: String,
    /// Resident memory at the window's start, its peak, and at its end (MiB).
    rss_mib_start: f64,
    rss_mib_max: f64,
    rss_mib_end: f64,
    /// Bytes of its write-ahead log directory (preallocated segments count in full; MiB).
    wal_mib_max: f64,
    wal_mib_end: f64,
    /// Bytes of its store directory (participants; MiB).
    store_mib_end: f64,
}

/// The echo ceiling.
#[derive(Clone, Debug, Serialize)]
struct Echo {
    inflight: usize,
    seconds: f64,
    calls_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// What `--json` prints.
#[derive(Serialize)]
struct Report {
    /// The first workload's figures at the top level, for scripts.
    committed_per_s: f64,
    aborted_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    echo_calls_per_s: Option<f64>,
    /// committed_per_s / echo_calls_per_s of the first workload.
    ratio_to_echo: Option<f64>,
    echo: Option<Echo>,
    workloads: Vec<Figures>,
    cores: usize,
    /// Worker threads of each local server (None: remote servers).
    server_worker_threads: Option<usize>,
}

/// Runs the bench.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    validate(&args)?;
    let exe = std::env::current_exe().context("finding the concord binary to start servers")?;
    let workloads: Vec<(usize, Keys)> = if args.matrix {
        [1, 2, 4].into_iter().flat_map(|n| [(n, Keys::Uncontended), (n, Keys::Hot)]).collect()
    } else {
        vec![(args.participants, args.keys)]
    };
    let most = workloads.iter().map(|(n, _)| *n).max().unwrap_or(1);
    let local = args.coordinator.is_none();
    prepare_data_dir(&args.data_dir, false, "bench")?;
    if let Some(count) = args.undelivered {
        return undelivered(&exe, &args, count).await;
    }

    let echo = if args.no_echo { None } else { Some(echo_ceiling(&exe, &args).await?) };
    if let (Some(echo), false) = (&echo, args.json) {
        eprintln!(
            "echo ceiling: {:.0} unary calls/s at {} in flight (p50 {:.2} ms)",
            echo.calls_per_s, echo.inflight, echo.p50_ms
        );
    }

    let threads = args
        .worker_threads
        .map_or_else(|| crate::local::shared_worker_threads(most + 1), usize::from);
    let mut cluster = LocalCluster::default();
    let outcome = async {
        let (address, names) = match &args.coordinator {
            Some(address) => (address.clone(), args.participant_names.clone()),
            None => {
                let names: Vec<String> = (0..most).map(|i| format!("p{i}")).collect();
                let coordinator_args: Vec<String> = if args.no_batching {
                    vec!["--batch-calls".into(), "false".into()]
                } else {
                    Vec::new()
                };
                cluster.start(&exe, &args.data_dir, &names, &coordinator_args, threads).await?;
                (cluster.coordinator_address()?.to_string(), names)
            }
        };
        let client = Client::connect_with(
            &address,
            ClientOptions {
                call_timeout: Duration::from_secs(10),
                submit_margin: Duration::from_secs(5),
            },
        )?;
        let mut results = Vec::new();
        for (participants, keys) in &workloads {
            let figures = measure(
                &client,
                &names[..*participants],
                *keys,
                &args,
                local.then_some(&mut cluster),
            )
            .await?;
            if !args.json {
                eprintln!("{}", line(&figures));
            }
            results.push(figures);
        }
        anyhow::Ok(results)
    }
    .await;
    for note in cluster.stop().await {
        eprintln!("  {note}");
    }
    let results = outcome?;
    print_report(&args, echo, results, local.then_some(threads))?;
    Ok(ExitCode::SUCCESS)
}

/// `--undelivered`: see [`crate::undelivered`].
#[allow(clippy::print_stdout)]
async fn undelivered(exe: &Path, args: &BenchArgs, count: u64) -> anyhow::Result<ExitCode> {
    let report = crate::undelivered::run(exe, &args.data_dir, count).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} committed transactions awaiting Commit delivery (built in {:.1} s): coordinator \
             log {:.0} MiB, RSS {:.0} MiB; after SIGKILL, serving again {:.2} s after its \
             restart, every Commit delivered {:.2} s after it (RSS then {:.0} MiB)",
            report.awaiting_delivery,
            report.fill_seconds,
            report.coordinator_log_mib,
            report.coordinator_rss_mib_before_kill,
            report.restart_to_serving_seconds,
            report.restart_to_delivered_seconds,
            report.coordinator_rss_mib_after,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    if let Some(count) = args.undelivered {
        let max = crate::undelivered::MAX_UNDELIVERED;
        if count == 0 || count > max {
            anyhow::bail!("--undelivered must be 1 to {max}, got {count}");
        }
        if args.coordinator.is_some() || args.matrix || args.kill_and_restart {
            anyhow::bail!(
                "--undelivered runs its own coordinator and stand-in participants; it does not \
                 go with --coordinator, --matrix or --kill-and-restart"
            );
        }
    }
    if args.inflight == 0 || args.inflight > MAX_INFLIGHT {
        anyhow::bail!("--inflight must be 1 to {MAX_INFLIGHT}, got {}", args.inflight);
    }
    if args.participants == 0 || args.participants > MAX_PARTICIPANTS {
        anyhow::bail!("--participants must be 1 to {MAX_PARTICIPANTS}, got {}", args.participants);
    }
    if args.hot_keys == 0 {
        anyhow::bail!("--hot-keys must be at least 1");
    }
    if args.duration.is_zero() {
        anyhow::bail!("--duration must be more than 0");
    }
    if args.coordinator.is_some() {
        let wanted = if args.matrix { 4 } else { args.participants };
        if args.participant_names.len() < wanted {
            anyhow::bail!(
                "--coordinator needs --participant-name for each of the {wanted} participants \
                 the workload writes at (got {})",
                args.participant_names.len()
            );
        }
        if args.kill_and_restart {
            anyhow::bail!(
                "--kill-and-restart needs local servers; it does not go with --coordinator"
            );
        }
    } else if !args.participant_names.is_empty() {
        anyhow::bail!("--participant-name only goes with --coordinator");
    }
    Ok(())
}

/// Starts `concord echo-server`, runs the echo at `--inflight` for the warm-up and the
/// duration (at most 10 s), and stops it.
async fn echo_ceiling(exe: &Path, args: &BenchArgs) -> anyhow::Result<Echo> {
    let server = start_server(
        exe,
        "echo server".into(),
        "echo",
        vec!["echo-server".into(), "--listen".into(), "127.0.0.1:0".into()],
        &args.data_dir,
    )
    .await?;
    let measured = async {
        let channel =
            concord_proto::net::channel(&server.address().to_string(), Duration::from_secs(10))?;
        let client = concord_proto::v1::echo_client::EchoClient::new(channel);
        let duration = args.duration.min(Duration::from_secs(10));
        let stop = Arc::new(AtomicBool::new(false));
        let window = Window::new(args.warmup, duration);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.inflight {
            let (mut client, stop, window) = (client.clone(), Arc::clone(&stop), window);
            tasks.spawn(async move {
                let mut histogram = Histogram::default();
                let payload = vec![7u8; ECHO_PAYLOAD_BYTES];
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let request = concord_proto::v1::EchoRequest { payload: payload.clone() };
                    let ok = client.echo(request).await.is_ok();
                    if ok && window.contains(started, Instant::now()) {
                        histogram.record(started.elapsed());
                    }
                }
                histogram
            });
        }
        tokio::time::sleep_until(window.end.into()).await;
        stop.store(true, Ordering::Relaxed);
        let mut histogram = Histogram::default();
        while let Some(joined) = tasks.join_next().await {
            histogram.merge(&joined.context("an echo task failed")?);
        }
        let seconds = duration.as_secs_f64();
        anyhow::Ok(Echo {
            inflight: args.inflight,
            seconds,
            calls_per_s: histogram.count() as f64 / seconds,
            p50_ms: ms(histogram.quantile(0.5)),
            p99_ms: ms(histogram.quantile(0.99)),
        })
    }
    .await;
    if let Some(note) = server.stop().await {
        eprintln!("  {note}");
    }
    measured
}

/// The measured window: transactions that start after the warm-up and finish before its end.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn new(warmup: Duration, duration: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window { start, end: start + duration }
    }

    fn contains(&self, started: Instant, finished: Instant) -> bool {
        started >= self.start && finished <= self.end
    }
}

/// How the workers submit.
#[derive(Clone)]
enum Submitter {
    Unary(Client),
    Stream(Pipeline),
}

impl Submitter {
    async fn submit(&self, txn: &Transaction) -> Result<Submitted, ClientError> {
        match self {
            Submitter::Unary(client) => client.submit(txn).await,
            Submitter::Stream(pipeline) => pipeline.submit(txn).await,
        }
    }
}

/// One worker's tally.
#[derive(Default)]
struct Tally {
    latency: Histogram,
    committed: u64,
    aborted: u64,
    unknown: u64,
}

/// Runs one workload and measures it.
async fn measure(
    client: &Client,
    participants: &[String],
    keys: Keys,
    args: &BenchArgs,
    cluster: Option<&mut LocalCluster>,
) -> anyhow::Result<Figures> {
    let mut pids: Vec<(String, u32)> = vec![("bench".to_string(), std::process::id())];
    if let Some(cluster) = &cluster {
        pids.extend(cluster.servers().filter_map(|s| Some((s.name().to_string(), s.pid()?))));
    }
    let pids = cluster.is_some().then_some(&pids);
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let window = Window::new(args.warmup, args.duration);
    let run = format!("{:x}", clock_seed());
    let participants: Arc<Vec<String>> = Arc::new(participants.to_vec());
    let submitter = if args.unary {
        Submitter::Unary(client.clone())
    } else {
        Submitter::Stream(client.pipeline())
    };
    let mut tasks = tokio::task::JoinSet::new();
    for slot in 0..args.inflight {
        let (client, stop, participants, committed) = (
            submitter.clone(),
            Arc::clone(&stop),
            Arc::clone(&participants),
            Arc::clone(&committed),
        );
        let run = format!("{run}-{slot}");
        let hot_keys = args.hot_keys as u64;
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut rng = Prng::new(clock_seed() ^ slot as u64);
            let mut sequence = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sequence += 1;
                let key = match keys {
                    Keys::Uncontended => format!("bench-{slot}"),
                    Keys::Hot => format!("hot-{}", rng.below(hot_keys)),
                };
                let mut txn = Transaction::new()
                    .with_txn_id(format!("bench-{run}-{sequence}"))
                    .with_timeout_ms(TXN_TIMEOUT_MS);
                for participant in participants.iter() {
                    let add = Operation::CounterAdd {
                        key: key.clone().into_bytes(),
                        delta: 1,
                        lower_bound: None,
                        upper_bound: None,
                    };
                    txn = txn.with_branch(participant.clone(), vec![add]);
                }
                let started = Instant::now();
                let result = client.submit(&txn).await;
                let finished = Instant::now();
                if matches!(&result, Ok(s) if s.outcome == Outcome::Committed) {
                    committed.fetch_add(1, Ordering::Relaxed);
                }
                if !window.contains(started, finished) {
                    continue;
                }
                match result {
                    Ok(submitted) if submitted.outcome == Outcome::Committed => {
                        tally.committed += 1;
                        tally.latency.record(finished - started);
                    }
                    Ok(submitted) if submitted.outcome == Outcome::Aborted => {
                        tally.aborted += 1;
                        tally.latency.record(finished - started);
                    }
                    _ => tally.unknown += 1,
                }
            }
            tally
        });
    }
    tokio::time::sleep_until(window.start.into()).await;
    let cpu_before = pids.map(|pids| cpu_ticks(pids));
    let servers: Vec<(String, u32)> = pids.map_or_else(Vec::new, |p| p[1..].to_vec());
    let resources = sample_resources(&servers, &args.data_dir, window, &committed, args.json).await;
    let cpu_after = pids.map(|pids| cpu_ticks(pids));
    // Workers stop starting transactions; the ones in flight are still outstanding when the
    // servers are killed, and no new ones compete with the restarts for CPU.
    stop.store(true, Ordering::Relaxed);
    let mut restart_seconds = Vec::new();
    if let (true, Some(cluster)) = (args.kill_and_restart, cluster) {
        let exe = std::env::current_exe().context("finding the concord binary")?;
        for (name, took) in cluster.kill_and_restart(&exe, &args.data_dir).await? {
            if !args.json {
                eprintln!(
                    "  {name}: killed under load, serving again {:.2} s after its restart",
                    took.as_secs_f64()
                );
            }
            restart_seconds.push((name, took.as_secs_f64()));
        }
    }
    let mut total = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        let tally = joined.context("a bench worker failed")?;
        total.latency.merge(&tally.latency);
        total.committed += tally.committed;
        total.aborted += tally.aborted;
        total.unknown += tally.unknown;
    }
    let seconds = args.duration.as_secs_f64();
    let finished = total.committed + total.aborted;
    let per_txn = |ticks: u64| ticks as f64 * 1e6 / CLOCK_TICKS_PER_SECOND as f64 / finished as f64;
    let mut cpu_us_per_txn_by_process = Vec::new();
    if let (Some(before), Some(after), Some(pids), true) =
        (cpu_before, cpu_after, pids, finished > 0)
    {
        for (((name, _), before), after) in pids.iter().zip(before).zip(after) {
            cpu_us_per_txn_by_process.push((name.clone(), per_txn(after.saturating_sub(before))));
        }
    }
    let cpu_us_per_txn = (!cpu_us_per_txn_by_process.is_empty())
        .then(|| cpu_us_per_txn_by_process.iter().map(|(_, us)| us).sum());
    Ok(Figures {
        participants: participants.len(),
        keys,
        inflight: args.inflight,
        seconds,
        committed: total.committed,
        aborted: total.aborted,
        unknown: total.unknown,
        committed_per_s: total.committed as f64 / seconds,
        aborted_per_s: total.aborted as f64 / seconds,
        p50_ms: ms(total.latency.quantile(0.5)),
        p90_ms: ms(total.latency.quantile(0.9)),
        p99_ms: ms(total.latency.quantile(0.99)),
        p999_ms: ms(total.latency.quantile(0.999)),
        max_ms: ms(total.latency.max()),
        cpu_us_per_txn,
        cpu_us_per_txn_by_process,
        resources,
        restart_seconds,
    })
}

/// Samples every server's memory and disk each second until the window ends; with a long
/// window, prints a progress line every minute (committed/s over that minute, RSS, log size).
async fn sample_resources(
    servers: &[(String, u32)],
    data_dir: &Path,
    window: Window,
    committed: &AtomicU64,
    quiet: bool,
) -> Vec<Resources> {
    const EVERY: Duration = Duration::from_secs(1);
    const PROGRESS: Duration = Duration::from_secs(60);
    let mut resources: Vec<Resources> = servers
        .iter()
        .map(|(name, _)| Resources { name: name.clone(), ..Resources::default() })
        .collect();
    let mut last_progress = (Instant::now(), committed.load(Ordering::Relaxed));
    let mut first = true;
    loop {
        let now = Instant::now();
        for ((name, pid), r) in servers.iter().zip(resources.iter_mut()) {
            let rss = rss_mib(*pid).unwrap_or(0.0);
            let wal = dir_mib(&data_dir.join(name).join("wal"));
            if first {
                r.rss_mib_start = rss;
            }
            r.rss_mib_max = r.rss_mib_max.max(rss);
            r.rss_mib_end = rss;
            r.wal_mib_max = r.wal_mib_max.max(wal);
            r.wal_mib_end = wal;
            r.store_mib_end = dir_mib(&data_dir.join(name).join("store"));
        }
        first = false;
        if !quiet && now.duration_since(last_progress.0) >= PROGRESS {
            let total = committed.load(Ordering::Relaxed);
            let rate = (total - last_progress.1) as f64
                / now.duration_since(last_progress.0).as_secs_f64();
            let each: Vec<String> = resources
                .iter()
                .map(|r| {
                    format!("{} RSS {:.0} MiB, log {:.0} MiB", r.name, r.rss_mib_end, r.wal_mib_end)
                })
                .collect();
            eprintln!("  {rate:.0} committed/s over the last minute; {}", each.join("; "));
            last_progress = (now, total);
        }
        if now >= window.end {
            return resources;
        }
        tokio::time::sleep(EVERY.min(window.end - now)).await;
    }
}

/// Resident memory of `pid` in MiB, from /proc/PID/status.
pub(crate) fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Bytes of the files under `dir` (two levels deep is all a log or a sled store uses), in MiB;
/// 0 if it does not exist.
pub(crate) fn dir_mib(dir: &Path) -> f64 {
    fn bytes(dir: &Path, depth: u32) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        entries
            .flatten()
            .map(|entry| match entry.metadata() {
                Ok(meta) if meta.is_dir() && depth > 0 => bytes(&entry.path(), depth - 1),
                Ok(meta) if meta.is_file() => meta.len(),
                _ => 0,
            })
            .sum()
    }
    bytes(dir, 2) as f64 / (1024.0 * 1024.0)
}

/// User plus system CPU ticks of each of `pids` (every thread of each; 0 if unreadable).
fn cpu_ticks(pids: &[(String, u32)]) -> Vec<u64> {
    pids.iter().map(|(_, pid)| process_ticks(*pid).unwrap_or(0)).collect()
}

/// utime + stime of one process from `/proc/PID/stat` (fields 14 and 15).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: skip past it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field N is at index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn ms(duration: Option<Duration>) -> f64 {
    duration.map_or(0.0, |d| d.as_secs_f64() * 1_000.0)
}

fn line(f: &Figures) -> String {
    format!(
        "2PC across {} ({:?}, {} in flight): {:.0} committed/s, {:.0} aborted/s, p50 {:.2} ms, \
         p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms{}",
        f.participants,
        f.keys,
        f.inflight,
        f.committed_per_s,
        f.aborted_per_s,
        f.p50_ms,
        f.p90_ms,
        f.p99_ms,
        f.p999_ms,
        f.cpu_us_per_txn.map_or(String::new(), |c| format!(
            ", {c:.0} µs CPU/txn ({})",
            f.cpu_us_per_txn_by_process
                .iter()
                .map(|(name, us)| format!("{name} {us:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    )
}

#[allow(clippy::print_stdout)]
fn print_report(
    args: &BenchArgs,
    echo: Option<Echo>,
    workloads: Vec<Figures>,
    server_worker_threads: Option<usize>,
) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let first = workloads.first().context("no workload ran")?;
    let echo_calls = echo.as_ref().map(|e| e.calls_per_s);
    let ratio = |committed: f64| echo_calls.filter(|e| *e > 0.0).map(|e| committed / e);
    if args.json {
        let report = Report {
            committed_per_s: first.committed_per_s,
            aborted_per_s: first.aborted_per_s,
            p50_ms: first.p50_ms,
            p99_ms: first.p99_ms,
            echo_calls_per_s: echo_calls,
            ratio_to_echo: ratio(first.committed_per_s),
            echo,
            workloads,
            cores,
            server_worker_threads,
        };
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{:<13} {:<11} {:>8} {:>11} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "participants",
        "keys",
        "inflight",
        "committed/s",
        "aborted/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "CPU µs/tx",
        "÷ echo"
    );
    for f in &workloads {
        println!(
            "{:<13} {:<11} {:>8} {:>11.0} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9} {:>8}",
            f.participants,
            format!("{:?}", f.keys).to_lowercase(),
            f.inflight,
            f.committed_per_s,
            f.aborted_per_s,
            f.p50_ms,
            f.p90_ms,
            f.p99_ms,
            f.p999_ms,
            f.cpu_us_per_txn.map_or("-".to_string(), |c| format!("{c:.0}")),
            ratio(f.committed_per_s).map_or("-".to_string(), |r| format!("{r:.3}")),
        );
    }
    for f in workloads.iter().filter(|f| !f.resources.is_empty()) {
        println!(
            "resources, {} participant(s) {:?}: {}",
            f.participants,
            f.keys,
            f.resources
                .iter()
                .map(|r| format!(
                    "{} RSS {:.0}/{:.0}/{:.0} MiB (start/max/end), log {:.0} MiB max, store {:.0} MiB",
                    r.name, r.rss_mib_start, r.rss_mib_max, r.rss_mib_end, r.wal_mib_max, r.store_mib_end
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        if !f.restart_seconds.is_empty() {
            println!(
                "restart after SIGKILL under load, to serving: {}",
                f.restart_seconds
                    .iter()
                    .map(|(name, s)| format!("{name} {s:.2} s"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if let Some(echo) = &echo {
        println!(
            "echo ceiling: {:.0} unary calls/s at {} in flight, p50 {:.2} ms, p99 {:.2} ms \
             ({cores} cores, everything on this machine)",
            echo.calls_per_s, echo.inflight, echo.p50_ms, echo.p99_ms
        );
    }
    if let Some(threads) = server_worker_threads {
        println!("local servers: {threads} worker thread(s) each (--worker-threads)");
    }
    Ok(())
}
