//! `concord submit`, `concord get` and `concord list`: the coordinator's client API from a
//! shell. Each prints a human-readable answer, or JSON with `--json`.
//!
//! `submit` exits 0 when the transaction committed, 1 when it aborted (or was rejected), and 2
//! when the outcome is unknown (a timeout or lost connection: DESIGN.md rule 6), printing the
//! transaction id and the `concord get` command that asks for the outcome.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgMatches, Args, FromArgMatches};
use concord_client::info::{no_reason_str, outcome_str};
use concord_client::{
    AbortCause, Client, ClientError, Submitted, Transaction, TransactionInfo, TxnMode, TxnState,
};
use concord_core::limits;
use concord_core::types::{Expect, Operation, Outcome, Vote};
use serde::Deserialize;
use serde_json::{Value, json};

/// Exit code of `submit` when the transaction committed.
const EXIT_COMMITTED: u8 = 0;
/// Exit code of `submit` when it aborted or was refused.
const EXIT_ABORTED: u8 = 1;
/// Exit code of `submit` when the outcome is unknown.
const EXIT_UNKNOWN: u8 = 2;
/// The largest transaction file read: the largest transaction with room for JSON's overhead.
const MAX_FILE_BYTES: u64 = (limits::MAX_TXN_PAYLOAD_BYTES as u64) * 4;
/// The most transactions `list --limit` prints.
const MAX_LIST_LIMIT: u32 = 100_000;

/// The coordinator to talk to.
#[derive(Args, Debug)]
struct CoordinatorFlag {
    /// The coordinator's address.
    #[arg(
        long,
        env = "CONCORD_COORDINATOR",
        default_value = "127.0.0.1:7100",
        value_name = "HOST:PORT"
    )]
    coordinator: String,
}

const SUBMIT_HELP: &str = "\
Operations for one participant form one branch, applied in the order given on the command line.
Keys and values are UTF-8 strings; counters are 8-byte big-endian integers.

