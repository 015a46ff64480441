//! Concord's protocol as pure state machines.
//!
//! Nothing here does I/O, reads a clock, draws a random number or generates an id: time comes
//! in as an input (`now_unix_ms`), and decisions come out as values that drivers carry out
//! (append to the log, wait until durable, apply, reply). That keeps every protocol rule of
//! DESIGN.md testable input by input, and lets the same code run under simulation.
//!
//! - [`limits`]: every bound in the system, with their relations asserted.
//! - [`types`]: transaction ids, epochs, operations, votes and outcomes, and their validation.
//! - [`participant`]: the participant's branch table, lock table and barriers.
//! - [`record`]: the records participants write to their write-ahead log.
//! - [`coordinator`]: one transaction's two-phase commit at the coordinator, and the records
//!   of its decision log.

pub mod coordinator;
pub mod limits;
pub mod participant;
pub mod record;
pub mod types;
