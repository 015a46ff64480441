//! [`ParticipantReader`]: reads committed data straight from one participant (its Get and Scan
//! calls), for tools that check what transactions did — the demo's balance check, checkers,
//! operators. It takes no locks and sees committed state only; its one write is
//! [`ParticipantReader::stage`], which stages operations of an interactive transaction.

use std::time::Duration;

use concord_core::limits;
use concord_proto::v1;
use concord_proto::v1::participant_client::ParticipantClient;
use tonic::transport::Channel;

use crate::ClientError;

/// One committed key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: Vec<u8>,
    /// Its committed value.
    pub value: Vec<u8>,
    /// The LSN of the participant's commit record that last wrote it; versions only grow.
    pub version: u64,
}

/// What a bounded scan returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanPage {
    /// Entries in key order.
    pub entries: Vec<Entry>,
    /// Where to continue when the scan stopped at its bound; `None` when the range is done.
    pub next_start: Option<Vec<u8>>,
}

/// A read-only connection to one participant. Clones share the connection.
#[derive(Clone, Debug)]
pub struct ParticipantReader {
    /// The generated stub over a lazily connecting channel.
    inner: ParticipantClient<Channel>,
    /// The deadline of each call.
    call_timeout: Duration,
}

impl ParticipantReader {
    /// A reader for the participant at `address` (`host:port` or a URL), each call bounded by
    /// `call_timeout`. Connects lazily; must be called inside a tokio runtime.
    pub fn connect(
        address: &str,
        call_timeout: Duration,
    ) -> Result<ParticipantReader, ClientError> {
        let channel = concord_proto::net::channel(address, call_timeout).map_err(|error| {
            ClientError::InvalidAddress { address: address.to_string(), message: error.to_string() }
        })?;
        Ok(ParticipantReader::from_channel(channel, call_timeout))
    }

    /// A reader over an existing channel (tests, custom transports such as the simulation's).
    #[must_use]
    pub fn from_channel(channel: Channel, call_timeout: Duration) -> ParticipantReader {
        let inner = ParticipantClient::new(channel)
            .max_decoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(limits::MAX_GRPC_MESSAGE_BYTES);
        ParticipantReader { inner, call_timeout }
    }

    /// Stages `operations` under the interactive transaction `txn_id` at this participant
    /// (which enlists itself with its coordinator the first time); returns how many are staged
    /// there. The one call here that writes: it is how a service adds its part to a
    /// transaction begun with [`crate::Client::begin`].
    pub async fn stage(
        &self,
        txn_id: &str,
        operations: Vec<concord_core::types::Operation>,
    ) -> Result<u32, ClientError> {
        let operations =
            operations.into_iter().map(concord_proto::convert::operation_to_wire).collect();
        let mut request =
            tonic::Request::new(v1::StageRequest { txn_id: txn_id.to_string(), operations });
        request.set_timeout(self.call_timeout);
        let response = self
            .inner
            .clone()
            .stage(request)
            .await
            .map_err(|status| ClientError::from_status(&status, Some(txn_id)))?;
        Ok(response.into_inner().staged_operations)
    }

    /// The committed entry for `key`, or `None` if it does not exist.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Entry>, ClientError> {
        let mut request = tonic::Request::new(v1::GetRequest { key: key.to_vec() });
        request.set_timeout(self.call_timeout);
        let mut inner = self.inner.clone();
        let response = inner
            .get(request)
            .await
            .map_err(|status| ClientError::from_status(&status, None))?
            .into_inner();
        Ok(response.entry.map(entry_from_wire))
    }

    /// Committed entries with keys in `[start, end)` (an empty `end` means no end), in key
    /// order, paging through the participant's pages until the range is done or `max_entries`
    /// were read. `max_entries` bounds the memory a scan may take; when it is reached,
    /// `next_start` says where to continue.
    pub async fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        max_entries: usize,
    ) -> Result<ScanPage, ClientError> {
        if max_entries == 0 {
            return Err(ClientError::invalid(&concord_core::types::InvalidInput::new(
                "max_entries",
                "must be at least 1",
            )));
        }
        let mut entries: Vec<Entry> = Vec::new();
        let mut cursor = start.to_vec();
        // Each page must move the cursor forward, and every page but the last holds at least
        // one entry, so this many pages always suffices; the bound guards against a server that
        // sends empty pages forever.
        let max_pages = max_entries.saturating_add(16);
        for _ in 0..max_pages {
            let remaining = max_entries - entries.len();
            let limit = remaining.min(limits::MAX_PAGE_SIZE);
            let mut request = tonic::Request::new(v1::ScanRequest {
                start: cursor.clone(),
                end: end.to_vec(),
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
            });
            request.set_timeout(self.call_timeout);
            let mut inner = self.inner.clone();
            let page = inner
                .scan(request)
                .await
                .map_err(|status| ClientError::from_status(&status, None))?
                .into_inner();
            let mut page_entries: Vec<Entry> =
                page.entries.into_iter().map(entry_from_wire).collect();
            let mut next_start = page.next_start;
            if page_entries.len() > remaining {
                // More than asked for: keep what fits and continue at the first one dropped.
                let dropped = page_entries.split_off(remaining);
                next_start = dropped.into_iter().next().map(|entry| entry.key).unwrap_or_default();
            }
            entries.extend(page_entries);
            if next_start.is_empty() {
                return Ok(ScanPage { entries, next_start: None });
            }
            if next_start <= cursor {
                return Err(ClientError::Internal {
                    txn_id: None,
                    message: format!(
                        "the participant's scan went backwards: next page at {next_start:?} \
                         after {cursor:?}"
                    ),
                });
            }
            if entries.len() >= max_entries {
                return Ok(ScanPage { entries, next_start: Some(next_start) });
            }
            cursor = next_start;
        }
        Err(ClientError::Internal {
            txn_id: None,
            message: format!("the participant's scan did not finish within {max_pages} pages"),
        })
    }

    /// The ids of the participant's in-doubt branches (prepared, outcome not yet known), the
    /// first `max` of them in id order; a branch listed here holds its keys locked.
    pub async fn in_doubt(&self, max: usize) -> Result<Vec<String>, ClientError> {
        let mut ids = Vec::new();
        let mut token = String::new();
        // Every page but the last holds at least one id, so this many pages suffices.
        for _ in 0..max.saturating_add(1) {
            let page_size = (max - ids.len()).min(limits::MAX_PAGE_SIZE);
            let mut request = tonic::Request::new(v1::ListInDoubtRequest {
                page_size: u32::try_from(page_size).unwrap_or(u32::MAX),
                page_token: token,
            });
            request.set_timeout(self.call_timeout);
            let mut inner = self.inner.clone();
            let page = inner
                .list_in_doubt(request)
                .await
                .map_err(|status| ClientError::from_status(&status, None))?
                .into_inner();
            ids.extend(page.branches.into_iter().map(|branch| branch.txn_id));
            ids.truncate(max);
            if page.next_page_token.is_empty() || ids.len() >= max {
                return Ok(ids);
            }
            token = page.next_page_token;
        }
        Ok(ids)
    }
}

fn entry_from_wire(entry: v1::KeyValue) -> Entry {
    Entry { key: entry.key, value: entry.value, version: entry.version }
}
