//! The chaos harness over real processes (the `concord` this test build made, which honours
//! failpoints and planted bugs):
//!
//! - a run of about a minute under every kind of fault must pass every check;
//! - every failpoint, with a crash and with an error, must be survived with every check holding;
//! - for each check, a planted bug that breaks what it guards must be reported by it.
//!
//! Runs are serialized: each is four processes on a two-core machine. The seed of a run is in
//! its report; `concord chaos --seed N` replays the fault schedule.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use concord_chaos::cluster::{EnvVar, Target};
use concord_chaos::nemesis::FaultKind;
use concord_chaos::run::{ChaosConfig, Report, run};
use concord_chaos::workload::{Mix, WorkloadSpec};

/// One run at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Setup {
    env: Vec<EnvVar>,
    faults: Vec<FaultKind>,
    seconds: u64,
    workload: WorkloadSpec,
    exits_expected: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            env: Vec::new(),
            faults: Vec::new(),
            seconds: 5,
            workload: WorkloadSpec::default(),
            exits_expected: false,
        }
    }
}

async fn chaos(setup: Setup) -> Report {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    let seed = std::env::var("CONCORD_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let config = ChaosConfig {
        exe: env!("CARGO_BIN_EXE_concord").into(),
        dir: root.path().join("run"),
        duration: Duration::from_secs(setup.seconds),
        seed,
        faults: setup.faults,
        workload: setup.workload,
        env: setup.env,
        keep: false,
        progress: false,
        exits_expected: setup.exits_expected,
    };
    let report = run(config).await.unwrap();
    eprintln!("{}", report.table());
    report
}

fn bug(bug: &str, target: Target) -> Vec<EnvVar> {
    vec![EnvVar {
        target,
        key: "CONCORD_PLANTED_BUGS".into(),
        value: bug.into(),
        every_start: true,
    }]
}

fn failed(report: &Report, check: &str) -> bool {
    report.checks.iter().any(|c| c.name.starts_with(check) && !c.ok)
}

// ───────────────────────────── A run under every fault ─────────────────────────────

/// A minute (`CONCORD_CHAOS_SECONDS`) of transfers under every kind of fault passes every check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_under_every_kind_of_fault_passes_every_check() {
    let seconds =
        std::env::var("CONCORD_CHAOS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let report =
        chaos(Setup { faults: FaultKind::ALL.to_vec(), seconds, ..Setup::default() }).await;
    assert!(report.passed, "{}", report.table());
    assert!(report.faults_injected >= seconds / 3, "the nemesis was busy: {}", report.table());
    assert!(report.committed > 100, "the workload made progress: {}", report.table());
    assert!(report.duplicate_submits > 0);
}

/// Each new workload under every kind of fault: sagas, hybrid transactions with the payment
/// gateway (a do/undo-only participant, killed and partitioned like the rest), interactive
/// transactions, and all of them mixed with transfers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_hybrid_interactive_and_mixed_workloads_pass_every_check_under_faults() {
    for name in ["saga", "hybrid", "interactive", "mixed"] {
        let mix = Mix::named(name).unwrap();
        let workload = WorkloadSpec {
            mix,
            gateway: mix.uses_gateway().then(|| concord_chaos::run::GATEWAY.to_string()),
            ..WorkloadSpec::default()
        };
        let faults = FaultKind::ALL.to_vec();
        let report = chaos(Setup { faults, workload, seconds: 15, ..Setup::default() }).await;
        assert!(report.passed, "{name}: {}", report.table());
        assert_eq!(report.workload, name);
        assert!(report.committed > 50, "{name}: the workload made progress: {}", report.table());
        assert!(
            report.aborted > 0,
            "{name}: some aborted (and were compensated): {}",
            report.table()
        );
    }
}

// ───────────────────────────── Failpoints ─────────────────────────────

/// Arms `point` with `action` on the process it belongs to (first start only), runs a short
/// workload, and requires every check to hold. A crash or an error (a storage failure) stops
/// the process; the harness restarts it, so the run must show that exit: the point was reached.
async fn survive(point: &'static str, action: &str) -> Result<(), String> {
    let target = match point.split('.').next() {
        Some("coordinator") => Target::Coordinator,
        Some("participant") => Target::Participant(0),
        // The WAL is in every process; arm it in a participant, whose log is busiest.
        _ => Target::Participant(1),
    };
    let env = vec![EnvVar {
        target,
        key: "CONCORD_FAILPOINTS".into(),
        value: format!("{point}={action}"),
        every_start: false,
    }];
    // Points on the saga path are reached by sagas only.
    let workload = if point.contains("execute") || point.contains("compensate") {
        WorkloadSpec { mix: Mix::named("saga").unwrap_or(Mix::TRANSFER), ..WorkloadSpec::default() }
    } else {
        WorkloadSpec::default()
    };
    let report =
        chaos(Setup { env, workload, seconds: 3, exits_expected: true, ..Setup::default() }).await;
    if !report.passed {
        return Err(format!("{point}={action}: a check failed:\n{}", report.table()));
    }
    if report.exits.is_empty() {
        return Err(format!("{point}={action}: the point was never reached (no exit)"));
    }
    Ok(())
}

