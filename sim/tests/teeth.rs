//! The simulation has teeth: with a planted bug on (a test-only switch, see
//! docs/operations.md), a short sweep must fail, name the broken invariant and print the
//! command that replays the failing seed. Each case runs the `concord-sim` binary as its own
//! process, because planted bugs are read from the environment once per process.

#![allow(clippy::expect_used)]

use std::process::Command;

/// Runs a sweep of `seeds` seeds with `bug` planted; returns (success, stdout).
fn sweep_with(bug: &str, seeds: u64) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_concord-sim"))
        .args(["--seeds", &seeds.to_string(), "--fault-seconds", "10"])
        .env("CONCORD_PLANTED_BUGS", bug)
        .output()
        .expect("the concord-sim binary runs");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

fn assert_caught(bug: &str, seeds: u64, check: &str) {
    let (passed, stdout) = sweep_with(bug, seeds);
    assert!(!passed, "{bug}: {seeds} seeds passed with the bug planted:\n{stdout}");
    assert!(stdout.contains(check), "{bug}: expected a failed {check:?} check:\n{stdout}");
    assert!(
        stdout.contains("replay: cargo run --release -p concord-sim -- --seed "),
        "{bug}: no replay command:\n{stdout}"
    );
}

/// A participant applying a commit twice is caught by the monitor.
#[test]
fn applying_a_commit_twice_is_caught() {
    assert_caught("double-apply", 5, "FAILED invariants held at every monitored instant");
}

/// A coordinator committing before its decision is durable is caught.
#[test]
fn committing_before_the_decision_is_durable_is_caught() {
    assert_caught("commit-before-decision", 40, "FAILED");
}

/// A participant voting YES before its PREPARED record is durable breaks atomicity, and is caught.
#[test]
fn voting_yes_before_the_prepare_is_durable_is_caught() {
    assert_caught("vote-before-durable", 40, "FAILED atomicity");
}

/// A participant ignoring a bound is caught by the monitor.
#[test]
fn ignoring_a_counter_bound_is_caught() {
    assert_caught("ignore-bounds", 10, "FAILED invariants held at every monitored instant");
}

/// A coordinator giving up on a Commit leaves something stuck, and is caught.
#[test]
fn giving_up_on_commit_delivery_is_caught() {
    assert_caught("give-up-commit", 20, "FAILED nothing stuck");
}

/// A participant dropping a write is caught by the monitor.
#[test]
fn losing_a_write_is_caught() {
    assert_caught("drop-last-write", 5, "FAILED invariants held at every monitored instant");
}

/// Without a planted bug the same sweep passes (the teeth are not a broken harness).
#[test]
fn a_clean_sweep_passes() {
    let (passed, stdout) = sweep_with("", 3);
    assert!(passed, "{stdout}");
    assert!(stdout.contains("3 seeds, 0 failed"), "{stdout}");
}
