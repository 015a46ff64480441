//! Local servers as child processes of this binary, for `concord demo` and `concord bench`:
//! participants, then a coordinator that knows them, each stopped by its own pid.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use concord_chaos::process::{Server, ServerSpec};

/// Attempts at finding a free port for the coordinator.
const START_ATTEMPTS: u32 = 3;

/// The servers a tool started; every one is stopped by [`LocalCluster::stop`], or killed when
/// dropped (`kill_on_drop`) if the tool fails before that.
#[derive(Default)]
pub struct LocalCluster {
    /// The participants, in start order.
    pub participants: Vec<Server>,
    /// The coordinator, once started.
    pub coordinator: Option<Server>,
    /// Where the coordinator listens (the participants' `--coordinator`), once chosen.
    coordinator_address: Option<SocketAddr>,
    /// The coordinator's extra arguments, for a restart.
    coordinator_args: Vec<String>,
    /// Every server's `--worker-threads`.
    worker_threads: usize,
}

/// Worker threads for each of `servers` processes sharing this machine: its cores divided
/// among them, at least one. The servers' own default (one per core) suits a machine of their
/// own; here it would put several times as many busy threads as cores on the machine.
pub fn shared_worker_threads(servers: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    (cores / servers.max(1)).max(1)
}

impl LocalCluster {
    /// Whether nothing was started (or everything was stopped).
    pub fn is_empty(&self) -> bool {
        self.participants.is_empty() && self.coordinator.is_none()
    }

    /// Every running server, participants first.
    pub fn servers(&self) -> impl Iterator<Item = &Server> {
        self.participants.iter().chain(self.coordinator.as_ref())
    }

    /// Where the coordinator listens.
    pub fn coordinator_address(&self) -> anyhow::Result<SocketAddr> {
        self.coordinator.as_ref().map(Server::address).context("no coordinator running")
    }

    /// Starts the participants, then the coordinator on a port reserved before the
    /// participants started (they need it on their command line). If that port was taken in
    /// the moment between releasing and binding it, starts over with a new one.
    /// `coordinator_args` are added to the coordinator's command line.
    pub async fn start(
        &mut self,
        exe: &Path,
        data_dir: &Path,
        names: &[String],
        coordinator_args: &[String],
        worker_threads: usize,
    ) -> anyhow::Result<()> {
        self.worker_threads = worker_threads;
        for attempt in 1..=START_ATTEMPTS {
            let reservation = std::net::TcpListener::bind("127.0.0.1:0")
                .context("reserving a port for the coordinator")?;
            let coordinator_address = reservation.local_addr()?;
            self.coordinator_address = Some(coordinator_address);
            self.coordinator_args = coordinator_args.to_vec();
            for name in names {
                let args = self.participant_args(data_dir, name, "127.0.0.1:0")?;
                let server =
                    start_server(exe, format!("participant {name}"), name, args, data_dir).await?;
                self.participants.push(server);
            }
            let args = self.coordinator_args(data_dir, &coordinator_address.to_string());
            drop(reservation);
            match start_server(exe, "coordinator".to_string(), "coordinator", args, data_dir).await
            {
                Ok(server) => {
                    self.coordinator = Some(server);
                    return Ok(());
                }
                Err(error)
                    if attempt < START_ATTEMPTS
                        && format!("{error:#}").to_ascii_lowercase().contains("in use") =>
                {
                    tracing::warn!(%error, attempt, "the coordinator's port was taken; retrying");
                    for note in self.stop().await {
                        tracing::warn!("{note}");
                    }
                }
                Err(error) => return Err(error),
            }
        }
        anyhow::bail!("could not start the coordinator on a free port in {START_ATTEMPTS} attempts")
    }

    /// Stops every server (the coordinator first, so it stops sending), each by its own pid.
    /// Returns notes about servers that did not stop cleanly.
    pub async fn stop(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        let servers: Vec<Server> =
            self.coordinator.take().into_iter().chain(self.participants.drain(..)).collect();
        for server in servers {
            notes.extend(server.stop().await);
        }
        notes
    }

