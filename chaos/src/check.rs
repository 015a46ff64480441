//! The checker: after the nemesis stops and everything heals, it waits for quiescence,
//! resolves every unknown outcome, reads every participant's data, and checks what Concord
//! promises.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use concord_client::{Client, ParticipantReader, Transaction, TxnState};
use concord_core::types::{Operation, Outcome, counter};
use tokio::time::Instant;

use crate::workload::{
    Told, TxnRecord, WorkloadSpec, account_key, applied_key, gateway_account_key,
    gateway_applied_key, marker_key, saga_account_key, saga_applied_key,
};

/// Examples listed per failed check; the rest are counted.
const MAX_EXAMPLES: usize = 5;
/// Entries read from one participant, at most: markers of every transaction, accounts and
/// counters (the workload stops at `max_transactions`, well below this).
const MAX_SCAN_ENTRIES: usize = 10_000_000;

/// One check's result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    /// Its name.
    pub name: &'static str,
    /// Whether it held.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

fn check(name: &'static str, problems: &[String], total: usize, fine: String) -> Check {
    if total == 0 {
        return Check { name, ok: true, detail: fine };
    }
    let mut detail = problems.iter().take(MAX_EXAMPLES).cloned().collect::<Vec<_>>().join("; ");
    if total > MAX_EXAMPLES {
        detail.push_str(&format!("; and {} more", total - MAX_EXAMPLES));
    }
    Check { name, ok: false, detail }
}

/// What the checker found.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    /// Every check.
    pub checks: Vec<Check>,
    /// Unknown outcomes that resolved to committed, and to aborted.
    pub unknown_resolved: (u64, u64),
    /// Transactions committed and aborted in the end.
    pub committed: u64,
    /// Aborted in the end.
    pub aborted: u64,
    /// Committed and aborted in the end, per kind of transaction.
    pub by_kind: BTreeMap<&'static str, (u64, u64)>,
}

