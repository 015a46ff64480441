//! The chaos harness (DESIGN.md "Testing tiers"): it starts a coordinator and participants as
//! real processes on 127.0.0.1, routes every link through its own TCP fault proxy, runs a
//! bank-transfer workload with client-chosen ids and deliberate duplicates while a seeded
//! nemesis kills, pauses, partitions, delays and resets, records the history, heals, and checks
//! what Concord promises. `concord chaos` is its command line.

pub mod check;
pub mod cluster;
pub mod histogram;
pub mod nemesis;
pub mod process;
pub mod proxy;
pub mod rng;
pub mod run;
pub mod workload;