Transaction file (--file FILE, or --file - for stdin), JSON:
  {
    \"txn_id\": \"order-42\",          (optional; default a fresh UUID)
    \"timeout_ms\": 2000,             (optional; default the coordinator's)
    \"branches\": [
      {\"participant\": \"alpha\", \"operations\": [
        {\"put\": {\"key\": \"k\", \"value\": \"v\"}},
        {\"delete\": {\"key\": \"k2\"}},
        {\"counter_add\": {\"key\": \"acct-1\", \"delta\": -5, \"lower_bound\": 0, \"upper_bound\": 100}},
        {\"check\": {\"key\": \"k3\", \"version\": 7}},
        {\"check\": {\"key\": \"k4\", \"value\": \"expected\"}},
        {\"check\": {\"key\": \"k5\", \"absent\": true}}
      ]}
    ]
  }
  lower_bound and upper_bound are optional; a check sets exactly one of version, value, absent.
  --txn-id and --timeout-ms override the file's values.

Exit status: 0 committed, 1 aborted (the cause is printed) or refused, 2 outcome unknown (the
transaction id, its first-submission time and the `concord get` command to ask are printed; to
retry, repeat the command with the same --txn-id and --first-submitted-unix-ms), 64 bad usage.

Examples:
  concord submit --add alpha:acct-1=-10:0 --add beta:acct-2=10
  concord submit --put alpha:greeting=hello --delete beta:old-key --txn-id order-42
  concord submit --file tx.json --json";

/// The flags of `concord submit` as clap sees them; [`SubmitArgs`] adds the operations in
/// command-line order, which clap's derive cannot express.
#[derive(Args, Debug)]
#[command(after_long_help = SUBMIT_HELP)]
struct SubmitFlags {
    #[command(flatten)]
    coordinator: CoordinatorFlag,
    /// The transaction id, its idempotency key: 1 to 128 of [A-Za-z0-9._:-]. Default: a UUID.
    #[arg(long, value_name = "ID")]
    txn_id: Option<String>,
    /// How long the coordinator may take to decide, in ms (0: its default; at most 60000).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u32).range(0..=60_000))]
    timeout_ms: Option<u32>,
    /// When this transaction was first submitted (ms since the Unix epoch), when retrying an
    /// --txn-id whose outcome was unknown: printed by the first attempt. Default: now.
    #[arg(long, value_name = "UNIX_MS")]
    first_submitted_unix_ms: Option<u64>,
    /// Set KEY to VALUE on PARTICIPANT (the first '=' separates key and value). Repeatable.
    #[arg(long, value_name = "PARTICIPANT:KEY=VALUE", value_parser = parse_put)]
    put: Vec<OperationFlag>,
    /// Remove KEY on PARTICIPANT. Repeatable.
    #[arg(long, value_name = "PARTICIPANT:KEY", value_parser = parse_delete)]
    delete: Vec<OperationFlag>,
    /// Add DELTA to the counter KEY; the vote is NO if the result leaves [MIN, MAX] (either may
    /// be empty: no bound). The last '=' separates key and numbers. Repeatable.
    #[arg(long, value_name = "PARTICIPANT:KEY=DELTA[:MIN[:MAX]]", value_parser = parse_add)]
    add: Vec<OperationFlag>,
    /// How the coordinator runs the branches: two-phase (every participant prepares), saga
    /// (each branch executes at once and is compensated if a later one fails; no isolation), or
    /// auto (two-phase where the participant can prepare, saga steps elsewhere).
    #[arg(long, value_enum, default_value = "two-phase")]
    mode: ModeArg,
    /// Saga ordering: STEP runs only after AFTER executed (participant names; AFTER's branch
    /// named first). Without any, saga steps run one after another in branch order. Repeatable.
    #[arg(long, value_name = "STEP:AFTER", value_parser = parse_dependency)]
    after: Vec<(String, String)>,
    /// Read the transaction from a JSON file ('-' for stdin); see the format below (--help).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["put", "delete", "add"])]
    file: Option<PathBuf>,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

/// Flags of `concord submit`, with the operations from `--put`, `--delete` and `--add` in the
/// order they appeared (within a branch, later operations see earlier ones' effects).
#[derive(Debug)]
pub struct SubmitArgs {
    /// Everything clap parsed.
    flags: SubmitFlags,
    /// The operation flags, merged into command-line order.
    operations: Vec<OperationFlag>,
}

impl FromArgMatches for SubmitArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<SubmitArgs, clap::Error> {
        let flags = SubmitFlags::from_arg_matches(matches)?;
        let mut ordered: Vec<(usize, OperationFlag)> = Vec::new();
        for (id, values) in [("put", &flags.put), ("delete", &flags.delete), ("add", &flags.add)] {
            if let Some(indices) = matches.indices_of(id) {
                ordered.extend(indices.zip(values.iter().cloned()));
            }
        }
        ordered.sort_by_key(|(index, _)| *index);
        let operations = ordered.into_iter().map(|(_, operation)| operation).collect();
        Ok(SubmitArgs { flags, operations })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = SubmitArgs::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for SubmitArgs {
    fn augment_args(command: clap::Command) -> clap::Command {
        SubmitFlags::augment_args(command)
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        SubmitFlags::augment_args_for_update(command)
    }
}

/// One operation from the command line, for one participant.
#[derive(Clone, Debug)]
struct OperationFlag {
    participant: String,
    operation: Operation,
}

/// Splits `PARTICIPANT:REST` at the first ':'.
fn split_participant(text: &str) -> Result<(&str, &str), String> {
    let (participant, rest) = text
        .split_once(':')
        .ok_or_else(|| "expected PARTICIPANT:... (no ':' after the participant)".to_string())?;
    if participant.is_empty() {
        return Err("the participant name before ':' is empty".to_string());
    }
    Ok((participant, rest))
}

fn non_empty_key(key: &str) -> Result<Vec<u8>, String> {
    if key.is_empty() {
        return Err("the key is empty".to_string());
    }
    Ok(key.as_bytes().to_vec())
}

fn parse_put(text: &str) -> Result<OperationFlag, String> {
    let (participant, rest) = split_participant(text)?;
    let (key, value) = rest
        .split_once('=')
        .ok_or_else(|| "expected PARTICIPANT:KEY=VALUE (no '=' after the key)".to_string())?;
    Ok(OperationFlag {
        participant: participant.to_string(),
        operation: Operation::Put { key: non_empty_key(key)?, value: value.as_bytes().to_vec() },
    })
}

fn parse_delete(text: &str) -> Result<OperationFlag, String> {
    let (participant, key) = split_participant(text)?;
    Ok(OperationFlag {
        participant: participant.to_string(),
        operation: Operation::Delete { key: non_empty_key(key)? },
    })
}

fn parse_add(text: &str) -> Result<OperationFlag, String> {
    let (participant, rest) = split_participant(text)?;
    let (key, numbers) = rest.rsplit_once('=').ok_or_else(|| {
        "expected PARTICIPANT:KEY=DELTA[:MIN[:MAX]] (no '=' after the key)".to_string()
    })?;
    let parts: Vec<&str> = numbers.split(':').collect();
    if parts.len() > 3 {
        return Err(format!("expected DELTA[:MIN[:MAX]] after '=', got {numbers:?}"));
    }
    let number = |name: &str, text: &str| -> Result<Option<i64>, String> {
        if text.is_empty() {
            return Ok(None);
        }
        text.parse::<i64>()
            .map(Some)
            .map_err(|error| format!("{name} {text:?} is not a 64-bit integer: {error}"))
    };
    let delta = number("DELTA", parts[0])?.ok_or_else(|| "DELTA is missing".to_string())?;
    let lower_bound = number("MIN", parts.get(1).copied().unwrap_or(""))?;
    let upper_bound = number("MAX", parts.get(2).copied().unwrap_or(""))?;
    if let (Some(lower), Some(upper)) = (lower_bound, upper_bound)
        && lower > upper
    {
        return Err(format!("MIN {lower} is above MAX {upper}"));
    }
    Ok(OperationFlag {
        participant: participant.to_string(),
        operation: Operation::CounterAdd {
            key: non_empty_key(key)?,
            delta,
            lower_bound,
            upper_bound,
        },
    })
}

/// The JSON transaction file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnFile {
    #[serde(default)]
    txn_id: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u32>,
    branches: Vec<BranchFile>,
}

/// One branch in the JSON transaction file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BranchFile {
    participant: String,
    operations: Vec<OperationFile>,
}

/// One operation in the JSON transaction file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum OperationFile {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    CounterAdd {
        key: String,
        delta: i64,
        #[serde(default)]
        lower_bound: Option<i64>,
        #[serde(default)]
        upper_bound: Option<i64>,
    },
    Check {
        key: String,
        #[serde(default)]
        version: Option<u64>,
        #[serde(default)]
        value: Option<String>,
        #[serde(default)]
        absent: Option<bool>,
    },
}

impl OperationFile {
    fn into_operation(self, field: &str) -> anyhow::Result<Operation> {
        Ok(match self {
            OperationFile::Put { key, value } => {
                Operation::Put { key: key.into_bytes(), value: value.into_bytes() }
            }
            OperationFile::Delete { key } => Operation::Delete { key: key.into_bytes() },
            OperationFile::CounterAdd { key, delta, lower_bound, upper_bound } => {
                Operation::CounterAdd { key: key.into_bytes(), delta, lower_bound, upper_bound }
            }
            OperationFile::Check { key, version, value, absent } => {
                let expect = match (version, value, absent) {
                    (Some(version), None, None | Some(false)) => Expect::Version(version),
                    (None, Some(value), None | Some(false)) => Expect::Value(value.into_bytes()),
                    (None, None, Some(true)) => Expect::Absent,
                    _ => anyhow::bail!(
                        "{field}.check: set exactly one of \"version\", \"value\" or \
                         \"absent\": true"
                    ),
                };
                Operation::Check { key: key.into_bytes(), expect }
            }
        })
    }
}

/// Parses a transaction file's text.
fn parse_txn_file(text: &str) -> anyhow::Result<Transaction> {
    let file: TxnFile = serde_json::from_str(text)?;
    let mut txn = Transaction::new();
    if let Some(txn_id) = file.txn_id {
        txn = txn.with_txn_id(txn_id);
    }
    if let Some(timeout_ms) = file.timeout_ms {
        txn = txn.with_timeout_ms(timeout_ms);
    }
    let mut named: Vec<String> = Vec::new();
    for (index, branch) in file.branches.into_iter().enumerate() {
        if named.contains(&branch.participant) {
            anyhow::bail!(
                "branches[{index}].participant: {:?} appears twice; one branch per participant",
                branch.participant
            );
        }
        named.push(branch.participant.clone());
        let mut operations = Vec::with_capacity(branch.operations.len());
        for (op_index, operation) in branch.operations.into_iter().enumerate() {
            operations.push(
                operation.into_operation(&format!("branches[{index}].operations[{op_index}]"))?,
            );
        }
        txn = txn.with_branch(branch.participant, operations);
    }
    Ok(txn)
}

/// Reads a transaction file (or stdin for `-`), refusing anything larger than any valid
/// transaction could be.
fn read_txn_file(path: &std::path::Path) -> anyhow::Result<Transaction> {
    let mut text = String::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().lock().take(MAX_FILE_BYTES + 1).read_to_string(&mut text)
    } else {
        std::fs::File::open(path)
            .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
    };
    let name =
        if path.as_os_str() == "-" { "stdin".to_string() } else { path.display().to_string() };
    read.with_context(|| format!("--file: reading {name}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        anyhow::bail!("--file: {name} is larger than {MAX_FILE_BYTES} bytes");
    }
    parse_txn_file(&text).with_context(|| format!("--file: {name} is not valid"))
}

/// Builds the transaction the flags describe.
fn transaction_from_args(args: &SubmitArgs) -> anyhow::Result<Transaction> {
    let mut txn = match &args.flags.file {
        Some(path) => read_txn_file(path)?,
        None => {
            if args.operations.is_empty() {
                anyhow::bail!("nothing to submit: give --put, --delete or --add, or --file");
            }
            let mut txn = Transaction::new();
            for flag in &args.operations {
                txn.push_operation(&flag.participant, flag.operation.clone());
            }
            txn
        }
    };
    if let Some(txn_id) = &args.flags.txn_id {
        txn = txn.with_txn_id(txn_id.clone());
    }
    if let Some(timeout_ms) = args.flags.timeout_ms {
        txn = txn.with_timeout_ms(timeout_ms);
    }
    if let Some(first_submitted) = args.flags.first_submitted_unix_ms {
        txn = txn.with_first_submitted_unix_ms(first_submitted);
    }
    txn = txn.with_mode(match args.flags.mode {
        ModeArg::TwoPhase => TxnMode::TwoPhase,
        ModeArg::Saga => TxnMode::Saga,
        ModeArg::Auto => TxnMode::Auto,
    });
    for (step, after) in &args.flags.after {
        txn = txn.with_dependency(step.clone(), after.clone());
    }
    txn.validate().context("the transaction is not valid")?;
    Ok(txn)
}

/// Submits a transaction and prints its outcome.
#[allow(clippy::print_stdout)]
pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let txn = transaction_from_args(&args)?;
    let address = &args.flags.coordinator.coordinator;
    let client = Client::connect(address)?;
    match client.submit(&txn).await {
        Ok(submitted) => {
            if args.flags.json {
                println!("{}", pretty(&submitted_json(&submitted)));
            } else {
                print_submitted(&submitted, address);
            }
            Ok(ExitCode::from(match submitted.outcome {
                Outcome::Committed => EXIT_COMMITTED,
                Outcome::Aborted => EXIT_ABORTED,
                Outcome::Pending => EXIT_UNKNOWN,
            }))
        }
        Err(error) if error.is_outcome_unknown() => {
            let txn_id = error.txn_id().unwrap_or("?").to_string();
            let first_submitted = txn.first_submitted_unix_ms();
            let ask = format!(
                "{} --fence-unknown --first-submitted-unix-ms {first_submitted}",
                ask_command(&txn_id, address)
            );
            if args.flags.json {
                println!(
                    "{}",
                    pretty(&json!({
                        "txn_id": txn_id,
                        "outcome": "unknown",
                        "first_submitted_unix_ms": first_submitted,
                        "error": error.to_string(),
                        "ask": ask,
                    }))
                );
            } else {
                let why = match &error {
                    ClientError::Unknown { cause, message, .. } => format!("{cause}: {message}"),
                    other => other.to_string(),
                };
                println!("unknown    txn {txn_id}: no answer from the coordinator at {address}");
                println!("           ({why})");
                println!("The transaction may or may not have committed. Ask with:");
                println!("  {ask}");
                println!("(--fence-unknown makes an id the coordinator never saw abort for good)");
            }
            Ok(ExitCode::from(EXIT_UNKNOWN))
        }
        Err(error) => {
            Err(anyhow::Error::new(error).context(format!("the coordinator at {address}")))
        }
    }
}

/// The command that asks for `txn_id`'s outcome.
fn ask_command(txn_id: &str, address: &str) -> String {
    format!("concord get {txn_id} --coordinator {address}")
}

#[allow(clippy::print_stdout)]
fn print_submitted(submitted: &Submitted, address: &str) {
    let state = submitted.state.map_or("unknown", TxnState::as_str);
    match submitted.outcome {
        Outcome::Committed => println!("committed  txn {}  (state {state})", submitted.txn_id),
        Outcome::Aborted => {
            let cause = submitted
                .abort
                .as_ref()
                .map_or_else(|| "no cause given".to_string(), AbortCause::to_string);
            println!("aborted    txn {}: {cause}", submitted.txn_id);
        }
        Outcome::Pending => {
            println!("pending    txn {}: the coordinator is still deciding", submitted.txn_id);
            println!("Ask later with:\n  {}", ask_command(&submitted.txn_id, address));
        }
    }
}

/// Flags of `concord get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// The transaction id.
    #[arg(value_name = "TXN_ID")]
    txn_id: String,
    /// If the coordinator never saw this id, record it as aborted first, so a submit still in
    /// flight can never commit: turns an unknown outcome into a definite one.
    #[arg(long)]
    fence_unknown: bool,
    /// With --fence-unknown: when the id was first submitted (ms since the Unix epoch, as
    /// `concord submit` printed). A coordinator that has forgotten old transactions fences only
    /// ids submitted after them.
    #[arg(long, value_name = "UNIX_MS", requires = "fence_unknown")]
    first_submitted_unix_ms: Option<u64>,
    #[command(flatten)]
    coordinator: CoordinatorFlag,
    /// Print the transaction as JSON.
    #[arg(long)]
    json: bool,
}

