//! [`Client`]: submit a transaction, ask for one, list them. One lazily connecting channel per
//! client (cheap to clone and share between tasks), a deadline on every call, and every failure
//! classified by what the caller may conclude (see [`ClientError`]).

use std::time::Duration;

use concord_core::limits;
use concord_core::types::TxnId;
use concord_proto::v1;
use concord_proto::v1::coordinator_client::CoordinatorClient;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::{ClientError, Submitted, Transaction, TransactionInfo, TransactionPage, TxnState};

/// Deadlines for a [`Client`]'s calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// The deadline of `get` and `list`.
    pub call_timeout: Duration,
    /// How much longer than the transaction's own decision timeout a submit waits for its
    /// answer, so the coordinator's decision (even an abort at the deadline) can still arrive.
    pub submit_margin: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            call_timeout: Duration::from_secs(5),
            submit_margin: Duration::from_secs(2),
        }
    }
}

/// The longest any call may wait: the longest decision timeout plus a generous margin. The
/// channel enforces it; each call sets its own, shorter, deadline.
const CHANNEL_TIMEOUT_CAP: Duration = Duration::from_millis(limits::MAX_TXN_TIMEOUT_MS + 30_000);

/// A connection to one coordinator. Clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    /// The generated stub over a lazily connecting channel.
    inner: CoordinatorClient<Channel>,
    /// Deadlines per call.
    options: ClientOptions,
}

impl Client {
    /// A client for the coordinator at `address` (`host:port` or a URL) with default deadlines.
    /// Connects lazily: an unreachable coordinator shows up as [`ClientError::Unknown`] on the
    /// first call, not here. Must be called inside a tokio runtime (the channel spawns its
    /// connection task there).
    pub fn connect(address: &str) -> Result<Client, ClientError> {
        Client::connect_with(address, ClientOptions::default())
    }

    /// A client with the given deadlines.
    pub fn connect_with(address: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let channel =
            concord_proto::net::channel(address, CHANNEL_TIMEOUT_CAP).map_err(|error| {
                ClientError::InvalidAddress {
                    address: address.to_string(),
                    message: error.to_string(),
                }
            })?;
        Ok(Client::from_channel(channel, options))
    }