/// Waits (at most `timeout`) until nothing is committing at the coordinator and nothing is in
/// doubt at any participant. Returns what was still stuck, if anything.
async fn quiesce(
    coordinator: &Client,
    readers: &[(String, ParticipantReader)],
    timeout: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut stuck = Vec::new();
        // Commits still being delivered; sagas still executing, compensating or needing
        // attention (which the nemesis may cause, but which must clear once healed); open
        // interactive transactions (which abort at their deadline).
        for state in [
            TxnState::Committing,
            TxnState::Executing,
            TxnState::Compensating,
            TxnState::NeedsAttention,
            TxnState::Open,
        ] {
            match coordinator.list(Some(state), 100, "").await {
                Ok(page) if page.transactions.is_empty() => {}
                Ok(page) => stuck.push(format!(
                    "{}{} still {state} at the coordinator (e.g. {})",
                    page.transactions.len(),
                    if page.next_page_token.is_some() { "+" } else { "" },
                    page.transactions[0].txn_id
                )),
                Err(error) => stuck.push(format!("the coordinator did not answer: {error}")),
            }
        }
        for (name, reader) in readers {
            match reader.in_doubt(100).await {
                // The payment gateway (an SDK participant) lists its prepared branches too.
                Ok(ids) if ids.is_empty() => {}
                Ok(ids) => {
                    stuck.push(format!("{} in doubt at {name} (e.g. {})", ids.len(), ids[0]))
                }
                Err(error) => stuck.push(format!("{name} did not answer: {error}")),
            }
        }
        if stuck.is_empty() || Instant::now() >= deadline {
            return stuck;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks until `record`'s outcome is definite, fencing an id the coordinator never saw.
async fn resolve(
    coordinator: &Client,
    record: &TxnRecord,
    deadline: Instant,
) -> Result<Told, String> {
    loop {
        let error = match coordinator.fence(&record.id, record.first_submitted_unix_ms).await {
            Ok(info) if info.outcome == Outcome::Committed => return Ok(Told::Committed),
            Ok(info) if info.outcome == Outcome::Aborted => return Ok(Told::Aborted),
            Ok(info) => format!("still {:?}", info.outcome),
            Err(error) => error.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("{} never resolved: {error}", record.id));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything read from one participant.
#[derive(Default)]
struct Data {
    markers: HashSet<String>,
    /// Every counter read, by key: balances and applied counters.
    counters: HashMap<Vec<u8>, i64>,
}

impl Data {
    fn counter(&self, key: &[u8]) -> i64 {
        self.counters.get(key).copied().unwrap_or(0)
    }
}

/// The balance keys at a participant (`gateway`: the payment gateway's).
fn balance_keys(spec: &WorkloadSpec, gateway: bool) -> Vec<Vec<u8>> {
    if gateway {
        return (0..spec.workers).map(gateway_account_key).collect();
    }
    let mut keys: Vec<Vec<u8>> = (0..spec.accounts).map(account_key).collect();
    if spec.mix.saga > 0 {
        keys.extend((0..spec.workers).map(saga_account_key));
    }
    keys
}

/// The applied-counter keys at a participant.
fn applied_keys(spec: &WorkloadSpec, gateway: bool) -> Vec<Vec<u8>> {
    if gateway {
        return (0..spec.workers).map(gateway_applied_key).collect();
    }
    let mut keys: Vec<Vec<u8>> = (0..spec.workers).map(applied_key).collect();
    if spec.mix.saga > 0 {
        keys.extend((0..spec.workers).map(saga_applied_key));
    }
    keys
}

async fn read(reader: &ParticipantReader, spec: &WorkloadSpec) -> Result<Data, String> {
    let page = reader.scan(b"", b"", MAX_SCAN_ENTRIES).await.map_err(|e| e.to_string())?;
    if page.next_start.is_some() {
        return Err(format!("more than {MAX_SCAN_ENTRIES} keys"));
    }
    let mut data = Data::default();
    let counters: HashSet<Vec<u8>> =
        balance_keys(spec, false).into_iter().chain(applied_keys(spec, false)).collect();
    for entry in page.entries {
        if let Some(id) = entry.key.strip_prefix(b"t/") {
            data.markers.insert(String::from_utf8_lossy(id).into_owned());
        } else if counters.contains(&entry.key) {
            data.counters.insert(entry.key, counter::decode(&entry.value).unwrap_or(i64::MIN));
        }
    }
    Ok(data)
}

/// Reads the payment gateway, which answers Get only: its balances and counters, and the
/// marker (a counter, 1 when applied) of every transaction with a step there.
async fn read_gateway(
    reader: &ParticipantReader,
    spec: &WorkloadSpec,
    txns: &[TxnRecord],
    index: usize,
) -> Result<Data, String> {
    let mut data = Data::default();
    for key in balance_keys(spec, true).into_iter().chain(applied_keys(spec, true)) {
        if let Some(entry) = reader.get(&key).await.map_err(|e| e.to_string())? {
            data.counters.insert(key, counter::decode(&entry.value).unwrap_or(i64::MIN));
        }
    }
    for record in txns.iter().filter(|t| t.participants.contains(&index)) {
        let entry = reader.get(&marker_key(&record.id)).await.map_err(|e| e.to_string())?;
        match entry.map(|e| counter::decode(&e.value)) {
            Some(Some(1)) => {
                data.markers.insert(record.id.clone());
            }
            None | Some(Some(0)) => {}
            Some(other) => {
                return Err(format!("the marker of {} at the gateway is {other:?}", record.id));
            }
        }
    }
    Ok(data)
}

/// Runs every check. `unexpected_exits` are processes that died on their own during the run.
pub async fn run_checks(
    coordinator: &Client,
    readers: &[(String, ParticipantReader)],
    spec: &WorkloadSpec,
    mut txns: Vec<TxnRecord>,
    unexpected_exits: &[String],
) -> Findings {
    let mut findings = Findings::default();
    let exits_total = unexpected_exits.len();
    findings.checks.push(check(
        "no process died on its own",
        unexpected_exits,
        exits_total,
        "every exit was the nemesis's".into(),
    ));

    // Nothing stuck after healing: delivery finished, nothing in doubt.
    let stuck = quiesce(coordinator, readers, Duration::from_secs(60)).await;
    let stuck_total = stuck.len();

    // Every unknown resolves, and no two answers contradicted each other.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut unresolved = Vec::new();
    let mut contradictions = Vec::new();
    for record in &mut txns {
        if let Some(contradiction) = &record.contradiction {
            contradictions.push(format!("{}: {contradiction}", record.id));
        }
        if record.told != Told::Unknown {
            continue;
        }
        match resolve(coordinator, record, deadline).await {
            Ok(told) => {
                if told == Told::Committed {
                    findings.unknown_resolved.0 += 1;
                } else {
                    findings.unknown_resolved.1 += 1;
                }
                record.told = told;
            }
            Err(error) => unresolved.push(error),
        }
    }
    let total = unresolved.len();
    findings.checks.push(check(
        "every unknown outcome resolved",
        &unresolved,
        total,
        format!(
            "{} resolved committed, {} aborted",
            findings.unknown_resolved.0, findings.unknown_resolved.1
        ),
    ));
    let total = contradictions.len();
    findings.checks.push(check(
        "answers never contradicted",
        &contradictions,
        total,
        "duplicates and retries got the same outcome".into(),
    ));

    // Read every participant.
    let mut data = Vec::new();
    let mut unreadable = Vec::new();
    let sled = readers.len() - usize::from(spec.gateway.is_some());
    for (index, (name, reader)) in readers.iter().enumerate() {
        let read = if index >= sled {
            read_gateway(reader, spec, &txns, index).await
        } else {
            read(reader, spec).await
        };
        match read {
            Ok(d) => data.push(d),
            Err(error) => {
                unreadable.push(format!("{name}: {error}"));
                data.push(Data::default());
            }
        }
    }
    if !unreadable.is_empty() {
        let total = unreadable.len();
        findings.checks.push(check(
            "every participant readable",
            &unreadable,
            total,
            String::new(),
        ));
    }

    // Atomicity, and outcomes matching the data.
    let mut partial = Vec::new();
    let mut mismatched = Vec::new();
    let mut expected_applied: BTreeMap<(usize, Vec<u8>), i64> = BTreeMap::new();
    let known: HashSet<&str> = txns.iter().map(|t| t.id.as_str()).collect();
    for record in &txns {
        let at: Vec<bool> =
            record.participants.iter().map(|p| data[*p].markers.contains(&record.id)).collect();
        let everywhere = at.iter().all(|a| *a);
        let nowhere = at.iter().all(|a| !*a);
        let names: Vec<String> = record
            .participants
            .iter()
            .zip(&at)
            .map(|(p, a)| format!("{}={}", readers[*p].0, if *a { "applied" } else { "absent" }))
            .collect();
        if !everywhere && !nowhere {
            partial.push(format!(
                "{} ({:?}) half-applied: {}",
                record.id,
                record.told,
                names.join(" ")
            ));
        }
        let kind = match record.kind {
            crate::workload::Kind::Transfer => "transfer",
            crate::workload::Kind::Saga => "saga",
            crate::workload::Kind::Hybrid => "hybrid",
            crate::workload::Kind::Interactive => "interactive",
        };
        let counts = findings.by_kind.entry(kind).or_insert((0, 0));
        match record.told {
            Told::Committed => counts.0 += 1,
            Told::Aborted => counts.1 += 1,
            Told::Unknown => {}
        }
        match record.told {
            Told::Committed => {
                findings.committed += 1;
                if !everywhere {
                    mismatched.push(format!("{} committed but {}", record.id, names.join(" ")));
                }
                for p in &record.participants {
                    let key = record.applied_key(*p, sled);
                    *expected_applied.entry((*p, key)).or_insert(0) += 1;
                }
            }
            Told::Aborted => {
                findings.aborted += 1;
                if !nowhere {
                    mismatched.push(format!("{} aborted but {}", record.id, names.join(" ")));
                }
            }
            Told::Unknown => {}
        }
    }
    let total = partial.len();
    findings.checks.push(check(
        "atomicity: all branches or none",
        &partial,
        total,
        format!("{} transactions, each applied on all its participants or on none", txns.len()),
    ));
    let mut phantoms = Vec::new();
    for (p, d) in data.iter().enumerate() {
        for marker in &d.markers {
            if !known.contains(marker.as_str()) {
                phantoms.push(format!("{marker} applied at {} but never submitted", readers[p].0));
            }
        }
    }
    let total = mismatched.len() + phantoms.len();
    mismatched.extend(phantoms);
    findings.checks.push(check(
        "outcomes match the data",
        &mismatched,
        total,
        "every commit applied everywhere, every abort nowhere".into(),
    ));

    // Exactly once: each worker's applied counter at each participant counts its commits there.
    let mut twice = Vec::new();
    for (p, d) in data.iter().enumerate() {
        for key in applied_keys(spec, p >= sled) {
            let expected = expected_applied.get(&(p, key.clone())).copied().unwrap_or(0);
            let applied = d.counter(&key);
            if applied != expected {
                twice.push(format!(
                    "{} at {}: {applied} branches applied, {expected} committed",
                    String::from_utf8_lossy(&key),
                    readers[p].0
                ));
            }
        }
    }
    let total = twice.len();
    findings.checks.push(check(
        "exactly once: no branch applied twice or lost",
        &twice,
        total,
        "every worker's applied count matches its commits".into(),
    ));

    // Money: conserved, never past a bound.
    let mut sum: i128 = 0;
    let mut negative = Vec::new();
    let mut balances = 0usize;
    for (p, d) in data.iter().enumerate() {
        for key in balance_keys(spec, p >= sled) {
            balances += 1;
            let balance = d.counter(&key);
            sum += i128::from(balance);
            if balance < 0 {
                let key = String::from_utf8_lossy(&key);
                negative.push(format!("{key} at {} is {balance}", readers[p].0));
            }
        }
    }
    let expected = i128::from(spec.initial_balance) * balances as i128;
    let drift = if sum == expected {
        Vec::new()
    } else {
        vec![format!("total is {sum}, expected {expected} ({:+})", sum - expected)]
    };
    let total = drift.len();
    findings.checks.push(check(
        "total balance unchanged",
        &drift,
        total,
        format!("{sum} before and after"),
    ));
    let total = negative.len();
    findings.checks.push(check(
        "no balance past its bound",
        &negative,
        total,
        "every balance >= 0".into(),
    ));

    // Nothing stuck: and no lock held — a probe touching every account and counter at each
    // participant must commit.
    let mut stuck = stuck;
    for (name, _) in &readers[..sled] {
        if let Err(problem) = probe_locks(coordinator, name, spec).await {
            stuck.push(problem);
        }
    }
    let total = stuck.len().max(stuck_total);
    findings.checks.push(check(
        "nothing stuck: no in-doubt branch, held lock or undelivered commit",
        &stuck,
        total,
        "quiescent after healing".into(),
    ));
    findings
}

/// Commits a no-op on every account and counter of `participant`; a held lock makes it vote NO.
/// An attempt that gets no answer, or aborts for another reason (a connection the faults left
/// dead until keepalive notices it), is retried under a new id for up to a minute; a lock
/// that stays held fails every attempt.
async fn probe_locks(
    coordinator: &Client,
    participant: &str,
    spec: &WorkloadSpec,
) -> Result<(), String> {
    let add = |key| Operation::CounterAdd { key, delta: 0, lower_bound: None, upper_bound: None };
    let operations: Vec<Operation> = (0..spec.accounts)
        .map(account_key)
        .chain((0..spec.workers).map(applied_key))
        .map(add)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let id = format!("lock-probe-{participant}-{}-{attempt}", (spec.clock)());
        let txn = Transaction::new().with_txn_id(&id).with_branch(participant, operations.clone());
        let problem = match coordinator.submit(&txn).await {
            Ok(submitted) if submitted.outcome == Outcome::Committed => return Ok(()),
            Ok(submitted) => format!(
                "a lock probe at {participant} did not commit: {:?} {}",
                submitted.outcome,
                submitted.abort.as_ref().map_or(String::new(), |c| format!("{c:?}"))
            ),
            Err(error) => format!("a lock probe at {participant} failed: {error}"),
        };
        if Instant::now() >= deadline {
            return Err(format!("{problem} (attempt {attempt}, for a minute)"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