/// Prints one transaction.
#[allow(clippy::print_stdout)]
pub async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect(&args.coordinator.coordinator)?;
    let answer = if args.fence_unknown {
        client.fence(&args.txn_id, args.first_submitted_unix_ms.unwrap_or(0)).await
    } else {
        client.get(&args.txn_id, false).await
    };
    let info = match answer {
        Ok(info) => info,
        Err(ClientError::Rejected { kind: concord_client::RejectKind::NotFound, message }) => {
            anyhow::bail!(
                "{message}\n(--fence-unknown records an unknown id as aborted, so it can never \
                 commit)"
            )
        }
        Err(ClientError::Unknown { cause, message, .. }) => {
            anyhow::bail!(
                "no answer from the coordinator at {} ({cause}: {message}); try again",
                args.coordinator.coordinator
            )
        }
        Err(error) => {
            return Err(anyhow::Error::new(error)
                .context(format!("asking the coordinator at {}", args.coordinator.coordinator)));
        }
    };
    if args.json {
        println!("{}", pretty(&transaction_json(&info)));
    } else {
        print_transaction(&info);
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)]
fn print_transaction(info: &TransactionInfo) {
    println!("txn_id    {}", info.txn_id);
    println!("outcome   {}", outcome_str(info.outcome));
    println!("state     {}", info.state.map_or("unknown", TxnState::as_str));
    if let Some(cause) = &info.abort {
        println!("abort     {cause}");
    }
    println!("mode      {}", info.mode.map_or("unknown", |mode| mode.as_str()));
    println!("epoch     {}", info.epoch);
    for (label, at) in [
        ("created ", info.created_unix_ms),
        ("decided ", info.decided_unix_ms),
        ("finished", info.finished_unix_ms),
    ] {
        println!("{label}  {}", at.map_or_else(|| "-".to_string(), format_unix_ms));
    }
    if info.branches.is_empty() {
        return;
    }
    let width = info.branches.iter().map(|b| b.participant.len()).max().unwrap_or(0).max(11);
    println!("branches");
    if info.branches.iter().any(|b| b.saga_step) {
        println!("  (* a saga step: executed at once, compensated if the transaction aborts)");
    }
    println!(
        "  {:<width$}  {:<15}  {:<9}  {:<8}  DETAIL",
        "PARTICIPANT", "STATE", "VOTE", "ATTEMPTS"
    );
    for branch in &info.branches {
        let (vote, mut detail) = match &branch.vote {
            None => ("-", String::new()),
            Some(Vote::Yes) => ("yes", String::new()),
            Some(Vote::ReadOnly) => ("read_only", String::new()),
            Some(Vote::No { reason, message }) => {
                ("no", format!("{}: {message}", no_reason_str(*reason)))
            }
        };
        if let Some(error) = &branch.last_error {
            if !detail.is_empty() {
                detail.push_str("; ");
            }
            detail.push_str("last error: ");
            detail.push_str(error);
        }
        println!(
            "  {:<width$}  {:<15}  {:<9}  {:<8}  {detail}",
            branch.participant,
            match (branch.state.map_or("unknown", |state| state.as_str()), branch.saga_step) {
                (state, true) => format!("{state}*"),
                (state, false) => state.to_string(),
            },
            vote,
            branch.delivery_attempts,
        );
    }
}

