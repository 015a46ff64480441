//! A coordinator and participants as real processes on 127.0.0.1, every link through a
//! [`Proxy`]: clients reach the coordinator through one, the coordinator reaches each
//! participant through one, and each participant reaches the coordinator (to resolve in-doubt
//! branches) through its own. Every process listens on a port fixed at the first start, so a
//! restarted process is found where it was.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::process::{self, Server, ServerSpec};
use crate::proxy::{LinkFault, Proxy};

/// One process of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeId {
    /// The coordinator.
    Coordinator,
    /// The participant at this index.
    Participant(usize),
}

/// Which processes an environment variable is given to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The coordinator only.
    Coordinator,
    /// One participant.
    Participant(usize),
    /// Every participant.
    Participants,
    /// Every process.
    All,
}

impl Target {
    fn covers(self, node: NodeId) -> bool {
        match (self, node) {
            (Target::All, _)
            | (Target::Coordinator, NodeId::Coordinator)
            | (Target::Participants, NodeId::Participant(_)) => true,
            (Target::Participant(want), NodeId::Participant(index)) => want == index,
            _ => false,
        }
    }
}

/// An environment variable for some processes, such as `CONCORD_FAILPOINTS` or
/// `CONCORD_PLANTED_BUGS` (honoured only by test builds).
#[derive(Clone, Debug)]
pub struct EnvVar {
    /// Who gets it.
    pub target: Target,
    /// The variable.
    pub key: String,
    /// Its value.
    pub value: String,
    /// Given at every start; otherwise only at the first (a failpoint that crashes a process
    /// must not crash it again after the restart).
    pub every_start: bool,
}

/// How to build a cluster.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The `concord` binary.
    pub exe: PathBuf,
    /// Data directories and logs go here.
    pub dir: PathBuf,
    /// The participants' names.
    pub participants: Vec<String>,
    /// Extra environment for some processes.
    pub env: Vec<EnvVar>,
    /// Extra `concord coordinator` arguments.
    pub coordinator_args: Vec<String>,
    /// Extra `concord participant` arguments.
    pub participant_args: Vec<String>,
    /// The participant (one of `participants`) that is the payment-gateway example
    /// (`concord payment-gateway`, a do/undo-only SDK participant), if any.
    pub gateway: Option<String>,
}

/// A directed link between two parts of the cluster, each through its own proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Link {
    /// Clients (the workload) to the coordinator.
    ClientToCoordinator,
    /// The coordinator to participant i (Prepare, Commit, Abort).
    CoordinatorToParticipant(usize),
    /// Participant i to the coordinator (ResolveTransaction).
    ParticipantToCoordinator(usize),
}

/// The running cluster.
pub struct Cluster {
    spec: ClusterSpec,
    coordinator_address: SocketAddr,
    participant_addresses: Vec<SocketAddr>,
    client_proxy: Proxy,
    to_participant: Vec<Proxy>,
    to_coordinator: Vec<Proxy>,
    coordinator: Option<Server>,
    participants: Vec<Option<Server>>,
    /// Processes stopped with SIGSTOP and not yet resumed.
    paused: BTreeSet<NodeId>,
    /// How many times each process was started.
    starts: Vec<u32>,
}

/// A free port on 127.0.0.1, below the kernel's ephemeral range. Every process keeps its port
/// across restarts, and a port from the ephemeral range can meanwhile be taken as the local
/// end of some outgoing connection, which makes the restart's bind fail ("address in use";
/// seen in CI). Released at once: the caller binds it soon after.
fn free_port() -> anyhow::Result<SocketAddr> {
    let (ephemeral_low, _) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(str::parse::<u16>);
            Some((bounds.next()?.ok()?, bounds.next()?.ok()?))
        })
        .unwrap_or((32_768, 60_999));
    const LOWEST: u16 = 10_000;
    if ephemeral_low > LOWEST + 1_000 {
        let mut rng = crate::rng::Prng::new(crate::rng::clock_seed());
        for _ in 0..200 {
            let port = LOWEST + rng.below(u64::from(ephemeral_low - LOWEST)) as u16;
            if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                return Ok(listener.local_addr()?);
            }
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("reserving a port")?;
    Ok(listener.local_addr()?)
}

