//! Concord from another language: `tests/python/client_test.py` drives a real
//! `concord coordinator` with two real participants (`alpha`, `beta`) on 127.0.0.1, through
//! stubs that grpcio-tools generates at run time from `proto/proto/concord/v1/concord.proto`.
//! It submits a two-phase commit and a two-phase abort (a bound crossed), a saga that commits and
//! a saga that is compensated, a request naming an unknown participant, and lists the committed
//! transactions: the published proto is all a client in another language needs.
//!
//! The Python is `CONCORD_PYTHON` (default `python3`) and needs grpcio and grpcio-tools. Without
//! them the test prints a notice and passes, unless `CONCORD_REQUIRE_PYTHON=1`, which `.ci/run`
//! sets after making a venv that has them: then it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::{ConcordProcess, ParticipantProcess};

/// The script, and the include root that holds `concord/v1/concord.proto`.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/client_test.py");
const PROTO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto/proto");
/// The script must finish within this (it gives each call 10 s); it is killed by its pid past it.
const SCRIPT_LIMIT: Duration = Duration::from_secs(120);
/// Importing grpc must finish within this.
const PROBE_LIMIT: Duration = Duration::from_secs(60);
const NAMES: [&str; 2] = ["alpha", "beta"];

/// How a child process ended, and what it printed.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn report(&self) -> String {
        format!("{}\n--- stdout ---\n{}--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs `program ARGS` with its stdout and stderr in files under `dir` (no pipe to fill),
/// for at most `limit`; past it the child is killed (SIGKILL, by its pid) and the test fails
/// with what it printed. Err only when it cannot be started.
async fn run(
    program: &str,
    args: &[&str],
    dir: &Path,
    tag: &str,
    limit: Duration,
) -> std::io::Result<Finished> {
    let stdout_path = dir.join(format!("{tag}.stdout"));
    let stderr_path = dir.join(format!("{tag}.stderr"));
    let mut child = Command::new(program)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path)?)
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()?;
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{program} {args:?} ran over {limit:?} and was killed (pid {});\n--- stdout ---\n{}\
                 --- stderr ---\n{}",
                child.id(),
                read(&stdout_path),
                read(&stderr_path)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(Finished { status, stdout: read(&stdout_path), stderr: read(&stderr_path) })
}

/// The Python to use, or `None` (after a notice, or a failure under `CONCORD_REQUIRE_PYTHON=1`)
/// when it cannot import grpc and grpc_tools.
async fn python_with_grpc(dir: &Path) -> Option<String> {
    let python = std::env::var("CONCORD_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let probe = run(&python, &["-c", "import grpc, grpc_tools"], dir, "probe", PROBE_LIMIT).await;
    let why = match probe {
        Ok(finished) if finished.status.success() => return Some(python),
        Ok(finished) => {
            format!("`{python} -c \"import grpc, grpc_tools\"` failed: {}", finished.report())
        }
        Err(error) => format!("cannot run {python}: {error}"),
    };
    let required = std::env::var("CONCORD_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "CONCORD_REQUIRE_PYTHON=1 but {why}\nInstall them (`.ci/run` makes a venv with \
         `python3 -m venv target/ci-python && target/ci-python/bin/pip install grpcio \
         grpcio-tools`) and set CONCORD_PYTHON to that venv's python."
    );
    eprintln!(
        "skipping: grpcio not installed; set CONCORD_PYTHON to a python with grpcio and \
         grpcio-tools, or run .ci/run ({why})"
    );
    None
}

/// A Python client built only from the proto commits and aborts two-phase transactions,
/// commits a saga and sees a failed one compensated, gets INVALID_ARGUMENT naming
/// `branches[0].participant` for an unknown participant, and finds its committed transactions
/// in `ListTransactions`, against a real coordinator and two real participants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_client_runs_two_phase_and_saga_transactions() {
    let root = tempfile::tempdir().unwrap();
    let Some(python) = python_with_grpc(root.path()).await else { return };

    let mut participants = Vec::new();
    for name in NAMES {
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        participants.push(ParticipantProcess::start(&dir, name, None, &[]).await.unwrap());
    }
    let mut args = vec![
        "coordinator".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        root.path().join("coordinator").display().to_string(),
        "--call-timeout-ms".into(),
        "5000".into(),
    ];
    for (name, participant) in NAMES.iter().zip(&participants) {
        args.push("--participant".into());
        args.push(format!("{name}={}", participant.address()));
    }
    let coordinator =
        ConcordProcess::start(&args, &root.path().join("coordinator.stderr")).await.unwrap();

    let address = coordinator.address().to_string();
    let names = NAMES.join(",");
    let script_args = [
        SCRIPT,
        "--coordinator",
        address.as_str(),
        "--participants",
        names.as_str(),
        "--proto-dir",
        PROTO_DIR,
    ];
    let finished = run(&python, &script_args, root.path(), "client_test", SCRIPT_LIMIT)
        .await
        .unwrap_or_else(|error| panic!("cannot run {python} {SCRIPT}: {error}"));
    assert!(finished.status.success(), "{python} {SCRIPT} failed: {}", finished.report());
    assert!(
        finished.stdout.contains("ok case F"),
        "the script exited 0 without running every case: {}",
        finished.report()
    );
}