/// Which modes `concord submit --mode` accepts.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ModeArg {
    TwoPhase,
    Saga,
    Auto,
}

/// Parses `STEP:AFTER`.
fn parse_dependency(text: &str) -> Result<(String, String), String> {
    let (step, after) = split_participant(text)?;
    if after.is_empty() {
        return Err("the participant after ':' is empty".to_string());
    }
    Ok((step.to_string(), after.to_string()))
}

/// Which states `concord list --state` accepts.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum StateArg {
    Preparing,
    Committing,
    Committed,
    Aborted,
    Executing,
    Compensating,
    NeedsAttention,
    Open,
}

impl From<StateArg> for TxnState {
    fn from(state: StateArg) -> TxnState {
        match state {
            StateArg::Preparing => TxnState::Preparing,
            StateArg::Committing => TxnState::Committing,
            StateArg::Committed => TxnState::Committed,
            StateArg::Aborted => TxnState::Aborted,
            StateArg::Executing => TxnState::Executing,
            StateArg::Compensating => TxnState::Compensating,
            StateArg::NeedsAttention => TxnState::NeedsAttention,
            StateArg::Open => TxnState::Open,
        }
    }
}

/// Flags of `concord list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only transactions in this state.
    #[arg(long, value_enum)]
    state: Option<StateArg>,
    /// Print at most this many transactions.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LIST_LIMIT)))]
    limit: u32,
    #[command(flatten)]
    coordinator: CoordinatorFlag,
    /// Print the transactions as JSON.
    #[arg(long)]
    json: bool,
}

