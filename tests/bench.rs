//! `concord bench` as a tool: its JSON report carries what it promises (throughput, per-server
//! memory and disk, restart times after SIGKILL, the undelivered-Commit recovery), and bad
//! flags are refused by name. No timing is asserted: the figures are reports, not tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A bench run must finish within this (it stops its own servers by pid).
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Runs `concord bench ARGS --data-dir DIR`; kills it by its pid if it overruns.
fn bench(dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg("bench")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start concord bench");
    let started = Instant::now();
    while child.try_wait().expect("check concord bench").is_none() {
        if started.elapsed() > RUN_LIMIT {
            child.kill().expect("kill concord bench");
            let output = child.wait_with_output().expect("reap concord bench");
            panic!(
                "concord bench {args:?} ran over {RUN_LIMIT:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("read concord bench's output")
}

fn json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "concord bench failed ({}); stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object on stdout")
}

/// A short run reports committed transactions, each server's memory and log, and each server's
/// restart after SIGKILL under load.
#[test]
fn report_has_throughput_resources_and_restart_times() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--duration", "2s", "--warmup", "1s", "--no-echo", "--kill-and-restart", "--json"];
    let report = json(&bench(dir.path(), &args));
    assert!(report["committed_per_s"].as_f64().unwrap() > 0.0, "{report}");
    let workload = &report["workloads"][0];
    let resources = workload["resources"].as_array().unwrap();
    let names: Vec<&str> = resources.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["p0", "p1", "coordinator"], "{report}");
    for r in resources {
        assert!(r["rss_mib_max"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["rss_mib_max"].as_f64() >= r["rss_mib_end"].as_f64(), "{r}");
        assert!(r["wal_mib_max"].as_f64().unwrap() > 0.0, "{r}");
    }
    let restarts = workload["restart_seconds"].as_array().unwrap();
    assert_eq!(restarts.len(), 3, "every server restarted: {report}");
}

/// The undelivered-Commit scenario delivers every Commit after the coordinator's restart.
#[test]
fn undelivered_commits_are_all_delivered_after_a_coordinator_kill() {
    let dir = tempfile::tempdir().unwrap();
    let report = json(&bench(dir.path(), &["--undelivered", "300", "--json"]));
    assert_eq!(report["awaiting_delivery"], 300, "{report}");
    let serving = report["restart_to_serving_seconds"].as_f64().unwrap();
    let delivered = report["restart_to_delivered_seconds"].as_f64().unwrap();
    assert!(delivered >= serving, "delivered before serving? {report}");
}

/// Out-of-range and conflicting flags are refused, naming the flag, before anything starts.
#[test]
fn bad_flags_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (args, flag) in [
        (&["--undelivered", "0"][..], "--undelivered"),
        (&["--undelivered", "100001"][..], "--undelivered"),
        (&["--undelivered", "10", "--kill-and-restart"][..], "--undelivered"),
        (&["--inflight", "0"][..], "--inflight"),
        (
            &[
                "--kill-and-restart",
                "--coordinator",
                "127.0.0.1:1",
                "--participant-name",
                "a",
                "--participant-name",
                "b",
            ][..],
            "--kill-and-restart",
        ),
    ] {
        let output = bench(dir.path(), args);
        assert!(!output.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(flag), "{args:?}: the error does not name {flag}: {stderr}");
    }
}
