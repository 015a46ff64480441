//! The termination protocol: a participant that voted YES never decides alone (rule 3), so
//! in-doubt branches ask the coordinator for the outcome with `ResolveTransaction` and apply the
//! answer, retrying with bounded exponential backoff until answered.
//!
//! Which branches ask: every branch recovered from the log at start (its coordinator may have
//! decided while this process was down), and any other branch once its Prepare deadline has
//! passed (by then the coordinator has decided, or it presumes abort). Until then the
//! coordinator's own Commit or Abort normally arrives first.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use concord_core::types::{Outcome, TxnId};
use concord_proto::v1::coordinator_client::CoordinatorClient;
use concord_proto::{convert, net, v1};
use concord_wal::Wal;
use tokio::time::Instant;

use crate::node::{Node, NodeError};
use crate::store::Store;

/// How the resolver runs.
#[derive(Clone, Debug)]
pub struct ResolverConfig {
    /// The coordinator's address (host:port), or `None` to never ask (branches stay in doubt
    /// and are listed by `ListInDoubt`).
    pub coordinator: Option<String>,
    /// First retry delay after an unanswered or PENDING question.
    pub min_backoff: Duration,
    /// The retry delay never grows past this.
    pub max_backoff: Duration,
    /// How often the in-doubt table is scanned.
    pub tick: Duration,
    /// Timeout of each ResolveTransaction call.
    pub call_timeout: Duration,
    /// Questions sent per tick, at most.
    pub max_questions_per_tick: usize,
    /// How the channel to the coordinator is opened (TCP; simulated under simulation).
    pub dialer: net::Dialer,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            coordinator: None,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            tick: Duration::from_millis(100),
            call_timeout: Duration::from_secs(2),
            max_questions_per_tick: 256,
            dialer: net::Dialer::default(),
        }
    }
}

/// When a branch may next ask, and how long it waits after that.
struct Retry {
    next_at: Instant,
    backoff: Duration,
}

/// Runs until the node is dropped elsewhere and `shutdown` fires.
pub async fn run_resolver<W: Wal, S: Store>(
    node: Arc<Node<W, S>>,
    config: ResolverConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Some(address) = config.coordinator.clone() else {
        tracing::warn!("no coordinator address: in-doubt branches will wait for redelivery");
        return;
    };
    let channel = match config.dialer.dial(&address, config.call_timeout) {
        Ok(channel) => channel,
        Err(error) => {
            tracing::error!(%address, %error, "bad coordinator address; in-doubt branches cannot be resolved");
            return;
        }
    };
    let client = CoordinatorClient::new(channel);
    // Branches recovered from the log ask at once.
    let recovered: BTreeSet<TxnId> =
        node.in_doubt(None, usize::MAX).into_iter().map(|b| b.txn).collect();
    let mut retries: BTreeMap<TxnId, Retry> = BTreeMap::new();
    let mut ticker = tokio::time::interval(config.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = Instant::now();
        let now_ms = node.now_ms();
        let in_doubt = node.in_doubt(None, usize::MAX);
        let live: BTreeSet<&TxnId> = in_doubt.iter().map(|b| &b.txn).collect();
        retries.retain(|txn, _| live.contains(txn));
        let due: Vec<TxnId> = in_doubt
            .iter()
            .filter(|b| recovered.contains(&b.txn) || now_ms > b.deadline_unix_ms)
            .filter(|b| retries.get(&b.txn).is_none_or(|r| r.next_at <= now))
            .take(config.max_questions_per_tick)
            .map(|b| b.txn.clone())
            .collect();
        for txn in due {
            let answer = ask(client.clone(), &txn, node.name()).await;
            let resolved = match &answer {
                Ok(Outcome::Committed) => node.commit(&txn).await.map(|()| true),
                Ok(Outcome::Aborted) => node.abort(&txn, None).await.map(|_| true),
                Ok(Outcome::Pending) => Ok(false),
                Err(error) => {
                    tracing::warn!(txn_id = %txn, error = %error.message(), "could not ask the coordinator");
                    Ok(false)
                }
            };
            match resolved {
                Ok(true) => {
                    tracing::info!(txn_id = %txn, outcome = ?answer.as_ref().ok(), "in-doubt branch resolved");
                    retries.remove(&txn);
                }
                Ok(false) => {
                    let retry = retries
                        .entry(txn)
                        .or_insert(Retry { next_at: now, backoff: config.min_backoff });
                    retry.next_at = Instant::now() + retry.backoff;
                    retry.backoff = (retry.backoff * 2).min(config.max_backoff);
                }
                Err(error @ NodeError::Fatal(_)) => {
                    tracing::error!(txn_id = %txn, %error, "applying the coordinator's answer failed; stopping");
                    return;
                }
                Err(error) => {
                    // A contradiction (or a limit) on one branch must not strand the others.
                    tracing::error!(txn_id = %txn, %error, "could not apply the coordinator's answer");
                    let retry = retries
                        .entry(txn)
                        .or_insert(Retry { next_at: now, backoff: config.max_backoff });
                    retry.next_at = Instant::now() + config.max_backoff;
                }
            }
        }
    }
}

async fn ask(
    mut client: CoordinatorClient<tonic::transport::Channel>,
    txn: &TxnId,
    participant: &str,
) -> Result<Outcome, tonic::Status> {
    let response = client
        .resolve_transaction(v1::ResolveTransactionRequest {
            txn_id: txn.to_string(),
            participant: participant.to_string(),
        })
        .await?
        .into_inner();
    convert::outcome_from_wire(response.outcome)
        .ok_or_else(|| tonic::Status::internal("the coordinator answered without an outcome"))
}
