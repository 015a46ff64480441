//! Failpoints on both sides of every durability and visibility step, and planted bugs that
//! prove the chaos harness notices them (DESIGN.md "Testing tiers"; docs/operations.md).
//!
//! Compiled in only with the `enabled` feature, which release builds leave out: without it
//! [`hit`] is `Ok(())` and [`planted`] is `false`, both inlined to nothing, and the
//! environment variables are ignored (with a warning from [`configure_from_env`]).
//!
//! `CONCORD_FAILPOINTS=POINT=ACTION[@N][*],...` arms points, where ACTION is
//! - `crash`: abort the process at once (no destructors, no flush), as `kill -9` would;
//! - `error`: the step fails as if its disk had (the process takes its storage-failure path);
//! - `delay(MS)`: the step stalls for MS milliseconds (the thread blocks, like a slow disk).
//!
//! An action fires on the N-th time the point is reached (default: the first), once; with a
//! trailing `*`, on the N-th and every later time. A bare `POINT` means `POINT=crash`.
//!
//! `CONCORD_PLANTED_BUGS=BUG,...` turns on deliberate protocol bugs ([`BUGS`]) so that tests
//! can assert the harness reports them. Never in a real deployment: these break the guarantees.

use std::fmt;

/// Every failpoint, with the step it sits next to. Arming a name not listed is refused.
pub const POINTS: &[(&str, &str)] = &[
    ("wal.before_sync", "a batch of records is written, not yet fdatasync'd"),
    ("wal.after_sync", "a batch is durable, its waiters not yet told"),
    ("wal.before_truncate", "a checkpoint is durable, old segments not yet removed"),
    ("wal.after_truncate", "old segments removed and the directory synced"),
    ("participant.before_prepare", "a Prepare is validated, its PREPARED record not yet logged"),
    ("participant.after_prepare", "the PREPARED record is durable, the vote not yet sent"),
    ("participant.before_commit", "a Commit arrived for a prepared branch, nothing logged yet"),
    ("participant.after_commit", "the commit is durable and applied, the ack not yet sent"),
    ("participant.before_apply", "a durable commit's writes are not yet in the store"),
    ("participant.after_apply", "a commit's writes are in the store, not yet marked applied"),
    ("participant.before_abort", "an Abort arrived, nothing logged or released yet"),
    ("participant.after_abort", "the branch is aborted and its locks released, no reply yet"),
    ("participant.before_execute", "a saga step's Execute arrived, nothing logged yet"),
    ("participant.after_execute", "a saga step's writes are durable and applied, no reply yet"),
    ("participant.before_compensate", "a Compensate arrived, nothing logged yet"),
    ("participant.after_compensate", "the before-images are durable and applied, no ack yet"),
    ("participant.before_checkpoint", "checkpoint records appended, the store not yet synced"),
    ("participant.after_checkpoint", "the store is synced and the log truncated"),
    ("coordinator.before_started", "a one-phase transaction's STARTED record not yet logged"),
    ("coordinator.after_started", "STARTED is durable, the one-phase Prepare not yet sent"),
    ("coordinator.before_decision", "every vote is in, the COMMIT record not yet logged"),
    ("coordinator.after_decision", "the COMMIT record is durable, no Commit sent yet"),
    ("coordinator.before_end", "every Commit is acknowledged, the END record not yet logged"),
    ("coordinator.after_end", "the END record is appended, the transaction not yet finished"),
    ("coordinator.before_reply", "a Submit's outcome is durable, the client not yet told"),
    ("coordinator.before_fence", "an unknown id is to be fenced, the FENCED record not yet logged"),
    ("coordinator.after_fence", "the FENCED record is durable, the client not yet told"),
    ("coordinator.before_checkpoint", "a checkpoint is being written, not yet durable"),
    ("coordinator.after_checkpoint", "the checkpoint is durable and the log truncated"),
];

