//! The seed sweep CI runs: every seed must pass. `CONCORD_SIM_SEEDS` sets how many (default
//! 600, about two minutes in a debug build), `CONCORD_SIM_FIRST_SEED` where to start; for
//! thousands, the release binary is faster: `cargo run --release -p concord-sim -- --seeds 5000`.

use concord_sim::{SimOptions, run};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Every seed of the sweep keeps every invariant, and the sweep did real work under faults.
#[test]
fn every_seed_keeps_every_invariant() {
    let first = env_u64("CONCORD_SIM_FIRST_SEED", 1);
    let count = env_u64("CONCORD_SIM_SEEDS", 600);
    let mut failures = Vec::new();
    let mut transactions = 0;
    let mut faults = 0;
    for seed in first..first + count {
        let report = run(&SimOptions { seed, ..SimOptions::default() });
        transactions += report.transactions;
        faults += report.faults.values().sum::<u64>();
        if !report.passed {
            eprintln!("{}\n{}", report.line(), report.failure());
            failures.push(seed);
        }
    }
    eprintln!(
        "{count} seeds from {first}: {transactions} transactions, {faults} faults, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "seeds {failures:?} failed; replay one with: {}",
        concord_sim::replay_command(failures[0])
    );
    // The sweep is not vacuous: the runs did work under faults.
    assert!(transactions > count * 20, "only {transactions} transactions in {count} seeds");
    assert!(faults > count * 10, "only {faults} faults in {count} seeds");
}