    /// A client over an existing channel (tests, custom transports).
    #[must_use]
    pub fn from_channel(channel: Channel, options: ClientOptions) -> Client {
        let inner = CoordinatorClient::new(channel)
            .max_decoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES);
        Client { inner, options }
    }

    /// A [`Pipeline`](crate::Pipeline) over this client's connection: many submits in flight
    /// over one stream. Must be called inside a tokio runtime.
    #[must_use]
    pub fn pipeline(&self) -> crate::Pipeline {
        crate::Pipeline::new(self.inner.clone(), self.options)
    }

    /// Submits `txn` and waits for the coordinator's answer.
    ///
    /// Always sends a transaction id: the builder's, or a fresh UUID v4, so that on
    /// [`ClientError::Unknown`] the caller can ask for the outcome with [`Client::get`].
    /// Resubmitting the same id is safe: the coordinator never runs an id twice.
    pub async fn submit(&self, txn: &Transaction) -> Result<Submitted, ClientError> {
        let (txn_id, request, patience) = submission(txn, self.options.submit_margin)?;
        let mut request = tonic::Request::new(request);
        request.set_timeout(patience);
        let span = tracing::debug_span!("submit", txn_id = %txn_id);
        let mut inner = self.inner.clone();
        async move {
            match inner.submit(request).await {
                Ok(response) => {
                    let submitted = Submitted::from_wire(response.into_inner(), txn_id.as_str())?;
                    tracing::debug!(outcome = ?submitted.outcome, "answered");
                    Ok(submitted)
                }
                Err(status) => {
                    let error = ClientError::from_status(&status, Some(txn_id.as_str()));
                    tracing::debug!(%error, "submit failed");
                    Err(error)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Begins an interactive transaction open for `timeout_ms` (0: the coordinator's default)
    /// under `txn_id` (`None`: the coordinator issues one). Returns the id and the deadline
    /// (ms since the Unix epoch) by which it must be committed. Services then stage operations
    /// under the id on their participants ([`crate::ParticipantReader::stage`]), and
    /// [`Client::commit`] or [`Client::rollback`] finishes it.
    pub async fn begin(
        &self,
        txn_id: Option<&str>,
        timeout_ms: u32,
    ) -> Result<(String, u64), ClientError> {
        let mut request = tonic::Request::new(v1::BeginRequest {
            txn_id: txn_id.unwrap_or_default().to_string(),
            timeout_ms,
        });
        request.set_timeout(self.options.call_timeout);
        let response = self
            .inner
            .clone()
            .begin(request)
            .await
            .map_err(|status| ClientError::from_status(&status, txn_id))?
            .into_inner();
        Ok((response.txn_id, response.deadline_unix_ms))
    }

    /// Commits an interactive transaction: two-phase commit over what its participants
    /// staged. Safe to repeat: a repeated Commit answers with the outcome.
    pub async fn commit(&self, txn_id: &str) -> Result<Submitted, ClientError> {
        let mut request =
            tonic::Request::new(v1::CommitTransactionRequest { txn_id: txn_id.to_string() });
        request.set_timeout(
            Duration::from_millis(limits::MAX_TXN_TIMEOUT_MS) + self.options.submit_margin,
        );
        match self.inner.clone().commit(request).await {
            Ok(response) => Submitted::from_wire(response.into_inner(), txn_id),
            Err(status) => Err(ClientError::from_status(&status, Some(txn_id))),
        }
    }

    /// Rolls an interactive transaction back: its participants drop what they staged.
    pub async fn rollback(&self, txn_id: &str) -> Result<Submitted, ClientError> {
        let mut request =
            tonic::Request::new(v1::RollbackTransactionRequest { txn_id: txn_id.to_string() });
        request.set_timeout(self.options.call_timeout);
        match self.inner.clone().rollback(request).await {
            Ok(response) => Submitted::from_wire(response.into_inner(), txn_id),
            Err(status) => Err(ClientError::from_status(&status, Some(txn_id))),
        }
    }

    /// The state and outcome of `txn_id`. With `fence_unknown`, an id the coordinator has never
    /// seen is recorded as aborted before the answer, so a Submit still in flight can never
    /// commit later: the way to turn an unknown outcome into a definite one.
    pub async fn get(
        &self,
        txn_id: &str,
        fence_unknown: bool,
    ) -> Result<TransactionInfo, ClientError> {
        self.get_transaction(txn_id, fence_unknown, 0).await
    }

    /// Turns an unknown outcome into a definite one: the state of `txn_id`, and if the
    /// coordinator has never seen it, a durable ABORTED so a Submit still in flight can never
    /// commit later. `first_submitted_unix_ms` is the transaction's
    /// [`Transaction::first_submitted_unix_ms`]: a coordinator that has forgotten old finished
    /// transactions fences only ids submitted after all of them (others are refused, never
    /// guessed).
    pub async fn fence(
        &self,
        txn_id: &str,
        first_submitted_unix_ms: u64,
    ) -> Result<TransactionInfo, ClientError> {
        self.get_transaction(txn_id, true, first_submitted_unix_ms).await
    }

    async fn get_transaction(
        &self,
        txn_id: &str,
        fence_unknown: bool,
        submitted_unix_ms: u64,
    ) -> Result<TransactionInfo, ClientError> {
        TxnId::parse(txn_id, "txn_id").map_err(|error| ClientError::invalid(&error))?;
        let mut request = tonic::Request::new(v1::GetTransactionRequest {
            txn_id: txn_id.to_string(),
            fence_unknown,
            submitted_unix_ms,
        });
        request.set_timeout(self.options.call_timeout);
        let mut inner = self.inner.clone();
        let response = inner
            .get_transaction(request)
            .instrument(tracing::debug_span!("get_transaction", txn_id, fence_unknown))
            .await
            .map_err(|status| ClientError::from_status(&status, Some(txn_id)))?
            .into_inner();
        let info = response.transaction.ok_or_else(|| ClientError::Internal {
            txn_id: Some(txn_id.to_string()),
            message: "the coordinator's answer holds no transaction".to_string(),
        })?;
        TransactionInfo::from_wire(info)
    }

    /// One page of the transactions the coordinator remembers, optionally only those in `state`.
    /// `page_size` 0 uses the server's default and is capped at [`limits::MAX_PAGE_SIZE`];
    /// `page_token` is empty for the first page, then the previous page's token.
    pub async fn list(
        &self,
        state: Option<TxnState>,
        page_size: u32,
        page_token: &str,
    ) -> Result<TransactionPage, ClientError> {
        let max_page = u32::try_from(limits::MAX_PAGE_SIZE).unwrap_or(u32::MAX);
        let mut request = tonic::Request::new(v1::ListTransactionsRequest {
            state: state.map_or(v1::TxnState::Unspecified, TxnState::to_wire).into(),
            page_size: page_size.min(max_page),
            page_token: page_token.to_string(),
        });
        request.set_timeout(self.options.call_timeout);
        let mut inner = self.inner.clone();
        let response = inner
            .list_transactions(request)
            .instrument(tracing::debug_span!("list_transactions"))
            .await
            .map_err(|status| ClientError::from_status(&status, None))?
            .into_inner();
        let transactions = response
            .transactions
            .into_iter()
            .map(TransactionInfo::from_wire)
            .collect::<Result<Vec<_>, _>>()?;
        let next_page_token =
            if response.next_page_token.is_empty() { None } else { Some(response.next_page_token) };
        Ok(TransactionPage { transactions, next_page_token })
    }
}

/// What every submit (unary or on a stream) sends: `txn` validated, with its id (the
/// builder's, or a fresh UUID v4, so an unknown outcome can be asked about), and how long to
/// wait for the answer (its decision timeout plus `margin`).
pub(crate) fn submission(
    txn: &Transaction,
    margin: Duration,
) -> Result<(TxnId, concord_proto::v1::SubmitRequest, Duration), ClientError> {
    txn.validate().map_err(|error| ClientError::invalid(&error))?;
    let txn_id = match txn.txn_id() {
        Some(txn_id) => TxnId::parse(txn_id, "txn_id"),
        None => TxnId::parse(&uuid::Uuid::new_v4().to_string(), "txn_id"),
    }
    .map_err(|error| ClientError::invalid(&error))?;
    let decision_timeout_ms = txn.timeout_ms().map_or(limits::DEFAULT_TXN_TIMEOUT_MS, u64::from);
    let request = txn.to_request(&txn_id);
    Ok((txn_id, request, Duration::from_millis(decision_timeout_ms) + margin))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use concord_core::types::Operation;

    fn transfer() -> Transaction {
        Transaction::new()
            .with_branch("alpha", [Operation::Delete { key: b"a".to_vec() }])
            .with_branch("beta", [Operation::Delete { key: b"b".to_vec() }])
    }

    /// A listener that accepts nothing, so calls to it fail without a server: its port is
    /// bound and then released.
    fn dead_address() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        address.to_string()
    }

    /// A submit that cannot reach the coordinator is Unknown (never Rejected) and carries the
    /// generated UUID it sent, so the caller can ask.
    #[tokio::test]
    async fn unreachable_submit_is_unknown_with_a_generated_id() {
        let client = Client::connect(&dead_address()).unwrap();
        let error = client.submit(&transfer()).await.unwrap_err();
        assert!(
            matches!(error, ClientError::Unknown { cause: crate::UnknownCause::Unreachable, .. }),
            "{error:?}"
        );
        let txn_id = error.txn_id().expect("a generated id").to_string();
        assert!(uuid::Uuid::parse_str(&txn_id).is_ok(), "{txn_id}");
        let again = client.submit(&transfer().with_txn_id("mine-1")).await.unwrap_err();
        assert_eq!(again.txn_id(), Some("mine-1"));
    }

    /// Invalid transactions and ids are rejected before anything is sent.
    #[tokio::test]
    async fn invalid_input_is_rejected_locally() {
        let client = Client::connect(&dead_address()).unwrap();
        let error = client.submit(&Transaction::new()).await.unwrap_err();
        assert!(error.is_rejected(), "{error:?}");
        let error = client.get("no spaces allowed", false).await.unwrap_err();
        assert!(error.is_rejected(), "{error:?}");
    }

    /// A malformed address is refused at construction.
    #[test]
    fn bad_addresses_are_refused() {
        let error = Client::connect("http://[::1").unwrap_err();
        assert!(matches!(error, ClientError::InvalidAddress { .. }), "{error:?}");
    }
}