/// Survives every failpoint whose name starts with `prefix`, each with a crash and with an
/// error; a prefix that names no failpoint fails (a sweep over nothing proves nothing).
async fn survive_all(prefix: &str) {
    let points: Vec<&'static str> = concord_failpoints::POINTS
        .iter()
        .map(|(point, _)| *point)
        .filter(|point| point.starts_with(prefix))
        .collect();
    assert!(!points.is_empty(), "no failpoint starts with {prefix:?}");
    let mut failures = Vec::new();
    for point in points {
        for action in ["crash", "error"] {
            if let Err(failure) = survive(point, action).await {
                failures.push(failure);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every WAL failpoint, crashed and failed in turn, loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wal_failpoint_is_survived_with_a_crash_and_with_an_error() {
    survive_all("wal.").await;
}

/// Every participant failpoint, crashed and failed in turn, loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_participant_failpoint_is_survived_with_a_crash_and_with_an_error() {
    survive_all("participant.").await;
}

/// Every coordinator failpoint, crashed and failed in turn, loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_coordinator_failpoint_is_survived_with_a_crash_and_with_an_error() {
    survive_all("coordinator.").await;
}

// ───────────────────────────── Teeth ─────────────────────────────

/// A coordinator that calls saga steps compensated without asking fails atomicity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_coordinator_skipping_a_compensation() {
    let env = bug("skip-compensation", Target::Coordinator);
    let workload = WorkloadSpec { mix: Mix::named("saga").unwrap(), ..WorkloadSpec::default() };
    let report = chaos(Setup { env, workload, ..Setup::default() }).await;
    assert!(failed(&report, "atomicity"), "{}", report.table());
}

/// A participant that applies a commit twice fails exactly-once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_catches_a_participant_applying_twice() {
    let env = bug("double-apply", Target::Participants);
    let report = chaos(Setup { env, ..Setup::default() }).await;
    assert!(failed(&report, "exactly once"), "{}", report.table());
}

/// A participant that ignores a balance's bound fails the bound check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_check_catches_a_participant_ignoring_bounds() {
    let env = bug("ignore-bounds", Target::Participants);
    let workload = WorkloadSpec { max_amount: 900, ..WorkloadSpec::default() };
    let report = chaos(Setup { env, workload, seconds: 8, ..Setup::default() }).await;
    assert!(failed(&report, "no balance past its bound"), "{}", report.table());
}

/// A participant that drops its last write fails conservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conservation_catches_a_participant_dropping_a_write() {
    let env = bug("drop-last-write", Target::Participants);
    let report = chaos(Setup { env, ..Setup::default() }).await;
    assert!(failed(&report, "total balance unchanged"), "{}", report.table());
}

/// A coordinator that gives up delivering a Commit fails "nothing stuck".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_stuck_catches_a_coordinator_giving_up_on_a_commit() {
    let env = bug("give-up-commit", Target::Coordinator);
    let faults = vec![FaultKind::Partition, FaultKind::Reset, FaultKind::Kill];
    let report = chaos(Setup { env, faults, seconds: 12, ..Setup::default() }).await;
    assert!(failed(&report, "nothing stuck"), "{}", report.table());
}

/// A coordinator that commits before its decision is durable fails "outcomes match the data".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_catch_a_coordinator_committing_before_its_decision_is_logged() {
    let mut env = bug("commit-before-decision", Target::Coordinator);
    // One participant commits 200 ms after the other, so a kill of the coordinator always
    // finds transactions committed at one participant and not yet at the other: with
    // batched Commits the window the bug opens is otherwise only a batch's round trip wide.
    env.push(EnvVar {
        target: Target::Participant(0),
        key: "CONCORD_FAILPOINTS".into(),
        value: "participant.before_commit=delay(200)*".into(),
        every_start: true,
    });
    let faults = vec![FaultKind::Kill, FaultKind::Partition];
    let report = chaos(Setup { env, faults, seconds: 20, ..Setup::default() }).await;
    assert!(failed(&report, "outcomes match the data"), "{}", report.table());
}

/// A participant that votes YES before its PREPARED record is durable fails atomicity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomicity_catches_a_participant_voting_before_its_record_is_durable() {
    let mut env = bug("vote-before-durable", Target::Participants);
    // Slow syncs keep recent PREPARED records in the log's memory buffer, where a SIGKILL
    // loses them (written-but-unsynced bytes would survive a kill in the page cache): the
    // window the bug opens is then wide enough for every kill to land in it.
    env.push(EnvVar {
        target: Target::Participants,
        key: "CONCORD_FAILPOINTS".into(),
        value: "wal.before_sync=delay(100)*".into(),
        every_start: true,
    });
    let faults = vec![FaultKind::Kill];
    let report = chaos(Setup { env, faults, seconds: 20, ..Setup::default() }).await;
    assert!(failed(&report, "atomicity"), "{}", report.table());
}
