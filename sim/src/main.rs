//! `concord-sim`: runs deterministic simulations of Concord, one seed or a sweep.
//!
//! ```text
//! cargo run --release -p concord-sim -- --seed 42          # replay one seed
//! cargo run --release -p concord-sim -- --seeds 5000       # seeds 1..=5000
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use concord_sim::{SimOptions, replay_command, run};

/// Deterministic simulation: the real coordinator and participants on turmoil, one seed each.
#[derive(Parser, Debug)]
#[command(name = "concord-sim", version)]
struct Args {
    /// Run only this seed (replays a failure).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run this many seeds, starting at --first.
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// The first seed of a sweep.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Simulated seconds under faults, per seed.
    #[arg(long, default_value_t = 20)]
    fault_seconds: u64,
    /// Closed-loop client workers.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Print each seed's nemesis timeline.
    #[arg(long)]
    timeline: bool,
    /// Keep going after a failing seed.
    #[arg(long)]
    keep_going: bool,
}

#[allow(clippy::print_stdout)]
fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONCORD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Err(error) = concord_failpoints::configure_from_env() {
        eprintln!("concord-sim: {error}");
        return ExitCode::from(2);
    }
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (args.first..args.first.saturating_add(args.seeds)).collect(),
    };
    let started = Instant::now();
    let mut failed = Vec::new();
    for seed in &seeds {
        let options = SimOptions {
            seed: *seed,
            fault_time: Duration::from_secs(args.fault_seconds),
            workers: args.workers,
            ..SimOptions::default()
        };
        let began = Instant::now();
        let report = run(&options);
        println!("{} [{:.1}s]", report.line(), began.elapsed().as_secs_f64());
        if args.timeline {
            for event in &report.timeline {
                println!("    {event}");
            }
        }
        if !report.passed {
            print!("{}", report.failure());
            failed.push(*seed);
            if !args.keep_going {
                break;
            }
        }
    }
    println!(
        "{} seeds, {} failed, {:.1}s",
        seeds.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    for seed in &failed {
        println!("replay: {}", replay_command(*seed));
    }
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
