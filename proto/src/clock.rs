//! The wall clock the servers read, replaceable so that the deterministic simulation can run the
//! real coordinator and participant on simulated time.
//!
//! Deadlines and the coordinator's forgotten horizon are wall-clock milliseconds because they
//! cross process boundaries (a Prepare carries its deadline). Every read of that clock in the
//! servers goes through a [`Clock`] from their configuration; production uses [`system`].

/// Milliseconds since the Unix epoch, as a server sees them.
pub type Clock = fn() -> u64;

/// The system's wall clock (0 if it reads before 1970).
#[must_use]
pub fn system() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