/// Deliberate bugs, each of which some check of the chaos harness must catch.
pub const BUGS: &[(&str, &str)] = &[
    ("commit-before-decision", "the coordinator sends Commit without logging its decision"),
    ("vote-before-durable", "a participant votes YES before its PREPARED record is durable"),
    ("double-apply", "a participant applies each counter add of a branch twice"),
    ("ignore-bounds", "a participant ignores the bounds of counter adds"),
    ("give-up-commit", "the coordinator stops delivering a Commit after one failed attempt"),
    ("drop-last-write", "a participant applies all but the last write of a commit"),
    (
        "skip-compensation",
        "the coordinator marks a saga step compensated without sending Compensate",
    ),
];

/// The error an armed `error` action injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    /// The failpoint that fired.
    pub point: &'static str,
}

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected I/O error at failpoint {}", self.point)
    }
}

impl std::error::Error for Injected {}

/// What an armed point does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Abort the process.
    Crash,
    /// Fail the step.
    Error,
    /// Block the thread for this many milliseconds.
    Delay(u64),
}

/// One armed point, parsed from `POINT=ACTION[@N][*]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arm {
    /// The point's name (one of [`POINTS`]).
    pub point: &'static str,
    /// What it does.
    pub action: Action,
    /// Fires on this hit (1-based).
    pub at: u64,
    /// Fires on every hit from `at` on, not only on `at`.
    pub repeat: bool,
}

/// Parses a `CONCORD_FAILPOINTS` value; the error names the part that is wrong.
pub fn parse_points(spec: &str) -> Result<Vec<Arm>, String> {
    let mut arms = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, rest) = part.split_once('=').unwrap_or((part, "crash"));
        let point = known(POINTS, name.trim())
            .ok_or_else(|| format!("CONCORD_FAILPOINTS: unknown failpoint {name:?}"))?;
        let (rest, repeat) = match rest.trim().strip_suffix('*') {
            Some(rest) => (rest, true),
            None => (rest.trim(), false),
        };
        let (action, at) = match rest.split_once('@') {
            Some((action, at)) => {
                let at: u64 = at.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    format!("CONCORD_FAILPOINTS: {part:?}: @N must be a whole number >= 1")
                })?;
                (action, at)
            }
            None => (rest, 1),
        };
        let action = match action {
            "crash" => Action::Crash,
            "error" => Action::Error,
            other => {
                let millis = other
                    .strip_prefix("delay(")
                    .and_then(|r| r.strip_suffix(')'))
                    .and_then(|ms| ms.parse().ok())
                    .ok_or_else(|| {
                        format!(
                            "CONCORD_FAILPOINTS: {part:?}: the action must be crash, error or \
                             delay(MS)"
                        )
                    })?;
                Action::Delay(millis)
            }
        };
        arms.push(Arm { point, action, at, repeat });
    }
    Ok(arms)
}

/// Parses a `CONCORD_PLANTED_BUGS` value.
pub fn parse_bugs(spec: &str) -> Result<Vec<&'static str>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(|bug| {
            known(BUGS, bug).ok_or_else(|| format!("CONCORD_PLANTED_BUGS: unknown bug {bug:?}"))
        })
        .collect()
}

