//! The simulation's nemesis: a seeded schedule of crashes and restarts (several hosts at once
//! too), full and one-way partitions, held links whose messages arrive late and out of order
//! with the rest, and added latency. Every fault is undone after a while, and all of them at
//! once by [`Nemesis::heal`].

use std::collections::BTreeSet;
use std::time::Duration;

use std::sync::Arc;

use concord_chaos::rng::Prng;
use concord_chaos::workload::FaultClock;
use concord_participant::MemoryStore;
use concord_wal::MemoryWal;

/// The coordinator's host name.
pub const COORDINATOR: &str = "coordinator";
/// The client's host name.
pub const CLIENT: &str = "client";

/// Faults active at once, at most.
const MAX_ACTIVE: usize = 3;
/// The simulated timeline keeps this many entries; later ones are counted, not kept.
const MAX_TIMELINE: usize = 10_000;

/// A server host and its simulated disk.
pub struct Disk {
    /// The host name.
    pub host: String,
    /// Its log.
    pub wal: MemoryWal,
    /// Its store (participants only).
    pub store: Option<MemoryStore>,
}

impl Disk {
    /// A power cut: everything not synced is gone.
    fn crash(&self) {
        self.wal.crash();
        if let Some(store) = &self.store {
            store.crash();
        }
    }
}

/// A fault and how to undo it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fault {
    Crash(Vec<String>),
    Partition(String, String),
    OneWay(String, String),
    Hold(String, String),
    Latency(String, String, Duration),
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::Crash(hosts) if hosts.len() > 1 => "crash-many",
            Fault::Crash(_) => "crash",
            Fault::Partition(..) => "partition",
            Fault::OneWay(..) => "one-way",
            Fault::Hold(..) => "hold",
            Fault::Latency(..) => "latency",
        }
    }

    fn describe(&self) -> String {
        match self {
            Fault::Crash(hosts) => format!("crash {}", hosts.join(",")),
            Fault::Partition(a, b) => format!("partition {a}<->{b}"),
            Fault::OneWay(a, b) => format!("drop {a}->{b}"),
            Fault::Hold(a, b) => format!("hold {a}<->{b}"),
            Fault::Latency(a, b, d) => format!("latency {a}<->{b} up to {}ms", d.as_millis()),
        }
    }

    /// The links (as sorted pairs) and hosts it occupies.
    fn occupies(&self) -> Vec<String> {
        match self {
            Fault::Crash(hosts) => hosts.clone(),
            Fault::Partition(a, b)
            | Fault::OneWay(a, b)
            | Fault::Hold(a, b)
            | Fault::Latency(a, b, _) => vec![link_name(a, b)],
        }
    }
}

fn link_name(a: &str, b: &str) -> String {
    if a < b { format!("{a}|{b}") } else { format!("{b}|{a}") }
}

/// The nemesis of one simulation.
pub struct Nemesis {
    rng: Prng,
    /// Every server host with its disk.
    disks: Vec<Disk>,
    /// Host pairs that carry traffic: client↔coordinator and coordinator↔participant.
    links: Vec<(String, String)>,
    /// The network's normal largest latency, restored after a latency fault.
    base_latency: Duration,
    active: Vec<(Duration, Fault)>,
    next_at: Duration,
    /// Tells the workload when a fault is active (for the worst latency during faults).
    clock: Arc<FaultClock>,
    /// What it did, with simulated times.
    pub timeline: Vec<String>,
    /// Faults injected, by kind.
    pub counts: std::collections::BTreeMap<&'static str, u64>,
}

impl Nemesis {
    /// A nemesis over `disks` drawing from `seed`.
    #[must_use]
    pub fn new(
        seed: u64,
        disks: Vec<Disk>,
        base_latency: Duration,
        clock: Arc<FaultClock>,
    ) -> Nemesis {
        let mut links = vec![(CLIENT.to_string(), COORDINATOR.to_string())];
        for disk in &disks {
            if disk.host != COORDINATOR {
                links.push((COORDINATOR.to_string(), disk.host.clone()));
            }
        }
        Nemesis {
            rng: Prng::new(seed ^ 0x6e65_6d65_7369_7321),
            disks,
            links,
            base_latency,
            active: Vec::new(),
            next_at: Duration::ZERO,
            clock,
            timeline: Vec::new(),
            counts: std::collections::BTreeMap::new(),
        }
    }

    /// Faults injected so far.
    #[must_use]
    pub fn injected(&self) -> u64 {
        self.counts.values().sum()
    }

