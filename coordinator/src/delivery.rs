//! Calls to participants, as the protocol reads their answers: Prepare and Execute classified
//! into a [`PrepareResult`] (a transport error or timeout is never a NO), one-shot Aborts, and
//! the deliveries that must eventually succeed (Commit after a durable COMMIT, Compensate of an
//! executed saga step, the Abort probe of a silent one-phase branch), all over one retry helper,
//! [`until_done`].
//!
//! Those deliveries retry without a limit on attempts, by design: a durable COMMIT must reach
//! every participant (DESIGN.md, rule 4) and a compensation is never dropped. What is bounded is
//! everything else: each attempt by the call timeout, the delay between attempts by
//! `max_backoff` (or `attention_retry`), the number of deliveries at once by the coordinator's
//! unfinished-transaction permits, and every loop ends when the coordinator stops (recovery
//! resumes it).

use std::future::Future;
use std::time::Duration;

use concord_core::coordinator::PrepareResult;
use concord_core::types::{Outcome, Vote};
use concord_proto::{convert, v1};
use tokio::sync::watch;

use crate::link::Link;

/// How a delivery waits between attempts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    /// The first delay; each failure doubles it.
    pub(crate) min_backoff: Duration,
    /// The delay never grows past this.
    pub(crate) max_backoff: Duration,
    /// After this many failures (if any), wait `slow_retry` between attempts instead.
    pub(crate) slow_after_attempts: Option<u32>,
    /// The delay once `slow_after_attempts` is reached.
    pub(crate) slow_retry: Duration,
}

impl RetryPolicy {
    /// The delay after `failures` failed attempts (at least one).
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        if self.slow_after_attempts.is_some_and(|after| failures >= after) {
            return self.slow_retry;
        }
        let doublings = failures.saturating_sub(1).min(31);
        self.min_backoff.saturating_mul(1 << doublings).min(self.max_backoff)
    }
}

/// How one attempt of a delivery went.
pub(crate) enum Attempt<T> {
    /// Delivered, with this answer.
    Done(T),
    /// Not delivered: try again after the policy's delay.
    Retry,
    /// Stop trying (only a planted bug does this).
    GiveUp,
}

/// Runs `attempt` (given the number of the attempt, from 1) until it is done, waiting as
/// `policy` says between attempts; `None` if the coordinator stops first (or the attempt gives
/// up).
pub(crate) async fn until_done<T, F, Fut>(
    policy: RetryPolicy,
    stopping: &mut watch::Receiver<bool>,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let mut attempts = 0u32;
    loop {
        if *stopping.borrow() {
            return None;
        }
        attempts = attempts.saturating_add(1);
        match attempt(attempts).await {
            Attempt::Done(done) => return Some(done),
            Attempt::GiveUp => return None,
            Attempt::Retry => {}
        }
        tokio::select! {
            () = tokio::time::sleep(policy.delay(attempts)) => {}
            _ = stopping.wait_for(|stop| *stop) => return None,
        }
    }
}

/// Calls Prepare and classifies the answer. A transport error or timeout is never a NO.
pub(crate) async fn prepare(
    link: &Link,
    request: v1::PrepareRequest,
    timeout: Duration,
) -> PrepareResult {
    let one_phase = request.one_phase;
    match link.prepare(request, timeout).await {
        Ok(response) => {
            let outcome = convert::outcome_from_wire(response.outcome);
            match convert::vote_from_wire(response.vote) {
                Ok(Vote::Yes) if one_phase && outcome == Some(Outcome::Committed) => {
                    PrepareResult::OnePhaseCommitted
                }
                Ok(Vote::Yes) if one_phase => PrepareResult::Unreachable(
                    "one-phase Prepare answered YES without committing".into(),
                ),
                Ok(vote) => PrepareResult::Voted(vote),
                Err(error) => PrepareResult::Unreachable(format!("malformed vote: {error}")),
            }
        }
        Err(status) => call_failed(&status),
    }
}