impl Cluster {
    /// Starts the proxies, the participants, then the coordinator.
    pub async fn start(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(&spec.dir)
            .with_context(|| format!("creating {}", spec.dir.display()))?;
        let coordinator_address = free_port()?;
        let mut participant_addresses = Vec::new();
        let mut to_participant = Vec::new();
        let mut to_coordinator = Vec::new();
        for name in &spec.participants {
            let address = free_port()?;
            participant_addresses.push(address);
            to_participant.push(Proxy::start(format!("coordinator→{name}"), address).await?);
            to_coordinator
                .push(Proxy::start(format!("{name}→coordinator"), coordinator_address).await?);
        }
        let client_proxy = Proxy::start("client→coordinator", coordinator_address).await?;
        let count = spec.participants.len();
        let mut cluster = Cluster {
            spec,
            coordinator_address,
            participant_addresses,
            client_proxy,
            to_participant,
            to_coordinator,
            coordinator: None,
            participants: (0..count).map(|_| None).collect(),
            paused: BTreeSet::new(),
            starts: vec![0; count + 1],
        };
        for index in 0..count {
            cluster.start_node(NodeId::Participant(index)).await?;
        }
        cluster.start_node(NodeId::Coordinator).await?;
        Ok(cluster)
    }

    /// Every process, coordinator first.
    pub fn nodes(&self) -> Vec<NodeId> {
        std::iter::once(NodeId::Coordinator)
            .chain((0..self.participants.len()).map(NodeId::Participant))
            .collect()
    }

    /// Every link.
    pub fn links(&self) -> Vec<Link> {
        let mut links = vec![Link::ClientToCoordinator];
        for index in 0..self.participants.len() {
            links.push(Link::CoordinatorToParticipant(index));
            links.push(Link::ParticipantToCoordinator(index));
        }
        links
    }

    /// The participants' names.
    pub fn participant_names(&self) -> &[String] {
        &self.spec.participants
    }

    /// For messages and the timeline.
    pub fn node_name(&self, node: NodeId) -> String {
        match node {
            NodeId::Coordinator => "coordinator".to_string(),
            NodeId::Participant(index) => self.spec.participants[index].clone(),
        }
    }

    /// Where clients connect: the client→coordinator proxy.
    pub fn client_address(&self) -> SocketAddr {
        self.client_proxy.address()
    }

    /// The coordinator's own address, bypassing the proxy (for the checker, once healed).
    pub fn coordinator_address(&self) -> SocketAddr {
        self.coordinator_address
    }

    /// Participant `index`'s own address, bypassing the proxy.
    pub fn participant_address(&self, index: usize) -> SocketAddr {
        self.participant_addresses[index]
    }

    /// The data directory of `node`, and its log.
    fn paths(&self, node: NodeId) -> (PathBuf, PathBuf) {
        let name = self.node_name(node);
        (self.spec.dir.join(&name), self.spec.dir.join(format!("{name}.log")))
    }

    /// The directory holding every data directory and log.
    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    fn proxy(&self, link: Link) -> &Proxy {
        match link {
            Link::ClientToCoordinator => &self.client_proxy,
            Link::CoordinatorToParticipant(index) => &self.to_participant[index],
            Link::ParticipantToCoordinator(index) => &self.to_coordinator[index],
        }
    }

    /// For messages and the timeline: `coordinator→alpha`.
    pub fn link_name(&self, link: Link) -> String {
        self.proxy(link).label().to_string()
    }

    /// Sets a link's fault.
    pub fn set_link(&self, link: Link, fault: LinkFault) {
        self.proxy(link).set(fault);
    }

    /// A link's current fault.
    pub fn link_fault(&self, link: Link) -> LinkFault {
        self.proxy(link).fault()
    }

    /// Closes every open connection on a link.
    pub fn reset_link(&self, link: Link) {
        self.proxy(link).reset();
    }

    fn slot(&mut self, node: NodeId) -> &mut Option<Server> {
        match node {
            NodeId::Coordinator => &mut self.coordinator,
            NodeId::Participant(index) => &mut self.participants[index],
        }
    }

    fn start_index(node: NodeId) -> usize {
        match node {
            NodeId::Coordinator => 0,
            NodeId::Participant(index) => index + 1,
        }
    }

    /// Whether `node` is running (started and not killed).
    pub fn is_running(&mut self, node: NodeId) -> bool {
        self.slot(node).is_some()
    }

    /// Whether `node` is paused.
    pub fn is_paused(&self, node: NodeId) -> bool {
        self.paused.contains(&node)
    }