    fn log(&mut self, now: Duration, what: &str) {
        if self.timeline.len() < MAX_TIMELINE {
            self.timeline.push(format!("{:>9.3}s {what}", now.as_secs_f64()));
        }
    }

    /// Undoes the faults that are due and maybe starts a new one.
    pub fn tick(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration) {
        let mut index = 0;
        while index < self.active.len() {
            if self.active[index].0 <= now {
                let (_, fault) = self.active.remove(index);
                self.undo(sim, now, &fault);
            } else {
                index += 1;
            }
        }
        if now >= self.next_at {
            self.next_at = now + Duration::from_millis(50 + self.rng.below(750));
            if self.active.len() < MAX_ACTIVE
                && let Some(fault) = self.draw()
            {
                let lasts = Duration::from_millis(100 + self.rng.below(2_400));
                self.inject(sim, now, &fault);
                self.active.push((now + lasts, fault));
            }
        }
    }

    /// Undoes every active fault: every host runs, every link is healthy.
    pub fn heal(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration) {
        for (_, fault) in std::mem::take(&mut self.active) {
            self.undo(sim, now, &fault);
        }
        self.log(now, "healed");
    }

    fn busy(&self) -> BTreeSet<String> {
        self.active.iter().flat_map(|(_, f)| f.occupies()).collect()
    }

    fn draw(&mut self) -> Option<Fault> {
        let busy = self.busy();
        let hosts: Vec<String> =
            self.disks.iter().map(|d| d.host.clone()).filter(|h| !busy.contains(h)).collect();
        let links: Vec<(String, String)> =
            self.links.iter().filter(|(a, b)| !busy.contains(&link_name(a, b))).cloned().collect();
        let roll = self.rng.below(100);
        if roll < 35 {
            if hosts.is_empty() {
                return None;
            }
            let mut victims = vec![hosts[self.rng.below(hosts.len() as u64) as usize].clone()];
            if roll < 8 && hosts.len() > 1 {
                let other = hosts[self.rng.below(hosts.len() as u64) as usize].clone();
                if !victims.contains(&other) {
                    victims.push(other);
                }
            }
            return Some(Fault::Crash(victims));
        }
        if links.is_empty() {
            return None;
        }
        let (a, b) = links[self.rng.below(links.len() as u64) as usize].clone();
        let (a, b) = if self.rng.below(2) == 0 { (a, b) } else { (b, a) };
        Some(match roll {
            35..55 => Fault::Partition(a, b),
            55..75 => Fault::OneWay(a, b),
            75..90 => Fault::Hold(a, b),
            _ => Fault::Latency(a, b, Duration::from_millis(20 + self.rng.below(300))),
        })
    }

    fn inject(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration, fault: &Fault) {
        *self.counts.entry(fault.kind()).or_insert(0) += 1;
        self.clock.begin();
        self.log(now, &fault.describe());
        match fault {
            Fault::Crash(hosts) => {
                for host in hosts {
                    sim.crash(host.as_str());
                    if let Some(disk) = self.disks.iter().find(|d| &d.host == host) {
                        disk.crash();
                    }
                }
            }
            Fault::Partition(a, b) => sim.partition(a.as_str(), b.as_str()),
            Fault::OneWay(a, b) => sim.partition_oneway(a.as_str(), b.as_str()),
            Fault::Hold(a, b) => sim.hold(a.as_str(), b.as_str()),
            Fault::Latency(a, b, d) => sim.set_link_max_message_latency(a.as_str(), b.as_str(), *d),
        }
    }

    fn undo(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration, fault: &Fault) {
        self.clock.end();
        match fault {
            Fault::Crash(hosts) => {
                for host in hosts {
                    sim.bounce(host.as_str());
                }
                self.log(now, &format!("restart {}", hosts.join(",")));
            }
            Fault::Partition(a, b) => {
                sim.repair(a.as_str(), b.as_str());
                self.log(now, &format!("repair {a}<->{b}"));
            }
            Fault::OneWay(a, b) => {
                sim.repair_oneway(a.as_str(), b.as_str());
                self.log(now, &format!("repair {a}->{b}"));
            }
            Fault::Hold(a, b) => {
                sim.release(a.as_str(), b.as_str());
                self.log(now, &format!("release {a}<->{b}"));
            }
            Fault::Latency(a, b, _) => {
                sim.set_link_max_message_latency(a.as_str(), b.as_str(), self.base_latency);
                self.log(now, &format!("latency {a}<->{b} back to normal"));
            }
        }
    }
}