fn known(table: &[(&'static str, &str)], name: &str) -> Option<&'static str> {
    table.iter().map(|(known, _)| *known).find(|known| *known == name)
}

/// Reads and checks `CONCORD_FAILPOINTS` and `CONCORD_PLANTED_BUGS` once, at start. A process
/// calls it before serving so that a misspelt point fails loudly instead of never firing.
pub fn configure_from_env() -> Result<(), String> {
    #[cfg(feature = "enabled")]
    {
        let state = armed::state();
        state.error.clone().map_or(Ok(()), Err)
    }
    #[cfg(not(feature = "enabled"))]
    {
        for var in ["CONCORD_FAILPOINTS", "CONCORD_PLANTED_BUGS"] {
            if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
                tracing::warn!(var, "ignored: this build has no failpoints (feature off)");
            }
        }
        Ok(())
    }
}

/// Reaches failpoint `point`: crashes, fails or stalls if it is armed, else returns `Ok(())`.
#[inline]
pub fn hit(point: &'static str) -> Result<(), Injected> {
    #[cfg(feature = "enabled")]
    {
        armed::hit(point)
    }
    #[cfg(not(feature = "enabled"))]
    {
        let _ = point;
        Ok(())
    }
}

/// Whether the planted bug `bug` is on (never, without the `enabled` feature).
#[inline]
pub fn planted(bug: &'static str) -> bool {
    #[cfg(feature = "enabled")]
    {
        armed::state().bugs.contains(&bug)
    }
    #[cfg(not(feature = "enabled"))]
    {
        let _ = bug;
        false
    }
}

#[cfg(feature = "enabled")]
mod armed {
    use super::{Action, Arm, Injected};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    pub(super) struct State {
        arms: Vec<(Arm, AtomicU64)>,
        pub(super) bugs: Vec<&'static str>,
        pub(super) error: Option<String>,
    }

    pub(super) fn state() -> &'static State {
        static STATE: OnceLock<State> = OnceLock::new();
        STATE.get_or_init(|| {
            let points = std::env::var("CONCORD_FAILPOINTS").unwrap_or_default();
            let bugs = std::env::var("CONCORD_PLANTED_BUGS").unwrap_or_default();
            let (arms, bugs, error) = match (super::parse_points(&points), super::parse_bugs(&bugs))
            {
                (Ok(arms), Ok(bugs)) => (arms, bugs, None),
                (Err(error), _) | (_, Err(error)) => (Vec::new(), Vec::new(), Some(error)),
            };
            for bug in &bugs {
                tracing::warn!(bug, "PLANTED BUG ON: this process breaks Concord's guarantees");
            }
            State { arms: arms.into_iter().map(|a| (a, AtomicU64::new(0))).collect(), bugs, error }
        })
    }

    pub(super) fn hit(point: &'static str) -> Result<(), Injected> {
        for (arm, hits) in &state().arms {
            if arm.point != point {
                continue;
            }
            let n = hits.fetch_add(1, Ordering::Relaxed) + 1;
            if n < arm.at || (n > arm.at && !arm.repeat) {
                continue;
            }
            match arm.action {
                Action::Crash => {
                    tracing::error!(failpoint = point, "failpoint hit: crash (aborting)");
                    std::process::abort();
                }
                Action::Error => {
                    tracing::error!(failpoint = point, "failpoint hit: error");
                    return Err(Injected { point });
                }
                Action::Delay(millis) => {
                    tracing::warn!(failpoint = point, millis, "failpoint hit: delay");
                    std::thread::sleep(std::time::Duration::from_millis(millis));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failpoint specs parse, with the default count and delay filled in.
    #[test]
    fn specs_parse_with_defaults() {
        let arms = parse_points(
            "wal.before_sync, coordinator.after_end=error@3, wal.after_sync=delay(5)*",
        )
        .unwrap();
        assert_eq!(
            arms,
            vec![
                Arm { point: "wal.before_sync", action: Action::Crash, at: 1, repeat: false },
                Arm { point: "coordinator.after_end", action: Action::Error, at: 3, repeat: false },
                Arm { point: "wal.after_sync", action: Action::Delay(5), at: 1, repeat: true },
            ]
        );
        assert_eq!(parse_points("").unwrap(), vec![]);
    }

    /// A bad failpoint spec is refused with a message naming what is wrong.
    #[test]
    fn bad_specs_name_what_is_wrong() {
        let error = parse_points("wal.before_snyc=crash").unwrap_err();
        assert!(error.contains("unknown failpoint \"wal.before_snyc\""), "{error}");
        let error = parse_points("wal.after_sync=explode").unwrap_err();
        assert!(error.contains("crash, error or delay(MS)"), "{error}");
        let error = parse_points("wal.after_sync=error@0").unwrap_err();
        assert!(error.contains("@N"), "{error}");
        let error = parse_bugs("double-apply,teleport").unwrap_err();
        assert!(error.contains("unknown bug \"teleport\""), "{error}");
        assert_eq!(parse_bugs("double-apply").unwrap(), vec!["double-apply"]);
    }

    /// No failpoint or planted bug is listed twice.
    #[test]
    fn every_point_and_bug_is_named_once() {
        for table in [POINTS, BUGS] {
            let mut names: Vec<_> = table.iter().map(|(n, _)| n).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), table.len());
        }
    }
}