    /// Starts `node` on its fixed port (a no-op if it runs).
    pub async fn start_node(&mut self, node: NodeId) -> anyhow::Result<()> {
        if self.slot(node).is_some() {
            return Ok(());
        }
        let (data_dir, log) = self.paths(node);
        let name = self.node_name(node);
        let first = self.starts[Cluster::start_index(node)] == 0;
        let mut args: Vec<OsString> = Vec::new();
        let (label, listen) = match node {
            NodeId::Coordinator => {
                args.push("coordinator".into());
                for (index, name) in self.spec.participants.iter().enumerate() {
                    args.push("--participant".into());
                    args.push(format!("{name}={}", self.to_participant[index].address()).into());
                }
                args.extend(self.spec.coordinator_args.iter().map(OsString::from));
                ("coordinator".to_string(), self.coordinator_address)
            }
            NodeId::Participant(index) if self.spec.gateway.as_ref() == Some(&name) => {
                args.extend(["payment-gateway".into(), "--name".into(), OsString::from(&name)]);
                (format!("payment gateway {name}"), self.participant_addresses[index])
            }
            NodeId::Participant(index) => {
                args.extend(["participant".into(), "--name".into(), OsString::from(&name)]);
                args.push("--coordinator".into());
                args.push(self.to_coordinator[index].address().to_string().into());
                args.extend(self.spec.participant_args.iter().map(OsString::from));
                (format!("participant {name}"), self.participant_addresses[index])
            }
        };
        args.extend(["--listen".into(), listen.to_string().into()]);
        args.extend(["--data-dir".into(), data_dir.into_os_string()]);
        let env = self
            .spec
            .env
            .iter()
            .filter(|var| var.target.covers(node) && (first || var.every_start))
            .map(|var| (var.key.clone(), var.value.clone()))
            .collect();
        let spec = ServerSpec { label, name, exe: self.spec.exe.clone(), args, env, log };
        // The port was free a moment ago and is ours again after a kill; if something else
        // took it meanwhile, retry a few times before giving up.
        let mut attempt = 0;
        let server = loop {
            attempt += 1;
            match process::start(&spec).await {
                Ok(server) => break server,
                Err(error)
                    if attempt < 5
                        && format!("{error:#}").to_ascii_lowercase().contains("in use") =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(error) => return Err(error),
            }
        };
        self.starts[Cluster::start_index(node)] += 1;
        self.paused.remove(&node);
        *self.slot(node) = Some(server);
        Ok(())
    }

    /// SIGKILL (no flush, no destructors) and reap; the node stays down until started.
    pub async fn kill(&mut self, node: NodeId) -> anyhow::Result<()> {
        self.paused.remove(&node);
        match self.slot(node).take() {
            Some(server) => server.kill().await,
            None => Ok(()),
        }
    }

    /// SIGSTOP or SIGCONT.
    pub async fn pause(&mut self, node: NodeId, paused: bool) -> anyhow::Result<()> {
        let signal = if paused { "STOP" } else { "CONT" };
        if let Some(server) = self.slot(node).as_mut() {
            server.signal(signal).await?;
        }
        if paused {
            self.paused.insert(node);
        } else {
            self.paused.remove(&node);
        }
        Ok(())
    }

    /// Processes that exited on their own (not by the nemesis), with how they ended; they are
    /// marked down so that [`Cluster::start_node`] can start them again.
    pub fn exited(&mut self) -> Vec<(NodeId, String)> {
        let mut exited = Vec::new();
        for node in self.nodes() {
            let slot = self.slot(node);
            if let Some(note) = slot.as_mut().and_then(Server::exited) {
                *slot = None;
                exited.push((node, note));
            }
        }
        exited
    }

    /// Every link healthy, every paused process resumed, every stopped process started.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        for link in self.links() {
            self.set_link(link, LinkFault::Healthy);
        }
        for node in self.nodes() {
            if self.paused.contains(&node) {
                self.pause(node, false).await?;
            }
            self.start_node(node).await?;
        }
        Ok(())
    }

    /// Stops every process (the coordinator first), each by its own pid. Returns notes about
    /// those that did not stop cleanly.
    pub async fn stop(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        for node in self.nodes() {
            if let Some(server) = self.slot(node).take() {
                notes.extend(server.stop().await);
            }
        }
        notes
    }
}
