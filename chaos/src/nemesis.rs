//! The nemesis: a fault schedule drawn from the run's seed, carried out against the cluster,
//! with a timeline of what it did.
//!
//! Process faults (SIGKILL and restart, of one process or several at once; SIGSTOP then
//! SIGCONT) run one after another; network faults (partitions, one-way blackholes, latency)
//! last a while and overlap the faults that follow. Connection resets are instant. The seed
//! fixes the schedule's choices; what the processes were doing when a fault struck depends on
//! timing, so a replay retraces the schedule, not every interleaving.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::cluster::{Cluster, Link, NodeId};
use crate::proxy::LinkFault;
use crate::rng::Prng;
use crate::workload::FaultClock;

/// Timeline entries kept, at most (a fault is a few entries; a 10-minute run makes a few
/// thousand).
const MAX_TIMELINE: usize = 100_000;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL one process, restart it after a moment.
    Kill,
    /// SIGKILL two or more processes at once, restart them.
    KillMany,
    /// SIGSTOP one process, SIGCONT it later.
    Pause,
    /// Cut links both ways: one participant off, the coordinator off, or one link.
    Partition,
    /// Hold one direction of one link.
    OneWay,
    /// Delay every chunk on some links.
    Latency,
    /// Close every open connection of one link.
    Reset,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::KillMany,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::OneWay,
        FaultKind::Latency,
        FaultKind::Reset,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::KillMany => "kill-many",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::OneWay => "one-way",
            FaultKind::Latency => "latency",
            FaultKind::Reset => "reset",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Result<FaultKind, String> {
        FaultKind::ALL.into_iter().find(|kind| kind.name() == name).ok_or_else(|| {
            let known: Vec<_> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown fault {name:?}; known: {}", known.join(", "))
        })
    }
}

/// One line of the timeline.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TimelineEvent {
    /// Milliseconds since the run began.
    pub t_ms: u64,
    /// What happened.
    pub event: String,
}

/// What the nemesis did.
#[derive(Clone, Debug, Default)]
pub struct NemesisReport {
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// The timeline.
    pub timeline: Vec<TimelineEvent>,
    /// Processes that exited without being killed (a crash, a storage failure), with how;
    /// each was started again.
    pub unexpected_exits: Vec<String>,
    /// Harness errors (a process that would not restart, a signal that failed).
    pub errors: Vec<String>,
}

/// Shared state of a running nemesis.
struct Shared {
    cluster: Arc<tokio::sync::Mutex<Cluster>>,
    started: Instant,
    report: Mutex<NemesisReport>,
    faults: Arc<FaultClock>,
}

impl Shared {
    fn note(&self, event: String) {
        tracing::info!(target: "concord_chaos::nemesis", "{event}");
        let mut report = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        if report.timeline.len() < MAX_TIMELINE {
            let t_ms = self.started.elapsed().as_millis() as u64;
            report.timeline.push(TimelineEvent { t_ms, event });
        }
    }

    fn count(&self, kind: FaultKind) {
        let mut report = self.report.lock().unwrap_or_else(PoisonError::into_inner);
        *report.faults.entry(kind.name()).or_insert(0) += 1;
    }

    fn error(&self, error: String) {
        self.note(format!("harness error: {error}"));
        self.report.lock().unwrap_or_else(PoisonError::into_inner).errors.push(error);
    }
}

fn between(rng: &mut Prng, low_ms: u64, high_ms: u64) -> Duration {
    Duration::from_millis(low_ms + rng.below(high_ms - low_ms + 1))
}

