//! The chaos harness: process launcher, TCP fault proxy, nemesis, workload, history, checker
//! and deterministic simulation (DESIGN.md "Testing tiers"; issue 5).
//!
//! Nothing is built here yet. Until it is, the real-process fault test is
//! `tests/faults_under_load.rs` (seeded SIGKILLs and SIGSTOP pauses of every process under a
//! transfer workload, with atomicity, exactly-once, conservation and nothing-stuck checks), and
//! the crash points are the debug-build failpoints in `concord_proto::failpoint`.
