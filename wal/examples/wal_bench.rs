//! Measures [`FileWal`] group commit: how many durable appends per second the log sustains, and
//! how long each `append_durable` takes, with 1 and with 64 concurrent appenders.
//!
//! Each case opens a new log in a temporary directory (under `$TMPDIR`, so the file system there is
//! the one measured) and runs tokio tasks on a multi-thread runtime, each calling `append_durable`
//! with a 128-byte record in a closed loop for a fixed time. One line per case gives the appenders,
//! the appends per second, and the p50 and p99 latency of one `append_durable` in microseconds.
//!
//! Run with `cargo run --release -p concord-wal --example wal_bench [-- --seconds N]` (default 3 s
//! per case).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_wal::{FileWal, FileWalOptions, Wal, WalError};

/// Bytes in each appended record's payload.
const RECORD_BYTES: usize = 128;
/// The numbers of concurrent appenders measured, one case each.
const APPENDER_COUNTS: [usize; 2] = [1, 64];
/// How long each case runs unless `--seconds` says otherwise.
const DEFAULT_SECONDS: u64 = 3;

/// What one case measured.
struct CaseResult {
    /// Appends that completed.
    appends: usize,
    /// From the start of the case until the last appender finished.
    elapsed: Duration,
    /// Latency of each `append_durable`, sorted.
    latencies: Vec<Duration>,
}

fn main() -> Result<(), Box<dyn Error>> {
    let seconds = parse_seconds(std::env::args().skip(1))?;
    let duration = Duration::from_secs(seconds);
    let runtime = tokio::runtime::Builder::new_multi_thread().build()?;
    println!(
        "# FileWal append_durable, {RECORD_BYTES}-byte records, closed loop, {seconds} s per case"
    );
    for appenders in APPENDER_COUNTS {
        let result = runtime.block_on(run_case(appenders, duration))?;
        let appends_per_second = result.appends as f64 / result.elapsed.as_secs_f64();
        println!(
            "appenders={appenders:>3}  appends/s={appends_per_second:>9.0}  p50_us={:>7}  \
             p99_us={:>7}",
            percentile(&result.latencies, 50).as_micros(),
            percentile(&result.latencies, 99).as_micros(),
        );
    }
    Ok(())
}

/// Parses `--seconds N` (the only option) into the duration of each case in seconds.
fn parse_seconds(mut args: impl Iterator<Item = String>) -> Result<u64, String> {
    const USAGE: &str = "usage: wal_bench [--seconds N]";
    let mut seconds = DEFAULT_SECONDS;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let value =
                    args.next().ok_or_else(|| format!("--seconds needs a value; {USAGE}"))?;
                seconds = value
                    .parse()
                    .map_err(|error| format!("--seconds {value}: {error}; {USAGE}"))?;
            }
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    if seconds == 0 {
        return Err(format!("--seconds must be at least 1; {USAGE}"));
    }
    Ok(seconds)
}

/// Runs `appenders` closed-loop appenders against a new log for `duration`.
async fn run_case(appenders: usize, duration: Duration) -> Result<CaseResult, Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let wal = Arc::new(FileWal::open(dir.path(), FileWalOptions::default())?);
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..appenders)
        .map(|appender| {
            let wal = Arc::clone(&wal);
            tokio::spawn(async move {
                let payload = vec![(appender % 251) as u8; RECORD_BYTES];
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    wal.append_durable(&payload).await?;
                    latencies.push(begun.elapsed());
                }
                Ok::<_, WalError>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    let wal = Arc::try_unwrap(wal).map_err(|_| "an appender still holds the log")?;
    wal.close()?;
    latencies.sort_unstable();
    Ok(CaseResult { appends: latencies.len(), elapsed, latencies })
}

/// The `pct`-th percentile of `sorted` (nearest rank below), zero if it is empty.
fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() - 1) * pct / 100]
}