/// Runs the schedule until `stop`, then waits for the faults still active to heal. `started`
/// is the run's start (timeline times count from it).
pub async fn run(
    cluster: Arc<tokio::sync::Mutex<Cluster>>,
    kinds: Vec<FaultKind>,
    seed: u64,
    started: Instant,
    faults: Arc<FaultClock>,
    stop: Arc<AtomicBool>,
) -> NemesisReport {
    let shared =
        Arc::new(Shared { cluster, started, report: Mutex::new(NemesisReport::default()), faults });
    let mut rng = Prng::new(seed ^ 0x4e45_4d45_5349_5321);
    let mut network = JoinSet::new();
    while !stop.load(Ordering::Relaxed) {
        if kinds.is_empty() {
            // No faults: only watch for processes that exit on their own.
            tokio::time::sleep(Duration::from_millis(100)).await;
            restart_the_exited(&shared).await;
            continue;
        }
        tokio::time::sleep(between(&mut rng, 200, 1_200)).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        restart_the_exited(&shared).await;
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        match kind {
            FaultKind::Kill | FaultKind::KillMany => kill(&shared, &mut rng, kind).await,
            FaultKind::Pause => pause(&shared, &mut rng).await,
            FaultKind::Reset => {
                let links = shared.cluster.lock().await.links();
                let link = links[rng.below(links.len() as u64) as usize];
                let cluster = shared.cluster.lock().await;
                cluster.reset_link(link);
                shared.note(format!("reset {}", cluster.link_name(link)));
                drop(cluster);
                shared.count(kind);
            }
            FaultKind::Partition | FaultKind::OneWay | FaultKind::Latency => {
                if let Some((links, fault, lasting)) =
                    pick_network_fault(&shared, &mut rng, kind).await
                {
                    shared.count(kind);
                    let shared = Arc::clone(&shared);
                    network.spawn(async move {
                        shared.faults.begin();
                        {
                            let cluster = shared.cluster.lock().await;
                            let names: Vec<_> =
                                links.iter().map(|l| cluster.link_name(*l)).collect();
                            for link in &links {
                                cluster.set_link(*link, fault);
                            }
                            shared
                                .note(format!("{fault:?} on {} for {lasting:?}", names.join(", ")));
                        }
                        tokio::time::sleep(lasting).await;
                        let cluster = shared.cluster.lock().await;
                        for link in &links {
                            cluster.set_link(*link, LinkFault::Healthy);
                        }
                        let names: Vec<_> = links.iter().map(|l| cluster.link_name(*l)).collect();
                        shared.note(format!("healed {}", names.join(", ")));
                        shared.faults.end();
                    });
                }
            }
        }
    }
    while network.join_next().await.is_some() {}
    restart_the_exited(&shared).await;
    shared.report.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Processes that died on their own are a finding (a storage failure, a panic): record it, and
/// start them again so the run goes on.
async fn restart_the_exited(shared: &Shared) {
    let mut cluster = shared.cluster.lock().await;
    for (node, note) in cluster.exited() {
        shared.note(format!("unexpected exit: {note}"));
        shared.report.lock().unwrap_or_else(PoisonError::into_inner).unexpected_exits.push(note);
        if let Err(error) = cluster.start_node(node).await {
            shared.error(format!("restarting {}: {error:#}", cluster.node_name(node)));
        }
    }
}

async fn kill(shared: &Shared, rng: &mut Prng, kind: FaultKind) {
    let mut nodes = shared.cluster.lock().await.nodes();
    let count = if kind == FaultKind::Kill { 1 } else { 2 + rng.below(nodes.len() as u64 - 1) };
    // A seeded shuffle, then the first `count`.
    for i in (1..nodes.len()).rev() {
        nodes.swap(i, rng.below(i as u64 + 1) as usize);
    }
    nodes.truncate(count as usize);
    let down = between(rng, 0, 1_500);
    shared.count(kind);
    shared.faults.begin();
    {
        let mut cluster = shared.cluster.lock().await;
        let mut names = Vec::new();
        for node in &nodes {
            names.push(cluster.node_name(*node));
            if let Err(error) = cluster.kill(*node).await {
                shared.error(format!("killing {}: {error:#}", cluster.node_name(*node)));
            }
        }
        shared.note(format!("SIGKILL {} (down for {down:?})", names.join(", ")));
    }
    tokio::time::sleep(down).await;
    {
        let mut cluster = shared.cluster.lock().await;
        for node in &nodes {
            match cluster.start_node(*node).await {
                Ok(()) => shared.note(format!("restarted {}", cluster.node_name(*node))),
                Err(error) => {
                    shared.error(format!("restarting {}: {error:#}", cluster.node_name(*node)));
                }
            }
        }
    }
    shared.faults.end();
}

async fn pause(shared: &Shared, rng: &mut Prng) {
    let nodes = shared.cluster.lock().await.nodes();
    let node: NodeId = nodes[rng.below(nodes.len() as u64) as usize];
    let lasting = between(rng, 200, 2_000);
    shared.count(FaultKind::Pause);
    shared.faults.begin();
    {
        let mut cluster = shared.cluster.lock().await;
        match cluster.pause(node, true).await {
            Ok(()) => shared.note(format!("SIGSTOP {} for {lasting:?}", cluster.node_name(node))),
            Err(error) => shared.error(format!("pausing {}: {error:#}", cluster.node_name(node))),
        }
    }
    tokio::time::sleep(lasting).await;
    {
        let mut cluster = shared.cluster.lock().await;
        if cluster.is_paused(node) {
            match cluster.pause(node, false).await {
                Ok(()) => shared.note(format!("SIGCONT {}", cluster.node_name(node))),
                Err(error) => {
                    shared.error(format!("resuming {}: {error:#}", cluster.node_name(node)));
                }
            }
        }
    }
    shared.faults.end();
}

/// The links, fault and duration of a network fault, or `None` if every candidate link is
/// already faulted.
async fn pick_network_fault(
    shared: &Shared,
    rng: &mut Prng,
    kind: FaultKind,
) -> Option<(Vec<Link>, LinkFault, Duration)> {
    let cluster = shared.cluster.lock().await;
    let all = cluster.links();
    let participants = cluster.participant_names().len();
    let links: Vec<Link> = match kind {
        FaultKind::Partition => match rng.below(3) {
            // One participant cut off from the coordinator, both ways.
            0 => {
                let index = rng.below(participants as u64) as usize;
                vec![Link::CoordinatorToParticipant(index), Link::ParticipantToCoordinator(index)]
            }
            // The coordinator cut off from everything.
            1 => all.clone(),
            // One link.
            _ => vec![all[rng.below(all.len() as u64) as usize]],
        },
        FaultKind::OneWay => vec![all[rng.below(all.len() as u64) as usize]],
        _ => {
            let mut links = all.clone();
            for i in (1..links.len()).rev() {
                links.swap(i, rng.below(i as u64 + 1) as usize);
            }
            links.truncate(1 + rng.below(3) as usize);
            links
        }
    };
    let fault = match kind {
        FaultKind::Partition => LinkFault::Partition,
        FaultKind::OneWay if rng.below(2) == 0 => LinkFault::BlackholeRequests,
        FaultKind::OneWay => LinkFault::BlackholeResponses,
        _ => LinkFault::Latency(10 + rng.below(190)),
    };
    let lasting = between(rng, 300, 3_000);
    if links.iter().any(|link| cluster.link_fault(*link) != LinkFault::Healthy) {
        return None;
    }
    Some((links, fault, lasting))
}