/// Calls Execute and classifies the answer as [`prepare`] does.
pub(crate) async fn execute(
    link: &Link,
    request: v1::ExecuteRequest,
    timeout: Duration,
) -> PrepareResult {
    match link.execute(request, timeout).await {
        Ok(response) => match convert::vote_from_wire(response.vote) {
            Ok(vote) => PrepareResult::Voted(vote),
            Err(error) => PrepareResult::Unreachable(format!("malformed vote: {error}")),
        },
        Err(status) => call_failed(&status),
    }
}

/// A failed call: a timeout may have done its work; UNIMPLEMENTED did nothing.
fn call_failed(status: &tonic::Status) -> PrepareResult {
    let message = describe(status);
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => PrepareResult::Timeout,
        tonic::Code::Unimplemented => PrepareResult::Unimplemented(message),
        _ => PrepareResult::Unreachable(message),
    }
}

/// A status as the table shows it (`last_error`).
pub(crate) fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// What a one-phase probe (an Abort to a branch whose outcome is unknown) learned.
pub(crate) enum ProbeAnswer {
    /// The branch committed (the Abort was refused: FAILED_PRECONDITION).
    Committed,
    /// The branch is aborted for good (the Abort was acknowledged; a barrier refuses the late
    /// Prepare).
    Aborted,
    /// No answer yet (retry).
    Unknown(tonic::Status),
}

/// Reads one probe's answer.
pub(crate) fn probe_answer(result: Result<v1::AbortResponse, tonic::Status>) -> ProbeAnswer {
    match result {
        Ok(_) => ProbeAnswer::Aborted,
        Err(status) if status.code() == tonic::Code::FailedPrecondition => ProbeAnswer::Committed,
        Err(status) => ProbeAnswer::Unknown(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(slow_after_attempts: Option<u32>) -> RetryPolicy {
        RetryPolicy {
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            slow_after_attempts,
            slow_retry: Duration::from_secs(30),
        }
    }

    /// The delay doubles from the first backoff and stops at the cap, however many failures.
    #[test]
    fn the_delay_doubles_up_to_the_cap() {
        let policy = policy(None);
        assert_eq!(policy.delay(1), Duration::from_millis(50));
        assert_eq!(policy.delay(2), Duration::from_millis(100));
        assert_eq!(policy.delay(4), Duration::from_millis(400));
        assert_eq!(policy.delay(8), Duration::from_secs(5));
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(5));
    }

    /// Past the attention threshold every retry waits the slow delay.
    #[test]
    fn past_the_threshold_retries_are_slow() {
        let policy = policy(Some(3));
        assert_eq!(policy.delay(2), Duration::from_millis(100));
        assert_eq!(policy.delay(3), Duration::from_secs(30));
        assert_eq!(policy.delay(100), Duration::from_secs(30));
    }

    /// A delivery retries until its attempt succeeds, numbering the attempts from 1.
    #[tokio::test(start_paused = true)]
    async fn until_done_retries_until_an_attempt_succeeds() {
        let (_stop, mut stopping) = watch::channel(false);
        let mut seen = Vec::new();
        let done = until_done(policy(None), &mut stopping, |attempt| {
            seen.push(attempt);
            async move { if attempt == 3 { Attempt::Done("done") } else { Attempt::Retry } }
        })
        .await;
        assert_eq!(done, Some("done"));
        assert_eq!(seen, vec![1, 2, 3]);
    }

    /// A delivery ends (without success) once the coordinator stops.
    #[tokio::test(start_paused = true)]
    async fn until_done_ends_when_the_coordinator_stops() {
        let (stop, mut stopping) = watch::channel(false);
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let delivery = until_done(policy(None), &mut stopping, |_| {
            attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Attempt::<()>::Retry }
        });
        let stopper = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.send_replace(true);
        };
        let (done, ()) = tokio::join!(delivery, stopper);
        assert_eq!(done, None);
        assert!(attempts.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    }
}
