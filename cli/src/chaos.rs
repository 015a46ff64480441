//! `concord chaos`: the chaos harness over real processes on 127.0.0.1 (see `concord_chaos`
//! and docs/operations.md, "Chaos testing").

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use concord_chaos::nemesis::FaultKind;
use concord_chaos::run::{ChaosConfig, run};
use concord_chaos::workload::{Mix, WorkloadSpec};

/// Flags of `concord chaos`.
#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// How long the workload and the nemesis run: 60s, 10m, 1m30s.
    #[arg(long, default_value = "60s", value_parser = crate::demo::parse_duration, value_name = "DURATION")]
    duration: Duration,
    /// Seeds the workload and the fault schedule (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// The workload: `transfer` (bank transfers, two-phase and one-phase), `saga` (transfers
    /// as sagas), `hybrid` (a two-phase branch plus a saga step at the payment-gateway
    /// example, in AUTO mode), `interactive` (Begin, Stage, Commit), or `mixed` (all four).
    #[arg(long, default_value = "transfer",
          value_parser = ["transfer", "saga", "hybrid", "interactive", "mixed"])]
    workload: String,
    /// Fault kinds to draw from, comma-separated: kill, kill-many, pause, partition, one-way,
    /// latency, reset; `none` for a fault-free run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill,kill-many,pause,partition,one-way,latency,reset"
    )]
    faults: Vec<String>,
    /// Closed-loop client workers.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
    /// Where to keep data, logs, history and timeline (must be new or empty; default
    /// ./concord-data/chaos-SEED). Removed after a passing run unless --keep.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep the directory after a passing run too.
    #[arg(long)]
    keep: bool,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs the harness; exits 0 only when every check held.
pub async fn run_chaos(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(concord_chaos::rng::clock_seed);
    let faults = if args.faults.iter().any(|f| f == "none") {
        Vec::new()
    } else {
        args.faults
            .iter()
            .map(|name| FaultKind::parse(name.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("--faults: {e}"))?
    };
    let dir =
        args.data_dir.unwrap_or_else(|| PathBuf::from(format!("./concord-data/chaos-{seed}")));
    let config = ChaosConfig {
        exe: std::env::current_exe().context("finding the concord binary to start servers")?,
        dir,
        duration: args.duration,
        seed,
        faults,
        workload: {
            let mix = Mix::named(&args.workload)
                .with_context(|| format!("--workload: unknown workload {:?}", args.workload))?;
            WorkloadSpec {
                workers: usize::from(args.workers),
                mix,
                gateway: mix.uses_gateway().then(|| concord_chaos::run::GATEWAY.to_string()),
                ..WorkloadSpec::default()
            }
        },
        env: Vec::new(),
        keep: args.keep,
        progress: !args.json,
        exits_expected: false,
    };
    if !args.json {
        eprintln!(
            "concord chaos: seed {seed}, {:?}, data in {} (replay: concord chaos --seed {seed})",
            config.duration,
            config.dir.display()
        );
    }
    let report = tokio::select! {
        report = run(config) => report?,
        () = crate::shutdown_signal() => {
            // Dropping the run kills every server it started (by pid).
            anyhow::bail!("interrupted; the servers were stopped");
        }
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string(&report)?)?;
    } else {
        write!(stdout, "{}", report.table())?;
        if !report.passed {
            writeln!(stdout, "replay the schedule: concord chaos --seed {seed}")?;
        }
    }
    Ok(if report.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
