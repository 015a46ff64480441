//! A bank-transfer workload over a real coordinator and three real participants on 127.0.0.1,
//! while a nemesis kills (SIGKILL) and restarts random processes, or pauses them (SIGSTOP, then
//! SIGCONT) — the coordinator included — then heals and checks what two-phase commit promises:
//!
//! - every unknown outcome resolves to a definite one (GetTransaction with fencing);
//! - atomicity: each transaction's marker key is on both of its participants or on neither,
//!   matching its outcome (committed: both; aborted: neither);
//! - exactly once: each participant's per-worker `applied` counter equals the number of
//!   committed transactions of that worker that touched it (a lost or doubled apply breaks it);
//! - money is conserved and no balance is negative;
//! - nothing is stuck: no in-doubt branch, nothing still committing.
//!
//! A small, fixed-seed check without proxies; `tests/chaos.rs` runs the full harness.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::now_ms;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_proto::v1;
use concord_proto::v1::coordinator_client::CoordinatorClient;
use support::{ConcordProcess, ParticipantProcess, reserve_port};
use tonic::transport::Channel;

const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];
const ACCOUNTS: usize = 10;
const INITIAL_BALANCE: i64 = 1_000;
const WORKERS: usize = 6;
/// Faults the nemesis injects, each a kill-and-restart or a pause.
const FAULTS: usize = 10;
/// The nemesis and workload seed; `CONCORD_TEST_SEED` overrides it to replay or sweep.
fn seed() -> u64 {
    std::env::var("CONCORD_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_c0de)
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn counter_add(key: &str, delta: i64, lower_bound: Option<i64>) -> v1::Operation {
    support::counter_add(key, delta, lower_bound, None)
}

fn put(key: &str) -> v1::Operation {
    support::put(key, b"1")
}

/// One submitted transfer and what the client learned.
#[derive(Clone, Debug)]
struct Transfer {
    txn_id: String,
    worker: usize,
    from: usize,
    to: usize,
    first_submitted_unix_ms: u64,
    /// `None`: unknown (a timeout, a dropped connection, PENDING).
    outcome: Option<v1::Outcome>,
}

struct Cluster {
    root: tempfile::TempDir,
    coordinator_address: SocketAddr,
    coordinator: ConcordProcess,
    participants: Vec<ParticipantProcess>,
    coordinator_starts: u32,
}

impl Cluster {
    async fn start() -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let coordinator_address = reserve_port();
        let mut participants = Vec::new();
        for name in NAMES {
            let dir = root.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            // Small checkpoints and segments, so recovery crosses checkpoints under the nemesis.
            let extra = ["--checkpoint-every", "200", "--segment-bytes", "65536"];
            participants.push(
                ParticipantProcess::start(&dir, name, Some(coordinator_address), &extra)
                    .await
                    .unwrap(),
            );
        }
        let coordinator =
            Cluster::spawn_coordinator(root.path(), coordinator_address, &participants, 1).await;
        Cluster { root, coordinator_address, coordinator, participants, coordinator_starts: 1 }
    }

    async fn spawn_coordinator(
        root: &std::path::Path,
        address: SocketAddr,
        participants: &[ParticipantProcess],
        start: u32,
    ) -> ConcordProcess {
        let mut args = vec![
            "coordinator".to_string(),
            "--listen".into(),
            address.to_string(),
            "--data-dir".into(),
            root.join("coordinator").display().to_string(),
            "--call-timeout-ms".into(),
            "500".into(),
            "--checkpoint-every".into(),
            "300".into(),
            "--segment-bytes".into(),
            "65536".into(),
        ];
        for (name, participant) in NAMES.iter().zip(participants) {
            args.push("--participant".into());
            args.push(format!("{name}={}", participant.address()));
        }
        let stderr = root.join(format!("coordinator-{start}.stderr"));
        ConcordProcess::start(&args, &stderr).await.unwrap()
    }

    fn client(&self) -> CoordinatorClient<Channel> {
        CoordinatorClient::new(support::channel(self.coordinator_address))
    }

    /// The process `victim` (0: the coordinator, 1..=3: a participant).
    fn process(&mut self, victim: usize) -> &mut ConcordProcess {
        if victim == 0 { &mut self.coordinator } else { self.participants[victim - 1].process() }
    }

    /// Pauses `victim` with SIGSTOP for `pause`, then resumes it with SIGCONT.
    async fn pause(&mut self, victim: usize, pause: Duration) {
        self.process(victim).signal("STOP").unwrap();
        tokio::time::sleep(pause).await;
        self.process(victim).signal("CONT").unwrap();
    }

    /// Kills process `victim` (0: the coordinator, 1..=3: a participant) and starts it again on
    /// the same data directory and port.
    async fn kill_and_restart(&mut self, victim: usize) {
        if victim == 0 {
            self.coordinator.kill();
            self.coordinator_starts += 1;
            self.coordinator = Cluster::spawn_coordinator(
                self.root.path(),
                self.coordinator_address,
                &self.participants,
                self.coordinator_starts,
            )
            .await;
        } else {
            let participant = &mut self.participants[victim - 1];
            let before = participant.address();
            participant.restart().await.unwrap();
            assert_eq!(participant.address(), before, "restarted on its own port");
        }
    }

    async fn get(&self, participant: usize, key: &str) -> Option<Vec<u8>> {
        self.participants[participant]
            .client()
            .get(v1::GetRequest { key: key.as_bytes().to_vec() })
            .await
            .unwrap()
            .into_inner()
            .entry
            .map(|e| e.value)
    }

    async fn counter(&self, participant: usize, key: &str) -> i64 {
        self.get(participant, key).await.map_or(0, |v| i64::from_be_bytes(v.try_into().unwrap()))
    }
}

async fn run_worker(
    client: CoordinatorClient<Channel>,
    worker: usize,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Transfer>>>,
) {
    let mut rng = Rng(seed() ^ (worker as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut sequence = 0;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let from = rng.below(3) as usize;
        let to = (from + 1 + rng.below(2) as usize) % 3;
        let amount = 1 + rng.below(200) as i64;
        let txn_id = format!("w{worker}-{sequence}");
        let marker = format!("t/{txn_id}");
        let applied = format!("applied-{worker}");
        let source = format!("acct-{}", rng.below(ACCOUNTS as u64));
        let target = format!("acct-{}", rng.below(ACCOUNTS as u64));
        let first_submitted_unix_ms = now_ms();
        let request = v1::SubmitRequest {
            txn_id: txn_id.clone(),
            branches: vec![
                v1::Branch {
                    participant: NAMES[from].into(),
                    operations: vec![
                        counter_add(&source, -amount, Some(0)),
                        counter_add(&applied, 1, None),
                        put(&marker),
                    ],
                    depends_on: Vec::new(),
                },
                v1::Branch {
                    participant: NAMES[to].into(),
                    operations: vec![
                        counter_add(&target, amount, None),
                        counter_add(&applied, 1, None),
                        put(&marker),
                    ],
                    depends_on: Vec::new(),
                },
            ],
            timeout_ms: 1_000,
            first_submitted_unix_ms,
            ..Default::default()
        };
        let mut call = tonic::Request::new(request);
        call.set_timeout(Duration::from_secs(3));
        let outcome = match client.clone().submit(call).await {
            Ok(response) => match response.into_inner().outcome() {
                v1::Outcome::Pending | v1::Outcome::Unspecified => None,
                decided => Some(decided),
            },
            Err(_) => None, // timeout, unreachable, shutting down: unknown, never "no"
        };
        history.lock().unwrap().push(Transfer {
            txn_id,
            worker,
            from,
            to,
            first_submitted_unix_ms,
            outcome,
        });
        if outcome.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Asks until the outcome is definite (fencing unknown ids), for at most `timeout`.
async fn resolve(
    client: &CoordinatorClient<Channel>,
    transfer: &Transfer,
    timeout: Duration,
) -> v1::Outcome {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let request = v1::GetTransactionRequest {
            txn_id: transfer.txn_id.clone(),
            fence_unknown: true,
            submitted_unix_ms: transfer.first_submitted_unix_ms,
        };
        if let Ok(response) = client.clone().get_transaction(request).await {
            let outcome = response.into_inner().transaction.unwrap().outcome();
            if matches!(outcome, v1::Outcome::Committed | v1::Outcome::Aborted) {
                return outcome;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{} never resolved", transfer.txn_id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills, restarts and pauses random processes under a transfer workload, heals, and checks
/// atomicity, exactly-once application, conservation of money and that nothing is left stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_stay_atomic_and_exactly_once_while_processes_are_killed_and_paused() {
    let mut cluster = Cluster::start().await;
    // Load the accounts: one one-phase transaction per participant.
    for name in NAMES {
        let operations = (0..ACCOUNTS)
            .map(|i| counter_add(&format!("acct-{i}"), INITIAL_BALANCE, None))
            .collect();
        let request = v1::SubmitRequest {
            txn_id: format!("load-{name}"),
            branches: vec![v1::Branch {
                participant: name.into(),
                operations,
                depends_on: Vec::new(),
            }],
            ..Default::default()
        };
        let response = cluster.client().submit(request).await.unwrap().into_inner();
        assert_eq!(response.outcome(), v1::Outcome::Committed);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            tokio::spawn(run_worker(
                cluster.client(),
                worker,
                Arc::clone(&stop),
                Arc::clone(&history),
            ))
        })
        .collect();

    let seed = seed();
    eprintln!("seed {seed} (replay with CONCORD_TEST_SEED={seed})");
    let mut rng = Rng(seed);
    let mut faults = BTreeMap::new();
    for _ in 0..FAULTS {
        tokio::time::sleep(Duration::from_millis(300 + rng.below(500))).await;
        let victim = rng.below(4) as usize;
        let name = if victim == 0 { "coordinator" } else { NAMES[victim - 1] };
        if rng.below(2) == 0 {
            *faults.entry(format!("kill {name}")).or_insert(0) += 1;
            cluster.kill_and_restart(victim).await;
        } else {
            *faults.entry(format!("pause {name}")).or_insert(0) += 1;
            cluster.pause(victim, Duration::from_millis(200 + rng.below(1_500))).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    // Heal: every process runs. Resolve every unknown outcome.
    let client = cluster.client();
    let mut transfers = history.lock().unwrap().clone();
    let unknown = transfers.iter().filter(|t| t.outcome.is_none()).count();
    for transfer in &mut transfers {
        let resolved = resolve(&client, transfer, Duration::from_secs(30)).await;
        if let Some(told) = transfer.outcome {
            assert_eq!(
                told, resolved,
                "{} was told {told:?} and later {resolved:?}",
                transfer.txn_id
            );
        }
        transfer.outcome = Some(resolved);
    }

    // Nothing stuck: nothing committing at the coordinator, nothing in doubt anywhere.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let committing = client
            .clone()
            .list_transactions(v1::ListTransactionsRequest {
                state: v1::TxnState::Committing.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .transactions
            .len();
        let mut in_doubt = 0;
        for participant in &cluster.participants {
            in_doubt += participant
                .client()
                .list_in_doubt(v1::ListInDoubtRequest::default())
                .await
                .unwrap()
                .into_inner()
                .branches
                .len();
        }
        if committing == 0 && in_doubt == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck after healing: {committing} committing, {in_doubt} in doubt"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Atomicity and the outcome: markers on both participants, or on neither.
    let mut committed_per = BTreeMap::new();
    for transfer in &transfers {
        let marker = format!("t/{}", transfer.txn_id);
        let at_from = cluster.get(transfer.from, &marker).await.is_some();
        let at_to = cluster.get(transfer.to, &marker).await.is_some();
        let committed = transfer.outcome == Some(v1::Outcome::Committed);
        assert_eq!(
            (at_from, at_to),
            (committed, committed),
            "{} ({:?}) applied at {} {at_from}, at {} {at_to}",
            transfer.txn_id,
            transfer.outcome,
            NAMES[transfer.from],
            NAMES[transfer.to]
        );
        if committed {
            *committed_per.entry((transfer.worker, transfer.from)).or_insert(0i64) += 1;
            *committed_per.entry((transfer.worker, transfer.to)).or_insert(0i64) += 1;
        }
    }
    // Exactly once: every committed branch applied once.
    for worker in 0..WORKERS {
        for (participant, name) in NAMES.iter().enumerate() {
            let applied = cluster.counter(participant, &format!("applied-{worker}")).await;
            let expected = committed_per.get(&(worker, participant)).copied().unwrap_or(0);
            assert_eq!(applied, expected, "worker {worker} at {name}");
        }
    }
    // Money is conserved and never negative.
    let mut total = 0;
    for (participant, name) in NAMES.iter().enumerate() {
        for account in 0..ACCOUNTS {
            let balance = cluster.counter(participant, &format!("acct-{account}")).await;
            assert!(balance >= 0, "acct-{account} at {name} is {balance}");
            total += balance;
        }
    }
    assert_eq!(total, 3 * ACCOUNTS as i64 * INITIAL_BALANCE);

    let committed = transfers.iter().filter(|t| t.outcome == Some(v1::Outcome::Committed)).count();
    eprintln!(
        "{} transfers, {committed} committed, {unknown} unknown resolved, faults {faults:?}",
        transfers.len()
    );
    assert!(committed > 50, "the workload made progress through the faults");
}
