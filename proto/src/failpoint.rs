//! Test-only crash points on both sides of durability steps.
//!
//! `CONCORD_FAILPOINTS=name,name` makes the process abort (no destructors, no flush: as a
//! kill -9 would leave it) when it reaches a named point. Compiled into debug builds only:
//! in a release build [`hit`] is empty and the variable is ignored.
//!
//! Points in use:
//! - `coordinator.before_decision`: every vote is in, the COMMIT record not yet appended.
//! - `coordinator.after_decision`: the COMMIT record is durable, no Commit sent yet.
//! - `participant.after_prepare`: the PREPARED record is durable, the YES not yet sent.
//! - `participant.before_commit`: a Commit arrived for a prepared branch, nothing logged yet.

/// Aborts the process if the failpoint `name` is enabled (debug builds only).
#[inline]
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    {
        static ENABLED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        let enabled = ENABLED.get_or_init(|| {
            std::env::var("CONCORD_FAILPOINTS")
                .map(|spec| spec.split(',').map(str::trim).map(String::from).collect())
                .unwrap_or_default()
        });
        if enabled.iter().any(|point| point == name) {
            tracing::error!(failpoint = name, "failpoint hit: aborting the process");
            std::process::abort();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