/// Lists transactions as a table (or JSON).
#[allow(clippy::print_stdout)]
pub async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect(&args.coordinator.coordinator)?;
    let state = args.state.map(TxnState::from);
    let limit = args.limit as usize;
    let mut transactions: Vec<TransactionInfo> = Vec::new();
    let mut token = String::new();
    let mut more = false;
    // Each page holds at least one transaction or ends the listing, so `limit` pages suffice.
    for _ in 0..limit {
        let page_size = (limit - transactions.len()).min(limits::MAX_PAGE_SIZE);
        let page = client
            .list(state, u32::try_from(page_size).unwrap_or(u32::MAX), &token)
            .await
            .with_context(|| {
            format!("listing transactions at the coordinator at {}", args.coordinator.coordinator)
        })?;
        transactions.extend(page.transactions);
        match page.next_page_token {
            Some(next) if next != token => {
                if transactions.len() >= limit {
                    more = true;
                    break;
                }
                token = next;
            }
            Some(_) => anyhow::bail!("the coordinator returned the same page token twice"),
            None => break,
        }
    }
    if transactions.len() > limit {
        transactions.truncate(limit);
        more = true;
    }
    if args.json {
        let items: Vec<Value> = transactions.iter().map(transaction_json).collect();
        println!("{}", pretty(&json!({ "transactions": items, "more": more })));
        return Ok(ExitCode::SUCCESS);
    }
    if transactions.is_empty() {
        println!("no transactions{}", state.map(|s| format!(" in state {s}")).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    let now_ms = now_unix_ms();
    let id_width = transactions.iter().map(|t| t.txn_id.len()).max().unwrap_or(0).max(6);
    let rows: Vec<(String, String)> = transactions
        .iter()
        .map(|info| {
            let participants: Vec<&str> =
                info.branches.iter().map(|branch| branch.participant.as_str()).collect();
            let age = info.created_unix_ms.map_or_else(|| "-".to_string(), |at| age(now_ms, at));
            (participants.join(","), age)
        })
        .collect();
    let participants_width = rows.iter().map(|(p, _)| p.len()).max().unwrap_or(0).max(12);
    println!(
        "{:<id_width$}  {:<10}  {:<9}  {:<participants_width$}  {:>5}  ABORT",
        "TXN ID", "STATE", "OUTCOME", "PARTICIPANTS", "AGE"
    );
    for (info, (participants, age)) in transactions.iter().zip(&rows) {
        println!(
            "{:<id_width$}  {:<10}  {:<9}  {:<participants_width$}  {:>5}  {}",
            info.txn_id,
            info.state.map_or("unknown", TxnState::as_str),
            outcome_str(info.outcome),
            participants,
            age,
            info.abort.as_ref().map(AbortCause::to_string).unwrap_or_default(),
        );
    }
    if more {
        println!("(more transactions than --limit {limit}; raise it to see them)");
    }
    Ok(ExitCode::SUCCESS)
}

fn pretty(value: &Value) -> String {
    // Serializing a `Value` cannot fail (its map keys are strings); fall back to compact form.
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn abort_json(cause: &AbortCause) -> Value {
    json!({
        "kind": cause.kind.as_str(),
        "participant": cause.participant,
        "vote_reason": cause.vote_reason.map(no_reason_str),
        "message": cause.message,
    })
}

fn submitted_json(submitted: &Submitted) -> Value {
    json!({
        "txn_id": submitted.txn_id,
        "outcome": outcome_str(submitted.outcome),
        "state": submitted.state.map(TxnState::as_str),
        "abort": submitted.abort.as_ref().map(abort_json),
    })
}

fn transaction_json(info: &TransactionInfo) -> Value {
    let branches: Vec<Value> = info
        .branches
        .iter()
        .map(|branch| {
            let (vote, reason, message) = match &branch.vote {
                None => (None, None, None),
                Some(Vote::Yes) => (Some("yes"), None, None),
                Some(Vote::ReadOnly) => (Some("read_only"), None, None),
                Some(Vote::No { reason, message }) => {
                    (Some("no"), Some(no_reason_str(*reason)), Some(message.as_str()))
                }
            };
            json!({
                "participant": branch.participant,
                "state": branch.state.map(|state| state.as_str()),
                "vote": vote,
                "vote_reason": reason,
                "vote_message": message,
                "delivery_attempts": branch.delivery_attempts,
                "last_error": branch.last_error,
            })
        })
        .collect();
    json!({
        "txn_id": info.txn_id,
        "outcome": outcome_str(info.outcome),
        "state": info.state.map(TxnState::as_str),
        "abort": info.abort.as_ref().map(abort_json),
        "mode": info.mode.map(|mode| mode.as_str()),
        "epoch": info.epoch,
        "created_unix_ms": info.created_unix_ms,
        "decided_unix_ms": info.decided_unix_ms,
        "finished_unix_ms": info.finished_unix_ms,
        "branches": branches,
    })
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

/// How long ago `at_ms` was, in the largest whole unit: `12s`, `3m`, `5h`, `2d`.
fn age(now_ms: u64, at_ms: u64) -> String {
    let seconds = now_ms.saturating_sub(at_ms) / 1000;
    match seconds {
        0 => "<1s".to_string(),
        1..60 => format!("{seconds}s"),
        60..3_600 => format!("{}m", seconds / 60),
        3_600..86_400 => format!("{}h", seconds / 3_600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// A Unix time in milliseconds as RFC 3339 UTC (`2024-05-01T12:00:00.123Z`), computed by hand
/// (Howard Hinnant's days-to-civil algorithm) to avoid a date crate.
fn format_unix_ms(unix_ms: u64) -> String {
    let millis = unix_ms % 1000;
    let seconds = unix_ms / 1000;
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    // u64 days since 1970 fit in i64 for any time a clock can report.
    let z = i64::try_from(days).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3_600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct TestCli {
        #[command(flatten)]
        args: SubmitArgs,
    }

    fn parse(args: &[&str]) -> Result<SubmitArgs, clap::Error> {
        TestCli::try_parse_from(std::iter::once("submit").chain(args.iter().copied()))
            .map(|cli| cli.args)
    }

    /// Operation flags keep their command-line order across kinds, per participant.
    #[test]
    fn operation_flags_keep_command_line_order() {
        let args = parse(&[
            "--add",
            "alpha:c=5",
            "--put",
            "alpha:k=v=w",
            "--delete",
            "beta:gone",
            "--add",
            "alpha:c=-2:0:10",
        ])
        .unwrap();
        let txn = transaction_from_args(&args).unwrap();
        let branches = txn.branches();
        assert_eq!(branches.len(), 2);
        assert_eq!(branches[0].0, "alpha");
        assert_eq!(
            branches[0].1,
            vec![
                Operation::CounterAdd {
                    key: b"c".to_vec(),
                    delta: 5,
                    lower_bound: None,
                    upper_bound: None
                },
                Operation::Put { key: b"k".to_vec(), value: b"v=w".to_vec() },
                Operation::CounterAdd {
                    key: b"c".to_vec(),
                    delta: -2,
                    lower_bound: Some(0),
                    upper_bound: Some(10)
                },
            ]
        );
        assert_eq!(branches[1].1, vec![Operation::Delete { key: b"gone".to_vec() }]);
    }

    /// Malformed operation flags are refused with an error that names the flag.
    #[test]
    fn bad_operation_flags_name_the_flag() {
        for (flag, value) in [
            ("--put", "alpha-no-colon"),
            ("--put", "alpha:no-equals"),
            ("--put", ":k=v"),
            ("--delete", "alpha:"),
            ("--add", "alpha:k=x"),
            ("--add", "alpha:k=1:5:2"),
            ("--add", "alpha:k=1:0:9:9"),
        ] {
            let error = parse(&[flag, value]).expect_err(value).to_string();
            assert!(error.contains(flag), "{value}: {error}");
        }
        let add = parse_add("alpha:a:b=3::7").unwrap();
        assert_eq!(add.participant, "alpha");
        assert_eq!(
            add.operation,
            Operation::CounterAdd {
                key: b"a:b".to_vec(),
                delta: 3,
                lower_bound: None,
                upper_bound: Some(7)
            }
        );
    }

    /// A transaction file with every operation kind parses; a bad check names its field.
    #[test]
    fn transaction_files_parse() {
        let txn = parse_txn_file(
            r#"{"txn_id": "t-1", "timeout_ms": 900, "branches": [
                {"participant": "alpha", "operations": [
                    {"put": {"key": "k", "value": "v"}},
                    {"delete": {"key": "d"}},
                    {"counter_add": {"key": "c", "delta": -1, "lower_bound": 0}},
                    {"check": {"key": "x", "version": 3}},
                    {"check": {"key": "y", "value": "z"}},
                    {"check": {"key": "w", "absent": true}}
                ]}]}"#,
        )
        .unwrap();
        assert_eq!(txn.txn_id(), Some("t-1"));
        assert_eq!(txn.timeout_ms(), Some(900));
        assert_eq!(txn.branches()[0].1.len(), 6);
        assert_eq!(
            txn.branches()[0].1[5],
            Operation::Check { key: b"w".to_vec(), expect: Expect::Absent }
        );
        let two = r#"{"branches": [{"participant": "a", "operations": [
            {"check": {"key": "x", "version": 3, "absent": true}}]}]}"#;
        let error = format!("{:#}", parse_txn_file(two).unwrap_err());
        assert!(error.contains("branches[0].operations[0].check"), "{error}");
        let unknown = r#"{"branches": [], "extra": 1}"#;
        assert!(parse_txn_file(unknown).is_err());
        let typo = r#"{"branches": [{"participant": "a", "operations": [{"putt": {}}]}]}"#;
        assert!(parse_txn_file(typo).is_err());
    }

    /// Flags and a file cannot be mixed; an empty submit is refused.
    #[test]
    fn submit_needs_exactly_one_source() {
        assert!(parse(&["--file", "tx.json", "--put", "a:k=v"]).is_err());
        let nothing = parse(&[]).unwrap();
        assert!(transaction_from_args(&nothing).is_err());
    }

    /// Timestamps format as RFC 3339 UTC, including leap days.
    #[test]
    fn timestamps_format_as_rfc3339() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_unix_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_unix_ms(1_714_564_800_000), "2024-05-01T12:00:00.000Z");
        assert_eq!(age(10_000, 9_500), "<1s");
        assert_eq!(age(200_000, 0), "3m");
    }
}
