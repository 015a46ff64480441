//! A payment-gateway stand-in written with the participant SDK (`concord_participant::sdk`):
//! a service that can only do and undo — charge and refund — never prepare. The coordinator
//! runs its branches as saga steps (mode SAGA, or AUTO after its Prepare answers
//! UNIMPLEMENTED).
//!
//! Its "external system" is a ledger of account balances kept in `ledger.json` in its data
//! directory, rewritten atomically after every change. A branch for it is a list of
//! `CounterAdd` operations: each moves `delta` on the account `key`, and a result below
//! `lower_bound` is declined (the step fails and the saga compensates the steps before it).
//! Charges are idempotent per transaction id, as real gateways' idempotency keys are: the
//! ledger remembers which transactions it charged and refunded. It answers `Get` with an
//! account's balance as an 8-byte counter, so the chaos checker can read it like any store.
//!
//! Run it: `cargo run --example payment_gateway -- --listen 127.0.0.1:7200 --data-dir gw`;
//! `concord payment-gateway` runs the same code (the chaos harness and tests use that).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use concord_core::types::{NoReason, Operation, TxnId, counter};
use concord_participant::sdk::{Resource, ResourceError, SdkConfig};
use concord_wal::{FileWal, FileWalOptions};

/// Flags of the payment gateway.
#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Address to serve the participant API on (127.0.0.1:0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7200")]
    pub listen: String,
    /// Directory for the SDK's write-ahead log (`wal/`) and the ledger (`ledger.json`).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The participant's name, as the coordinator knows it.
    #[arg(long, default_value = "gateway")]
    pub name: String,
}

/// The ledger: balances and which transactions charged (and were refunded).
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Ledger {
    balances: BTreeMap<String, i64>,
    /// Transaction id → the (account, delta) pairs it charged.
    charged: BTreeMap<String, Vec<(String, i64)>>,
    refunded: BTreeSet<String>,
}

/// The gateway: a ledger file behind a lock.
pub struct Gateway {
    path: PathBuf,
    ledger: Mutex<Ledger>,
}

impl Gateway {
    /// Opens (or creates) the ledger in `data_dir`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Gateway> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let path = data_dir.join("ledger.json");
        let ledger = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading the ledger {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ledger::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Gateway { path, ledger: Mutex::new(ledger) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        match self.ledger.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Writes the ledger durably: a temporary file, synced, renamed over the old one.
    fn persist(&self, ledger: &Ledger) -> Result<(), ResourceError> {
        let write = || -> std::io::Result<()> {
            let temporary = self.path.with_extension("json.tmp");
            let bytes = serde_json::to_vec(ledger).map_err(std::io::Error::other)?;
            let mut file = std::fs::File::create(&temporary)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| ResourceError::Unavailable(format!("the ledger: {e}")))
    }
}

/// The account and delta of each operation: a gateway only moves money.
fn charges(operations: &[Operation]) -> Result<Vec<(String, i64, Option<i64>)>, ResourceError> {
    operations
        .iter()
        .map(|operation| match operation {
            Operation::CounterAdd { key, delta, lower_bound, .. } => {
                Ok((String::from_utf8_lossy(key).into_owned(), *delta, *lower_bound))
            }
            _ => Err(ResourceError::Refused {
                reason: NoReason::Invalid,
                message: "the payment gateway only takes counter_add operations".into(),
            }),
        })
        .collect()
}

#[tonic::async_trait]
impl Resource for Gateway {
    async fn execute(&self, txn: &TxnId, operations: &[Operation]) -> Result<(), ResourceError> {
        let charges = charges(operations)?;
        let mut ledger = self.lock();
        if ledger.charged.contains_key(txn.as_str()) {
            return Ok(()); // the idempotency key: charged already
        }
        let mut balances = ledger.balances.clone();
        for (account, delta, lower_bound) in &charges {
            let balance = balances.entry(account.clone()).or_insert(0);
            let next = balance.checked_add(*delta).ok_or_else(|| ResourceError::Refused {
                reason: NoReason::BoundCrossed,
                message: format!("account {account}: overflow"),
            })?;
            if lower_bound.is_some_and(|lower| next < lower) {
                return Err(ResourceError::Refused {
                    reason: NoReason::BoundCrossed,
                    message: format!("declined: account {account} holds {balance}, not {}", -delta),
                });
            }
            *balance = next;
        }
        ledger.balances = balances;
        ledger.charged.insert(
            txn.to_string(),
            charges.into_iter().map(|(account, delta, _)| (account, delta)).collect(),
        );
        self.persist(&ledger)
    }

    async fn compensate(&self, txn: &TxnId, _: &[Operation]) -> Result<(), ResourceError> {
        let mut ledger = self.lock();
        if ledger.refunded.contains(txn.as_str()) {
            return Ok(());
        }
        // Never charged (the Execute was interrupted before it took effect): nothing to undo.
        let Some(charged) = ledger.charged.get(txn.as_str()).cloned() else { return Ok(()) };
        for (account, delta) in charged {
            *ledger.balances.entry(account).or_insert(0) -= delta;
        }
        ledger.refunded.insert(txn.to_string());
        self.persist(&ledger)
    }

    fn reads(&self) -> bool {
        true
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ResourceError> {
        let account = String::from_utf8_lossy(key);
        Ok(self.lock().balances.get(account.as_ref()).map(|balance| counter::encode(*balance)))
    }
}

/// Serves the gateway until Ctrl-C/SIGTERM (or standard input closing, when
/// `stop_on_stdin_eof`).
pub async fn run(
    args: GatewayArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let gateway = Arc::new(Gateway::open(&args.data_dir)?);
    let wal = FileWal::open(&args.data_dir.join("wal"), FileWalOptions::default())
        .with_context(|| format!("opening the log in {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {address}")?;
        stdout.flush()?;
    }
    let config = SdkConfig { name: args.name.clone(), ..SdkConfig::default() };
    concord_participant::sdk::serve_resource(
        concord_proto::net::incoming(listener),
        shutdown,
        gateway,
        wal,
        config,
    )
    .await?;
    Ok(())
}

/// The example's own entry point (`cargo run --example payment_gateway -- --help`).
#[allow(dead_code)]
fn main() -> anyhow::Result<()> {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        gateway: GatewayArgs,
    }
    let cli = <Cli as clap::Parser>::parse();
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(cli.gateway, async {
        let _ = tokio::signal::ctrl_c().await;
    }))
}