    /// Kills every server with SIGKILL (by its pid, all before any restarts), then starts each
    /// again on its address and data directory, participants first. Returns each server's name
    /// and the time from its start to serving (its recovery from the log, and the process's
    /// start-up).
    pub async fn kill_and_restart(
        &mut self,
        exe: &Path,
        data_dir: &Path,
    ) -> anyhow::Result<Vec<(String, std::time::Duration)>> {
        let mut killed = Vec::new();
        let servers: Vec<Server> =
            self.participants.drain(..).chain(self.coordinator.take()).collect();
        for server in servers {
            let (name, address) = (server.name().to_string(), server.address());
            server.kill().await?;
            killed.push((name, address));
        }
        let mut restarted = Vec::new();
        for (name, address) in killed {
            let is_coordinator = name == "coordinator";
            let args = if is_coordinator {
                self.coordinator_args(data_dir, &address.to_string())
            } else {
                self.participant_args(data_dir, &name, &address.to_string())?
            };
            let label = if is_coordinator { name.clone() } else { format!("participant {name}") };
            let started = std::time::Instant::now();
            let server = start_server(exe, label, &name, args, data_dir).await?;
            restarted.push((name, started.elapsed()));
            if is_coordinator {
                self.coordinator = Some(server);
            } else {
                self.participants.push(server);
            }
        }
        Ok(restarted)
    }

    /// A participant's command line: `name`'s data directory, the coordinator chosen by
    /// [`LocalCluster::start`], the cluster's worker threads.
    fn participant_args(
        &self,
        data_dir: &Path,
        name: &str,
        listen: &str,
    ) -> anyhow::Result<Vec<OsString>> {
        let coordinator = self.coordinator_address.context("no coordinator address chosen")?;
        Ok(vec![
            "participant".into(),
            "--listen".into(),
            listen.into(),
            "--data-dir".into(),
            data_dir.join(name).into(),
            "--name".into(),
            name.into(),
            "--coordinator".into(),
            coordinator.to_string().into(),
            "--worker-threads".into(),
            self.worker_threads.to_string().into(),
        ])
    }

    /// The coordinator's command line: every running participant, the cluster's worker
    /// threads, and the extra arguments given to [`LocalCluster::start`].
    fn coordinator_args(&self, data_dir: &Path, listen: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "coordinator".into(),
            "--listen".into(),
            listen.into(),
            "--data-dir".into(),
            data_dir.join("coordinator").into(),
            "--worker-threads".into(),
            self.worker_threads.to_string().into(),
        ];
        for server in &self.participants {
            args.push("--participant".into());
            args.push(format!("{}={}", server.name(), server.address()).into());
        }
        args.extend(self.coordinator_args.iter().map(OsString::from));
        args
    }

    /// Servers that have exited on their own, with how they ended.
    pub fn exited(&mut self) -> Vec<String> {
        self.participants
            .iter_mut()
            .chain(self.coordinator.as_mut())
            .filter_map(Server::exited)
            .collect()
    }
}

/// Starts one server with its log at `DATA_DIR/NAME.log`.
pub async fn start_server(
    exe: &Path,
    label: String,
    name: &str,
    args: Vec<OsString>,
    data_dir: &Path,
) -> anyhow::Result<Server> {
    let log = data_dir.join(format!("{name}.log"));
    let spec = ServerSpec {
        label,
        name: name.to_string(),
        exe: exe.to_path_buf(),
        args,
        env: Vec::new(),
        log,
    };
    concord_chaos::process::start(&spec).await
}

/// The file that marks a data directory as made by `concord TOOL`.
pub fn marker_name(tool: &str) -> String {
    format!(".concord-{tool}")
}

/// Creates (or wipes, unless `keep`) `concord TOOL`'s data directory, refusing one it did not
/// create.
pub fn prepare_data_dir(dir: &Path, keep: bool, tool: &str) -> anyhow::Result<()> {
    let marker_file = marker_name(tool);
    let marker = dir.join(&marker_file);
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("--data-dir {}: cannot read it", dir.display()))?
            .next()
            .is_none();
        if !empty && !marker.exists() {
            anyhow::bail!(
                "--data-dir {}: the directory exists and was not created by `concord {tool}` (it \
                 has no {marker_file} file), so it will not be wiped; choose another \
                 directory or remove it yourself",
                dir.display()
            );
        }
        if !empty && !keep {
            std::fs::remove_dir_all(dir).with_context(|| {
                format!("--data-dir {}: wiping the previous run", dir.display())
            })?;
        }
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--data-dir {}: cannot create it", dir.display()))?;
    std::fs::write(
        &marker,
        format!("Created by `concord {tool}`, which wipes this directory at start.\n"),
    )
    .with_context(|| format!("--data-dir {}: cannot write {marker_file}", dir.display()))?;
    Ok(())
}
